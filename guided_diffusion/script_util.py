"""
The flags of the networks and diffusion processes (defaults and help), and the factories
that build the models and diffusion processes from them.

The flags' names and defaults are those of the original guided-diffusion release, so its
command lines and published checkpoints work unchanged. New flags (``num_classes``,
``classifier_channel_mult``, ``class_dropout_prob``) default to the original behaviour. The
programs' own flags (sampling, training, editing) and the parsing and checking of every flag
are ``flags``' job.
"""

import argparse
import inspect
import warnings
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np

from . import gaussian_diffusion as gd
from .respace import SpacedDiffusion, space_timesteps
from .unet import EncoderUNetModel, SuperResModel, UNetModel

NUM_CLASSES = 1000


def diffusion_defaults() -> dict[str, Any]:
    """Defaults for the diffusion process flags (image and classifier training alike)."""
    return dict(
        learn_sigma=False,
        diffusion_steps=1000,
        noise_schedule="linear",
        timestep_respacing="",
        use_kl=False,
        predict_xstart=False,
        rescale_timesteps=False,
        rescale_learned_sigmas=False,
    )


def classifier_defaults() -> dict[str, Any]:
    """Defaults for the noisy classifier flags."""
    return dict(
        image_size=64,
        classifier_use_fp16=False,
        classifier_width=128,
        classifier_depth=2,
        classifier_attention_resolutions="32,16,8",  # 16
        classifier_use_scale_shift_norm=True,  # False
        classifier_resblock_updown=True,  # False
        classifier_pool="attention",
        classifier_channel_mult="",
        num_classes=NUM_CLASSES,
    )


def model_and_diffusion_defaults() -> dict[str, Any]:
    """Defaults for the image model and diffusion flags."""
    res = dict(
        image_size=64,
        num_channels=128,
        num_res_blocks=2,
        num_heads=4,
        num_heads_upsample=-1,
        num_head_channels=-1,
        attention_resolutions="16,8",
        channel_mult="",
        dropout=0.0,
        class_cond=False,
        use_checkpoint=False,
        use_scale_shift_norm=True,
        resblock_updown=False,
        use_fp16=False,
        use_new_attention_order=False,
        num_classes=NUM_CLASSES,
        class_dropout_prob=0.0,
    )
    res.update(diffusion_defaults())
    return res


def classifier_and_diffusion_defaults() -> dict[str, Any]:
    """Defaults for the classifier and diffusion flags."""
    res = classifier_defaults()
    res.update(diffusion_defaults())
    return res


def sr_model_and_diffusion_defaults() -> dict[str, Any]:
    """
    Defaults for the super-resolution model and diffusion flags: the image model's, without
    ``image_size``, ``channel_mult`` and ``use_new_attention_order``, plus ``large_size`` and
    ``small_size``.
    """
    res = model_and_diffusion_defaults()
    for name in ("image_size", "channel_mult", "use_new_attention_order"):
        del res[name]
    return {**res, "large_size": 256, "small_size": 64}


def network_defaults(kind: str) -> dict[str, Any]:
    """
    :param kind: "model" (image_train, image_sample, ...), "super_res" or "classifier".
    :return: the network and diffusion flags of that kind of network, with their defaults.
    """
    table = {
        "model": model_and_diffusion_defaults,
        "super_res": sr_model_and_diffusion_defaults,
        "classifier": classifier_and_diffusion_defaults,
    }
    if kind not in table:
        raise ValueError(f"unknown network kind {kind!r}: expected one of {', '.join(table)}")
    return table[kind]()


