"""
Explaining why a checkpoint does not fit a model, by naming flags.

``load_checkpoint`` loads a state dict strictly. When its keys or shapes differ from the
model's, the architecture is read off both state dicts (channel counts, blocks per resolution,
where attention sits, ...) and the flags whose values differ are named, e.g. "output has 6
channels (this model has 3): the checkpoint was trained with --learn_sigma True". Reading the
files is ``checkpoint_util``'s job.
"""

import os
import re
from collections.abc import Mapping
from typing import Optional, Union

import torch
import torch.nn as nn

from .checkpoint_util import check_state_dict, read_state_dict
from .script_util import CLASSIFIER_CHANNEL_MULTS, MODEL_CHANNEL_MULTS, SR_CHANNEL_MULTS
from .unet import EncoderUNetModel, SuperResModel

_SHOWN = 5  # keys listed per kind of difference


class CheckpointMismatchError(ValueError):
    """
    A checkpoint's state dict does not fit the model.

    :ivar missing: keys the model has and the checkpoint lacks.
    :ivar unexpected: keys the checkpoint has and the model lacks.
    :ivar mismatched: (key, checkpoint shape, model shape) for keys in both.
    :ivar hints: the likely causes, as sentences naming flags.
    """

    def __init__(
        self,
        message: str,
        missing: list[str],
        unexpected: list[str],
        mismatched: list[tuple[str, tuple, tuple]],
        hints: list[str],
    ):
        super().__init__(message)
        self.missing = missing
        self.unexpected = unexpected
        self.mismatched = mismatched
        self.hints = hints


def load_checkpoint(
    model: nn.Module,
    path_or_state_dict: Union[str, os.PathLike, Mapping[str, torch.Tensor]],
    map_location="cpu",
    expected_sha256: Optional[str] = None,
    recorded_in: Optional[str] = None,
) -> nn.Module:
    """
    Load a checkpoint into ``model`` strictly (every key, every shape).

    :param model: the model built from the flags the checkpoint was trained with.
    :param path_or_state_dict: a ``.pt`` path (local or blobfile URL) or a state dict.
    :param map_location: where ``torch.load`` puts the tensors before they are copied into
        the model (which keeps its device and dtypes).
    :param expected_sha256: the file's SHA-256 recorded when it was saved, in the file
        ``recorded_in`` (``run_config.recorded_checkpoint_hash``); None: its CRC-32s are
        checked (see ``checkpoint_util.read_checkpoint``).
    :return: ``model``.
    :raises CheckpointMismatchError: the keys or shapes differ; the message lists them and
        names the flags that most likely cause the difference.
    """
    if isinstance(path_or_state_dict, Mapping):
        source = "the state dict"
        state_dict = path_or_state_dict
        check_state_dict(state_dict, source)
    else:
        source = os.fspath(path_or_state_dict)
        state_dict = read_state_dict(source, map_location, expected_sha256, recorded_in)
    error = diagnose_mismatch(model, state_dict, source)
    if error is not None:
        raise error
    model.load_state_dict(state_dict, strict=True)
    return model


def diagnose_mismatch(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str = "the checkpoint"
) -> Optional[CheckpointMismatchError]:
    """
    Compare a state dict with a model's.

    :param model: the model.
    :param state_dict: the checkpoint's state dict.
    :param source: how to call the checkpoint in the message.
    :return: None when keys and shapes agree, else the error to raise.
    """
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in state_dict.items()}
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    mismatched = [
        (k, found[k], expected[k]) for k in expected if k in found and found[k] != expected[k]
    ]
    if not (missing or unexpected or mismatched):
        return None
    hints = _likely_causes(model, found, expected)
    lines = [f"{source} does not fit this {type(model).__name__}:"]
    lines += [f"  likely cause: {h}" for h in hints] or [
        "  no flag explains the difference (a checkpoint of another architecture?)"
    ]
    for label, items in (
        ("missing key(s) (in the model, not in the checkpoint)", missing),
        ("unexpected key(s) (in the checkpoint, not in the model)", unexpected),
        (
            "shape mismatch(es)",
            [f"{k}: checkpoint {list(a)}, model {list(b)}" for k, a, b in mismatched],
        ),
    ):
        if items:
            more = f", ... ({len(items) - _SHOWN} more)" if len(items) > _SHOWN else ""
            lines.append(f"  {len(items)} {label}: {', '.join(items[:_SHOWN])}{more}")
    return CheckpointMismatchError("\n".join(lines), missing, unexpected, mismatched, hints)


# ---------------------------------------------------------------------------------------
# Reading the architecture off a state dict (shapes only).


