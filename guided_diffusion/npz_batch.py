"""
``.npz`` image batches, the one format every program here exchanges: what the sampling
programs write, what super-resolution reads as ``--base_samples``, what ``npz_to_png``
converts and what the evaluator scores.

A batch is a zip of ``.npy`` members: ``arr_0`` uint8 images [N x H x W x C] (C = 3 for
samples and the evaluator; 1 or 4, or [N x H x W] grey, are accepted where noted),
``arr_1`` [N] int64 labels when the images have classes, and for reference batches the
statistics ``mu``, ``sigma``, ``mu_s``, ``sigma_s``.

Reading and writing stream rows, so a 50,000-image batch (9.8 GB at 256x256) never has to
fit in memory: ``NpzArrayReader`` reads one member a few rows at a time (stored or
deflated), ``NpzWriter`` writes members row chunk by row chunk, atomically and
byte-reproducibly (fixed zip timestamps), so the same arrays always give the same file.
"""

import contextlib
import os
import zipfile
from collections.abc import Iterator
from typing import IO, Optional

import blobfile as bf
import numpy as np

from .io_util import atomic_write, is_local_path

# Every member gets this timestamp, so that a file depends on its arrays alone.
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)


class BatchFileError(ValueError):
    """An .npz batch that cannot be read or does not hold what was asked: the message says why."""


# ---------------------------------------------------------------- validation


def check_images(
    shape: tuple[int, ...], dtype: np.dtype, name: str, channels: tuple[int, ...] = (3,)
) -> None:
    """
    Raise BatchFileError unless (shape, dtype) describe uint8 images [N x H x W x C].

    :param shape: the array's shape.
    :param dtype: the array's dtype.
    :param name: the file (or description) named in the error.
    :param channels: the accepted C; with 1 among them, grey [N x H x W] is accepted too.
    """
    grey = len(shape) == 3 and 1 in channels
    if not (grey or (len(shape) == 4 and shape[-1] in channels)):
        layout = "[N x H x W x 3] (NHWC, RGB)" if channels == (3,) else (
            f"[N x H x W x C] with C in {list(channels)}"
        )
        raise BatchFileError(f"{name}: images must be a {layout} array, got shape {tuple(shape)}")
    if np.dtype(dtype) != np.uint8:
        raise BatchFileError(f"{name}: images must be uint8 in [0, 255], got dtype {np.dtype(dtype)}")


def as_labels(arr_1: Optional[np.ndarray], num_images: int) -> Optional[np.ndarray]:
    """:return: arr_1 as [N] int64 labels when it holds one integer per image, else None."""
    if arr_1 is None or arr_1.shape != (num_images,) or arr_1.dtype.kind not in "iu":
        return None
    return arr_1.astype(np.int64)


