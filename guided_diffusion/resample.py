"""
Timestep samplers for training: uniform, and importance sampling by the second moment
of the loss (Nichol & Dhariwal 2021, section 3.3) to reduce the variance of the bound.
"""

from abc import ABC, abstractmethod

import numpy as np
import torch

from . import dist_util

SCHEDULE_SAMPLERS = ("uniform", "loss-second-moment")


def create_named_schedule_sampler(name: str, diffusion) -> "ScheduleSampler":
    """
    Create a ScheduleSampler from a library of pre-defined samplers.

    :param name: "uniform" or "loss-second-moment" (--schedule_sampler).
    :param diffusion: the diffusion process to sample timesteps for.
    """
    if name == "uniform":
        return UniformSampler(diffusion)
    if name == "loss-second-moment":
        return LossSecondMomentResampler(diffusion)
    raise ValueError(
        f"unknown schedule sampler {name!r} (--schedule_sampler): valid names are "
        f"{', '.join(SCHEDULE_SAMPLERS)}"
    )


class ScheduleSampler(ABC):
    """
    A distribution over timesteps, used with importance weights so that the expected
    loss is unchanged while its variance may drop.
    """

    @abstractmethod
    def weights(self) -> np.ndarray:
        """
        :return: a numpy array of [T] positive, not necessarily normalised, weights.
        """

    def state_dict(self) -> dict[str, torch.Tensor]:
        """:return: what a resumed run needs to continue drawing as this sampler would
        (tensors only, so that ``torch.load(weights_only=True)`` reads it); {} when the
        sampler has no state."""
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Continue from a ``state_dict()`` of a sampler of the same kind and process."""

    def sample(self, batch_size: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Draw timesteps for a batch, with numpy's global random generator.

        :return: (timesteps, weights): [batch_size] int64 indices and the float32
                 importance weights 1 / (T p(t)) that keep the loss unbiased.
        """
        w = self.weights()
        p = w / np.sum(w)
        indices_np = np.random.choice(len(p), size=(batch_size,), p=p)
        indices = torch.from_numpy(indices_np).long().to(device)
        weights_np = 1 / (len(p) * p[indices_np])
        weights = torch.from_numpy(weights_np).float().to(device)
        return indices, weights


class UniformSampler(ScheduleSampler):
    def __init__(self, diffusion):
        self.diffusion = diffusion
        self._weights = np.ones([diffusion.num_timesteps])

    def weights(self) -> np.ndarray:
        return self._weights


class LossAwareSampler(ScheduleSampler):
    """A sampler whose weights follow the losses observed during training."""

    def update_with_local_losses(self, local_ts: torch.Tensor, local_losses: torch.Tensor) -> None:
        """
        Update the weights with this rank's losses; when a process group is running,
        the losses of every rank are gathered first so that all ranks stay in step.
        Call it on every rank with the same number of calls.

        :param local_ts: [N] int timesteps of this rank's batch.
        :param local_losses: [N] float losses at those timesteps.
        """
        timesteps = [int(x) for ts in dist_util.all_gather_ragged(local_ts) for x in ts.tolist()]
        losses = [float(x) for ls in dist_util.all_gather_ragged(local_losses) for x in ls.tolist()]
        self.update_with_all_losses(timesteps, losses)

    @abstractmethod
    def update_with_all_losses(self, ts: list[int], losses: list[float]) -> None:
        """
        Update the weights with the losses of every rank.

        :param ts: timesteps.
        :param losses: the loss at each of those timesteps.
        """


class LossSecondMomentResampler(LossAwareSampler):
    """
    Weights proportional to the root mean square of the last ``history_per_term``
    losses at each timestep, mixed with a little uniform probability; uniform until
    every timestep has a full history.
    """

    def __init__(self, diffusion, history_per_term: int = 10, uniform_prob: float = 0.001):
        self.diffusion = diffusion
        self.history_per_term = history_per_term
        self.uniform_prob = uniform_prob
        self._loss_history = np.zeros([diffusion.num_timesteps, history_per_term], dtype=np.float64)
        self._loss_counts = np.zeros([diffusion.num_timesteps], dtype=np.int64)

    def weights(self) -> np.ndarray:
        if not self._warmed_up():
            return np.ones([self.diffusion.num_timesteps], dtype=np.float64)
        weights = np.sqrt(np.mean(self._loss_history**2, axis=-1))
        weights /= np.sum(weights)
        weights *= 1 - self.uniform_prob
        weights += self.uniform_prob / len(weights)
        return weights

    def state_dict(self) -> dict[str, torch.Tensor]:
        """:return: the loss history [T x history] (float64) and counts [T] (int64)."""
        return {
            "loss_history": torch.from_numpy(self._loss_history.copy()),
            "loss_counts": torch.from_numpy(self._loss_counts.copy()),
        }

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """
        :raises ValueError: a state of another number of timesteps or history length.
        """
        history, counts = state.get("loss_history"), state.get("loss_counts")
        if (
            not isinstance(history, torch.Tensor)
            or not isinstance(counts, torch.Tensor)
            or tuple(history.shape) != self._loss_history.shape
            or tuple(counts.shape) != self._loss_counts.shape
        ):
            raise ValueError(
                "the saved loss-second-moment sampler state does not fit this run "
                f"({self.diffusion.num_timesteps} timesteps x {self.history_per_term} losses)"
            )
        self._loss_history = history.numpy().astype(np.float64).copy()
        self._loss_counts = counts.numpy().astype(np.int64).copy()

    def update_with_all_losses(self, ts: list[int], losses: list[float]) -> None:
        for t, loss in zip(ts, losses):
            if self._loss_counts[t] == self.history_per_term:
                # full: drop the oldest loss
                self._loss_history[t, :-1] = self._loss_history[t, 1:]
                self._loss_history[t, -1] = loss
            else:
                self._loss_history[t, self._loss_counts[t]] = loss
                self._loss_counts[t] += 1

    def _warmed_up(self) -> bool:
        return bool((self._loss_counts == self.history_per_term).all())

