"""
Building a diffusion model or noisy classifier from its flags and loading its checkpoint
into it: the one way every program (sampling, upsampling, bits/dim, guidance, editing)
gets a ready network. The flags usually come from ``run_config.parse_args``, which fills
them in from the run configuration saved beside the checkpoint.
"""

import argparse
from typing import Callable

import blobfile as bf
import torch
import torch.nn as nn

from . import dist_util, logger, script_util
from .checkpoint_util import CheckpointMismatchError, load_checkpoint
from .gaussian_diffusion import GaussianDiffusion
from .sample_io import SamplingInputError


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
    Load the checkpoint ``path`` (given by ``--flag``) into ``model`` strictly.

    :raises SamplingInputError: no path, or a file that is no checkpoint.
    :raises FileNotFoundError: no such file.
    :raises CheckpointMismatchError: the checkpoint does not fit the flags.
    """
    if not path:
        raise SamplingInputError(f"--{flag} is required: the checkpoint (.pt) file to load")
    if not bf.exists(path):
        raise FileNotFoundError(f"--{flag}: checkpoint file not found: {path}")
    logger.log(f"loading {path}")
    try:
        load_checkpoint(model, path, map_location="cpu")
    except CheckpointMismatchError:
        raise
    except ValueError as err:  # not a checkpoint at all
        raise SamplingInputError(f"--{flag}: {err}") from None


def _build(factory: Callable, kwargs: dict):
    try:
        return factory(**kwargs)
    except ValueError as err:  # flags that describe no valid network; the message names them
        raise SamplingInputError(str(err)) from None


def _prepare(model: nn.Module, use_fp16: bool, device: torch.device) -> nn.Module:
    model.to(device)
    if use_fp16:
        model.convert_to_fp16()
    model.eval()
    return model


def load_model_and_diffusion(
    args: argparse.Namespace, super_res: bool = False
) -> tuple[nn.Module, GaussianDiffusion]:
    """
    Build the diffusion model and process from the model flags and load ``--model_path``.

    :param args: parsed flags holding every key of ``model_and_diffusion_defaults()``
        (``sr_model_and_diffusion_defaults()`` when ``super_res``) and ``model_path``.
    :param super_res: build an upsampling model.
    :return: (model in eval mode on ``dist_util.dev()``, diffusion).
    """
    if super_res:
        defaults, create = (
            script_util.sr_model_and_diffusion_defaults(),
            script_util.sr_create_model_and_diffusion,
        )
    else:
        defaults, create = (
            script_util.model_and_diffusion_defaults(),
            script_util.create_model_and_diffusion,
        )
    kwargs = script_util.args_to_dict(args, defaults.keys())
    device = dist_util.dev()
    kwargs["use_fp16"] = resolve_fp16("use_fp16", kwargs["use_fp16"], device)
    model, diffusion = _build(create, kwargs)
    load_weights(model, args.model_path, "model_path")
    return _prepare(model, kwargs["use_fp16"], device), diffusion


def load_classifier(args: argparse.Namespace) -> nn.Module:
    """
    Build the noisy classifier from the classifier flags and load ``--classifier_path``.

    :param args: parsed flags holding every key of ``classifier_defaults()`` and
        ``classifier_path``.
    :return: the classifier in eval mode on ``dist_util.dev()``, its parameters frozen.
    """
    kwargs = script_util.args_to_dict(args, script_util.classifier_defaults().keys())
    device = dist_util.dev()
    kwargs["classifier_use_fp16"] = resolve_fp16(
        "classifier_use_fp16", kwargs["classifier_use_fp16"], device
    )
    classifier = _build(script_util.create_classifier, kwargs)
    load_weights(classifier, args.classifier_path, "classifier_path")
    classifier.requires_grad_(False)
    return _prepare(classifier, kwargs["classifier_use_fp16"], device)
