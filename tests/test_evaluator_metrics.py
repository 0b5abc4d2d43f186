"""
Tests of the evaluator's metrics beyond the ADM evaluator's (evaluations/evaluator.py,
evaluations/results.py): KID, density and coverage from the same Inception activations,
--metrics (and so which batches go through the network), --json, and the errors of their flags,
with the small stand-in for the Inception network of test_evaluator.py.
"""

import hashlib
import json
import os
import re

import numpy as np
import pytest

import guided_diffusion
from evaluations import evaluator, results
from evaluations.evaluator import evaluate, main
from evaluations.metrics import (
    compute_statistics,
    density_coverage,
    frechet_distance,
    kernel_inception_distance,
    precision_recall,
)
from test_evaluator import (  # noqa: F401  (private_user_cache: an autouse fixture)
    DEFAULT_LINES,
    FLOAT,
    FakeExtractor,
    fake_acts,
    make_images,
    private_user_cache,
)


def write_batches(tmp_path, ref_count: int = 12, sample_count: int = 10, stats: bool = False):
    ref, sample = str(tmp_path / "ref.npz"), str(tmp_path / "sample.npz")
    ref_images = make_images(ref_count, seed=21)
    arrays = {}
    if stats:
        acts = fake_acts(ref_images)
        arrays = dict(zip(("mu", "sigma"), compute_statistics(acts["pool"])))
        arrays.update(zip(("mu_s", "sigma_s"), compute_statistics(acts["spatial"])))
    np.savez(ref, ref_images, **arrays)
    np.savez(sample, make_images(sample_count, seed=22))
    return ref, sample


def printed(capsys) -> dict[str, str]:
    """:return: {label: value} of the "<label>: <value>" lines after "Computing evaluations..."."""
    lines = capsys.readouterr().out.strip().splitlines()
    if "Computing evaluations..." in lines:
        lines = lines[lines.index("Computing evaluations...") + 1 :]
    return dict(line.split(": ", 1) for line in lines if ": " in line)


# ----------------------------------------------------------------------------------------------
# The new metrics on the same activations


def test_kid_density_coverage_are_the_metric_functions_on_the_pool_features():
    ref, sample = make_images(30, seed=1), make_images(26, seed=2) // 2 + 60  # duller samples
    ref_pool, sample_pool = fake_acts(ref)["pool"], fake_acts(sample)["pool"]
    got = evaluate(ref, sample, extractor=FakeExtractor(), batch_size=7, device="cpu")
    # default subset size: the smaller batch's 26 images (fewer than 1,000)
    kid, kid_std = kernel_inception_distance(ref_pool, sample_pool, 100, 26, seed=0, device="cpu")
    assert got["kid"] == pytest.approx(kid, rel=1e-5) and got["kid_std"] == pytest.approx(kid_std, rel=1e-5)
    assert (got["density"], got["coverage"]) == density_coverage(ref_pool, sample_pool, k=5, device="cpu")
    assert (got["precision"], got["recall"]) == precision_recall(ref_pool, sample_pool, device="cpu")
    assert got["kid"] > 3 * got["kid_std"] > 0  # a non-trivial KID
    other = evaluate(
        ref, sample, extractor=FakeExtractor(), device="cpu", metrics="kid,density",
        kid_subsets=7, kid_subset_size=12, kid_seed=3, dc_nearest_k=2,
    )
    assert set(other) == {"kid", "kid_std", "density"}
    assert other["kid"] == pytest.approx(
        kernel_inception_distance(ref_pool, sample_pool, 7, 12, seed=3, device="cpu")[0], rel=1e-5
    )
    assert other["density"] == density_coverage(ref_pool, sample_pool, k=2, device="cpu")[0]


def test_every_metric_reads_one_feature_pass_per_batch(tmp_path):
    ref, sample = write_batches(tmp_path, ref_count=10, sample_count=9)
    extractor = FakeExtractor()
    got = evaluate(ref, sample, extractor=extractor, batch_size=4, use_cache=False, device="cpu")
    assert set(got) >= {"fid", "sfid", "precision", "recall", "kid", "kid_std", "density", "coverage"}
    assert extractor.calls == 3 + 3  # ceil(10 / 4) + ceil(9 / 4): each image once


@pytest.mark.parametrize(
    "metrics, stats, calls",
    [
        ("is", False, 3),  # the samples' logits only
        ("fid,sfid", True, 3),  # the reference's stored statistics stand in for its images
        ("fid", False, 3 + 3),
        ("precision", True, 3 + 3),  # the reference's own features, whatever it stores
        ("kid", True, 3 + 3),
    ],
)
def test_metrics_choose_which_batches_are_extracted(tmp_path, metrics, stats, calls):
    ref, sample = write_batches(tmp_path, ref_count=12, sample_count=10, stats=stats)
    extractor = FakeExtractor()
    got = evaluate(ref, sample, extractor=extractor, batch_size=4, use_cache=False,
                   device="cpu", metrics=metrics)
    assert extractor.calls == calls
    expected_keys = {"is": {"inception_score", "inception_score_unavailable"}, "kid": {"kid", "kid_std"}}
    assert set(got) == set().union(*(expected_keys.get(m, {m}) for m in metrics.split(",")))
    if metrics == "fid,sfid":  # the stored statistics give what the images give
        full = evaluate(ref, sample, extractor=FakeExtractor(), use_cache=False, device="cpu")
        assert got["fid"] == pytest.approx(full["fid"], rel=1e-4)


