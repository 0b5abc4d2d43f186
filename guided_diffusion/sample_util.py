"""
The pieces every sampling script shares: command-line flags, the loop over batches on
every rank, gathering the batches, and writing the ``samples_{N}x{H}x{W}x3.npz`` file
(with a PNG grid of the first samples beside it). Reading and writing the files
themselves is ``sample_io``'s job; loading the model and classifier is
``model_loading``'s, guidance ``guidance``'s (their functions stay importable here).

How a run divides the work: the images are numbered 0..N-1 and dealt out in rounds of
``batch_size * world_size``; in each round rank r draws the ``batch_size`` images that
start at ``round * batch_size * world_size + r * batch_size``. Gathering in rank order
therefore restores the numbering, so labels stay aligned, super-resolution keeps the
order of its base samples, and exactly N images come out however many ranks run.
With ``--seed`` each such chunk of images gets its own random stream, derived from
(seed, chunk index), so a run is reproducible and does not depend on the world size.
"""

import argparse
import math
import secrets
import sys
import time
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

import blobfile as bf
import numpy as np
import torch
import torch.nn as nn
from tqdm.auto import tqdm

from . import dist_util, logger, script_util
from .dist_util import all_gather_rows  # noqa: F401  (importable here as before)
from .gaussian_diffusion import GaussianDiffusion
from .guidance import classifier_cond_fn, labels_to_classifier_only  # noqa: F401
from .model_loading import load_classifier, load_model_and_diffusion  # noqa: F401 (old home)
from .sample_io import (  # SamplingInputError: the scripts use sample_util's name
    BaseSamples,
    SamplingInputError,
    image_grid,
    samples_file_name,
    save_png,
    save_samples_npz,
)
from .script_errors import run_program

# A function of (global image indices [n], generator) -> model_kwargs for those images.
KwargsFn = Callable[[np.ndarray, torch.Generator], dict[str, torch.Tensor]]


# ---------------------------------------------------------------- flags

# Help for the flags only the sampling scripts have, and sharper wording for a few that
# script_util.FLAG_HELP describes for training as well.
FLAG_HELP = {
    "num_samples": "how many images to produce in total, over all ranks",
    "batch_size": "images per model call on each rank",
    "classifier_scale": "guidance scale: multiplies the classifier's gradient (0: no guidance)",
    "base_samples": ".npz batch of low-resolution images to upsample (arr_0 uint8 NHWC at "
    "--small_size; arr_1 labels, needed when --class_cond True)",
    "data_dir": "folder of images to evaluate (searched recursively)",
    "seed": "random seed for reproducible batches (the same seed and --batch_size give the "
    "same file, whatever the number of ranks); default: a fresh seed, printed so the run can "
    "be repeated",
    "class_labels": "comma-separated class ids to sample, cycled over the images "
    "(e.g. '1,207,360'); default: random classes",
    "grid": "also write a PNG grid of the first samples beside the .npz",
    "save_terms": (
        "save the per-timestep bound terms as {vb,mse,xstart_mse}_terms.npz in the log "
        "directory, as the original does (False: only print bits/dim)"
    ),
}


def sampling_defaults(**script_flags) -> dict[str, object]:
    """
    The flags every sampling program has, with the original defaults, plus the new
    ``--seed`` and ``--grid``; ``script_flags`` adds a program's own flags.

    :return: flag name -> default, for add_flags().
    """
    return dict(
        clip_denoised=True,
        num_samples=10000,
        batch_size=16,
        use_ddim=False,
        model_path="",
        seed=None,
        grid=True,
        **script_flags,
    )


def add_flags(parser: argparse.ArgumentParser, defaults: dict[str, object]) -> None:
    """
    Add a script's own flags (not the model flags) with help text; like
    ``script_util.add_dict_to_argparser``, except that ``--seed`` (default None) is an int.

    :param parser: the parser to extend.
    :param defaults: flag name -> default.
    """
    defaults = dict(defaults)
    if "seed" in defaults:
        default = defaults.pop("seed")
        parser.add_argument(
            "--seed", type=int, default=default, help=f"{FLAG_HELP['seed']} (default: {default})"
        )
    script_util.add_dict_to_argparser(parser, defaults, helps=FLAG_HELP)


def check_counts(num_samples: int, batch_size: int) -> None:
    """Reject a non-positive ``--num_samples`` or ``--batch_size``."""
    if num_samples <= 0:
        raise SamplingInputError(f"--num_samples must be a positive integer, got {num_samples}")
    if batch_size <= 0:
        raise SamplingInputError(f"--batch_size must be a positive integer, got {batch_size}")


