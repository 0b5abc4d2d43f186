"""
The run configuration written beside every checkpoint, and the flags it fills in.

When a training program saves ``model{N}.pt`` or ``ema_{rate}_{N}.pt`` (or a classifier's
``model{N}.pt``), it first writes ``<same name>.json`` beside it, atomically, e.g.
``model000600.json`` and ``ema_0.9999_000600.json``:

    {
      "format": "guided-diffusion run configuration",
      "format_version": 2,
      "guided_diffusion_version": "0.2.0",
      "kind": "model",                     # or "super_res", "classifier"
      "model_flags": {"image_size": 64, "num_channels": 128, ...},
      "diffusion_flags": {"diffusion_steps": 1000, "noise_schedule": "linear", ...},
      "data": {"num_classes": 3, "class_names": ["cat", "dog", "owl"]},   # or null
      "checkpoint": {"sha256": "9f86d081884c7d65..."},
      "digest": "2c26b46b68ffc68f..."
    }

``model_flags`` and ``diffusion_flags`` are every flag that built the network and the
diffusion process (``timestep_respacing`` aside: it is chosen when sampling); ``data``
holds the classes of the training folder (label i is ``class_names[i]``) for
class-conditional models and classifiers. The ``.pt`` files keep the original layout.

The file is tied to its checkpoint: ``checkpoint.sha256`` is the SHA-256 of the ``.pt``
as it was written (the ``.json`` is written first, once the digest is known, then the
``.pt`` appears), and ``digest`` the SHA-256 of the rest of the file (``content_digest``).
Reading the file (``read_run_config``) checks every key: known names, types, ranges, the
class list against the class counts, and the digest, so an edited file (say, another
``noise_schedule``) is refused naming the key or the edit; loading the checkpoint checks its
bytes against ``checkpoint.sha256`` (``checkpoint_util.read_checkpoint``). Files written
before version 2 have neither: they load with a one-line warning, and the checkpoint's zip
CRC-32s are checked instead.

A program that loads a checkpoint parses its flags with ``flags.parse_args``: when the file
beside the checkpoint exists, every model flag not given on the command line takes its saved
value, and a flag given with another value is refused (``RunConfigError`` naming the flag,
the saved and the given value). Without the file the flags work as they always did, or come
from the published checkpoint whose layout the state dict has (``presets``).
"""

import argparse
import hashlib
import json
import math
import os
import re
from typing import Any, Optional

import blobfile as bf

from . import __version__, logger, script_util
from .image_datasets import list_classes
from .io_util import atomic_write

FORMAT = "guided-diffusion run configuration"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)  # 1: without the checkpoint's hash and the digest
KINDS = ("model", "super_res", "classifier")
KEYS = (
    "format", "format_version", "guided_diffusion_version", "kind", "model_flags",
    "diffusion_flags", "data", "checkpoint", "digest",
)  # fmt: skip

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


def write_run_config(
    checkpoint_path: str, config: dict[str, Any], checkpoint_sha256: Optional[str] = None
) -> str:
    """
    Write ``config`` beside ``checkpoint_path`` atomically, with the checkpoint's SHA-256 and
    the file's own digest (call it once the checkpoint's bytes are written but before the
    checkpoint appears, so that a checkpoint never exists without its configuration: see
    ``io_util.atomic_torch_save``'s ``before_replace``).

    :param checkpoint_sha256: the checkpoint's SHA-256 (None: the file records none).
    :return: the path written.
    """
    path = config_path(checkpoint_path)
    config = {k: v for k, v in config.items() if k not in ("checkpoint", "digest")}
    config["format_version"] = FORMAT_VERSION
    if checkpoint_sha256 is not None:
        config["checkpoint"] = {"sha256": checkpoint_sha256}
    config["digest"] = content_digest(config)
    with atomic_write(path, "w") as f:
        json.dump(config, f, indent=2)
        f.write("\n")
    return path


