"""
The rank-sharded loop behind every per-image program (sampling, upsampling, bits/dim), and
the shard folder that makes such a run resumable.

A run computes items 0..N-1 (images, or per-image bound terms). The items not done yet are
cut into contiguous chunks of at most ``batch_size`` and dealt out in rounds, chunk
``round * world + rank`` to each rank; after every round rank 0 receives the round's
chunks and hands each to a sink, typically ``ShardStore.write``, which saves it atomically
as ``{start:09d}-{stop:09d}.npz`` in a folder beside the final file. The folder is named
after a digest of everything that determines the items (flags, seed, checkpoint contents)
and holds that identity as ``manifest.json``: a rerun of the same command finds its
shards and computes only what is missing; a run with different flags gets another folder,
so shards of different runs never mix. No process holds more than one round.
"""

import hashlib
import json
import os
import re
import shutil
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Optional

import numpy as np
from tqdm.auto import tqdm

from . import dist_util
from .io_util import atomic_write
from .npz_batch import NpzWriter, npz_keys, read_array

MANIFEST = "manifest.json"
_SHARD_NAME = re.compile(r"^(\d{9})-(\d{9})\.npz$")

# compute(start, count) -> {name: [count x ...] array}: the items start..start+count-1.
ComputeFn = Callable[[int, int], dict[str, np.ndarray]]
# sink(start, arrays): receives every computed chunk, on rank 0.
SinkFn = Callable[[int, dict[str, np.ndarray]], None]


# ---------------------------------------------------------------- identity


def file_identity(path: str, chunk_bytes: int = 1 << 24) -> dict[str, Any]:
    """
    :param path: a local file (e.g. a checkpoint), or a folder (e.g. of images to evaluate).
    :return: {"size": bytes, "sha256": hex digest of the whole file}; for a folder, the
        digest of the names, sizes and modification times of every file under it.
    """
    if os.path.isdir(path):
        listing = sorted(
            (os.path.relpath(os.path.join(root, name), path), os.stat(os.path.join(root, name)))
            for root, _, names in os.walk(path)
            for name in names
        )
        text = json.dumps([(name, st.st_size, st.st_mtime_ns) for name, st in listing])
        return {"files": len(listing), "sha256": hashlib.sha256(text.encode()).hexdigest()}
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_bytes):
            digest.update(chunk)
    return {"size": os.path.getsize(path), "sha256": digest.hexdigest()}


