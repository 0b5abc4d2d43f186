"""
Key/value and text logging for training runs.

A run logs text lines with ``log()`` and numbers with ``logkv()`` / ``logkv_mean()``;
``dumpkvs()`` writes one row of numbers to every output and starts a new row. Outputs
("formats"): ``stdout``, ``log`` (``log.txt``), ``csv`` (``progress.csv``), ``json``
(``progress.json``, one object per line) and ``tensorboard`` (a ``tb`` folder, needs the
``tensorboard`` package).

``configure()`` picks the log directory (``dir``, else ``$OPENAI_LOGDIR``, else a new
``openai-YYYY-MM-DD-HH-MM-SS-ffffff`` folder in the temp directory), where the training
loop also saves its checkpoints, and prints "Logging to <dir>". Only rank 0 writes: other
ranks get no outputs unless ``$OPENAI_LOG_FORMAT_MPI`` names some (their files then carry a
``-rankNNN`` suffix). Values logged with ``logkv_mean`` are averaged over all ranks when
written, so a logged loss is the loss of the whole batch, not of rank 0's share.

The functions below act on a current ``Logger``, created by ``configure()`` (or on first use
with the defaults); ``scoped_configure()`` swaps in another one for a ``with`` block.
"""

import contextlib
import csv
import datetime
import json
import os
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from typing import IO, Any, Optional

import torch

from . import dist_util
from .extras import install_command
from .io_util import is_local_path

DEBUG = 10
INFO = 20
WARN = 30
ERROR = 40
DISABLED = 50

FORMATS = ("stdout", "log", "csv", "json", "tensorboard")


# ----------------------------------------------------------------------------- outputs


