"""
scripts/demo.py: its pieces in process (settings from flags, progress readers, the class-rows
grid, the clean classifier's accuracy), and a tiny end-to-end run through the real programs.
"""

import csv
import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest


from guided_diffusion.demo import digits  # noqa: E402
from guided_diffusion.sample_io import save_samples_npz  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def demo():
    spec = importlib.util.spec_from_file_location("demo", os.path.join(REPO, "scripts", "demo.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _args(demo, *argv):
    return demo.create_argparser().parse_args(list(argv))


def test_default_settings_are_the_scale_sweep(demo):
    args = _args(demo)
    settings = demo.build_settings(args)
    assert [s.classifier_scale for s in settings] == [0, 1, 2, 4, 8]
    # the demo samples with its measured best sampler (docs/samplers.md): SDE-DPM-Solver++(2M)
    # on 25 steps uniform in log-SNR from noise level 10
    assert all(s.steps == args.steps == 25 and s.sampler == "dpm++2m-sde"
               and s.spacing == "logsnr_max10" for s in settings)
    flags = settings[0].sampling_flags()
    assert flags[flags.index("--timestep_respacing") + 1] == "logsnr25_max10"
    assert flags[flags.index("--sampler") + 1] == "dpm++2m-sde"
    original = demo.build_settings(_args(demo, "--sampler", "ancestral", "--spacing", ""))
    assert original[0].sampling_flags()[:2] == ["--timestep_respacing", "25"]
    assert args.num_samples >= 250
    more = demo.build_settings(_args(demo, "--classifier_scales", "0,3", "--spacing", "",
                                     "--extra_setting", "d10:sampler=ddim,steps=10,classifier_scale=1"))
    assert [s.name for s in more] == ["classifier_0", "classifier_3", "d10"]
    assert more[2].sampling_flags()[:4] == ["--use_ddim", "True", "--timestep_respacing", "ddim10"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--classifier_scales", "0,x"], "--classifier_scales"),
        (["--classifier_scales", "-1"], ">= 0"),
        (["--extra_setting", "classifier_0:steps=3"], "distinct names"),
        (["--extra_setting", "a:steps=-3"], "--extra_setting"),
        (["--classifier_scales", ""], "no settings"),
        (["--sweep", "samplers", "--sweep_interval", "5,1"], "--sweep_interval"),
        (["--sweep", "samplers", "--sweep_evaluations", "0,5"], "--sweep_evaluations"),
        (["--sweep", "guidance", "--guidance_scales", "2,nan"], "--guidance_scales"),
        (["--sweep", "samplers", "--sweep_variants", "guided,other"], "--sweep_variants"),
    ],
)
def test_bad_settings_flags(demo, argv, message):
    with pytest.raises(demo.DemoError, match=message):
        demo.build_settings(_args(demo, *argv))


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--num_samples", "0"], "--num_samples"),
        (["--image_size", "10"], "--image_size"),
        (["--num_channels", "48"], "multiple of 32"),
        (["--ema_rate", "0.99,0.999"], "--ema_rate"),
        (["--ema_rate", "1"], "--ema_rate"),
        (["--guide_steps", "5000"], "--guide_steps"),
        (["--class_dropout_prob", "1"], "--class_dropout_prob"),
        (["--seed", "-1"], "--seed must be a non-negative"),
        (["--sample_seed", "-2"], "--sample_seed must be a non-negative"),
        (["--sweep", "guidance", "--class_dropout_prob", "0"], "--class_dropout_prob > 0"),
    ],
)
def test_bad_counts(demo, argv, message):
    with pytest.raises(demo.DemoError, match=message):
        demo.check_args(_args(demo, *argv))