def parse_class_labels(text: str, num_classes: int) -> Optional[list[int]]:
    """
    Parse ``--class_labels``.

    :param text: comma-separated class ids, or "" for random classes.
    :param num_classes: valid ids are 0..num_classes-1.
    :return: the ids, or None for random classes.
    """
    if not text.strip():
        return None
    try:
        labels = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise SamplingInputError(
            f"--class_labels must be comma-separated integers such as '1,207,360', got {text!r}"
        ) from None
    bad = [y for y in labels if not 0 <= y < num_classes]
    if not labels or bad:
        raise SamplingInputError(
            f"--class_labels {text!r}: class ids must lie in 0..{num_classes - 1} "
            f"(--num_classes {num_classes}); out of range: {bad}"
        )
    return labels


def num_classes_of(args: argparse.Namespace) -> int:
    """
    How many classes labels are drawn from: those of the training folder when the run
    configuration beside the checkpoint names them (``args.class_names``, set by
    ``run_config.parse_args``), else ``--num_classes`` (the original 1000 where a factory
    has none).
    """
    if getattr(args, "class_names", None):
        return len(args.class_names)
    return int(getattr(args, "num_classes", script_util.NUM_CLASSES))


# ---------------------------------------------------------------- what each image gets


def class_label_kwargs(class_labels: Optional[list[int]], num_classes: int) -> KwargsFn:
    """
    Labels for class-conditional sampling: ``class_labels`` cycled over the image
    indices, or uniformly random classes when it is None.

    :return: a KwargsFn giving {"y": int64 [n]}.
    """

    def make(indices: np.ndarray, generator: torch.Generator) -> dict[str, torch.Tensor]:
        if class_labels is None:
            y = torch.randint(0, num_classes, (len(indices),), generator=generator)
        else:
            y = torch.tensor([class_labels[i % len(class_labels)] for i in indices])
        return {"y": y.long()}

    return make