def _layer_kinds(shapes: dict[str, tuple], prefix: str) -> list[list[str]]:
    """
    The layers of each block under ``prefix`` ("input_blocks" or "output_blocks"): "res",
    "attn", "conv", "down" (strided conv) or "up" (conv after upsampling).
    """
    blocks: dict[int, dict[int, str]] = {}
    pattern = re.compile(rf"^{prefix}\.(\d+)\.(\d+)\.(.*)$")
    for key in shapes:
        match = pattern.match(key)
        if not match:
            continue
        block, layer, rest = int(match[1]), int(match[2]), match[3]
        kind = {
            "in_layers.2.weight": "res",
            "qkv.weight": "attn",
            "weight": "conv",
            "op.weight": "down",
            "conv.weight": "up",
        }.get(rest)
        if kind:
            blocks.setdefault(block, {})[layer] = kind
    return [[layers[j] for j in sorted(layers)] for _, layers in sorted(blocks.items())]


def _architecture(shapes: dict[str, tuple], layout: Optional[tuple[int, int]] = None) -> dict:
    """
    What the shapes tell about the flags (keys are absent when they tell nothing).

    :param layout: (blocks per level, levels) to assume where the keys cannot tell.
    """
    arch: dict = {}
    if "time_embed.0.weight" in shapes:
        arch["num_channels"] = shapes["time_embed.0.weight"][1]
    arch["class_cond"] = "label_emb.weight" in shapes
    if arch["class_cond"]:
        arch["num_classes"] = shapes["label_emb.weight"][0]
    if len(shapes.get("out.2.weight", ())) == 4:
        arch["out_channels"] = shapes["out.2.weight"][0]
    arch.update(_classifier_head(shapes))

    inputs = _layer_kinds(shapes, "input_blocks")
    outputs = _layer_kinds(shapes, "output_blocks")
    res_keys = [k for k in shapes if re.match(r"^input_blocks\.\d+\.0\.emb_layers\.1\.weight$", k)]
    if res_keys:
        prefix = res_keys[0][: -len("emb_layers.1.weight")]
        arch["use_scale_shift_norm"] = (
            shapes[res_keys[0]][0] == 2 * shapes[prefix + "out_layers.3.weight"][0]
        )
    if any("up" in b or "down" in b for b in inputs + outputs):
        arch["resblock_updown"] = False
    elif any(b.count("res") == 2 for b in outputs):
        arch["resblock_updown"] = True
    arch["input_blocks"] = len(inputs)
    if outputs:
        ups = [i for i, b in enumerate(outputs) if "up" in b or b.count("res") == 2]
        per_level = ups[0] + 1 if ups else len(outputs)
        if len(outputs) % per_level == 0:
            arch["num_res_blocks"] = per_level - 1
            arch["levels"] = len(outputs) // per_level
    elif any("down" in b for b in inputs):
        per_level = next(i for i, b in enumerate(inputs) if "down" in b)
        arch["num_res_blocks"] = per_level - 1
        arch["levels"] = len(inputs) // per_level
    elif layout is not None and len(inputs) == layout[0] * layout[1]:
        # An encoder resampling with residual blocks: its down blocks look like the others,
        # so only the block count tells, and it fits the assumed layout.
        arch["num_res_blocks"], arch["levels"] = layout[0] - 1, layout[1]
        if layout[1] > 1:
            arch["resblock_updown"] = True
    if "num_res_blocks" in arch and "num_channels" in arch:
        _levels(shapes, inputs, arch)
    return arch


def _levels(shapes: dict[str, tuple], inputs: list[list[str]], arch: dict) -> None:
    """Channel multipliers and attention downsampling rates, once the level layout is known."""
    per_level = arch["num_res_blocks"] + 1
    mults, attention_ds = [], set()
    for i in range(1, len(inputs)):
        level, position = divmod(i - 1, per_level)
        if position == 0 and f"input_blocks.{i}.0.out_layers.3.weight" in shapes:
            mult = shapes[f"input_blocks.{i}.0.out_layers.3.weight"][0] / arch["num_channels"]
            mults.append(int(mult) if mult.is_integer() else mult)
        if "attn" in inputs[i]:
            attention_ds.add(2**level)
    arch["channel_mult"] = tuple(mults)
    arch["attention_ds"] = attention_ds


def _classifier_head(shapes: dict[str, tuple]) -> dict:
    """The pooling head and class count of a classifier's state dict."""
    if "out.2.positional_embedding" in shapes:
        tokens = shapes["out.2.positional_embedding"][1] - 1
        return {
            "classifier_pool": "attention",
            "num_classes": shapes["out.2.c_proj.weight"][0],
            "final_side": round(tokens**0.5),
        }
    if len(shapes.get("out.3.weight", ())) == 4:
        return {"classifier_pool": "adaptive", "num_classes": shapes["out.3.weight"][0]}
    if len(shapes.get("out.3.weight", ())) == 2:
        return {"classifier_pool": "spatial_v2", "num_classes": shapes["out.3.weight"][0]}
    if len(shapes.get("out.2.weight", ())) == 2:
        return {"classifier_pool": "spatial", "num_classes": shapes["out.2.weight"][0]}
    return {}


