"""
Reading checkpoint files safely (models, EMA, optimizer states, classifiers): tensors and
plain containers only, every error naming the file. Explaining why a checkpoint does not fit a
model is ``checkpoint_diagnosis``'s job; this module imports no model code.
"""

import io
import os
import pickle
from collections.abc import Mapping
from typing import Any, Optional, Union

import blobfile as bf
import torch

from .io_util import is_local_path
from .script_errors import debugging

_SHOWN = 5  # keys listed per kind of difference


def read_checkpoint(path: Union[str, os.PathLike], map_location="cpu", **kwargs) -> Any:
    """
    Read any checkpoint file safely: ``torch.load`` with ``weights_only=True``, so the file
    holds tensors and plain containers and cannot run code. The one reader of ``.pt`` files
    (model, EMA, optimizer and classifier checkpoints alike); every error names the file.

    Every rank reads the file itself; nothing is exchanged between ranks.

    :param path: local path or blobfile URL.
    :param map_location: where to put the tensors (``torch.load``'s argument).
    :param kwargs: more ``torch.load`` arguments (``weights_only`` stays True).
    :return: the loaded object.
    :raises FileNotFoundError: no such file.
    :raises ValueError: the file is not a PyTorch file or holds objects other than tensors
        and plain containers.
    """
    path = os.fspath(path)
    kwargs["weights_only"] = True
    try:
        return _torch_load(path, map_location=map_location, **kwargs)
    except FileNotFoundError:
        raise
    except pickle.UnpicklingError as exc:
        # torch prefixes every weights-only failure with "Weights only load failed"; only a
        # refused global means real Python objects, anything else is a damaged or foreign file
        if "GLOBAL" in str(exc) or "Unsupported global" in str(exc):
            raise ValueError(
                f"{path} holds Python objects other than tensors, so it was not loaded "
                "(checkpoints are read with weights_only=True and cannot run code); save the "
                "state_dict() instead"
            ) from exc
        raise ValueError(_unreadable_message(path, exc)) from exc
    except Exception as exc:  # torch.load fails on junk with many exception types
        raise ValueError(_unreadable_message(path, exc)) from exc


# What torch and its zip reader (miniz) say about a file that ends early or was altered.
_DAMAGE_SIGNS = ("central directory", "unexpected eof", "corrupt", "truncat", "end of file")


def _unreadable_message(path: str, exc: BaseException) -> str:
    """
    One line for a file ``torch.load`` could not read: damaged (truncated, a partial copy)
    or not a checkpoint at all, naming the file and what to do. torch's own text, often
    several sentences long, is added only under ``GUIDED_DIFFUSION_DEBUG=1`` (the exception
    is also chained to it).

    :param exc: what ``torch.load`` raised.
    """
    size = _file_size(path)
    text = f"{type(exc).__name__}: {exc}".lower()
    if size == 0:
        message = f"{path} is empty (0 bytes): copy or download it again"
    elif isinstance(exc, EOFError) or any(sign in text for sign in _DAMAGE_SIGNS):
        message = (
            f"{path} is damaged or incomplete ({'' if size is None else f'{size} bytes, '}cut "
            "short or altered after it was saved): copy or download it again, or use another "
            "checkpoint"
        )
    else:
        message = (
            f"{path} is not a PyTorch checkpoint (a file written by torch.save): check the "
            "path, or copy or download the file again"
        )
    if debugging():
        message += f" [torch.load: {type(exc).__name__}: {' '.join(str(exc).split())}]"
    return message


def _file_size(path: str) -> Optional[int]:
    """:return: the size in bytes of a local file or blobfile URL, None when unknown."""
    try:
        return os.path.getsize(path) if is_local_path(path) else bf.stat(path).size
    except (OSError, AttributeError):
        return None


def _torch_load(path: str, **kwargs) -> Any:
    """``torch.load`` of a local file or a blobfile URL."""
    if is_local_path(path):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"checkpoint file not found: {path}")
        return torch.load(path, **kwargs)
    if not bf.exists(path):
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    with bf.BlobFile(path, "rb") as f:
        data = f.read()
    return torch.load(io.BytesIO(data), **kwargs)


