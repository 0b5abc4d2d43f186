"""
Bits per dimension of data images under a diffusion model (the variational bound,
``GaussianDiffusion.calc_bpd_loop``), split over the ranks like the sampling programs split
their images: image i's terms come from data item i and the noise of ``ImageRandom(seed,
[i])``, whatever batch it is evaluated in, and a killed run resumes from its shards
(``shards.run_resumable``). image_nll.py's work.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Optional

import blobfile as bf
import numpy as np
import torch

from . import dist_util, logger
from .flags import check_counts
from .gaussian_diffusion import GaussianDiffusion
from .image_seeds import ImageRandom
from .io_util import atomic_write
from .shards import run_resumable


@dataclass
class BpdJob:
    """
    The bound terms of data images: image i's from the data item i and the noise of
    ``ImageRandom(seed, [i])``, whatever batch it is evaluated in.
    """

    model: Callable
    diffusion: GaussianDiffusion
    read: Callable[[int, int], tuple[torch.Tensor, dict[str, torch.Tensor]]]
    seed: int
    clip_denoised: bool = True
    device: Optional[torch.device] = None

    def __call__(self, start: int, count: int) -> dict[str, np.ndarray]:
        """:return: per image, "total_bpd", "prior_bpd" [count] and "vb", "mse", "xstart_mse" [count x T]."""
        device = self.device or dist_util.dev()
        batch, kwargs = self.read(start, count)
        rng = ImageRandom(self.seed, range(start, start + count), device)
        metrics = self.diffusion.calc_bpd_loop(
            self.model,
            batch.to(device),
            clip_denoised=self.clip_denoised,
            model_kwargs={k: v.to(device) for k, v in kwargs.items()},
            randn=rng.randn,
        )
        return {k: metrics[k].double().cpu().numpy() for k in BPD_TERMS}


BPD_TERMS = ("total_bpd", "prior_bpd", "vb", "mse", "xstart_mse")


def dataset_reader(dataset) -> Callable[[int, int], tuple[torch.Tensor, dict[str, torch.Tensor]]]:
    """
    :param dataset: items (image [C x H x W] array, {name: array}) by index.
    :return: read(start, count) -> (images [count x C x H x W], {name: [count x ...]}) for
        items start..start+count-1, cycling past the end of the dataset.
    """

    def read(start: int, count: int):
        items = [dataset[i % len(dataset)] for i in range(start, start + count)]
        images = torch.stack([torch.as_tensor(np.asarray(image)) for image, _ in items])
        kwargs = {
            k: torch.stack([torch.as_tensor(np.asarray(c[k])) for _, c in items]) for k in items[0][1]
        }
        return images, kwargs

    return read


class BpdMeans:
    """Running means of per-image bound terms, logged as chunks come in."""

    def __init__(self, num_samples: int, log: bool = True):
        self.num_samples, self.log = num_samples, log
        self.sums: dict[str, np.ndarray] = {}
        self.count = 0

    def add(self, start: int, terms: dict[str, np.ndarray]) -> None:
        """:param terms: the BPD_TERMS of one chunk, each [n] or [n x T]."""
        for key in BPD_TERMS:
            self.sums[key] = self.sums.get(key, 0.0) + terms[key].sum(0)
        self.count += len(terms["total_bpd"])
        if self.log:
            logger.log(
                f"{self.count}/{self.num_samples} images: running mean "
                f"{self.sums['total_bpd'] / self.count:.4f} bits/dim"
            )

    def means(self) -> dict[str, np.ndarray]:
        """:return: rank 0's means, on every rank (scalars as floats, terms as [T])."""
        means = dist_util.broadcast_object({k: v / max(self.count, 1) for k, v in self.sums.items()})
        return {k: (float(v) if np.ndim(v) == 0 else v) for k, v in means.items()}


def evaluate_bpd_resumable(
    job: BpdJob,
    *,
    num_samples: int,
    batch_size: int,
    identity: dict[str, object],
    keep_shards: bool = False,
    out_dir: Optional[str] = None,
) -> dict[str, np.ndarray]:
    """
    Bits per dimension of exactly ``num_samples`` data images, split over the ranks like
    the sampling programs split their images, logging a running mean as rounds finish. The
    per-image terms go to shards in ``out_dir`` (default: the log directory), so that
    rerunning a killed command evaluates only the missing images; the shards are removed at
    the end unless ``keep_shards``.

    :param identity: the run's identity (``shards.run_identity``).
    :return: on every rank, "total_bpd" and "prior_bpd" (scalars) and the per-timestep
        means "vb", "mse", "xstart_mse" ([T], from t = T-1 down to 0), over all images.
    """
    check_counts(num_samples, batch_size)
    out_dir = out_dir or logger.get_dir() or "."
    store = run_resumable(
        bf.join(out_dir, f"bpd_{num_samples}.npz"), identity, job, num_samples, batch_size,
        desc="evaluate", on_chunk=BpdMeans(num_samples).add,
    )  # fmt: skip
    means = BpdMeans(num_samples, log=False)
    if dist_util.group_rank() == 0:
        try:
            for start, stop in store.covering(num_samples):
                means.add(start, {k: store.read(start, stop, k, num_samples) for k in BPD_TERMS})
            if not keep_shards:
                store.remove()
        finally:
            store.release()
    return means.means()


def save_bpd_terms(metrics: dict[str, np.ndarray], out_dir: str) -> list[str]:
    """
    Save the per-timestep means [T] of "vb", "mse" and "xstart_mse" as
    ``{name}_terms.npz`` (arr_0) in ``out_dir``.

    :return: the paths written.
    """
    paths = []
    for name in ("vb", "mse", "xstart_mse"):
        path = bf.join(out_dir, f"{name}_terms.npz")
        with atomic_write(path, "wb") as f:
            np.savez(f, metrics[name])
        paths.append(path)
    return paths
