"""
The pieces every sampling program shares: command-line flags, what each image gets
(labels, base images), and the two callers of the rank-sharded loop
(``shards.run_sharded``): the sampling driver, which writes
``samples_{N}x{H}x{W}x3.npz`` (with a PNG grid of the first samples beside it) through
resumable shards, and the bits/dim evaluation. Loading the model and classifier is
``model_loading``'s job, guidance ``guidance``'s (their functions stay importable here).

Image i is made from (seed, i) alone (``image_seeds.ImageRandom``): its initial noise,
its label when labels are drawn and its step noise, so a run gives the same file for any
``--batch_size`` and any number of ranks. Reading and writing the files is
``npz_batch``'s and ``sample_io``'s job.
"""

import argparse
import dataclasses
import secrets
import time
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

import blobfile as bf
import numpy as np
import torch
import torch.nn as nn

from . import dist_util, logger, run_config, samplers, script_util
from .dist_util import all_gather_rows  # noqa: F401  (importable here as before)
from .flags import SAMPLING_FLAG_HELP as FLAG_HELP  # noqa: F401  (importable here as before)
from .flags import add_flags, create_sampling_parser, sampling_defaults  # noqa: F401
from .gaussian_diffusion import GaussianDiffusion
from .guidance import GuidanceError, guided_model, interval_active
from .guidance import classifier_cond_fn, labels_to_classifier_only  # noqa: F401
from .image_seeds import ImageRandom
from .model_loading import load_classifier, load_guide_model  # noqa: F401 (old home)
from .model_loading import load_model_and_diffusion  # noqa: F401
from .npz_batch import NpzWriter, read_array
from .sample_io import (  # SamplingInputError: the scripts use sample_util's name
    BaseSamples,
    SamplingInputError,
    image_grid,
    samples_file_name,
    save_png,
    save_samples_npz,
)
from .script_errors import run_program
from .shards import ShardStore, file_identity, previous_seed, run_sharded

# A function of (global image indices [n], their random streams) -> model_kwargs for them.
KwargsFn = Callable[[np.ndarray, ImageRandom], dict[str, torch.Tensor]]
# A sampler: called like GaussianDiffusion.p_sample_loop(model, shape, *, noise,
# clip_denoised, cond_fn, model_kwargs, device, randn) -> [N x C x H x W] samples; e.g.
# functools.partial(samplers.sample, diffusion, sampler=name).
SampleFn = Callable[..., torch.Tensor]


# ---------------------------------------------------------------- flags


def check_counts(num_samples: int, batch_size: int) -> None:
    """Reject a non-positive ``--num_samples`` or ``--batch_size``."""
    if num_samples <= 0:
        raise SamplingInputError(f"--num_samples must be a positive integer, got {num_samples}")
    if batch_size <= 0:
        raise SamplingInputError(f"--batch_size must be a positive integer, got {batch_size}")


