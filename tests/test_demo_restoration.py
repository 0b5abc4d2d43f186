"""
The demo's restoration section (guided_diffusion.demo.restoration): choosing the digits,
scoring, the grid and the table, the section's wiring with a stand-in program runner, and
(slow) the real programs end to end through scripts/demo.py --restoration yes.
"""

import argparse
import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest


from guided_diffusion.demo import digits  # noqa: E402
from guided_diffusion.demo import restoration as dr  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def held_out():
    """(uint8 [300 x 8 x 8 x 3] held-out digits, labels, a clean classifier fitted on the rest)."""
    images, labels = digits.load_digit_arrays()
    train, held = digits.holdout_split(labels, 30)
    rgb = np.stack([np.asarray(digits.digit_to_image(d, 8)) for d in images])
    clean = digits.fit_clean_classifier(
        digits.images_to_digit_features(rgb[train]), labels[train])
    return rgb[held], labels[held], clean


def _args(**overrides) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    dr.add_arguments(parser)
    args = parser.parse_args([])
    values = dict(image_size=8, steps=3, seed=0, sample_batch_size=125, restoration_per_class=2,
                  holdout_per_class=30, restoration="yes")
    values.update(overrides)
    for key, value in values.items():
        setattr(args, key, value)
    return args


def test_select_digits_interleaves_the_classes():
    labels = np.repeat(np.arange(3), 4)
    images = np.arange(12, dtype=np.uint8)[:, None, None, None] * np.ones((1, 2, 2, 3), np.uint8)
    chosen, chosen_labels = dr.select_digits(images, labels, per_class=2)
    assert chosen_labels.tolist() == [0, 1, 2, 0, 1, 2]
    assert chosen[:, 0, 0, 0].tolist() == [0, 4, 8, 1, 5, 9]
    for bad in (0, 5):
        with pytest.raises(dr.RestorationError, match="--restoration_per_class must lie in 1..4"):
            dr.select_digits(images, labels, per_class=bad)


def test_bad_flags_are_refused_before_any_work():
    dr.check_args(_args())  # the defaults (4x super-resolution): fine
    dr.check_args(_args(restoration="no", restoration_sr_factor=3))  # section off: not checked
    for overrides, message in [
        (dict(restoration_sr_factor=3), "--restoration_sr_factor must divide --image_size 8"),
        (dict(restoration_sr_factor=1), "--restoration_sr_factor must divide"),
        (dict(restoration_sr_factor=16), "--restoration_sr_factor must divide"),
        (dict(restoration_per_class=0), r"--restoration_per_class must lie in 1..30"),
        (dict(restoration_per_class=31), r"--restoration_per_class must lie in 1..30"),
    ]:
        with pytest.raises(dr.RestorationError, match=message):
            dr.check_args(_args(**overrides))


