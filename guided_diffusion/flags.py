"""
Every command-line flag of the programs in one place: the defaults (the original's names
and values, plus the new flags), the help texts, and adding them to a parser.

- models and diffusion: ``model_and_diffusion_defaults``, ``sr_model_and_diffusion_defaults``,
  ``classifier_defaults``, ``classifier_and_diffusion_defaults``, ``diffusion_defaults``
  (``network_defaults(kind)`` picks one by the kind of network);
- training: ``diffusion_train_defaults`` (image_train.py, super_res_train.py),
  ``classifier_train_defaults`` (classifier_train.py), ``TRAIN_LOOP_FLAGS``;
- sampling: ``sampling_defaults`` (image_sample.py, classifier_sample.py,
  super_res_sample.py) and ``nll_defaults`` (image_nll.py);
- editing: ``image_edit_defaults``, ``ddim_invert_defaults`` (``EDIT_FLAG_HELP``);
- help: ``FLAG_HELP`` (every flag), with ``TRAIN_FLAG_HELP`` and ``SAMPLING_FLAG_HELP``
  (and ``EDIT_FLAG_HELP``) wording the flags the way those programs use them.

A new flag goes into a defaults function here first, so that it reaches the programs and,
for model flags, the run configuration saved beside every checkpoint (``run_config``).
The original modules keep these names importable (``script_util``, ``train_util``,
``sample_util``).
"""

import argparse
from typing import Any, Callable, Optional, Union

from .operators import MASK_NAMES, OPERATOR_NAMES

NUM_CLASSES = 1000


# ---------------------------------------------------------------- models and diffusion


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


# ---------------------------------------------------------------- training


# ``image_datasets.load_data`` arguments that image_train.py takes from the flags of the same name.
DATA_FLAGS = ("data_dir", "batch_size", "image_size", "class_cond", "random_flip")

# ``TrainLoop`` arguments that come straight from the command-line flags of the same name.
TRAIN_LOOP_FLAGS = (
    "batch_size",
    "microbatch",
    "lr",
    "ema_rate",
    "log_interval",
    "save_interval",
    "resume_checkpoint",
    "use_fp16",
    "fp16_scale_growth",
    "weight_decay",
    "lr_anneal_steps",
    "use_bf16",
    "max_steps",
    "seed",
)

# Help for the training flags that FLAG_HELP does not cover.
TRAIN_FLAG_HELP = {
    "max_steps": "stop after this many training steps in total, counting those of a resumed "
    "run (0: no limit)",
    "use_bf16": "train with the forward pass in bfloat16 autocast (float32 weights, no loss "
    "scaling; not with --use_fp16)",
    "random_flip": "flip training images horizontally at random (the original's augmentation; "
    "False for data whose mirror image is another thing, such as digits or text)",
    "seed": "random seed: model initialisation, and every step's noise and timesteps "
    "(reseeded from seed, rank and step, so a resumed run draws what an "
    "uninterrupted one would)",
}


def diffusion_train_defaults() -> dict:
    """
    Defaults of the flags shared by the diffusion training scripts (``image_train.py``,
    ``super_res_train.py``): the original ones plus ``max_steps``, ``use_bf16``, ``seed`` and
    ``random_flip``.
    """
    return dict(
        data_dir="",
        schedule_sampler="uniform",
        lr=1e-4,
        weight_decay=0.0,
        lr_anneal_steps=0,
        batch_size=1,
        microbatch=-1,  # -1 disables microbatches
        ema_rate="0.9999",  # comma-separated list of EMA values
        log_interval=10,
        save_interval=10000,
        resume_checkpoint="",
        use_fp16=False,
        fp16_scale_growth=1e-3,
        max_steps=0,
        use_bf16=False,
        seed=0,
        random_flip=True,
    )


def classifier_train_defaults() -> dict[str, Any]:
    """Defaults of classifier_train.py's own flags (the original's, plus ``seed``,
    ``use_bf16`` and ``random_flip``)."""
    return dict(
        data_dir="",
        val_data_dir="",
        noised=True,
        iterations=150000,
        lr=3e-4,
        weight_decay=0.0,
        anneal_lr=False,
        batch_size=4,
        microbatch=-1,
        schedule_sampler="uniform",
        resume_checkpoint="",
        log_interval=10,
        eval_interval=5,
        save_interval=10000,
        seed=0,
        use_bf16=False,
        random_flip=True,
    )


# ``ClassifierTrainLoop`` arguments that come straight from the flags of the same name.
CLASSIFIER_LOOP_FLAGS = (
    "noised",
    "iterations",
    "anneal_lr",
    "eval_interval",
    "batch_size",
    "microbatch",
    "lr",
    "weight_decay",
    "log_interval",
    "save_interval",
    "resume_checkpoint",
    "seed",
    "use_bf16",
)


# ---------------------------------------------------------------- sampling


