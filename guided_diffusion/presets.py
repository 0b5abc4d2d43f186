"""
The flags of the published checkpoints (Dhariwal & Nichol 2021), named like their files, and
recognising them from a state dict's keys and shapes.

The published ``.pt`` files have no run configuration beside them (see ``run_config``):
``--preset NAME`` gives a program all the flags of one of them, and a checkpoint whose state
dict has the layout of a published one is recognised (``recognise_file``), so that
``image_sample.py --model_path 256x256_diffusion.pt`` needs no model flags (``flags.parse_args``
applies both). The values are those of ``shared/compat/official_checkpoints.json``
(``tests/test_presets.py`` holds them to it). lsun_cat and lsun_horse have lsun_bedroom's
flags; 256x256_diffusion_uncond differs from the three only in dropout, which does not change
the layout.
"""

import inspect
import math
from dataclasses import dataclass
from typing import Any, Optional

import torch

from . import script_util
from .checkpoint_util import read_shapes
from .io_util import is_local_path


@dataclass(frozen=True)
class Preset:
    """A published network: its kind, its flags and its parameter count."""

    kind: str  # "model", "super_res" or "classifier"
    flags: dict[str, Any]  # the flags whose values differ from the kind's defaults
    params: int  # the parameter count, a cheap first test of a state dict

    def all_flags(self) -> dict[str, Any]:
        """:return: every network and diffusion flag of the preset (timestep_respacing aside)."""
        values = {**script_util.network_defaults(self.kind), **self.flags}
        del values["timestep_respacing"]  # chosen by every run
        return values


# The flags the ImageNet diffusion models share; each changes a few.
_ADM = dict(
    attention_resolutions="32,16,8", class_cond=True, learn_sigma=True, num_channels=256,
    num_head_channels=64, resblock_updown=True, use_fp16=True,
)  # fmt: skip
_LSUN = {**_ADM, "image_size": 256, "class_cond": False, "dropout": 0.1}
_UPSAMPLER = {**_ADM, "num_channels": 192}

PRESETS = {
    "64x64_diffusion": Preset("model", {
        **_ADM, "image_size": 64, "num_channels": 192, "num_res_blocks": 3, "dropout": 0.1,
        "use_new_attention_order": True, "noise_schedule": "cosine"}, 295904454),
    "128x128_diffusion": Preset(
        "model", {**_ADM, "image_size": 128, "num_head_channels": -1}, 421529606),
    "256x256_diffusion": Preset("model", {**_ADM, "image_size": 256}, 553838086),
    "256x256_diffusion_uncond": Preset(
        "model", {**_ADM, "image_size": 256, "class_cond": False}, 552814086),
    "512x512_diffusion": Preset(
        "model", {**_ADM, "image_size": 512, "use_fp16": False}, 558997638),
    "lsun_bedroom": Preset("model", _LSUN, 552814086),
    "lsun_cat": Preset("model", _LSUN, 552814086),
    "lsun_horse": Preset("model", _LSUN, 552814086),
    "64_256_upsampler": Preset("super_res", {
        **_UPSAMPLER, "large_size": 256, "small_size": 64, "num_head_channels": -1}, 311795910),
    "128_512_upsampler": Preset("super_res", {
        **_UPSAMPLER, "large_size": 512, "small_size": 128, "attention_resolutions": "32,16"},
        308835270),
    "64x64_classifier": Preset("classifier", {"image_size": 64, "classifier_depth": 4}, 65438568),
    "128x128_classifier": Preset("classifier", {"image_size": 128}, 42568040),
    "256x256_classifier": Preset("classifier", {"image_size": 256}, 54096360),
    "512x512_classifier": Preset("classifier", {"image_size": 512}, 54448360),
}  # fmt: skip

# The flags that can change a state dict's keys or shapes (the others, such as --num_heads,
# --dropout or the diffusion flags besides --learn_sigma, cannot).
LAYOUT_FLAGS = frozenset({
    "image_size", "large_size", "num_channels", "num_res_blocks", "channel_mult",
    "attention_resolutions", "class_cond", "num_classes", "class_dropout_prob", "learn_sigma",
    "use_scale_shift_norm", "resblock_updown", "classifier_width", "classifier_depth",
    "classifier_attention_resolutions", "classifier_use_scale_shift_norm",
    "classifier_resblock_updown", "classifier_pool", "classifier_channel_mult",
})  # fmt: skip

_NETWORKS = {
    "model": script_util.create_model,
    "super_res": script_util.sr_create_model,
    "classifier": script_util.create_classifier,
}


def names(kind: str) -> list[str]:
    """:return: the names of the presets of one kind of network, in ``PRESETS`` order."""
    return [name for name, preset in PRESETS.items() if preset.kind == kind]


def layout(flags: dict[str, Any], kind: str) -> dict[str, tuple[int, ...]]:
    """
    :param flags: network flags of ``kind`` (extra flags are ignored).
    :return: the keys and shapes of the state dict of the network they build, built on the
        meta device (no memory, no weights).
    """
    create = _NETWORKS[kind]
    takes = inspect.signature(create).parameters
    with torch.device("meta"):
        network = create(**{k: v for k, v in flags.items() if k in takes})
    return {k: tuple(v.shape) for k, v in network.state_dict().items()}


def recognise(shapes: dict[str, tuple[int, ...]], kind: str) -> list[str]:
    """
    :param shapes: a state dict's keys and shapes.
    :return: the presets of ``kind`` whose networks have exactly these keys and shapes (their
        parameter count first, then their layout); several when they share a layout
        (256x256_diffusion_uncond and the LSUN models).
    """
    count = sum(math.prod(shape) for shape in shapes.values())
    return [
        name
        for name in names(kind)
        if PRESETS[name].params == count and layout(PRESETS[name].all_flags(), kind) == shapes
    ]


def recognise_file(path: str, kind: str) -> list[str]:
    """
    The presets whose layout a local checkpoint file has (``recognise``); [] for another
    layout, a remote file (it would be downloaded twice) or a file that cannot be read (the
    loader reports that later).
    """
    if not path or not is_local_path(path):
        return []
    try:
        shapes = read_shapes(path)
    except (OSError, ValueError):
        return []
    return recognise(shapes, kind)


def contradiction(name: str, given: dict[str, Any]) -> Optional[str]:
    """
    :param name: a preset.
    :param given: flags given on the command line (those of other networks are ignored).
    :return: the first given flag that builds another layout than the preset's (another
        spelling of the same value, e.g. --channel_mult 1,1,2,2,4,4 for "", is no
        contradiction), or None.
    """
    preset = PRESETS[name]
    own = preset.all_flags()
    for flag, value in given.items():
        if flag in LAYOUT_FLAGS and flag in own and value != own[flag]:
            if layout({**own, flag: value}, preset.kind) != layout(own, preset.kind):
                return flag
    return None
