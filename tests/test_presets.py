"""
The presets of the published checkpoints: their flags are the facts of
shared/compat/official_checkpoints.json, each of the 12 published layouts is recognised from a
state dict of its keys and shapes (built on the meta device from the JSON's flags), and the
programs' flags take a preset's values (--preset, or a checkpoint recognised by its layout).
"""

import pytest
import torch
from conftest import OFFICIAL, build_from_flags, needs_json

from guided_diffusion import flags, presets, script_util
from guided_diffusion.checkpoint_util import read_shapes
from guided_diffusion.run_config import RunConfigError
from guided_diffusion.script_errors import UsageError

# lsun_cat and lsun_horse are not in the JSON: they have lsun_bedroom's flags.
JSON_NAME = {"lsun_cat": "lsun_bedroom", "lsun_horse": "lsun_bedroom"}


def save_layout(path, shapes: dict[str, tuple]) -> str:
    """A checkpoint file with these keys and shapes, a few bytes each (stride-0 views)."""
    torch.save({k: torch.zeros(()).expand(shape) for k, shape in shapes.items()}, path)
    return str(path)


@needs_json
def test_every_published_checkpoint_has_a_preset():
    assert set(presets.PRESETS) == {*OFFICIAL, "lsun_cat", "lsun_horse"}


@needs_json
@pytest.mark.parametrize("name", sorted(presets.PRESETS))
def test_preset_flags_are_the_published_flags(name):
    entry = OFFICIAL[JSON_NAME.get(name, name)]
    preset = presets.PRESETS[name]
    flags = preset.all_flags()
    assert {k: flags[k] for k in entry["flags"] if k != "timestep_respacing"} == {
        k: v for k, v in entry["flags"].items() if k != "timestep_respacing"
    }
    assert preset.params == entry["params"]


@needs_json
@pytest.mark.parametrize("name", sorted(OFFICIAL) or ["missing"])
def test_each_published_layout_is_recognised(name):
    entry = OFFICIAL[name]
    with torch.device("meta"):
        model = build_from_flags(entry["flags"])
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    found = presets.recognise(shapes, presets.PRESETS[name].kind)
    assert name in found
    if name in ("256x256_diffusion_uncond", "lsun_bedroom"):  # the same layout
        assert found == ["256x256_diffusion_uncond", "lsun_bedroom", "lsun_cat", "lsun_horse"]
    else:
        assert found == [name]
    other = "classifier" if presets.PRESETS[name].kind != "classifier" else "model"
    assert presets.recognise(shapes, other) == []


def test_recognised_from_a_file_by_its_shapes_alone(tmp_path):
    shapes = presets.layout(presets.PRESETS["128x128_classifier"].all_flags(), "classifier")
    path = save_layout(tmp_path / "classifier.pt", shapes)
    assert read_shapes(path) == shapes
    assert presets.recognise_file(path, "classifier") == ["128x128_classifier"]
    shapes.pop("out.2.c_proj.bias")
    assert presets.recognise_file(save_layout(tmp_path / "other.pt", shapes), "classifier") == []
    assert presets.recognise_file(str(tmp_path / "missing.pt"), "classifier") == []


def test_a_flag_that_changes_the_layout_contradicts_the_preset():
    assert presets.contradiction("256x256_diffusion", {"num_channels": 128}) == "num_channels"
    assert presets.contradiction("256x256_diffusion", {"learn_sigma": False}) == "learn_sigma"
    # the same layout spelled otherwise, and flags that do not change the layout
    same = {"channel_mult": "1,1,2,2,4,4", "attention_resolutions": "8,16,32", "num_heads": 8,
            "noise_schedule": "cosine", "use_fp16": False, "image_size": 256}  # fmt: skip
    assert presets.contradiction("256x256_diffusion", same) is None
    assert presets.contradiction("64x64_classifier", {"classifier_depth": 2}) == "classifier_depth"


# ---------------------------------------------------------------- in the programs' flags


