"""
File helpers: atomic writes for checkpoints, sample batches (local disk or blob storage) and
result tables, and the SHA-256 of a file (the one file hash: ``hash_file``, and the same
digest of a checkpoint as it is written). Reading and writing .npz batches is ``npz_batch``'s
job.
"""

import contextlib
import csv
import hashlib
import os
import tempfile
import time
from typing import IO, Callable, Iterator, Optional, Sequence

import blobfile as bf
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


def hash_file(path: str, chunk_bytes: int = 1 << 24) -> str:
    """
    :param path: a local file or a blobfile URL.
    :return: the SHA-256 hex digest of the file's bytes, read ``chunk_bytes`` at a time (so
        a multi-GB checkpoint needs no more memory than one chunk). A local file last
        changed more than a second before it is hashed is hashed once per process while its
        size, times and inode stay the same (checking a checkpoint when it loads and naming
        a sampling run after it then read it once); a file changed within the last second
        is always read, since a change in the same clock tick could leave its times as they
        were.
    """
    key = _stat_key(path)
    if key is not None and key in _hashes:
        return _hashes[key]
    started_ns = time.time_ns()
    digest = hashlib.sha256()
    opener = open if is_local_path(path) else bf.BlobFile
    with opener(path, "rb") as f:
        while chunk := f.read(chunk_bytes):
            digest.update(chunk)
    if key is not None and key[3] < started_ns - _SETTLED_NS:
        _hashes[key] = digest.hexdigest()
    return digest.hexdigest()


# (path, size, mtime, ctime, inode) of a local file -> its SHA-256, for ``hash_file``.
_hashes: dict[tuple, str] = {}
_SETTLED_NS = 1_000_000_000


def _stat_key(path: str) -> Optional[tuple]:
    """What identifies a local file's current contents without reading them (None: remote)."""
    if not is_local_path(path):
        return None
    st = os.stat(path)
    return (os.path.realpath(path), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


class _HashingWriter:
    """A write-only file that hashes what goes through it (SHA-256) and writes all of it."""

    def __init__(self, f: IO[bytes]):
        self._f = f
        self.sha256 = hashlib.sha256()

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        self.sha256.update(view)
        while view:  # an unbuffered file may take part of it
            written = self._f.write(view)
            view = view[written if written is not None else len(view) :]
        return len(data) if isinstance(data, (bytes, bytearray)) else memoryview(data).nbytes

    def flush(self) -> None:
        self._f.flush()


def atomic_torch_save(
    obj, path: str, before_replace: Optional[Callable[[str], None]] = None
) -> str:
    """
    ``torch.save`` through ``atomic_write``, unbuffered: torch reports a failed buffered
    write (e.g. a full disk) as an unrelated RuntimeError, while an unbuffered one raises
    the ``OSError`` itself (naming ``path``). The bytes are hashed as they are written.

    :param before_replace: called with the file's SHA-256 once every byte is written, before
        the file appears under ``path`` (e.g. to write a run configuration that records it).
    :return: the SHA-256 hex digest of the file written.
    """
    with atomic_write(path, "wb", buffering=0 if is_local_path(path) else -1) as f:
        writer = _HashingWriter(f)
        torch.save(obj, writer)
        digest = writer.sha256.hexdigest()
        if before_replace is not None:
            before_replace(digest)
    return digest


def markdown_table(
    rows: Sequence[dict[str, object]], columns: Sequence[str], cell: Callable[[str, object], str]
) -> str:
    """
    :param rows: one dict per row, holding every column.
    :param cell: (column, value) -> the text shown in the table.
    :return: the rows as a Markdown table with ``columns`` as its header.
    """
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join(" --- " for _ in columns) + "|"]
    lines += ["| " + " | ".join(cell(c, row[c]) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_table(
    stem: str, rows: Sequence[dict[str, object]], columns: Sequence[str],
    cell: Callable[[str, object], str],
) -> tuple[str, str]:  # fmt: skip
    """
    Write ``{stem}.csv`` (every value at full precision) and ``{stem}.md`` (a Markdown
    table of ``cell``'s texts), each atomically.

    :return: (csv path, md path).
    """
    csv_path, md_path = stem + ".csv", stem + ".md"
    with atomic_write(csv_path, "w") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    with atomic_write(md_path, "w") as f:
        f.write(markdown_table(rows, columns, cell))
    return csv_path, md_path

