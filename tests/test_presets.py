"""
The presets of the published checkpoints: their flags are the facts of
shared/compat/official_checkpoints.json, and each of the 12 published layouts is recognised
from a state dict of its keys and shapes (built on the meta device from the JSON's flags).
"""

import pytest
import torch
from test_checkpoint_compat import OFFICIAL, build_from_flags, needs_json

from guided_diffusion import presets
from guided_diffusion.checkpoint_util import read_shapes

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
    assert presets.describe(["a"]) == "a"
    assert "lsun_bedroom" in presets.describe(["256x256_diffusion_uncond", "lsun_bedroom"])