def test_sweeps_add_settings(demo, tmp_path):
    args = _args(demo, "--out_dir", str(tmp_path), "--sweep", "samplers", "--sweep", "guidance",
                 "--sweep_evaluations", "5,20", "--sweep_samplers", "ddim,dpm++3m",
                 "--train_steps", "800", "--classifier_scales", "0,2")
    settings = demo.build_settings(args)
    names = [s.name for s in settings]
    assert names[:2] == ["classifier_0", "classifier_2"]
    assert "dpmpp3m_20_cg2_interval" in names and "ddim_5" in names
    assert len(names) == 2 + 2 * 2 * 3 + 3 * 4
    auto = settings[names.index("auto_2")]
    guide = os.path.join(str(tmp_path), "diffusion", "ema_0.995_000200.pt")
    assert dict(auto.extra_flags)["guide_model_path"] == guide == demo.checkpoints(args)["guide"]
    assert demo.checkpoints(args)["model"].endswith("ema_0.995_000800.pt")
    fewer = demo.build_settings(_args(demo, "--sweep", "samplers", "--sweep_samplers", "ddim",
                                      "--sweep_evaluations", "5,10,20",
                                      "--sweep_guided_evaluations", "20",
                                      "--classifier_scales", "0"))
    assert [s.name for s in fewer] == ["classifier_0", "ddim_5", "ddim_10", "ddim_20",
                                       "ddim_20_cg2", "ddim_20_cg2_interval"]
    sweep_args = _args(demo, "--sampler", "dpm++2m", "--steps", "10")
    assert {(s.sampler, s.steps) for s in demo.build_settings(sweep_args)} == {("dpm++2m", 10)}


def test_sample_seed_renames_the_rows_and_seeds_only_the_sampling(demo, tmp_path):
    args = _args(demo, "--out_dir", str(tmp_path), "--classifier_scales", "0,2",
                 "--sample_seed", "3")
    settings = demo.build_settings(args)
    assert [s.name for s in settings] == ["classifier_0_seed3", "classifier_2_seed3"]
    assert [s.name for s in demo.build_settings(_args(demo, "--classifier_scales", "0",
                                                      "--sample_seed", "0"))] == ["classifier_0"]
    seen = []

    class FakeRunner:
        out_dir = str(tmp_path)

        def run(self, name, argv, logdir, bar, progress=None):
            seen.append(argv)
            os.makedirs(logdir, exist_ok=True)
            out = tmp_path / f"{name}.txt"
            out.write_text("(9.5 images/s)\nmodel evaluations / classifier evaluations per image: 25 / 0\n")
            return str(out)

    class Bar:
        def update(self, n):
            pass

    npz, figures = demo.sample(args, FakeRunner(), settings[0], "model.pt", "classifier.pt", Bar())
    argv = seen[0]
    assert argv[argv.index("--seed") + 1] == "3"
    assert os.path.dirname(npz) == os.path.join(str(tmp_path), "samples", "classifier_0_seed3")
    assert figures["model_evaluations"] == 25
    assert demo.sample_seed(_args(demo, "--seed", "4")) == 4