# Help for every network and diffusion flag (``add_dict_to_argparser`` shows it).
FLAG_HELP = {
    # models
    "image_size": "image side length in pixels",
    "num_channels": "base channel count of the model",
    "num_res_blocks": "residual blocks per resolution",
    "num_heads": "attention heads (when --num_head_channels is -1)",
    "num_heads_upsample": "attention heads in the upsampling path (-1: --num_heads)",
    "num_head_channels": "channels per attention head (-1: use --num_heads)",
    "attention_resolutions": "comma-separated resolutions with attention, e.g. 32,16,8",
    "channel_mult": "comma-separated channel multipliers per resolution "
    "('': the image size's default)",
    "dropout": "dropout rate",
    "class_cond": "condition the model on class labels",
    "num_classes": "number of classes (label embedding rows / classifier outputs)",
    "class_dropout_prob": "training replaces each label by a null class with this "
    "probability, for classifier-free guidance; > 0 adds the null-class row to the label "
    "embedding (0: the original model)",
    "use_checkpoint": "gradient checkpointing: less memory, slower steps",
    "use_scale_shift_norm": "AdaGN: the timestep embedding scales and shifts the normalised "
    "features",
    "resblock_updown": "residual blocks for up- and downsampling",
    "use_fp16": "run the model in float16 (mixed precision)",
    "use_new_attention_order": "split qkv before heads in attention",
    "large_size": "output side length of the upsampler",
    "small_size": "input side length of the upsampler",
    # classifier
    "classifier_use_fp16": "run the classifier in float16",
    "classifier_width": "base channel count of the classifier",
    "classifier_depth": "residual blocks per resolution in the classifier",
    "classifier_attention_resolutions": "comma-separated resolutions with attention in the "
    "classifier",
    "classifier_use_scale_shift_norm": "AdaGN in the classifier",
    "classifier_resblock_updown": "residual blocks for downsampling in the classifier",
    "classifier_pool": "classifier head: adaptive, attention, spatial or spatial_v2",
    "classifier_channel_mult": "classifier channel multipliers ('': the image size's default)",
    # diffusion
    "learn_sigma": "the model also predicts the variance (6 output channels)",
    "diffusion_steps": "number of diffusion steps T",
    "noise_schedule": "beta schedule: linear or cosine",
    "timestep_respacing": "steps to keep: '' (all), '250', '10,15,20' or 'ddim50'; or a named "
    "grid of N steps: 'trailingN' (uniform in t from T-1), 'leadingN' (from 0, stride T//N), "
    "'logsnrN' (uniform in log-SNR), 'karrasN' (Karras et al. 2022; '_rhoR' sets rho, default 7; "
    "with logsnr too, '_maxS' starts at the noise level sigma/alpha S, e.g. 'karras10_max80' "
    "for the cosine schedule)",
    "use_kl": "train on the variational bound",
    "predict_xstart": "the model predicts x_0 instead of the noise",
    "rescale_timesteps": "show the model timesteps scaled to [0, 1000)",
    "rescale_learned_sigmas": "rescale the bound term of the loss (RESCALED_MSE)",
}

# Default channel multipliers per image size (one entry per resolution level).
MODEL_CHANNEL_MULTS = {
    512: (0.5, 1, 1, 2, 2, 4, 4),
    256: (1, 1, 2, 2, 4, 4),
    128: (1, 1, 2, 3, 4),
    64: (1, 2, 3, 4),
    32: (1, 2, 2, 2),
}
CLASSIFIER_CHANNEL_MULTS = MODEL_CHANNEL_MULTS
# The upsamplers use the 256 multipliers at 512 as well.
SR_CHANNEL_MULTS = {**MODEL_CHANNEL_MULTS, 512: (1, 1, 2, 2, 4, 4)}

# New flags that code written against the original may leave out (they get their defaults).
_NEW_MODEL_FLAGS = ("num_classes", "class_dropout_prob")


def _check_flags(
    kwargs: dict[str, Any], defaults: dict[str, Any], factory: str, optional: Sequence[str] = ()
) -> dict[str, Any]:
    """
    Check that ``kwargs`` holds exactly the flags in ``defaults`` (the ``optional`` ones may
    be missing: they get their defaults).
    """
    missing = [k for k in defaults if k not in kwargs and k not in optional]
    unknown = [k for k in kwargs if k not in defaults]
    if missing or unknown:
        raise TypeError(
            f"{factory}() got unknown arguments {unknown} and is missing {missing}; "
            f"it takes: {', '.join(defaults)}"
        )
    return {**{k: defaults[k] for k in optional}, **kwargs}


