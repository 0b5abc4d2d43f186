"""
Checkpoint compatibility: the flags of every published checkpoint build exactly its
state dict, and the loader is safe and explains mismatches by naming flags.
"""

import os
import pickle

import numpy as np
import pytest
import torch

from guided_diffusion import script_util as su
from guided_diffusion.checkpoint_diagnosis import (
    CheckpointMismatchError,
    diagnose_mismatch,
    load_checkpoint,
)
from guided_diffusion.checkpoint_util import read_state_dict

from conftest import OFFICIAL, OFFICIAL_JSON, build_from_flags, needs_json


@needs_json
def test_all_official_checkpoints_are_listed():
    where = OFFICIAL_JSON or "shared/compat/official_checkpoints.json (not found)"
    assert len(OFFICIAL) == 12, f"expected the 12 official checkpoints in {where}"


@needs_json
@pytest.mark.parametrize("name", sorted(OFFICIAL) or ["missing"])
def test_official_flags_build_the_official_state_dict(name):
    entry = OFFICIAL[name]
    with torch.device("meta"):
        model = build_from_flags(entry["flags"])
    built = [(k, list(v.shape)) for k, v in model.state_dict().items()]
    assert built == [(k, list(shape)) for k, shape in entry["state_dict"]]
    assert sum(p.numel() for p in model.parameters()) == entry["params"]
    # the same state dict on the meta device passes the loader's strict check
    fake = {k: torch.empty(shape, device="meta") for k, shape in entry["state_dict"]}
    assert diagnose_mismatch(model, fake) is None


@needs_json
def test_official_checkpoint_into_default_model_names_the_flags():
    entry = OFFICIAL["64x64_diffusion"]
    fake = {k: torch.empty(shape, device="meta") for k, shape in entry["state_dict"]}
    with torch.device("meta"):
        model = build_from_flags({})  # every flag left at its default
    error = diagnose_mismatch(model, fake, "64x64_diffusion.pt")
    text = str(error)
    for flag in (
        "--learn_sigma True",
        "--class_cond True",
        "--num_channels 192",
        "--num_res_blocks 3",
        "--resblock_updown True",
    ):
        assert flag in text
    assert "64x64_diffusion.pt does not fit this UNetModel" in text
    assert error.missing and error.unexpected and error.mismatched


# ---------------------------------------------------------------------------------------
# Diagnoses on tiny models.


def tiny_model(**overrides) -> torch.nn.Module:
    flags = dict(
        image_size=32,
        num_channels=32,
        num_res_blocks=1,
        attention_resolutions="16",
        num_head_channels=32,
        channel_mult="1,2",
        use_scale_shift_norm=True,
    )
    return su.create_model(**{**flags, **overrides})


def tiny_classifier(**overrides) -> torch.nn.Module:
    flags = {
        **su.classifier_defaults(),
        "image_size": 32,
        "classifier_width": 64,
        "classifier_depth": 1,
        "classifier_attention_resolutions": "16",
        "classifier_channel_mult": "1,2",
    }
    return su.create_classifier(**{**flags, **overrides})


@pytest.mark.parametrize(
    "trained,built,expected",
    [
        (
            dict(learn_sigma=True),
            {},
            "output has 6 channels (this model has 3): the checkpoint was "
            "trained with --learn_sigma True",
        ),
        ({}, dict(learn_sigma=True), "--learn_sigma False"),
        (dict(class_cond=True, num_classes=10), {}, "--class_cond True"),
        ({}, dict(class_cond=True), "--class_cond False"),
        (dict(class_cond=True, num_classes=10), dict(class_cond=True), "--num_classes 10"),
        (
            dict(class_cond=True, num_classes=10, class_dropout_prob=0.1),
            dict(class_cond=True, num_classes=10),
            "--class_dropout_prob > 0",
        ),
        (
            dict(class_cond=True, num_classes=10),
            dict(class_cond=True, num_classes=10, class_dropout_prob=0.1),
            "--class_dropout_prob 0",
        ),
        (dict(num_channels=64), {}, "--num_channels 64"),
        (dict(num_res_blocks=2), {}, "--num_res_blocks 2"),
        (dict(channel_mult="1,2,2"), {}, "--channel_mult 1,2,2"),
        (dict(channel_mult=""), {}, "--channel_mult 1,2,2,2 (the default for --image_size 32)"),
        (
            dict(attention_resolutions="32,16"),
            {},
            "--attention_resolutions 32,16 at --image_size 32",
        ),
        (dict(use_scale_shift_norm=False), {}, "--use_scale_shift_norm False"),
        (dict(resblock_updown=True), {}, "--resblock_updown True"),
        ({}, dict(resblock_updown=True), "--resblock_updown False"),
    ],
)
def test_model_mismatch_names_the_flag(trained, built, expected):
    state_dict = tiny_model(**trained).state_dict()
    with pytest.raises(CheckpointMismatchError) as info:
        load_checkpoint(tiny_model(**built), state_dict)
    assert any(expected in hint for hint in info.value.hints), info.value.hints
    assert len(info.value.hints) == 1, info.value.hints  # one flag differs: one cause
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    "trained,expected",
    [
        (dict(num_classes=10), "--num_classes 10"),
        (dict(classifier_pool="adaptive"), "--classifier_pool adaptive"),
        (dict(classifier_width=128), "--classifier_width 128"),
        (dict(classifier_depth=2), "--classifier_depth 2"),
        (
            dict(classifier_attention_resolutions="32,16"),
            "--classifier_attention_resolutions 32,16",
        ),
        (dict(classifier_resblock_updown=False), "--classifier_resblock_updown False"),
        (dict(classifier_use_scale_shift_norm=False), "--classifier_use_scale_shift_norm False"),
        (dict(image_size=64, classifier_channel_mult="1,2,4"), "--image_size"),
    ],
)
def test_classifier_mismatch_names_the_flag(trained, expected):
    state_dict = tiny_classifier(**trained).state_dict()
    with pytest.raises(CheckpointMismatchError) as info:
        load_checkpoint(tiny_classifier(), state_dict)
    assert any(expected in hint for hint in info.value.hints), info.value.hints


