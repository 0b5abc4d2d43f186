"""
The editing programs' flags (``scripts/image_edit.py``, ``scripts/ddim_invert.py``): their
defaults and help, and the checks that refuse a bad value in one line naming the flag before
anything is loaded. The flags every program shares, and parsing, are ``flags``'.
"""

import argparse
from typing import Any, Optional

from . import flags
from .operators import MASK_NAMES, OPERATOR_NAMES
from .respace import space_timesteps
from .script_errors import SamplingInputError

EDIT_METHODS = ("repaint", "sdedit", "ilvr", "dps", "ddnm")

EDIT_FLAG_HELP = {
    "guidance_scale": "classifier-free guidance scale s: eps(null) + s (eps(y) - eps(null)); "
    "1: the model as it is, 0: the null class alone (the labels withheld); other than 1 "
    "needs a model trained with --class_dropout_prob > 0",
    "method": f"editing method: {', '.join(EDIT_METHODS)}",
    "operator": f"degradation applied to the input: {', '.join(OPERATOR_NAMES)} "
    "(repaint needs inpaint; ddnm an operator with a pseudo-inverse: none, inpaint, "
    "sr_avgpool, colorize)",
    "input": "the images: a .npz batch (arr_0 uint8 NHWC, arr_1 labels), a folder, or one image",
    "mask": "inpainting mask: an image file of the images' size, known where its first (red) "
    f"channel is >= 128 (white) and hidden elsewhere, or one of {', '.join(MASK_NAMES)}",
    "mask_ratio": "hidden fraction of the 'random' mask (DPS: 0.92)",
    "mask_seed": "seed of the 'random' mask",
    "sr_factor": "super-resolution factor of sr_avgpool / sr_bicubic (DPS, DDNM: 4)",
    "blur_kernel_size": "Gaussian blur kernel side (DPS: 61)",
    "blur_sigma": "Gaussian blur standard deviation in pixels (DPS: 3.0)",
    "sigma_y": "measurement noise added to A x, in [-1, 1] units (DPS: 0.05)",
    "sdedit_strength": "SDEdit t0 / T (paper's examples: 0.5; its code's default 0.4)",
    "sdedit_repeats": "SDEdit repeats, each from the previous output (paper's examples: 3)",
    "repaint_jump_length": "RePaint: steps per jump back (paper: 10)",
    "repaint_jump_n_sample": "RePaint: visits of each jump point (paper: 10)",
    "repaint_paste": "RePaint: paste the known pixels into the result (paper: False)",
    "ilvr_down_n": "ILVR low-pass factor N (paper: 4 to 64)",
    "ilvr_range_t": "ILVR refines only at steps t > range_t (re-spaced indices)",
    "ilvr_filter": "ILVR low-pass: bicubic (paper) or avgpool (exact projection)",
    "dps_zeta": "DPS step size zeta' (paper, ImageNet: 1.0 SR x4 and inpainting, 0.4 deblur)",
    "ddnm_eta": "DDNM share of fresh noise per step (paper: 0.85, 100 steps)",
    "classifier_scale": "classifier guidance scale with --classifier_path (RePaint: 1.0)",
    "classifier_path": "optional noisy classifier (.pt) for classifier guidance",
    "class_labels": "comma-separated class ids cycled over the images; default: the "
    "input's labels (arr_1), else random classes",
    "num_samples": "edit the first N input images (0: all)",
    "seed": "random seed: the same seed and --batch_size give the same file, whatever the "
    "number of ranks (each batch draws from the seed and its first image's index); default: a "
    "fresh seed, printed so the run can be repeated",
    "batch_size": "images per model call on each rank",
    "mode": "encode: images -> noise .npz (and report the round-trip error); "
    "decode: noise .npz -> images",
    "report_error": "encode: decode again (with the same labels and guidance) and report "
    "the round-trip error",
    "clip_denoised": "clamp x0 predictions to [-1, 1]",
}


def image_edit_defaults() -> dict[str, object]:
    """Flags of scripts/image_edit.py besides the model's, with the published values."""
    return dict(
        method="repaint",
        operator="inpaint",
        input="",
        mask="half",
        mask_ratio=0.92,
        mask_seed=0,
        sr_factor=4,
        blur_kernel_size=61,
        blur_sigma=3.0,
        sigma_y=0.0,
        sdedit_strength=0.5,
        sdedit_repeats=3,
        repaint_jump_length=10,
        repaint_jump_n_sample=10,
        repaint_paste=False,
        ilvr_down_n=4,
        ilvr_range_t=0,
        ilvr_filter="bicubic",
        dps_zeta=1.0,
        ddnm_eta=0.85,
        classifier_path="",
        classifier_scale=1.0,
        **edit_common_defaults(),
    )


def ddim_invert_defaults() -> dict[str, object]:
    """Flags of scripts/ddim_invert.py besides the model's."""
    return dict(
        mode="encode",
        input="",
        report_error=True,
        classifier_path="",
        classifier_scale=1.0,
        **edit_common_defaults(clip_denoised=False),
    )