def _with_diffusion(
    create: Callable,
    kwargs: dict[str, Any],
    defaults: dict[str, Any],
    optional: Sequence[str],
) -> tuple[Any, SpacedDiffusion]:
    """
    What the ``*_and_diffusion`` factories share: check the flags, build the network with
    ``create`` from the flags it takes, and the diffusion process from the diffusion flags
    (``learn_sigma`` goes to both).
    """
    kwargs = _check_flags(kwargs, defaults, f"{create.__name__}_and_diffusion", optional)
    takes = inspect.signature(create).parameters
    network = create(**{k: v for k, v in kwargs.items() if k in takes})
    return network, create_gaussian_diffusion(**_diffusion_kwargs(kwargs))


def _diffusion_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The ``create_gaussian_diffusion`` arguments among the flags."""
    res = {k: kwargs[k] for k in diffusion_defaults() if k != "diffusion_steps"}
    res["steps"] = kwargs["diffusion_steps"]
    return res


def create_model_and_diffusion(**kwargs) -> tuple[UNetModel, SpacedDiffusion]:
    """
    Build the image model and its diffusion process.

    :param kwargs: every key of ``model_and_diffusion_defaults()`` (``num_classes`` may be
        left out: 1000; ``class_dropout_prob``: 0).
    :return: (model, diffusion).
    """
    return _with_diffusion(create_model, kwargs, model_and_diffusion_defaults(), _NEW_MODEL_FLAGS)


def _channel_mult(
    channel_mult: Union[str, Sequence[float]], image_size: int, table: dict[int, tuple], flag: str
) -> tuple[float, ...]:
    """
    Parse a channel multiplier flag ("1,2,2", "0.5,1"), or take the default for the image
    size when it is empty.
    """
    if not isinstance(channel_mult, str):
        return tuple(channel_mult)
    if not channel_mult:
        if image_size not in table:
            sizes = ", ".join(str(s) for s in sorted(table))
            raise ValueError(
                f"unsupported image size {image_size}: there are default channel multipliers "
                f"only for {sizes}; give --{flag} (e.g. 1,2,2,2) for other sizes"
            )
        return table[image_size]
    mults = parse_list(
        channel_mult,
        float,
        f"invalid --{flag} {channel_mult!r}: expected comma-separated numbers such as 1,2,3,4",
    )
    if any(m <= 0 for m in mults):
        raise ValueError(f"invalid --{flag} {channel_mult!r}: multipliers must be positive")
    return tuple(int(m) if m.is_integer() else m for m in mults)


def _attention_ds(
    attention_resolutions: str, image_size: int, num_levels: int, flag: str
) -> tuple[int, ...]:
    """
    Turn "32,16,8" (resolutions) into downsampling rates, e.g. (2, 4, 8) at 64x64, as the
    original does (``image_size // resolution``). A resolution that is not the resolution
    of one of the ``num_levels`` levels of the network is warned about, not refused (the
    original ignored it, or put attention at the level of the rounded-down rate).
    """
    resolutions = parse_list(
        attention_resolutions,
        int,
        f"invalid --{flag} {attention_resolutions!r}: expected comma-separated resolutions "
        "such as 32,16,8",
    )
    if any(r <= 0 for r in resolutions):
        raise ValueError(
            f"invalid --{flag} {attention_resolutions!r}: resolutions must be positive"
        )
    valid = [image_size // 2**level for level in range(num_levels)]
    bad = [r for r in resolutions if r not in valid]
    if bad:
        used = [r for r in bad if image_size // r in {2**level for level in range(num_levels)}]
        effect = (
            f"like the original, {used} put attention at the level(s) of downsampling rate "
            f"{','.join(str(image_size // r) for r in used)} and the others are ignored"
            if used
            else "like the original, it is ignored"
        )
        warnings.warn(
            f"--{flag} {attention_resolutions!r}: {bad} is not the resolution of a level of "
            f"this {image_size}x{image_size} network with {num_levels} levels (valid "
            f"resolutions are {','.join(map(str, valid))}); {effect}",
            stacklevel=3,
        )
    return tuple(image_size // r for r in resolutions)


def create_model(
    image_size: int,
    num_channels: int,
    num_res_blocks: int,
    channel_mult: Union[str, Sequence[float]] = "",
    learn_sigma: bool = False,
    class_cond: bool = False,
    use_checkpoint: bool = False,
    attention_resolutions: str = "16",
    num_heads: int = 1,
    num_head_channels: int = -1,
    num_heads_upsample: int = -1,
    use_scale_shift_norm: bool = False,
    dropout: float = 0,
    resblock_updown: bool = False,
    use_fp16: bool = False,
    use_new_attention_order: bool = False,
    num_classes: int = NUM_CLASSES,
    class_dropout_prob: float = 0.0,
) -> UNetModel:
    """
    Build the image UNet from flags (see ``model_and_diffusion_defaults``).

    :param channel_mult: "" for the image size's default, or comma-separated multipliers.
    :param attention_resolutions: comma-separated resolutions (side lengths) with attention.
    :param num_classes: label count when ``class_cond``.
    :param class_dropout_prob: label dropout for classifier-free guidance (> 0 adds the
        null-class row to the label embedding; needs ``class_cond``).
    :return: the model, in float32 (call ``convert_to_fp16()`` for ``use_fp16``).
    """
    return _unet_from_flags(UNetModel, image_size, MODEL_CHANNEL_MULTS, locals())


def create_classifier_and_diffusion(**kwargs) -> tuple[EncoderUNetModel, SpacedDiffusion]:
    """
    Build the noisy classifier and its diffusion process.

    :param kwargs: every key of ``classifier_and_diffusion_defaults()`` (``num_classes`` and
        ``classifier_channel_mult`` may be left out).
    :return: (classifier, diffusion).
    """
    return _with_diffusion(
        create_classifier,
        kwargs,
        classifier_and_diffusion_defaults(),
        ("num_classes", "classifier_channel_mult"),
    )


def create_classifier(
    image_size: int,
    classifier_use_fp16: bool,
    classifier_width: int,
    classifier_depth: int,
    classifier_attention_resolutions: str,
    classifier_use_scale_shift_norm: bool,
    classifier_resblock_updown: bool,
    classifier_pool: str,
    classifier_channel_mult: str = "",
    num_classes: int = NUM_CLASSES,
) -> EncoderUNetModel:
    """
    Build the noisy classifier from flags (see ``classifier_defaults``): the encoder half of
    the UNet with 64 channels per attention head.

    :param classifier_channel_mult: "" for the image size's default, or multipliers.
    :param num_classes: number of outputs.
    :return: the classifier, in float32.
    """
    mult = _channel_mult(
        classifier_channel_mult, image_size, CLASSIFIER_CHANNEL_MULTS, "classifier_channel_mult"
    )
    return EncoderUNetModel(
        image_size=image_size,
        in_channels=3,
        model_channels=classifier_width,
        out_channels=num_classes,
        num_res_blocks=classifier_depth,
        attention_resolutions=_attention_ds(
            classifier_attention_resolutions,
            image_size,
            len(mult),
            "classifier_attention_resolutions",
        ),
        channel_mult=mult,
        use_fp16=classifier_use_fp16,
        num_head_channels=64,
        use_scale_shift_norm=classifier_use_scale_shift_norm,
        resblock_updown=classifier_resblock_updown,
        pool=classifier_pool,
    )


def sr_create_model_and_diffusion(**kwargs) -> tuple[SuperResModel, SpacedDiffusion]:
    """
    Build the super-resolution model and its diffusion process.

    :param kwargs: every key of ``sr_model_and_diffusion_defaults()`` (``num_classes`` and
        ``class_dropout_prob`` may be left out).
    :return: (model, diffusion).
    """
    return _with_diffusion(
        sr_create_model, kwargs, sr_model_and_diffusion_defaults(), _NEW_MODEL_FLAGS
    )


def sr_create_model(
    large_size: int,
    small_size: int,
    num_channels: int,
    num_res_blocks: int,
    learn_sigma: bool,
    class_cond: bool,
    use_checkpoint: bool,
    attention_resolutions: str,
    num_heads: int,
    num_head_channels: int,
    num_heads_upsample: int,
    use_scale_shift_norm: bool,
    dropout: float,
    resblock_updown: bool,
    use_fp16: bool,
    num_classes: int = NUM_CLASSES,
    channel_mult: Union[str, Sequence[float]] = "",
    class_dropout_prob: float = 0.0,
) -> SuperResModel:
    """
    Build the super-resolution UNet from flags (see ``sr_model_and_diffusion_defaults``).

    :param large_size: output side length.
    :param small_size: input side length (the model upsamples whatever it gets).
    :param channel_mult: "" for the large size's default, or multipliers.
    :param class_dropout_prob: label dropout for classifier-free guidance (see create_model).
    :return: the model, in float32.
    """
    # small_size builds nothing: the low-resolution input is resized to the output size
    return _unet_from_flags(SuperResModel, large_size, SR_CHANNEL_MULTS, locals())


def _unet_from_flags(
    model_class: type, image_size: int, mults: dict[int, tuple], flags: dict[str, Any]
) -> UNetModel:
    """
    Build a ``UNetModel`` or ``SuperResModel`` from the flags of ``create_model`` /
    ``sr_create_model``.

    :param image_size: the output side length.
    :param mults: the default channel multipliers per image size.
    :param flags: the factory's arguments by name (``use_new_attention_order`` may be absent).
    """
    mult = _channel_mult(flags["channel_mult"], image_size, mults, "channel_mult")
    attention_ds = _attention_ds(
        flags["attention_resolutions"], image_size, len(mult), "attention_resolutions"
    )
    same_name = (
        "dropout", "use_checkpoint", "use_fp16", "num_heads", "num_head_channels",
        "num_heads_upsample", "use_scale_shift_norm", "resblock_updown", "class_dropout_prob",
    )  # fmt: skip
    return model_class(
        image_size=image_size,
        in_channels=3,
        model_channels=flags["num_channels"],
        out_channels=6 if flags["learn_sigma"] else 3,
        num_res_blocks=flags["num_res_blocks"],
        attention_resolutions=attention_ds,
        channel_mult=mult,
        num_classes=flags["num_classes"] if flags["class_cond"] else None,
        use_new_attention_order=flags.get("use_new_attention_order", False),
        **{name: flags[name] for name in same_name},
    )


def create_from_flags(args: argparse.Namespace, kind: str = "model") -> tuple[Any, SpacedDiffusion]:
    """
    Build a network and its diffusion process from parsed flags.

    :param args: the parsed flags, holding every key of ``network_defaults(kind)``.
    :param kind: "model", "super_res" or "classifier".
    :return: (network, diffusion).
    """
    create = {
        "model": create_model_and_diffusion,
        "super_res": sr_create_model_and_diffusion,
        "classifier": create_classifier_and_diffusion,
    }[kind]
    return create(**args_to_dict(args, network_defaults(kind)))


def create_gaussian_diffusion(
    *,
    steps: int = 1000,
    learn_sigma: bool = False,
    sigma_small: bool = False,
    noise_schedule: str = "linear",
    use_kl: bool = False,
    predict_xstart: bool = False,
    rescale_timesteps: bool = False,
    rescale_learned_sigmas: bool = False,
    timestep_respacing: Union[str, Sequence[int]] = "",
) -> SpacedDiffusion:
    """
    Build a (possibly re-spaced) diffusion process from flags.

    :param steps: T, the number of diffusion steps.
    :param learn_sigma: the model predicts the variance (LEARNED_RANGE).
    :param sigma_small: fixed small (posterior) variance instead of the large one.
    :param noise_schedule: "linear" or "cosine".
    :param use_kl: train on the rescaled variational bound.
    :param predict_xstart: the model predicts x_0 instead of the noise.
    :param rescale_timesteps: the model sees timesteps scaled to [0, 1000).
    :param rescale_learned_sigmas: the RESCALED_MSE loss.
    :param timestep_respacing: the steps to keep ("" keeps all; see ``space_timesteps``).
    :return: the diffusion process.
    """
    loss_type = _first_set(
        [(use_kl, gd.LossType.RESCALED_KL), (rescale_learned_sigmas, gd.LossType.RESCALED_MSE)],
        gd.LossType.MSE,
    )
    model_var_type = _first_set(
        [(learn_sigma, gd.ModelVarType.LEARNED_RANGE), (sigma_small, gd.ModelVarType.FIXED_SMALL)],
        gd.ModelVarType.FIXED_LARGE,
    )
    betas = gd.get_named_beta_schedule(noise_schedule, steps)
    return SpacedDiffusion(
        use_timesteps=space_timesteps(
            steps, timestep_respacing or [steps], alphas_cumprod=np.cumprod(1.0 - betas)
        ),
        betas=betas,
        model_mean_type=gd.ModelMeanType.START_X if predict_xstart else gd.ModelMeanType.EPSILON,
        model_var_type=model_var_type,
        loss_type=loss_type,
        rescale_timesteps=rescale_timesteps,
    )


def _first_set(choices: Sequence[tuple[bool, Any]], default: Any) -> Any:
    """:return: the value of the first (flag, value) pair whose flag is set, else ``default``."""
    return next((value for flag, value in choices if flag), default)


# ---------------------------------------------------------------- parsing


def add_dict_to_argparser(
    parser: argparse.ArgumentParser,
    default_dict: dict[str, Any],
    helps: Optional[dict[str, str]] = None,
) -> None:
    """
    Add a ``--key`` option per entry of ``default_dict``, typed by its default (booleans
    parse with ``str2bool``, None defaults as strings).

    :param parser: the parser to extend.
    :param default_dict: flag names and defaults.
    :param helps: help texts overriding or extending ``FLAG_HELP``.
    """
    helps = {**FLAG_HELP, **(helps or {})}
    for k, v in default_dict.items():
        v_type = type(v)
        if v is None:
            v_type = str
        elif isinstance(v, bool):
            v_type = str2bool
        text = helps.get(k, k.replace("_", " "))
        parser.add_argument(f"--{k}", default=v, type=v_type, help=f"{text} (default: %(default)s)")


def args_to_dict(args: argparse.Namespace, keys) -> dict[str, Any]:
    """The values of ``keys`` in parsed arguments, as a dict."""
    return {k: getattr(args, k) for k in keys}


def parse_list(text: str, kind: Callable[[str], Any], error: str) -> list:
    """
    Parse a comma-separated flag value such as "32,16,8".

    :param kind: the type of each item (``int``, ``float``).
    :param error: the message of the ValueError raised when an item does not parse.
    :return: the items.
    """
    try:
        return [kind(part) for part in text.split(",")]
    except ValueError:
        raise ValueError(error) from None


def str2bool(v: Union[str, bool]) -> bool:
    """Parse a boolean flag value (yes/no, true/false, t/f, y/n, 1/0)."""
    if isinstance(v, bool):
        return v
    if v.lower() in ("yes", "true", "t", "y", "1"):
        return True
    if v.lower() in ("no", "false", "f", "n", "0"):
        return False
    raise argparse.ArgumentTypeError(f"boolean value expected (true/false, yes/no, 1/0), got {v!r}")