def test_an_interrupted_demo_stops_the_program_it_runs(demo, tmp_path, monkeypatch):
    runner = demo.Runner(str(tmp_path))
    pid_file = tmp_path / "pid"
    child = ("import os, time; open(os.environ['PID_FILE'], 'w').write(str(os.getpid())); "
             "time.sleep(60)")

    def interrupt(output):
        if pid_file.exists() and pid_file.read_text():
            raise KeyboardInterrupt
        return 0

    class Bar:
        n, total = 0, 1

    monkeypatch.setenv("PID_FILE", str(pid_file))
    with pytest.raises(KeyboardInterrupt):
        runner.run("sleeper", [sys.executable, "-c", child], str(tmp_path), Bar(), interrupt)
    pid = int(pid_file.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # terminated and reaped


def test_evaluation_is_reused_until_a_batch_changes(demo, tmp_path, monkeypatch):
    ref, npz = tmp_path / "ref.npz", tmp_path / "samples.npz"
    ref.write_bytes(b"r")
    npz.write_bytes(b"s")
    calls = []

    def fake_run(name, argv, logdir, bar, progress=None):
        calls.append(argv[-1])
        out = tmp_path / f"{name}.txt"
        out.write_text("Inception Score: 1.5\nFID: 12.5\nsFID: 30.25\nPrecision: 0.5\n"
                       "Recall: 0.25\nKID: 0.0125\nKID std: 0.002\nDensity: 1.125\n"
                       "Coverage: 0.75\n")
        return str(out)

    runner = demo.Runner(str(tmp_path))
    monkeypatch.setattr(runner, "run", fake_run)
    bar = demo.tqdm(total=3, disable=True)
    first = demo.evaluate(runner, str(ref), str(npz), "x", bar)
    assert first == {"fid": 12.5, "sfid": 30.25, "precision": 0.5, "recall": 0.25,
                     "kid": 0.0125, "density": 1.125, "coverage": 0.75}
    assert demo.evaluate(runner, str(ref), str(npz), "x", bar) == first and len(calls) == 1
    npz.write_bytes(b"new samples")
    demo.evaluate(runner, str(ref), str(npz), "x", bar)
    assert len(calls) == 2


def test_sampling_figures(demo, tmp_path):
    log = tmp_path / "out.txt"
    log.write_text("sampling: 100%|####| 250/250\ncreated 250 samples (41.5 images/s)\n"
                   "model evaluations / classifier evaluations per image: 20 / 9\n")
    assert demo.sampling_figures(str(log)) == {
        "images_per_second": 41.5, "model_evaluations": 20.0, "classifier_evaluations": 9.0}
    log.write_text("nothing")
    assert all(np.isnan(v) for v in demo.sampling_figures(str(log)).values())


def test_progress_readers(demo, tmp_path):
    log = tmp_path / "out.txt"
    assert demo.sampled_images(str(log)) == 0
    log.write_text("loading\rsampling:  20%|##        | 50/250 [00:03<00:12]\r"
                   "sampling:  40%|####      | 100/250 [00:06<00:09]")
    assert demo.sampled_images(str(log)) == 100
    log.write_text("sample:  50%|#####     | 125/250 [00:03<00:03, 34.54img/s]")  # shards' bar
    assert demo.sampled_images(str(log)) == 125
    read = demo.trained_steps(str(tmp_path))
    assert read("") == 0
    (tmp_path / "progress.csv").write_text("loss,step\n1.0,0\n0.5,10\n")
    assert read("") == 11


def test_class_rows_grid(demo):
    labels = np.array([1, 0, 1, 2, 0, 1])
    images = np.stack([np.full((2, 2, 3), 10 * (i + 1), np.uint8) for i in range(6)])
    grid = demo.class_rows_grid(images, labels, per_class=2, scale=2, padding=1)
    assert grid.shape == (3 * 5 + 1, 2 * 5 + 1, 3)
    tile = lambda row, col: grid[1 + row * 5: 5 + row * 5, 1 + col * 5: 5 + col * 5]  # noqa: E731
    assert (tile(0, 0) == 20).all() and (tile(0, 1) == 50).all()  # the 0s, in order
    assert (tile(1, 0) == 10).all() and (tile(1, 1) == 30).all()  # the first two 1s
    assert (tile(2, 0) == 40).all() and (tile(2, 1) == 255).all()  # one 2, then blank


def test_accuracy_of_real_and_wrong_digits(demo, tmp_path):
    images, labels = digits.load_digit_arrays()
    train, held = digits.holdout_split(labels, 20)
    big = np.stack([np.asarray(digits.digit_to_image(d, 16)) for d in images])
    clean = digits.fit_clean_classifier(
        digits.images_to_digit_features(big[train]), labels[train])
    npz = str(tmp_path / "samples_200x16x16x3.npz")
    save_samples_npz(npz, big[held], labels[held])
    accuracy, grid = demo.finish_setting(npz, clean, per_class=3)
    assert accuracy > 0.95 and os.path.exists(grid)
    save_samples_npz(npz, big[held], (labels[held] + 1) % 10)  # every label wrong
    assert demo.finish_setting(npz, clean, per_class=3)[0] < 0.05


def _run_demo(out, *extra):
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    return subprocess.run(
        [sys.executable, os.path.join(REPO, "scripts", "demo.py"), "--out_dir", str(out),
         "--image_size", "8", "--num_channels", "32", "--num_res_blocks", "1",
         "--train_steps", "2", "--classifier_steps", "2", "--batch_size", "4",
         "--num_samples", "10", "--steps", "2", "--holdout_per_class", "2", *extra],
        env=env, capture_output=True, text=True, timeout=900,
    )


@pytest.mark.slow
def test_tiny_demo_end_to_end(tmp_path):
    out = tmp_path / "demo"
    result = _run_demo(out, "--classifier_scales", "0,4", "--evaluate", "yes")
    assert result.returncode == 0, result.stderr[-3000:]
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["setting"] for r in rows] == ["classifier_0", "classifier_4"]
    for row in rows:
        for key in ("fid", "sfid", "precision", "recall", "kid", "density", "coverage",
                    "accuracy", "images_per_second"):
            assert np.isfinite(float(row[key])), (key, row)
    assert "| classifier_4 | ancestral | 2 | 4 |" in result.stdout
    for name in ("classifier_0", "classifier_4"):
        assert (out / "samples" / name / "grid_by_digit.png").exists()
        with np.load(out / "samples" / name / "samples_10x8x8x3.npz") as batch:
            assert batch["arr_1"].tolist() == list(range(10))  # balanced: every digit once
    commands = (out / "commands.txt").read_text().splitlines()
    assert [c.split()[2] for c in commands[:4]] == [
        "scripts/image_train.py", "scripts/classifier_train.py", "scripts/image_sample.py",
        "scripts/classifier_sample.py"]
    # a second run reuses models and samples: only the new setting is sampled
    again = _run_demo(out, "--classifier_scales", "0,4", "--evaluate", "no",
                      "--extra_setting", "ddim:sampler=ddim,classifier_scale=1")
    assert again.returncode == 0, again.stderr[-3000:]
    new = (out / "commands.txt").read_text().splitlines()[len(commands):]
    assert len(new) == 1 and "--use_ddim True" in new[0]


