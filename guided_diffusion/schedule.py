"""
The one view of a diffusion process's noise levels: what every sampler, guidance method and
editing method reads instead of recomputing it from ``alphas_cumprod``.

For a VP process with alphas_cumprod ab at its own indices 0..N-1 (the kept steps of a
respaced process): alpha = sqrt(ab), sigma = sqrt(1 - ab), lambda = log(alpha / sigma) (half
the log-SNR; it grows as the index goes to 0) and the EDM noise level sigma / alpha (Karras et
al. 2022). ``model_timesteps`` is what the model receives at each index: the base process's
index for a respaced process, scaled to [0, 1000) with ``rescale_timesteps``.

Between the steps the EDM noise level is continuous over the BASE process (the one a respaced
process keeps steps of): log(sigma / alpha) is linear in the timestep between neighbouring
steps, so ``model_time`` maps any noise level to the (fractional) timestep the model would see
there and ``edm_sigma_at`` maps timesteps back. ADM's timestep embedding is continuous, so the
model accepts fractional timesteps (the EDM sampler of ``samplers`` calls it so).
"""

import math
from typing import Optional

import numpy as np
import torch


class NoiseSchedule:
    """
    Noise levels of a process at its indices 0..N-1, float64 numpy arrays [N].

    :param alphas_cumprod: [N] ab of the (respaced) process.
    :param model_timesteps: [N] the timestep the model receives at each index.
    :param base_alphas_cumprod: [T] ab of the base process at its every step (default: this
        process's own, for a process that is not respaced).
    :param time_scale: the model's timestep per base-process index (1000 / T with
        ``rescale_timesteps``, else 1).
    """

    def __init__(
        self,
        alphas_cumprod: np.ndarray,
        model_timesteps: np.ndarray,
        base_alphas_cumprod: Optional[np.ndarray] = None,
        time_scale: float = 1.0,
    ):
        self.alphas_cumprod = np.asarray(alphas_cumprod, dtype=np.float64)
        self.model_timesteps = np.asarray(model_timesteps, dtype=np.float64)
        self.alpha = np.sqrt(self.alphas_cumprod)
        self.sigma = np.sqrt(1.0 - self.alphas_cumprod)
        self.log_snr = np.log(self.alpha) - np.log(self.sigma)  # lambda, half the log-SNR
        self.edm_sigma = np.sqrt((1.0 - self.alphas_cumprod) / self.alphas_cumprod)
        base = self.alphas_cumprod if base_alphas_cumprod is None else base_alphas_cumprod
        base = np.asarray(base, dtype=np.float64)
        # [T] log(sigma / alpha) at the base steps, increasing with the index
        self.base_log_sigma = 0.5 * (np.log1p(-base) - np.log(base))
        self.time_scale = float(time_scale)

    def __len__(self) -> int:
        return len(self.alphas_cumprod)

    def alpha_bar(self, index: int) -> float:
        """:return: ab at ``index``; 1.0 at index -1 (the clean image)."""
        return 1.0 if index < 0 else float(self.alphas_cumprod[index])

    def index_of(self, t: torch.Tensor) -> torch.Tensor:
        """
        :param t: [N] timesteps as the model and ``cond_fn`` receive them.
        :return: [N] int64 indices of the process, each t mapped to the nearest step.
        """
        seen = torch.from_numpy(self.model_timesteps)
        return (t.detach().cpu().double()[:, None] - seen[None, :]).abs().argmin(dim=1)

    def model_time(self, edm_sigma: float) -> float:
        """
        :param edm_sigma: a noise level sigma / alpha; levels beyond the base process's first
            or last step map to that step.
        :return: the (fractional) timestep the model sees at that level.
        """
        steps = np.arange(len(self.base_log_sigma), dtype=np.float64)
        index = np.interp(math.log(edm_sigma), self.base_log_sigma, steps)
        return float(index) * self.time_scale

    def edm_sigma_at(self, t: torch.Tensor) -> torch.Tensor:
        """
        The inverse of ``model_time``: at this process's own timesteps exactly its
        ``edm_sigma``, elsewhere the base process's level interpolated.

        :param t: [N] timesteps as the model and ``cond_fn`` receive them (any real values).
        :return: [N] float64 noise levels sigma / alpha.
        """
        seen = t.detach().cpu().double()
        steps = np.arange(len(self.base_log_sigma), dtype=np.float64)
        log_sigma = np.interp(seen.numpy() / self.time_scale, steps, self.base_log_sigma)
        levels = torch.from_numpy(np.exp(log_sigma))
        nearest = self.index_of(t)
        own = torch.from_numpy(self.model_timesteps)[nearest] == seen
        return torch.where(own, torch.from_numpy(self.edm_sigma)[nearest], levels)