def parse_class_labels(
    text: str, num_classes: int, origin: Optional[str] = None
) -> Optional[list[int]]:
    """
    Parse ``--class_labels``.

    :param text: comma-separated class ids, or "" for random classes.
    :param num_classes: valid ids are 0..num_classes-1.
    :param origin: where that count comes from, for the message (``class_count_origin``;
        default: ``--num_classes``).
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
            f"({origin or f'--num_classes {num_classes}'}); out of range: {bad}"
        )
    return labels


def class_labels_of(args: argparse.Namespace) -> Optional[list[int]]:
    """:return: ``--class_labels`` parsed against ``num_classes_of(args)``, or None (random)."""
    return parse_class_labels(args.class_labels, num_classes_of(args), class_count_origin(args))


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


def class_count_origin(args: argparse.Namespace) -> str:
    """
    Where ``num_classes_of(args)`` comes from, for messages: the training folder's classes
    or the ``num_classes`` saved in a checkpoint's run configuration (the first of
    ``--model_path``, ``--classifier_path`` that has one), else the ``--num_classes`` flag.

    :return: e.g. "the 3 classes of the training folder, from runs/model000600.json".
    """
    count, names = num_classes_of(args), getattr(args, "class_names", None)
    for flag in ("model_path", "classifier_path"):
        path = getattr(args, flag, "")
        config = run_config.read_run_config(path) if path else None
        if config is None or not run_config.is_class_conditional(
            config["kind"], config["model_flags"]
        ):
            continue
        where = run_config.config_path(path)
        if names and (config.get("data") or {}).get("class_names") == names:
            return f"the {count} classes of the training folder, from {where}"
        if not names and config["model_flags"].get("num_classes") == count:
            return f"num_classes {count}, from {where}"
    return f"--num_classes {count}"


# ---------------------------------------------------------------- guidance


def guided_model_fn(
    args: argparse.Namespace,
    model: nn.Module,
    diffusion: GaussianDiffusion,
    super_res: bool = False,
    counts: Optional[samplers.EvaluationCounts] = None,
    interval: Optional[tuple[float, float]] = None,
) -> nn.Module:
    """
    The model to sample with for ``--guidance_scale`` and ``--guide_model_path``
    (``guidance.guided_model``): the model itself at scale 1 without a guide.

    :param args: parsed flags with ``guidance_scale``, ``guide_model_path`` and the model
        flags (see ``model_loading.load_guide_model`` for the guide's).
    :param model: the loaded main model.
    :param diffusion: its diffusion process.
    :param super_res: the models are upsamplers.
    :param counts: the sampler's evaluation counts, to which the guided model adds the
        evaluations of its second branch (null class or guide).
    :param interval: the run's guidance interval (``SamplerSetting.guidance_interval``, parsed
        once from ``--guidance_interval``): guide only where sigma_t / alpha_t lies in it.
    :return: a module called like ``model``.
    :raises SamplingInputError: the model cannot be guided that way.
    """
    guide, active = None, None
    if args.guide_model_path:
        logger.log("loading the autoguidance guide model...")
        guide = load_guide_model(args, diffusion, super_res)
    try:
        if interval is not None:
            active = interval_active(diffusion, interval)
        guided = guided_model(model, args.guidance_scale, guide=guide, active=active)
    except (GuidanceError, ValueError) as err:
        raise SamplingInputError(str(err)) from None
    if guided is not model:
        guided.counts = counts
    return guided


def load_sampling_model(
    args: argparse.Namespace, sampler: samplers.SamplerSetting, super_res: bool = False
) -> tuple[nn.Module, GaussianDiffusion]:
    """
    Load the model and diffusion of ``--model_path`` (``load_model_and_diffusion``) and
    wrap the model for the guidance flags (``guided_model_fn``), counting into ``sampler``.

    :param super_res: the model is an upsampler.
    :return: (model to sample with, diffusion).
    """
    logger.log("creating model and diffusion...")
    model, diffusion = load_model_and_diffusion(args, super_res=super_res)
    model = guided_model_fn(args, model, diffusion, super_res=super_res, counts=sampler.counts,
                            interval=sampler.guidance_interval)
    return model, diffusion


# ---------------------------------------------------------------- what each image gets


def class_label_kwargs(class_labels: Optional[list[int]], num_classes: int) -> KwargsFn:
    """
    Labels for class-conditional sampling: ``class_labels`` cycled over the image
    indices, or uniformly random classes (each image's from its own stream) when None.

    :return: a KwargsFn giving {"y": int64 [n]}.
    """

    def make(indices: np.ndarray, rng: ImageRandom) -> dict[str, torch.Tensor]:
        if class_labels is None:
            return {"y": rng.labels(num_classes)}
        return {"y": torch.tensor([class_labels[i % len(class_labels)] for i in indices]).long()}

    return make


def no_kwargs(indices: np.ndarray, rng: ImageRandom) -> dict[str, torch.Tensor]:
    """The KwargsFn of an unconditional model."""
    return {}


def base_sample_kwargs(base: BaseSamples) -> KwargsFn:
    """
    Model kwargs for upsampling: ``low_res`` (float [n x 3 x h x w] in [-1, 1]) from the
    base images with the same indices (read from the file, a chunk at a time), plus their
    labels ``y`` when the base file has labels.
    """

    def make(indices: np.ndarray, rng: ImageRandom) -> dict[str, torch.Tensor]:
        pixels = base.read(int(indices[0]), len(indices))  # (n, h, w, 3) uint8
        images = torch.from_numpy(pixels).float() / 127.5 - 1.0
        kwargs = {"low_res": images.permute(0, 3, 1, 2).contiguous()}  # (n, 3, h, w)
        if base.labels is not None:
            kwargs["y"] = torch.from_numpy(base.labels[indices])
        return kwargs

    return make


# ---------------------------------------------------------------- seeds


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


# ---------------------------------------------------------------- one chunk of images


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


def sampler_setting(args: argparse.Namespace) -> samplers.SamplerSetting:
    """
    The run's sampler from ``--sampler``, ``--use_ddim``, ``--guidance_interval`` and the
    flags of ``samplers.SETTING_FLAGS``;
    ``.sample_fn(diffusion)`` makes its SampleFn and ``.counts`` counts the evaluations.

    :raises SamplingInputError: a bad value, named with its flag.
    """
    try:
        return samplers.SamplerSetting.from_flags(
            args.sampler, args.use_ddim, args.guidance_interval,
            **{flag: getattr(args, flag) for flag in samplers.SETTING_FLAGS if hasattr(args, flag)},
        )  # fmt: skip
    except ValueError as err:
        raise SamplingInputError(str(err)) from None


def default_sample_fn(diffusion: GaussianDiffusion, use_ddim: bool = False) -> SampleFn:
    """:return: ``diffusion.ddim_sample_loop`` or ``p_sample_loop`` as a SampleFn."""
    return diffusion.ddim_sample_loop if use_ddim else diffusion.p_sample_loop


@dataclass
class ImageJob:
    """
    What makes the images of a run: image i is ``sample_fn`` applied to the model with
    the noise and labels of ``ImageRandom(seed, [i])``, whatever batch it is drawn in.
    """

    model: Callable  # called as model(x, t, **model_kwargs)
    sample_fn: SampleFn
    image_size: int
    seed: int
    make_kwargs: KwargsFn = no_kwargs
    cond_fn: Optional[Callable] = None
    clip_denoised: bool = True
    device: Optional[torch.device] = None

    def __call__(self, start: int, count: int) -> dict[str, np.ndarray]:
        """
        :return: {"arr_0": uint8 [count x H x W x 3]} for images start..start+count-1,
            plus "arr_1": int64 [count] labels when make_kwargs gives "y".
        """
        device = self.device or dist_util.dev()
        indices = np.arange(start, start + count)
        rng = ImageRandom(self.seed, indices, device)
        kwargs = self.make_kwargs(indices, rng)
        shape = (count, 3, self.image_size, self.image_size)
        sample = self.sample_fn(
            self.model,
            shape,
            noise=rng.noise(shape),  # x_T: the first draw of each image's stream
            clip_denoised=self.clip_denoised,
            cond_fn=self.cond_fn,
            model_kwargs={k: v.to(device) for k, v in kwargs.items()},
            device=device,
            randn=rng.randn,
        )
        out = {"arr_0": to_uint8_nhwc(sample).cpu().numpy()}
        if "y" in kwargs:
            out["arr_1"] = kwargs["y"].cpu().numpy().astype(np.int64)
        return out


# ---------------------------------------------------------------- in memory


@dataclass
class SampleResult:
    """Gathered samples on rank 0 (None elsewhere) and how long they took."""

    images: Optional[np.ndarray]  # [N x H x W x 3] uint8
    labels: Optional[np.ndarray]  # [N] int64, or None without labels
    seconds: float
    seed: int


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
    sample_fn: Optional[SampleFn] = None,
) -> SampleResult:
    """
    Draw exactly ``num_samples`` images, split over the ranks, and gather them on rank 0
    in memory (``sample_to_npz`` writes them to a file in bounded memory instead).

    :param model: the model (or a wrapper) called as model(x, t, **model_kwargs).
    :param diffusion: the (spaced) diffusion process.
    :param num_samples: N, the total over all ranks.
    :param batch_size: images per model call on each rank.
    :param image_size: H = W of the samples.
    :param make_kwargs: model_kwargs for given image indices; a "y" entry is the label
        that is kept with the images.
    :param cond_fn: optional guidance gradient, see ``guidance.classifier_cond_fn``.
    :param use_ddim: DDIM instead of ancestral sampling (when ``sample_fn`` is None).
    :param clip_denoised: clamp x_0 predictions to [-1, 1].
    :param seed: base seed (None: a fresh one).
    :param device: where to sample (default ``dist_util.dev()``).
    :param sample_fn: the sampler, called like ``diffusion.p_sample_loop`` with ``randn=``.
    :return: SampleResult with [N x H x W x 3] uint8 images and [N] int64 labels on rank 0.
    """
    check_counts(num_samples, batch_size)
    seed = shared_seed(seed)
    job = ImageJob(
        model, sample_fn or default_sample_fn(diffusion, use_ddim), image_size, seed,
        make_kwargs, cond_fn, clip_denoised, device,
    )  # fmt: skip
    parts: dict[int, dict[str, np.ndarray]] = {}
    start_time = time.time()
    run_sharded(num_samples, batch_size, job, lambda start, arrays: parts.update({start: arrays}))
    if dist_util.group_rank() != 0:
        return SampleResult(None, None, time.time() - start_time, seed)
    chunks = [parts[start] for start in sorted(parts)]
    images = np.concatenate([c["arr_0"] for c in chunks])
    labels = np.concatenate([c["arr_1"] for c in chunks]) if "arr_1" in chunks[0] else None
    return SampleResult(images, labels, time.time() - start_time, seed)


def write_outputs(
    result: SampleResult, grid: bool = True, out_dir: Optional[str] = None
) -> list[str]:
    """
    On rank 0, save samples gathered in memory to ``out_dir`` (default: the log directory)
    and log a summary of what went where; every rank waits until the files exist.

    :param grid: also write a PNG grid of the first 64 samples, named like the .npz.
    :return: the paths written (empty on other ranks).
    """
    paths = []
    if dist_util.group_rank() == 0:
        out_dir = out_dir or logger.get_dir() or "."
        npz_path = bf.join(out_dir, samples_file_name(result.images))
        save_samples_npz(npz_path, result.images, result.labels)
        paths = [npz_path] + _write_grid(npz_path, result.images, grid)
        _log_summary(paths, result.images.shape, result.labels, result.seconds, result.seed)
    dist_util.barrier()
    return paths


def _write_grid(npz_path: str, first_images: np.ndarray, grid: bool) -> list[str]:
    if not grid:
        return []
    png_path = npz_path[: -len(".npz")] + ".png"
    save_png(png_path, image_grid(first_images))
    return [png_path]


def _log_summary(
    paths: list[str], shape: tuple, labels: Optional[np.ndarray], seconds: float, seed: int
) -> None:
    n = shape[0]
    lines = [
        f"wrote {n} samples in {seconds:.1f} s ({n / max(seconds, 1e-9):.2f} images/s, "
        f"{dist_util.group_size()} rank(s), seed {seed}):"
    ]
    label_note = ""
    if labels is not None:
        label_note = f", arr_1 int64 labels {labels.min()}..{labels.max()}"
    lines.append(f"  {paths[0]}  (arr_0 uint8 {list(shape)}{label_note})")
    if len(paths) > 1:
        lines.append(f"  {paths[1]}  (grid of the first {min(n, 64)})")
    lines.append(f"repeat this batch with --seed {seed}")
    logger.log("\n".join(lines))


# ---------------------------------------------------------------- to a file, resumable


def run_identity(args: argparse.Namespace, files: dict[str, str], **extra) -> dict[str, object]:
    """
    Everything that determines a run's images: every flag but those that only say how
    many, how fast or what else to write, the contents of the input files instead of their
    paths, and ``extra`` (e.g. the program's name).

    :param files: flag name -> path of each input file (checkpoints, base samples); the
        autoguidance guide (``--guide_model_path``) is added when given.
    """
    if getattr(args, "guide_model_path", ""):
        files = {**files, "guide_model_path": args.guide_model_path}
    identity = {k: v for k, v in vars(args).items() if k not in _NOT_IDENTITY and k not in files}
    identity.update(extra)
    identity["files"] = {flag: path for flag, path in files.items() if path}
    return identity


# Flags that never change an image: how many, how fast, what else to write.
_NOT_IDENTITY = {"num_samples", "batch_size", "grid", "keep_shards", "seed"}


def _open_store(
    npz_path: str, identity: dict, seed: Optional[int]
) -> tuple[ShardStore, list[tuple[int, int]]]:
    """On rank 0: hash the input files, settle the seed, open the shard folder."""
    identity = dict(identity)
    identity["files"] = {f: file_identity(p) for f, p in identity["files"].items()}
    if seed is None:
        seed = previous_seed(npz_path, identity)
        if seed is not None:
            logger.log(f"resuming the unseeded run found beside {npz_path}: seed {seed}")
    identity["seed"] = secrets.randbits(31) if seed is None else int(seed)
    store = ShardStore.beside(npz_path, identity)
    return store, store.prepare()


def _shared_store(npz_path: str, identity: dict, seed: Optional[int]):
    """Every rank: the store and its finished ranges, or the one-line reason it failed."""
    reply = None
    if dist_util.group_rank() == 0:
        try:
            reply = _open_store(npz_path, identity, seed)
        except (OSError, ValueError) as err:
            reply = f"cannot write the samples beside {npz_path}: {err}"
    reply = dist_util.broadcast_object(reply)
    if isinstance(reply, str):
        raise SamplingInputError(reply)
    return reply


def run_resumable(
    final_path: str,
    identity: dict[str, object],
    job: "ImageJob | BpdJob",
    num_items: int,
    batch_size: int,
    desc: str = "sample",
    on_chunk: Optional[Callable[[int, dict[str, np.ndarray]], None]] = None,
) -> ShardStore:
    """
    Compute items 0..N-1 with ``job`` into the shard folder of ``final_path`` for this
    ``identity``, skipping the shards an earlier run of the same command left there; on
    return (on every rank) every shard is written.

    :param job: computes a chunk; its ``seed`` None means the earlier run's, else fresh.
    :param on_chunk: also called with every chunk computed now, on rank 0.
    :return: the store, whose identity holds the seed used.
    """
    store, done = _shared_store(final_path, identity, job.seed)
    job = dataclasses.replace(job, seed=store.identity["seed"])
    found = sum(stop - start for start, stop in done if start < num_items)
    logger.log(f"shards in {store.folder}: found {found} images, {num_items - found} to {desc}")

    def sink(start: int, arrays: dict[str, np.ndarray]) -> None:
        store.write(start, arrays)
        if on_chunk is not None:
            on_chunk(start, arrays)

    run_sharded(num_items, batch_size, job, sink, done, desc=desc)
    dist_util.barrier()
    return store


def sample_to_npz(
    job: ImageJob,
    *,
    num_samples: int,
    batch_size: int,
    identity: dict[str, object],
    grid: bool = True,
    keep_shards: bool = False,
    out_dir: Optional[str] = None,
) -> list[str]:
    """
    Draw exactly ``num_samples`` images into ``samples_{N}x{H}x{W}x3.npz`` in ``out_dir``
    (default: the log directory), saving every round as a shard as it finishes and
    resuming from the shards of an earlier run of the same command (``run_identity``);
    the final file is assembled by streaming the shards, which are then removed unless
    ``keep_shards``. Call it on every rank.

    :param job: what makes the images (its seed None: the earlier run's, else a fresh one).
    :param identity: the run's identity, from ``run_identity``.
    :return: the paths written (empty on other ranks).
    """
    check_counts(num_samples, batch_size)
    out_dir = out_dir or logger.get_dir() or "."
    npz_path = bf.join(out_dir, f"samples_{num_samples}x{job.image_size}x{job.image_size}x3.npz")
    start_time = time.time()
    store = run_resumable(npz_path, identity, job, num_samples, batch_size)
    paths = []
    if dist_util.group_rank() == 0:
        labels = _assemble(store, num_samples, npz_path)
        first = np.concatenate(list(_first_images(store, num_samples, 64)))
        paths = [npz_path] + _write_grid(npz_path, first, grid)
        shape = (num_samples, job.image_size, job.image_size, 3)
        _log_summary(paths, shape, labels, time.time() - start_time, store.identity["seed"])
        if not keep_shards:
            store.remove()
    dist_util.barrier()
    return paths


def sample_from_args(
    args: argparse.Namespace,
    model: Callable,
    diffusion: GaussianDiffusion,
    *,
    files: dict[str, str],
    image_size: Optional[int] = None,
    make_kwargs: KwargsFn = no_kwargs,
    cond_fn: Optional[Callable] = None,
    num_samples: Optional[int] = None,
    sample_fn: Optional[SampleFn] = None,
) -> list[str]:
    """
    The sampling programs' last step: ``sample_to_npz`` with the sampling flags in
    ``args`` (num_samples, batch_size, seed, use_ddim, clip_denoised, grid, keep_shards).

    :param files: flag -> input file, for the run's identity (see ``run_identity``).
    :param image_size: H = W of the samples (default ``args.image_size``).
    :param num_samples: overrides ``args.num_samples``.
    :param sample_fn: the sampler (default by ``--use_ddim``).
    :return: the paths written (empty on other ranks).
    """
    job = ImageJob(
        model,
        sample_fn or default_sample_fn(diffusion, args.use_ddim),
        image_size or args.image_size,
        args.seed,
        make_kwargs,
        cond_fn=cond_fn,
        clip_denoised=args.clip_denoised,
    )
    return sample_to_npz(
        job,
        num_samples=num_samples or args.num_samples,
        batch_size=args.batch_size,
        identity=run_identity(args, files),
        grid=args.grid,
        keep_shards=args.keep_shards,
    )


def sample_and_report(
    args: argparse.Namespace,
    model: Callable,
    diffusion: GaussianDiffusion,
    sampler: samplers.SamplerSetting,
    **kwargs,
) -> list[str]:
    """
    ``sample_from_args`` with ``sampler``'s sample_fn, then the evaluations per image and
    "sampling complete" in the log: the sampling programs' tail.

    :param kwargs: the other ``sample_from_args`` arguments (``files``, ``make_kwargs``, ...).
    :return: the paths written (empty on other ranks).
    """
    sample_fn = sampler.sample_fn(diffusion)
    paths = sample_from_args(args, model, diffusion, sample_fn=sample_fn, **kwargs)
    logger.log(sampler.counts.per_image())
    logger.log("sampling complete")
    return paths


def _assemble(store: ShardStore, num_samples: int, npz_path: str) -> Optional[np.ndarray]:
    """Stream the shards into the final .npz; :return: the labels (None without)."""
    with_labels = "arr_1" in store.keys()
    with NpzWriter(npz_path) as out:
        first = next(store.iter_chunks(num_samples, "arr_0"))
        with out.array("arr_0", (num_samples,) + first.shape[1:], np.uint8) as rows:
            for images in store.iter_chunks(num_samples, "arr_0"):
                rows.write(images)
        if not with_labels:
            return None
        labels = np.concatenate(list(store.iter_chunks(num_samples, "arr_1")))  # (N,) int64
        out.write("arr_1", labels)
    return labels


def _first_images(store: ShardStore, num_samples: int, count: int) -> Iterator[np.ndarray]:
    for images in store.iter_chunks(num_samples, "arr_0"):
        yield images[:count]
        count -= len(images)
        if count <= 0:
            return


# ---------------------------------------------------------------- bits/dim


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


def evaluate_bpd(job: BpdJob, *, num_samples: int, batch_size: int) -> dict[str, np.ndarray]:
    """
    Bits per dimension of exactly ``num_samples`` data images, split over the ranks like
    the sampling programs split their images, logging a running mean as rounds finish.

    :return: on every rank, "total_bpd" and "prior_bpd" (scalars) and the per-timestep
        means "vb", "mse", "xstart_mse" ([T], from t = T-1 down to 0), over all images.
    """
    check_counts(num_samples, batch_size)
    job = dataclasses.replace(job, seed=shared_seed(job.seed))
    means = BpdMeans(num_samples)
    run_sharded(num_samples, batch_size, job, means.add, desc="bits/dim")
    return means.means()


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
    ``evaluate_bpd`` through shards of per-image terms in ``out_dir`` (default: the log
    directory), so that rerunning a killed command evaluates only the missing images;
    the shards are removed at the end unless ``keep_shards``.
    """
    check_counts(num_samples, batch_size)
    out_dir = out_dir or logger.get_dir() or "."
    store = run_resumable(
        bf.join(out_dir, f"bpd_{num_samples}.npz"), identity, job, num_samples, batch_size,
        desc="evaluate", on_chunk=BpdMeans(num_samples).add,
    )  # fmt: skip
    means = BpdMeans(num_samples, log=False)
    if dist_util.group_rank() == 0:
        for start, stop in store.done():
            if stop <= num_samples:
                means.add(start, {k: read_array(store.path(start, stop), k) for k in BPD_TERMS})
        if not keep_shards:
            store.remove()
    return means.means()


# ---------------------------------------------------------------- running scripts


def run_script(main: Callable[[], None]) -> None:
    """
    Run a script's ``main``; bad flags, missing or damaged files and checkpoints that do
    not fit the flags end the process with a one-line message and exit status 1 instead of
    a traceback (any file being written is left out, since writes are atomic). See
    ``script_errors.run_program``.
    """
    run_program(main)