def test_cli_prints_the_chosen_metrics_in_the_usual_order(tmp_path, capsys):
    ref, sample = write_batches(tmp_path)
    main([ref, sample, "--device", "cpu", "--metrics", "kid,fid,coverage"], extractor=FakeExtractor())
    lines = capsys.readouterr().out.strip().splitlines()[-4:]
    for line, prefix in zip(lines, ["FID: ", "KID: ", "KID std: ", "Coverage: "], strict=True):
        assert re.fullmatch(prefix + FLOAT, line), line


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--metrics", "fid,bogus"], r"--metrics: unknown bogus; choose from is,fid,sfid,.*,fd$"),
        (["--metrics", ","], r"--metrics: none given"),
        (["--metrics", "fd"], r"--metrics fd needs a feature extractor: --fd_extractor or --fd_timm_model"),
        (["--kid_subset_size", "11"], r"--kid_subset_size 11 is larger than the sample batch \(10 images\)"),
        (["--kid_subset_size", "1"], r"--kid_subset_size 1: KID subsets need at least 2 images"),
        (["--kid_subsets", "0"], r"--kid_subsets must be at least 1, got 0"),
        (["--dc_nearest_k", "12"], r"ref.npz: holds 12 images; density / coverage with --dc_nearest_k 12 need at least 13"),
        (["--dc_nearest_k", "0"], r"--dc_nearest_k must be a positive number"),
        (["--fd_weights", "w.pth"], r"--fd_weights is the weights file of --fd_timm_model"),
        (["--fd_timm_model", "vit_small"], r"--fd_timm_model vit_small needs --fd_weights"),
    ],
)
def test_bad_metric_flags_are_one_line_before_any_feature_pass(tmp_path, flags, message):
    ref, sample = write_batches(tmp_path, ref_count=12, sample_count=10)
    extractor = FakeExtractor()
    with pytest.raises(SystemExit) as info:
        main([ref, sample, "--device", "cpu", *flags], extractor=extractor)
    text = str(info.value.code)
    assert "\n" not in text and text.startswith("evaluator.py: error: ")
    assert re.search(message, text), text
    assert extractor.calls == 0


def test_metric_flags_do_not_apply_to_make_ref(tmp_path):
    with pytest.raises(SystemExit, match=r"--metrics, --json only apply when evaluating"):
        main(["--make_ref", str(tmp_path), str(tmp_path / "r.npz"), "--metrics", "fid",
              "--json", "x.json"], extractor=FakeExtractor())


def test_an_explicit_kid_subset_size_within_the_batches_is_used(tmp_path, capsys):
    ref, sample = write_batches(tmp_path, ref_count=12, sample_count=10)
    main([ref, sample, "--device", "cpu", "--metrics", "kid", "--kid_subset_size", "10",
          "--kid_subsets", "5"], extractor=FakeExtractor())
    expected = kernel_inception_distance(
        fake_acts(make_images(12, seed=21))["pool"], fake_acts(make_images(10, seed=22))["pool"],
        5, 10, device="cpu",
    )
    values = printed(capsys)
    assert float(values["KID"]) == pytest.approx(expected[0], rel=1e-5)
    assert float(values["KID std"]) == pytest.approx(expected[1], rel=1e-5)


# ----------------------------------------------------------------------------------------------
# --json


