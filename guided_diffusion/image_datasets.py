"""
Image folders as endless streams of training batches.

Images (jpg, jpeg, png, gif) are found recursively under a data directory, local or a
blobfile URL. With ``class_cond`` the class of an image is the part of its file name before
the first underscore ("<class>_<anything>.<ext>"), classes sorted and numbered from 0. Each
rank reads its own shard of the sorted file list, ``files[rank::world_size]``.

Images are cropped square the way the original release does it (box-filter halving, then a
bicubic resize of the shorter side, then a centre or random crop), so the pixels match it
exactly, and mapped to [-1, 1] as ``x / 127.5 - 1``.

The stream of batches is a function of a seed and the batch number alone: epoch e of rank r
visits its shard in the order drawn from (seed, r, e), and every image of it gets its own
seed for its random crop and flip, drawn with that order (``EpochSampler``). So batch n is the
same whichever worker process reads it and whether or not the run was resumed before it:
``load_data(..., start_batch=n)`` continues a stream at batch n.
"""

import math
import random
import signal
from collections.abc import Iterator, Sequence
from typing import Optional, Union

import blobfile as bf
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler

from . import dist_util

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "gif")


def load_data(
    *,
    data_dir: str,
    batch_size: int,
    image_size: int,
    class_cond: bool = False,
    deterministic: bool = False,
    random_crop: bool = False,
    random_flip: bool = True,
    num_workers: int = 1,
    seed: Optional[int] = None,
    start_batch: int = 0,
) -> Iterator[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
    """
    Endless batches of images from a folder, this rank's shard of it, each epoch in a new
    order (see the module docstring: the batches are those of ``seed``).

    All checks (folder exists, holds images, class names, shard size) happen when this is
    called, before any batch is read.

    :param data_dir: folder searched recursively (local path or blobfile URL).
    :param batch_size: images per batch on this rank.
    :param image_size: side of the square images.
    :param class_cond: also yield class labels taken from the file names.
    :param deterministic: keep the file order instead of shuffling every epoch.
    :param random_crop: random crops of a random scale instead of centre crops.
    :param random_flip: flip images horizontally with probability 0.5.
    :param num_workers: DataLoader worker processes (0 reads in this process).
    :param seed: the seed of the order and the augmentation (None: drawn from torch's
        global generator, so seeding torch makes it reproducible, as in the original).
    :param start_batch: the first batch to give: a training run resumed at step n (one batch
        per step) continues with the batches an uninterrupted run would have read.
    :return: an iterator of (images [N x 3 x image_size x image_size] float32 in [-1, 1],
        {"y": int64 labels [N]} with ``class_cond``, else {}).
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
    if image_size <= 0:
        raise ValueError(f"image_size must be a positive integer, got {image_size}")
    all_files = _list_data_files(data_dir)
    classes = None
    if class_cond:
        class_index = _class_index(all_files, data_dir)
        classes = [class_index[_class_name(path)] for path in all_files]
    rank, world_size = dist_util.get_rank(), dist_util.get_world_size()
    dataset = ImageDataset(
        image_size,
        all_files,
        classes=classes,
        shard=rank,
        num_shards=world_size,
        random_crop=random_crop,
        random_flip=random_flip,
    )
    # Every rank checks the smallest shard, so that all of them stop here, not just one.
    smallest_shard = len(all_files) // world_size
    if smallest_shard < batch_size:
        raise ValueError(
            f"--batch_size {batch_size} is larger than the smallest rank's share of "
            f"{data_dir!r}: {smallest_shard} of {len(all_files)} images over {world_size} "
            "rank(s), and incomplete batches are dropped; use a smaller batch size or more "
            "images"
        )
    if seed is None:
        seed = int(torch.randint(0, 2**62, ()).item())
    sampler = EpochSampler(
        len(dataset), batch_size, seed, rank=rank, shuffle=not deterministic,
        start_batch=start_batch,
    )  # fmt: skip
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        drop_last=True,
        persistent_workers=num_workers > 0,
        worker_init_fn=_ignore_sigterm,
    )
    return iter(loader)


def _ignore_sigterm(worker_id: int) -> None:
    """
    A worker ignores SIGTERM: a scheduler that stops a job signals every process of it, and
    the training loop stops at a step boundary (saving it), which needs its workers alive.
    Workers still end with the training process.
    """
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


class EpochSampler(Sampler):
    """
    An endless stream of (index, image seed) pairs for a DataLoader: epoch after epoch, the
    first ``len // batch_size`` full batches of a permutation of 0..len-1 (incomplete
    batches are dropped, as the original's ``drop_last``), each image with a seed for its
    augmentation. Epoch e's permutation and seeds come from (seed, rank, e) alone, so the
    stream can start at any batch (``start_batch``) and give what it would have given there.

    :param length: the number of images (this rank's shard).
    :param batch_size: images per batch.
    :param seed: the run's seed.
    :param rank: this rank (each rank draws its own orders).
    :param shuffle: False keeps the file order (the image seeds still vary by epoch).
    :param start_batch: the first batch to give, counting from 0 at the first epoch.
    """

    def __init__(
        self, length: int, batch_size: int, seed: int, rank: int = 0, shuffle: bool = True,
        start_batch: int = 0,
    ):  # fmt: skip
        if start_batch < 0 or length < batch_size:
            raise ValueError(
                f"need start_batch >= 0 and a batch of at most {length} images, got "
                f"start_batch {start_batch} and batch_size {batch_size}"
            )
        self.length, self.batch_size = length, batch_size
        self.seed, self.rank, self.shuffle = seed, rank, shuffle
        self.per_epoch = length // batch_size  # full batches per epoch
        self.start_batch = start_batch

    def epoch(self, number: int) -> tuple[np.ndarray, np.ndarray]:
        """:return: (the epoch's order, int64 [length]; a seed per position, int64 [length])."""
        rng = np.random.default_rng([self.seed, self.rank, number, _DATA_STREAM])
        order = rng.permutation(self.length) if self.shuffle else np.arange(self.length)
        return order, rng.integers(0, 2**63 - 1, self.length, dtype=np.int64)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        number, batch = divmod(self.start_batch, self.per_epoch)
        while True:
            order, seeds = self.epoch(number)
            for position in range(batch * self.batch_size, self.per_epoch * self.batch_size):
                yield int(order[position]), int(seeds[position])
            number, batch = number + 1, 0


# Tells the data order's random stream apart from the other streams of a run's seed.
_DATA_STREAM = 2


def list_classes(data_dir: str) -> dict[str, int]:
    """
    The class names found in a folder's file names and the labels ``load_data`` gives them.

    :param data_dir: folder searched recursively (local path or blobfile URL).
    :return: {class name: label}, names sorted, labels 0..len-1.
    """
    return _class_index(_list_data_files(data_dir), data_dir)


def indexed_images(data_dir: str, image_size: int, class_cond: bool = False) -> "ImageDataset":
    """
    Every image of a folder by index (sorted file order), centre-cropped and never flipped:
    the images to evaluate, each the same whatever rank or batch reads it.

    :param data_dir: folder searched recursively (local path or blobfile URL).
    :param image_size: side of the square images.
    :param class_cond: also give the labels ``load_data`` gives.
    :return: a dataset whose item i is (image [3 x H x W] float32 in [-1, 1], {"y": label}).
    """
    files = _list_data_files(data_dir)
    classes = None
    if class_cond:
        class_index = _class_index(files, data_dir)
        classes = [class_index[_class_name(path)] for path in files]
    return ImageDataset(image_size, files, classes=classes, random_flip=False)


def _list_data_files(data_dir: str) -> list[str]:
    """The sorted image list of ``data_dir``, with errors that say what is wrong."""
    if not data_dir:
        raise ValueError("no data directory given: set --data_dir to a folder of images")
    if not bf.exists(data_dir):
        raise FileNotFoundError(f"data directory not found: {data_dir!r} (--data_dir)")
    if not bf.isdir(data_dir):
        raise ValueError(f"--data_dir must be a folder of images, got the file {data_dir!r}")
    files = _list_image_files_recursively(data_dir)
    if not files:
        raise ValueError(
            f"no images in data directory {data_dir!r}: expected files ending in "
            f"{', '.join('.' + e for e in IMAGE_EXTENSIONS)} (searched recursively)"
        )
    return files


def _class_name(path: str) -> str:
    return bf.basename(path).split("_")[0]


def _class_index(files: Sequence[str], data_dir: str) -> dict[str, int]:
    unlabelled = [path for path in files if "_" not in bf.basename(path)]
    if unlabelled:
        raise ValueError(
            f"class_cond needs the class in each file name, as '<class>_<anything>.<ext>' "
            f"(e.g. 'n01440764_10026.JPEG' or 'cat_0001.png'), but {len(unlabelled)} of "
            f"{len(files)} files in {data_dir!r} have no '_' in their name, e.g. "
            f"{unlabelled[0]!r}; rename them or train without --class_cond"
        )
    names = sorted({_class_name(path) for path in files})
    return {name: index for index, name in enumerate(names)}


def list_image_files(data_dir: str) -> list[str]:
    """
    :param data_dir: folder (local path or blobfile URL).
    :return: the images below it, in the order training and evaluation read them.
    """
    return _list_image_files_recursively(data_dir)


def _list_image_files_recursively(data_dir: str) -> list[str]:
    """
    :param data_dir: folder (local path or blobfile URL).
    :return: paths of the images below it: each folder's entries in sorted order, files by
        extension (case-insensitive), sub-folders searched in place.
    """
    results = []
    # One listing per folder (scandir tells files from folders without a query per entry).
    for entry in sorted(bf.scandir(data_dir), key=lambda e: e.name):
        full_path = bf.join(data_dir, entry.name)
        extension = entry.name.rsplit(".", 1)[-1].lower()
        if entry.is_dir:
            results.extend(_list_image_files_recursively(full_path))
        elif "." in entry.name and extension in IMAGE_EXTENSIONS:
            results.append(full_path)
    return results


class ImageDataset(Dataset):
    """
    One shard of a list of images, as float32 CHW arrays in [-1, 1].

    :param resolution: side of the square output images.
    :param image_paths: all image paths (local or blobfile URLs).
    :param classes: one integer label per path, or None.
    :param shard: this shard's index; it holds ``image_paths[shard::num_shards]``.
    :param num_shards: number of shards (ranks).
    :param random_crop: random-scale random crops instead of centre crops.
    :param random_flip: flip horizontally with probability 0.5.
    """

    def __init__(
        self,
        resolution: int,
        image_paths: Sequence[str],
        classes: Optional[Sequence[int]] = None,
        shard: int = 0,
        num_shards: int = 1,
        random_crop: bool = False,
        random_flip: bool = True,
    ):
        super().__init__()
        if classes is not None and len(classes) != len(image_paths):
            raise ValueError(
                f"got {len(classes)} class labels for {len(image_paths)} images; "
                "need one label per image"
            )
        self.resolution = resolution
        self.local_images = list(image_paths[shard::num_shards])
        self.local_classes = None if classes is None else list(classes[shard::num_shards])
        self.random_crop = random_crop
        self.random_flip = random_flip

    def __len__(self) -> int:
        return len(self.local_images)

    def __getitem__(
        self, idx: Union[int, tuple[int, int]]
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """
        :param idx: an index, or (index, seed): the crop and flip then come from the seed
            (``EpochSampler``), else from Python's global ``random``.
        :return: (image [3 x resolution x resolution] float32 in [-1, 1], {"y": label}).
        """
        rng = random
        if isinstance(idx, tuple):
            idx, seed = idx
            rng = random.Random(seed)
        pil_image = read_rgb(self.local_images[idx])
        if self.random_crop:
            arr = random_crop_arr(pil_image, self.resolution, rng=rng)
        else:
            arr = center_crop_arr(pil_image, self.resolution)
        if self.random_flip and rng.random() < 0.5:
            arr = arr[:, ::-1]
        arr = arr.astype(np.float32) / 127.5 - 1
        out_dict = {}
        if self.local_classes is not None:
            out_dict["y"] = np.array(self.local_classes[idx], dtype=np.int64)
        return np.transpose(arr, [2, 0, 1]), out_dict  # HWC -> CHW


def read_rgb(path: str) -> Image.Image:
    """Read an image file fully and convert it to RGB, naming the file on failure."""
    try:
        with bf.BlobFile(path, "rb") as f:
            pil_image = Image.open(f)
            pil_image.load()
        return to_rgb(pil_image, path)
    except Exception as exc:
        raise ValueError(f"cannot read image file {path!r}: {exc}") from exc


def to_rgb(pil_image: Image.Image, name: str = "image") -> Image.Image:
    """
    Convert an image to 8-bit RGB at its real scale. PIL's ``convert("RGB")`` clips 16-bit
    greyscale values (0..65535, modes "I;16*" and a PNG's "I") at 255, turning most pixels
    white: these are scaled by 255 / 65535 first. Other integer or float images, whose range
    is unknown, are refused.

    :raises ValueError: naming ``name`` for an image mode with no known 8-bit scale.
    """
    mode = pil_image.mode
    sixteen_bit = mode.startswith("I;16") or (mode == "I" and pil_image.format == "PNG")
    if sixteen_bit:
        values = np.asarray(pil_image, dtype=np.float64)
        grey = np.clip(np.rint(values * (255.0 / 65535.0)), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    if mode in ("I", "F") or mode.startswith("I;"):
        raise ValueError(
            f"{name}: {mode!r} images ({'32-bit integer' if mode != 'F' else 'floating-point'} "
            "pixels of unknown range) are not supported; save it as 8- or 16-bit PNG or JPEG"
        )
    return pil_image.convert("RGB")


def center_crop_arr(pil_image: Image.Image, image_size: int) -> np.ndarray:
    """
    Scale an image so its shorter side is ``image_size`` and cut out the central square.

    :param pil_image: the image (RGB for a 3-channel result).
    :param image_size: side of the square result.
    :return: uint8 array [image_size x image_size x channels].
    """
    arr = _resize_shorter_side(pil_image, image_size)
    top = (arr.shape[0] - image_size) // 2
    left = (arr.shape[1] - image_size) // 2
    return arr[top : top + image_size, left : left + image_size]


def random_crop_arr(
    pil_image: Image.Image,
    image_size: int,
    min_crop_frac: float = 0.8,
    max_crop_frac: float = 1.0,
    rng=random,
) -> np.ndarray:
    """
    Scale an image so its shorter side is a random size between ``image_size /
    max_crop_frac`` and ``image_size / min_crop_frac`` (rounded up), then cut out a square at
    a random place.

    :param pil_image: the image (RGB for a 3-channel result).
    :param image_size: side of the square result.
    :param min_crop_frac: smallest crop side as a fraction of the shorter side.
    :param max_crop_frac: largest crop side as a fraction of the shorter side.
    :param rng: a ``random.Random`` (default: Python's ``random`` module).
    :return: uint8 array [image_size x image_size x channels].
    """
    smallest = math.ceil(image_size / max_crop_frac)
    largest = math.ceil(image_size / min_crop_frac)
    arr = _resize_shorter_side(pil_image, rng.randrange(smallest, largest + 1))
    top = rng.randrange(arr.shape[0] - image_size + 1)
    left = rng.randrange(arr.shape[1] - image_size + 1)
    return arr[top : top + image_size, left : left + image_size]


def _resize_shorter_side(pil_image: Image.Image, size: int) -> np.ndarray:
    """
    Halve the image with a box filter while its shorter side is at least ``2 * size``
    (cheap and alias-free), then resize it bicubically so the shorter side is ``size``.

    :return: uint8 array [height x width x channels].
    """
    while min(pil_image.size) >= 2 * size:
        half = (pil_image.width // 2, pil_image.height // 2)
        pil_image = pil_image.resize(half, resample=Image.BOX)
    scale = size / min(pil_image.size)
    new_size = (round(pil_image.width * scale), round(pil_image.height * scale))
    pil_image = pil_image.resize(new_size, resample=Image.BICUBIC)
    return np.array(pil_image)
