"""
The .npz batch module (guided_diffusion.npz_batch) and the shard folder
(guided_diffusion.shards): streamed, reproducible writes, reads by row, resumable shards.
"""

import json
import os
import time

import numpy as np
import pytest

from guided_diffusion import shards
from guided_diffusion.npz_batch import BatchFileError, NpzArrayReader, NpzWriter, check_images


def write_batch(path, images, labels):
    with NpzWriter(str(path)) as out:
        with out.array("arr_0", images.shape, np.uint8) as rows:
            for start in range(0, len(images), 3):
                rows.write(images[start : start + 3])
        out.write("arr_1", labels)


def test_streamed_writes_load_with_numpy_and_are_byte_reproducible(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (7, 4, 5, 3), dtype=np.uint8)
    labels = np.arange(7, dtype=np.int64)
    write_batch(tmp_path / "a.npz", images, labels)
    time.sleep(2.1)  # zip timestamps have 2 s steps: a later write must not change the bytes
    write_batch(tmp_path / "b.npz", images, labels)
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
    with np.load(tmp_path / "a.npz") as npz:
        assert sorted(npz.files) == ["arr_0", "arr_1"]
        assert np.array_equal(npz["arr_0"], images) and np.array_equal(npz["arr_1"], labels)
    assert sorted(os.listdir(tmp_path)) == ["a.npz", "b.npz"]


def test_a_short_member_leaves_no_file(tmp_path):
    with pytest.raises(ValueError, match="got 1 of 2 rows"):
        with NpzWriter(str(tmp_path / "a.npz")) as out:
            with out.array("arr_0", (2, 3), np.uint8) as rows:
                rows.write(np.zeros((1, 3), np.uint8))
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("save", [np.savez, np.savez_compressed])
def test_read_rows_seeks_either_way(tmp_path, save):
    images = np.random.default_rng(1).integers(0, 256, (9, 2, 2, 3), dtype=np.uint8)
    save(tmp_path / "a.npz", images)
    with NpzArrayReader(str(tmp_path / "a.npz")) as reader:
        assert np.array_equal(reader.read_rows(5, 3), images[5:8])
        assert np.array_equal(reader.read_rows(1, 2), images[1:3])
        assert np.array_equal(reader.read(1), images[3:4])


def test_one_rule_for_images():
    check_images((2, 4, 4, 3), np.uint8, "x")
    check_images((2, 4, 4), np.uint8, "x", channels=(1, 3, 4))
    with pytest.raises(BatchFileError, match=r"x: images must be .*\(2, 4, 4\)"):
        check_images((2, 4, 4), np.uint8, "x")
    with pytest.raises(BatchFileError, match="uint8"):
        check_images((2, 4, 4, 3), np.float32, "x")


def test_shard_store_resumes_and_refuses_other_runs(tmp_path):
    final = str(tmp_path / "samples_5x2x2x3.npz")
    store = shards.ShardStore.beside(final, {"seed": 1, "scale": 1.0})
    assert store.prepare() == []
    store.write(0, {"arr_0": np.zeros((2, 2, 2, 3), np.uint8)})
    store.write(3, {"arr_0": np.ones((2, 2, 2, 3), np.uint8)})
    assert store.done() == [(0, 2), (3, 5)]
    assert shards.missing_ranges(store.done(), 5) == [(2, 3)]
    with pytest.raises(ValueError, match="do not cover"):
        list(store.iter_chunks(5, "arr_0"))
    same = shards.ShardStore.beside(final, {"scale": 1.0, "seed": 1})
    assert same.folder == store.folder and same.prepare() == [(0, 2), (3, 5)]
    other = shards.ShardStore.beside(final, {"seed": 1, "scale": 2.0})
    assert other.folder != store.folder and other.prepare() == []
    with open(os.path.join(store.folder, shards.MANIFEST), "w") as f:
        json.dump({"seed": 2}, f)
    with pytest.raises(ValueError, match="different run"):
        shards.ShardStore(store.folder, {"seed": 1, "scale": 1.0}).prepare()
    assert shards.previous_seed(final, {"seed": None, "scale": 2.0}) == 1


def test_run_sharded_skips_what_is_done():
    calls, got = [], {}

    def compute(start, count):
        calls.append((start, count))
        return {"x": np.arange(start, start + count)}

    shards.run_sharded(10, 3, compute, lambda s, a: got.update({s: a["x"]}), done=[(2, 5)])
    assert calls == [(0, 2), (5, 3), (8, 2)]
    assert np.concatenate([got[s] for s in sorted(got)]).tolist() == [0, 1, 5, 6, 7, 8, 9]
