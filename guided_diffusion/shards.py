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

A run holds the folder's ``lock`` while it writes (a second run of the same command is
refused; the lock of a process that no longer runs is taken over); a resumed run verifies
the shards it finds (zip structure, CRC-32 of every array, row counts) and sets a damaged
one aside as ``<name>.damaged`` to compute its items again. Running out of memory on a
chunk ends the run with the batch size that would fit (``out_of_memory_message``).
"""

import argparse
import bisect
import collections
import contextlib
import ctypes
import dataclasses
import gc
import hashlib
import json
import os
import re
import secrets
import shutil
import socket
import struct
import sys
import zipfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Optional

import numpy as np
import torch
from tqdm.auto import tqdm

from . import dist_util, logger
from .io_util import atomic_write, hash_file
from .npz_batch import NpzArrayReader, NpzWriter, npz_keys
from .script_errors import USER_ERRORS, SamplingInputError, describe

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


def plan_chunks(ranges: Sequence[tuple[int, int]], batch_size: int) -> "ChunkPlan":
    """:return: (start, count) chunks of at most ``batch_size`` covering ``ranges`` in order."""
    return ChunkPlan(ranges, batch_size)


class ChunkPlan(Sequence):
    """
    The (start, count) chunks of at most ``batch_size`` covering ``ranges`` in order, as a
    sequence computed on demand: its memory does not grow with the number of items.
    """

    def __init__(self, ranges: Sequence[tuple[int, int]], batch_size: int):
        self.ranges = [(a, b) for a, b in ranges if a < b]
        self.batch_size = batch_size
        self._first = [0]  # the index of each range's first chunk, then the total
        for start, stop in self.ranges:
            self._first.append(self._first[-1] + -(-(stop - start) // batch_size))

    def __len__(self) -> int:
        return self._first[-1]

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        which = bisect.bisect_right(self._first, index) - 1
        first, stop = self.ranges[which]
        start = first + (index - self._first[which]) * self.batch_size
        return start, min(self.batch_size, stop - start)

    def total(self) -> int:
        """:return: the number of items the chunks cover."""
        return sum(stop - start for start, stop in self.ranges)


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

    A user error of ``compute`` on any rank (a bad value or file, or running out of memory:
    see ``out_of_memory_message``) ends the run on every rank with that rank's message.

    :param num_items: N.
    :param batch_size: the most items per ``compute`` call.
    :param compute: compute(start, count) -> {name: [count x ...] array}; it may have a
        ``memory_probe(start, count)`` method, a cheap stand-in for estimating what fits.
    :param sink: sink(start, arrays), called on rank 0 only.
    :param done: [start, stop) ranges to skip (computed by an earlier run).
    :param desc: the progress bar's label.
    :return: the number of items computed.
    :raises ShardError: ``compute`` failed on some rank (the message says why).
    """
    rank, world = dist_util.group_rank(), dist_util.group_size()
    chunks = plan_chunks(missing_ranges(done, num_items), batch_size)
    total = chunks.total()
    bar = tqdm(total=total, unit="img", desc=desc, disable=rank != 0, file=sys.stderr)
    for first in range(0, len(chunks), world):
        mine = chunks[first + rank] if first + rank < len(chunks) else None
        result = None if mine is None else _compute(compute, *mine, batch_size)
        failure = _deliver(dist_util.all_gather_object(result), sink if rank == 0 else None)
        result = None  # nothing keeps a finished round while the next one is computed
        if failure is not None:
            bar.close()
            raise ShardError(failure.message)
        bar.update(sum(count for _, count in chunks[first : first + world]))
    bar.close()
    return total


def _deliver(gathered: list, sink: Optional[SinkFn]) -> Optional["ChunkFailure"]:
    """Hand a round's chunks to ``sink`` (None: not rank 0); :return: a rank's failure, if any."""
    for item in gathered:
        if isinstance(item, ChunkFailure):
            return item
    if sink is not None:
        for item in gathered:
            if item is not None:
                sink(*item)
    return None


