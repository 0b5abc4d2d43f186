"""
Image batches for the evaluator: streaming ``.npz`` reading and writing, image folders,
Inception (or other extractors') activations with an on-disk cache, and reference statistics.

A batch is an ``.npz`` whose ``arr_0`` holds uint8 images [N x H x W x 3] (what the sampling
scripts write). Reference batches may also hold ``mu``, ``sigma`` (pool features) and ``mu_s``,
``sigma_s`` (spatial features). A 50,000-image 256x256 batch is 9.8 GB, so ``arr_0`` is read a
few rows at a time straight from the zip member (stored or deflated), never loaded whole.
"""

import hashlib
import itertools
import json
import os
import time
import warnings
import zipfile
from collections.abc import Iterator
from typing import Callable

import numpy as np
import torch
from PIL import Image

from guided_diffusion.image_datasets import (
    IMAGE_EXTENSIONS,
    center_crop_arr,
    list_image_files,
    to_rgb,
)
from guided_diffusion.io_util import atomic_write, hash_file
from guided_diffusion.npz_batch import (
    NpzArrayReader,
    NpzWriter,
    check_images,
    check_npz,
    npz_keys,
)

from .metrics import compute_statistics

POOL_DIM = 2048
SPATIAL_DIM = 2023
# Bump when the layout of cached activation files changes.
CACHE_VERSION = 1
# A remembered file digest is trusted only for files unchanged (ctime) this long before hashing.
CTIME_MARGIN_NS = 2_000_000_000
STAT_KEYS = ("mu", "sigma", "mu_s", "sigma_s")
# What the Inception extractor returns; another extractor names its own outputs in an
# ``output_keys`` attribute (evaluations/feature_extractors.py: ("features",)). Only "logits"
# may be None.
INCEPTION_KEYS = ("pool", "spatial", "logits")


def check_image_array(shape: tuple[int, ...], dtype: np.dtype, name: str) -> None:
    """
    Raise ValueError unless (shape, dtype) describe uint8 images [N x H x W x 3]
    (``npz_batch.check_images``, the one rule every program applies).
    """
    check_images(shape, dtype, name)


def read_reference_statistics(
    path: str, pool_dim: int | None = POOL_DIM, spatial_dim: int | None = SPATIAL_DIM
) -> dict[str, np.ndarray] | None:
    """
    Read the precomputed statistics of a reference batch, when it holds them.

    :param path: the .npz batch.
    :param pool_dim: the expected feature size of ``mu`` / ``sigma`` (2048 for Inception's pool
                     features); None accepts any size as long as ``mu`` and ``sigma`` agree.
    :param spatial_dim: the same for ``mu_s`` / ``sigma_s`` (2023 for Inception).
    :return: {"mu", "sigma", "mu_s", "sigma_s"} as float64 arrays, or None when the batch has
             none of them. A batch with only some of them, or with wrong shapes, raises ValueError.
    """
    check_npz(path)
    keys = set(npz_keys(path))
    present = [key for key in STAT_KEYS if key in keys]
    if not present:
        return None
    if len(present) != len(STAT_KEYS):
        missing = [key for key in STAT_KEYS if key not in keys]
        raise ValueError(
            f"{path}: holds statistics {present} but not {missing}; a reference batch needs all of "
            f"{list(STAT_KEYS)} or none"
        )
    with np.load(path) as data:
        stats = {key: data[key].astype(np.float64) for key in STAT_KEYS}
    for mean, cov, dim in (("mu", "sigma", pool_dim), ("mu_s", "sigma_s", spatial_dim)):
        if dim is None:
            dim = len(stats[mean]) if stats[mean].ndim == 1 else 0
            if stats[mean].ndim != 1 or stats[cov].shape != (dim, dim):
                raise ValueError(
                    f"{path}: statistics {mean!r} {stats[mean].shape} and {cov!r} {stats[cov].shape} "
                    "do not fit together: expected shapes (D,) and (D, D)"
                )
        for key, shape in ((mean, (dim,)), (cov, (dim, dim))):
            if stats[key].shape != shape:
                raise ValueError(
                    f"{path}: statistic {key!r} has shape {stats[key].shape}, expected {shape}"
                )
    bad = [key for key in STAT_KEYS if not np.isfinite(stats[key]).all()]
    if bad:
        raise ValueError(
            f"{path}: statistics {bad} hold NaN or infinite values; recompute them "
            "(evaluator.py --make_ref) or remove them to let the evaluator use the images"
        )
    return stats