def test_json_holds_every_printed_metric_hashes_counts_and_version(tmp_path, capsys):
    ref, sample = write_batches(tmp_path, ref_count=12, sample_count=10)
    out = str(tmp_path / "out" / "results.json")
    main([ref, sample, "--device", "cpu", "--json", out], extractor=FakeExtractor(has_logits=False))
    values = printed(capsys)
    with open(out) as f:
        record = json.load(f)
    assert record["evaluator_version"] == guided_diffusion.__version__
    for key, path, count in (("reference", ref, 12), ("sample", sample, 10)):
        with open(path, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
        assert record["batches"][key] == {"path": path, "sha256": digest, "images": count}
    metrics = record["metrics"]
    assert list(metrics) == [
        "inception_score", "fid", "sfid", "precision", "recall", "kid", "kid_std", "density", "coverage"
    ]
    labels = {value: key for key, value in results.LABELS.items()}
    for label, text in values.items():
        if label in labels and label != "Inception Score":
            assert metrics[labels[label]] == float(text), label  # the same float, not rounded
    assert metrics["inception_score"] is None and "logits" in record["inception_score_unavailable"]
    assert values["Inception Score"].startswith("unavailable (")
    assert record["settings"] == {
        "metrics": ["is", "fid", "sfid", "precision", "recall", "kid", "density", "coverage"],
        "precision_recall_k": 3, "dc_nearest_k": 5,
        "kid_subsets": 100, "kid_subset_size": 10, "kid_seed": 0,
        "inception": {"weights": None, "weights_id": None},
    }
    assert sorted(os.listdir(tmp_path / "out")) == ["results.json"]


def test_json_is_written_atomically(tmp_path, monkeypatch):
    ref, sample = write_batches(tmp_path)
    out = tmp_path / "results.json"
    out.write_text('{"old": true}\n')

    def half_then_fail(record, f, **kwargs):
        f.write('{"metrics": {')
        raise OSError(28, "No space left on device", str(out))

    monkeypatch.setattr(results.json, "dump", half_then_fail)
    with pytest.raises(SystemExit, match="no space left on device"):
        main([ref, sample, "--device", "cpu", "--metrics", "fid", "--json", str(out), "--no_cache"],
             extractor=FakeExtractor())
    assert out.read_text() == '{"old": true}\n'
    assert not [name for name in os.listdir(tmp_path) if name.endswith(".tmp")]


def test_an_unwritable_json_path_fails_before_any_feature_pass(tmp_path):
    ref, sample = write_batches(tmp_path)
    extractor = FakeExtractor()
    with pytest.raises(SystemExit, match=r"evaluator.py: error: .*ref.npz"):
        main([ref, sample, "--json", os.path.join(ref, "results.json")], extractor=extractor)
    assert extractor.calls == 0


def test_json_of_a_folder_batch_has_no_hash(tmp_path):
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    for i, image in enumerate(make_images(8, seed=23)):
        Image.fromarray(image).save(folder / f"{i}.png")
    record = results.batch_record(str(folder))
    assert record == {"path": str(folder), "sha256": None, "images": 8}


def test_fid_of_the_json_equals_the_metric_function(tmp_path):
    ref, sample = write_batches(tmp_path)
    out = str(tmp_path / "r.json")
    evaluator.main([ref, sample, "--device", "cpu", "--metrics", "fid", "--json", out],
                   extractor=FakeExtractor())
    with open(out) as f:
        record = json.load(f)
    ref_pool, sample_pool = (fake_acts(make_images(n, seed=s))["pool"] for n, s in ((12, 21), (10, 22)))
    expected = frechet_distance(*compute_statistics(sample_pool), *compute_statistics(ref_pool))
    assert record["metrics"] == {"fid": pytest.approx(expected, rel=1e-4)}
    assert record["settings"]["metrics"] == ["fid"] and "kid_subsets" not in record["settings"]


def test_default_output_is_the_original_lines_then_the_new_ones(tmp_path, capsys):
    ref, sample = write_batches(tmp_path)
    main([ref, sample, "--device", "cpu"], extractor=FakeExtractor())
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split(": ")[0] + ": " for line in lines[-9:]] == DEFAULT_LINES


# ----------------------------------------------------------------------------------------------
# The scripts that measure the new metrics


def _script(name: str, *args: str) -> str:
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    run = subprocess.run(
        [sys.executable, os.path.join(root, "evaluations", name), *args],
        capture_output=True, text=True, timeout=300, cwd="/",
    )
    assert run.returncode == 0, run.stderr[-2000:]
    return run.stdout


def test_benchmark_prints_what_kid_density_coverage_add():
    out = _script("benchmark_metrics.py", "--sizes", "60", "--dim", "16", "--devices", "cpu",
                  "--new", "--images_per_second", "20")
    assert re.search(r"60 x 60 on cpu: original metrics .* KID .* s \(100 subsets of 60, float64\); "
                     r".* s = .*% of the metrics", out), out
    assert re.search(r"with Inception features of 60 images at 20.0 images/s \(3 s\): the evaluator "
                     r"takes \d+ s, KID \+ density/coverage add .* s = .*%", out), out


def test_compare_metrics_agrees_with_prdc_and_torchmetrics(tmp_path):
    rng = np.random.default_rng(24)
    ref, sample = tmp_path / "r.npz", tmp_path / "s.npz"
    np.savez(ref, pool=np.abs(rng.standard_normal((80, 32))).astype(np.float32))
    np.savez(sample, pool=np.abs(rng.standard_normal((70, 32)) + 0.2).astype(np.float32))
    out = _script("compare_metrics.py", "--ref", str(ref), "--sample", str(sample),
                  "--kid_subsets", "5", "--kid_subset_size", "30")
    differences = [float(x) for x in re.findall(r"(\d\.\de[-+]\d\d)", out)]
    assert "vs torchmetrics poly_mmd" in out and "vs prdc, k = 5, ours in float64" in out
    assert len(differences) == 4 + 8 and max(differences) < 1e-6, out
