"""
The files of the sampling programs: ``.npz`` sample batches (written atomically, read
back from any batch), the ``--base_samples`` input of super-resolution, PNG grids and
single PNG images, and the conversion of float images to uint8 pixels.

A sample batch is arr_0 [N x H x W x 3] uint8 images, plus arr_1 [N] int64 labels when
the images have classes, in ``samples_{N}x{H}x{W}x3.npz``; the .npz reading and writing
itself is ``npz_batch``'s.
"""

import math
import zipfile
from dataclasses import dataclass
from typing import Optional

import blobfile as bf
import numpy as np
import torch
from PIL import Image

from .io_util import atomic_write
from .npz_batch import BatchFileError, NpzArrayReader, NpzWriter, check_images, npz_keys, read_array
from .script_errors import SamplingInputError


# ---------------------------------------------------------------- sample batches


def samples_file_name(images: np.ndarray) -> str:
    """``samples_{N}x{H}x{W}x3.npz`` for an [N x H x W x 3] batch."""
    return "samples_" + "x".join(str(n) for n in images.shape) + ".npz"


def save_samples_npz(path: str, images: np.ndarray, labels: Optional[np.ndarray] = None) -> None:
    """
    Write a sample batch atomically: arr_0 [N x H x W x 3] uint8, arr_1 [N] int64 labels.
    """
    with NpzWriter(path) as out:
        out.write("arr_0", np.asarray(images, dtype=np.uint8))
        if labels is not None:
            out.write("arr_1", np.asarray(labels, dtype=np.int64))


# ---------------------------------------------------------------- base samples


@dataclass
class BaseSamples:
    """
    Low-resolution images to upsample, read from their file a chunk at a time.

    :param path: the .npz file; arr_0 holds [N x h x w x 3] uint8 images.
    :param count: N.
    :param labels: [N] int64 labels (arr_1), or None.
    """

    path: str
    count: int
    labels: Optional[np.ndarray]

    def __len__(self) -> int:
        return self.count

    def read(self, start: int, count: int) -> np.ndarray:
        """:return: images start..start+count-1, [count x h x w x 3] uint8."""
        with NpzArrayReader(self.path, "arr_0") as reader:
            return reader.read_rows(start, count)


def load_base_samples(
    path: str, small_size: int, need_labels: bool, num_classes: int
) -> BaseSamples:
    """
    Check ``--base_samples`` (without reading its images).

    :param path: the .npz file (arr_0 uint8 NHWC images, arr_1 labels when present).
    :param small_size: the resolution the upsampler expects (``--small_size``).
    :param need_labels: the model is class-conditional, so arr_1 must be there.
    :param num_classes: labels must lie in 0..num_classes-1.
    """
    if not path:
        raise SamplingInputError("--base_samples is required: a .npz file of images to upsample")
    if not bf.exists(path):
        raise FileNotFoundError(f"--base_samples: file not found: {path}")
    try:
        keys = npz_keys(path) if zipfile.is_zipfile(path) else None
        if keys is None:
            raise BatchFileError("not a zip archive written by np.savez")
        if "arr_0" not in keys:
            raise SamplingInputError(
                f"--base_samples {path} has no arr_0 (the images); it holds {sorted(keys)}"
            )
        with NpzArrayReader(path, "arr_0") as reader:
            shape, dtype = reader.shape, reader.dtype
        labels = read_array(path, "arr_1") if "arr_1" in keys else None
    except (OSError, BatchFileError) as err:
        raise SamplingInputError(f"--base_samples {path} is not a readable .npz file ({err})") from None
    try:
        check_images(shape, dtype, f"--base_samples {path}: arr_0")
    except BatchFileError as err:
        raise SamplingInputError(str(err)) from None
    if shape[1:3] != (small_size, small_size):
        raise SamplingInputError(
            f"--base_samples {path}: images are {shape[1]}x{shape[2]} but the "
            f"upsampler takes {small_size}x{small_size} (--small_size {small_size})"
        )
    if shape[0] == 0:
        raise SamplingInputError(f"--base_samples {path} holds no images")
    return BaseSamples(path, shape[0], _check_labels(path, labels, shape[0], need_labels, num_classes))


def _check_labels(path, labels, count, need_labels, num_classes) -> Optional[np.ndarray]:
    if labels is None:
        if need_labels:
            raise SamplingInputError(
                f"--base_samples {path} has no arr_1 (labels), which the class-conditional "
                "upsampler (--class_cond True) needs"
            )
        return None
    if labels.shape != (count,) or labels.dtype.kind not in "iu":
        raise SamplingInputError(
            f"--base_samples {path}: arr_1 must be {count} integer labels, "
            f"got {labels.dtype} {list(labels.shape)}"
        )
    if need_labels and (labels.min() < 0 or labels.max() >= num_classes):
        raise SamplingInputError(
            f"--base_samples {path}: labels must lie in 0..{num_classes - 1}, "
            f"found {labels.min()}..{labels.max()}"
        )
    return labels.astype(np.int64)

# ---------------------------------------------------------------- PNG


def image_grid(images: np.ndarray, max_images: int = 64, padding: int = 2) -> np.ndarray:
    """
    Tile the first images of a batch on a near-square grid with a black border.

    :param images: [N x H x W x C] uint8.
    :param max_images: tile at most this many.
    :param padding: pixels between and around the tiles.
    :return: [rows * (H + p) + p x cols * (W + p) + p x C] uint8.
    """
    images = images[:max_images]
    n, h, w, c = images.shape
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = np.zeros((rows * (h + padding) + padding, cols * (w + padding) + padding, c), np.uint8)
    for i, image in enumerate(images):
        top = padding + (i // cols) * (h + padding)
        left = padding + (i % cols) * (w + padding)
        grid[top : top + h, left : left + w] = image
    return grid


def save_png(path: str, image: np.ndarray) -> None:
    """Write an [H x W x C] uint8 image (C = 1, 3 or 4) as PNG, atomically."""
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    with atomic_write(path, "wb") as f:
        Image.fromarray(image).save(f, format="PNG")


def to_uint8_nhwc(sample: torch.Tensor) -> torch.Tensor:
    """
    :param sample: [N x 3 x H x W] images in [-1, 1].
    :return: [N x H x W x 3] uint8 (x + 1) * 127.5, rounded and clamped to 0..255.
    :raises ValueError: when a value is NaN or infinite (it would become a black or white
        pixel): nothing is written from such samples.
    """
    finite = torch.isfinite(sample).flatten(1).all(dim=1)
    if not bool(finite.all()):
        raise ValueError(
            f"{int((~finite).sum())} of {len(sample)} samples hold NaN or infinite values: the "
            "model or the guidance diverged (check the checkpoint, --classifier_scale and "
            "--timestep_respacing); nothing was written"
        )
    pixels = ((sample.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).contiguous()  # (N, H, W, 3)