def sampling_defaults(**script_flags) -> dict[str, object]:
    """
    The flags every sampling program has, with the original defaults, plus the new
    ``--seed``, ``--grid``, ``--guidance_scale``, ``--guide_model_path``, ``--keep_shards``,
    ``--sampler``, ``--guidance_interval`` and the sampler settings of
    ``samplers.SETTING_FLAGS``; ``script_flags`` adds a program's own flags.

    :return: flag name -> default, for add_flags().
    """
    return dict(
        clip_denoised=True,
        num_samples=10000,
        batch_size=16,
        use_ddim=False,
        model_path="",
        seed=None,
        grid=True,
        guidance_scale=1.0,
        guide_model_path="",
        keep_shards=False,
        sampler="ancestral",
        guidance_interval="",
        unipc_order=2,
        third_order_form="exact",
        sde_eta=1.0,
        lower_order_final="always",
        dynamic_threshold=0.0,
        S_churn=0.0,
        S_tmin=0.0,
        S_tmax=1e9,
        S_noise=1.0,
        **script_flags,
    )


def nll_defaults() -> dict[str, object]:
    """Defaults of image_nll.py's own flags (the original's, plus ``seed``, ``save_terms``
    and ``keep_shards``)."""
    return dict(
        data_dir="",
        clip_denoised=True,
        num_samples=1000,
        batch_size=1,
        model_path="",
        seed=None,
        save_terms=True,
        keep_shards=False,
    )


# ---------------------------------------------------------------- editing (image_edit.py, ddim_invert.py)

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
    "mask": f"inpainting mask: an image file (white = known) or {', '.join(MASK_NAMES)}",
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
    "batch_size": "images per model call on each rank",
    "mode": "encode: images -> noise .npz (and report the round-trip error); "
    "decode: noise .npz -> images",
    "report_error": "encode: decode again and report the round-trip error",
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


# ---------------------------------------------------------------- help and parsers

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
    "classifier_scale": "scale of the classifier gradient in guided sampling",
    "classifier_path": "classifier checkpoint (.pt)",
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
    # training and sampling
    "data_dir": "folder of training images (searched recursively)",
    "val_data_dir": "folder of validation images",
    "schedule_sampler": "timestep sampler: uniform or loss-second-moment",
    "lr": "learning rate",
    "weight_decay": "AdamW weight decay",
    "lr_anneal_steps": "anneal the learning rate linearly to 0 over this many steps (0: off)",
    "batch_size": "batch size per process",
    "microbatch": "split batches into microbatches of this size (-1: off)",
    "ema_rate": "comma-separated EMA rates",
    "log_interval": "steps between log rows",
    "save_interval": "steps between checkpoints",
    "eval_interval": "steps between evaluations",
    "resume_checkpoint": "checkpoint to resume from (model{step}.pt)",
    "fp16_scale_growth": "log2 loss-scale growth per good fp16 step",
    "iterations": "number of training steps",
    "anneal_lr": "anneal the learning rate linearly to 0",
    "noised": "train the classifier on noised images",
    "clip_denoised": "clip the predicted x_0 to [-1, 1] while sampling",
    "num_samples": "number of samples to draw",
    "use_ddim": "sample with DDIM instead of ancestral steps",
    "model_path": "model checkpoint (.pt)",
    "base_samples": ".npz of low-resolution samples to upsample",
}

