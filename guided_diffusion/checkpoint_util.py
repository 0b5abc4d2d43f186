"""
Reading checkpoint files safely (models, EMA, optimizer states, classifiers): tensors and
plain containers only, every error naming the file. Explaining why a checkpoint does not fit a
model is ``checkpoint_diagnosis``'s job; this module imports no model code.

A file altered after it was saved is refused before it is loaded: when the caller knows the
SHA-256 recorded when it was saved (the run configuration beside it, ``run_config``), the
file's digest must match it; otherwise the CRC-32 that torch's zip format stores for every
record (the pickled structure and each tensor's bytes) must match the record. Both read the
file once, a chunk at a time, before ``torch.load`` reads it again (then from the page cache).
"""

import io
import os
import pickle
import zipfile
import zlib
from collections.abc import Mapping
from typing import IO, Any, Optional, Union

import blobfile as bf
import torch

from .io_util import hash_file, is_local_path
from .script_errors import debugging

_SHOWN = 5  # keys listed per kind of difference


def read_checkpoint(
    path: Union[str, os.PathLike],
    map_location="cpu",
    *,
    expected_sha256: Optional[str] = None,
    recorded_in: Optional[str] = None,
    verify: bool = True,
    **kwargs,
) -> Any:
    """
    Read any checkpoint file safely: ``torch.load`` with ``weights_only=True``, so the file
    holds tensors and plain containers and cannot run code. The one reader of ``.pt`` files
    (model, EMA, optimizer and classifier checkpoints alike); every error names the file.
    A file altered after it was saved is refused first (see the module docstring).

    Every rank reads the file itself; nothing is exchanged between ranks.

    :param path: local path or blobfile URL.
    :param map_location: where to put the tensors (``torch.load``'s argument).
    :param expected_sha256: the SHA-256 recorded when the file was saved, if known; else the
        zip records' CRC-32s are checked.
    :param recorded_in: the file that records ``expected_sha256``, for the message.
    :param verify: False skips both checks (for reading shapes only).
    :param kwargs: more ``torch.load`` arguments (``weights_only`` stays True).
    :return: the loaded object.
    :raises FileNotFoundError: no such file.
    :raises ValueError: the file is altered or damaged, is not a PyTorch file or holds
        objects other than tensors and plain containers.
    """
    path = os.fspath(path)
    kwargs["weights_only"] = True
    try:
        if verify:
            _verify(path, expected_sha256, recorded_in)
        return _torch_load(path, map_location=map_location, **kwargs)
    except FileNotFoundError:
        raise
    except _AlteredError as exc:
        raise ValueError(str(exc)) from None
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


class _AlteredError(Exception):
    """A checkpoint whose bytes are not those it was saved with (the message says how)."""


def _verify(path: str, expected_sha256: Optional[str], recorded_in: Optional[str]) -> None:
    """
    Check that ``path`` holds the bytes it was saved with: its SHA-256 against
    ``expected_sha256`` when given, else the CRC-32 of every zip record.

    :raises _AlteredError: naming the file, what differs and what to do.
    :raises FileNotFoundError: no such file.
    """
    _check_exists(path)
    if expected_sha256:
        actual = hash_file(path)
        if actual != expected_sha256:
            where = recorded_in or "its run configuration"
            raise _AlteredError(
                f"{path} does not match its run configuration {where}: its SHA-256 is "
                f"{actual[:16]}..., the one recorded when it was saved {expected_sha256[:16]}... "
                "(the checkpoint was altered or replaced after it was saved, or the .json "
                "belongs to another one). Copy or download the checkpoint again, or use another "
                f"one; if this .pt is the one you mean, delete {where} and give the model flags "
                "on the command line"
            )
        return
    opener = open if is_local_path(path) else bf.BlobFile
    with opener(path, "rb") as f:
        _check_crcs(f, path)


def _check_crcs(f: IO[bytes], path: str, chunk_bytes: int = 1 << 24) -> None:
    """
    Compare the CRC-32 that torch's zip format stores for each record with the record's
    bytes (``zipfile`` computes it while reading), ``chunk_bytes`` at a time. A file that is
    not a zip archive (torch's legacy format, or one cut short: ``torch.load`` names those)
    and records saved without a CRC (``torch.serialization.config.save.compute_crc32 =
    False``) are not checked.
    """
    if not f.seekable() or not zipfile.is_zipfile(f):
        return
    try:
        with zipfile.ZipFile(f) as archive:
            for info in archive.infolist():
                if info.CRC == 0 or info.is_dir():
                    continue  # saved without a CRC
                with archive.open(info) as record:
                    try:
                        while record.read(chunk_bytes):
                            pass
                    except zipfile.BadZipFile as exc:
                        if not str(exc).startswith("Bad CRC-32"):
                            raise
                        raise _AlteredError(
                            f"{path} is damaged: its record {info.filename} "
                            f"({info.file_size} bytes) does not match the CRC-32 saved with it "
                            "(the file was altered after it was saved, or copied badly): copy "
                            "or download it again, or use another checkpoint"
                        ) from None
    except (zipfile.BadZipFile, EOFError, zlib.error) as exc:
        message = (
            f"{path} is damaged: its zip directory does not fit its records (altered after "
            "it was saved, or copied badly): copy or download it again, or use another "
            "checkpoint"
        )
        if debugging():
            message += f" [zipfile: {type(exc).__name__}: {exc}]"
        raise _AlteredError(message) from exc


def _check_exists(path: str) -> None:
    """:raises FileNotFoundError: naming ``path`` when there is no such file."""
    exists = os.path.isfile(path) if is_local_path(path) else bf.exists(path)
    if not exists:
        raise FileNotFoundError(f"checkpoint file not found: {path}")


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


def read_state_dict(
    path: Union[str, os.PathLike],
    map_location="cpu",
    expected_sha256: Optional[str] = None,
    recorded_in: Optional[str] = None,
) -> dict[str, torch.Tensor]:
    """
    Read a model's state dict from a ``.pt`` file safely (see ``read_checkpoint``).

    :param path: local path or blobfile URL.
    :param map_location: where to put the tensors (``torch.load``'s argument).
    :param expected_sha256: the SHA-256 recorded when it was saved (``recorded_in``), if any.
    :return: the state dict.
    :raises FileNotFoundError: no such file.
    :raises ValueError: the file is not a PyTorch file, holds objects other than tensors and
        plain containers, or is not a state dict.
    """
    obj = read_checkpoint(
        path, map_location=map_location, expected_sha256=expected_sha256, recorded_in=recorded_in
    )
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
    obj = read_checkpoint(path, mmap=True, verify=False)  # loading it later checks the bytes
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
