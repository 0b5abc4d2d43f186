"""
Building a diffusion model or noisy classifier from its flags and loading its checkpoint
into it: the one way every program (sampling, upsampling, bits/dim, guidance, editing)
gets a ready network. The flags usually come from ``flags.parse_args``, which fills them in
from the run configuration saved beside the checkpoint or from a published checkpoint's
preset.
"""

import argparse
from typing import Any

import blobfile as bf
import numpy as np
import torch
import torch.nn as nn

from . import dist_util, logger, run_config, script_util
from .checkpoint_diagnosis import CheckpointMismatchError, load_checkpoint
from .gaussian_diffusion import GaussianDiffusion
from .script_errors import SamplingInputError


def resolve_fp16(flag: str, requested: bool, device: torch.device) -> bool:
    """
    float16 weights only on CUDA; on CPU fall back to float32 with a warning.

    :param flag: the flag's name, for the warning.
    :return: whether to convert the network to float16.
    """
    if requested and device.type != "cuda":
        message = (
            f"--{flag} True needs a CUDA device; running in float32 on {device.type} instead "
            "(same weights; results equal up to float16 rounding)"
        )
        logger.warn(f"warning: {message}")
        return False
    return requested


def load_weights(model: nn.Module, path: str, flag: str) -> None:
    """
    Load the checkpoint ``path`` (given by ``--flag``) into ``model`` strictly, after
    checking its bytes against the SHA-256 its run configuration records (else against its
    zip CRC-32s).

    :raises SamplingInputError: no path, or a file that is no checkpoint or was altered.
    :raises FileNotFoundError: no such file.
    :raises CheckpointMismatchError: the checkpoint does not fit the flags.
    :raises RunConfigError: the run configuration beside it is invalid.
    """
    _require_path(path, flag)
    recorded, where = run_config.recorded_checkpoint_hash(path)
    logger.log(f"loading {path}")
    try:
        load_checkpoint(model, path, "cpu", expected_sha256=recorded, recorded_in=where)
    except CheckpointMismatchError:
        raise
    except ValueError as err:  # not a checkpoint at all
        raise SamplingInputError(f"--{flag}: {err}") from None


def _require_path(path: str, flag: str) -> None:
    """:raises SamplingInputError, FileNotFoundError: ``--flag`` not given, or no such file."""
    if not path:
        raise SamplingInputError(f"--{flag} is required: the checkpoint (.pt) file to load")
    if not bf.exists(path):
        raise FileNotFoundError(f"--{flag}: checkpoint file not found: {path}")


def _build(args: argparse.Namespace, kind: str, fp16_flag: str) -> tuple[nn.Module, Any, bool]:
    """
    Build a network of ``kind`` and its diffusion from the flags, in float32 on the CPU.

    :return: (network, diffusion, whether to convert it to float16 on this device).
    """
    use_fp16 = resolve_fp16(fp16_flag, getattr(args, fp16_flag), dist_util.dev())
    args = argparse.Namespace(**{**vars(args), fp16_flag: use_fp16})
    try:
        network, diffusion = script_util.create_from_flags(args, kind)
    except ValueError as err:  # flags that describe no valid network; the message names them
        raise SamplingInputError(str(err)) from None
    return network, diffusion, use_fp16


def _log_flags_source(args: argparse.Namespace, flag: str) -> None:
    """Say where the flags of ``--flag``'s network came from when a preset gave them."""
    source = getattr(args, "presets", {}).get(flag)
    if source:
        logger.log(f"--{flag}: {source}")


def _prepare(model: nn.Module, use_fp16: bool, device: torch.device) -> nn.Module:
    model.to(device)
    if use_fp16:
        model.convert_to_fp16()
    model.eval()
    return model


