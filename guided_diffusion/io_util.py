"""
File helpers: atomic writes for checkpoints and sample batches (local disk or blob storage),
and streaming reads of one array of an .npz batch without loading it whole.
"""

import contextlib
import os
import tempfile
import zipfile
from typing import IO, Iterator

import blobfile as bf
import numpy as np
import torch

_REMOTE_PREFIXES = ("gs://", "az://", "https://", "http://")


def is_local_path(path: str) -> bool:
    """True when ``path`` is on the local file system (not a blobfile URL)."""
    return not str(path).startswith(_REMOTE_PREFIXES)


@contextlib.contextmanager
def atomic_write(path: str, mode: str = "wb", buffering: int = -1) -> Iterator[IO]:
    """
    Open ``path`` for writing so that readers only ever see the old file or the
    complete new one: data goes to a temporary file in the same directory, which
    replaces ``path`` only when the ``with`` block ends without an exception.
    A crash or error while writing leaves any existing ``path`` untouched.

    Blob storage uploads only when the file is closed; on an error the upload is dropped
    (blobfile would otherwise upload what was written so far over the old file).

    An ``OSError`` of the write (e.g. "No space left on device") names ``path``. Temporary
    files are named ``.<file name>.<random>.tmp``.

    :param buffering: ``open``'s argument (0: unbuffered, binary only).
    """
    if "w" not in mode:
        raise ValueError(f"atomic_write needs a write mode such as 'wb' or 'w', got {mode!r}")
    path = str(path)
    if not is_local_path(path):
        with bf.BlobFile(path, mode, partial_writes_on_exc=False) as f:
            yield f
        return
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, buffering=buffering) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(err, OSError) and err.filename in (None, tmp) and err.errno is not None:
            raise OSError(err.errno, err.strerror or str(err), path) from err
        raise


def atomic_torch_save(obj, path: str) -> None:
    """
    ``torch.save`` through ``atomic_write``, unbuffered: torch reports a failed buffered
    write (e.g. a full disk) as an unrelated RuntimeError, while an unbuffered one raises
    the ``OSError`` itself (naming ``path``).
    """
    with atomic_write(path, "wb", buffering=0 if is_local_path(path) else -1) as f:
        torch.save(obj, f)




class NpzArrayReader:
    """
    Read one array of an ``.npz`` (or a plain ``.npy``) in chunks of rows along its first axis,
    without loading it whole. Works for ``np.savez`` (stored) and ``np.savez_compressed``
    (deflated) members alike: the zip member is a stream whose ``.npy`` header is parsed first.

    Use as a context manager; ``shape`` and ``dtype`` are known right after opening.
    """

    def __init__(self, path: str, key: str = "arr_0"):
        self.path = str(path)
        if not os.path.exists(self.path):
            raise FileNotFoundError(f"batch file not found: {self.path}")
        self._zip = None
        if zipfile.is_zipfile(self.path):
            self._zip = zipfile.ZipFile(self.path)
            member = f"{key}.npy"
            if member not in self._zip.namelist():
                keys = sorted(name[:-4] for name in self._zip.namelist() if name.endswith(".npy"))
                self._zip.close()
                raise ValueError(
                    f"{self.path}: no array named {key!r} (found {keys}); a batch must store its "
                    f"uint8 images [N x H x W x 3] as {key!r}, as np.savez(path, images) does"
                )
            self._stream: IO[bytes] = self._zip.open(member)
        elif self.path.endswith(".npy"):
            self._stream = open(self.path, "rb")
        else:
            raise ValueError(_not_npz_message(self.path))
        try:
            self.shape, self.dtype = _read_npy_header(self._stream, f"{self.path}[{key}]")
            if self._zip is not None:
                size = self._zip.getinfo(member).file_size
                name = f"{self.path}[{key}]"
                _check_member_size(size, self._stream, self.shape, self.dtype, name)
        except Exception:
            self.close()
            raise
        self._row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize
        self._rows_read = 0

    def __len__(self) -> int:
        return self.shape[0]

    def read(self, num_rows: int) -> np.ndarray:
        """
        :param num_rows: the most rows to read.
        :return: the next [n x ...] rows (n <= num_rows; n = 0 at the end).
        """
        num_rows = min(num_rows, self.shape[0] - self._rows_read)
        want = num_rows * self._row_bytes
        buffer = bytearray(want)
        view, got = memoryview(buffer), 0
        while got < want:
            chunk = self._stream.read(want - got)
            if not chunk:
                raise ValueError(
                    f"{self.path}: the array ends after {self._rows_read + got // self._row_bytes} "
                    f"of {self.shape[0]} rows (truncated file?)"
                )
            view[got : got + len(chunk)] = chunk
            got += len(chunk)
        self._rows_read += num_rows
        return np.frombuffer(buffer, dtype=self.dtype).reshape((num_rows,) + self.shape[1:])

    def iter_batches(self, batch_size: int) -> Iterator[np.ndarray]:
        """Yield the remaining rows in batches of batch_size (the last one may be shorter)."""
        while self._rows_read < self.shape[0]:
            yield self.read(batch_size)

    def close(self) -> None:
        if getattr(self, "_stream", None) is not None:
            self._stream.close()
        if self._zip is not None:
            self._zip.close()

    def __enter__(self) -> "NpzArrayReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _read_npy_header(stream: IO[bytes], name: str) -> tuple[tuple[int, ...], np.dtype]:
    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(stream)
        else:  # 2.0 and 3.0 share the layout (3.0 only allows utf-8 in the header)
            shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(stream)
    except ValueError as err:
        raise ValueError(f"{name}: not a valid .npy array ({err})") from err
    if fortran_order and len(shape) > 1:
        raise ValueError(f"{name}: Fortran-ordered arrays cannot be streamed; save it in C order")
    if dtype.hasobject:
        raise ValueError(f"{name}: object arrays are not supported")
    return tuple(shape), dtype