def read_state_dict(path: Union[str, os.PathLike], map_location="cpu") -> dict[str, torch.Tensor]:
    """
    Read a model's state dict from a ``.pt`` file safely (see ``read_checkpoint``).

    :param path: local path or blobfile URL.
    :param map_location: where to put the tensors (``torch.load``'s argument).
    :return: the state dict.
    :raises FileNotFoundError: no such file.
    :raises ValueError: the file is not a PyTorch file, holds objects other than tensors and
        plain containers, or is not a state dict.
    """
    obj = read_checkpoint(path, map_location=map_location)
    check_state_dict(obj, os.fspath(path))
    _check_finite(obj, os.fspath(path))
    return obj


def read_shapes(path: Union[str, os.PathLike]) -> dict[str, tuple[int, ...]]:
    """
    The keys and shapes of a state dict file, read without loading its tensors (the file is
    memory-mapped, so this is cheap even for a large checkpoint).

    :raises FileNotFoundError: no such file.
    :raises ValueError: the file is not a state dict saved by ``torch.save``.
    """
    obj = read_checkpoint(path, mmap=True)
    check_state_dict(obj, os.fspath(path))
    return {k: tuple(v.shape) for k, v in obj.items()}


def _check_finite(state_dict: Mapping[str, torch.Tensor], source: str) -> None:
    """Raise a ValueError when a floating-point tensor holds NaN or infinite values."""
    bad = [
        k for k, v in state_dict.items() if v.is_floating_point() and not torch.isfinite(v).all()
    ]
    if bad:
        raise ValueError(
            f"{source}: {len(bad)} of its {len(state_dict)} tensors hold NaN or infinite values "
            f"(first: {bad[0]}): it was saved by a run that diverged; use an earlier checkpoint"
        )


def read_optimizer_state(path: Union[str, os.PathLike], map_location="cpu") -> dict[str, Any]:
    """
    Read an optimizer state (``opt{N}.pt``: ``Optimizer.state_dict()``, plus
    ``lg_loss_scale`` with fp16) safely (see ``read_checkpoint``).

    :return: the state dict, with "state" and "param_groups".
    :raises FileNotFoundError: no such file.
    :raises ValueError: naming the file, when it is damaged, unsafe or not an optimizer state.
    """
    obj = read_checkpoint(path, map_location=map_location)
    if not (
        isinstance(obj, Mapping)
        and isinstance(obj.get("state"), Mapping)
        and isinstance(obj.get("param_groups"), list)
    ):
        found = type(obj).__name__
        if isinstance(obj, Mapping):
            found = f"dict with keys {', '.join(repr(k) for k in list(obj)[:_SHOWN])}"
        raise ValueError(
            f"{os.fspath(path)} is not an optimizer state (expected \"state\" and "
            f"\"param_groups\", found a {found}); delete it to resume with a fresh optimizer"
        )
    return dict(obj)


def check_state_dict(obj, source: str) -> None:
    """Raise a ValueError unless ``obj`` maps names to tensors."""
    if not isinstance(obj, Mapping):
        raise ValueError(f"{source} holds a {type(obj).__name__}, not a state dict of tensors")
    bad = [k for k, v in obj.items() if not (isinstance(k, str) and isinstance(v, torch.Tensor))]
    if bad:
        keys = ", ".join(repr(k) for k in list(obj)[:_SHOWN])
        hint = ""
        if "state" in obj and "param_groups" in obj:
            hint = (
                " It looks like an optimizer state (opt*.pt): load the model*.pt or ema_*.pt "
                "beside it."
            )
        elif any(k in obj for k in ("state_dict", "model", "ema")):
            hint = " It looks like a wrapper: pass the model's state dict inside it."
        raise ValueError(
            f"{source} is not a state dict of tensors: {len(bad)} of its {len(obj)} entries are "
            f"not named tensors (first keys: {keys}).{hint}"
        )