@dataclasses.dataclass
class ChunkFailure:
    """What a rank sends instead of its chunk when computing it failed on a user error."""

    message: str


def _compute(compute: ComputeFn, start: int, count: int, batch_size: int):
    """:return: (start, compute(start, count)), or a ChunkFailure for a user error."""
    try:
        return start, compute(start, count)
    except USER_ERRORS as err:
        return ChunkFailure(describe(err))
    except Exception as err:  # noqa: BLE001 -- only running out of memory is kept
        if not is_out_of_memory(err):
            raise
    # out of the except block: the failed attempt's frames and tensors are freed
    return ChunkFailure(out_of_memory_message(compute, start, count, batch_size))


def is_out_of_memory(err: BaseException) -> bool:
    """:return: True for Python's MemoryError and PyTorch's out-of-memory errors (CPU or GPU)."""
    if isinstance(err, MemoryError):
        return True
    if isinstance(err, getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)):
        return True
    text = str(err)
    return isinstance(err, RuntimeError) and any(
        sign in text.lower() for sign in _OUT_OF_MEMORY_SIGNS
    )


# How PyTorch's CPU allocator, CUDA and oneDNN (which fails to build a convolution when it
# cannot allocate its workspace) word running out of memory.
_OUT_OF_MEMORY_SIGNS = ("can't allocate memory", "out of memory", "could not create a primitive")


