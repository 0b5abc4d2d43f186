"""
The sampling programs with --sampler and --guidance_interval, run as subprocesses on the
tiny checkpoints of test_sample_scripts (one and two ranks).
"""

import numpy as np
import pytest

from conftest import (
    CLASSIFIER,
    SUPER_RES,
    flags,
    import_script,
    load,
    run,
    sample_flags,
)


def with_steps(args: list[str], steps: int) -> list[str]:
    """``args`` with --timestep_respacing set to ``steps``."""
    i = args.index("--timestep_respacing")
    return args[: i + 1] + [str(steps)] + args[i + 2 :]


def images(log_dir, n: int = 4) -> np.ndarray:
    return load(log_dir / f"samples_{n}x16x16x3.npz")["arr_0"].astype(int)


@pytest.mark.parametrize("sampler", ["dpm++3m", "dpm++2m-sde"])
def test_dpm_solver_same_file_alone_and_with_two_ranks(ckpt, tmp_path, sampler):
    """The stochastic solver's step noise is per image too: the same file for any split."""
    args = with_steps(sample_flags(ckpt, num_samples=4, batch_size=2), 5) + ["--sampler", sampler]
    alone = run("image_sample.py", args, tmp_path / "one")
    run("image_sample.py", args, tmp_path / "two", launcher="torchrun")
    run("image_sample.py", with_steps(sample_flags(ckpt, num_samples=4, batch_size=4), 5)
        + ["--sampler", sampler], tmp_path / "batch")  # fmt: skip
    assert np.array_equal(images(tmp_path / "one"), images(tmp_path / "two"))
    assert np.array_equal(images(tmp_path / "one"), images(tmp_path / "batch"))
    assert images(tmp_path / "one").std() > 5
    assert "model evaluations / classifier evaluations per image: 5 / 0" in alone.stdout


def test_same_starting_noise_whatever_the_sampler(ckpt, tmp_path):
    """At two steps DPM-Solver++ is first order, i.e. DDIM: the same seed gives the same images."""
    args = with_steps(sample_flags(ckpt, num_samples=4, batch_size=4), 2)
    for name, extra in [("ddim", ["--sampler", "ddim"]), ("use_ddim", ["--use_ddim", "True"]),
                        ("dpm", ["--sampler", "dpm++2m"])]:  # fmt: skip
        run("image_sample.py", args + extra, tmp_path / name)
    ddim = images(tmp_path / "ddim")
    assert np.array_equal(ddim, images(tmp_path / "use_ddim"))
    assert np.abs(ddim - images(tmp_path / "dpm")).max() <= 1  # float rounding of the same maths


def test_classifier_guided_solver_with_an_interval(ckpt, tmp_path):
    common = with_steps(sample_flags(ckpt, model="uncond", num_samples=4, batch_size=4), 6) + [
        *flags(CLASSIFIER), "--classifier_path", ckpt["classifier"], "--class_labels", "0,3",
        "--classifier_scale", "50", "--sampler", "dpm++2m",
    ]  # fmt: skip
    full = run("classifier_sample.py", common, tmp_path / "full")
    part = run("classifier_sample.py", common + ["--guidance_interval", "0.5,inf"], tmp_path / "part")
    assert "per image: 6 / 6" in full.stdout
    guided_steps = int(part.stdout.split("per image: 6 / ")[1].split()[0])
    assert 0 < guided_steps < 6
    assert not np.array_equal(images(tmp_path / "full"), images(tmp_path / "part"))


def test_super_resolution_with_the_solver(ckpt, tmp_path):
    base = tmp_path / "base.npz"
    low = np.random.default_rng(0).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    np.savez(base, arr_0=low, arr_1=np.array([1, 2]))
    args = [*flags(SUPER_RES), "--timestep_respacing", "4", "--model_path", ckpt["sr"],
            "--base_samples", str(base), "--seed", "0", "--sampler", "dpm++2m"]  # fmt: skip
    result = run("super_res_sample.py", args, tmp_path)
    assert "per image: 4 / 0" in result.stdout
    assert load(tmp_path / "samples_2x32x32x3.npz")["arr_0"].shape == (2, 32, 32, 3)


