"""
The shard folder under faults (issue 22): damaged shards are set aside and sampled again to
the same bytes, an invalid manifest is named with what to do, a second run of the same
command is refused while the first holds the folder's lock, running out of memory names the
batch size that fits, and nothing keeps a finished round or shard alive (memory flat in the
number of images).
"""

import dataclasses
import gc
import json
import os
import subprocess
import sys
import tracemalloc
import weakref

import numpy as np
import pytest

from guided_diffusion import npz_batch, shards
from guided_diffusion.shards import ShardError, ShardStore

from conftest import REPO, run, sample_flags

NPZ = "samples_6x16x16x3.npz"


def one_line_error(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    return lines[-1]


def shard_folder(log_dir) -> str:
    (name,) = [n for n in os.listdir(log_dir) if ".shards-" in n]
    return os.path.join(log_dir, name)


def flip_bytes(path: str, at: int, count: int = 8) -> None:
    data = bytearray(open(path, "rb").read())
    for i in range(at, at + count):
        data[i] ^= 0xFF
    open(path, "wb").write(bytes(data))


# ---------------------------------------------------------------- damaged shards (item 4)


def test_damaged_shards_are_set_aside_and_sampled_again_to_the_same_bytes(ckpt, tmp_path):
    args = sample_flags(ckpt, num_samples=6, batch_size=2)
    run("image_sample.py", args + ["--keep_shards", "True"], tmp_path)
    expected = (tmp_path / NPZ).read_bytes()
    os.unlink(tmp_path / NPZ)
    folder = shard_folder(tmp_path)
    flip_bytes(os.path.join(folder, "000000002-000000004.npz"), 300)  # inside arr_0's pixels
    truncated = os.path.join(folder, "000000004-000000006.npz")
    data = open(truncated, "rb").read()
    open(truncated, "wb").write(data[: len(data) // 2])

    result = run("image_sample.py", args, tmp_path)
    assert "000000002-000000004.npz is damaged (arr_0.npy fails its CRC-32 check)" in result.stdout
    assert "000000004-000000006.npz is damaged" in result.stdout
    assert "found 2 images, 4 to sample" in result.stdout
    assert (tmp_path / NPZ).read_bytes() == expected
    # set aside, not deleted: kept for inspection after the run
    assert sorted(os.listdir(folder)) == [
        "000000002-000000004.npz.damaged",
        "000000004-000000006.npz.damaged",
    ]
    again = run("image_sample.py", args, tmp_path)  # and the next run is not disturbed by them
    assert (tmp_path / NPZ).read_bytes() == expected and "damaged (" not in again.stdout


def test_a_shard_damaged_after_verification_is_named_with_what_to_do(tmp_path):
    store = ShardStore.beside(str(tmp_path / "samples_4x2x2x3.npz"), {"seed": 1})
    store.prepare()
    store.write(0, {"arr_0": np.zeros((2, 2, 2, 3), np.uint8)})
    store.write(2, {"arr_0": np.ones((2, 2, 2, 3), np.uint8)})
    flip_bytes(store.path(2, 4), 200)
    with pytest.raises(ShardError, match=r"000000002-000000004.npz is damaged .*rerun the same"):
        shards.assemble_samples(store, 4, str(tmp_path / "samples_4x2x2x3.npz"))
    assert store.set_aside_damaged() == [store.path(2, 4) + ".damaged"]
    assert store.done() == [(0, 2)]


def test_shards_that_disagree_with_the_others_or_their_name_are_set_aside(tmp_path):
    store = ShardStore.beside(str(tmp_path / "x.npz"), {"seed": 1})
    store.prepare()
    for start in (0, 2, 4):
        store.write(start, {"arr_0": np.zeros((2, 2, 2, 3), np.uint8)})
    os.replace(store.path(4, 6), store.path(4, 7))  # 2 rows, but named for 3
    store.write(7, {"arr_0": np.zeros((2, 3, 3, 3), np.uint8)})  # another image size
    open(store.path(9, 10), "w").write("not a zip")
    moved = store.set_aside_damaged()
    assert sorted(os.path.basename(m) for m in moved) == [
        "000000004-000000007.npz.damaged",
        "000000007-000000009.npz.damaged",
        "000000009-000000010.npz.damaged",
    ]
    assert store.done() == [(0, 2), (2, 4)]


def test_an_invalid_manifest_is_named_and_its_advice_works(ckpt, tmp_path):
    args = sample_flags(ckpt, num_samples=6, batch_size=2)
    run("image_sample.py", args + ["--keep_shards", "True"], tmp_path)
    folder = shard_folder(tmp_path)
    manifest = os.path.join(folder, shards.MANIFEST)
    open(manifest, "w").write('{"seed": 1, "files": ')  # cut short
    line = one_line_error(run("image_sample.py", args, tmp_path, check=False))
    assert f"{manifest} is not a valid manifest" in line and "delete it to resume" in line
    os.unlink(manifest)  # the advice: delete it, and the shards are used again
    again = run("image_sample.py", args, tmp_path)
    assert "found 6 images, 0 to sample" in again.stdout


# ---------------------------------------------------------------- one run at a time (item 5)


def test_a_second_run_of_the_same_command_is_refused_while_the_first_runs(ckpt, tmp_path):
    args = sample_flags(ckpt, num_samples=6, batch_size=2)
    run("image_sample.py", args + ["--keep_shards", "True"], tmp_path)
    os.unlink(tmp_path / NPZ)
    folder = shard_folder(tmp_path)
    before = sorted(os.listdir(tmp_path))
    # a running process of this host holds the lock, as the first of two runs would
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        lock = os.path.join(folder, shards.LOCK)
        record = shards._this_process()
        record.update(pid=holder.pid, start=shards._process_start(holder.pid))
        open(lock, "w").write(json.dumps(record))
        line = one_line_error(run("image_sample.py", args, tmp_path, check=False))
        assert f"another run (pid {holder.pid} on " in line and "wait for it to finish" in line
        assert sorted(os.listdir(tmp_path)) == before  # no stray folder, no output
        assert os.path.exists(lock)
    finally:
        holder.kill()
        holder.wait()
    # once it is gone, its lock is stale: taken over with a log line
    result = run("image_sample.py", args, tmp_path)
    assert f"taking over {lock}, left by a run that no longer runs" in result.stdout
    assert (tmp_path / NPZ).exists() and not any(".shards-" in n for n in os.listdir(tmp_path))


@dataclasses.dataclass
class FailingJob:
    """A job for run_resumable whose every chunk fails on a bad value."""

    seed: int = 1

    def __call__(self, start: int, count: int):
        raise ValueError("bad value")


def test_the_lock_is_given_back_when_the_run_fails(tmp_path):
    with pytest.raises(ShardError, match="bad value"):
        shards.run_resumable(str(tmp_path / "y.npz"), {"files": {}}, FailingJob(), 4, 2)
    (folder,) = [n for n in os.listdir(tmp_path) if n.startswith("y.shards-")]
    assert os.listdir(tmp_path / folder) == [shards.MANIFEST]  # no lock left


# ---------------------------------------------------------------- out of memory (item 7)

LIMITED = r"""
import re, resource, runpy, sys
import torch, guided_diffusion.sample_util  # the large imports first, then the limit
size = int(re.search(r"VmSize:\s+(\d+) kB", open("/proc/self/status").read()).group(1)) * 1024
limit = size + int(sys.argv[1]) * 2**20
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
sys.argv = sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def run_limited(args: list[str], log_dir, extra_mib: int = 400):
    env = dict(os.environ, OPENAI_LOGDIR=str(log_dir), OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    env["MALLOC_ARENA_MAX"] = "1"  # glibc reserves address space per thread arena otherwise
    env["PYTHONPATH"] = os.pathsep.join([REPO, env.get("PYTHONPATH", "")])
    script = os.path.join(REPO, "scripts", "image_sample.py")
    command = [sys.executable, "-c", LIMITED, str(extra_mib), script, *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs Linux's /proc")
def test_running_out_of_memory_names_the_batch_size_that_fits(ckpt, tmp_path):
    args = sample_flags(ckpt, num_samples=1500, batch_size=1500)
    line = one_line_error(run_limited(args, tmp_path / "big"))
    assert "out of memory computing 1500 images at once on cpu (--batch_size 1500)" in line
    fit = int(line.split("rerun with --batch_size ")[1])
    assert 1 <= fit < 1500
    # the advice is accepted: a batch of that size fits under the same limit
    follow = sample_flags(ckpt, num_samples=fit, batch_size=fit)
    result = run_limited(follow, tmp_path / "fit")
    assert result.returncode == 0, result.stderr


def test_the_chunk_plan_does_not_grow_with_the_number_of_images():
    tracemalloc.start()
    plan = shards.plan_chunks([(0, 3), (5, 10**6)], 1)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 2**20, peak
    assert len(plan) == 3 + 10**6 - 5 and plan.total() == len(plan)
    assert plan[0] == (0, 1) and plan[3] == (5, 1) and plan[-1] == (10**6 - 1, 1)
    assert shards.plan_chunks([(0, 7)], 3)[0:3] == [(0, 3), (3, 3), (6, 1)]


def test_a_user_error_on_one_chunk_ends_the_run_with_its_message():
    def compute(start, count):
        if start == 2:
            raise ValueError("chunk 2 is bad")
        return {"x": np.zeros(count)}

    with pytest.raises(ShardError, match="chunk 2 is bad"):
        shards.run_sharded(4, 2, compute, lambda start, arrays: None)


# ---------------------------------------------------------------- memory (item 15)


def tracked_arrays(monkeypatch):
    """Make every array read from a shard own its memory, and keep a weak reference to it."""
    alive: list[weakref.ref] = []
    read = npz_batch.NpzArrayReader.read

    def owned(self, num_rows):
        array = read(self, num_rows).copy()
        if array.ndim == 4:  # images
            alive.append(weakref.ref(array))
        return array

    monkeypatch.setattr(npz_batch.NpzArrayReader, "read", owned)
    return alive


def test_the_final_file_is_assembled_one_shard_at_a_time(tmp_path, monkeypatch):
    store = ShardStore.beside(str(tmp_path / "samples_20x2x2x3.npz"), {"seed": 1})
    store.prepare()
    for i in range(5):
        store.write(4 * i, {"arr_0": np.full((4, 2, 2, 3), i, np.uint8),
                            "arr_1": np.arange(4 * i, 4 * i + 4)})  # fmt: skip
    alive = tracked_arrays(monkeypatch)
    most = [0]
    write = npz_batch.NpyStreamWriter.write

    def counting_write(self, rows):
        gc.collect()
        most[0] = max(most[0], sum(ref() is not None for ref in alive))
        write(self, rows)

    monkeypatch.setattr(npz_batch.NpyStreamWriter, "write", counting_write)
    labels, first = shards.assemble_samples(store, 20, str(tmp_path / "samples_20x2x2x3.npz"), keep=6)
    assert len(alive) >= 5 and most[0] == 1  # the shard being written, no earlier one
    gc.collect()
    assert not any(ref() is not None for ref in alive)
    assert first.shape == (6, 2, 2, 3) and list(first[:, 0, 0, 0]) == [0, 0, 0, 0, 1, 1]
    assert list(labels) == list(range(20))


def test_no_finished_round_is_kept_while_the_next_is_computed():
    alive: list[weakref.ref] = []
    most = [0]

    def compute(start, count):
        gc.collect()
        most[0] = max(most[0], sum(ref() is not None for ref in alive))
        images = np.zeros((count, 2, 2, 3), np.uint8)
        alive.append(weakref.ref(images))
        return {"arr_0": images}

    written = []
    shards.run_sharded(10, 2, compute, lambda start, arrays: written.append(start))
    assert written == [0, 2, 4, 6, 8] and most[0] == 0
