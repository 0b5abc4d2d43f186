"""
Smoke runs of the sampling scripts on tiny checkpoints made here: image_sample.py,
classifier_sample.py, super_res_sample.py and image_nll.py run as subprocesses (one and
two ranks) for a batch or two; npz_to_png.py and the flag parsing run in-process.
"""

import os
import shlex

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import (
    CLASSIFIER,
    MODEL,
    NUM_CLASSES,
    RESPACE,
    RESPACED_STEPS,
    SUPER_RES,
    flags,
    import_script,
    load,
    run,
    sample_flags,
)

# ---------------------------------------------------------------- image_sample.py


def test_image_sample_same_file_alone_and_with_two_ranks(ckpt, tmp_path):
    run("image_sample.py", sample_flags(ckpt), tmp_path / "one")
    result = run("image_sample.py", sample_flags(ckpt), tmp_path / "two", launcher="torchrun")
    assert "wrote 5 samples" in result.stdout and "2 rank(s)" in result.stdout

    one = load(tmp_path / "one" / "samples_5x16x16x3.npz")
    two = load(tmp_path / "two" / "samples_5x16x16x3.npz")
    assert sorted(one) == ["arr_0", "arr_1"]
    assert one["arr_0"].dtype == np.uint8 and one["arr_0"].shape == (5, 16, 16, 3)
    assert one["arr_1"].dtype == np.int64 and one["arr_1"].shape == (5,)
    assert one["arr_1"].min() >= 0 and one["arr_1"].max() < NUM_CLASSES
    assert one["arr_0"].std() > 5  # not a blank batch
    # the same seed gives the same file, whether one rank or two drew it
    assert np.array_equal(one["arr_0"], two["arr_0"]) and np.array_equal(one["arr_1"], two["arr_1"])
    grid = np.asarray(Image.open(tmp_path / "one" / "samples_5x16x16x3.png"))
    assert grid.shape == (2 * 18 + 2, 3 * 18 + 2, 3)  # 5 images: 3 columns, 2 rows, 2 px gaps
    assert sorted(p for p in os.listdir(tmp_path / "two") if p.startswith("samples")) == [
        "samples_5x16x16x3.npz",
        "samples_5x16x16x3.png",
    ]  # rank 1 wrote nothing else


@pytest.mark.slow
def test_image_sample_exact_count_under_mpiexec(ckpt, tmp_path):
    run("image_sample.py", sample_flags(ckpt, num_samples=3, batch_size=2), tmp_path / "one")
    run(
        "image_sample.py",
        sample_flags(ckpt, num_samples=3, batch_size=2),
        tmp_path / "mpi",
        launcher="mpiexec",
    )
    one, mpi = (load(tmp_path / d / "samples_3x16x16x3.npz") for d in ("one", "mpi"))
    assert np.array_equal(one["arr_0"], mpi["arr_0"]) and np.array_equal(one["arr_1"], mpi["arr_1"])


def test_image_sample_unconditional_ddim_without_grid(ckpt, tmp_path):
    args = sample_flags(ckpt, model="uncond", num_samples=3, batch_size=4) + [
        "--use_ddim",
        "True",
        "--grid",
        "False",
    ]
    run("image_sample.py", args, tmp_path)
    arrays = load(tmp_path / "samples_3x16x16x3.npz")
    assert list(arrays) == ["arr_0"] and arrays["arr_0"].shape == (3, 16, 16, 3)
    assert not (tmp_path / "samples_3x16x16x3.png").exists()


