"""
What the programs tell a user (issue 22): editing flags refused at parse time naming the
flag, a guidance interval without a sampling step refused before sampling, advice that is
accepted when followed (every suggestion of these messages is run), and the choices the
programs make for their inputs said in the log. The programs run in this process on the
tiny checkpoints of conftest.
"""

import os
import re
import shutil

import numpy as np
import pytest
from PIL import Image

from guided_diffusion import dist_util, logger

from conftest import CLASSIFIER, MODEL, flags, import_script

STEPS = ["--timestep_respacing", "3"]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """A .npz of 4 16x16 images, a folder of 2 PNGs of 24x20 pixels, a 16x16 mask file."""
    root = tmp_path_factory.mktemp("advice_inputs")
    rng = np.random.default_rng(0)
    np.savez(root / "images.npz", rng.integers(0, 256, (4, 16, 16, 3), dtype=np.uint8))
    (root / "folder").mkdir()
    for i in range(2):
        picture = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)  # 24 wide, 20 high
        Image.fromarray(picture).save(root / "folder" / f"{i}.png")
    Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(root / "one.png")
    mask = np.zeros((16, 16, 3), np.uint8)
    mask[:6, :, 0] = 200  # red >= 128: known; the other channels play no part
    mask[6:, :, 1:] = 255  # cyan: hidden
    Image.fromarray(mask).save(root / "mask.png")
    return root


def model_flags(ckpt, model="uncond") -> list[str]:
    return [*flags(MODEL), "--class_cond", str(model == "cond"), *STEPS,
            "--model_path", ckpt[model], "--seed", "0"]  # fmt: skip


def classifier_flags(ckpt) -> list[str]:
    return [*flags(CLASSIFIER), "--classifier_path", ckpt["classifier"]]


def sample_args(ckpt, model="cond", *extra) -> list[str]:
    return with_flags([*model_flags(ckpt, model), "--num_samples", "2", "--batch_size", "2"], extra)


def edit_args(ckpt, images, model="uncond", *extra) -> list[str]:
    argv = [*model_flags(ckpt, model), "--input", str(images / "images.npz"),
            "--num_samples", "2", "--batch_size", "2"]  # fmt: skip
    return with_flags(argv, extra)


def with_flags(argv: list[str], extra) -> list[str]:
    """``argv`` with the flag / value pairs of ``extra`` set (replaced where present)."""
    for flag, value in zip(extra[::2], extra[1::2]):
        argv = replace_flag(argv, flag, value)
    return argv


@pytest.fixture
def log_dir(tmp_path, monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "PMI_RANK", "PMI_SIZE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OPENAI_LOGDIR", str(tmp_path / "log"))
    return tmp_path / "log"


def run_program(program: str, argv: list[str]) -> None:
    """Run scripts/<program>.py's main in this process (raising its errors)."""
    try:
        import_script(program).main(argv)
    finally:
        logger.reset()
        dist_util.cleanup()


def refusal(program: str, argv: list[str]) -> str:
    """:return: the message of the user error that ``program`` ends with."""
    with pytest.raises((ValueError, OSError)) as info:
        run_program(program, argv)
    return str(info.value)


def replace_flag(argv: list[str], flag: str, value: str) -> list[str]:
    argv = list(argv)
    if flag in argv:
        argv[argv.index(flag) + 1] = value
        return argv
    return argv + [flag, value]


def drop_flag(argv: list[str], flag: str) -> list[str]:
    i = argv.index(flag)
    return argv[:i] + argv[i + 2 :]


def log_text(log_dir) -> str:
    return (log_dir / "log.txt").read_text()


# ---------------------------------------------------------------- editing flags (item 8)