def identity_digest(identity: dict[str, Any]) -> str:
    """:return: a hex digest of a JSON-able identity (key order does not matter)."""
    text = json.dumps(identity, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


# ---------------------------------------------------------------- planning


def missing_ranges(done: Sequence[tuple[int, int]], num_items: int) -> list[tuple[int, int]]:
    """
    :param done: disjoint [start, stop) ranges already computed.
    :param num_items: N.
    :return: the sorted [start, stop) ranges of 0..N-1 not covered by ``done``.
    """
    missing, position = [], 0
    for start, stop in sorted(done):
        if start > position:
            missing.append((position, min(start, num_items)))
        position = max(position, stop)
    if position < num_items:
        missing.append((position, num_items))
    return [(a, b) for a, b in missing if a < b]


def plan_chunks(ranges: Sequence[tuple[int, int]], batch_size: int) -> list[tuple[int, int]]:
    """:return: (start, count) chunks of at most ``batch_size`` covering ``ranges`` in order."""
    return [
        (start, min(batch_size, stop - start))
        for first, stop in ranges
        for start in range(first, stop, batch_size)
    ]


# ---------------------------------------------------------------- the loop


def run_sharded(
    num_items: int,
    batch_size: int,
    compute: ComputeFn,
    sink: SinkFn,
    done: Sequence[tuple[int, int]] = (),
    desc: str = "sampling",
) -> int:
    """
    Compute the items of 0..N-1 not in ``done``, split over the ranks, and pass every chunk
    to ``sink`` on rank 0 (in round order) as soon as its round is finished. Call it on
    every rank with the same arguments.

    :param num_items: N.
    :param batch_size: the most items per ``compute`` call.
    :param compute: compute(start, count) -> {name: [count x ...] array}.
    :param sink: sink(start, arrays), called on rank 0 only.
    :param done: [start, stop) ranges to skip (computed by an earlier run).
    :param desc: the progress bar's label.
    :return: the number of items computed.
    """
    rank, world = dist_util.group_rank(), dist_util.group_size()
    chunks = plan_chunks(missing_ranges(done, num_items), batch_size)
    total = sum(count for _, count in chunks)
    bar = tqdm(total=total, unit="img", desc=desc, disable=rank != 0, file=sys.stderr)
    for first in range(0, len(chunks), world):
        mine = chunks[first + rank] if first + rank < len(chunks) else None
        result = None if mine is None else (mine[0], compute(*mine))
        for item in dist_util.all_gather_object(result):
            if item is not None and rank == 0:
                sink(*item)
        bar.update(sum(count for _, count in chunks[first : first + world]))
    bar.close()
    return total


# ---------------------------------------------------------------- the shard folder


class ShardStore:
    """
    The shards of one run, in ``folder``, whose ``manifest.json`` holds the run's identity.

    :param folder: the shard folder (see ``beside``).
    :param identity: everything that determines the items (JSON-able).
    """

    def __init__(self, folder: str, identity: dict[str, Any]):
        self.folder = folder
        self.identity = identity

    @classmethod
    def beside(cls, final_path: str, identity: dict[str, Any]) -> "ShardStore":
        """The store of ``final_path`` (``x.npz`` -> ``x.shards-<digest>/``) for this identity."""
        stem = final_path[: -len(".npz")] if final_path.endswith(".npz") else final_path
        return cls(f"{stem}.shards-{identity_digest(identity)[:12]}", identity)

    def prepare(self) -> list[tuple[int, int]]:
        """
        Create the folder and its manifest (or check an existing manifest), which also
        proves the output folder writable before any work starts.

        :return: the [start, stop) ranges of the shards already there.
        :raises ValueError: the folder holds another run's manifest.
        """
        os.makedirs(self.folder, exist_ok=True)
        path = os.path.join(self.folder, MANIFEST)
        if os.path.exists(path):
            with open(path) as f:
                saved = json.load(f)
            if saved != json.loads(json.dumps(self.identity, default=str)):
                raise ValueError(
                    f"{self.folder} holds shards of a different run (see its {MANIFEST}); "
                    "move it away or delete it"
                )
        else:
            with atomic_write(path, "w") as f:
                json.dump(self.identity, f, indent=1, sort_keys=True, default=str)
        return self.done()

    def done(self) -> list[tuple[int, int]]:
        """:return: the disjoint, sorted [start, stop) ranges of the complete shards present."""
        ranges, position = [], -1
        for name in sorted(os.listdir(self.folder)):
            match = _SHARD_NAME.match(name)
            if match:
                start, stop = int(match.group(1)), int(match.group(2))
                if start >= position and stop > start:  # skip any overlapping leftover
                    ranges.append((start, stop))
                    position = stop
        return ranges

    def path(self, start: int, stop: int) -> str:
        return os.path.join(self.folder, f"{start:09d}-{stop:09d}.npz")

    def write(self, start: int, arrays: dict[str, np.ndarray]) -> None:
        """Save one chunk (items start.. start + len - 1) atomically."""
        count = len(next(iter(arrays.values())))
        with NpzWriter(self.path(start, start + count)) as out:
            for key, value in arrays.items():
                out.write(key, value)

    def iter_chunks(self, num_items: int, key: str) -> Iterator[np.ndarray]:
        """
        Stream one array of the shards covering 0..N-1, in item order, one shard at a time.

        :raises ValueError: the shards do not cover 0..N-1 exactly.
        """
        ranges = [r for r in self.done() if r[0] < num_items]
        if missing_ranges(ranges, num_items) or ranges[-1][1] != num_items:
            raise ValueError(f"{self.folder}: the shards do not cover items 0..{num_items - 1}")
        for start, stop in ranges:
            yield read_array(self.path(start, stop), key)

    def keys(self) -> list[str]:
        """:return: the array names of the first shard."""
        start, stop = self.done()[0]
        return npz_keys(self.path(start, stop))

    def remove(self) -> None:
        """Delete the folder and everything in it."""
        shutil.rmtree(self.folder, ignore_errors=True)


def previous_seed(final_path: str, identity: dict[str, Any]) -> Optional[int]:
    """
    The seed of an earlier run of the same command started without ``--seed``: a shard
    folder of ``final_path`` whose manifest equals ``identity`` except for its seed.

    :return: that seed (the newest such folder's), or None.
    """
    stem = final_path[: -len(".npz")]
    parent, prefix = os.path.dirname(stem) or ".", os.path.basename(stem) + ".shards-"
    if not os.path.isdir(parent):
        return None
    wanted = json.loads(json.dumps({k: v for k, v in identity.items() if k != "seed"}, default=str))
    found = []
    for name in os.listdir(parent):
        manifest = os.path.join(parent, name, MANIFEST)
        if name.startswith(prefix) and os.path.isfile(manifest):
            try:
                with open(manifest) as f:
                    saved = json.load(f)
            except (OSError, ValueError):
                continue
            seed = saved.pop("seed", None)
            if saved == wanted and isinstance(seed, int):
                found.append((os.path.getmtime(manifest), seed))
    return max(found)[1] if found else None

