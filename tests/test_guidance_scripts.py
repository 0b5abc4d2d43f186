"""
--guidance_scale and --guide_model_path in the sampling scripts, on tiny checkpoints: scale 1
writes the very file plain sampling writes, classifier-free guidance changes the images but
not the labels, a model guiding itself is plain sampling, and a model without a null class
is refused with one line.
"""

import argparse

import numpy as np
import pytest
import torch

from guided_diffusion import model_loading, run_config, sample_util, script_util, shards
from guided_diffusion.checkpoint_diagnosis import CheckpointMismatchError
from guided_diffusion.guidance import AutoGuidance, ClassifierFreeGuidance
from guided_diffusion.script_errors import SamplingInputError
from guided_diffusion.samplers import EvaluationCounts
from conftest import MODEL, import_script, load, randomise_zero_init, run, sample_flags

SAMPLES = "samples_4x16x16x3.npz"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """Tiny conditional checkpoints: "cond" without and "cfg" with the null-class row."""
    root = tmp_path_factory.mktemp("guidance_ckpt")
    paths = {}
    for name, prob in (("cond", 0.0), ("cfg", 0.2)):
        torch.manual_seed(0)
        flags = {**script_util.model_and_diffusion_defaults(), **MODEL}
        model, _ = script_util.create_model_and_diffusion(
            **{**flags, "class_cond": True, "class_dropout_prob": prob}
        )
        randomise_zero_init(model)
        paths[name] = str(root / f"{name}.pt")
        torch.save(model.state_dict(), paths[name])
    return paths


def cfg_flags(ckpt, *extra: str) -> list[str]:
    return sample_flags(ckpt, model="cfg", num_samples=4, batch_size=4) + [
        "--class_cond",
        "True",
        "--class_dropout_prob",
        "0.2",
        "--class_labels",
        "0,1,2,3",
        *extra,
    ]


@pytest.fixture(scope="module")
def plain(ckpt, tmp_path_factory):
    """The samples file of plain conditional sampling (no guidance flags)."""
    log_dir = tmp_path_factory.mktemp("plain")
    run("image_sample.py", cfg_flags(ckpt), log_dir)
    return log_dir / SAMPLES


@pytest.mark.slow
def test_classifier_free_guidance_in_image_sample(ckpt, plain, tmp_path):
    run("image_sample.py", cfg_flags(ckpt, "--guidance_scale", "1"), tmp_path / "one")
    run("image_sample.py", cfg_flags(ckpt, "--guidance_scale", "4"), tmp_path / "four")
    assert (tmp_path / "one" / SAMPLES).read_bytes() == plain.read_bytes()
    four, plain = load(tmp_path / "four" / SAMPLES), load(plain)
    assert four["arr_1"].tolist() == plain["arr_1"].tolist() == [0, 1, 2, 3]
    assert np.abs(four["arr_0"].astype(int) - plain["arr_0"]).mean() > 1


@pytest.mark.slow
def test_a_model_guiding_itself_writes_the_plain_samples(ckpt, plain, tmp_path):
    auto = cfg_flags(ckpt, "--guidance_scale", "3", "--guide_model_path", ckpt["cfg"])
    result = run("image_sample.py", auto, tmp_path)
    assert "autoguidance" in result.stdout
    assert np.array_equal(load(plain)["arr_0"], load(tmp_path / SAMPLES)["arr_0"])