@pytest.mark.parametrize(
    "program, extra, message",
    [
        ("image_edit", ["--method", "sdedit", "--operator", "none", "--sdedit_strength", "1.5"],
         "--sdedit_strength 1.5 is out of range: it must be t0 / T in [0, 1]"),
        ("image_edit", ["--method", "ddnm", "--operator", "none", "--ddnm_eta", "1.5"],
         "--ddnm_eta 1.5 is out of range: it must be a share of fresh noise in [0, 1]"),
        ("image_edit", ["--repaint_jump_length", "0"], "--repaint_jump_length 0 is out of range"),
        ("image_edit", ["--repaint_jump_n_sample", "-2"], "--repaint_jump_n_sample -2 is out of"),
        ("image_edit", ["--method", "ilvr", "--operator", "none", "--ilvr_down_n", "3"],
         "--ilvr_down_n 3 is out of range: it must be a divisor of the image size 16 (1, 2, 4, 8, 16)"),
        ("image_edit", ["--method", "ilvr", "--operator", "none", "--ilvr_range_t", "2"],
         "--ilvr_range_t must lie in 0..1"),
        ("image_edit", ["--method", "sdedit", "--operator", "none", "--sdedit_repeats", "-1"],
         "--sdedit_repeats -1 is out of range"),
        ("image_edit", ["--method", "dps", "--operator", "blur", "--sigma_y", "-0.1"],
         "--sigma_y -0.1 is out of range"),
        ("image_edit", ["--mask_ratio", "1.5"], "--mask_ratio 1.5 is out of range"),
        ("image_edit", ["--dps_zeta", "-1"], "--dps_zeta -1.0 is out of range"),
        ("image_edit", ["--ilvr_filter", "box"], "--ilvr_filter box is out of range"),
        ("image_edit", ["--guidance_scale", "-1"], "--guidance_scale -1.0 is out of range"),
        ("image_edit", ["--num_samples", "-3"], "--num_samples -3 is out of range"),
        ("image_edit", ["--batch_size", "0"], "--batch_size 0 is out of range"),
        ("image_edit", ["--mask_seed", "-1"], "--mask_seed must be an integer in 0.."),
        ("image_edit", ["--seed", "-1"], "--seed must be an integer in 0.."),
        ("image_edit", ["--class_labels", "1,9"], "--class_labels '1,9': class ids must lie in 0..3"),
        ("ddim_invert", ["--class_labels", "x"], "--class_labels must be comma-separated integers"),
        ("ddim_invert", ["--mode", "both"], "--mode both is out of range: it must be encode or decode"),
        ("ddim_invert", ["--seed", "-1"], "--seed must be an integer in 0.."),
        ("image_sample", ["--seed", "-1"], "--seed must be an integer in 0.."),
    ],
)  # fmt: skip
def test_editing_flags_are_refused_at_parse_time_naming_the_flag(
    ckpt, images, log_dir, monkeypatch, program, extra, message
):
    monkeypatch.setattr(dist_util, "setup_dist", lambda: pytest.fail("got past the checks"))
    base = sample_args(ckpt) if program == "image_sample" else edit_args(ckpt, images)
    with pytest.raises(ValueError) as info:
        import_script(program).main(with_flags(base, extra))
    assert message in str(info.value)
    assert not log_dir.exists()


# ---------------------------------------------------------------- guidance interval (item 6)


def test_a_guidance_interval_without_a_sampling_step_is_refused_before_sampling(ckpt, log_dir):
    argv = sample_args(ckpt, "uncond", *classifier_flags(ckpt), "--guidance_interval", "100,200")
    message = refusal("classifier_sample", argv)
    assert message.startswith("--guidance_interval 100,200 contains none of the 3 sampling steps' "
                              "noise levels sigma/alpha (")  # fmt: skip
    levels = [float(v) for v in re.search(r"sigma/alpha \(([^)]*)\)", message).group(1).split(", ")]
    assert len(levels) == 3 and not any(100 < v <= 200 for v in levels)
    assert not [n for n in os.listdir(log_dir) if n.startswith("samples_")]  # nothing sampled

    # the advice: an interval around one of the levels named, or none at all
    lo, hi = levels[1] / 2, levels[1] * 2
    run_program("classifier_sample", replace_flag(argv, "--guidance_interval", f"{lo},{hi}"))
    run_program("classifier_sample", replace_flag(argv, "--guidance_interval", ""))
    assert (log_dir / "samples_2x16x16x3.npz").exists()


# ---------------------------------------------------------------- advice that works (item 9)


def advice_flags(message: str) -> set[str]:
    """The flags a message's advice names: those after its first ': ' or '; '."""
    advice = re.split(r"[:;] ", message, maxsplit=1)[1]
    return set(re.findall(r"--\w+", advice))


