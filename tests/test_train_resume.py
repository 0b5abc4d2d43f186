"""
Bit-identical training resume: a run stopped by SIGTERM (which saves the step it was on) and
resumed from that checkpoint ends with exactly the weights, EMA, optimizer state and timestep
sampler state of an uninterrupted run (``torch.equal``), resumed in the middle of an epoch and
at an epoch boundary, on one rank and on two (torchrun). The runs use what makes this hard:
a shuffling data loader with a worker, random flips (and random crops for the classifier),
dropout, and the loss-second-moment timestep sampler, which warms up across the stops.
"""

import importlib.util
import os
import re
import signal
import subprocess

import numpy as np
import pytest
import torch
from PIL import Image

from guided_diffusion import dist_util, logger
from launchers import torchrun_command

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(REPO, "tests", "dist_helpers", "resume_worker.py")
# 8x8 images from 16 files of 10x12 pixels; 2 diffusion steps, so that the loss-second-moment
# sampler (10 losses per step) warms up within a few steps of a batch of 4.
MODEL = [
    "--image_size", "8", "--num_channels", "32", "--num_res_blocks", "1", "--channel_mult", "1,2",
    "--attention_resolutions", "4", "--dropout", "0.1", "--class_cond", "True", "--num_classes",
    "2", "--diffusion_steps", "2", "--noise_schedule", "cosine", "--learn_sigma", "True",
]  # fmt: skip
TRAIN = [
    "--batch_size", "4", "--lr", "1e-3", "--ema_rate", "0.9", "--schedule_sampler",
    "loss-second-moment", "--save_interval", "100", "--log_interval", "1", "--seed", "7",
]  # fmt: skip
CLASSIFIER = [
    "--image_size", "8", "--classifier_width", "32", "--classifier_depth", "1",
    "--classifier_channel_mult", "1,2", "--classifier_attention_resolutions", "4",
    "--num_classes", "2", "--diffusion_steps", "2", "--noise_schedule", "cosine",
    "--batch_size", "4", "--lr", "1e-3",
    "--save_interval", "100", "--log_interval", "1", "--seed", "7", "--eval_interval", "2",
]  # fmt: skip
LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "PMI_RANK",
               "PMI_SIZE", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "SLURM_PROCID",
               "SLURM_NTASKS", "GD_TEST_SIGTERM")  # fmt: skip


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """16 images of two classes, 10x12 pixels (resized and cropped to 8x8)."""
    folder = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    for i in range(16):
        pixels = rng.integers(0, 256, size=(10, 12, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"c{i % 2}_{i:02d}.png")
    return folder


def _files(run, step: int, ema: bool = True) -> dict[str, object]:
    names = [f"model{step:06d}.pt", f"opt{step:06d}.pt", f"train_state{step:06d}.pt"]
    names += [f"ema_0.9_{step:06d}.pt"] if ema else []
    return {name[: -len(f"{step:06d}.pt")]: torch.load(run / name, weights_only=True)
            for name in names if (run / name).exists()}  # fmt: skip


def _assert_equal(a, b, where: str = "") -> None:
    """Nested dicts / lists of tensors and numbers, equal exactly."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for key in a:
            _assert_equal(a[key], b[key], f"{where}/{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_equal(x, y, f"{where}/{i}")
    else:
        assert a == b, (where, a, b)


# ---------------------------------------------------------------- one rank, in this process


@pytest.fixture
def train(monkeypatch):
    """train(argv, log_dir, sigterm_at=None): the worker's main() in this process; returns
    the exit status (0, or 143 after a SIGTERM)."""
    for name in LAUNCH_VARS:
        monkeypatch.delenv(name, raising=False)
    spec = importlib.util.spec_from_file_location("resume_worker", WORKER)
    worker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(worker)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)

    def refuse(signum, frame):  # a loop that does not catch SIGTERM must not end pytest
        raise AssertionError("SIGTERM reached the test: the training loop does not handle it")

    previous = signal.signal(signal.SIGTERM, refuse)

    def run(argv, log_dir, sigterm_at=None) -> int:
        monkeypatch.setenv("OPENAI_LOGDIR", str(log_dir))
        if sigterm_at is None:
            monkeypatch.delenv("GD_TEST_SIGTERM", raising=False)
        else:
            monkeypatch.setenv("GD_TEST_SIGTERM", f"0:{sigterm_at}")
        try:
            worker.main([str(a) for a in argv])
            return 0
        except SystemExit as stop:
            return stop.code
        finally:
            logger.reset()
            dist_util.cleanup()

    yield run
    signal.signal(signal.SIGTERM, previous)
    torch.set_num_threads(threads)


def test_stopped_and_resumed_training_equals_an_uninterrupted_run(data, train, tmp_path):
    # one rank: 16 images, batches of 4, so 4 steps per epoch
    common = ["--data_dir", data, *MODEL, *TRAIN, "--max_steps", "10"]
    assert train(common, tmp_path / "straight") == 0
    # a progress line after every log row: steps per second and the time left
    log = (tmp_path / "straight" / "log.txt").read_text()
    assert re.search(r"step 3 of 10 \(30%\): [\d.e+]+ steps/s, [\d.e+]+ images/s, "
                     r"elapsed \d:\d\d:\d\d, ETA \d:\d\d:\d\d", log), log  # fmt: skip

    run = tmp_path / "stopped"
    # SIGTERM while step 2 runs: step 3 is saved, in the middle of the first epoch
    assert train(common, run, sigterm_at=2) == 143
    assert not (run / "model000002.pt").exists() and (run / "model000003.pt").exists()
    assert "stopped by SIGTERM after step 3" in (run / "log.txt").read_text()
    # resumed, and stopped again at the end of the second epoch (step 8)
    resume = ["--resume_checkpoint", run / "model000003.pt"]
    assert train([*common, *resume], run, sigterm_at=7) == 143
    assert (run / "model000008.pt").exists()
    assert train([*common, "--resume_checkpoint", run / "model000008.pt"], run) == 0

    straight, resumed = _files(tmp_path / "straight", 10), _files(run, 10)
    assert set(straight) == {"model", "opt", "train_state", "ema_0.9_"}
    _assert_equal(straight, resumed)
    # the timestep sampler warmed up during the run (its state mattered)
    assert (straight["train_state"]["schedule_sampler"]["loss_counts"] == 10).all()


def test_the_classifier_trainer_resumes_exactly_with_random_crops(data, train, tmp_path):
    common = ["--classifier", "--data_dir", data, "--val_data_dir", data, *CLASSIFIER,
              "--iterations", "6"]  # fmt: skip
    assert train(common, tmp_path / "straight") == 0
    run = tmp_path / "stopped"
    assert train(common, run, sigterm_at=2) == 143  # step 3 saved, mid-epoch
    assert train([*common, "--resume_checkpoint", run / "model000003.pt"], run) == 0
    _assert_equal(_files(tmp_path / "straight", 6, ema=False), _files(run, 6, ema=False))
    # the validation rows of the resumed part are those of the uninterrupted run too
    straight_rows = (tmp_path / "straight" / "progress.csv").read_text().splitlines()
    resumed_rows = (run / "progress.csv").read_text().splitlines()
    assert straight_rows[-3:] == resumed_rows[-3:]


# ---------------------------------------------------------------- two ranks, torchrun


def _torchrun(argv, log_dir, sigterm_at: str = "") -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    env.update(OPENAI_LOGDIR=str(log_dir), OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="",
               PYTHONPATH=REPO + os.pathsep + env.get("PYTHONPATH", ""))  # fmt: skip
    if sigterm_at:
        env["GD_TEST_SIGTERM"] = sigterm_at
    command = torchrun_command([WORKER, *[str(a) for a in argv]])
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


def test_two_ranks_stopped_and_resumed_equal_an_uninterrupted_run(data, tmp_path):
    # two ranks of 8 images each, batches of 4: 2 steps per epoch
    common = ["--data_dir", data, *MODEL, *TRAIN, "--max_steps", "6"]
    straight = _torchrun(common, tmp_path / "straight")
    assert straight.returncode == 0, straight.stderr
    run = tmp_path / "stopped"
    # rank 1 alone gets SIGTERM while step 2 runs: both ranks stop after it, step 3 is saved
    # (the middle of the second epoch)
    first = _torchrun(common, run, sigterm_at="1:2")
    assert first.returncode != 0 and (run / "model000003.pt").exists(), first.stderr
    assert not (run / "model000004.pt").exists()
    # rank 0 gets it while step 3 runs: step 4, an epoch boundary, is saved
    second = _torchrun([*common, "--resume_checkpoint", run / "model000003.pt"], run, "0:3")
    assert second.returncode != 0 and (run / "model000004.pt").exists(), second.stderr
    assert not (run / "model000005.pt").exists()
    last = _torchrun([*common, "--resume_checkpoint", run / "model000004.pt"], run)
    assert last.returncode == 0, last.stderr
    _assert_equal(_files(tmp_path / "straight", 6), _files(run, 6))