@pytest.mark.gpu
def test_fp16_sampling_on_gpu(ckpt, tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    args = sample_flags(ckpt) + ["--use_fp16", "True"]
    result = run("image_sample.py", args, tmp_path / "fp16", gpu=True)
    assert "needs a CUDA device" not in result.stdout
    arrays = load(tmp_path / "fp16" / "samples_5x16x16x3.npz")
    assert arrays["arr_0"].shape == (5, 16, 16, 3) and arrays["arr_0"].std() > 5


# ---------------------------------------------------------------- classifier_sample.py


def test_classifier_guidance_changes_samples_and_keeps_labels(ckpt, tmp_path):
    # an unconditional model on CPU with the published fp16 flags: labels go to the classifier only
    common = sample_flags(ckpt, model="uncond", num_samples=4, batch_size=4) + [
        *flags(CLASSIFIER),
        "--classifier_path",
        ckpt["classifier"],
        "--class_labels",
        "0,3",
        "--use_fp16",
        "True",
        "--classifier_use_fp16",
        "True",
    ]
    plain = run("classifier_sample.py", common + ["--classifier_scale", "0"], tmp_path / "plain")
    run("classifier_sample.py", common + ["--classifier_scale", "100"], tmp_path / "guided")
    assert "--use_fp16 True needs a CUDA device" in plain.stdout

    plain, guided = (load(tmp_path / d / "samples_4x16x16x3.npz") for d in ("plain", "guided"))
    assert plain["arr_1"].tolist() == guided["arr_1"].tolist() == [0, 3, 0, 3]
    assert plain["arr_1"].dtype == np.int64
    assert np.abs(plain["arr_0"].astype(int) - guided["arr_0"]).mean() > 1


def test_published_classifier_command_line_parses_unchanged():
    model_flags = (
        "--attention_resolutions 32,16,8 --class_cond True --diffusion_steps 1000 --image_size 256 "
        "--learn_sigma True --noise_schedule linear --num_channels 256 --num_head_channels 64 "
        "--num_res_blocks 2 --resblock_updown True --use_fp16 True --use_scale_shift_norm True"
    )
    command = (
        f"{model_flags} --classifier_scale 1.0 --classifier_path models/256x256_classifier.pt "
        "--model_path models/256x256_diffusion.pt "
        "--batch_size 4 --num_samples 100 --timestep_respacing 250"
    )
    args = import_script("classifier_sample").create_argparser().parse_args(shlex.split(command))
    assert (args.classifier_scale, args.batch_size, args.num_samples, args.timestep_respacing) == (
        1.0,
        4,
        100,
        "250",
    )
    assert args.use_fp16 is True and args.class_cond is True and args.image_size == 256
    assert args.model_path == "models/256x256_diffusion.pt"
    # the original defaults of everything not on the command line
    assert (args.clip_denoised, args.use_ddim, args.seed, args.grid) == (True, False, None, True)
    assert args.classifier_width == 128 and args.classifier_pool == "attention"


def test_original_defaults_of_every_script():
    expected = {
        "image_sample": dict(
            clip_denoised=True, num_samples=10000, batch_size=16, use_ddim=False, model_path=""
        ),
        "super_res_sample": dict(
            clip_denoised=True,
            num_samples=10000,
            batch_size=16,
            use_ddim=False,
            base_samples="",
            model_path="",
            large_size=256,
            small_size=64,
        ),
        "image_nll": dict(
            data_dir="", clip_denoised=True, num_samples=1000, batch_size=1, model_path=""
        ),
        "classifier_sample": dict(
            classifier_path="", classifier_scale=1.0, num_samples=10000, batch_size=16
        ),
    }
    for name, values in expected.items():
        args = vars(import_script(name).create_argparser().parse_args([]))
        assert {k: args[k] for k in values} == values, name


# ---------------------------------------------------------------- super_res_sample.py


def test_super_res_upsamples_in_order_with_two_ranks(ckpt, tmp_path):
    base = tmp_path / "base.npz"
    images = np.random.default_rng(0).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    np.savez(base, arr_0=images, arr_1=np.array([3, 1, 2]))
    sr_flags = [
        *flags(SUPER_RES),
        *RESPACE,
        "--model_path",
        ckpt["sr"],
        "--base_samples",
        str(base),
        "--batch_size",
        "1",
        "--seed",
        "0",
    ]
    result = run("super_res_sample.py", sr_flags, tmp_path / "out", launcher="torchrun")
    assert "upsampling all 3" in result.stdout  # --num_samples 10000 capped at the file's size
    arrays = load(tmp_path / "out" / "samples_3x32x32x3.npz")
    assert arrays["arr_0"].shape == (3, 32, 32, 3) and arrays["arr_0"].dtype == np.uint8
    assert arrays["arr_1"].tolist() == [3, 1, 2]  # labels (and their images) in the base order


# ---------------------------------------------------------------- image_nll.py


def test_image_nll_on_a_folder(ckpt, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(
            data / f"img_{i}.png"
        )
    args = [
        *flags(MODEL),
        "--class_cond",
        "False",
        *RESPACE,
        "--model_path",
        ckpt["uncond"],
        "--data_dir",
        str(data),
        "--num_samples",
        "3",
        "--batch_size",
        "2",
        "--seed",
        "0",
    ]
    result = run("image_nll.py", args, tmp_path / "log")
    rounds = [line for line in result.stdout.splitlines() if "running mean" in line]
    assert len(rounds) == 2 and rounds[-1].startswith("3/3 images")
    final = [line for line in result.stdout.splitlines() if line.startswith("bits/dim:")]
    assert len(final) == 1 and "over 3 images" in final[0]
    bpd = float(final[0].split()[1])
    assert 0 < bpd < 100 and np.isfinite(bpd)
    # the original's per-timestep term files, one mean per (respaced) timestep
    for name in ("vb", "mse", "xstart_mse"):
        with np.load(tmp_path / "log" / f"{name}_terms.npz") as terms:
            assert terms["arr_0"].shape == (RESPACED_STEPS,)
            assert np.isfinite(terms["arr_0"]).all()
    result = run("image_nll.py", args + ["--save_terms", "False"], tmp_path / "quiet")
    assert not [p for p in os.listdir(tmp_path / "quiet") if p.endswith(".npz")]


# ---------------------------------------------------------------- bad input


def test_missing_checkpoint_names_the_file(ckpt, tmp_path):
    args = sample_flags(ckpt) + ["--model_path", str(tmp_path / "missing.pt")]
    result = run("image_sample.py", args, tmp_path, check=False)
    assert result.returncode != 0
    assert "--model_path" in result.stderr and "missing.pt" in result.stderr
    assert "Traceback" not in result.stderr
    assert not [p for p in os.listdir(tmp_path) if p.startswith("samples")]


def test_checkpoint_that_does_not_fit_names_the_flag(ckpt, tmp_path):
    args = sample_flags(ckpt) + ["--learn_sigma", "False"]
    result = run("image_sample.py", args, tmp_path, check=False)
    assert result.returncode != 0
    assert "cond.pt" in result.stderr and "--learn_sigma True" in result.stderr
    assert not [p for p in os.listdir(tmp_path) if p.startswith("samples")]


def test_base_samples_without_images(ckpt, tmp_path):
    base = tmp_path / "base.npz"
    np.savez(base, images=np.zeros((2, 16, 16, 3), np.uint8))
    args = [*flags(SUPER_RES), *RESPACE, "--model_path", ckpt["sr"], "--base_samples", str(base)]
    result = run("super_res_sample.py", args, tmp_path, check=False)
    assert result.returncode != 0 and "no arr_0" in result.stderr and "base.npz" in result.stderr
    assert not [p for p in os.listdir(tmp_path) if p.startswith("samples")]


@pytest.mark.parametrize(
    "script, argv, message",
    [
        ("image_sample", ["--num_samples", "0"], "--num_samples must be a positive integer, got 0"),
        ("classifier_sample", ["--batch_size", "-2"], "--batch_size must be a positive integer"),
        ("super_res_sample", ["--num_samples", "-1"], "--num_samples"),
        ("image_nll", ["--num_samples", "0"], "--num_samples"),
        (
            "image_sample",
            ["--class_cond", "True", "--num_classes", "4", "--class_labels", "1,4"],
            "0..3",
        ),
        ("image_sample", ["--class_labels", "1"], "--class_cond True"),
    ],
)
def test_bad_flags_fail_before_any_work(script, argv, message):
    from guided_diffusion.script_errors import SamplingInputError

    with pytest.raises(SamplingInputError, match=message):
        import_script(script).main(argv)


# ---------------------------------------------------------------- npz_to_png.py


def test_npz_to_png_writes_one_file_per_image(tmp_path, capsys):
    images = np.random.default_rng(0).integers(0, 256, (3, 6, 5, 3), dtype=np.uint8)
    np.savez(tmp_path / "samples_3x6x5x3.npz", arr_0=images, arr_1=np.array([7, 0, 7]))
    tool = import_script("npz_to_png")
    tool.main([str(tmp_path / "samples_3x6x5x3.npz"), "--grid", "True"])
    out = tmp_path / "samples_3x6x5x3_png"
    assert sorted(os.listdir(out)) == [
        "000000_class7.png",
        "000001_class0.png",
        "000002_class7.png",
        "grid.png",
    ]
    assert np.array_equal(np.asarray(Image.open(out / "000001_class0.png")), images[1])
    assert "wrote 3 PNG files" in capsys.readouterr().out

    np.savez(tmp_path / "ref.npz", arr_0=images[..., 0], mu=np.zeros(4))  # grey, no labels
    tool.main([str(tmp_path / "ref.npz"), "--out_dir", str(tmp_path / "ref"), "--limit", "2"])
    assert sorted(os.listdir(tmp_path / "ref")) == ["000000.png", "000001.png"]
    assert np.array_equal(
        np.asarray(Image.open(tmp_path / "ref" / "000000.png")), images[0, ..., 0]
    )
    with pytest.raises(ValueError, match="no array named 'arr_9'"):
        tool.main([str(tmp_path / "ref.npz"), "--key", "arr_9"])


def test_npz_to_png_streams_in_chunks_and_rejects_empty_batches(tmp_path, monkeypatch):
    from guided_diffusion import npz_batch, sample_io

    images = np.random.default_rng(1).integers(0, 256, (7, 4, 4, 3), dtype=np.uint8)
    np.savez(tmp_path / "b.npz", arr_0=images)
    reads = []
    real_iter = npz_batch.iter_npz_images

    def small_chunks(path, key="arr_0", limit=0, chunk_size=256):
        for chunk in real_iter(path, key, limit, chunk_size=3):
            reads.append(len(chunk[0]))
            yield chunk

    monkeypatch.setattr(npz_batch, "iter_npz_images", small_chunks)
    tool = import_script("npz_to_png")
    tool.main([str(tmp_path / "b.npz"), "--out_dir", str(tmp_path / "all"), "--grid", "True", "--grid_size", "4"])
    assert reads == [3, 3, 1]  # never more than one chunk in memory
    names = sorted(os.listdir(tmp_path / "all"))
    assert names == [f"{i:06d}.png" for i in range(7)] + ["grid.png"]
    assert np.array_equal(np.asarray(Image.open(tmp_path / "all" / "000006.png")), images[6])
    grid = np.asarray(Image.open(tmp_path / "all" / "grid.png"))
    assert np.array_equal(grid, sample_io.image_grid(images[:4]))
    reads.clear()
    tool.main([str(tmp_path / "b.npz"), "--out_dir", str(tmp_path / "two"), "--limit", "2"])
    assert reads == [2]  # the limit stops reading

    np.savez(tmp_path / "empty.npz", arr_0=np.zeros((0, 4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="holds no images"):
        tool.main([str(tmp_path / "empty.npz"), "--grid", "True"])
