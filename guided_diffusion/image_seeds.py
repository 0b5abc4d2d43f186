"""
Per-image random numbers: image i of a run draws everything random about it (its label
when labels are drawn, its initial noise x_T, the noise of every sampling step) from
generators seeded by (seed, i) alone, as EDM's ``StackedRandomGenerator`` does (Karras et
al. 2022). An image therefore never depends on ``--batch_size``, on the number of ranks,
on which other images share its batch, or on which sampler runs after x_T.
"""

import secrets
from collections.abc import Sequence
from typing import Optional

import numpy as np
import torch

from . import dist_util


def image_seeds(seed: int, index: int) -> tuple[int, int]:
    """
    :param seed: the run's base seed.
    :param index: the image's index in the run, 0..N-1.
    :return: two independent 63-bit seeds (noise, label) for that image.
    """
    noise_seed, label_seed = np.random.SeedSequence([int(seed), int(index)]).generate_state(
        2, dtype=np.uint64
    )
    return int(noise_seed >> np.uint64(1)), int(label_seed >> np.uint64(1))


class ImageRandom:
    """
    The random streams of a batch of images, one generator per image (and per use), seeded
    by ``image_seeds(seed, index)``.

    ``randn`` is what the diffusion loops take as ``randn=``: the first call gives the
    initial noise x_T, later calls the step noise, each image's rows from its own stream.
    """

    def __init__(self, seed: int, indices: Sequence[int], device: torch.device | str = "cpu"):
        """
        :param seed: the run's base seed.
        :param indices: the images' indices in the run, in batch order.
        :param device: where the noise is drawn (and returned).
        """
        self.device = torch.device(device)
        seeds = [image_seeds(seed, int(i)) for i in indices]
        self._noise = [torch.Generator(self.device).manual_seed(s) for s, _ in seeds]
        self._labels = [torch.Generator().manual_seed(s) for _, s in seeds]

    def __len__(self) -> int:
        return len(self._noise)

    def randn(self, like: torch.Tensor) -> torch.Tensor:
        """
        :param like: [n x ...] with n = the number of images.
        :return: standard normal noise of ``like``'s shape, dtype and device.
        """
        if len(like) != len(self._noise):
            raise ValueError(f"noise for {len(like)} rows asked of {len(self._noise)} images")
        rows = [
            torch.randn(like.shape[1:], generator=g, device=self.device) for g in self._noise
        ]
        return torch.stack(rows).to(device=like.device, dtype=like.dtype)

    def noise(self, shape: Sequence[int]) -> torch.Tensor:
        """:return: standard normal noise of ``shape`` [n x ...] on ``device`` (e.g. x_T)."""
        return self.randn(torch.empty(tuple(shape), device=self.device))

    def labels(self, num_classes: int) -> torch.Tensor:
        """:return: [n] int64 class labels, uniform over 0..num_classes-1, one per image."""
        return torch.cat(
            [torch.randint(0, num_classes, (1,), generator=g) for g in self._labels]
        )


def shared_seed(seed: Optional[int]) -> int:
    """
    The run's base seed: ``seed``, or a fresh one drawn on rank 0 and shared by all ranks.
    """
    if seed is not None:
        return int(seed)
    return int(dist_util.broadcast_object(secrets.randbits(31)))


def chunk_seeds(seed: int, chunk: int) -> tuple[int, int]:
    """Two independent 32-bit seeds (noise, labels) for one chunk of images (editing tools)."""
    noise_seed, label_seed = np.random.SeedSequence([seed, chunk]).generate_state(2)
    return int(noise_seed), int(label_seed)
