"""
The pieces the editing programs (``scripts/image_edit.py``, ``scripts/ddim_invert.py``)
share: reading input images (a ``.npz`` batch, a folder, or one image file) and masks,
loading the models, running a method over the images split across the ranks like the
sampling programs (see ``sample_util``), and writing the ``.npz`` with a PNG grid of input,
degraded and result side by side. Their flags are ``edit_flags``' (``image_edit_defaults``,
``ddim_invert_defaults``, ``EDIT_FLAG_HELP``).
"""

import argparse
import json
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Optional

import blobfile as bf
import numpy as np
import torch

from . import dist_util, flags, guidance, logger, shards
from .image_datasets import center_crop_arr, list_image_files, read_rgb
from .image_seeds import chunk_seeds, shared_seed
from .io_util import atomic_write, is_local_path
from .model_loading import load_classifier, load_model_and_diffusion
from .npz_batch import npz_keys, read_array, read_npz_images
from .operators import MASK_NAMES, mask_from_image, named_mask
from .sample_io import image_grid, save_png, to_uint8_nhwc
from .script_errors import SamplingInputError

# ---------------------------------------------------------------- inputs


def read_images(
    path: str, image_size: int, limit: int = 0, notes: Optional[list[str]] = None
) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """
    The images to edit: a .npz batch (arr_0 uint8 [N x H x W x C], arr_1 labels), a
    folder of images, or one image file; files are scaled (shorter side ``image_size``) and
    centre-cropped to ``image_size``.

    :param limit: keep the first ``limit`` images (0: all).
    :param notes: if given, a line saying so is appended when files were resized, for the log.
    :return: (uint8 [N x image_size x image_size x 3], int64 labels [N] or None).
    """
    if not path:
        raise SamplingInputError("--input is required: a .npz batch, a folder or an image file")
    if not bf.exists(path):
        raise FileNotFoundError(f"--input: no such file or folder: {path}")
    labels = None
    if path.endswith(".npz"):
        images, labels = read_npz_images(path)
        if images.shape[1:3] != (image_size, image_size):
            raise SamplingInputError(
                f"--input {path}: images are {images.shape[1]}x{images.shape[2]}, the model "
                f"takes {image_size}x{image_size} (--image_size)"
            )
        images = np.repeat(images, 3, axis=3) if images.shape[3] == 1 else images[..., :3]
    else:
        files = list_image_files(path) if bf.isdir(path) else [path]
        if not files:
            raise SamplingInputError(f"--input {path}: the folder holds no images")
        try:
            pictures = [read_rgb(f) for f in files]
        except ValueError as err:
            raise SamplingInputError(f"--input: {err}") from None
        other = [p.size for p in pictures if p.size != (image_size, image_size)]
        if other and notes is not None:
            notes.append(
                f"--input {path}: {len(other)} of {len(files)} images are not "
                f"{image_size}x{image_size} (the first is {other[0][0]}x{other[0][1]}): each is "
                f"scaled to a shorter side of {image_size} and centre-cropped to "
                f"{image_size}x{image_size} (--image_size)"
            )
        images = np.stack([center_crop_arr(p, image_size) for p in pictures])
    if limit > 0:
        images, labels = images[:limit], None if labels is None else labels[:limit]
    return images, labels


def read_noise(path: str, image_size: int, limit: int) -> tuple[torch.Tensor, Optional[np.ndarray]]:
    """
    Read an ``inverted_*.npz`` file.

    :return: (float32 noise [N x 3 x H x W], int64 labels [N] or None).
    """
    if not path:
        raise SamplingInputError("--input is required: the .npz of --mode encode")
    if not bf.exists(path):
        raise FileNotFoundError(f"--input: no such file: {path}")
    try:
        noise, labels = _read_noise_arrays(path)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as err:
        text = str(err)
        if "pickle" in text:  # never follow numpy's advice to load pickles
            text = "it holds pickled objects, which are never loaded"
        raise SamplingInputError(
            f"--input {path} is not a noise .npz written by --mode encode ({text}); to edit "
            "images, run --mode encode on them first and decode the inverted_*.npz it writes"
        ) from None
    expected = (3, image_size, image_size)
    if noise.ndim != 4 or noise.shape[1:] != expected or noise.dtype.kind != "f":
        raise SamplingInputError(
            f"--input {path}: arr_0 must be float noise [N x 3 x {image_size} x {image_size}], "
            f"got {noise.dtype} {list(noise.shape)}"
        )
    if limit > 0:
        noise, labels = noise[:limit], None if labels is None else labels[:limit]
    return torch.from_numpy(noise.astype(np.float32)), labels