def _free_memory() -> None:
    """Free what a failed attempt left: garbage, PyTorch's GPU cache, the C heap's free memory."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).malloc_trim(0)  # glibc: hand free heap pages back to the system


def largest_fitting(attempt: Callable[[int], object], failed: int, refine: int = 3) -> int:
    """
    The largest count below ``failed`` for which ``attempt(count)`` does not run out of
    memory: halving from ``failed``, then ``refine`` bisection steps.

    :return: that count, or 0 when not even 1 fits.
    """

    def fits(n: int) -> bool:
        try:
            attempt(n)
            return True
        except Exception as err:  # noqa: BLE001
            if not is_out_of_memory(err):
                raise
        _free_memory()
        return False

    high, low = failed, failed // 2
    while low >= 1 and not fits(low):
        high, low = low, low // 2
    if low < 1:
        return 0
    for _ in range(refine):
        if high - low <= 1:
            break
        middle = (low + high) // 2
        low, high = (middle, high) if fits(middle) else (low, middle)
    return low


def out_of_memory_message(compute: ComputeFn, start: int, count: int, batch_size: int) -> str:
    """
    The one line for running out of memory on a chunk of ``count`` items, with an estimate
    of what fits: the largest count for which ``compute.memory_probe(start, n)`` (one model
    evaluation, when the job has it, on a quarter more images: room for what a sampler
    keeps besides, and for the allocator's own waste)
    or else ``compute(start, n)`` itself runs.
    """
    _free_memory()
    probe = getattr(compute, "memory_probe", None)
    if probe is not None:
        fit = largest_fitting(lambda n: probe(start, n + n // 4), count)
    else:
        fit = largest_fitting(lambda n: compute(start, n), count, refine=2)
    _free_memory()
    device = getattr(compute, "device", None) or dist_util.dev()
    what = f"out of memory computing {count} images at once on {device} (--batch_size {batch_size})"
    if fit == 0:
        return f"{what}: not even one image fits in the memory this process may use"
    return f"{what}: about {fit} fit (an estimate); rerun with --batch_size {fit}"


# ---------------------------------------------------------------- the shard folder


class ShardError(SamplingInputError):
    """A shard folder that cannot be used as it is, or a chunk that failed: the message says
    what to do."""


class ShardStore:
    """
    The shards of one run, in ``folder``, whose ``manifest.json`` holds the run's identity.

    A run holds the folder's ``lock`` (``acquire``) while it writes there, so that a second
    run of the same command is refused instead of mixing its shards in; shards found when a
    run resumes are verified first (``set_aside_damaged``).

    :param folder: the shard folder (see ``beside``).
    :param identity: everything that determines the items (JSON-able).
    """

    def __init__(self, folder: str, identity: dict[str, Any]):
        self.folder = folder
        self.identity = identity
        self._locked = False

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
        :raises ShardError: the folder holds another run's manifest, or one that cannot be read.
        """
        os.makedirs(self.folder, exist_ok=True)
        path = os.path.join(self.folder, MANIFEST)
        if os.path.exists(path):
            try:
                with open(path) as f:
                    saved = json.load(f)
            except ValueError as err:  # not JSON, or not text
                raise ShardError(
                    f"{path} is not a valid manifest ({err}): delete it to resume with the "
                    f"shards beside it (the folder's name already matches this run), or delete "
                    f"the folder {self.folder} to start over"
                ) from None
            if saved != json.loads(json.dumps(self.identity, default=str)):
                raise ShardError(
                    f"{self.folder} holds shards of a different run (see its {MANIFEST}); "
                    "move it away or delete it"
                )
        else:
            with atomic_write(path, "w") as f:
                json.dump(self.identity, f, indent=1, sort_keys=True, default=str)
        return self.done()

    # ------------------------------------------------------------ the lock

    def acquire(self) -> None:
        """
        Take the folder's lock (a file holding this process's pid, host and start time),
        taking over the lock of a process of this host that no longer runs.

        :raises ShardError: another run holds it.
        """
        path = os.path.join(self.folder, LOCK)
        me = _this_process()
        for _ in range(3):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = _read_lock(path)
                if holder is not None and _runs(holder):
                    raise ShardError(
                        f"another run (pid {holder.get('pid')} on {holder.get('host')}) is "
                        f"writing the same shards in {self.folder}: wait for it to finish (it "
                        f"writes the same file), or stop it and rerun; if no such run is left, "
                        f"delete {path}"
                    ) from None
                logger.log(f"taking over {path}, left by a run that no longer runs")
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self._locked = True
            return
        raise ShardError(f"cannot take the lock {path}: other runs keep taking it; rerun")

    def release(self) -> None:
        """Give the lock back (when this process holds it)."""
        if self._locked:
            self._locked = False
            path = os.path.join(self.folder, LOCK)
            if _read_lock(path) == _this_process():
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)

    # ------------------------------------------------------------ the shards

    def candidates(self) -> list[tuple[int, int]]:
        """:return: the [start, stop) ranges of every file named like a shard, sorted."""
        found = []
        for name in os.listdir(self.folder):
            match = _SHARD_NAME.match(name)
            if match and int(match.group(2)) > int(match.group(1)):
                found.append((int(match.group(1)), int(match.group(2))))
        return sorted(found)

    def done(self) -> list[tuple[int, int]]:
        """:return: the disjoint, sorted [start, stop) ranges of the complete shards present."""
        ranges, position = [], -1
        for start, stop in self.candidates():
            if start >= position:  # skip any overlapping leftover
                ranges.append((start, stop))
                position = stop
        return ranges

    def set_aside_damaged(self) -> list[str]:
        """
        Verify every shard (its zip structure, every member's CRC-32, rows as many as its
        name says, the same arrays as the other shards); rename each bad one to
        ``<name>.damaged`` (so that its items are computed again) with a log line.

        :return: the new names of the shards set aside.
        """
        layouts = {r: _shard_layout(self.path(*r), r[1] - r[0]) for r in self.candidates()}
        usual = collections.Counter(v for v in layouts.values() if not isinstance(v, str))
        common = usual.most_common(1)[0][0] if usual else None
        moved = []
        for (start, stop), layout in layouts.items():
            if isinstance(layout, str) or layout != common:
                problem = layout if isinstance(layout, str) else "its arrays differ from the other shards'"
                moved.append(self._set_aside(self.path(start, stop), problem))
        return moved

    def _set_aside(self, path: str, problem: str) -> str:
        target, n = path + ".damaged", 1
        while os.path.exists(target):
            target, n = f"{path}.damaged-{n}", n + 1
        os.replace(path, target)
        logger.log(
            f"shard {path} is damaged ({problem}): set aside as {os.path.basename(target)}; "
            "its images are computed again"
        )
        return target

    def path(self, start: int, stop: int) -> str:
        return os.path.join(self.folder, f"{start:09d}-{stop:09d}.npz")

    def write(self, start: int, arrays: dict[str, np.ndarray]) -> None:
        """Save one chunk (items start.. start + len - 1) atomically."""
        count = len(next(iter(arrays.values())))
        with NpzWriter(self.path(start, start + count)) as out:
            for key, value in arrays.items():
                out.write(key, value)

    def covering(self, num_items: int) -> list[tuple[int, int]]:
        """
        :return: the ranges of the shards covering 0..N-1, in order (the last one may reach
            past N - 1, when an earlier run of the command made more items).
        :raises ShardError: they do not cover 0..N-1.
        """
        ranges = [r for r in self.done() if r[0] < num_items]
        if not ranges or missing_ranges(ranges, num_items):
            raise ShardError(
                f"{self.folder}: the shards do not cover items 0..{num_items - 1}; rerun the "
                "same command to compute the missing ones"
            )
        return ranges

    def iter_chunks(self, num_items: int, key: str) -> Iterator[np.ndarray]:
        """
        Stream one array of the shards covering 0..N-1, in item order, one shard at a time.

        :raises ShardError: the shards do not cover 0..N-1 exactly, or one cannot be read.
        """
        for start, stop in self.covering(num_items):
            yield self.read(start, stop, key, num_items)

    def read(self, start: int, stop: int, key: str, num_items: Optional[int] = None) -> np.ndarray:
        """
        :param num_items: N: keep only the rows of items below N.
        :return: one array of the shard of items start..stop-1.
        :raises ShardError: the shard cannot be read (with what to do).
        """
        path = self.path(start, stop)
        rows = stop - start if num_items is None else min(stop, num_items) - start
        try:
            with NpzArrayReader(path, key) as reader:
                return reader.read(rows)
        except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as err:
            raise ShardError(
                f"shard {path} is damaged ({describe(err)}): rerun the same command, which "
                "sets it aside and computes its images again"
            ) from None

    def first_shape(self, num_items: int, key: str) -> tuple[int, ...]:
        """:return: the shape of one item of ``key``, read from the first shard's header."""
        start, stop = self.covering(num_items)[0]
        try:
            with NpzArrayReader(self.path(start, stop), key) as reader:
                return tuple(reader.shape[1:])
        except (ValueError, OSError, zipfile.BadZipFile) as err:
            raise ShardError(
                f"shard {self.path(start, stop)} is damaged ({describe(err)}): rerun the same "
                "command, which sets it aside and computes its images again"
            ) from None

    def keys(self) -> list[str]:
        """:return: the array names of the first shard."""
        start, stop = self.done()[0]
        return npz_keys(self.path(start, stop))

    def remove(self) -> None:
        """
        Delete the folder and everything in it, except shards set aside as damaged (kept
        for inspection, with a log line).
        """
        self.release()
        if not os.path.isdir(self.folder):
            return
        kept = [n for n in os.listdir(self.folder) if ".npz.damaged" in n]
        if not kept:
            shutil.rmtree(self.folder, ignore_errors=True)
            return
        for name in set(os.listdir(self.folder)) - set(kept):
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(self.folder, name))
        logger.log(f"kept {len(kept)} damaged shard(s) in {self.folder}: delete it when done")