def npz_keys(path: str) -> list[str]:
    """:return: the array names stored in an .npz (without the .npy suffix)."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"batch file not found: {path}")
    if not zipfile.is_zipfile(path):
        return []
    with zipfile.ZipFile(path) as archive:
        return [name[:-4] for name in archive.namelist() if name.endswith(".npy")]


# ---------------------------------------------------------------- streaming reads


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
                raise BatchFileError(
                    f"{self.path}: no array named {key!r} (found {keys}); a batch must store its "
                    f"uint8 images [N x H x W x 3] as {key!r}, as np.savez(path, images) does"
                )
            self._stream: IO[bytes] = self._zip.open(member)
        elif self.path.endswith(".npy"):
            self._stream = open(self.path, "rb")
        else:
            raise BatchFileError(_not_npz_message(self.path))
        try:
            self.shape, self.dtype = _read_npy_header(self._stream, f"{self.path}[{key}]")
            size = self._zip.getinfo(member).file_size if self._zip else os.path.getsize(self.path)
            _check_size(size, self._stream, self.shape, self.dtype, f"{self.path}[{key}]")
        except Exception:
            self.close()
            raise
        self._row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize
        self._data_start = self._stream.tell()
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
                raise BatchFileError(
                    f"{self.path}: the array ends after {self._rows_read + got // self._row_bytes} "
                    f"of {self.shape[0]} rows (truncated file?)"
                )
            view[got : got + len(chunk)] = chunk
            got += len(chunk)
        self._rows_read += num_rows
        return np.frombuffer(buffer, dtype=self.dtype).reshape((num_rows,) + self.shape[1:])

    def read_rows(self, start: int, count: int) -> np.ndarray:
        """
        Rows ``start .. start + count - 1``, seeking there first (a stored member seeks
        directly; a deflated one is read forward, or from its beginning when going back).

        :return: [count x ...] rows (fewer past the end).
        """
        if start != self._rows_read:
            self._stream.seek(self._data_start + start * self._row_bytes)
            self._rows_read = start
        return self.read(count)

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
        raise BatchFileError(f"{name}: not a valid .npy array ({err})") from err
    if fortran_order and len(shape) > 1:
        raise BatchFileError(f"{name}: Fortran-ordered arrays cannot be streamed; save it in C order")
    if dtype.hasobject:
        raise BatchFileError(f"{name}: object arrays are not supported")
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


def _check_size(
    size: int, stream: IO[bytes], shape: tuple[int, ...], dtype: np.dtype, name: str
) -> None:
    """
    Raise a BatchFileError when an .npy array's header claims more or fewer bytes than it
    holds (e.g. an absurd shape that would make numpy allocate terabytes).

    :param size: the .npy data's size in bytes, header included; ``stream`` is just past
        the header.
    """
    claimed = int(np.prod(shape, dtype=object)) * dtype.itemsize
    held = size - stream.tell()
    if claimed != held:
        raise BatchFileError(
            f"{name}: its header claims an array of shape {list(shape)} ({claimed} bytes) "
            f"but the file holds {held} bytes: the file is truncated or damaged"
        )


def check_npz(path: str) -> None:
    """
    Check a local .npz file before ``np.load`` reads it: a zip archive (or a plain ``.npy``)
    whose arrays are plain (not object) arrays exactly as large as their headers say. Only
    the headers are read; blob URLs are not checked.

    :raises FileNotFoundError: no such file.
    :raises BatchFileError: naming the file and what is wrong (e.g. a text file, or a header
        claiming an absurd shape).
    """
    if not is_local_path(path):
        return
    if not zipfile.is_zipfile(path):
        with NpzArrayReader(path):  # a plain .npy, or the "not an .npz" error
            return
    try:
        with zipfile.ZipFile(path) as archive:
            for name in archive.namelist():
                if name.endswith(".npy"):
                    NpzArrayReader(path, name[:-4]).close()
    except (zipfile.BadZipFile, OSError) as err:
        raise BatchFileError(f"{path}: damaged .npz archive ({err})") from None


def read_array(path: str, key: str) -> np.ndarray:
    """:return: one whole (small) array of a local .npz, e.g. the labels arr_1."""
    with NpzArrayReader(path, key) as reader:
        return reader.read(len(reader))


def iter_npz_images(
    path: str,
    key: str = "arr_0",
    limit: int = 0,
    chunk_size: int = 256,
    channels: tuple[int, ...] = (1, 3, 4),
) -> Iterator[tuple[np.ndarray, Optional[np.ndarray]]]:
    """
    Stream the images of any .npz batch (samples or reference batch) in chunks, so that a
    batch of any size is read in bounded memory (local files; a blob URL is read whole).

    :param path: the .npz file.
    :param key: the array holding the images (see ``check_images``; grey [N x H x W]
        comes out as [n x H x W x 1]).
    :param limit: read only the first ``limit`` images (0: all).
    :param chunk_size: images per chunk.
    :param channels: the accepted channel counts.
    :return: an iterator of (images [n x H x W x C] uint8, labels [n] int64 from arr_1 when
        the images are arr_0 and arr_1 holds one integer per image, else None).
    """
    if not is_local_path(path):
        yield from _iter_remote(path, key, limit, chunk_size, channels)
        return
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such .npz file: {path}")
    try:
        labels = None
        if key == "arr_0" and "arr_1" in npz_keys(path):
            labels = read_array(path, "arr_1")
        with NpzArrayReader(path, key) as reader:
            check_images(reader.shape, reader.dtype, f"{path}: {key}", channels)
            labels = as_labels(labels, reader.shape[0])
            count = reader.shape[0] if limit <= 0 else min(limit, reader.shape[0])
            for start in range(0, count, chunk_size):
                images = reader.read(min(chunk_size, count - start))
                yield _with_channel_axis(images), _slice(labels, start, len(images))
    except (OSError, zipfile.BadZipFile) as err:
        raise BatchFileError(f"{path} is not a readable .npz file ({err})") from None


def _iter_remote(path, key, limit, chunk_size, channels):
    if not bf.exists(path):
        raise FileNotFoundError(f"no such .npz file: {path}")
    try:
        with bf.BlobFile(path, "rb") as f, np.load(f, allow_pickle=False) as npz:
            if key not in npz.files:
                raise BatchFileError(f"{path} has no array {key!r}; it holds {sorted(npz.files)}")
            whole = npz[key]
            arr_1 = npz["arr_1"] if key == "arr_0" and "arr_1" in npz.files else None
    except (OSError, zipfile.BadZipFile) as err:
        raise BatchFileError(f"{path} is not a readable .npz file ({err})") from None
    check_images(whole.shape, whole.dtype, f"{path}: {key}", channels)
    labels = as_labels(arr_1, len(whole))
    count = len(whole) if limit <= 0 else min(limit, len(whole))
    for start in range(0, count, chunk_size):
        images = whole[start : min(start + chunk_size, count)]
        yield _with_channel_axis(images), _slice(labels, start, len(images))


def _with_channel_axis(images: np.ndarray) -> np.ndarray:
    return images[..., None] if images.ndim == 3 else images  # (n, H, W) grey -> (n, H, W, 1)


def _slice(labels: Optional[np.ndarray], start: int, count: int) -> Optional[np.ndarray]:
    return None if labels is None else labels[start : start + count]


def read_npz_images(
    path: str, key: str = "arr_0", limit: int = 0
) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """
    Read the images of any .npz batch whole (see iter_npz_images for the arguments).

    :return: (images [N x H x W x C] uint8, labels [N] int64 or None).
    """
    chunks = list(iter_npz_images(path, key, limit))
    if not chunks:
        raise BatchFileError(f"{path}: {key} holds no images")
    images = np.concatenate([c[0] for c in chunks])
    labels = None if chunks[0][1] is None else np.concatenate([c[1] for c in chunks])
    return images, labels


# ---------------------------------------------------------------- streaming writes


class NpyStreamWriter:
    """Write one .npy array row chunk by row chunk into an open binary stream (e.g. a zip member)."""

    def __init__(self, stream: IO[bytes], shape: tuple[int, ...], dtype: np.dtype):
        self.stream, self.shape, self.dtype = stream, tuple(shape), np.dtype(dtype)
        header = {
            "descr": np.lib.format.dtype_to_descr(self.dtype),
            "fortran_order": False,
            "shape": self.shape,
        }
        np.lib.format.write_array_header_2_0(stream, header)
        self.rows_written = 0

    def write(self, rows: np.ndarray) -> None:
        """:param rows: an [n x shape[1:]] array of the writer's dtype."""
        rows = np.ascontiguousarray(rows, dtype=self.dtype)
        if rows.shape[1:] != self.shape[1:] or self.rows_written + len(rows) > self.shape[0]:
            raise ValueError(
                f"cannot append rows of shape {rows.shape} to an array of shape {self.shape} "
                f"holding {self.rows_written} rows"
            )
        self.stream.write(rows.tobytes())
        self.rows_written += len(rows)


