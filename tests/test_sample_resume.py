"""
Per-image seeds, shards and resume of the sampling programs (issue 14), run as subprocesses
on the tiny checkpoints of test_sample_scripts: the same bytes for any --batch_size and
number of ranks, a SIGKILLed run that resumes to the same bytes sampling only what is
missing, and shards that are never shared by runs whose images differ.
"""

import os
import signal
import subprocess
import sys
import time

import numpy as np
from PIL import Image

from conftest import (
    CLASSIFIER,
    REPO,
    flags,
    run,
    sample_flags,
)

NPZ = "samples_{}x16x16x3.npz"


def shard_folders(folder) -> list[str]:
    return sorted(name for name in os.listdir(folder) if ".shards-" in name)


def test_same_bytes_for_any_batch_size_and_number_of_ranks(ckpt, tmp_path):
    run("image_sample.py", sample_flags(ckpt, batch_size=4), tmp_path / "b4")
    run("image_sample.py", sample_flags(ckpt, batch_size=3), tmp_path / "b3")
    run("image_sample.py", sample_flags(ckpt, batch_size=3), tmp_path / "r2", launcher="torchrun")
    files = [(tmp_path / d / NPZ.format(5)).read_bytes() for d in ("b4", "b3", "r2")]
    assert files[0] == files[1] == files[2]
    assert not shard_folders(tmp_path / "b4")  # removed once the final file is complete


def test_killed_run_resumes_to_the_same_bytes_sampling_only_the_rest(ckpt, tmp_path):
    args = sample_flags(ckpt, num_samples=8, batch_size=1)
    args[args.index("--timestep_respacing") + 1] = "20"  # slow enough to be caught midway
    run("image_sample.py", args, tmp_path / "whole")
    expected = (tmp_path / "whole" / NPZ.format(8)).read_bytes()

    log_dir = tmp_path / "killed"
    env = dict(os.environ, OPENAI_LOGDIR=str(log_dir), OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    env["PYTHONPATH"] = os.pathsep.join([REPO, env.get("PYTHONPATH", "")])
    command = [sys.executable, os.path.join(REPO, "scripts", "image_sample.py"), *args]
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    deadline, shards = time.time() + 200, []
    while time.time() < deadline and process.poll() is None:
        folders = shard_folders(log_dir) if log_dir.exists() else []
        shards = [n for n in os.listdir(log_dir / folders[0]) if n.endswith(".npz")] if folders else []
        if len(shards) >= 2:
            break
        time.sleep(0.01)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not (log_dir / NPZ.format(8)).exists(), "the run finished before it was killed"
    folder = log_dir / shard_folders(log_dir)[0]
    before = {n: os.stat(folder / n).st_mtime_ns for n in os.listdir(folder) if n.endswith(".npz")}
    assert 2 <= len(before) < 8

    result = run("image_sample.py", args + ["--keep_shards", "True"], log_dir)
    assert f"found {len(before)} images, {8 - len(before)} to sample" in result.stdout
    after = {n: os.stat(folder / n).st_mtime_ns for n in os.listdir(folder) if n.endswith(".npz")}
    assert {n: after[n] for n in before} == before  # the old shards were not sampled again
    assert len(after) == 8  # batch size 1: one shard per image
    assert (log_dir / NPZ.format(8)).read_bytes() == expected


def test_a_changed_classifier_scale_does_not_reuse_shards(ckpt, tmp_path):
    common = sample_flags(ckpt, model="uncond", num_samples=4, batch_size=4) + [
        *flags(CLASSIFIER),
        "--classifier_path",
        ckpt["classifier"],
        "--keep_shards",
        "True",
    ]
    first = run("classifier_sample.py", common + ["--classifier_scale", "1.0"], tmp_path)
    assert "found 0 images, 4 to sample" in first.stdout
    again = run("classifier_sample.py", common + ["--classifier_scale", "1.0"], tmp_path)
    assert "found 4 images, 0 to sample" in again.stdout
    other = run("classifier_sample.py", common + ["--classifier_scale", "2.0"], tmp_path)
    assert "found 0 images, 4 to sample" in other.stdout
    assert len(shard_folders(tmp_path)) == 2


def test_unseeded_rerun_resumes_with_the_first_runs_seed(ckpt, tmp_path):
    args = sample_flags(ckpt, num_samples=3, batch_size=2)
    args = args[: args.index("--seed")] + ["--keep_shards", "True"]
    first = run("image_sample.py", args, tmp_path)
    seed = first.stdout.split("repeat this batch with --seed ")[1].split()[0]
    again = run("image_sample.py", args, tmp_path)
    assert "resuming the unseeded run found beside" in again.stdout and f"seed {seed}" in again.stdout
    assert "found 3 images, 0 to sample" in again.stdout


def test_image_nll_resumes_from_its_per_image_terms(ckpt, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(data / f"{i}.png")
    args = sample_flags(ckpt, model="uncond", num_samples=3, batch_size=2)
    args += ["--data_dir", str(data), "--keep_shards", "True"]
    first = run("image_nll.py", args, tmp_path / "log")
    assert "found 0 images, 3 to evaluate" in first.stdout
    again = run("image_nll.py", args, tmp_path / "log")
    assert "found 3 images, 0 to evaluate" in again.stdout

    def bpd(result):
        return [line for line in result.stdout.splitlines() if line.startswith("bits/dim:")]

    assert bpd(first) == bpd(again) and len(bpd(first)) == 1
    # two ranks, another batch size: the same per-image terms, so the same figure
    other_args = sample_flags(ckpt, model="uncond", num_samples=3, batch_size=1)
    other_args += ["--data_dir", str(data)]
    other = run("image_nll.py", other_args, tmp_path / "two", launcher="torchrun")
    assert bpd(other) == bpd(first)