# ----------------------------------------------------------------------------------------------
# Image sources: .npz batches, in-memory arrays, folders


def _resize_batch(images: np.ndarray, image_size: int | None) -> np.ndarray:
    if image_size is None or images.shape[1:3] == (image_size, image_size):
        return images
    return np.stack([center_crop_arr(Image.fromarray(image), image_size) for image in images])


class ImageSource:
    """
    A sized, re-iterable stream of uint8 [n x H x W x 3] image batches from an .npz path, an
    in-memory array or an image folder, optionally centre-cropped to image_size.
    """

    def __init__(self, source: str | np.ndarray, image_size: int | None = None):
        if image_size is not None and image_size < 1:
            raise ValueError(f"--image_size must be a positive number of pixels, got {image_size}")
        self.source, self.image_size = source, image_size
        if isinstance(source, np.ndarray):
            self.name = "image array"
            check_image_array(source.shape, source.dtype, self.name)
            self._files, shape = None, source.shape
        elif os.path.isdir(source):
            self.name = str(source)
            self._files = list_image_files(source)
            if not self._files:
                raise ValueError(
                    f"{source}: no {'/'.join(IMAGE_EXTENSIONS)} images found in this folder"
                )
            first = self._load_file(self._files[0])
            shape = (len(self._files),) + first.shape
        else:
            self.name = str(source)
            self._files = None
            with NpzArrayReader(source) as reader:
                check_image_array(reader.shape, reader.dtype, self.name)
                shape = reader.shape
        if image_size is not None:
            shape = (shape[0], image_size, image_size, 3)
        self.shape = tuple(shape)

    def __len__(self) -> int:
        return self.shape[0]

    def _load_file(self, path: str) -> np.ndarray:
        try:
            with Image.open(path) as image:
                image.load()
                rgb = to_rgb(image, path)  # 16-bit PNGs at their real scale
                if self.image_size is not None:
                    return center_crop_arr(rgb, self.image_size)
                return np.asarray(rgb)
        except OSError as err:
            raise ValueError(f"{path}: cannot read this image ({err})") from err

    def iter_batches(self, batch_size: int) -> Iterator[np.ndarray]:
        """:return: an iterator over uint8 [n x H x W x 3] batches covering every image once."""
        if isinstance(self.source, np.ndarray):
            for start in range(0, len(self.source), batch_size):
                yield _resize_batch(self.source[start : start + batch_size], self.image_size)
        elif self._files is not None:
            for start in range(0, len(self._files), batch_size):
                images = [self._load_file(path) for path in self._files[start : start + batch_size]]
                for path, image in zip(self._files[start : start + batch_size], images):
                    if image.shape != self.shape[1:]:
                        raise ValueError(
                            f"{path}: image of size {image.shape[1]}x{image.shape[0]} differs from "
                            f"the first image's {self.shape[2]}x{self.shape[1]}; pass --image_size "
                            "to centre-crop every image to one size"
                        )
                yield np.stack(images)
        else:
            with NpzArrayReader(self.source) as reader:
                for images in reader.iter_batches(batch_size):
                    yield _resize_batch(images, self.image_size)


# ----------------------------------------------------------------------------------------------
# Inception activations


def _extractor_device(extractor: torch.nn.Module) -> torch.device:
    tensor = next(itertools.chain(extractor.parameters(), extractor.buffers()), None)
    return tensor.device if tensor is not None else torch.device("cpu")


def output_keys(extractor: torch.nn.Module) -> tuple[str, ...]:
    """:return: the names of the extractor's outputs (INCEPTION_KEYS unless it says otherwise)."""
    return tuple(getattr(extractor, "output_keys", INCEPTION_KEYS))