# The architecture properties the hints name, by their UNet flag.
_PROPERTIES = ("num_channels", "num_res_blocks", "channel_mult", "attention_resolutions",
               "use_scale_shift_norm", "resblock_updown")  # fmt: skip


def _flag_names(model: nn.Module) -> dict[str, str]:
    """The command-line flag behind each architecture property of this kind of model."""
    if isinstance(model, EncoderUNetModel):
        names = {k: f"classifier_{k}" for k in _PROPERTIES}
        names.update(num_channels="classifier_width", num_res_blocks="classifier_depth")
        return {**names, "image_size": "image_size"}
    size = "large_size" if isinstance(model, SuperResModel) else "image_size"
    return {**{k: k for k in _PROPERTIES}, "image_size": size}


def _fmt(values) -> str:
    return ",".join(str(v) for v in values)


def _label_rows_hint(found: int, expected: int) -> str:
    """
    Explain a label embedding with another row count: one more or one less row is the
    null class of ``--class_dropout_prob`` (classifier-free guidance), anything else the
    class count.
    """
    if found == expected + 1:
        return (
            f"the checkpoint has {found} label embedding rows (this model has {expected}): "
            "the extra row is likely the null class of classifier-free guidance, trained with "
            f"--class_dropout_prob > 0 (or it was trained with --num_classes {found})"
        )
    if found + 1 == expected:
        return (
            f"the checkpoint has {found} label embedding rows (this model has {expected}): "
            "it likely has no null-class row, trained with --class_dropout_prob 0 "
            f"(or it was trained with --num_classes {found})"
        )
    return (
        f"the checkpoint has {found} label embedding rows (this model has {expected}): "
        f"it was trained with --num_classes {found}"
    )


def _likely_causes(
    model: nn.Module, found: dict[str, tuple], expected: dict[str, tuple]
) -> list[str]:
    """Sentences naming the flags whose values explain the differences."""
    layout = None
    if hasattr(model, "channel_mult"):
        layout = (model.num_res_blocks + 1, len(model.channel_mult))  # blocks per level, levels
    ckpt, ours = _architecture(found, layout), _architecture(expected, layout)
    flag = _flag_names(model)
    hints = []

    def differs(key: str) -> bool:
        return key in ckpt and key in ours and ckpt[key] != ours[key]

    kind = _other_kind_of_network(model, found)
    if kind:
        return [kind]  # the layout hints would compare a classifier with a UNet: misleading
    if len(found) and all(k.startswith("module.") for k in found):
        hints.append(
            "every key starts with 'module.': the state dict was saved from a "
            "DistributedDataParallel wrapper; save or load model.module's state dict"
        )
    if differs("out_channels"):
        if ckpt["out_channels"] == 2 * ours["out_channels"]:
            hints.append(
                f"output has {ckpt['out_channels']} channels (this model has "
                f"{ours['out_channels']}): the checkpoint was trained with --learn_sigma True"
            )
        elif 2 * ckpt["out_channels"] == ours["out_channels"]:
            hints.append(
                f"output has {ckpt['out_channels']} channels (this model has "
                f"{ours['out_channels']}): the checkpoint was trained with --learn_sigma False"
            )
    if differs("class_cond"):
        if ckpt["class_cond"]:
            hints.append(
                f"the checkpoint has a label embedding ({ckpt['num_classes']} classes): "
                "it was trained with --class_cond True"
            )
        else:
            hints.append(
                "the checkpoint has no label embedding: it was trained with --class_cond False"
            )
    elif differs("num_classes") and not isinstance(model, EncoderUNetModel):
        hints.append(_label_rows_hint(ckpt["num_classes"], ours["num_classes"]))
    elif differs("num_classes"):
        what = "outputs"
        hints.append(
            f"the checkpoint has {ckpt['num_classes']} {what} (this model has "
            f"{ours['num_classes']}): it was trained with --num_classes {ckpt['num_classes']}"
        )
    if differs("classifier_pool"):
        hints.append(
            f"the checkpoint's head is '{ckpt['classifier_pool']}' pooling: it was "
            f"trained with --classifier_pool {ckpt['classifier_pool']}"
        )
    if differs("num_channels"):
        hints.append(
            f"the time embedding takes {ckpt['num_channels']} channels (this model "
            f"{ours['num_channels']}): --{flag['num_channels']} {ckpt['num_channels']}"
        )
    if differs("use_scale_shift_norm"):
        hints.append(
            "the timestep projections give "
            f"{'twice' if ckpt['use_scale_shift_norm'] else 'once'} the block channels: "
            f"--{flag['use_scale_shift_norm']} {ckpt['use_scale_shift_norm']}"
        )
    if differs("resblock_updown"):
        how = "residual blocks" if ckpt["resblock_updown"] else "plain (strided) convolutions"
        hints.append(
            f"the checkpoint resamples with {how}: --{flag['resblock_updown']} "
            f"{ckpt['resblock_updown']}"
        )
    hints += _layout_causes(model, ckpt, ours, flag, differs)
    return hints


