"""
The files of the sampling programs: ``.npz`` sample batches (written atomically, read
back from any batch), the ``--base_samples`` input of super-resolution, PNG grids and
single PNG images, and the per-timestep bits/dim terms.

A sample batch is arr_0 [N x H x W x 3] uint8 images, plus arr_1 [N] int64 labels when
the images have classes, in ``samples_{N}x{H}x{W}x3.npz``.
"""

import math
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Optional

import blobfile as bf
import numpy as np
from PIL import Image

from .io_util import NpzArrayReader, atomic_write, check_npz, is_local_path


class SamplingInputError(ValueError):
    """Bad flags or input files: the message says what to change."""


# ---------------------------------------------------------------- sample batches


def samples_file_name(images: np.ndarray) -> str:
    """``samples_{N}x{H}x{W}x3.npz`` for an [N x H x W x 3] batch."""
    return "samples_" + "x".join(str(n) for n in images.shape) + ".npz"


def save_samples_npz(path: str, images: np.ndarray, labels: Optional[np.ndarray] = None) -> None:
    """
    Write a sample batch atomically: arr_0 [N x H x W x 3] uint8, arr_1 [N] int64 labels.
    """
    arrays = {"arr_0": images}
    if labels is not None:
        arrays["arr_1"] = np.asarray(labels, dtype=np.int64)
    with atomic_write(path, "wb") as f:
        np.savez(f, **arrays)


def iter_npz_images(
    path: str, key: str = "arr_0", limit: int = 0, chunk_size: int = 256
) -> Iterator[tuple[np.ndarray, Optional[np.ndarray]]]:
    """
    Stream the images of any .npz batch (samples or reference batch) in chunks, so that a
    batch of any size is read in bounded memory (local files; a blob URL is read whole).

    :param path: the .npz file.
    :param key: the array holding the images: uint8 [N x H x W x C] with C = 1, 3 or 4,
        or [N x H x W] grey.
    :param limit: read only the first ``limit`` images (0: all).
    :param chunk_size: images per chunk.
    :return: an iterator of (images [n x H x W x C] uint8, labels [n] int64 from arr_1 when
        the images are arr_0 and arr_1 holds one integer per image, else None).
    """
    if not bf.exists(path):
        raise FileNotFoundError(f"no such .npz file: {path}")
    check_npz(path)  # a text file or an absurd header: a clear error, not numpy's
    try:
        with bf.BlobFile(path, "rb") as f, np.load(f, allow_pickle=False) as npz:
            members = npz.files
            arr_1 = npz["arr_1"] if key == "arr_0" and "arr_1" in members else None
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise SamplingInputError(f"{path} is not a readable .npz file ({err})") from None
    if key not in members:
        raise SamplingInputError(f"{path} has no array {key!r}; it holds {sorted(members)}")
    try:
        if is_local_path(path):
            reader = NpzArrayReader(path, key)
            shape, dtype = reader.shape, reader.dtype
        else:
            with bf.BlobFile(path, "rb") as f, np.load(f, allow_pickle=False) as npz:
                reader = None
                whole = npz[key]
            shape, dtype = whole.shape, whole.dtype
        labels = _as_labels(arr_1, shape[0])
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise SamplingInputError(f"{path}: cannot read {key} ({err})") from None
    if dtype != np.uint8 or len(shape) not in (3, 4) or (len(shape) == 4 and shape[3] not in (1, 3, 4)):
        if reader is not None:
            reader.close()
        raise SamplingInputError(
            f"{path}: {key} must hold uint8 images [N x H x W x C] with C = 1, 3 or 4, "
            f"got {dtype} {list(shape)}"
        )
    count = shape[0] if limit <= 0 else min(limit, shape[0])
    try:
        for start in range(0, count, chunk_size):
            n = min(chunk_size, count - start)
            images = reader.read(n) if reader is not None else whole[start : start + n]
            if images.ndim == 3:
                images = images[..., None]  # (n, H, W) grey -> (n, H, W, 1)
            yield images, None if labels is None else labels[start : start + n]
    finally:
        if reader is not None:
            reader.close()


