"""
The sampling driver: what each image gets (labels, base images), the model to sample with
(loaded by ``model_loading``, wrapped for guidance by ``guidance``), and drawing the images,
split over the ranks, into ``samples_{N}x{H}x{W}x3.npz`` (with a PNG grid of the first
samples beside it) through resumable shards (``shards.run_resumable``).

Image i is made from (seed, i) alone (``image_seeds.ImageRandom``): its initial noise,
its label when labels are drawn and its step noise, so a run gives the same file for any
``--batch_size`` and any number of ranks. Reading and writing the files is
``npz_batch``'s and ``sample_io``'s job; the sampling flags are parsed and checked by
``flags``.
"""

import argparse
import time
from dataclasses import dataclass
from typing import Callable, Optional

import blobfile as bf
import numpy as np
import torch
import torch.nn as nn

from . import dist_util, logger, model_loading, samplers, shards
from .flags import check_counts
from .gaussian_diffusion import GaussianDiffusion
from .guidance import GuidanceError, check_interval_has_steps, guided_model, interval_active
from .image_seeds import ImageRandom
from .sample_io import BaseSamples, image_grid, save_png, to_uint8_nhwc
from .script_errors import SamplingInputError

# A function of (global image indices [n], their random streams) -> model_kwargs for them.
KwargsFn = Callable[[np.ndarray, ImageRandom], dict[str, torch.Tensor]]
# A sampler: called like GaussianDiffusion.p_sample_loop(model, shape, *, noise,
# clip_denoised, cond_fn, model_kwargs, device, randn) -> [N x C x H x W] samples; e.g.
# functools.partial(samplers.sample, diffusion, sampler=name).
SampleFn = Callable[..., torch.Tensor]


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
        guide = model_loading.load_guide_model(args, diffusion, super_res)
    try:
        if interval is not None:
            check_interval_has_steps(diffusion, interval)
            active = interval_active(diffusion, interval)
        others = "--guide_model_path (autoguidance)"  # what else this program can guide with
        if hasattr(args, "classifier_path"):
            others = f"--classifier_path (classifier guidance) or {others}"
        guided = guided_model(model, args.guidance_scale, guide=guide, active=active, others=others)
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
    model, diffusion = model_loading.load_model_and_diffusion(args, super_res=super_res)
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


# ---------------------------------------------------------------- one chunk of images


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

    def memory_probe(self, start: int, count: int) -> None:
        """
        One model evaluation (and guidance gradient) on ``count`` images, as every sampling
        step makes: a cheap test of whether a batch of ``count`` fits in memory (see
        ``shards.out_of_memory_message``). Indices from ``start`` on.
        """
        device = self.device or dist_util.dev()
        indices = np.arange(start, start + count)
        kwargs = self.make_kwargs(indices, ImageRandom(self.seed, indices[:1].repeat(count), device))
        kwargs = {k: v.to(device) for k, v in kwargs.items()}
        x = torch.zeros((count, 3, self.image_size, self.image_size), device=device)
        t = torch.zeros((count,), dtype=torch.long, device=device)
        with torch.no_grad():
            self.model(x, t, **kwargs)
        if self.cond_fn is not None:
            self.cond_fn(x, t, **kwargs)


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
    resuming from the shards of an earlier run of the same command (``shards.run_identity``);
    the final file is assembled by streaming the shards, which are then removed unless
    ``keep_shards``. Call it on every rank.

    :param job: what makes the images (its seed None: the earlier run's, else a fresh one).
    :param identity: the run's identity, from ``shards.run_identity``.
    :return: the paths written (empty on other ranks).
    """
    check_counts(num_samples, batch_size)
    out_dir = out_dir or logger.get_dir() or "."
    npz_path = bf.join(out_dir, f"samples_{num_samples}x{job.image_size}x{job.image_size}x3.npz")
    start_time = time.time()
    store = shards.run_resumable(npz_path, identity, job, num_samples, batch_size)
    paths = []
    if dist_util.group_rank() == 0:
        try:
            labels, first = shards.assemble_samples(store, num_samples, npz_path)
            paths = [npz_path]
            if grid:
                paths.append(npz_path[: -len(".npz")] + ".png")
                save_png(paths[1], image_grid(first))
            shape = (num_samples, job.image_size, job.image_size, 3)
            _log_summary(paths, shape, labels, time.time() - start_time, store.identity["seed"])
            if not keep_shards:
                store.remove()
        finally:
            store.release()
    dist_util.barrier()
    return paths


def sample_and_report(
    args: argparse.Namespace,
    model: Callable,
    diffusion: GaussianDiffusion,
    sampler: samplers.SamplerSetting,
    *,
    files: dict[str, str],
    image_size: Optional[int] = None,
    make_kwargs: KwargsFn = no_kwargs,
    cond_fn: Optional[Callable] = None,
    num_samples: Optional[int] = None,
) -> list[str]:
    """
    The sampling programs' last step: ``sample_to_npz`` with ``sampler``'s sample_fn and the
    sampling flags in ``args`` (num_samples, batch_size, seed, clip_denoised, grid,
    keep_shards), then the evaluations per image and "sampling complete" in the log.

    :param files: flag -> input file, for the run's identity (see ``shards.run_identity``).
    :param image_size: H = W of the samples (default ``args.image_size``).
    :param num_samples: overrides ``args.num_samples``.
    :return: the paths written (empty on other ranks).
    """
    job = ImageJob(
        model,
        sampler.sample_fn(diffusion),
        image_size or args.image_size,
        args.seed,
        make_kwargs,
        cond_fn=cond_fn,
        clip_denoised=args.clip_denoised,
    )
    paths = sample_to_npz(
        job,
        num_samples=num_samples or args.num_samples,
        batch_size=args.batch_size,
        identity=shards.run_identity(args, files),
        grid=args.grid,
        keep_shards=args.keep_shards,
    )
    logger.log(sampler.counts.per_image())
    logger.log("sampling complete")
    return paths