def test_mismatch_message_lists_keys_with_counts():
    with pytest.raises(CheckpointMismatchError) as info:
        load_checkpoint(tiny_model(), tiny_model(resblock_updown=True).state_dict())
    error = info.value
    text = str(error)
    assert f"{len(error.missing)} missing key(s)" in text
    assert f"{len(error.unexpected)} unexpected key(s)" in text
    assert len(error.unexpected) == 20 and "(15 more)" in text
    assert error.missing == [
        "input_blocks.2.0.op.weight",
        "input_blocks.2.0.op.bias",
        "output_blocks.1.2.conv.weight",
        "output_blocks.1.2.conv.bias",
    ]


def test_wrapped_state_dict_is_explained():
    state_dict = {f"module.{k}": v for k, v in tiny_model().state_dict().items()}
    with pytest.raises(CheckpointMismatchError, match="DistributedDataParallel"):
        load_checkpoint(tiny_model(), state_dict)


def test_load_round_trip_with_map_location(tmp_path):
    torch.manual_seed(0)
    source = tiny_model(learn_sigma=True)
    for p in source.parameters():
        p.data.normal_()
    torch.save(source.state_dict(), tmp_path / "model.pt")
    target = load_checkpoint(
        tiny_model(learn_sigma=True), str(tmp_path / "model.pt"), map_location=torch.device("cpu")
    )
    for (k, a), b in zip(source.state_dict().items(), target.state_dict().values()):
        assert torch.equal(a, b), k


def test_file_errors(tmp_path):
    model = tiny_model()
    with pytest.raises(FileNotFoundError, match="nothing.pt"):
        load_checkpoint(model, tmp_path / "nothing.pt")
    (tmp_path / "junk.pt").write_bytes(b"this is not a checkpoint at all")
    with pytest.raises(ValueError, match="junk.pt is not a PyTorch checkpoint"):
        load_checkpoint(model, tmp_path / "junk.pt")
    # random bytes fail inside torch's weights-only unpickler: still "not a checkpoint",
    # not "holds Python objects"
    (tmp_path / "noise.pt").write_bytes(np.random.default_rng(0).bytes(1000))
    with pytest.raises(ValueError, match="noise.pt is not a PyTorch checkpoint"):
        load_checkpoint(model, tmp_path / "noise.pt")
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="holds a list, not a state dict"):
        read_state_dict(tmp_path / "list.pt")
    torch.optim.AdamW(model.parameters()).state_dict()
    torch.save(torch.optim.AdamW(model.parameters()).state_dict(), tmp_path / "opt.pt")
    with pytest.raises(ValueError, match="optimizer state"):
        read_state_dict(tmp_path / "opt.pt")


@pytest.mark.parametrize("legacy", [False, True])
def test_a_truncated_checkpoint_is_one_readable_line(tmp_path, monkeypatch, legacy):
    monkeypatch.delenv("GUIDED_DIFFUSION_DEBUG", raising=False)
    path = tmp_path / "model.pt"
    torch.save(tiny_model().state_dict(), path, _use_new_zipfile_serialization=not legacy)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ValueError) as info:
        read_state_dict(path)
    message = str(info.value)
    assert message.startswith(f"{path} is damaged or incomplete ({path.stat().st_size} bytes")
    assert "copy or download it again" in message
    assert "\n" not in message and len(message) < 250, message
    assert "miniz" not in message and "torch.load" not in message
    assert info.value.__cause__ is not None  # torch's own error stays chained
    monkeypatch.setenv("GUIDED_DIFFUSION_DEBUG", "1")  # ... and is shown when debugging
    with pytest.raises(ValueError, match=r"damaged or incomplete.*\[torch\.load: RuntimeError: "):
        read_state_dict(path)


def test_an_empty_checkpoint_says_so(tmp_path):
    (tmp_path / "model.pt").write_bytes(b"")
    with pytest.raises(ValueError, match=r"model\.pt is empty \(0 bytes\)"):
        read_state_dict(tmp_path / "model.pt")


class _RunsCode:
    """An object whose unpickling would call os.system."""

    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_checkpoint_cannot_run_code(tmp_path, monkeypatch):
    torch.save({"weight": _RunsCode()}, tmp_path / "evil.pt")
    with open(tmp_path / "evil_raw.pt", "wb") as f:  # a plain pickle, not torch's zip format
        pickle.dump({"weight": _RunsCode()}, f)
    calls = []
    monkeypatch.setattr(os, "system", lambda cmd: calls.append(cmd))
    with pytest.raises(ValueError, match="evil.pt holds Python objects other than tensors"):
        read_state_dict(tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="evil_raw.pt"):
        read_state_dict(tmp_path / "evil_raw.pt")
    assert calls == []
