"""
File helpers: atomic writes for checkpoints, sample batches (local disk or blob storage) and
result tables, and the SHA-256 of a file. Reading and writing .npz batches is ``npz_batch``'s
job.
"""

import contextlib
import csv
import hashlib
import os
import tempfile
from typing import IO, Callable, Iterator, Sequence

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
    """:return: the SHA-256 hex digest of a local file's bytes, read ``chunk_bytes`` at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def atomic_torch_save(obj, path: str) -> None:
    """
    ``torch.save`` through ``atomic_write``, unbuffered: torch reports a failed buffered
    write (e.g. a full disk) as an unrelated RuntimeError, while an unbuffered one raises
    the ``OSError`` itself (naming ``path``).
    """
    with atomic_write(path, "wb", buffering=0 if is_local_path(path) else -1) as f:
        torch.save(obj, f)


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