class NpzWriter:
    """
    Write an .npz member by member, each streamed in row chunks, into ``path`` atomically
    (nothing appears at ``path`` unless every member was written). Members are stored
    uncompressed, as ``np.savez`` does, and with a fixed timestamp, so the file's bytes
    depend on its arrays alone. ``np.load`` reads the result.

    Use as a context manager::

        with NpzWriter(path) as out:
            with out.array("arr_0", (n, h, w, 3), np.uint8) as rows:
                for chunk in chunks:
                    rows.write(chunk)
            out.write("arr_1", labels)
    """

    def __init__(self, path: str):
        self.path = path
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> "NpzWriter":
        file = self._stack.enter_context(atomic_write(self.path, "wb"))
        self._zip = self._stack.enter_context(
            zipfile.ZipFile(file, "w", zipfile.ZIP_STORED, allowZip64=True)
        )
        return self

    def __exit__(self, *exc) -> None:
        self._stack.__exit__(*exc)

    def _member(self, key: str) -> IO[bytes]:
        info = zipfile.ZipInfo(f"{key}.npy", date_time=_ZIP_DATE)
        info.compress_type = zipfile.ZIP_STORED
        info.external_attr = 0o644 << 16
        return self._zip.open(info, "w", force_zip64=True)

    @contextlib.contextmanager
    def array(self, key: str, shape: tuple[int, ...], dtype: np.dtype) -> Iterator[NpyStreamWriter]:
        """
        A member ``{key}.npy`` of the given shape, filled by the caller's ``write`` calls.

        :return: (in a ``with``) a NpyStreamWriter; leaving the block checks it is full.
        """
        with self._member(key) as member:
            writer = NpyStreamWriter(member, shape, dtype)
            yield writer
            if writer.rows_written != writer.shape[0]:
                raise ValueError(
                    f"{self.path}: {key} got {writer.rows_written} of {writer.shape[0]} rows"
                )

    def write(self, key: str, value: np.ndarray) -> None:
        """Write a whole (small) array as member ``{key}.npy``."""
        with self._member(key) as member:
            np.lib.format.write_array(member, np.asarray(value), allow_pickle=False)