def content_digest(config: dict[str, Any]) -> str:
    """:return: the SHA-256 of a configuration's keys but ``digest``, in canonical JSON."""
    rest = {k: v for k, v in config.items() if k != "digest"}
    text = json.dumps(rest, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


def read_run_config(checkpoint_path: str) -> Optional[dict[str, Any]]:
    """
    :param checkpoint_path: a checkpoint file (local path or blobfile URL).
    :return: the configuration saved beside it, checked (``check_run_config``), or None when
        there is none.
    :raises RunConfigError: the file exists but is not a valid run configuration, or was
        edited after it was saved; the message names the key and the file.
    """
    path = config_path(checkpoint_path)
    if not bf.exists(path):
        return None
    try:
        with bf.BlobFile(path, "r") as f:
            config = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RunConfigError(f"run configuration {path} is unreadable: {err}") from None
    check_run_config(config, path)
    return config


def recorded_checkpoint_hash(checkpoint_path: str) -> tuple[Optional[str], Optional[str]]:
    """
    The SHA-256 recorded for a checkpoint by the run configuration beside it, to check the
    checkpoint against when it is loaded; a configuration written before version 2 records
    none, which is logged in one line.

    :return: (SHA-256 or None, the configuration's path or None when there is none).
    :raises RunConfigError: the configuration is invalid (see ``read_run_config``).
    """
    config = read_run_config(checkpoint_path)
    if config is None:
        return None, None
    path = config_path(checkpoint_path)
    recorded = (config.get("checkpoint") or {}).get("sha256")
    if recorded is None:
        logger.warn(
            f"warning: {path} records no SHA-256 of {checkpoint_path} (written by an older "
            "version): only the checkpoint's own CRC-32s are checked"
        )
    return recorded, path


# ---------------------------------------------------------------- checking a file

# What the saved flags may hold beyond their type (the default's type): name -> (test, the
# valid values as a message says them).
_RANGES = {
    **{name: (lambda v: v > 0, "a positive integer") for name in (
        "image_size", "num_channels", "num_res_blocks", "num_heads", "num_classes", "large_size",
        "small_size", "classifier_width", "classifier_depth", "diffusion_steps")},
    **{name: (lambda v: v == -1 or v > 0, "-1 or a positive integer")
       for name in ("num_heads_upsample", "num_head_channels")},
    **{name: (lambda v: 0 <= v < 1, "a number in [0, 1)")
       for name in ("dropout", "class_dropout_prob")},
    "noise_schedule": (lambda v: v in ("linear", "cosine"), "'linear' or 'cosine'"),
    "classifier_pool": (
        lambda v: v in ("adaptive", "attention", "spatial", "spatial_v2"),
        "'adaptive', 'attention', 'spatial' or 'spatial_v2'",
    ),
    **{name: (lambda v: re.fullmatch(r"(\d+(,\d+)*)?", v.replace(" ", "")) is not None,
              "comma-separated integers such as '16,8'")
       for name in ("attention_resolutions", "classifier_attention_resolutions")},
    **{name: (lambda v: re.fullmatch(r"([\d.]+(,[\d.]+)*)?", v.replace(" ", "")) is not None,
              "'' or comma-separated numbers such as '1,2,2'")
       for name in ("channel_mult", "classifier_channel_mult")},
}  # fmt: skip


def check_run_config(config: Any, path: str) -> None:
    """
    Check a run configuration read from ``path``: its keys, the type and range of every
    saved flag, the class list against the class counts, and the digest.

    :raises RunConfigError: one line naming the key, the file and what is valid.
    """

    def bad(key: str, what: str) -> RunConfigError:
        return RunConfigError(
            f"run configuration {path}: {key} {what}; correct it, or delete the file and give "
            "the model flags on the command line"
        )

    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise RunConfigError(f"{path} is not a run configuration (no \"format\": \"{FORMAT}\")")
    unknown = [k for k in config if k not in KEYS]
    if unknown:
        raise bad(unknown[0], f"is not a key of a run configuration (known: {', '.join(KEYS)})")
    version = config.get("format_version")
    if version not in READABLE_VERSIONS or isinstance(version, bool):
        raise bad(
            "format_version", f"is {version!r}; this version reads "
            f"{' and '.join(map(str, READABLE_VERSIONS))} (a newer file needs a newer version)",
        )  # fmt: skip
    if not isinstance(config.get("guided_diffusion_version", ""), str):
        raise bad("guided_diffusion_version", "must be a string")
    kind = config.get("kind")
    if kind not in KINDS:
        raise bad("kind", f"must be one of {', '.join(KINDS)}, got {kind!r}")
    for group, names in zip(("model_flags", "diffusion_flags"), flag_groups(kind)):
        _check_flags(config.get(group), group, names, kind, bad, required=group == "model_flags")
    _check_data(config, kind, bad)
    _check_integrity(config, version, path, bad)


def _check_flags(flags: Any, group: str, names: list[str], kind: str, bad, required: bool) -> None:
    """The saved flags of ``group``: known names, the default's type, the valid range."""
    if flags is None and not required:
        return
    if not isinstance(flags, dict):
        raise bad(group, f"must be an object of flags, got {type(flags).__name__}")
    defaults = script_util.network_defaults(kind)
    for name, value in flags.items():
        key = f"{group}.{name}"
        if name not in names:
            raise bad(key, f"is not a {group.replace('_', ' ')[:-1]} of a {kind} network")
        default = defaults[name]
        if isinstance(default, bool):
            ok, kind_text = isinstance(value, bool), "true or false"
        elif isinstance(default, int):
            ok, kind_text = isinstance(value, int) and not isinstance(value, bool), "an integer"
        elif isinstance(default, float):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            ok, kind_text = ok and math.isfinite(value), "a finite number"
        else:
            ok, kind_text = isinstance(value, str), "a string"
        if not ok:
            raise bad(key, f"must be {kind_text}, got {json.dumps(value)}")
        test, valid = _RANGES.get(name, (None, ""))
        if test is not None and not test(value):
            raise bad(key, f"must be {valid}, got {json.dumps(value)}")


def _check_data(config: dict[str, Any], kind: str, bad) -> None:
    """``data``: null, or the class list of a class-conditional network that fits its classes."""
    data, model_flags = config.get("data"), config["model_flags"]
    if data is None:
        return
    if not is_class_conditional(kind, model_flags):
        raise bad("data", "must be null: the network is not class-conditional "
                  "(model_flags.class_cond is false)")  # fmt: skip
    if not isinstance(data, dict) or set(data) != {"num_classes", "class_names"}:
        raise bad("data", 'must be null or {"num_classes": N, "class_names": [N names]}')
    names, count = data["class_names"], data["num_classes"]
    if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
        raise bad("data.class_names", "must be a list of class names (non-empty strings)")
    if len(set(names)) != len(names):
        raise bad("data.class_names", "must not name a class twice")
    if isinstance(count, bool) or not isinstance(count, int) or count != len(names):
        raise bad("data.num_classes", f"must be the number of data.class_names ({len(names)}), "
                  f"got {json.dumps(count)}")  # fmt: skip
    labels = model_flags.get("num_classes", script_util.NUM_CLASSES)
    if count > labels:
        raise bad("data.class_names", f"lists {count} classes but the network has labels for "
                  f"{labels} (model_flags.num_classes): a label past {labels - 1} would be "
                  "another class or none")  # fmt: skip


def _check_integrity(config: dict[str, Any], version: int, path: str, bad) -> None:
    """``checkpoint`` and ``digest``: well-formed, and the digest that of the contents."""
    hex_digest = re.compile(r"[0-9a-f]{64}")
    checkpoint = config.get("checkpoint")
    if checkpoint is not None and not (
        isinstance(checkpoint, dict) and set(checkpoint) == {"sha256"}
        and isinstance(checkpoint["sha256"], str) and hex_digest.fullmatch(checkpoint["sha256"])
    ):  # fmt: skip
        raise bad("checkpoint", 'must be {"sha256": "<64 hex digits>"}')
    digest = config.get("digest")
    if digest is None:
        if version >= 2:
            raise bad("digest", "is missing (every file of format_version 2 has one)")
        return
    if not isinstance(digest, str) or not hex_digest.fullmatch(digest):
        raise bad("digest", "must be 64 hex digits")
    if digest != content_digest(config):
        raise RunConfigError(
            f"run configuration {path} was edited after it was saved: its contents no longer "
            "match its digest (a changed flag, e.g. noise_schedule, would run another process "
            "than the checkpoint was trained for); restore the file, or delete it and give the "
            "model flags on the command line"
        )
