"""
Process groups and devices for single-process, ``torchrun`` and ``mpiexec`` runs.

``torch.distributed`` carries all communication. ``setup_dist()`` finds out how the
process was launched and joins the matching process group:

- ``torchrun`` (or any launcher that sets ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and
  ``MASTER_PORT``): the ``env://`` rendezvous.
- ``mpiexec`` / ``mpirun`` / ``srun --mpi`` (MPICH, Open MPI, Intel MPI, MVAPICH, PMIx):
  rank, size and local rank come from mpi4py; rank 0 opens a TCP store on a free port and
  sends its address to the others over MPI.
- Slurm's ``srun`` without MPI (or without mpi4py): rank, size and local rank come from
  ``SLURM_PROCID``, ``SLURM_STEP_NUM_TASKS`` and ``SLURM_LOCALID`` (srun sets them for every
  task of a job step; a batch script's own shell has no ``SLURM_STEP_NUM_TASKS``, so a plain
  ``python`` there runs alone). Rank 0 opens a TCP store at ``MASTER_ADDR`` (default: the
  first host of ``SLURM_STEP_NODELIST``, where srun starts task 0; 127.0.0.1 when the step
  has one node) and ``MASTER_PORT`` (default: 20000 + (97 SLURM_JOB_ID + SLURM_STEP_ID) mod
  20000, the same for every task of a step and different for the steps of a job), and the
  others connect to it (``_slurm_rendezvous``). docs/slurm.md has ``sbatch`` examples.
- a plain ``python`` run: a one-process group (nothing to talk to, but code that calls
  ``torch.distributed`` directly after ``setup_dist()``, as the original scripts do,
  keeps working).

The GPU is chosen from the local rank (the rank among processes on the same node), so any
number of GPUs per node works. NCCL is used when CUDA is available, gloo otherwise.

The helpers ``get_rank()``, ``get_world_size()``, ``get_local_rank()``, ``barrier()`` and
``sync_params()`` work with or without ``setup_dist()``, and so do the collectives every
other module uses (``all_gather_rows``, ``all_gather_ragged``, ``all_gather_object``,
``broadcast_object``, ``any_rank``): alone they return their input without communicating.
"""

import datetime
import importlib.util
import os
import re
import socket
import sys
from collections.abc import Iterable
from typing import Any, Optional

import torch
import torch.distributed as dist

from .checkpoint_util import read_checkpoint
from .script_errors import at_program_end

# Environment variables that MPI launchers set for every process: (rank, size, local rank).
_MPI_ENV = (
    ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK"),  # Open MPI
    ("PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID"),  # MPICH (hydra), Intel MPI
    ("MV2_COMM_WORLD_RANK", "MV2_COMM_WORLD_SIZE", "MV2_COMM_WORLD_LOCAL_RANK"),  # MVAPICH
    ("PMIX_RANK", "PMIX_SIZE", "PMIX_LOCAL_RANK"),  # PMIx (e.g. srun --mpi=pmix)
)

# How long ranks wait for each other while joining a group and in collectives.
_TIMEOUT = datetime.timedelta(minutes=30)

# Local rank found by setup_dist() (None until then: read from the environment instead).
_local_rank: Optional[int] = None
# Launcher variables setup_dist() set itself under MPI (cleanup() removes them again).
_variables_set: list[str] = []


def _env_int(name: str) -> Optional[int]:
    value = os.environ.get(name)
    return int(value) if value not in (None, "") else None


def _launched_by_torchrun() -> bool:
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"))


def _mpi_env() -> Optional[tuple[int, Optional[int], Optional[int]]]:
    """(rank, size, local rank) from an MPI launcher's environment, or None outside MPI."""
    for rank_var, size_var, local_var in _MPI_ENV:
        rank = _env_int(rank_var)
        if rank is not None:
            return rank, _env_int(size_var), _env_int(local_var)
    return None


def _slurm_env() -> Optional[tuple[int, int, int]]:
    """(rank, size, local rank) of a task that ``srun`` started, or None outside a job step."""
    rank, size = _env_int("SLURM_PROCID"), _env_int("SLURM_STEP_NUM_TASKS")
    if rank is None or size is None:
        return None
    return rank, size, _env_int("SLURM_LOCALID") or 0


def _use_mpi() -> bool:
    """Whether to join through MPI: an MPI launcher's environment (or mpi4py already
    imported), unless srun started the task and mpi4py is not installed."""
    if "mpi4py.MPI" in sys.modules:
        return True
    if _mpi_env() is None:
        return False
    return _slurm_env() is None or importlib.util.find_spec("mpi4py") is not None