def _read_noise_arrays(path: str) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """:return: (arr_0, arr_1 or None) of an .npz, read without unpickling anything."""
    if is_local_path(path):
        if not zipfile.is_zipfile(path):
            with open(path, "rb") as f:
                start = f.read(8)
            raise ValueError(f"not a zip archive of arrays: it starts with {start!r}")
        labels = read_array(path, "arr_1") if "arr_1" in npz_keys(path) else None
        return read_array(path, "arr_0"), labels
    with bf.BlobFile(path, "rb") as f, np.load(f, allow_pickle=False) as npz:
        return npz["arr_0"], (npz["arr_1"] if "arr_1" in npz.files else None)


def load_mask(
    spec: str, image_size: int, ratio: float, seed: int, notes: Optional[list[str]] = None
) -> torch.Tensor:
    """
    ``--mask``: an image file of the images' size (known where its first, red, channel is
    >= 128), or a named mask.

    :param notes: if given, the rule and the share of known pixels of a mask file are
        appended, for the log.
    :return: [1 x 1 x H x W] float of 0 / 1.
    """
    if spec in MASK_NAMES:
        return named_mask(spec, image_size, ratio, seed)
    if not bf.exists(spec):
        raise SamplingInputError(
            f"--mask {spec!r} is neither an image file nor one of {', '.join(MASK_NAMES)}"
        )
    try:
        pixels = np.array(read_rgb(spec))
    except ValueError as err:
        raise SamplingInputError(f"--mask: {err}") from None
    if pixels.shape[:2] != (image_size, image_size):
        raise SamplingInputError(
            f"--mask {spec}: the mask is {pixels.shape[1]}x{pixels.shape[0]} pixels but the "
            f"images are {image_size}x{image_size}"
        )
    mask = mask_from_image(pixels)
    if notes is not None:
        notes.append(
            f"--mask {spec}: known where its first (red) channel is >= 128, hidden elsewhere: "
            f"{int(mask.sum())} of {mask.numel()} pixels known"
        )
    return mask