def load_model_and_diffusion(
    args: argparse.Namespace, super_res: bool = False, path_flag: str = "model_path"
) -> tuple[nn.Module, GaussianDiffusion]:
    """
    Build the diffusion model and process from the model flags and load ``--model_path``.

    :param args: parsed flags holding every key of ``model_and_diffusion_defaults()``
        (``sr_model_and_diffusion_defaults()`` when ``super_res``) and ``model_path``.
    :param super_res: build an upsampling model.
    :param path_flag: the flag naming the checkpoint (e.g. ``guide_model_path``).
    :return: (model in eval mode on ``dist_util.dev()``, diffusion).
    """
    _require_path(getattr(args, path_flag), path_flag)  # before the flags build anything
    model, diffusion, use_fp16 = _build(args, "super_res" if super_res else "model", "use_fp16")
    _log_flags_source(args, path_flag)
    load_weights(model, getattr(args, path_flag), path_flag)
    if path_flag == "model_path":
        _log_starting_step(diffusion, getattr(args, "timestep_respacing", ""))
    return _prepare(model, use_fp16, dist_util.dev()), diffusion


def _log_starting_step(diffusion: GaussianDiffusion, respacing: str) -> None:
    """
    Say so when a re-spaced process starts far from pure noise: its highest kept step is
    not the last one and keeps more than a tenth of the image (sqrt(ab) > 0.1), while
    sampling starts there from pure noise (e.g. ``--timestep_respacing 3,0``).
    """
    kept = getattr(diffusion, "timestep_map", None)
    last = getattr(diffusion, "original_num_steps", 0) - 1
    signal = float(np.sqrt(diffusion.alphas_cumprod[-1]))
    if not kept or kept[-1] == last or signal <= 0.1:
        return
    shown = ", ".join(map(str, kept)) if len(kept) <= 8 else f"{kept[0]}, ..., {kept[-1]}"
    logger.log(
        f"--timestep_respacing {respacing} keeps the steps {shown} of 0..{last}: sampling "
        f"starts from pure noise at t = {kept[-1]}, where the process still holds "
        f"sqrt(alpha_bar) = {signal:.2f} of the image; keep a count in the last section to "
        f"start at t = {last}"
    )


def load_guide_model(
    args: argparse.Namespace, diffusion: GaussianDiffusion, super_res: bool = False
) -> nn.Module:
    """
    Load the autoguidance guide of ``--guide_model_path``: built from the run configuration
    beside it when there is one (its own model and diffusion flags; this run's
    ``timestep_respacing`` and runtime flags such as ``use_fp16``), else from the main
    model's flags. Before its weights are read, the guide is checked against the main model
    (``_check_guide_fits``): the same image size, output channels (``learn_sigma``) and
    process, and labels it can take; an unconditional guide of a class-conditional model is
    accepted (it gets no labels: classifier-free guidance with a separate unconditional
    model).

    :param args: the sampling program's parsed flags (the main model's flags).
    :param diffusion: the main model's diffusion process.
    :param super_res: the models are upsamplers.
    :return: the guide in eval mode on ``dist_util.dev()``.
    :raises SamplingInputError: the guide does not fit the main model, naming the flag.
    :raises RunConfigError: its configuration is unreadable or of another kind of network.
    """
    guide_args = argparse.Namespace(**vars(args))
    path, kind = args.guide_model_path, "super_res" if super_res else "model"
    config = run_config.read_run_config(path)
    guide_args.class_names = None
    source = "built with the main model's flags: it has no run configuration"
    if config is not None:
        if config["kind"] != kind:
            raise run_config.RunConfigError(
                f"--guide_model_path {path} holds a {config['kind']} network (see "
                f"{run_config.config_path(path)}); autoguidance needs a {kind} network"
            )
        saved = {**config["model_flags"], **(config.get("diffusion_flags") or {})}
        skip = run_config.RUNTIME_FLAGS | run_config.UNSAVED_FLAGS
        for name, value in saved.items():
            if name not in skip and hasattr(guide_args, name):
                setattr(guide_args, name, value)
        guide_args.class_names = (config.get("data") or {}).get("class_names")
        source = f"see {run_config.config_path(path)}"
    _check_guide_fits(args, guide_args, super_res, f"--guide_model_path {path} ({source})")
    guide, guide_diffusion = load_model_and_diffusion(guide_args, super_res, "guide_model_path")
    _check_same_process(diffusion, guide_diffusion)
    return guide