LOCK = "lock"


def _shard_layout(path: str, count: int):
    """
    :return: a shard's layout, {name: (item shape, dtype)}, or a string saying what is wrong
        with it (unreadable, a failed CRC-32, not ``count`` rows).
    """
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()  # reads every member, checking its CRC-32
            names = archive.namelist()
        if bad is not None:
            return f"{bad} fails its CRC-32 check"
        layout = {}
        for name in names:
            if not name.endswith(".npy"):
                return f"it holds {name}, not an array"
            with NpzArrayReader(path, name[:-4]) as reader:
                if reader.shape[:1] != (count,):
                    return f"{name[:-4]} holds {list(reader.shape)}, not {count} rows"
                layout[name[:-4]] = (tuple(reader.shape[1:]), str(reader.dtype))
        return tuple(sorted(layout.items())) if layout else "it holds no arrays"
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error, struct.error,
            NotImplementedError, KeyError) as err:  # fmt: skip
        return describe(err) if str(err) else type(err).__name__


def _process_start(pid: int) -> Optional[str]:
    """:return: when process ``pid`` started (clock ticks since boot, Linux), or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _this_process() -> dict[str, Any]:
    pid = os.getpid()
    return {"pid": pid, "host": socket.gethostname(), "start": _process_start(pid)}


def _read_lock(path: str) -> Optional[dict[str, Any]]:
    try:
        with open(path) as f:
            holder = json.load(f)
        return holder if isinstance(holder, dict) else {}
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}  # half-written or damaged: held by nobody known


def _runs(holder: dict[str, Any]) -> bool:
    """:return: whether the process of a lock file may still run (True when unknown)."""
    pid = holder.get("pid")
    if not isinstance(pid, int):
        return False
    if holder.get("host") != socket.gethostname():
        return True  # another machine's process: cannot tell
    if pid == os.getpid():
        return False  # this process: an earlier run in it that ended without releasing
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process
    started = holder.get("start")
    return started is None or started == _process_start(pid)  # not a reused pid


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
    os.makedirs(store.folder, exist_ok=True)
    store.acquire()
    try:
        store.prepare()
        store.set_aside_damaged()
        return store, store.done()
    except BaseException:
        store.release()
        raise


def _shared_store(npz_path: str, identity: dict, seed: Optional[int]):
    """Every rank: the store and its finished ranges, or the one-line reason it failed."""
    reply = None
    if dist_util.group_rank() == 0:
        try:
            reply = _open_store(npz_path, identity, seed)
        except ShardError as err:
            reply = str(err)
        except (OSError, ValueError) as err:
            reply = f"cannot write the samples beside {npz_path}: {describe(err)}"
    reply = dist_util.broadcast_object(reply)
    if isinstance(reply, str):
        raise ShardError(reply)
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
    ``identity``, skipping the (verified) shards an earlier run of the same command left
    there; on return (on every rank) every shard is written, and rank 0 holds the folder's
    lock until ``store.remove()`` or ``store.release()``.

    :param job: a dataclass computing a chunk (a ComputeFn, e.g. ``sample_util.ImageJob``,
        ``bpd.BpdJob``) with a ``seed``: None means the earlier run's, else a fresh one.
    :param on_chunk: also called with every chunk computed now, on rank 0.
    :return: the store, whose identity holds the seed used.
    """
    store, done = _shared_store(final_path, identity, job.seed)
    job = dataclasses.replace(job, seed=store.identity["seed"])
    found = sum(min(stop, num_items) - start for start, stop in done if start < num_items)
    logger.log(f"shards in {store.folder}: found {found} images, {num_items - found} to {desc}")

    def sink(start: int, arrays: dict[str, np.ndarray]) -> None:
        store.write(start, arrays)
        if on_chunk is not None:
            on_chunk(start, arrays)

    try:
        run_sharded(num_items, batch_size, job, sink, done, desc=desc)
        dist_util.barrier()
    except BaseException:
        store.release()
        raise
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
    kept, labels = 0, None
    with NpzWriter(npz_path) as out:
        shape = store.first_shape(num_samples, "arr_0")
        with out.array("arr_0", (num_samples, *shape), np.uint8) as rows:
            for images in store.iter_chunks(num_samples, "arr_0"):
                rows.write(images)
                if kept < keep:  # a copy: a view would keep the whole shard's pixels alive
                    first.append(images[: keep - kept].copy())
                    kept += len(first[-1])
                del images  # one shard's pixels at a time
        if "arr_1" in store.keys():
            labels = np.concatenate(list(store.iter_chunks(num_samples, "arr_1")))  # (N,) int64
            out.write("arr_1", labels)
    return labels, np.concatenate(first)