def sampling_parser(kind: str = "model", classifier: bool = False):
    """image_sample.py's parser (classifier_sample.py's with ``classifier``)."""
    own = flags.sampling_defaults(class_labels="")
    if classifier:
        own.update(classifier_path="", classifier_scale=1.0)
    networks = [script_util.network_defaults(kind)]
    if classifier:
        networks.append(script_util.classifier_defaults())
    return flags.create_sampling_parser("", own, *networks, kind=kind)


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """Files with the layouts of three published checkpoints (a few bytes per tensor)."""
    root = tmp_path_factory.mktemp("published")
    paths = {}
    for name in ("256x256_diffusion", "256x256_diffusion_uncond", "256x256_classifier",
                 "128x128_classifier"):  # fmt: skip
        preset = presets.PRESETS[name]
        shapes = presets.layout(preset.all_flags(), preset.kind)
        paths[name] = save_layout(root / f"{name}.pt", shapes)
    return paths


def test_a_published_checkpoint_needs_no_model_flags(published):
    path = published["256x256_diffusion"]
    args = flags.parse_args(sampling_parser(), ["--model_path", path], model_path="model")
    expected = presets.PRESETS["256x256_diffusion"].all_flags()
    assert {k: getattr(args, k) for k in expected} == expected
    assert args.presets == {"model_path": "the flags of the published 256x256_diffusion"}
    # flags that do not change the layout stay the user's
    argv = ["--model_path", path, "--use_fp16", "False", "--timestep_respacing", "25"]
    args = flags.parse_args(sampling_parser(), argv, model_path="model")
    assert (args.use_fp16, args.timestep_respacing, args.num_channels) == (False, "25", 256)


def test_a_shared_layout_is_taken_from_one_preset_and_says_which(published):
    argv = ["--model_path", published["256x256_diffusion_uncond"]]
    args = flags.parse_args(sampling_parser(), argv, model_path="model")
    assert args.class_cond is False and args.image_size == 256
    note = args.presets["model_path"]
    assert note.startswith("the flags of the published 256x256_diffusion_uncond (lsun_bedroom")


def test_a_flag_contradicting_the_recognised_layout_is_refused(published):
    argv = ["--model_path", published["256x256_diffusion"], "--num_channels", "128"]
    with pytest.raises(RunConfigError, match=r"^--num_channels 128 contradicts the published "
                       r"256x256_diffusion .*has --num_channels 256"):  # fmt: skip
        flags.parse_args(sampling_parser(), argv, model_path="model")
    # layout flags that agree: the flags given are used as they are (nothing filled in)
    argv = ["--model_path", published["256x256_diffusion"], "--num_channels", "256"]
    args = flags.parse_args(sampling_parser(), argv, model_path="model")
    assert args.image_size == 64 and args.presets == {}


def test_preset_gives_the_flags_and_refuses_another_layout(tmp_path):
    argv = ["--preset", "64x64_diffusion", "--noise_schedule", "linear"]
    args = flags.parse_args(sampling_parser(), argv, model_path="model")
    assert (args.image_size, args.num_channels, args.num_res_blocks) == (64, 192, 3)
    assert args.noise_schedule == "linear"  # not a layout flag: the user's
    with pytest.raises(RunConfigError, match="--num_res_blocks 2 contradicts --preset 64x64_"):
        flags.parse_args(
            sampling_parser(), [*argv, "--num_res_blocks", "2"], model_path="model"
        )
    # argparse names the valid presets, in one line (a user error, exit status 1)
    with pytest.raises(UsageError, match="argument --preset: '64x64_classifier' is not one of"):
        flags.parse_args(sampling_parser(), ["--preset", "64x64_classifier"], model_path="model")
    parser = flags.create_train_parser(
        "", flags.classifier_train_defaults(), script_util.classifier_and_diffusion_defaults(),
        kind="classifier",
    )  # fmt: skip
    args = flags.parse_args(
        parser, ["--preset", "64x64_classifier"], recognise=False, resume_checkpoint="classifier"
    )
    assert (args.classifier_depth, args.image_size) == (4, 64)


def test_model_and_classifier_are_recognised_together(published):
    argv = ["--model_path", published["256x256_diffusion"],
            "--classifier_path", published["256x256_classifier"]]  # fmt: skip
    args = flags.parse_args(
        sampling_parser(classifier=True), argv, model_path="model", classifier_path="classifier"
    )
    assert set(args.presets) == {"model_path", "classifier_path"}
    assert (args.image_size, args.classifier_depth, args.num_channels) == (256, 2, 256)
    argv[-1] = published["128x128_classifier"]
    with pytest.raises(RunConfigError, match="--image_size: the published 256x256_diffusion"):
        flags.parse_args(
            sampling_parser(classifier=True), argv, model_path="model", classifier_path="classifier"
        )