def _launcher_value(torchrun_var: Optional[str], mpi_field: int, default: int) -> int:
    """
    A value of the launcher's environment: torchrun's variable ``torchrun_var`` when it is
    set, else field ``mpi_field`` (0 rank, 1 size, 2 local rank) of ``_mpi_env()`` when an
    MPI launcher gives it, else of ``_slurm_env()`` under srun, else ``default``.
    """
    if torchrun_var is not None and torchrun_var in os.environ:
        return int(os.environ[torchrun_var])
    for launcher in (_mpi_env() if _use_mpi() else None, _slurm_env()):
        if launcher is not None and launcher[mpi_field] is not None:
            return launcher[mpi_field]
    return default


def setup_dist(backend: Optional[str] = None) -> None:
    """
    Join the process group for however this process was launched (see the module
    docstring) and select this process's GPU. Calling it again does nothing.

    :param backend: "nccl" or "gloo"; by default NCCL when CUDA is available, else gloo.
    """
    global _local_rank
    if dist.is_initialized():
        return
    at_program_end(finish)  # a program run by run_program leaves the group when it ends
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"

    if _launched_by_torchrun():
        _local_rank = _env_int("LOCAL_RANK") or 0
        _select_gpu()
        dist.init_process_group(backend, init_method="env://", timeout=_TIMEOUT)
    elif _use_mpi() or (_slurm_env() or (0, 1))[1] > 1:
        rendezvous = _mpi_rendezvous if _use_mpi() else _slurm_rendezvous
        rank, world_size, _local_rank, store = rendezvous()
        _select_gpu()
        dist.init_process_group(
            backend, store=store, rank=rank, world_size=world_size, timeout=_TIMEOUT
        )
    else:
        _local_rank = 0
        _select_gpu()
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)


def _mpi_rendezvous() -> tuple[int, int, int, dist.Store]:
    """
    Use MPI to find rank, world size and local rank, and to hand every rank the address
    of a TCP store opened by rank 0.

    :return: (rank, world size, local rank, store).
    """
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise RuntimeError(
            "this process was started by an MPI launcher (mpiexec / mpirun), which needs "
            "mpi4py to set up torch.distributed: `pip install mpi4py` (and an MPI library, "
            "e.g. `pip install mpich`), or launch with torchrun instead"
        ) from exc
    comm = MPI.COMM_WORLD
    rank, world_size = comm.Get_rank(), comm.Get_size()
    node_comm = comm.Split_type(MPI.COMM_TYPE_SHARED)
    local_rank = node_comm.Get_rank()
    node_comm.Free()

    hostnames = comm.allgather(socket.gethostname())
    store = None
    address = None
    if rank == 0:
        try:
            if "MASTER_ADDR" in os.environ:
                host = os.environ["MASTER_ADDR"]
            elif len(set(hostnames)) == 1:
                host = "127.0.0.1"
            else:
                host = _host_address()
            _check_local_address(host)
            # Port 0 lets the OS pick a free port; the store reports the one it got.
            port = _env_int("MASTER_PORT") or 0
            store = dist.TCPStore(
                host, port, world_size, is_master=True, timeout=_TIMEOUT, wait_for_workers=False
            )
            address = (host, store.port)
        except Exception as exc:
            comm.bcast(None, root=0)  # let the other ranks fail too instead of waiting
            raise RuntimeError(f"rank 0 could not open the rendezvous store: {exc}") from exc
    address = comm.bcast(address, root=0)
    if address is None:
        raise RuntimeError("rank 0 could not open the rendezvous store (see its error)")
    host, port = address
    if store is None:
        store = dist.TCPStore(host, port, world_size, is_master=False, timeout=_TIMEOUT)
    _export_launch_variables(rank, world_size, local_rank, host, port)
    return rank, world_size, local_rank, store


def _export_launch_variables(rank: int, world: int, local_rank: int, host: str, port: int):
    """Make the usual variables visible to code that reads them (as under torchrun)."""
    variables = dict(
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(local_rank),
        MASTER_ADDR=host,
        MASTER_PORT=str(port),
    )
    _variables_set.extend(k for k in variables if k not in os.environ)
    os.environ.update(variables)