def _as_labels(arr_1: Optional[np.ndarray], num_images: int) -> Optional[np.ndarray]:
    """arr_1 as [N] int64 labels when it holds one integer per image, else None."""
    if arr_1 is None or arr_1.shape != (num_images,) or arr_1.dtype.kind not in "iu":
        return None  # absent, or something else than one label per image
    return arr_1.astype(np.int64)


def read_npz_images(
    path: str, key: str = "arr_0", limit: int = 0
) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """
    Read the images of any .npz batch whole (see iter_npz_images for the arguments).

    :return: (images [N x H x W x C] uint8, labels [N] int64 or None).
    """
    chunks = list(iter_npz_images(path, key, limit))
    if not chunks:
        raise SamplingInputError(f"{path}: {key} holds no images")
    images = np.concatenate([c[0] for c in chunks])
    labels = None if chunks[0][1] is None else np.concatenate([c[1] for c in chunks])
    return images, labels


# ---------------------------------------------------------------- base samples


@dataclass
class BaseSamples:
    """Low-resolution images to upsample: [N x h x w x 3] uint8 and optional [N] labels."""

    images: np.ndarray
    labels: Optional[np.ndarray]


def load_base_samples(
    path: str, small_size: int, need_labels: bool, num_classes: int
) -> BaseSamples:
    """
    Read and check ``--base_samples``.

    :param path: the .npz file (arr_0 uint8 NHWC images, arr_1 labels when present).
    :param small_size: the resolution the upsampler expects (``--small_size``).
    :param need_labels: the model is class-conditional, so arr_1 must be there.
    :param num_classes: labels must lie in 0..num_classes-1.
    """
    if not path:
        raise SamplingInputError("--base_samples is required: a .npz file of images to upsample")
    if not bf.exists(path):
        raise FileNotFoundError(f"--base_samples: file not found: {path}")
    check_npz(path)  # a text file or an absurd header: a clear error, not numpy's
    try:
        with bf.BlobFile(path, "rb") as f, np.load(f, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (OSError, ValueError) as err:
        raise SamplingInputError(
            f"--base_samples {path} is not a readable .npz file ({err})"
        ) from None
    if "arr_0" not in arrays:
        raise SamplingInputError(
            f"--base_samples {path} has no arr_0 (the images); it holds {sorted(arrays)}"
        )
    images = arrays["arr_0"]
    expected = f"[N x {small_size} x {small_size} x 3] uint8"
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3:
        raise SamplingInputError(
            f"--base_samples {path}: arr_0 must be {expected} images, "
            f"got {images.dtype} {list(images.shape)}"
        )
    if images.shape[1:3] != (small_size, small_size):
        raise SamplingInputError(
            f"--base_samples {path}: images are {images.shape[1]}x{images.shape[2]} but the "
            f"upsampler takes {small_size}x{small_size} (--small_size {small_size})"
        )
    if len(images) == 0:
        raise SamplingInputError(f"--base_samples {path} holds no images")
    labels = arrays.get("arr_1")
    if labels is None:
        if need_labels:
            raise SamplingInputError(
                f"--base_samples {path} has no arr_1 (labels), which the class-conditional "
                "upsampler (--class_cond True) needs"
            )
    else:
        if labels.shape != (len(images),) or labels.dtype.kind not in "iu":
            raise SamplingInputError(
                f"--base_samples {path}: arr_1 must be {len(images)} integer labels, "
                f"got {labels.dtype} {list(labels.shape)}"
            )
        if need_labels and (labels.min() < 0 or labels.max() >= num_classes):
            raise SamplingInputError(
                f"--base_samples {path}: labels must lie in 0..{num_classes - 1}, "
                f"found {labels.min()}..{labels.max()}"
            )
        labels = labels.astype(np.int64)
    return BaseSamples(images=images, labels=labels)

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

# ---------------------------------------------------------------- bits/dim terms


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