def test_bad_flag_is_one_line_and_nothing_written(tmp_path):
    out = tmp_path / "demo"
    result = subprocess.run(
        [sys.executable, os.path.join(REPO, "scripts", "demo.py"), "--out_dir", str(out),
         "--restoration", "yes", "--restoration_per_class", "40"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "demo: error: --restoration_per_class must lie in 1..30 (the held-out digits of each "
        "class, --holdout_per_class), got 40"]
    assert not out.exists()


def test_tasks_name_their_operators_and_methods():
    inpaint, sr = dr.make_tasks(8, 2)
    assert [m for m, _ in inpaint.methods] == ["repaint", "ddnm", "dps", "sdedit"]
    assert [m for m, _ in sr.methods] == ["ddnm", "dps", "ilvr", "sdedit"]
    assert inpaint.hidden_only and not sr.hidden_only
    assert sr.name == "sr2" and "4x4 -> 8x8" in sr.title
    assert dict(sr.methods)["ilvr"] == ("--ilvr_down_n", "2", "--ilvr_filter", "avgpool")


def test_score_accuracy_and_psnr_over_the_hidden_half(held_out):
    images, labels, clean = held_out
    hidden = 1.0 - dr.named_mask("half", 8).numpy()
    accuracy, value = dr.score(images, images, labels, clean, hidden)
    assert accuracy > 0.95 and value > 100  # exact restoration
    assert dr.score(images, images, (labels + 1) % 10, clean, hidden)[0] < 0.05
    changed = images.copy()
    changed[:, :4] = 255 - changed[:, :4]  # the known upper half: not scored
    assert dr.score(changed, images, labels, clean, hidden)[1] > 100
    assert dr.score(changed, images, labels, clean, None)[1] < 10
    lower = images.copy()
    lower[:, 4:] = 0  # the hidden half wrong where there is ink
    assert dr.score(lower, images, labels, clean, hidden)[1] < 20


def test_rows_grid_places_each_batch_on_its_row():
    rows = [np.full((5, 2, 2, 3), value, np.uint8) for value in (10, 20, 30)]
    grid = dr.rows_grid(rows, columns=4, scale=3, padding=1)
    assert grid.shape == (3 * (6 + 1) + 1, 4 * (6 + 1) + 1, 3)
    for r, value in enumerate((10, 20, 30)):
        top = 1 + r * 7
        for c in range(4):
            left = 1 + c * 7
            assert (grid[top: top + 6, left: left + 6] == value).all()
    assert (grid[0] == 255).all() and (grid[:, -1] == 255).all()


class StandInRunner:
    """Writes what the programs would: image_edit its input, image_sample the wrong digits."""

    def __init__(self, out_dir, digits):
        self.out_dir = str(out_dir)
        self.calls = []
        self.argvs = []
        self.digits = digits

    def run(self, name, argv, logdir, bar):
        self.calls.append(argv[1])
        self.argvs.append(argv)
        os.makedirs(logdir, exist_ok=True)
        log = os.path.join(self.out_dir, f"{name}.txt")
        flags = dict(zip(argv[2::2], argv[3::2]))
        if argv[1] == "scripts/image_sample.py":
            labels = np.array([int(v) for v in flags["--class_labels"].split(",")])
            images = self.digits[(labels + 1) % 10]  # the wrong digit each time
            np.savez(os.path.join(logdir, f"samples_{len(labels)}x8x8x3.npz"), arr_0=images)
            with open(log, "w") as f:
                f.write("wrote 20 samples in 5.0 s (4.00 images/s, ...)\n")
            return log
        with np.load(flags["--input"]) as batch:
            images = batch["arr_0"]
        stem = os.path.join(logdir, f"edited_{len(images)}x8x8x3")
        np.savez(stem + ".npz", arr_0=images, degraded=np.zeros_like(images))
        with open(stem + ".json", "w") as f:
            json.dump({"seconds_per_image": 0.25}, f)
        return log


def test_section_rows_grids_and_reuse(held_out, tmp_path):
    images, labels, clean = held_out
    one_each = np.stack([images[labels == d][0] for d in range(10)])
    runner = StandInRunner(tmp_path, one_each)
    csv_path, md_path, grids = dr.run_section(
        _args(), runner, (images, labels), "model.pt", clean, {"disable": True})
    assert runner.calls == ["scripts/image_sample.py"] + ["scripts/image_edit.py"] * 8
    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    assert [(r["task"], r["method"]) for r in rows] == [
        ("inpaint", "measurement"), ("inpaint", "label only"), ("inpaint", "repaint"),
        ("inpaint", "ddnm"), ("inpaint", "dps"), ("inpaint", "sdedit"),
        ("sr4", "measurement"), ("sr4", "label only"), ("sr4", "ddnm"), ("sr4", "dps"),
        ("sr4", "ilvr"), ("sr4", "sdedit")]
    by_method = {(r["task"], r["method"]): r for r in rows}
    restored = by_method["inpaint", "repaint"]
    assert restored["labels"] == "given"  # a model without a run configuration: no null class
    assert float(restored["accuracy"]) > 0.9 and float(restored["psnr"]) > 100
    assert float(restored["seconds_per_image"]) == 0.25
    assert float(by_method["sr4", "label only"]["accuracy"]) == 0.0  # every digit wrong
    assert float(by_method["sr4", "label only"]["seconds_per_image"]) == 0.25
    assert float(by_method["inpaint", "measurement"]["psnr"]) < 10  # the hidden half all 0
    assert by_method["sr4", "ilvr"]["flags"].endswith("--ilvr_filter avgpool")
    assert [os.path.basename(g) for g in grids] == ["grid_inpaint.png", "grid_sr4.png"]
    from PIL import Image

    assert Image.open(grids[0]).size == (10 * 33 + 1, 6 * 33 + 1)  # 6 rows of 10 digits
    assert "| inpaint | repaint |" in open(md_path).read()
    # a second run with the same flags reuses every program's output
    dr.run_section(_args(), runner, (images, labels), "model.pt", clean, {"disable": True})
    assert len(runner.calls) == 9
    dr.run_section(_args(steps=4), runner, (images, labels), "model.pt", clean, {"disable": True})
    assert len(runner.calls) == 18
    other = (images[::-1].copy(), labels[::-1].copy())  # other digits under the same flags
    dr.run_section(_args(steps=4), runner, other, "model.pt", clean, {"disable": True})
    assert len(runner.calls) == 26  # every edit again; the labels, so label only, are the same


def test_labels_withheld_on_a_model_with_a_null_class(held_out, tmp_path):
    from guided_diffusion import run_config

    model = str(tmp_path / "model.pt")
    assert not dr.labels_withheld("auto", model)  # no run configuration: labels given
    for prob, withheld in ((0.0, False), (0.1, True)):
        config = {"format": run_config.FORMAT, "kind": "model",
                  "model_flags": {"class_cond": True, "class_dropout_prob": prob}}
        run_config.write_run_config(model, config)  # a valid file: format_version, digest
        assert dr.labels_withheld("auto", model) is withheld
        assert dr.labels_withheld("given", model) is False
        assert dr.labels_withheld("withheld", model) is True
    images, labels, clean = held_out
    runner = StandInRunner(tmp_path / "out", np.stack([images[labels == d][0] for d in range(10)]))
    csv_path, _, _ = dr.run_section(_args(restoration_labels="auto"), runner, (images, labels),
                                    model, clean, {"disable": True})
    scales = [argv[argv.index("--guidance_scale") + 1] for argv in runner.argvs]
    assert scales == ["0"] * 9  # every program: the null class
    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    assert [row["method"] for row in rows[:3]] == ["measurement", "unconditional", "repaint"]
    assert [row["labels"] for row in rows[:3]] == ["", "withheld", "withheld"]
    assert os.path.isdir(tmp_path / "out" / "restoration" / "sr4_ilvr_unconditional")


@pytest.mark.slow
def test_demo_restoration_end_to_end(tmp_path):
    out = tmp_path / "demo"
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    result = subprocess.run(
        [sys.executable, os.path.join(REPO, "scripts", "demo.py"), "--out_dir", str(out),
         "--num_channels", "32", "--train_steps", "2", "--classifier_steps", "2",
         "--batch_size", "4", "--num_samples", "10", "--steps", "2", "--holdout_per_class", "2",
         "--classifier_scales", "0", "--evaluate", "no", "--restoration", "yes",
         "--restoration_per_class", "1"],
        env=env, capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    with open(out / "restoration.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 12
    for row in rows:
        assert 0 <= float(row["accuracy"]) <= 1 and np.isfinite(float(row["psnr"])), row
    commands = (out / "commands.txt").read_text()
    for method in ("repaint", "ddnm", "dps", "sdedit", "ilvr"):
        assert "scripts/image_edit.py" in commands and f"--method {method}" in commands
    assert (out / "restoration" / "grid_sr4.png").exists()
    assert "| sr4 | ilvr |" in result.stdout