def no_kwargs(indices: np.ndarray, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """The KwargsFn of an unconditional model."""
    return {}


def base_sample_kwargs(base: BaseSamples, class_cond: bool) -> KwargsFn:
    """
    Model kwargs for upsampling: ``low_res`` (float [n x 3 x h x w] in [-1, 1]) from the
    base images with the same indices, plus their labels ``y`` when ``class_cond``.
    """

    def make(indices: np.ndarray, generator: torch.Generator) -> dict[str, torch.Tensor]:
        images = torch.from_numpy(base.images[indices]).float() / 127.5 - 1.0  # (n, h, w, 3)
        kwargs = {"low_res": images.permute(0, 3, 1, 2).contiguous()}  # (n, 3, h, w)
        if class_cond:
            kwargs["y"] = torch.from_numpy(base.labels[indices])
        return kwargs

    return make


# ---------------------------------------------------------------- distributed helpers


def _rank_and_world() -> tuple[int, int]:
    """Rank and size of the running process group ((0, 1) without one)."""
    return dist_util.get_rank() if dist_util.group_size() > 1 else 0, dist_util.group_size()


def shared_seed(seed: Optional[int]) -> int:
    """
    The run's base seed: ``seed``, or a fresh one drawn on rank 0 and shared by all ranks.
    """
    if seed is not None:
        return int(seed)
    return int(dist_util.broadcast_object(secrets.randbits(31)))


def chunk_seeds(seed: int, chunk: int) -> tuple[int, int]:
    """Two independent 32-bit seeds (noise, labels) for one chunk of images."""
    noise_seed, label_seed = np.random.SeedSequence([seed, chunk]).generate_state(2)
    return int(noise_seed), int(label_seed)


# ---------------------------------------------------------------- the batch loop


def to_uint8_nhwc(sample: torch.Tensor) -> torch.Tensor:
    """
    :param sample: [N x 3 x H x W] images in [-1, 1].
    :return: [N x H x W x 3] uint8 (x + 1) * 127.5, rounded and clamped to 0..255.
    """
    pixels = ((sample.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).contiguous()  # (N, H, W, 3)


@dataclass
class SampleResult:
    """Gathered samples on rank 0 (None elsewhere) and how long they took."""

    images: Optional[np.ndarray]  # [N x H x W x 3] uint8
    labels: Optional[np.ndarray]  # [N] int64, or None without labels
    seconds: float
    seed: int


def chunk_plan(
    num_samples: int, batch_size: int, rank: int, world: int
) -> Iterator[tuple[int, int, int]]:
    """
    How the images 0..N-1 are split: for each round of ``batch_size * world`` images,
    yield this rank's (chunk index, first image index, image count); the count is 0 for
    ranks past the end in the last round (they still join that round's gather).
    """
    per_round = batch_size * world
    for round_index in range(math.ceil(num_samples / per_round)):
        start = round_index * per_round + rank * batch_size
        count = min(max(num_samples - start, 0), batch_size)
        yield round_index * world + rank, start, count


def sample_images(
    model: Callable,
    diffusion: GaussianDiffusion,
    *,
    num_samples: int,
    batch_size: int,
    image_size: int,
    make_kwargs: KwargsFn = no_kwargs,
    cond_fn: Optional[Callable] = None,
    use_ddim: bool = False,
    clip_denoised: bool = True,
    seed: Optional[int] = None,
    device: Optional[torch.device] = None,
) -> SampleResult:
    """
    Draw exactly ``num_samples`` images, split over the ranks, and gather them on rank 0.

    :param model: the model (or a wrapper) called as model(x, t, **model_kwargs).
    :param diffusion: the (spaced) diffusion process.
    :param num_samples: N, the total over all ranks.
    :param batch_size: images per model call on each rank.
    :param image_size: H = W of the samples.
    :param make_kwargs: model_kwargs for given image indices; a "y" entry is the label
        that is gathered with the images.
    :param cond_fn: optional guidance gradient, see ``classifier_cond_fn``.
    :param use_ddim: DDIM instead of ancestral sampling.
    :param clip_denoised: clamp x_0 predictions to [-1, 1].
    :param seed: base seed (None: a fresh one).
    :param device: where to sample (default ``dist_util.dev()``).
    :return: SampleResult with [N x H x W x 3] uint8 images and [N] int64 labels on rank 0.
    """
    check_counts(num_samples, batch_size)
    device = device or dist_util.dev()
    rank, world = _rank_and_world()
    seed = shared_seed(seed)
    sample_fn = diffusion.ddim_sample_loop if use_ddim else diffusion.p_sample_loop
    images = np.zeros((num_samples, image_size, image_size, 3), np.uint8) if rank == 0 else None
    labels = np.zeros(num_samples, np.int64) if rank == 0 else None
    with_labels = False  # whether make_kwargs gives labels ("y"); rank 0 always has a chunk
    done = 0
    start_time = time.time()
    bar = tqdm(total=num_samples, unit="img", desc="sampling", disable=rank != 0, file=sys.stderr)
    for chunk, start, count in chunk_plan(num_samples, batch_size, rank, world):
        local = torch.zeros(batch_size, image_size, image_size, 3, dtype=torch.uint8)
        local_y = torch.zeros(batch_size, dtype=torch.int64)
        if count > 0:
            noise_seed, label_seed = chunk_seeds(seed, chunk)
            indices = np.arange(start, start + count)
            kwargs = make_kwargs(indices, torch.Generator().manual_seed(label_seed))
            torch.manual_seed(noise_seed)
            sample = sample_fn(
                model,
                (count, 3, image_size, image_size),
                clip_denoised=clip_denoised,
                cond_fn=cond_fn,
                model_kwargs={k: v.to(device) for k, v in kwargs.items()},
                device=device,
            )
            local[:count] = to_uint8_nhwc(sample).cpu()
            if "y" in kwargs:
                with_labels = True
                local_y[:count] = kwargs["y"]
        gathered = all_gather_rows(local)  # (world * batch_size, H, W, 3), valid rows first
        gathered_y = all_gather_rows(local_y)  # (world * batch_size,)
        valid = min(batch_size * world, num_samples - done)
        if rank == 0:
            images[done : done + valid] = gathered[:valid].numpy()
            labels[done : done + valid] = gathered_y[:valid].numpy()
        done += valid
        bar.update(valid)
    bar.close()
    if not with_labels:
        labels = None
    return SampleResult(images=images, labels=labels, seconds=time.time() - start_time, seed=seed)


# ---------------------------------------------------------------- writing


def write_outputs(
    result: SampleResult, grid: bool = True, out_dir: Optional[str] = None
) -> list[str]:
    """
    On rank 0, save the gathered samples to ``out_dir`` (default: the log directory) and
    log a summary of what went where; every rank waits until the files exist.

    :param grid: also write a PNG grid of the first 64 samples, named like the .npz.
    :return: the paths written (empty on other ranks).
    """
    rank, world = _rank_and_world()
    paths = []
    if rank == 0:
        out_dir = out_dir or logger.get_dir() or "."
        npz_path = bf.join(out_dir, samples_file_name(result.images))
        save_samples_npz(npz_path, result.images, result.labels)
        paths.append(npz_path)
        if grid:
            png_path = npz_path[: -len(".npz")] + ".png"
            save_png(png_path, image_grid(result.images))
            paths.append(png_path)
        _log_summary(result, paths, world)
    dist_util.barrier()
    return paths


def _log_summary(result: SampleResult, paths: list[str], world: int) -> None:
    n = len(result.images)
    rate = n / max(result.seconds, 1e-9)
    lines = [
        f"wrote {n} samples in {result.seconds:.1f} s ({rate:.2f} images/s, "
        f"{world} rank(s), seed {result.seed}):"
    ]
    label_note = ""
    if result.labels is not None:
        label_note = f", arr_1 int64 labels {result.labels.min()}..{result.labels.max()}"
    lines.append(f"  {paths[0]}  (arr_0 uint8 {list(result.images.shape)}{label_note})")
    if len(paths) > 1:
        lines.append(f"  {paths[1]}  (grid of the first {min(n, 64)})")
    lines.append(f"repeat this batch with --seed {result.seed}")
    logger.log("\n".join(lines))


# ---------------------------------------------------------------- bits/dim


def evaluate_bpd(
    model: nn.Module,
    diffusion: GaussianDiffusion,
    data: Iterator,
    *,
    num_samples: int,
    batch_size: int,
    clip_denoised: bool = True,
    seed: Optional[int] = None,
    device: Optional[torch.device] = None,
) -> dict[str, np.ndarray]:
    """
    Bits per dimension of exactly ``num_samples`` data images, split over the ranks like
    ``sample_images`` splits its images, logging a running mean after every round.

    :param data: this rank's iterator of (images [B x C x H x W] in [-1, 1], model_kwargs).
    :param seed: base seed for the noise of the bound terms (None: a fresh one).
    :return: on every rank, "total_bpd" and "prior_bpd" (scalars) and the per-timestep
        means "vb", "mse", "xstart_mse" ([T], from t = T-1 down to 0), over all images.
    """
    check_counts(num_samples, batch_size)
    device = device or dist_util.dev()
    rank, world = _rank_and_world()
    seed = shared_seed(seed)
    names = ("total_bpd", "prior_bpd", "vb", "mse", "xstart_mse")
    sums = None
    done = 0
    bar = tqdm(total=num_samples, unit="img", desc="bits/dim", disable=rank != 0, file=sys.stderr)
    for round_index, (chunk, _, count) in enumerate(
        chunk_plan(num_samples, batch_size, rank, world)
    ):
        local = torch.zeros(1 + 2 + 3 * diffusion.num_timesteps, dtype=torch.float64)
        if count > 0:
            batch, kwargs = next(data)
            batch = batch[:count].to(device)
            kwargs = {k: v[:count].to(device) for k, v in kwargs.items()}
            torch.manual_seed(chunk_seeds(seed, chunk)[0])
            metrics = diffusion.calc_bpd_loop(
                model, batch, clip_denoised=clip_denoised, model_kwargs=kwargs
            )
            # sums over this rank's images, flat: [count, total, prior, vb (T), mse (T), xstart_mse (T)]
            local = torch.cat(
                [torch.tensor([float(count)])]
                + [metrics[k].double().sum(0).flatten().cpu() for k in names]
            )
        round_sums = all_gather_rows(local[None]).sum(0)
        sums = round_sums if sums is None else sums + round_sums
        done += int(round_sums[0].item())
        if rank == 0:
            bar.update(int(round_sums[0].item()))
            logger.log(
                f"round {round_index + 1}: {int(round_sums[0])} images, bits/dim "
                f"{round_sums[1] / round_sums[0]:.4f}; running mean {sums[1] / sums[0]:.4f} "
                f"over {done}/{num_samples}"
            )
    bar.close()
    means = (sums[1:] / sums[0]).numpy()
    steps = diffusion.num_timesteps
    return {
        "total_bpd": means[0],
        "prior_bpd": means[1],
        "vb": means[2 : 2 + steps],
        "mse": means[2 + steps : 2 + 2 * steps],
        "xstart_mse": means[2 + 2 * steps :],
    }


# ---------------------------------------------------------------- running scripts


def run_script(main: Callable[[], None]) -> None:
    """
    Run a script's ``main``; bad flags, missing or damaged files and checkpoints that do
    not fit the flags end the process with a one-line message and exit status 1 instead of
    a traceback (any file being written is left out, since writes are atomic). See
    ``script_errors.run_program``.
    """
    run_program(main)