def _slurm_rendezvous() -> tuple[int, int, int, dist.Store]:
    """
    Join the tasks of an srun job step without MPI: every task knows its rank, the size and
    its local rank from Slurm's variables and computes the same store address (see the
    module docstring); rank 0 opens the store there.

    :return: (rank, world size, local rank, store).
    """
    rank, world_size, local_rank = _slurm_env()
    nodelist = os.environ.get("SLURM_STEP_NODELIST") or os.environ.get("SLURM_JOB_NODELIST", "")
    hosts = expand_hostlist(nodelist)
    host = os.environ.get("MASTER_ADDR") or (hosts[0] if len(hosts) > 1 else "127.0.0.1")
    port = _env_int("MASTER_PORT") or slurm_port(
        _env_int("SLURM_JOB_ID") or 0, _env_int("SLURM_STEP_ID") or 0
    )
    if rank == 0:
        _check_local_address(host)
    try:
        store = dist.TCPStore(
            host, port, world_size, is_master=rank == 0, timeout=_TIMEOUT,
            wait_for_workers=False,
        )  # fmt: skip
    except Exception as exc:  # noqa: BLE001 - torch raises several kinds here
        raise ConnectionError(  # an OSError: one line under script_errors.run_program
            f"task {rank} of the srun step could not {'open' if rank == 0 else 'reach'} the "
            f"rendezvous store at {host}:{port}: {' '.join(str(exc).split())}; set MASTER_ADDR to the address of "
            "the node of task 0 and MASTER_PORT to a free port"
        ) from exc
    _export_launch_variables(rank, world_size, local_rank, host, port)
    return rank, world_size, local_rank, store


def slurm_port(job_id: int, step_id: int) -> int:
    """:return: the store port of an srun step, in [20000, 40000): 20000 + (97 job + step)
    mod 20000, so that two steps of one job, or jobs in a row, differ."""
    return 20000 + (97 * job_id + step_id) % 20000


def expand_hostlist(nodelist: str) -> list[str]:
    """
    Expand Slurm's compressed host list, e.g. "gpu[01-03,07],login" -> gpu01, gpu02, gpu03,
    gpu07, login (leading zeros kept; several bracket groups in one name multiply out).

    :return: the host names in order ([] for "").
    """
    entries, depth, start = [], 0, 0
    for i, char in enumerate(nodelist + ","):
        depth += {"[": 1, "]": -1}.get(char, 0)
        if char == "," and depth == 0:
            if nodelist[start:i].strip():
                entries.append(nodelist[start:i].strip())
            start = i + 1
    hosts = []
    for entry in entries:
        names = [""]
        for prefix, group in re.findall(r"([^\[]*)(?:\[([^\]]*)\])?", entry):
            choices = [prefix]
            if group:
                choices = [prefix + number for part in group.split(",") for number in _range(part)]
            names = [name + choice for name in names for choice in choices]
        hosts.extend(names)
    return hosts


def _range(part: str) -> list[str]:
    """"07" -> ["07"]; "01-03" -> ["01", "02", "03"] (the width of the first bound kept)."""
    if "-" not in part:
        return [part]
    first, last = part.split("-", 1)
    return [str(n).zfill(len(first)) for n in range(int(first), int(last) + 1)]


def _check_local_address(host: str) -> None:
    """Fail at once (not after the store's timeout) when rank 0 cannot listen on ``host``."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
    except OSError as exc:
        raise ValueError(
            f"rank 0 cannot listen on {host!r} (MASTER_ADDR or this host's name): {exc}; "
            "set MASTER_ADDR to an address of the node running rank 0"
        ) from exc


def _host_address() -> str:
    """This node's address as other nodes see it (set MASTER_ADDR where this guesses wrong)."""
    address = socket.gethostbyname(socket.getfqdn())
    if address.startswith("127."):
        # Many /etc/hosts files map the host name to a loopback address: ask the routing
        # table which interface reaches outside instead (a UDP connect sends nothing).
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.connect(("10.255.255.255", 1))
                address = s.getsockname()[0]
        except OSError:
            pass
    return address


def _select_gpu() -> None:
    if torch.cuda.is_available():
        torch.cuda.set_device(dev())


def get_rank() -> int:
    """
    :return: this process's rank (0 alone); read from the launcher's environment when
        ``setup_dist()`` has not run yet.
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return _launcher_value("RANK" if _launched_by_torchrun() else None, 0, default=0)


def get_world_size() -> int:
    """
    :return: the number of processes (1 alone); read from the launcher's environment when
        ``setup_dist()`` has not run yet.
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return _launcher_value("WORLD_SIZE" if _launched_by_torchrun() else None, 1, default=1)


def get_local_rank() -> int:
    """:return: this process's rank among the processes on its node (0 alone)."""
    if _local_rank is not None:
        return _local_rank
    return _launcher_value("LOCAL_RANK", 2, default=0)


def is_main_process() -> bool:
    """:return: True on rank 0, the process that writes logs and checkpoints."""
    return get_rank() == 0