# What a guide must share with the main model: the flag, and what differs when it does not.
_GUIDE_MUST_MATCH = {
    "image_size": "the image size",
    "large_size": "the image size",
    "small_size": "the size of the low-resolution input",
    "learn_sigma": "the output channels (6 with a learned variance, 3 without)",
    "predict_xstart": "what the network predicts (x_0 or the noise)",
    "diffusion_steps": "the diffusion process",
    "noise_schedule": "the diffusion process",
    "rescale_timesteps": "the timesteps the network sees",
}


def _check_guide_fits(
    args: argparse.Namespace, guide_args: argparse.Namespace, super_res: bool, guide: str
) -> None:
    """
    Refuse, before any weights are read, a guide that cannot guide the main model: another
    image size, output channels or process, or labels it cannot take (a class-conditional
    guide of an unconditional model, or one trained on other classes).

    :param guide: how to name the guide in messages.
    :raises SamplingInputError: naming the guide, the flag and both values.
    """
    for name, what in _GUIDE_MUST_MATCH.items():
        if not hasattr(args, name):
            continue
        main, other = getattr(args, name), getattr(guide_args, name)
        if main != other:
            raise SamplingInputError(
                f"{guide} was trained with --{name} {other}, the main model with --{name} "
                f"{main}: autoguidance needs a guide with {what} of the main model; give a "
                "guide trained with the main model's flags"
            )
    if guide_args.class_cond and not args.class_cond:
        raise SamplingInputError(
            f"{guide} is class-conditional but the main model is not: it would need labels "
            "that unconditional sampling does not draw; give an unconditional guide"
        )
    if guide_args.class_cond:
        main_names, guide_names = getattr(args, "class_names", None), guide_args.class_names
        if main_names and guide_names and list(main_names) != list(guide_names):
            raise SamplingInputError(
                f"{guide} was trained on the classes {', '.join(guide_names[:5])}"
                f"{', ...' if len(guide_names) > 5 else ''}, the main model on "
                f"{', '.join(main_names[:5])}{', ...' if len(main_names) > 5 else ''}: a label "
                "would mean another class to each; give a guide trained on the same classes"
            )
        drawn = len(main_names) if main_names else args.num_classes
        if drawn > guide_args.num_classes:
            raise SamplingInputError(
                f"{guide} has labels for {guide_args.num_classes} classes but sampling draws "
                f"labels 0..{drawn - 1}: give a guide trained on the main model's classes, or "
                "an unconditional one"
            )


def _check_same_process(main: GaussianDiffusion, guide: GaussianDiffusion) -> None:
    """Autoguidance mixes two predictions of the same quantity on the same noise levels."""
    same = (
        main.model_mean_type == guide.model_mean_type
        and main.rescale_timesteps == guide.rescale_timesteps
        and np.array_equal(getattr(main, "timestep_map", []), getattr(guide, "timestep_map", []))
        and np.allclose(main.alphas_cumprod, guide.alphas_cumprod)
    )
    if not same:
        raise SamplingInputError(
            "--guide_model_path: the guide's diffusion process (steps, schedule, "
            "predict_xstart, rescale_timesteps) differs from the main model's; autoguidance "
            "needs a guide trained on the same process"
        )


def load_classifier(args: argparse.Namespace) -> nn.Module:
    """
    Build the noisy classifier from the classifier flags and load ``--classifier_path``.

    :param args: parsed flags holding every key of ``classifier_defaults()`` and
        ``classifier_path``.
    :return: the classifier in eval mode on ``dist_util.dev()``, its parameters frozen.
    """
    defaults = script_util.classifier_and_diffusion_defaults()
    # the classifier's diffusion flags are the model's: fill in what a parser left out; its
    # label count is its own when its run configuration says it (flags.parse_args)
    args = argparse.Namespace(**{**defaults, **vars(args)})
    _require_path(args.classifier_path, "classifier_path")  # before the flags build anything
    args.num_classes = getattr(args, "label_counts", {}).get("classifier_path", args.num_classes)
    classifier, _, use_fp16 = _build(args, "classifier", "classifier_use_fp16")
    _log_flags_source(args, "classifier_path")
    load_weights(classifier, args.classifier_path, "classifier_path")
    classifier.requires_grad_(False)
    return _prepare(classifier, use_fp16, dist_util.dev())