def _not_npz_message(path: str) -> str:
    """:return: why ``path`` (not a zip archive) is not an .npz, with what it starts with."""
    with open(path, "rb") as f:
        start = f.read(16)
    kind = "empty" if not start else f"it starts with {start!r}"
    return (
        f"{path}: not an .npz file ({kind}; expected a zip archive of arrays, as np.savez "
        "writes)"
    )


def _check_member_size(
    size: int, stream: IO[bytes], shape: tuple[int, ...], dtype: np.dtype, name: str
) -> None:
    """
    Raise a ValueError when an .npy array's header claims more or fewer bytes than it holds.

    :param size: the .npy data's size in bytes (header included); ``stream`` is just past
        the header.
    """
    claimed = int(np.prod(shape, dtype=object)) * dtype.itemsize
    held = size - stream.tell()
    if claimed != held:
        raise ValueError(
            f"{name}: its header claims an array of shape {list(shape)} ({claimed} bytes) "
            f"but the file holds {held} bytes: the file is truncated or damaged"
        )


def check_npz(path: str) -> None:
    """
    Check an .npz file before numpy loads it: a zip archive whose ``.npy`` members hold
    plain (not object) arrays exactly as large as their headers say (or a plain ``.npy``
    file with the same property). Only headers are read. Blob URLs are not checked.

    :raises FileNotFoundError: no such file.
    :raises ValueError: naming the file and what is wrong (not an archive, e.g. a text file;
        a member that is not an array; a header claiming an absurd shape).
    """
    if not is_local_path(path):
        return
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such .npz file: {path}")
    if not zipfile.is_zipfile(path):
        if not path.endswith(".npy"):
            raise ValueError(_not_npz_message(path))
        with open(path, "rb") as stream:  # a plain .npy array
            shape, dtype = _read_npy_header(stream, path)
            _check_member_size(os.path.getsize(path), stream, shape, dtype, path)
        return
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                with archive.open(info) as stream:
                    name = f"{path}[{info.filename[:-4]}]"
                    shape, dtype = _read_npy_header(stream, name)
                    _check_member_size(info.file_size, stream, shape, dtype, name)
    except (zipfile.BadZipFile, OSError) as err:
        raise ValueError(f"{path}: damaged .npz archive ({err})") from None
