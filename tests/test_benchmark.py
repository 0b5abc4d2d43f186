"""
Tests of scripts/benchmark.py: its official configurations build the published models, its
FLOP count follows the network, and a tiny run prints its figures.
"""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import OFFICIAL, needs_json

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("benchmark", ROOT / "scripts" / "benchmark.py")
benchmark = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(benchmark)


@needs_json
@pytest.mark.parametrize("name", sorted(OFFICIAL) or ["missing"])
def test_official_configs_build_the_published_models(name):
    model, _ = benchmark.build(name, "meta")
    built = [(k, list(v.shape)) for k, v in model.state_dict().items()]
    assert built == [(k, list(shape)) for k, shape in OFFICIAL[name]["state_dict"]]


def test_flop_count_of_training_is_about_three_forwards():
    forward = benchmark.count_flops("tiny", 2, train=False)
    train = benchmark.count_flops("tiny", 2, train=True)
    assert forward > 0
    # backward costs about two forwards (input and weight gradients; the first conv needs no
    # input gradient)
    assert 2.5 < train / forward < 3.05
    # FLOPs grow linearly with the batch
    assert benchmark.count_flops("tiny", 4, train=False) == 2 * forward


def test_tiny_run_prints_figures():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "benchmark.py"),
            "--config",
            "tiny",
            "--mode",
            "both",
            "--device",
            "cpu",
            "--batch_size",
            "2",
            "--steps",
            "1",
            "--warmup",
            "0",
            "--attention",
            "both",
            "--threads",
            "1",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    rows = [line for line in lines if "images/s" in line]
    assert len(rows) == 4  # train and sample, sdpa and einsum
    assert all("TFLOP/s" in row and "GFLOP/image" in row for row in rows)
    assert sum("speed ratio" in line for line in lines) == 2
    assert "Logging to" not in result.stdout
    # a progress bar per mode on stderr while the steps run (steps done, time per step)
    for mode in ("train", "sample"):
        assert f"tiny {mode} (0 warm-up + 1 timed steps each): 100%" in result.stderr
    assert "2/2" in result.stderr and "step" in result.stderr


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_bf16_run_reports_share_of_peak():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "benchmark.py"),
            "--config",
            "small",
            "--mode",
            "train",
            "--device",
            "cuda",
            "--dtype",
            "bf16",
            "--steps",
            "2",
            "--warmup",
            "1",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    assert "of the measured bf16 matmul peak" in result.stdout
