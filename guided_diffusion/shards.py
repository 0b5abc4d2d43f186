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
``run_resumable`` runs a job so, and ``assemble_samples`` streams sample shards into the
final ``.npz``.
"""

import argparse
import dataclasses
import hashlib
import json
import os
import re
import secrets
import shutil
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Optional

import numpy as np
from tqdm.auto import tqdm

from . import dist_util, logger
from .io_util import atomic_write, hash_file
from .npz_batch import NpzWriter, npz_keys, read_array
from .script_errors import SamplingInputError

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
    return {"size": os.path.getsize(path), "sha256": hash_file(path, chunk_bytes)}


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


# ---------------------------------------------------------------- resumable runs


def run_identity(args: argparse.Namespace, files: dict[str, str], **extra) -> dict[str, object]:
    """
    Everything that determines a run's images: every flag but those that only say how
    many, how fast or what else to write, the contents of the input files instead of their
    paths, and ``extra`` (e.g. the program's name).

    :param files: flag name -> path of each input file (checkpoints, base samples); the
        autoguidance guide (``--guide_model_path``) is added when given.
    """
    if getattr(args, "guide_model_path", ""):
        files = {**files, "guide_model_path": args.guide_model_path}
    identity = {k: v for k, v in vars(args).items() if k not in _NOT_IDENTITY and k not in files}
    identity.update(extra)
    identity["files"] = {flag: path for flag, path in files.items() if path}
    return identity


# Flags that never change an image: how many, how fast, what else to write (and the preset
# whose flags were filled in: the flags themselves are part of the identity).
_NOT_IDENTITY = {"num_samples", "batch_size", "grid", "keep_shards", "seed", "preset", "presets"}


def _open_store(
    npz_path: str, identity: dict, seed: Optional[int]
) -> tuple[ShardStore, list[tuple[int, int]]]:
    """On rank 0: hash the input files, settle the seed, open the shard folder."""
    identity = dict(identity)
    identity["files"] = {f: file_identity(p) for f, p in identity["files"].items()}
    if seed is None:
        seed = previous_seed(npz_path, identity)
        if seed is not None:
            logger.log(f"resuming the unseeded run found beside {npz_path}: seed {seed}")
    identity["seed"] = secrets.randbits(31) if seed is None else int(seed)
    store = ShardStore.beside(npz_path, identity)
    return store, store.prepare()


def _shared_store(npz_path: str, identity: dict, seed: Optional[int]):
    """Every rank: the store and its finished ranges, or the one-line reason it failed."""
    reply = None
    if dist_util.group_rank() == 0:
        try:
            reply = _open_store(npz_path, identity, seed)
        except (OSError, ValueError) as err:
            reply = f"cannot write the samples beside {npz_path}: {err}"
    reply = dist_util.broadcast_object(reply)
    if isinstance(reply, str):
        raise SamplingInputError(reply)
    return reply


def run_resumable(
    final_path: str,
    identity: dict[str, object],
    job: Any,
    num_items: int,
    batch_size: int,
    desc: str = "sample",
    on_chunk: Optional[Callable[[int, dict[str, np.ndarray]], None]] = None,
) -> ShardStore:
    """
    Compute items 0..N-1 with ``job`` into the shard folder of ``final_path`` for this
    ``identity``, skipping the shards an earlier run of the same command left there; on
    return (on every rank) every shard is written.

    :param job: a dataclass computing a chunk (a ComputeFn, e.g. ``sample_util.ImageJob``,
        ``bpd.BpdJob``) with a ``seed``: None means the earlier run's, else a fresh one.
    :param on_chunk: also called with every chunk computed now, on rank 0.
    :return: the store, whose identity holds the seed used.
    """
    store, done = _shared_store(final_path, identity, job.seed)
    job = dataclasses.replace(job, seed=store.identity["seed"])
    found = sum(stop - start for start, stop in done if start < num_items)
    logger.log(f"shards in {store.folder}: found {found} images, {num_items - found} to {desc}")

    def sink(start: int, arrays: dict[str, np.ndarray]) -> None:
        store.write(start, arrays)
        if on_chunk is not None:
            on_chunk(start, arrays)

    run_sharded(num_items, batch_size, job, sink, done, desc=desc)
    dist_util.barrier()
    return store


def assemble_samples(
    store: ShardStore, num_samples: int, npz_path: str, keep: int = 64
) -> tuple[Optional[np.ndarray], np.ndarray]:
    """
    Stream the shards' images (arr_0, uint8) and labels (arr_1, when they have them) into
    one .npz, a shard at a time.

    :param keep: how many of the first images to return (e.g. for a grid).
    :return: (the labels or None, the first ``keep`` images).
    """
    first: list[np.ndarray] = []
    labels = None
    with NpzWriter(npz_path) as out:
        shape = next(store.iter_chunks(num_samples, "arr_0")).shape[1:]
        with out.array("arr_0", (num_samples, *shape), np.uint8) as rows:
            for images in store.iter_chunks(num_samples, "arr_0"):
                rows.write(images)
                first.append(images[: max(keep - sum(map(len, first)), 0)])
        if "arr_1" in store.keys():
            labels = np.concatenate(list(store.iter_chunks(num_samples, "arr_1")))  # (N,) int64
            out.write("arr_1", labels)
    return labels, np.concatenate(first)
