"""
Smoke runs of the editing programs (scripts/image_edit.py with every method,
scripts/ddim_invert.py both ways) on the tiny checkpoints of test_sample_scripts, for
two or three steps; one run on two ranks; and bad input ending with one line, exit 1 and
nothing written.
"""

import json
import os

import numpy as np
import pytest
from PIL import Image

from guided_diffusion.script_errors import SamplingInputError

from conftest import MODEL, NUM_CLASSES, flags, import_script, load, randomise_zero_init, run

STEPS = ["--timestep_respacing", "2"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A .npz of 5 16x16 images with labels, and a folder of 2 PNG files."""
    root = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 16, 16, 3), dtype=np.uint8)
    np.savez(root / "images.npz", arr_0=images, arr_1=np.arange(5) % NUM_CLASSES)
    (root / "folder").mkdir()
    for i in range(2):
        Image.fromarray(images[i]).save(root / "folder" / f"img{i}.png")
    mask = np.full((16, 16), 255, np.uint8)
    mask[:, 8:] = 0
    Image.fromarray(mask).save(root / "mask.png")
    Image.fromarray(mask[:8]).save(root / "small_mask.png")
    return root


@pytest.fixture(scope="module")
def configured(ckpt, tmp_path_factory):
    """The unconditional checkpoint with its run configuration beside it."""
    import argparse
    import shutil

    from guided_diffusion import run_config, script_util

    path = str(tmp_path_factory.mktemp("configured") / "model.pt")
    shutil.copy(ckpt["uncond"], path)
    values = {**script_util.model_and_diffusion_defaults(), **MODEL, "class_cond": False}
    run_config.write_run_config(path, run_config.make_run_config("model", argparse.Namespace(**values)))
    return path


def edit_flags(ckpt, inputs, model="uncond", *extra) -> list[str]:
    return [
        *flags(MODEL), "--class_cond", str(model == "cond"), *STEPS, "--model_path", ckpt[model],
        "--input", str(inputs / "images.npz"), "--batch_size", "2", "--seed", "3", *extra,
    ]  # fmt: skip


@pytest.mark.parametrize(
    "method,extra",
    [
        ("repaint", ["--operator", "inpaint", "--mask", "half", "--repaint_jump_length", "1"]),
        ("sdedit", ["--operator", "none", "--sdedit_repeats", "2"]),
        ("ilvr", ["--operator", "none", "--ilvr_down_n", "4"]),
        ("dps", ["--operator", "sr_bicubic", "--sigma_y", "0.05"]),
        ("ddnm", ["--operator", "colorize"]),
    ],
)
def test_image_edit_each_method(configured, inputs, tmp_path, method, extra):
    # the model flags come from the run configuration beside the checkpoint
    argv = [
        "--model_path", configured, *STEPS, "--input", str(inputs / "images.npz"),
        "--batch_size", "2", "--seed", "3", "--method", method, *extra,
    ]  # fmt: skip
    result = run("image_edit.py", argv, tmp_path)
    out = load(tmp_path / "edited_5x16x16x3.npz")
    assert out["arr_0"].dtype == np.uint8 and out["arr_0"].shape == (5, 16, 16, 3)
    assert np.array_equal(out["input"], load(inputs / "images.npz")["arr_0"])
    assert out["degraded"].shape == (5, 16, 16, 3) and "arr_1" not in out
    grid = np.asarray(Image.open(tmp_path / "edited_5x16x16x3.png"))
    assert grid.shape == (2 * 18 + 2, 3 * (3 * 16 + 4 + 2) + 2, 3)  # 3 columns of triplets
    assert "PSNR" in result.stdout and "s per image" in result.stdout
    with open(tmp_path / "edited_5x16x16x3.json") as f:
        metrics = json.load(f)
    assert metrics["method"] == method and metrics["images"] == 5
    assert 0 < metrics["psnr"] < 60 and metrics["seconds_per_image"] > 0


def guided_repaint_flags(ckpt, inputs) -> list[str]:
    return edit_flags(
        ckpt, inputs, "uncond", "--method", "repaint", "--mask", str(inputs / "mask.png"),
        "--classifier_path", ckpt["classifier"], "--classifier_scale", "1.0",
        "--classifier_width", "32", "--classifier_depth", "1",
        "--classifier_attention_resolutions", "8", "--classifier_channel_mult", "1,2",
        "--repaint_paste", "True",
    )  # fmt: skip


def test_image_edit_mask_file_classifier_and_paste(ckpt, inputs, tmp_path):
    run("image_edit.py", guided_repaint_flags(ckpt, inputs), tmp_path)
    out = load(tmp_path / "edited_5x16x16x3.npz")
    assert np.array_equal(out["arr_1"], np.arange(5) % NUM_CLASSES)  # the input's labels
    assert np.array_equal(out["arr_0"][:, :, :8], out["input"][:, :, :8])  # pasted
    assert not np.array_equal(out["arr_0"][:, :, 8:], out["input"][:, :, 8:])


@pytest.mark.slow
def test_image_edit_same_result_alone_and_on_two_ranks(ckpt, inputs, tmp_path):
    run("image_edit.py", guided_repaint_flags(ckpt, inputs), tmp_path / "one")
    run("image_edit.py", guided_repaint_flags(ckpt, inputs), tmp_path / "two", launcher="torchrun")
    one = load(tmp_path / "one" / "edited_5x16x16x3.npz")
    two = load(tmp_path / "two" / "edited_5x16x16x3.npz")
    assert np.array_equal(one["arr_0"], two["arr_0"]) and np.array_equal(one["arr_1"], two["arr_1"])


@pytest.fixture(scope="module")
def cfg_ckpt(tmp_path_factory):
    """A tiny conditional checkpoint with the null-class row (--class_dropout_prob 0.2)."""
    import torch

    from guided_diffusion import script_util

    torch.manual_seed(0)
    values = {**script_util.model_and_diffusion_defaults(), **MODEL}
    model, _ = script_util.create_model_and_diffusion(
        **{**values, "class_cond": True, "class_dropout_prob": 0.2}
    )
    randomise_zero_init(model)
    path = str(tmp_path_factory.mktemp("cfg") / "cfg.pt")
    torch.save(model.state_dict(), path)
    return path


def test_image_edit_guidance_scale_0_withholds_the_labels(ckpt, cfg_ckpt, inputs, tmp_path):
    def edited(label: str, scale: str) -> np.ndarray:
        argv = edit_flags(
            {"cond": cfg_ckpt}, inputs, "cond", "--class_dropout_prob", "0.2", "--method",
            "ddnm", "--operator", "sr_avgpool", "--sr_factor", "2", "--class_labels", label,
            "--guidance_scale", scale,
        )  # fmt: skip
        out = tmp_path / f"{label}_{scale}"
        run("image_edit.py", argv, out)
        return load(out / "edited_5x16x16x3.npz")["arr_0"]

    assert not np.array_equal(edited("0", "1"), edited("1", "1"))  # conditional: labels count
    assert np.array_equal(edited("0", "0"), edited("1", "0"))  # the null class alone
    argv = edit_flags(ckpt, inputs, "cond", "--method", "ddnm", "--guidance_scale", "0")
    result = run("image_edit.py", argv, tmp_path / "refused", check=False)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--class_dropout_prob > 0" in lines[0], lines


def test_ddim_invert_encode_then_decode(ckpt, inputs, tmp_path):
    common = [*flags(MODEL), "--class_cond", "True", *STEPS, "--model_path", ckpt["cond"]]
    encoded = run(
        "ddim_invert.py", [*common, "--input", str(inputs / "folder"), "--class_labels", "2"],
        tmp_path / "enc",
    )  # fmt: skip
    assert "round-trip error" in encoded.stdout
    noise = load(tmp_path / "enc" / "inverted_2x3x16x16.npz")
    assert noise["arr_0"].dtype == np.float32 and noise["arr_1"].tolist() == [2, 2]
    assert os.path.exists(tmp_path / "enc" / "inverted_2x3x16x16.png")
    run(
        "ddim_invert.py",
        [*common, "--mode", "decode", "--input", str(tmp_path / "enc" / "inverted_2x3x16x16.npz")],
        tmp_path / "dec",
    )  # fmt: skip
    decoded = load(tmp_path / "dec" / "samples_2x16x16x3.npz")
    assert np.array_equal(decoded["arr_0"], noise["decoded"])  # same labels, same images
    assert decoded["arr_1"].tolist() == [2, 2]


def test_ddim_invert_uses_the_classifier_both_ways(ckpt, inputs, tmp_path):
    classifier = [
        "--classifier_path", ckpt["classifier"], "--classifier_scale", "1.0",
        "--classifier_width", "32", "--classifier_depth", "1",
        "--classifier_attention_resolutions", "8", "--classifier_channel_mult", "1,2",
    ]  # fmt: skip
    common = [*flags(MODEL), "--class_cond", "False", *STEPS, "--model_path", ckpt["uncond"],
              "--input", str(inputs / "folder"), "--class_labels", "1"]  # fmt: skip
    guided = run("ddim_invert.py", [*common, *classifier], tmp_path / "guided")
    run("ddim_invert.py", common, tmp_path / "plain")
    assert "with classifier guidance at scale 1.0 both ways" in guided.stdout
    noise, plain = (load(tmp_path / f / "inverted_2x3x16x16.npz") for f in ("guided", "plain"))
    # the inversion followed the guided ODE (it ignored the classifier before)
    assert not np.allclose(noise["arr_0"], plain["arr_0"])
    assert noise["arr_1"].tolist() == [1, 1]


def test_image_edit_bad_mask_one_line_exit_1_nothing_written(ckpt, inputs, tmp_path):
    argv = edit_flags(ckpt, inputs, "uncond", "--mask", str(inputs / "small_mask.png"))
    result = run("image_edit.py", argv, tmp_path / "out", check=False)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "mask is 16x8 pixels but the images are 16x16" in lines[0], lines
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--method", "dps", "--operator", "sr_avgpool", "--sr_factor", "3"], "--sr_factor 3"),
        (["--method", "ddnm", "--operator", "blur"], "DDNM needs an operator with a pseudo-inverse"),
        (["--method", "repaint", "--operator", "colorize"], "it needs --operator inpaint"),
        (["--method", "magic"], "--method 'magic' is not one of"),
        (["--mask", "star"], "--mask 'star' is neither an image file nor one of"),
        (["--input", "MISSING"], "no such file"),
    ],
)
def test_image_edit_bad_input_fails_before_any_work(ckpt, inputs, tmp_path, monkeypatch, extra, message):
    from guided_diffusion import dist_util

    monkeypatch.setattr(dist_util, "setup_dist", lambda: pytest.fail("got past the checks"))
    extra = [str(tmp_path / "x.npz") if a == "MISSING" else a for a in extra]
    with pytest.raises((SamplingInputError, FileNotFoundError), match=message):
        import_script("image_edit").main(edit_flags(ckpt, inputs, "uncond", *extra))


def test_psnr_over_a_region():
    from guided_diffusion.edit_util import psnr

    target = np.zeros((2, 3, 4, 4))
    result = target.copy()
    result[:, :, 2:] = 0.2  # errors only in the lower half
    hidden = np.zeros((1, 1, 4, 4))
    hidden[..., 2:, :] = 1
    assert psnr(result, target, hidden) == pytest.approx(10 * np.log10(4 / 0.04))
    assert psnr(result, target) == pytest.approx(10 * np.log10(4 / 0.02))


def test_read_images_from_npz_folder_and_file(inputs):
    from guided_diffusion.edit_util import read_images

    images, labels = read_images(str(inputs / "images.npz"), 16, limit=3)
    assert images.shape == (3, 16, 16, 3) and labels.tolist() == [0, 1, 2]
    folder, none = read_images(str(inputs / "folder"), 16)
    assert none is None and np.array_equal(folder, images[:2])
    one, _ = read_images(str(inputs / "folder" / "img1.png"), 8)
    assert one.shape == (1, 8, 8, 3)
    with pytest.raises(SamplingInputError, match="the model takes 8x8"):
        read_images(str(inputs / "images.npz"), 8)


def test_edit_flag_help_names_every_method_operator_and_mask():
    from guided_diffusion import edit_flags as editing_flags, operators

    help_text = editing_flags.EDIT_FLAG_HELP
    assert all(name in help_text["method"] for name in editing_flags.EDIT_METHODS)
    assert all(name in help_text["operator"] for name in operators.OPERATOR_NAMES)
    assert all(name in help_text["mask"] for name in operators.MASK_NAMES)
    parser = import_script("image_edit").create_argparser()
    assert "RePaint: steps per jump back (paper: 10)" in parser.format_help()


def test_out_of_range_labels_name_where_the_class_count_comes_from():
    from guided_diffusion.edit_util import image_labels

    origin = "the 3 classes of the training folder, from runs/model.json"
    with pytest.raises(SamplingInputError, match="outside 0..2 \\(the 3 classes of the training"):
        image_labels("", np.array([0, 5]), 2, 3, seed=0, origin=origin)
    with pytest.raises(SamplingInputError, match="0..2 \\(the 3 classes of the training folder"):
        image_labels("1,4", None, 2, 3, seed=0, origin=origin)
    with pytest.raises(SamplingInputError, match="\\(--num_classes 3\\)"):
        image_labels("", np.array([7]), 1, 3, seed=0)
    assert image_labels("1,2", None, 3, 3, seed=0).tolist() == [1, 2, 1]


@pytest.mark.parametrize("grid", ["trailing3", "karras3"])
def test_editing_programs_take_the_named_grids(ckpt, inputs, tmp_path, grid):
    """The grids are --timestep_respacing forms, so the editing programs have them too."""
    args = edit_flags(ckpt, inputs, "uncond", "--method", "sdedit", "--operator", "none",
                      "--sdedit_repeats", "1", "--num_samples", "2")  # fmt: skip
    args[args.index("--timestep_respacing") + 1] = grid
    run("image_edit.py", args, tmp_path / "edit")
    common = [*flags(MODEL), "--class_cond", "True", "--timestep_respacing", grid,
              "--model_path", ckpt["cond"], "--input", str(inputs / "folder"), "--class_labels", "2"]
    assert "round-trip error" in run("ddim_invert.py", common, tmp_path / "invert").stdout