@pytest.mark.parametrize(
    "script, argv, message",
    [
        ("image_sample", ["--sampler", "euler"], "--sampler must be one of ancestral, ddim"),
        ("classifier_sample", ["--sampler", "dpm++2m", "--use_ddim", "True", "--classifier_path", "c.pt"],
         "conflicts"),
        ("classifier_sample", ["--guidance_interval", "5,1", "--classifier_path", "c.pt"],
         "--guidance_interval must be"),
        ("super_res_sample", ["--guidance_interval", "x"], "--guidance_interval must be"),
    ],
)
def test_bad_sampler_flags_fail_before_any_work(script, argv, message):
    from guided_diffusion.script_errors import SamplingInputError

    with pytest.raises(SamplingInputError, match=message):
        import_script(script).main(argv)


def with_respacing(args: list[str], spec: str) -> list[str]:
    i = args.index("--timestep_respacing")
    return args[: i + 1] + [spec] + args[i + 2 :]


def test_edm_sampler_with_churn_same_file_for_any_split(ckpt, tmp_path):
    """The churn's noise is per image: the same file alone, with two ranks and in one batch;
    4 steps cost 7 evaluations; the grid and the thresholding reach the program too."""
    extra = ["--sampler", "edm", "--S_churn", "2", "--dynamic_threshold", "0.99"]
    args = with_respacing(sample_flags(ckpt, num_samples=4, batch_size=2), "karras4") + extra
    alone = run("image_sample.py", args, tmp_path / "one")
    run("image_sample.py", args, tmp_path / "two", launcher="torchrun")
    run("image_sample.py", with_respacing(sample_flags(ckpt, num_samples=4, batch_size=4), "karras4")
        + extra, tmp_path / "batch")  # fmt: skip
    assert np.array_equal(images(tmp_path / "one"), images(tmp_path / "two"))
    assert np.array_equal(images(tmp_path / "one"), images(tmp_path / "batch"))
    assert "model evaluations / classifier evaluations per image: 7 / 0" in alone.stdout
    run("image_sample.py", args[:-2], tmp_path / "plain")  # without thresholding
    assert not np.array_equal(images(tmp_path / "one"), images(tmp_path / "plain"))


def test_classifier_guided_edm_sampler(ckpt, tmp_path):
    args = with_respacing(sample_flags(ckpt, model="uncond", num_samples=4, batch_size=4), "trailing3") + [
        *flags(CLASSIFIER), "--classifier_path", ckpt["classifier"], "--class_labels", "0,3",
        "--classifier_scale", "5", "--sampler", "edm", "--S_churn", "1",
    ]  # fmt: skip
    result = run("classifier_sample.py", args, tmp_path)
    assert "per image: 5 / 5" in result.stdout


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--sampler", "edm", "--S_churn", "-1"], "--S_churn must be a number >= 0"),
        (["--lower_order_final", "below"], "--lower_order_final must be always, never or belowN"),
        (["--unipc_order", "5"], "--unipc_order must be 1, 2 or 3"),
        (["--third_order_form", "x"], "--third_order_form must be exact or circulated"),
        (["--dynamic_threshold", "99.5"], "--dynamic_threshold must be 0"),
        (["--sde_eta", "-1"], "--sde_eta must be a number >= 0"),
    ],
)  # fmt: skip
def test_bad_setting_flags_fail_before_any_work(argv, message):
    from guided_diffusion.sample_util import SamplingInputError

    with pytest.raises(SamplingInputError, match=message):
        import_script("image_sample").main(argv)


def test_bad_grid_is_one_line_and_exit_1(ckpt, tmp_path):
    args = with_respacing(sample_flags(ckpt, num_samples=2, batch_size=2), "karras4_rho0")
    result = run("image_sample.py", args, tmp_path, check=False)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].endswith(
        "--timestep_respacing karras4_rho0: '_rhoR' (R > 0) may follow 'karrasN' and '_maxS' "
        "(the largest noise level sigma / alpha, S > 0) 'karrasN' or 'logsnrN', once each"
    )
    assert "Traceback" not in result.stderr