def test_bad_flag_is_one_line(tmp_path):
    result = _run_demo(tmp_path / "x", "--extra_setting", "a b:steps=2")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("demo: error: --extra_setting: setting 'a b")
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("package, distribution", [("matplotlib", "matplotlib"),
                                                   ("sklearn", "scikit-learn")])
def test_a_missing_demo_package_ends_the_demo_before_any_work(tmp_path, package, distribution):
    # the package made unimportable in the demo's own process, as on a machine without it
    out = tmp_path / "x"
    code = (f"import runpy, sys; sys.modules[{package!r}] = None; "
            f"sys.argv = ['scripts/demo.py', '--out_dir', {str(out)!r}]; "
            "runpy.run_path('scripts/demo.py', run_name='__main__')")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f'demo: error: the demo needs {distribution}, which is not installed: '
        'pip install -e ".[demo]"']
    assert not out.exists()  # nothing trained, nothing written


def test_latest_model_checkpoint_continues_an_earlier_run(demo, tmp_path):
    # A folder left by a shorter run is continued (--resume_checkpoint), never refused or mixed.
    assert demo.latest_model_checkpoint(str(tmp_path / "missing")) is None
    assert demo.latest_model_checkpoint(str(tmp_path)) is None
    for name in ("model000010.pt", "model000200.pt", "ema_0.9999_000200.pt", "opt000200.pt",
                 "model000030.json"):
        (tmp_path / name).write_bytes(b"")
    assert demo.latest_model_checkpoint(str(tmp_path)) == str(tmp_path / "model000200.pt")


def test_program_failure_is_a_user_error(demo):
    # run_program turns it into one line and exit status 1, like the other programs.
    assert issubclass(demo.DemoError, ValueError)