def to_float(images: np.ndarray) -> torch.Tensor:
    """uint8 [N x H x W x 3] -> float [N x 3 x H x W] in [-1, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0


# ---------------------------------------------------------------- running on the ranks

# (images [n x 3 x H x W] in [-1, 1], labels [n] or None) -> outputs, each [n x C x H x W]
BatchFn = Callable[[torch.Tensor, Optional[torch.Tensor]], dict[str, torch.Tensor]]


@dataclass
class EditResult:
    """Outputs gathered on rank 0 (None elsewhere), in input order, and the time taken."""

    outputs: Optional[dict[str, np.ndarray]]  # name -> float32 [N x C x H x W]
    seconds: float
    seed: int


def map_sharded(
    fn: BatchFn,
    inputs: torch.Tensor,
    labels: Optional[np.ndarray],
    *,
    keys: tuple[str, ...],
    batch_size: int,
    seed: Optional[int] = None,
) -> EditResult:
    """
    Apply ``fn`` to every input, the chunks split over the ranks by ``shards.run_sharded``,
    and collect the outputs on rank 0 in input order. Each chunk seeds torch's generator
    from (seed, its first index), so results do not depend on the number of ranks.

    :param inputs: float [N x C x H x W] (images in [-1, 1], or noise).
    :param labels: int64 [N] passed along to fn, or None.
    :param keys: the names of fn's outputs; each has the input's [C x H x W] per image.
    """
    if batch_size <= 0:
        raise SamplingInputError(f"--batch_size must be a positive integer, got {batch_size}")
    seed = shared_seed(seed)
    total = len(inputs)
    outputs = None
    if dist_util.group_rank() == 0:
        outputs = {key: np.zeros((total, *inputs.shape[1:]), np.float32) for key in keys}

    def compute(start: int, count: int) -> dict[str, np.ndarray]:
        torch.manual_seed(chunk_seeds(seed, start)[0])
        x = inputs[start : start + count].to(dist_util.dev())
        y = None if labels is None else torch.from_numpy(labels[start : start + count])
        out = fn(x, None if y is None else y.to(dist_util.dev()))
        return {key: out[key].float().cpu().numpy() for key in keys}

    def sink(start: int, arrays: dict[str, np.ndarray]) -> None:
        for key, array in arrays.items():
            outputs[key][start : start + len(array)] = array

    start_time = time.time()
    shards.run_sharded(total, batch_size, compute, sink, desc="editing")
    return EditResult(outputs=outputs, seconds=time.time() - start_time, seed=seed)


# ---------------------------------------------------------------- writing


def side_by_side(*batches: np.ndarray, padding: int = 2) -> np.ndarray:
    """
    Join batches of images horizontally, image by image (input | degraded | result).

    :param batches: each uint8 [N x H x W x C].
    :return: uint8 [N x H x (k W + (k - 1) padding) x C].
    """
    n, h, _, c = batches[0].shape
    gap = np.zeros((n, h, padding, c), np.uint8)
    parts = [part for batch in batches for part in (gap, batch)][1:]
    return np.concatenate(parts, axis=2)


def write_edit_outputs(
    out_dir: str,
    prefix: str,
    arrays: dict[str, np.ndarray],
    grid_of: tuple[str, ...],
    metrics: Optional[dict[str, object]] = None,
) -> list[str]:
    """
    Write ``{prefix}_{N}x{H}x{W}x3.npz`` (``arrays`` as named; arr_0 is the result),
    when ``grid_of`` names arrays a PNG grid of them side by side, and ``metrics`` as a
    JSON file of the same name.

    :param arrays: name -> array; uint8 images are [N x H x W x 3].
    :return: the paths written.
    """
    shape = "x".join(str(s) for s in arrays["arr_0"].shape)
    npz_path = bf.join(out_dir, f"{prefix}_{shape}.npz")
    with atomic_write(npz_path, "wb") as f:
        np.savez(f, **arrays)
    paths = [npz_path]
    if grid_of:
        png_path = npz_path[: -len(".npz")] + ".png"
        save_png(png_path, image_grid(side_by_side(*(arrays[k] for k in grid_of))))
        paths.append(png_path)
    if metrics is not None:
        json_path = npz_path[: -len(".npz")] + ".json"
        with atomic_write(json_path, "w") as f:
            json.dump(metrics, f, indent=2)
        paths.append(json_path)
    logger.log("wrote " + ", ".join(paths))
    return paths


def to_uint8(images: np.ndarray) -> np.ndarray:
    """float [N x 3 x H x W] in [-1, 1] -> uint8 [N x H x W x 3]."""
    return to_uint8_nhwc(torch.from_numpy(images)).numpy()


# The other guidance the editing programs offer (they have no autoguidance).
EDIT_GUIDANCE = "--classifier_path (classifier guidance)"


@dataclass
class Models:
    """What a method runs with: the model (wrapped for guidance), process, guidance, labels."""

    model: Callable
    diffusion: object
    cond_fn: Optional[Callable]
    labels: Optional[np.ndarray]  # int64 [N] when the model or the classifier takes labels


def load_models(
    args: argparse.Namespace, given_labels: Optional[np.ndarray], count: int, seed: int
) -> Models:
    """
    Load ``--model_path`` (classifier-free guided at ``--guidance_scale`` unless 1) and,
    with ``--classifier_path``, the classifier for guidance at ``--classifier_scale``;
    choose each image's class (``image_labels``) when the model or the classifier needs one.

    :param given_labels: the input's labels (arr_1), or None.
    :param count: the number of images.
    """
    logger.log("creating model and diffusion...")
    model, diffusion = load_model_and_diffusion(args)
    # classifier-free, when not 1
    model = guidance.guided_model(model, args.guidance_scale, others=EDIT_GUIDANCE)
    cond_fn = None
    if args.classifier_path:
        logger.log(f"loading classifier (scale {args.classifier_scale})...")
        classifier = load_classifier(args)
        cond_fn = guidance.classifier_cond_fn(classifier, args.classifier_scale)
        model = model if args.class_cond else guidance.labels_to_classifier_only(model)
    labels = None
    if args.class_cond or cond_fn is not None:
        num_classes = flags.num_classes_of(args)
        origin = flags.class_count_origin(args)
        labels = image_labels(args.class_labels, given_labels, count, num_classes, seed, origin)
    return Models(model=model, diffusion=diffusion, cond_fn=cond_fn, labels=labels)


# ---------------------------------------------------------------- methods


def make_edit_fn(
    args: argparse.Namespace,
    diffusion,
    model: Callable,
    operator,
    cond_fn: Optional[Callable] = None,
) -> BatchFn:
    """
    The ``--method`` as a BatchFn: degrade each batch with ``operator`` (plus ``--sigma_y``
    noise), restore it, and return {"degraded": the measurement shown as an image,
    "result": the restored images}.

    :param args: the flags of ``image_edit_defaults()``.
    :param model: the model, wrapped for classifier guidance where needed.
    :param cond_fn: the classifier guidance gradient, or None.
    """
    from . import editing, restoration
    from .operators import low_pass_filter

    mask = getattr(operator, "mask", None)

    def edit(x: torch.Tensor, y: Optional[torch.Tensor]) -> dict[str, torch.Tensor]:
        kwargs = dict(clip_denoised=args.clip_denoised, model_kwargs={} if y is None else {"y": y})
        measured = operator.measure(x, args.sigma_y)
        degraded = operator.visualise(measured)
        if args.method == "repaint":
            result = restoration.repaint(
                diffusion, model, x, mask.to(x), jump_length=args.repaint_jump_length,
                jump_n_sample=args.repaint_jump_n_sample, paste=args.repaint_paste,
                cond_fn=cond_fn, **kwargs,
            )  # fmt: skip
        elif args.method == "sdedit":
            result = editing.sdedit(
                diffusion, model, degraded, strength=args.sdedit_strength,
                repeats=args.sdedit_repeats, keep_mask=None if mask is None else mask.to(x),
                cond_fn=cond_fn, **kwargs,
            )  # fmt: skip
        elif args.method == "ilvr":
            phi = low_pass_filter(args.ilvr_down_n, operator.image_shape, args.ilvr_filter)
            result = editing.ilvr(
                diffusion, model, degraded, phi, range_t=args.ilvr_range_t, cond_fn=cond_fn,
                **kwargs,
            )  # fmt: skip
        elif args.method == "dps":
            result = restoration.dps(
                diffusion, model, operator, measured, zeta=args.dps_zeta, cond_fn=cond_fn, **kwargs
            )
        else:
            result = restoration.ddnm(
                diffusion, model, operator, measured, eta=args.ddnm_eta, sigma_y=args.sigma_y,
                **kwargs,
            )  # fmt: skip
        return {"degraded": degraded, "result": result}

    return edit


def image_labels(
    text: str,
    given: Optional[np.ndarray],
    count: int,
    num_classes: int,
    seed: int,
    origin: Optional[str] = None,
) -> np.ndarray:
    """
    The class of each image: ``--class_labels`` cycled, else the input's labels, else
    random classes drawn from ``seed``.

    :param origin: where ``num_classes`` comes from, for messages
        (``flags.class_count_origin``; default: ``--num_classes``).
    :return: int64 [count].
    """
    origin = origin or f"--num_classes {num_classes}"
    chosen = flags.parse_class_labels(text, num_classes, origin)
    if chosen is not None:
        return np.array([chosen[i % len(chosen)] for i in range(count)], np.int64)
    if given is not None:
        if given.min() < 0 or given.max() >= num_classes:
            raise SamplingInputError(
                f"the input's labels (arr_1) lie in {given.min()}..{given.max()}, outside "
                f"0..{num_classes - 1} ({origin})"
            )
        return given.astype(np.int64)
    return np.random.default_rng(seed).integers(0, num_classes, count).astype(np.int64)


def psnr(result: np.ndarray, target: np.ndarray, where: Optional[np.ndarray] = None) -> float:
    """
    Mean PSNR (dB, images in [-1, 1], peak-to-peak 2) over images, optionally only over
    the pixels where ``where`` is 1.

    :param result: float [N x C x H x W]; target the same.
    :param where: [1 or N x 1 or C x H x W] of 0 / 1, or None for every pixel.
    """
    weights = np.ones_like(result) if where is None else np.broadcast_to(where, result.shape)
    squared = ((result - target) ** 2 * weights).reshape(len(result), -1).sum(1)
    mse = squared / np.maximum(weights.reshape(len(result), -1).sum(1), 1)
    return float(np.mean(10 * np.log10(4.0 / np.maximum(mse, 1e-12))))
