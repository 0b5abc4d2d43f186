"""
The run configuration written beside every checkpoint, and the flags it fills in.

When a training program saves ``model{N}.pt`` or ``ema_{rate}_{N}.pt`` (or a classifier's
``model{N}.pt``), it first writes ``<same name>.json`` beside it, atomically, e.g.
``model000600.json`` and ``ema_0.9999_000600.json``:

    {
      "format": "guided-diffusion run configuration",
      "format_version": 1,
      "guided_diffusion_version": "0.2.0",
      "kind": "model",                     # or "super_res", "classifier"
      "model_flags": {"image_size": 64, "num_channels": 128, ...},
      "diffusion_flags": {"diffusion_steps": 1000, "noise_schedule": "linear", ...},
      "data": {"num_classes": 3, "class_names": ["cat", "dog", "owl"]}   # or null
    }

``model_flags`` and ``diffusion_flags`` are every flag that built the network and the
diffusion process (``timestep_respacing`` aside: it is chosen when sampling); ``data``
holds the classes of the training folder (label i is ``class_names[i]``) for
class-conditional models and classifiers. The ``.pt`` files keep the original layout.

A program that loads a checkpoint parses its flags with ``flags.parse_args``: when the file
beside the checkpoint exists, every model flag not given on the command line takes its saved
value, and a flag given with another value is refused (``RunConfigError`` naming the flag,
the saved and the given value). Without the file the flags work as they always did, or come
from the published checkpoint whose layout the state dict has (``presets``).
"""

import argparse
import json
import os
from typing import Any, Optional

import blobfile as bf

from . import __version__, script_util
from .image_datasets import list_classes
from .io_util import atomic_write

FORMAT = "guided-diffusion run configuration"
FORMAT_VERSION = 1
KINDS = ("model", "super_res", "classifier")

# Flags that do not change the weights or the process a model was trained for: they are
# filled in from the file when not given, and may be given with another value.
RUNTIME_FLAGS = frozenset({"use_fp16", "classifier_use_fp16", "use_checkpoint", "dropout"})
# Diffusion flags chosen anew by every run (not saved).
UNSAVED_FLAGS = frozenset({"timestep_respacing"})


class RunConfigError(ValueError):
    """A run configuration file is unreadable, or contradicts the command line."""


def config_path(checkpoint_path: str) -> str:
    """
    :param checkpoint_path: ``.../ema_0.9999_000600.pt``.
    :return: the configuration file beside it: ``.../ema_0.9999_000600.json``.
    """
    root, ext = os.path.splitext(str(checkpoint_path))
    return (root if ext == ".pt" else str(checkpoint_path)) + ".json"


def flag_groups(kind: str) -> tuple[list[str], list[str]]:
    """
    :param kind: "model", "super_res" or "classifier".
    :return: (model flag names, diffusion flag names) that a configuration of that kind saves.
    """
    diffusion = script_util.diffusion_defaults()
    model = [k for k in script_util.network_defaults(kind) if k not in diffusion]
    return model, [k for k in diffusion if k not in UNSAVED_FLAGS]


def is_class_conditional(kind: str, model_flags: dict[str, Any]) -> bool:
    """Whether a network of ``kind`` built from ``model_flags`` uses class labels."""
    return kind == "classifier" or bool(model_flags.get("class_cond"))


def make_run_config(kind: str, args: argparse.Namespace) -> dict[str, Any]:
    """
    The configuration of a training run, to write beside its checkpoints.

    :param kind: "model", "super_res" or "classifier".
    :param args: the parsed flags of the training program (with ``data_dir``).
    :return: the JSON-ready configuration (see the module docstring).
    """
    model_keys, diffusion_keys = flag_groups(kind)
    model_flags = {k: getattr(args, k) for k in model_keys}
    data = None
    if is_class_conditional(kind, model_flags) and getattr(args, "data_dir", ""):
        names = list(list_classes(args.data_dir))
        data = {"num_classes": len(names), "class_names": names}
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "guided_diffusion_version": __version__,
        "kind": kind,
        "model_flags": model_flags,
        "diffusion_flags": {k: getattr(args, k) for k in diffusion_keys},
        "data": data,
    }


def write_run_config(checkpoint_path: str, config: dict[str, Any]) -> str:
    """
    Write ``config`` beside ``checkpoint_path`` atomically (call it before saving the
    checkpoint, so that a checkpoint never exists without its configuration).

    :return: the path written.
    """
    path = config_path(checkpoint_path)
    with atomic_write(path, "w") as f:
        json.dump(config, f, indent=2)
        f.write("\n")
    return path


def read_run_config(checkpoint_path: str) -> Optional[dict[str, Any]]:
    """
    :param checkpoint_path: a checkpoint file (local path or blobfile URL).
    :return: the configuration saved beside it, or None when there is none.
    :raises RunConfigError: the file exists but is not a run configuration.
    """
    path = config_path(checkpoint_path)
    if not bf.exists(path):
        return None
    try:
        with bf.BlobFile(path, "r") as f:
            config = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RunConfigError(f"run configuration {path} is unreadable: {err}") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise RunConfigError(f"{path} is not a run configuration (no \"format\": \"{FORMAT}\")")
    if config.get("kind") not in KINDS or not isinstance(config.get("model_flags"), dict):
        raise RunConfigError(f"run configuration {path} has no valid \"kind\" and \"model_flags\"")
    return config