def dev() -> torch.device:
    """
    :return: the device this process should use: the GPU of its local rank (wrapping
        around when a node has fewer visible GPUs than processes), else the CPU.
    """
    if torch.cuda.is_available():
        return torch.device("cuda", get_local_rank() % torch.cuda.device_count())
    return torch.device("cpu")


def barrier() -> None:
    """Wait until every rank gets here (returns at once in a one-process run)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[dev().index])
        else:
            dist.barrier()


def load_state_dict(path: str, **kwargs: Any) -> Any:
    """
    Load a checkpoint safely (the original's name for ``checkpoint_util.read_checkpoint``):
    ``torch.load`` with ``weights_only=True``, errors naming the file. Every rank reads the
    file itself, so this never waits for other ranks.

    :param path: local path or blobfile URL.
    :param kwargs: passed to ``torch.load``, e.g. ``map_location="cpu"``.
    :return: the loaded object (usually a state dict).
    """
    kwargs.setdefault("map_location", None)
    return read_checkpoint(path, **kwargs)


def sync_params(params: Iterable[torch.Tensor]) -> None:
    """
    Copy rank 0's values into every rank's tensors, in place (nothing to do alone).

    :param params: tensors (e.g. ``model.parameters()``) on this rank's device.
    """
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return
    with torch.no_grad():
        for p in params:
            dist.broadcast(p.data if isinstance(p, torch.nn.Parameter) else p, src=0)


# ---------------------------------------------------------------- collectives


def group_size() -> int:
    """:return: the size of the running process group (1 without one)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def group_rank() -> int:
    """:return: this process's rank in the running process group (0 without one)."""
    return dist.get_rank() if group_size() > 1 else 0


def comm_device() -> torch.device:
    """:return: where tensors must be for collectives: this rank's GPU under NCCL, else the CPU."""
    if group_size() > 1 and dist.get_backend() == "nccl":
        return dev()
    return torch.device("cpu")


def all_gather_rows(local: torch.Tensor) -> torch.Tensor:
    """
    Concatenate every rank's tensor along dim 0 in rank order; alone, return it as is.

    :param local: [B x ...], the same shape on every rank.
    :return: [world_size * B x ...] on the CPU.
    """
    world = group_size()
    if world == 1:
        return local.cpu()
    local = local.to(comm_device()).contiguous()
    parts = [torch.empty_like(local) for _ in range(world)]
    dist.all_gather(parts, local)
    return torch.cat(parts).cpu()


def all_gather_ragged(local: torch.Tensor) -> list[torch.Tensor]:
    """
    Gather every rank's tensor when their first dimensions differ (the rest must agree):
    each is padded to the longest for the exchange and cut back afterwards.

    :param local: [B_r x ...] on this rank's communication device.
    :return: the world_size tensors [B_0 x ...], [B_1 x ...], ... in rank order, on
        ``local``'s device.
    """
    world = group_size()
    if world == 1:
        return [local]
    device = local.device
    lengths = all_gather_rows(torch.tensor([len(local)], dtype=torch.int64)).tolist()
    longest = max(lengths)
    padded = torch.zeros((longest,) + tuple(local.shape[1:]), dtype=local.dtype, device=device)
    padded[: len(local)] = local
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded.to(comm_device()))
    return [part[:n].to(device) for part, n in zip(parts, lengths)]


def any_rank(flag: bool) -> bool:
    """
    :param flag: this rank's answer.
    :return: True on every rank when any rank's ``flag`` is True (``flag`` alone).
    """
    if group_size() == 1:
        return bool(flag)
    value = torch.tensor([int(bool(flag))], dtype=torch.int32, device=comm_device())
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def all_gather_object(obj: Any) -> list[Any]:
    """
    :param obj: any picklable value.
    :return: every rank's value, in rank order (``[obj]`` alone).
    """
    if group_size() == 1:
        return [obj]
    gathered = [None] * group_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """
    :param obj: any picklable value (only rank ``src``'s counts).
    :return: rank ``src``'s value, on every rank.
    """
    if group_size() == 1:
        return obj
    shared = [obj]
    dist.broadcast_object_list(shared, src=src)
    return shared[0]


def finish() -> None:
    """
    End a program's part in the process group: wait for every rank, then leave it. A rank that
    exits while still in the group, with another rank still working, can abort in gloo's
    threads ("terminate called without an active exception") and fail the launch.
    """
    if dist.is_available() and dist.is_initialized():
        barrier()
    cleanup()


def cleanup() -> None:
    """Leave the process group, if any (before exiting, or to set up a new one)."""
    global _local_rank
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _local_rank = None
    while _variables_set:
        os.environ.pop(_variables_set.pop(), None)