class KVWriter:
    """An output that takes rows of key/value pairs."""

    def writekvs(self, kvs: dict[str, Any]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


class SeqWriter:
    """An output that takes lines of text."""

    def writeseq(self, seq: Sequence[Any]) -> None:
        raise NotImplementedError


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def _truncate(text: str, width: int = 30) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


class HumanOutputFormat(KVWriter, SeqWriter):
    """A readable table per row, and plain text lines, to a stream or a text file."""

    def __init__(self, file: "str | IO[str]"):
        if isinstance(file, str):
            self.file = open(file, "at")
            self._owns_file = True
        else:
            self.file = file
            self._owns_file = False

    def writekvs(self, kvs: dict[str, Any]) -> None:
        if not kvs:
            return
        rows = sorted((_truncate(k), _truncate(_format_value(v))) for k, v in kvs.items())
        key_width = max(len(k) for k, _ in rows)
        val_width = max(len(v) for _, v in rows)
        rule = "-" * (key_width + val_width + 7)
        lines = [rule]
        lines += [f"| {k.ljust(key_width)} | {v.ljust(val_width)} |" for k, v in rows]
        lines.append(rule)
        self.file.write("\n".join(lines) + "\n")
        self.file.flush()

    def writeseq(self, seq: Sequence[Any]) -> None:
        self.file.write(" ".join(str(s) for s in seq) + "\n")
        self.file.flush()

    def close(self) -> None:
        if self._owns_file:
            self.file.close()


class JSONOutputFormat(KVWriter):
    """One JSON object per row (numbers as plain floats / ints)."""

    def __init__(self, filename: str):
        self.file = open(filename, "at")

    def writekvs(self, kvs: dict[str, Any]) -> None:
        row = {k: _plain(v) for k, v in sorted(kvs.items())}
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


class CSVOutputFormat(KVWriter):
    """
    A CSV table with a header row, continued when the file exists (a resumed run). A key
    that first appears in a later row adds a column: the file is rewritten with the wider
    header and blanks in the older rows.
    """

    def __init__(self, filename: str):
        self.filename = filename
        self.keys: list[str] = []
        if os.path.exists(filename):
            with open(filename, newline="") as f:
                self.keys = next(csv.reader(f), [])
        else:
            open(filename, "wt").close()

    def writekvs(self, kvs: dict[str, Any]) -> None:
        new_keys = sorted(k for k in kvs if k not in self.keys)
        if new_keys:
            self._add_columns(new_keys)
        with open(self.filename, "at", newline="") as f:
            csv.DictWriter(f, fieldnames=self.keys).writerow({k: _plain(v) for k, v in kvs.items()})

    def _add_columns(self, new_keys: list[str]) -> None:
        with open(self.filename, newline="") as f:
            old_rows = list(csv.DictReader(f))
        self.keys = self.keys + new_keys
        with open(self.filename, "wt", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.keys)
            writer.writeheader()
            writer.writerows(old_rows)


class TensorBoardOutputFormat(KVWriter):
    """Scalars for TensorBoard, one step per row (needs the ``tensorboard`` package)."""

    def __init__(self, directory: str):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise ValueError(
                "the 'tensorboard' log format needs the tensorboard package "
                f"(`{install_command('tensorboard')}`, or `pip install tensorboard`); or leave "
                "it out of format_strs / OPENAI_LOG_FORMAT"
            ) from exc
        self.writer = SummaryWriter(log_dir=directory)
        self.step = 0

    def writekvs(self, kvs: dict[str, Any]) -> None:
        for key, value in kvs.items():
            value = _plain(value)
            if isinstance(value, (int, float)):
                self.writer.add_scalar(key, value, self.step)
        self.writer.flush()
        self.step += 1

    def close(self) -> None:
        self.writer.close()


def _plain(value: Any) -> Any:
    """Tensors and numpy scalars to Python numbers, for files."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    if hasattr(value, "item") and getattr(value, "shape", None) == ():
        return value.item()
    return value


def make_output_format(format: str, ev_dir: str, log_suffix: str = "") -> KVWriter:
    """
    :param format: one of ``FORMATS``.
    :param ev_dir: the log directory.
    :param log_suffix: added to file names (e.g. "-rank001").
    :return: the output.
    """
    os.makedirs(ev_dir, exist_ok=True)
    if format == "stdout":
        return HumanOutputFormat(sys.stdout)
    if format == "log":
        return HumanOutputFormat(os.path.join(ev_dir, f"log{log_suffix}.txt"))
    if format == "json":
        return JSONOutputFormat(os.path.join(ev_dir, f"progress{log_suffix}.json"))
    if format == "csv":
        return CSVOutputFormat(os.path.join(ev_dir, f"progress{log_suffix}.csv"))
    if format == "tensorboard":
        return TensorBoardOutputFormat(os.path.join(ev_dir, f"tb{log_suffix}"))
    raise ValueError(f"unknown log format {format!r}; valid formats: {', '.join(FORMATS)}")


# ----------------------------------------------------------------------------- logger


class Logger:
    """
    A log directory, its outputs, and the row of key/values being collected.

    :param dir: the log directory (None: no files, only a stream output makes sense).
    :param output_formats: where rows and text lines go.
    :param comm: optional mpi4py communicator to average ``logkv_mean`` values over;
        by default the torch.distributed group is used when there is one.
    """

    def __init__(self, dir: Optional[str], output_formats: list[KVWriter], comm: Any = None):
        self.dir = dir
        self.output_formats = output_formats
        self.comm = comm
        self.level = INFO
        self.name2val: dict[str, Any] = {}
        self.name2cnt: dict[str, int] = {}

    def logkv(self, key: str, val: Any) -> None:
        self.name2val[key] = val
        self.name2cnt.pop(key, None)

    def logkv_mean(self, key: str, val: Any) -> None:
        val = float(_plain(val))
        count = self.name2cnt.get(key, 0)
        old = self.name2val.get(key, 0.0) if count else 0.0
        self.name2val[key] = old + (val - old) / (count + 1)
        self.name2cnt[key] = count + 1

    def dumpkvs(self) -> dict[str, Any]:
        """Write the current row (means averaged over ranks) and start a new one."""
        row = dict(self.name2val)
        row.update(self._global_means())
        for fmt in self.output_formats:
            fmt.writekvs(row)
        self.name2val.clear()
        self.name2cnt.clear()
        return row

    def _global_means(self) -> dict[str, float]:
        """Means of ``logkv_mean`` values over all ranks, weighted by their counts."""
        local = {k: (self.name2val[k], n) for k, n in self.name2cnt.items()}
        if self.comm is not None:
            gathered = self.comm.allgather(local)
        elif dist_util.group_size() > 1:
            gathered = dist_util.all_gather_object(local)
        else:
            return {k: v for k, (v, _) in local.items()}
        return _weighted_means(gathered)

    def log(self, *args: Any, level: int = INFO) -> None:
        if self.level <= level:
            for fmt in self.output_formats:
                if isinstance(fmt, SeqWriter):
                    fmt.writeseq(args)

    def set_level(self, level: int) -> None:
        self.level = level

    def set_comm(self, comm: Any) -> None:
        self.comm = comm

    def get_dir(self) -> Optional[str]:
        return self.dir

    def close(self) -> None:
        for fmt in self.output_formats:
            fmt.close()


def _weighted_means(gathered: Sequence[dict[str, tuple[float, int]]]) -> dict[str, float]:
    """:return: per key, the mean of the ranks' (mean, count) pairs weighted by their counts."""
    totals: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    for rank_means in gathered:
        for key, (mean, count) in rank_means.items():
            totals[key][0] += float(mean) * count
            totals[key][1] += count
    return {k: total / count for k, (total, count) in totals.items()}


def mpi_weighted_mean(comm: Any, local_name2valcount: dict[str, tuple[float, int]]) -> dict:
    """
    Average (value, count) pairs over the ranks of an mpi4py communicator, weighted by count.

    :return: key -> mean on rank 0, {} on the other ranks.
    """
    gathered = comm.gather(local_name2valcount)
    return _weighted_means(gathered) if comm.rank == 0 else {}


def get_rank_without_mpi_import() -> int:
    """:return: this process's rank, from the launcher's environment (mpi4py is not imported)."""
    return dist_util.get_rank()


_current: Optional[Logger] = None


def get_current() -> Logger:
    """:return: the current logger (configured with the defaults on first use)."""
    if _current is None:
        configure()
    return _current


def _default_dir() -> str:
    """$OPENAI_LOGDIR, else a new timestamped folder in the temp dir (rank 0's name)."""
    env_dir = os.environ.get("OPENAI_LOGDIR")
    if env_dir:
        return env_dir
    stamp = datetime.datetime.now().strftime("openai-%Y-%m-%d-%H-%M-%S-%f")
    # Every rank must agree on where rank 0 saves checkpoints.
    return dist_util.broadcast_object(os.path.join(tempfile.gettempdir(), stamp))


def configure(
    dir: Optional[str] = None,
    format_strs: Optional[list[str]] = None,
    comm: Any = None,
    log_suffix: str = "",
) -> None:
    """
    Start logging to a directory; closes the previous logger's files.

    :param dir: log directory (default: $OPENAI_LOGDIR, else a new timestamped temp folder).
    :param format_strs: outputs, from ``FORMATS``; default: $OPENAI_LOG_FORMAT or
        "stdout,log,csv" on rank 0, $OPENAI_LOG_FORMAT_MPI or nothing on other ranks.
    :param comm: mpi4py communicator to average ``logkv_mean`` values over (default: the
        torch.distributed group, if any).
    :param log_suffix: added to file names; non-zero ranks also add "-rankNNN".
    """
    global _current
    dir = os.path.expanduser(dir or _default_dir())
    rank = dist_util.get_rank()
    if rank > 0:
        log_suffix = f"{log_suffix}-rank{rank:03d}"
    if format_strs is None:
        if rank == 0:
            format_strs = os.environ.get("OPENAI_LOG_FORMAT", "stdout,log,csv").split(",")
        else:
            format_strs = os.environ.get("OPENAI_LOG_FORMAT_MPI", "").split(",")
    format_strs = [f.strip() for f in format_strs if f and f.strip()]
    if not is_local_path(dir) and any(f != "stdout" for f in format_strs):
        raise ValueError(
            f"log directory {dir!r} is not on the local file system; the log, csv, json "
            "and tensorboard formats need a local directory (set OPENAI_LOGDIR to one)"
        )
    if is_local_path(dir):
        os.makedirs(dir, exist_ok=True)
    outputs = [make_output_format(f, dir, log_suffix) for f in format_strs]
    if _current is not None:
        _current.close()
    _current = Logger(dir=dir, output_formats=outputs, comm=comm)
    if outputs:
        log(f"Logging to {dir}")


def reset() -> None:
    """Close the current logger; the next call configures a fresh default one."""
    global _current
    if _current is not None:
        _current.close()
        _current = None


@contextlib.contextmanager
def scoped_configure(
    dir: Optional[str] = None, format_strs: Optional[list[str]] = None, comm: Any = None
) -> Iterator[None]:
    """Log to another directory inside a ``with`` block, then go back to the previous logger."""
    global _current
    previous = _current
    _current = None
    try:
        configure(dir=dir, format_strs=format_strs, comm=comm)
        yield
    finally:
        if _current is not None:
            _current.close()
        _current = previous


# ----------------------------------------------------------------------------- module API


def logkv(key: str, val: Any) -> None:
    """Set a value for this row; a later call with the same key replaces it."""
    get_current().logkv(key, val)


def logkv_mean(key: str, val: Any) -> None:
    """Add a value to this row's running mean for ``key`` (averaged over ranks on dump)."""
    get_current().logkv_mean(key, val)


def logkvs(d: dict[str, Any]) -> None:
    """``logkv`` for every item of ``d``."""
    for key, val in d.items():
        logkv(key, val)


def dumpkvs() -> dict[str, Any]:
    """
    Write the current row to every output and start a new one. With several ranks, every
    rank must call this (the means are averaged over ranks).

    :return: the row written.
    """
    return get_current().dumpkvs()


def getkvs() -> dict[str, Any]:
    """:return: the row collected so far (this rank's values)."""
    return get_current().name2val


def log(*args: Any, level: int = INFO) -> None:
    """Write a line of text (its arguments joined by spaces) to the text outputs."""
    get_current().log(*args, level=level)


def debug(*args: Any) -> None:
    log(*args, level=DEBUG)


def info(*args: Any) -> None:
    log(*args, level=INFO)


def warn(*args: Any) -> None:
    log(*args, level=WARN)


def error(*args: Any) -> None:
    log(*args, level=ERROR)


def set_level(level: int) -> None:
    """Only lines at ``level`` or above are written (DEBUG, INFO, WARN, ERROR, DISABLED)."""
    get_current().set_level(level)


def set_comm(comm: Any) -> None:
    """Average ``logkv_mean`` values over this mpi4py communicator (None: torch.distributed)."""
    get_current().set_comm(comm)


def get_dir() -> Optional[str]:
    """:return: the log directory, where checkpoints are saved too."""
    return get_current().get_dir()


@contextlib.contextmanager
def profile_kv(scopename: str) -> Iterator[None]:
    """Add the time spent in a ``with`` block to the row key ``wait_<scopename>``."""
    key = "wait_" + scopename
    start = time.time()
    try:
        yield
    finally:
        current = get_current()
        current.name2val[key] = current.name2val.get(key, 0.0) + time.time() - start


def profile(name: str) -> Callable:
    """A decorator timing every call of a function under ``profile_kv(name)``."""
    return profile_kv(name)  # a context manager made by contextlib is a decorator too


record_tabular = logkv
dump_tabular = dumpkvs


class ProgressLine:
    """
    A training progress line: steps and images per second since the last line, the time
    elapsed and the time left.
    """

    def __init__(self, start_step: int, last_step: Optional[int], global_batch: int):
        self.last_step, self.global_batch = last_step, global_batch
        self.started = self.mark = time.perf_counter()
        self.start_step = self.mark_step = start_step

    def line(self, steps_done: int) -> str:
        """:param steps_done: the steps taken so far, those of a resumed run included."""
        now = time.perf_counter()
        rate = (steps_done - self.mark_step) / max(now - self.mark, 1e-9)
        self.mark, self.mark_step = now, steps_done
        text = f"step {steps_done}"
        if self.last_step:
            text += f" of {self.last_step} ({100 * steps_done / self.last_step:.0f}%)"
        text += f": {rate:.3g} steps/s, "
        text += f"{rate * self.global_batch:.3g} images/s, elapsed {_clock(now - self.started)}"
        if self.last_step:
            overall = (steps_done - self.start_step) / max(now - self.started, 1e-9)
            text += f", ETA {_clock((self.last_step - steps_done) / max(overall, 1e-9))}"
        return text


def _clock(seconds: float) -> str:
    """:return: seconds as H:MM:SS."""
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}"