def test_guidance_flags_pick_the_wrapper(ckpt):
    parser = import_script("image_sample").create_argparser()
    args = parser.parse_args(cfg_flags(ckpt))
    model, diffusion = model_loading.load_model_and_diffusion(args)
    assert sample_util.guided_model_fn(args, model, diffusion) is model  # scale 1: untouched
    args.guidance_scale = 2.0
    assert isinstance(sample_util.guided_model_fn(args, model, diffusion), ClassifierFreeGuidance)
    args.guidance_interval = "0.5,2"  # the sampling programs' --guidance_interval, parsed once
    interval = sample_util.sampler_setting(args).guidance_interval
    active = sample_util.guided_model_fn(args, model, diffusion, interval=interval).active
    assert active(torch.tensor([0, 999])).tolist() == [False, False]  # sigma/alpha ~0 and huge
    args.guidance_interval = "2,1"
    with pytest.raises(SamplingInputError, match="--guidance_interval"):
        sample_util.sampler_setting(args)
    args.guide_model_path = ckpt["cond"]  # a guide needs no null class, but the same layout
    with pytest.raises(CheckpointMismatchError, match="--class_dropout_prob"):
        sample_util.guided_model_fn(args, model, diffusion)
    args.guide_model_path = ckpt["cfg"]
    counts = EvaluationCounts()
    auto = sample_util.guided_model_fn(args, model, diffusion, counts=counts)
    assert isinstance(auto, AutoGuidance) and auto.guide is not model and auto.counts is counts
    # a resumed run checks the guide's contents, like the model's
    identity = shards.run_identity(args, {"model_path": args.model_path})
    assert identity["files"]["guide_model_path"] == ckpt["cfg"]
    assert identity["guidance_scale"] == 2.0 and "guide_model_path" not in identity
    args.timestep_respacing, args.guide_model_path = "", ckpt["cfg"]
    with pytest.raises(SamplingInputError, match="--guide_model_path: the guide's diffusion"):
        sample_util.guided_model_fn(args, model, diffusion)  # main respaced, guide not
    # a model without the null class: the scripts' one-line error (SamplingInputError)
    args = parser.parse_args(cfg_flags(ckpt, "--model_path", ckpt["cond"]))
    args.class_dropout_prob, args.guidance_scale = 0.0, 2.0
    model, diffusion = model_loading.load_model_and_diffusion(args)
    with pytest.raises(SamplingInputError, match="needs a model trained with --class_drop"):
        sample_util.guided_model_fn(args, model, diffusion)


def test_a_guide_is_built_from_its_own_run_configuration(ckpt, tmp_path):
    # a guide of another width (same process) with its run configuration beside it
    guide_flags = {**script_util.model_and_diffusion_defaults(), **MODEL, "class_cond": True}
    guide_flags.update(num_channels=64, class_dropout_prob=0.2)
    torch.manual_seed(1)
    guide, _ = script_util.create_model_and_diffusion(**guide_flags)
    path = str(tmp_path / "guide.pt")
    torch.save(guide.state_dict(), path)
    saved = argparse.Namespace(**guide_flags, data_dir="")
    run_config.write_run_config(path, run_config.make_run_config("model", saved))

    args = import_script("image_sample").create_argparser().parse_args(
        cfg_flags(ckpt, "--guide_model_path", path, "--guidance_scale", "2")
    )
    model, diffusion = model_loading.load_model_and_diffusion(args)
    auto = sample_util.guided_model_fn(args, model, diffusion)
    assert auto.guide.model_channels == 64 and model.model_channels == 32
    assert args.num_channels == 32  # the main model's flags are left alone
    x, t = torch.zeros(2, 3, 16, 16), torch.tensor([1, 1])
    assert auto(x, t, y=torch.tensor([0, 1])).shape == (2, 6, 16, 16)

    other = argparse.Namespace(**{**vars(saved), "predict_xstart": True})
    run_config.write_run_config(path, run_config.make_run_config("model", other))
    with pytest.raises(SamplingInputError, match=r"was trained with --predict_xstart True, the "
                       "main model with --predict_xstart False"):  # fmt: skip
        sample_util.guided_model_fn(args, model, diffusion)


@pytest.mark.slow
def test_guidance_without_a_null_class_fails_with_one_line(ckpt, tmp_path):
    args = sample_flags(ckpt, model="cond", num_samples=2, batch_size=2)
    result = run(
        "image_sample.py", [*args, "--class_cond", "True", "--guidance_scale", "2"], tmp_path,
        check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "image_sample.py: error: --guidance_scale 2.0 needs a model trained with "
        "--class_dropout_prob > 0 (a null-class row in its label embedding); this one has "
        "none: use --guidance_scale 1, or guide with --guide_model_path (autoguidance)"
    ]
    assert not list(tmp_path.glob("samples_*"))