def edit_common_defaults(clip_denoised: bool = True) -> dict[str, object]:
    """The flags both editing programs share."""
    return dict(
        clip_denoised=clip_denoised,
        class_labels="",
        num_samples=0,
        batch_size=16,
        model_path="",
        seed=None,
        grid=True,
        guidance_scale=1.0,
    )


def check_edit_method(method: str, operator: str) -> None:
    """Reject an unknown ``--method`` or ``--operator``, and a method without its operator."""
    if method not in EDIT_METHODS:
        raise SamplingInputError(f"--method {method!r} is not one of {', '.join(EDIT_METHODS)}")
    if operator not in OPERATOR_NAMES:
        raise SamplingInputError(
            f"--operator {operator!r} is not one of {', '.join(OPERATOR_NAMES)}"
        )
    if method == "repaint" and operator != "inpaint":
        raise SamplingInputError(
            f"--method repaint inpaints: it needs --operator inpaint, got {operator!r}"
        )


def check_edit_flags(args: argparse.Namespace) -> None:
    """
    Check the editing programs' flags (those of ``image_edit_defaults`` and
    ``ddim_invert_defaults`` that ``args`` has) before anything is loaded, whatever the
    ``--method``: a value no method could use is refused in one line naming its flag.

    :raises SamplingInputError: the first flag out of its range.
    """
    if hasattr(args, "method"):
        check_edit_method(args.method, args.operator)
    for flag, valid, rule in _edit_rules(int(args.image_size), getattr(args, "method", "")):
        value = getattr(args, flag, None)
        if value is not None and not valid(value):
            raise SamplingInputError(f"--{flag} {value} is out of range: it must be {rule}")
    if getattr(args, "class_labels", ""):
        flags.class_labels_of(args)  # ids in range of the model's classes
    steps = _sampling_steps(args)
    if getattr(args, "method", "") == "ilvr" and steps is not None and args.ilvr_range_t >= steps - 1:
        raise SamplingInputError(
            f"--ilvr_range_t must lie in 0..{steps - 2}: ILVR refines at the steps t > "
            f"range_t of the {steps} sampling steps (0..{steps - 1}), so "
            f"{args.ilvr_range_t} refines none"
        )


def _edit_rules(image_size: int, method: str) -> list[tuple[str, Any, str]]:
    """
    (flag, valid(value), what is valid) for every editing flag with a range; the factors'
    fit to the image size only where ``method`` uses them (the operators check their own).
    """
    divisors = [d for d in range(1, image_size + 1) if image_size % d == 0]
    down_n = (
        (lambda v: v in divisors, f"a divisor of the image size {image_size} "
         f"({', '.join(map(str, divisors))}): ILVR resizes the images down by it")
        if method == "ilvr" else (lambda v: v >= 1, "a positive factor")
    )  # fmt: skip
    return [
        ("mode", lambda v: v in ("encode", "decode"), "encode or decode"),
        ("num_samples", lambda v: v >= 0, "a count >= 0 (0: every input image)"),
        ("batch_size", lambda v: v >= 1, "a positive integer"),
        ("guidance_scale", lambda v: v >= 0, ">= 0 (1: no classifier-free guidance)"),
        ("mask_ratio", lambda v: 0 <= v <= 1, "a fraction in [0, 1]"),
        ("sigma_y", lambda v: v >= 0, "a noise level >= 0 (0: noiseless measurements)"),
        ("sdedit_strength", lambda v: 0 <= v <= 1, "t0 / T in [0, 1]"),
        ("sdedit_repeats", lambda v: v >= 1, "a positive number of repeats"),
        ("repaint_jump_length", lambda v: v >= 1, "a positive number of steps"),
        ("repaint_jump_n_sample", lambda v: v >= 1, "a positive number of visits (1: no jumps)"),
        ("ilvr_down_n", *down_n),
        ("ilvr_range_t", lambda v: v >= 0, "a step index >= 0"),
        ("ilvr_filter", lambda v: v in ("bicubic", "avgpool"), "bicubic or avgpool"),
        ("dps_zeta", lambda v: v >= 0, "a step size >= 0"),
        ("ddnm_eta", lambda v: 0 <= v <= 1, "a share of fresh noise in [0, 1]"),
        ("sr_factor", lambda v: v >= 1, "a positive factor"),
        ("blur_kernel_size", lambda v: v >= 1 and v % 2 == 1, "an odd positive number of pixels"),
        ("blur_sigma", lambda v: v > 0, "a positive number of pixels"),
    ]  # fmt: skip


def _sampling_steps(args: argparse.Namespace) -> Optional[int]:
    """:return: the number of sampling steps the flags give, or None when they are invalid."""
    try:
        steps = int(args.diffusion_steps)
        return len(space_timesteps(steps, args.timestep_respacing or [steps]))
    except (ValueError, AttributeError, TypeError):
        return None  # the process's own checks name the flag