def compute_activations(
    extractor: torch.nn.Module,
    source: str | np.ndarray | ImageSource,
    batch_size: int = 64,
    progress: bool = False,
    on_batch: Callable[[np.ndarray], None] | None = None,
) -> dict[str, np.ndarray | None]:
    """
    Run a feature extractor over every image of a batch.

    :param extractor: a module mapping uint8 [n x 3 x H x W] images to a dict with "pool"
                      [n x 2048], "spatial" [n x 2023] and "logits" [n x 1008] or None (the
                      Inception network), or with the keys of its ``output_keys`` attribute.
    :param source: an .npz path, a uint8 [N x H x W x 3] array, a folder, or an ImageSource.
    :param batch_size: images per forward pass.
    :param progress: show a tqdm progress bar.
    :param on_batch: called with every uint8 [n x H x W x 3] batch before it is processed.
    :return: {"pool": [N x 2048], "spatial": [N x 2023], "logits": [N x 1008] or None}, float32
             (or one [N x D] array per key of ``output_keys``).
    """
    if not isinstance(source, ImageSource):
        source = ImageSource(source)
    device = _extractor_device(extractor)
    batches = source.iter_batches(batch_size)
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, total=-(-len(source) // batch_size), desc=source.name, leave=False)
    keys = output_keys(extractor)
    outputs: dict[str, list[np.ndarray]] = {key: [] for key in keys}
    for images in batches:
        if on_batch is not None:
            on_batch(images)
        # uint8 [n x H x W x 3] -> [n x 3 x H x W] on the extractor's device
        images = torch.from_numpy(np.ascontiguousarray(images)).to(device).permute(0, 3, 1, 2)
        with torch.no_grad():
            features = extractor(images)
        for key in outputs:
            if features.get(key) is not None:
                outputs[key].append(features[key].float().cpu().numpy())
    result = {key: (np.concatenate(parts) if parts else None) for key, parts in outputs.items()}
    _check_activations(result, len(source), source.name, keys)
    return result


def _check_activations(
    acts: dict, count: int, name: str, keys: tuple[str, ...] = INCEPTION_KEYS
) -> None:
    for key in keys:
        value = acts.get(key)
        if value is None and key == "logits":
            continue
        if value is None or value.ndim != 2 or len(value) != count:
            shape = None if value is None else value.shape
            raise ValueError(
                f"{name}: {key} activations have shape {shape}, expected ({count}, features)"
            )


def file_sha256(path: str, chunk_bytes: int = 1 << 24) -> str:
    """
    The SHA-256 of a file's bytes, read in chunks (about 10 s for a 9.8 GB batch). The digest
    is remembered in user_cache_dir() under the file's absolute path, size, modification
    time, device, inode and status-change time, so an unchanged batch is read once rather than
    at every evaluation. ``cp`` and ``touch -r`` can restore size and modification time but
    not the status-change time (ctime), which every write and ``touch`` sets to now; a
    digest is trusted only when the file's ctime was CTIME_MARGIN_NS older than the hashing,
    so a change made within the file system's timestamp granularity of it is never missed.

    :return: the hex digest.
    """
    stat = os.stat(path)
    stamp = {
        "path": os.path.abspath(path),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "dev": stat.st_dev,
        "ino": stat.st_ino,
        "ctime_ns": stat.st_ctime_ns,
    }
    memo = os.path.join(
        user_cache_dir(), "sha256", hashlib.sha256(stamp["path"].encode()).hexdigest()[:32] + ".json"
    )
    try:
        with open(memo) as f:
            saved = json.load(f)
        if (
            all(saved.get(k) == v for k, v in stamp.items())
            and isinstance(saved.get("sha256"), str)
            and saved.get("hashed_at_ns", 0) - stamp["ctime_ns"] > CTIME_MARGIN_NS
        ):
            return saved["sha256"]
    except (OSError, ValueError, TypeError):
        pass  # no memo yet, or an unreadable one: hash the file
    stamp["hashed_at_ns"] = time.time_ns()
    digest = hash_file(path, chunk_bytes)
    try:
        with atomic_write(memo, "w") as f:
            json.dump({**stamp, "sha256": digest}, f)
    except OSError:
        pass  # an unwritable cache only costs the next run a re-read
    return digest


def weights_identity(extractor: torch.nn.Module) -> str:
    """
    A string that changes whenever the extractor's weights do: the extractor's own
    ``weights_id`` / ``weights_sha256`` attribute when it has one, else a hash of its class
    name and state dict.
    """
    for attr in ("weights_id", "weights_sha256"):
        value = getattr(extractor, attr, None)
        if value:
            return str(value)
    digest = hashlib.sha256(type(extractor).__qualname__.encode())
    for name, tensor in extractor.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def user_cache_dir() -> str:
    """:return: the fallback directory for activation caches ($XDG_CACHE_HOME or ~/.cache)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "guided_diffusion", "evaluations")


def cache_paths(batch_path: str, extractor: torch.nn.Module) -> list[str]:
    """
    :return: the candidate cache files for a batch's activations: next to the batch, then in
             user_cache_dir(). The name holds the extractor's ``cache_tag`` ("inception"
             unless it has one) and a hash of the batch's content and the weights.
    """
    key = hashlib.sha256(
        f"{CACHE_VERSION}:{file_sha256(batch_path)}:{weights_identity(extractor)}".encode()
    ).hexdigest()[:20]
    tag = getattr(extractor, "cache_tag", "inception")
    name = f"{os.path.basename(batch_path)}.{tag}-{key}.npz"
    return [
        os.path.join(os.path.dirname(os.path.abspath(batch_path)), name),
        os.path.join(user_cache_dir(), name),
    ]


def _load_cache(
    path: str, count: int, keys: tuple[str, ...] = INCEPTION_KEYS
) -> dict[str, np.ndarray | None] | None:
    try:
        with np.load(path) as data:
            acts = {key: (data[key] if key in data else None) for key in keys}
        _check_activations(acts, count, path, keys)
        return acts
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        warnings.warn(f"ignoring unreadable activation cache {path}: {err}")
        return None


def _save_cache(paths: list[str], acts: dict[str, np.ndarray | None]) -> None:
    arrays = {key: value for key, value in acts.items() if value is not None}
    for path in paths:
        try:
            with atomic_write(path, "wb") as f:
                np.savez(f, **arrays)
            return
        except OSError as err:
            warnings.warn(f"cannot write activation cache {path}: {err}")
    warnings.warn("activations were not cached (no writable cache location)")


def cached_activations(
    extractor: torch.nn.Module,
    source: str | np.ndarray,
    batch_size: int = 64,
    use_cache: bool = True,
    progress: bool = False,
) -> dict[str, np.ndarray | None]:
    """
    compute_activations(), reusing activations cached for the same file content and weights.
    Arrays and folders are never cached; an unwritable batch directory falls back to
    user_cache_dir(), and failing that the cache is skipped with a warning.

    :param extractor: the Inception network or another feature extractor.
    :param source: an .npz path (cached) or anything compute_activations() accepts.
    :param batch_size: images per forward pass.
    :param use_cache: read and write the cache.
    :param progress: show a progress bar while computing.
    :return: the activations dict of compute_activations().
    """
    image_source = ImageSource(source)
    if not use_cache or not isinstance(source, (str, os.PathLike)) or os.path.isdir(source):
        return compute_activations(extractor, image_source, batch_size, progress)
    paths = cache_paths(str(source), extractor)
    for path in paths:
        if os.path.exists(path):
            acts = _load_cache(path, len(image_source), output_keys(extractor))
            if acts is not None:
                return acts
    acts = compute_activations(extractor, image_source, batch_size, progress)
    _save_cache(paths, acts)
    return acts


# ----------------------------------------------------------------------------------------------
# Reference batches


def write_reference_batch(
    source: str | np.ndarray,
    out_path: str,
    extractor: torch.nn.Module,
    image_size: int | None = None,
    batch_size: int = 64,
    progress: bool = False,
    use_cache: bool = True,
    log: Callable[[str], None] | None = None,
) -> dict[str, np.ndarray]:
    """
    Write a reference batch: ``arr_0`` (uint8 [N x H x W x 3], for precision / recall) and the
    statistics ``mu``, ``sigma``, ``mu_s``, ``sigma_s``. Images are streamed into the output
    (which is written atomically), so the source never has to fit in memory.

    :param source: a folder of images, an .npz batch or a uint8 [N x H x W x 3] array.
    :param out_path: the .npz to write.
    :param extractor: the Inception feature extractor.
    :param image_size: centre-crop every image to this side first (required when a folder's
                       images differ in size).
    :param batch_size: images per forward pass.
    :param progress: show a progress bar.
    :param use_cache: also store the activations as the new batch's activation cache.
    :param log: called with progress messages (e.g. print).
    :return: the statistics written, plus "pool" / "spatial" / "logits" activations.
    """
    images = ImageSource(source, image_size)
    if len(images) < 2:
        raise ValueError(
            f"{images.name}: a reference batch needs at least 2 images, got {len(images)}"
        )
    if log:
        log(f"writing {len(images)} images of {images.shape[2]}x{images.shape[1]} to {out_path}...")
    with NpzWriter(out_path) as out:
        with out.array("arr_0", images.shape, np.uint8) as writer:
            acts = compute_activations(
                extractor, images, batch_size, progress, on_batch=writer.write
            )
        stats = dict(zip(("mu", "sigma"), compute_statistics(acts["pool"])))
        stats.update(zip(("mu_s", "sigma_s"), compute_statistics(acts["spatial"])))
        for key, value in stats.items():
            out.write(key, value)
    if use_cache:
        _save_cache(cache_paths(out_path, extractor), acts)
    return {**stats, **acts}
