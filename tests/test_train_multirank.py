"""
scripts/image_train.py on two CPU ranks (gloo), launched by ``mpiexec -n 2`` and by
``torchrun --nproc_per_node 2``: each rank trains on its own shard, the ranks end with
identical weights, and only rank 0 writes checkpoints and logs.
"""

import csv
import os
import subprocess

import numpy as np
import pytest
import torch
from PIL import Image

from launchers import mpiexec_command, torchrun_command

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(REPO, "tests", "dist_helpers", "train_worker.py")
LAUNCH_VARS = (
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "MASTER_ADDR",
    "MASTER_PORT",
    "OPENAI_LOGDIR",
    "OPENAI_LOG_FORMAT",
    "OPENAI_LOG_FORMAT_MPI",
    "PMI_RANK",
    "PMI_SIZE",
    "MPI_LOCALRANKID",
    "OMPI_COMM_WORLD_RANK",
    "OMPI_COMM_WORLD_SIZE",
    "OMPI_COMM_WORLD_LOCAL_RANK",
    "PMIX_RANK",
    "MV2_COMM_WORLD_RANK",
    "MV2_COMM_WORLD_SIZE",
)
# batch 2 in microbatches of 1 (DDP's no_sync path), loss-aware sampler (gathers losses
# from both ranks), 3 steps with checkpoints at steps 2 and 3.
TRAIN_FLAGS = [
    "--image_size",
    "8",
    "--num_channels",
    "32",
    "--num_res_blocks",
    "1",
    "--channel_mult",
    "1,2",
    "--attention_resolutions",
    "4",
    "--diffusion_steps",
    "10",
    "--noise_schedule",
    "cosine",
    "--learn_sigma",
    "True",
    "--class_cond",
    "True",
    "--num_classes",
    "2",
    "--batch_size",
    "2",
    "--microbatch",
    "1",
    "--schedule_sampler",
    "loss-second-moment",
    "--lr",
    "1e-3",
    "--max_steps",
    "3",
    "--save_interval",
    "2",
    "--log_interval",
    "1",
    "--ema_rate",
    "0.9",
]


@pytest.fixture
def job(tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):  # 4 images per rank, two classes
        pixels = rng.integers(0, 256, size=(10, 12, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(data_dir / f"c{i % 2}_{i}.png")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    log_dir = tmp_path / "log"
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    env.update(
        OPENAI_LOGDIR=str(log_dir),
        OMP_NUM_THREADS="1",
        CUDA_VISIBLE_DEVICES="",
        PYTHONPATH=REPO + os.pathsep + env.get("PYTHONPATH", ""),
    )
    args = [WORKER, str(out_dir), "--data_dir", str(data_dir), *TRAIN_FLAGS]
    return {"args": args, "env": env, "out_dir": out_dir, "log_dir": log_dir}


def _run_and_check(command: list[str], job: dict) -> None:
    proc = subprocess.run(command, env=job["env"], capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, f"{command} failed:\n{proc.stdout}\n{proc.stderr}"
    r0, r1 = (torch.load(job["out_dir"] / f"rank{r}.pt", weights_only=True) for r in range(2))

    # Each rank read its own shard...
    assert not torch.equal(r0["first_batch"], r1["first_batch"])
    # ...and the ranks ended with the same weights and EMA.
    assert list(r0["weights"]) == list(r1["weights"])
    for key in r0["weights"]:
        assert torch.equal(r0["weights"][key], r1["weights"][key]), key
    for a, b in zip(r0["ema"], r1["ema"]):
        assert torch.equal(a, b)

    # Only rank 0 wrote checkpoints and logs.
    assert r0["checkpoint_writes"] == 8 and r1["checkpoint_writes"] == 0
    assert r0["log_outputs"] == 3 and r1["log_outputs"] == 0
    assert r0["log_dir"] == r1["log_dir"] == str(job["log_dir"])
    assert sorted(os.listdir(job["log_dir"])) == [
        "ema_0.9_000002.json",
        "ema_0.9_000002.pt",
        "ema_0.9_000003.json",
        "ema_0.9_000003.pt",
        "log.txt",
        "model000002.json",
        "model000002.pt",
        "model000003.json",
        "model000003.pt",
        "opt000002.pt",
        "opt000003.pt",
        "progress.csv",
        "train_state000002.pt",
        "train_state000003.pt",
    ]
    assert proc.stdout.count("Logging to") == 1
    saved = torch.load(job["log_dir"] / "model000003.pt", weights_only=True)
    for key, value in r0["weights"].items():
        assert torch.equal(saved[key], value), key
    with open(job["log_dir"] / "progress.csv") as f:
        rows = list(csv.DictReader(f))
    assert [row["step"] for row in rows] == ["0", "1", "2"]
    assert [row["samples"] for row in rows] == ["4", "8", "12"]  # 2 images x 2 ranks per step


def test_image_train_on_two_ranks_under_mpiexec(job):
    _run_and_check(mpiexec_command(job["args"]), job)


def test_image_train_on_two_ranks_under_torchrun(job):
    _run_and_check(torchrun_command(job["args"]), job)