def _other_kind_of_network(model: nn.Module, found: dict[str, tuple]) -> Optional[str]:
    """
    :return: a hint when the checkpoint holds a diffusion UNet and the model is a classifier
        (an encoder), or the other way round; None when both are of one kind.
    """
    has_decoder = any(k.startswith("output_blocks.") for k in found)
    has_encoder = any(k.startswith("input_blocks.") for k in found)
    if isinstance(model, EncoderUNetModel) and has_decoder:
        return (
            "the checkpoint is a diffusion model (it has output blocks), not a noisy "
            "classifier: give it as --model_path; --classifier_path takes a classifier "
            "trained by classifier_train.py (e.g. 64x64_classifier.pt)"
        )
    if not isinstance(model, EncoderUNetModel) and has_encoder and not has_decoder:
        return (
            "the checkpoint is a noisy classifier (no output blocks), not a diffusion model: "
            "give it as --classifier_path; --model_path takes a diffusion model"
        )
    return None


def _layout_causes(
    model: nn.Module, ckpt: dict, ours: dict, flag: dict[str, str], differs
) -> list[str]:
    """Hints about blocks per level, levels, channel multipliers and attention placement."""
    hints = []
    if differs("num_res_blocks"):
        hints.append(
            f"the checkpoint has {ckpt['num_res_blocks']} residual blocks per "
            f"resolution (this model {ours['num_res_blocks']}): "
            f"--{flag['num_res_blocks']} {ckpt['num_res_blocks']}"
        )
    if differs("channel_mult"):
        table = {EncoderUNetModel: CLASSIFIER_CHANNEL_MULTS, SuperResModel: SR_CHANNEL_MULTS}.get(
            type(model), MODEL_CHANNEL_MULTS
        )
        sizes = [str(s) for s, m in table.items() if tuple(m) == ckpt["channel_mult"]]
        default = f" (the default for --{flag['image_size']} {' or '.join(sizes)})" if sizes else ""
        hints.append(
            f"the checkpoint's channel multipliers are {_fmt(ckpt['channel_mult'])} "
            f"(this model {_fmt(ours['channel_mult'])}): "
            f"--{flag['channel_mult']} {_fmt(ckpt['channel_mult'])}{default}"
        )
    elif differs("input_blocks") and "num_res_blocks" not in ckpt:
        hints.append(_block_count_cause(model, ckpt["input_blocks"], ours["input_blocks"], flag))
    same_layout = all(k in ckpt and not differs(k) for k in ("num_res_blocks", "channel_mult"))
    if same_layout and differs("attention_ds"):
        size = model.image_size
        resolutions = _fmt(sorted((size // ds for ds in ckpt["attention_ds"]), reverse=True))
        hints.append(
            f"the checkpoint has attention at downsampling rates "
            f"{_fmt(sorted(ckpt['attention_ds']))} (this model "
            f"{_fmt(sorted(ours['attention_ds']))}): --{flag['attention_resolutions']} "
            f"{resolutions} at --{flag['image_size']} {size}"
        )
    if differs("final_side"):
        side = ckpt["final_side"]
        own = ours["final_side"]
        text = f"the attention pool is sized for {side}x{side} features (this model {own}x{own})"
        if same_layout:
            size = side * 2 ** (len(ckpt["channel_mult"]) - 1)
            text += f": the classifier was trained with --image_size {size}"
        else:
            text += f": check --{flag['image_size']}"
        hints.append(text)
    return hints


def _block_count_cause(model: nn.Module, found: int, expected: int, flag: dict[str, str]) -> str:
    """
    A hint for encoders whose down blocks cannot be told from residual blocks: N input blocks
    are levels * (blocks per level + 1), so list the layouts that keep one of the two.
    """
    per_level, levels = model.num_res_blocks + 1, len(model.channel_mult)
    options = []
    if found % per_level == 0:
        options.append(
            f"{found // per_level} resolution levels instead of {levels} "
            f"(--{flag['channel_mult']} or --{flag['image_size']})"
        )
    if found % levels == 0 and found // levels > 1:
        options.append(f"--{flag['num_res_blocks']} {found // levels - 1}")
    text = " or ".join(options) or (
        f"--{flag['num_res_blocks']}, --{flag['channel_mult']} and --{flag['image_size']}"
    )
    return f"the checkpoint has {found} input blocks (this model {expected}): {text}"
