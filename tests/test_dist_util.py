"""
dist_util alone, and two CPU ranks (gloo) launched by ``mpiexec -n 2`` and by
``torchrun --nproc_per_node 2``: ranks, all_reduce, sync_params, load_state_dict, data
shards and rank-0-only logging with global means.
"""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.distributed as dist
from PIL import Image

from guided_diffusion import dist_util

from launchers import mpiexec_command, torchrun_command

WORKER = os.path.join(os.path.dirname(__file__), "dist_helpers", "dist_worker.py")
# Launcher variables that must not leak from the environment pytest runs in.
LAUNCH_VARS = (
    "RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "OPENAI_LOGDIR",
    "OPENAI_LOG_FORMAT", "OPENAI_LOG_FORMAT_MPI", "PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID",
    "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK", "PMIX_RANK",
    "MV2_COMM_WORLD_RANK", "MV2_COMM_WORLD_SIZE", "SLURM_PROCID", "SLURM_NTASKS",
    "SLURM_STEP_NUM_TASKS", "SLURM_LOCALID", "SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST",
    "SLURM_JOB_ID", "SLURM_STEP_ID",
)
NUM_IMAGES = 4  # image i is one flat colour 10 * i, class "c{i % 2}"


@pytest.fixture
def job(tmp_path):
    """Inputs for the worker (images, a checkpoint) and a clean environment."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    for i in range(NUM_IMAGES):
        pixels = np.full((10, 12, 3), 10 * i, dtype=np.uint8)
        Image.fromarray(pixels).save(data_dir / f"c{i % 2}_{i}.png")
    checkpoint = tmp_path / "model.pt"
    torch.save({"w": torch.arange(4.0), "b": torch.tensor([7])}, checkpoint)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    env["TMPDIR"] = str(tmp_path)  # where the logger's default directory goes
    env["OMP_NUM_THREADS"] = "1"
    args = [WORKER, str(out_dir), str(data_dir), str(checkpoint)]
    return {"args": args, "env": env, "out_dir": out_dir, "tmp_path": tmp_path}


def _run(command: list[str], job: dict) -> list[dict]:
    proc = subprocess.run(
        command, env=job["env"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, f"{command} failed:\n{proc.stdout}\n{proc.stderr}"
    reports = []
    for rank in range(2):
        with open(job["out_dir"] / f"rank{rank}.json") as f:
            reports.append(json.load(f))
    return reports


def _check_two_ranks(reports: list[dict], job: dict, gpus: bool = False) -> None:
    r0, r1 = reports
    assert [r["rank"] for r in reports] == [0, 1]
    assert [r["torch_rank"] for r in reports] == [0, 1]
    assert [r["rank_before_setup"] for r in reports] == [0, 1]
    assert all(r["world_size"] == 2 and r["world_size_before_setup"] == 2 for r in reports)
    assert [r["local_rank"] for r in reports] == [0, 1]  # one node
    if gpus:
        assert all(r["backend"] == "nccl" for r in reports)
        assert [r["device"] for r in reports] == ["cuda:0", "cuda:1"]
    else:
        assert all(r["backend"] == "gloo" and r["device"] == "cpu" for r in reports)
    assert [r["is_main"] for r in reports] == [True, False]
    assert all(r["all_reduce_sum"] == 3.0 for r in reports)
    for r in reports:
        assert r["gathered_rows"] == [0, 0, 1, 1]
        assert r["gathered_ragged"] == [[0], [10, 11]]
        assert r["gathered_objects"] == [{"rank": 0}, {"rank": 1}]
        assert r["broadcast"] == "from 0"

    # sync_params: the ranks started apart and end with rank 0's weights.
    assert r0["weights_before_sync"] != r1["weights_before_sync"]
    assert r0["weights_after_sync"] == r0["weights_before_sync"]
    assert r1["weights_after_sync"] == r0["weights_before_sync"]

    for r in reports:
        assert r["checkpoint"] == {"w": [0.0, 1.0, 2.0, 3.0], "b": [7]}

    # Shards files[rank::2] of the sorted list c0_0, c0_2, c1_1, c1_3 (colour, label).
    assert sorted(r0["data_seen"]) == [[0, 0], [10, 1]]
    assert sorted(r1["data_seen"]) == [[20, 0], [30, 1]]

    # Logging: one default directory, files only from rank 0, means over both ranks.
    log_dir = r0["log_dir"]
    assert r1["log_dir"] == log_dir
    assert os.path.dirname(log_dir) == str(job["tmp_path"])
    assert os.path.basename(log_dir).startswith("openai-")
    assert sorted(os.listdir(log_dir)) == ["log.txt", "progress.csv"]
    for r in reports:
        assert r["dumped"]["loss"] == pytest.approx(1.5)
        assert r["dumped"]["grad_norm"] == pytest.approx(5.0)
    with open(os.path.join(log_dir, "progress.csv")) as f:
        header, row = f.read().splitlines()
    values = dict(zip(header.split(","), row.split(",")))
    assert float(values["loss"]) == pytest.approx(1.5)
    assert values["step"] == "7"


def _mpiexec_command(job: dict) -> list[str]:
    job["env"]["CUDA_VISIBLE_DEVICES"] = ""  # gloo on the CPU even where GPUs exist
    return mpiexec_command(job["args"])


def test_two_ranks_under_mpiexec(job):
    _check_two_ranks(_run(_mpiexec_command(job), job), job)


def test_bad_master_addr_fails_fast_under_mpiexec(job):
    # Rank 0 cannot listen on this address: a clear error at once, not a store timeout.
    job["env"]["MASTER_ADDR"] = "192.0.2.255.invalid"
    proc = subprocess.run(
        _mpiexec_command(job), env=job["env"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode != 0
    assert "cannot listen on '192.0.2.255.invalid'" in proc.stderr
    assert not os.listdir(job["out_dir"])


def _torchrun_command(job: dict) -> list[str]:
    return torchrun_command(job["args"])


def test_two_ranks_under_torchrun(job):
    job["env"]["CUDA_VISIBLE_DEVICES"] = ""  # gloo on the CPU even where GPUs exist
    _check_two_ranks(_run(_torchrun_command(job), job), job)


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_two_ranks_with_nccl(job):
    _check_two_ranks(_run(_torchrun_command(job), job), job, gpus=True)


def _free_port_between(low: int, high: int) -> int:
    """A port in [low, high) that nothing listens on now."""
    for port in np.random.default_rng().permutation(np.arange(low, high))[:200].tolist():
        with socket.socket() as s:
            try:
                s.bind(("", port))
            except OSError:
                continue
            return port
    pytest.skip(f"no free port in {low}..{high - 1}")


def _srun_environments(job: dict, nodelist: str) -> list[dict]:
    """What srun gives the two tasks of a job step (no MPI, no torchrun), with a job id
    whose derived store port is free here."""
    port = _free_port_between(20000, 40000)
    job_id = (port - 20000) * pow(97, -1, 20000) % 20000 + 20000 * 7  # slurm_port(job_id) == port
    assert dist_util.slurm_port(job_id, 0) == port
    common = dict(
        SLURM_STEP_NUM_TASKS="2", SLURM_NTASKS="2", SLURM_STEP_NODELIST=nodelist,
        SLURM_JOB_NODELIST=nodelist, SLURM_JOB_ID=str(job_id), SLURM_STEP_ID="0",
        CUDA_VISIBLE_DEVICES="",
    )  # fmt: skip
    return [
        {**job["env"], **common, "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank)}
        for rank in range(2)
    ]


def test_two_ranks_under_srun_without_mpi(job):
    # two local processes with the variables srun sets: they join as ranks 0 and 1 at the
    # first host of the node list (the second, never reached, stands for another node)
    procs = [
        subprocess.Popen([sys.executable, *job["args"]], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)  # fmt: skip
        for env in _srun_environments(job, "localhost,node7")
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    reports = []
    for rank in range(2):
        with open(job["out_dir"] / f"rank{rank}.json") as f:
            reports.append(json.load(f))
    _check_two_ranks(reports, job)


def test_a_batch_script_shell_is_not_a_job_step(alone, monkeypatch):
    # sbatch's own shell has SLURM_PROCID=0 and SLURM_NTASKS but no SLURM_STEP_NUM_TASKS
    monkeypatch.setenv("SLURM_PROCID", "0")
    monkeypatch.setenv("SLURM_NTASKS", "8")
    assert dist_util.get_world_size() == 1
    dist_util.setup_dist()
    assert dist.get_world_size() == 1


def test_a_taken_store_port_under_srun_is_one_line(alone, monkeypatch):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        for name, value in dict(SLURM_PROCID="0", SLURM_STEP_NUM_TASKS="2", SLURM_LOCALID="0",
                                SLURM_STEP_NODELIST="localhost",
                                MASTER_PORT=str(taken.getsockname()[1])).items():  # fmt: skip
            monkeypatch.setenv(name, value)
        with pytest.raises(ConnectionError, match=r"task 0 of the srun step could not open the "
                           r"rendezvous store at 127\.0\.0\.1:\d+: .*MASTER_PORT") as info:  # fmt: skip
            dist_util.setup_dist()
    assert "\n" not in str(info.value)


def test_slurm_host_lists_and_ports():
    assert dist_util.expand_hostlist("gpu[01-03,07],login") == [
        "gpu01", "gpu02", "gpu03", "gpu07", "login",
    ]  # fmt: skip
    assert dist_util.expand_hostlist("r[1-2]-n[8-9]") == ["r1-n8", "r1-n9", "r2-n8", "r2-n9"]
    assert dist_util.expand_hostlist("") == []
    ports = {dist_util.slurm_port(job, step) for job in (4711, 4712) for step in (0, 1)}
    assert len(ports) == 4 and all(20000 <= p < 40000 for p in ports)


@pytest.fixture
def alone(monkeypatch):
    """A process that no launcher started; leaves no process group behind."""
    for name in LAUNCH_VARS:
        monkeypatch.delenv(name, raising=False)
    dist_util.cleanup()  # in case an earlier test left a process group behind
    yield
    dist_util.cleanup()


def test_helpers_work_without_setup(alone):
    assert dist_util.get_rank() == 0
    assert dist_util.get_world_size() == 1
    assert dist_util.get_local_rank() == 0
    assert dist_util.is_main_process()
    assert not dist.is_initialized()
    dist_util.barrier()
    param = torch.nn.Parameter(torch.arange(3.0))
    dist_util.sync_params([param])
    assert param.tolist() == [0.0, 1.0, 2.0]
    rows = torch.arange(6).view(3, 2)
    assert torch.equal(dist_util.all_gather_rows(rows), rows)
    assert [p.tolist() for p in dist_util.all_gather_ragged(rows)] == [rows.tolist()]
    assert dist_util.all_gather_object({"a": 1}) == [{"a": 1}]
    assert dist_util.broadcast_object("x") == "x"


def test_setup_alone_makes_a_one_process_group(alone):
    dist_util.setup_dist()
    dist_util.setup_dist()
    assert dist.is_initialized()
    assert (dist.get_rank(), dist.get_world_size()) == (0, 1)
    device = dist_util.dev()
    if torch.cuda.is_available():
        assert dist.get_backend() == "nccl" and device == torch.device("cuda", 0)
    else:
        assert dist.get_backend() == "gloo" and device == torch.device("cpu")
    # Code written for the original release calls torch.distributed directly.
    x = torch.tensor([2.0], device=device)
    dist.all_reduce(x)
    gathered = [torch.zeros(1, device=device)]
    dist.all_gather(gathered, x)
    assert gathered[0].item() == 2.0
    dist_util.barrier()
    dist_util.cleanup()
    assert not dist.is_initialized()


def test_a_program_leaves_its_process_group_when_it_ends(alone):
    # a rank that exits inside the group while another still works can abort in gloo's threads
    from guided_diffusion.script_errors import run_program

    run_program(dist_util.setup_dist)
    assert not dist.is_initialized()
    run_program(lambda: None)  # a program that never joined a group
    assert not dist.is_initialized()


def test_rank_read_from_launcher_environment(alone, monkeypatch):
    monkeypatch.setenv("PMI_RANK", "3")
    monkeypatch.setenv("PMI_SIZE", "4")
    monkeypatch.setenv("MPI_LOCALRANKID", "1")
    assert (dist_util.get_rank(), dist_util.get_world_size()) == (3, 4)
    assert dist_util.get_local_rank() == 1
    assert not dist_util.is_main_process()
    for name, value in [("RANK", "5"), ("WORLD_SIZE", "8"), ("LOCAL_RANK", "2"),
                        ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", "1234")]:
        monkeypatch.setenv(name, value)
    # torchrun's variables win over MPI's.
    assert (dist_util.get_rank(), dist_util.get_world_size()) == (5, 8)
    assert dist_util.get_local_rank() == 2


def test_gpu_chosen_from_local_rank(alone, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("LOCAL_RANK", "3")
    # Local rank 3 on a node with 2 visible GPUs wraps around to GPU 1 (not 3 % 8).
    assert dist_util.dev() == torch.device("cuda", 1)
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert dist_util.dev() == torch.device("cuda", 0)


def test_load_state_dict_maps_and_is_safe(tmp_path):
    path = tmp_path / "ckpt.pt"
    torch.save({"weight": torch.ones(2, 3, dtype=torch.float16)}, path)
    state = dist_util.load_state_dict(str(path), map_location="cpu")
    assert state["weight"].dtype == torch.float16
    assert state["weight"].tolist() == [[1.0] * 3] * 2

    # A pickle that would run code when loaded is refused.
    evil = tmp_path / "evil.pt"
    torch.save({"x": _RunsCode()}, evil)
    with pytest.raises(ValueError, match="evil.pt holds Python objects"):
        dist_util.load_state_dict(str(evil), map_location="cpu")

    missing = tmp_path / "nope.pt"
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        dist_util.load_state_dict(str(missing))


class _RunsCode:
    def __reduce__(self):
        return (os.getcwd, ())