# Help for the flags only the sampling scripts have, and sharper wording for a few that
# FLAG_HELP describes for training as well.
SAMPLING_FLAG_HELP = {
    "num_samples": "how many images to produce in total, over all ranks",
    "batch_size": "images per model call on each rank",
    "classifier_scale": "guidance scale: multiplies the classifier's gradient (0: no guidance)",
    "base_samples": ".npz batch of low-resolution images to upsample (arr_0 uint8 NHWC at "
    "--small_size; arr_1 labels, needed when --class_cond True)",
    "data_dir": "folder of images to evaluate (searched recursively)",
    "seed": "random seed for reproducible batches (the same seed and --batch_size give the "
    "same file, whatever the number of ranks); default: a fresh seed, printed so the run can "
    "be repeated",
    "class_labels": "comma-separated class ids to sample, cycled over the images "
    "(e.g. '1,207,360'); default: random classes",
    "grid": "also write a PNG grid of the first samples beside the .npz",
    "guidance_scale": "classifier-free guidance scale s: eps(null) + s (eps(y) - eps(null)); "
    "1: plain conditional, 0: unconditional, > 1 needs a model trained with "
    "--class_dropout_prob > 0; with --guide_model_path the autoguidance scale instead",
    "guide_model_path": "autoguidance: a smaller or less-trained model of the same kind "
    "(.pt; built from the run configuration beside it, else from the main model's flags); "
    "the prediction becomes "
    "guide + s (main - guide) with s = --guidance_scale",
    "sampler": "ancestral (the original), ddim (also --use_ddim True), dpm++2m, dpm++3m "
    "(DPM-Solver++, Lu et al. 2022), dpm++2m-sde (its stochastic form: fresh noise at every "
    "step), unipc (Zhao et al. 2023) or edm (Karras et al. 2022, Algorithm 2: Heun steps, "
    "stochastic with --S_churn > 0); one model evaluation per step of --timestep_respacing, "
    "edm two (one at the last step)",
    "unipc_order": "UniPC's predictor order (its corrector adds one): 2 below about 20 "
    "steps, 3 from 20 to 25 steps on a log-SNR grid (measured on an exact Gaussian-mixture "
    "model: docs/samplers.md); 1 gives the order-2 UniPC-p1",
    "third_order_form": "dpm++3m's third-order term: exact (2 D2, the Taylor expansion, order "
    "3: for 20 steps or more) or circulated (D2, the widely shared 3M code, order 2: to "
    "reproduce its numbers; a little better at 10 to 15 steps on the mixture model)",
    "sde_eta": "dpm++2m-sde's amount of fresh noise: 1 the reverse SDE (corrects model errors "
    "best), 0 the probability-flow ODE (dpm++2m), between: less noise for few steps",
    "lower_order_final": "when dpm++2m / dpm++3m / dpm++2m-sde / unipc lower the order of the "
    "last steps (the step into the last grid point first order, the one before at most "
    "second): always, never, or belowN (only on grids of fewer than N steps, e.g. below15)",
    "dynamic_threshold": "dynamic thresholding (Saharia et al. 2022) for every sampler: per "
    "image s = max(1, the P quantile of |x0|), x0 <- clip(x0, -s, s) / s; use about 0.995 "
    "against saturated colours at high guidance scales (0: off)",
    "S_churn": "--sampler edm: the total noise added back (Karras et al. 2022; 0: "
    "deterministic Heun; their ImageNet-64 ADM setting 80 with --S_tmin 0.05 --S_tmax 50 "
    "--S_noise 1.003), for imperfect models at 20 steps or more",
    "S_tmin": "--sampler edm: churn only at noise levels sigma/alpha >= S_tmin",
    "S_tmax": "--sampler edm: churn only at noise levels sigma/alpha <= S_tmax (the "
    "default lies above every level)",
    "S_noise": "--sampler edm: scale of the churn's noise (slightly above 1 offsets "
    "detail lost by the denoiser)",
    "guidance_interval": "'LO,HI': guide only where the noise level sigma_t / alpha_t lies in "
    "(LO, HI], skipping the guidance evaluations elsewhere (Kynkaanniemi et al. 2024; e.g. "
    "'0.28,5.42'); empty: guide at every step",
    "keep_shards": "keep the folder of shards (saved as each round finishes, so that "
    "rerunning a killed command resumes) after the final .npz is written",
    "save_terms": (
        "save the per-timestep bound terms as {vb,mse,xstart_mse}_terms.npz in the log "
        "directory, as the original does (False: only print bits/dim)"
    ),
}


def create_parser(
    description: str, *defaults: dict[str, Any], helps: Optional[dict[str, str]] = None
) -> argparse.ArgumentParser:
    """
    A program's parser: ``description`` (its docstring, kept as written) and a flag per
    entry of the ``defaults`` dicts (see ``add_dict_to_argparser``).
    """
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_dict_to_argparser(parser, {k: v for group in defaults for k, v in group.items()}, helps)
    return parser


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


def add_flags(
    parser: argparse.ArgumentParser,
    defaults: dict[str, object],
    helps: Optional[dict[str, str]] = None,
) -> None:
    """
    Add a sampling (or editing) program's own flags (not the model flags) with their
    sampling help; like ``add_dict_to_argparser``, except that ``--seed`` (default None) is
    an int.

    :param parser: the parser to extend.
    :param defaults: flag name -> default.
    :param helps: help texts overriding ``SAMPLING_FLAG_HELP`` (e.g. ``EDIT_FLAG_HELP``).
    """
    helps = {**SAMPLING_FLAG_HELP, **(helps or {})}
    defaults = dict(defaults)
    if "seed" in defaults:
        default = defaults.pop("seed")
        text = helps["seed"]
        parser.add_argument("--seed", type=int, default=default, help=f"{text} (default: {default})")
    add_dict_to_argparser(parser, defaults, helps=helps)


def create_sampling_parser(
    description: str, own: dict[str, object], *model_defaults: dict[str, Any]
) -> argparse.ArgumentParser:
    """
    A sampling (or evaluation) program's parser: its own flags first, with the sampling
    help (``add_flags``), then the model flags of ``model_defaults``.

    :param description: the program's docstring, kept as written.
    :param own: the program's own flags and defaults (e.g. ``sampling_defaults()``).
    :param model_defaults: dicts of model, diffusion (and classifier) flags.
    """
    parser = create_parser(description)
    add_flags(parser, own)
    add_dict_to_argparser(parser, {k: v for group in model_defaults for k, v in group.items()})
    return parser


def create_train_parser(description: str, *defaults: dict[str, Any]) -> argparse.ArgumentParser:
    """A training program's parser: the flags of ``defaults`` with the training help."""
    return create_parser(description, *defaults, helps=TRAIN_FLAG_HELP)


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