def test_every_suggestion_of_these_messages_is_accepted_when_followed(ckpt, images, log_dir):
    """Each case: a bad command, the suggestions its message makes, each followed and run."""
    # 1. --timestep_respacing ddim1: a 'ddimN' and a plain count
    argv = sample_args(ckpt, "cond", "--timestep_respacing", "ddim1")
    message = refusal("image_sample", argv)
    suggested = re.findall(r"'(ddim\d+|\d+)'", message.split("; use ")[1])
    assert suggested == ["ddim2", "2"], message
    for value in suggested:
        run_program("image_sample", replace_flag(argv, "--timestep_respacing", value))

    # 2. image_edit --guidance_scale 2 on a model without a null class: scale 1, or a classifier
    argv = edit_args(ckpt, images, "cond", "--guidance_scale", "2")
    message = refusal("image_edit", argv)
    assert "--guide_model_path" not in message  # image_edit has no autoguidance
    assert advice_flags(message) == {"--guidance_scale", "--classifier_path"}, message
    assert "use --guidance_scale 1," in message
    run_program("image_edit", replace_flag(argv, "--guidance_scale", "1"))
    run_program("image_edit", drop_flag(argv, "--guidance_scale") + classifier_flags(ckpt))

    # 3. classifier_sample without --classifier_path: named, not an image-size problem
    argv = sample_args(ckpt, "cond", *flags(CLASSIFIER))
    message = refusal("classifier_sample", argv)
    assert message.startswith("--classifier_path is required") and "size" not in message
    run_program("classifier_sample", argv + ["--classifier_path", ckpt["classifier"]])

    # 4. ddim_invert --mode decode given a PNG: no numpy advice; encode it first, then decode
    png = str(images / "one.png")
    argv = [*model_flags(ckpt), "--mode", "decode", "--input", png, "--batch_size", "2"]
    message = refusal("ddim_invert", argv)
    assert "pickle" not in message.replace("pickled objects, which are never loaded", "")
    assert "run --mode encode on them first and decode the inverted_*.npz it writes" in message
    run_program("ddim_invert", replace_flag(argv, "--mode", "encode"))
    (encoded,) = [n for n in os.listdir(log_dir) if n.startswith("inverted_") and n.endswith(".npz")]
    shutil.move(log_dir / encoded, log_dir.parent / encoded)
    run_program("ddim_invert", replace_flag(argv, "--input", str(log_dir.parent / encoded)))
    assert (log_dir / "samples_1x16x16x3.npz").exists()

    # 5. --seed -1: the range named, and its low end accepted
    argv = sample_args(ckpt, "cond", "--seed", "-1")
    message = refusal("image_sample", argv)
    low = re.search(r"--seed must be an integer in (\d+)\.\.", message).group(1)
    run_program("image_sample", replace_flag(argv, "--seed", low))


# ---------------------------------------------------------------- choices said (item 10)


def test_the_programs_say_how_they_resize_inputs_and_read_masks(ckpt, images, log_dir):
    argv = [*model_flags(ckpt), "--input", str(images / "folder"), "--mask", str(images / "mask.png"),
            "--repaint_jump_length", "1", "--repaint_jump_n_sample", "1"]  # fmt: skip
    run_program("image_edit", argv)
    text = log_text(log_dir)
    assert (f"--input {images / 'folder'}: 2 of 2 images are not 16x16 (the first is 24x20): each "
            "is scaled to a shorter side of 16 and centre-cropped to 16x16") in text  # fmt: skip
    assert (f"--mask {images / 'mask.png'}: known where its first (red) channel is >= 128, hidden "
            "elsewhere: 96 of 256 pixels known") in text  # fmt: skip
    help_text = import_script("image_edit").create_argparser().format_help()
    assert "known where its first (red) channel is >= 128" in " ".join(help_text.split())


def test_a_respacing_that_starts_far_from_pure_noise_is_said(ckpt, log_dir):
    run_program("image_sample", sample_args(ckpt, "cond", "--timestep_respacing", "3,0"))
    assert ("--timestep_respacing 3,0 keeps the steps 0, 4, 9 of 0..19: sampling starts from "
            "pure noise at t = 9, where the process still holds sqrt(alpha_bar) = ") in log_text(log_dir)  # fmt: skip
    logger.reset()
    run_program("image_sample", sample_args(ckpt, "cond", "--timestep_respacing", "3"))
    assert "sampling starts from pure noise at t = 19" not in log_text(log_dir)


# ---------------------------------------------------------------- documentation (item 16)


@pytest.mark.parametrize("program", ["image_sample", "classifier_sample", "super_res_sample"])
def test_sampling_help_says_the_file_does_not_depend_on_the_batch_size(program):
    text = " ".join(import_script(program).create_argparser().format_help().split())
    assert "the same seed and --batch_size give" not in text
    assert "the same seed gives the same file whatever --batch_size and the number of ranks" in text


def test_the_benchmarks_describe_the_demo_as_it_is():
    text = open(os.path.join(os.path.dirname(__file__), "..", "docs", "benchmarks.md")).read()
    section = text.split("## The demo's time")[1].split("\n## ")[0]
    defaults = import_script("demo").create_argparser().parse_args([])
    assert "74 min" not in section and "2,000 steps" not in section
    assert f"{defaults.train_steps:,} diffusion training steps of {defaults.batch_size} images" in section
    assert f"{defaults.classifier_steps} classifier steps, {defaults.num_samples}" in section
    assert f"{defaults.steps} `{defaults.sampler}` sampling steps" in section
