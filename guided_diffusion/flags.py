"""
Every program's flags, parsed and checked in one place: the programs' own flags (sampling,
training, editing; the networks' and diffusion processes' flags are ``script_util``'s), their
help, the parsers, and ``parse_args``, which fills in the model flags of a checkpoint from
what is known about it and checks them before any work starts.

A program reads its flags here, then sets up distribution, then does its work::

    def main(argv=None):
        args = flags.parse_args(create_argparser(), argv, model_path="model")
        flags.check_counts(args.num_samples, args.batch_size)  # and other checks
        dist_util.setup_dist()
        ...

    if __name__ == "__main__":
        script_errors.run_program(main)

- parsers: ``create_parser`` (a program's own flags, with help), ``create_sampling_parser``
  (sampling, evaluating, editing) and ``create_train_parser``, with ``--preset`` where the
  program builds a network;
- ``parse_args(parser, argv, model_path="model", ...)``: the model flags not given come from
  the run configuration saved beside the checkpoint (``run_config``), from ``--preset NAME``
  or, for a published checkpoint with neither, from its layout recognised in the state dict
  (``presets``); a given flag that contradicts them is refused naming it;
- ``parse_train_args``: the same for ``--resume_checkpoint``, plus every training check,
  returning the loop's settings (``train_config.TrainConfig``);
- checks: ``check_counts``, ``parse_class_labels`` / ``class_labels_of``,
  ``check_train_args``, ``check_num_classes`` (the editing programs' own flags and checks are
  ``edit_flags``').

A new flag goes into a defaults function here (or in ``script_util`` for a network flag)
first, so that it reaches the programs and, for model flags, the run configuration saved
beside every checkpoint.
"""

import argparse
import math
from typing import Any, Optional

from . import presets, run_config
from .fp16_util import check_precision
from .image_datasets import list_classes
from .script_errors import ArgumentParser, SamplingInputError
from .script_util import NUM_CLASSES, add_dict_to_argparser
from .train_config import TrainConfig, classifier_train_config


# ---------------------------------------------------------------- training


# ``image_datasets.load_data`` arguments that image_train.py takes from the flags of the same name.
DATA_FLAGS = ("data_dir", "batch_size", "image_size", "class_cond", "random_flip")

# Help for the training flags that PROGRAM_FLAG_HELP does not cover.
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


# Help for the programs' own flags (the network flags' is ``script_util.FLAG_HELP``).
PROGRAM_FLAG_HELP = {
    "classifier_scale": "scale of the classifier gradient in guided sampling",
    "classifier_path": "classifier checkpoint (.pt)",
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
# PROGRAM_FLAG_HELP describes for training as well.
SAMPLING_FLAG_HELP = {
    "num_samples": "how many images to produce in total, over all ranks",
    "batch_size": "images per model call on each rank",
    "classifier_scale": "guidance scale: multiplies the classifier's gradient (0: no guidance)",
    "base_samples": ".npz batch of low-resolution images to upsample (arr_0 uint8 NHWC at "
    "--small_size; arr_1 labels, needed when --class_cond True)",
    "data_dir": "folder of images to evaluate (searched recursively)",
    "seed": "random seed for reproducible batches: image i depends on the seed and i alone, so "
    "the same seed gives the same file whatever --batch_size and the number of ranks; default: "
    "a fresh seed, printed so the run can be repeated",
    "class_labels": "comma-separated class ids to sample, cycled over the images "
    "(e.g. '1,207,360'); default: random classes",
    "grid": "also write a PNG grid of the first samples beside the .npz",
    "guidance_scale": "classifier-free guidance scale s: eps(null) + s (eps(y) - eps(null)); "
    "1: plain conditional, 0: unconditional, > 1 needs a model trained with "
    "--class_dropout_prob > 0; with --guide_model_path the autoguidance scale instead",
    "guide_model_path": "autoguidance: a smaller or less-trained model of the same kind "
    "(.pt; built from the run configuration beside it, else from the main model's flags); "
    "the prediction becomes guide + s (main - guide) with s = --guidance_scale. The guide "
    "must have the main model's image size, --learn_sigma and diffusion process (checked "
    "before sampling); an unconditional guide of a class-conditional model gets no labels "
    "(classifier-free guidance with a separate unconditional model)",
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
    description: str,
    *defaults: dict[str, Any],
    helps: Optional[dict[str, str]] = None,
    choices: Optional[dict[str, list[str]]] = None,
) -> argparse.ArgumentParser:
    """
    A program's parser: ``description`` (its docstring, kept as written) and a flag per
    entry of the ``defaults`` dicts (see ``script_util.add_dict_to_argparser``). A command
    line it cannot parse is a user error (``script_errors.ArgumentParser``: one line, exit
    status 1 under ``run_program``).

    :param helps: help texts over ``PROGRAM_FLAG_HELP`` and the network flags' help.
    :param choices: the values some flags are limited to, by flag name.
    """
    parser = ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    merged = {k: v for group in defaults for k, v in group.items()}
    add_dict_to_argparser(parser, merged, {**PROGRAM_FLAG_HELP, **(helps or {})})
    for action in parser._actions:
        action.choices = (choices or {}).get(action.dest, action.choices)
    return parser


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
    :param helps: help texts overriding ``SAMPLING_FLAG_HELP`` (e.g.
        ``edit_flags.EDIT_FLAG_HELP``).
    """
    helps = {**PROGRAM_FLAG_HELP, **SAMPLING_FLAG_HELP, **(helps or {})}
    defaults = dict(defaults)
    if "seed" in defaults:
        default = defaults.pop("seed")
        text = helps["seed"]
        parser.add_argument("--seed", type=int, default=default, help=f"{text} (default: {default})")
    add_dict_to_argparser(parser, defaults, helps=helps)


def add_preset_flag(parser: argparse.ArgumentParser, kind: str, recognised: bool = True) -> None:
    """
    Add ``--preset``: the flags of a published checkpoint of ``kind`` (``presets``).

    :param recognised: the program recognises a published checkpoint without it.
    """
    names = presets.names(kind)

    def preset_name(text: str) -> str:
        if text and text not in names:
            raise argparse.ArgumentTypeError(f"{text!r} is not one of {', '.join(names)}")
        return text

    default = "none"
    if recognised:
        default += (
            ": the run configuration beside the checkpoint gives them, else the published "
            "checkpoint whose layout its state dict has"
        )
    parser.add_argument(
        "--preset", type=preset_name, default="",
        help=f"the network and diffusion flags of a published checkpoint: {', '.join(names)}; "
        f"a flag given besides must not change its layout (default: {default})",
    )  # fmt: skip


def create_sampling_parser(
    description: str,
    own: dict[str, object],
    *model_defaults: dict[str, Any],
    kind: str = "model",
    helps: Optional[dict[str, str]] = None,
) -> argparse.ArgumentParser:
    """
    A sampling, evaluation or editing program's parser: its own flags first, with the
    sampling help (``add_flags``), then the model flags of ``model_defaults`` and ``--preset``.

    :param description: the program's docstring, kept as written.
    :param own: the program's own flags and defaults (e.g. ``sampling_defaults()``).
    :param model_defaults: dicts of model, diffusion (and classifier) flags.
    :param kind: the kind of network of ``--model_path`` ("model" or "super_res").
    :param helps: help texts over the sampling help (``edit_flags.EDIT_FLAG_HELP`` for
        editing).
    """
    parser = create_parser(description)
    add_flags(parser, own, helps)
    add_dict_to_argparser(parser, {k: v for group in model_defaults for k, v in group.items()})
    add_preset_flag(parser, kind)
    return parser


def create_train_parser(
    description: str, *defaults: dict[str, Any], kind: str = "model"
) -> argparse.ArgumentParser:
    """A training program's parser: the flags of ``defaults`` with the training help, and
    ``--preset`` for the kind of network it trains."""
    parser = create_parser(description, *defaults, helps=TRAIN_FLAG_HELP)
    add_preset_flag(parser, kind, recognised=False)
    return parser


# ---------------------------------------------------------------- parsing


def given_flags(parser: argparse.ArgumentParser, argv: Optional[list[str]] = None) -> set[str]:
    """
    The flags given on the command line (whatever their value), as destination names.

    :param argv: the arguments (None: ``sys.argv[1:]``), already known to parse.
    """
    # a marker per flag; "append" flags add to a copy of a list, so theirs is an empty list
    markers = {
        a.dest: [] if isinstance(a, argparse._AppendAction) else object()
        for a in parser._actions
        if a.default is not argparse.SUPPRESS
    }
    namespace = argparse.Namespace(**markers)
    parser.parse_args(argv, namespace=namespace)
    return {name for name, value in vars(namespace).items() if value is not markers[name]}


def parse_args(
    parser: argparse.ArgumentParser,
    argv: Optional[list[str]] = None,
    recognise: bool = True,
    **checkpoint_flags: str,
) -> argparse.Namespace:
    """
    Parse a program's flags and fill in the network (and diffusion) flags of each checkpoint
    named by ``checkpoint_flags`` that the command line does not give:

    - from the run configuration saved beside the checkpoint (``run_config``): a flag given
      with another value is refused, unless it does not change the network
      (``run_config.RUNTIME_FLAGS``);
    - from ``--preset NAME`` (the first checkpoint's network): a flag given that would build
      another layout is refused; the others (e.g. ``--use_fp16``) stay as given;
    - for a checkpoint with neither, when ``recognise``: from the published checkpoint whose
      layout its state dict has (``presets.recognise_file``), if no flag that changes a
      layout was given; otherwise such flags that contradict that layout are refused.

    :param parser: the program's parser.
    :param argv: the arguments (None: ``sys.argv[1:]``).
    :param checkpoint_flags: flag naming a checkpoint -> the kind of network it holds, e.g.
        ``model_path="model", classifier_path="classifier"``. The diffusion flags come from
        the first one; the others give their network's flags only.
    :return: the flags, plus ``class_names``: the training folder's class names (label i is
        ``class_names[i]``) when a configuration records them, else None; and ``presets``:
        checkpoint flag -> what its flags were taken from, for the log.
    :raises RunConfigError: a flag given contradicts a checkpoint's, or two checkpoints
        were trained for different settings.
    """
    args = parser.parse_args(argv)
    check_finite_flags(args)
    check_seed_flags(args)
    args.class_names, args.presets, args.label_counts = None, {}, {}
    explicit = given_flags(parser, argv)
    filled: dict[str, tuple[Any, str]] = {}  # flag -> (value, where it comes from)
    trained: dict[str, tuple[list[str], str]] = {}  # flag -> (class names, configuration)
    for position, (flag, kind) in enumerate(checkpoint_flags.items()):
        path = getattr(args, flag)
        named = getattr(args, "preset", "") if position == 0 else ""
        if named:
            values = _preset_values(named, kind, position)
            _refuse_contradiction(args, named, explicit, f"--preset {named}")
            _fill(args, values, explicit, filled, f"--preset {named}", check_given=False)
            args.presets[flag] = f"the flags of --preset {named}"
        config = run_config.read_run_config(path) if path else None
        if config is not None:
            _fill_from_config(args, config, flag, kind, position, explicit, filled)
            names = (config.get("data") or {}).get("class_names")
            if names and run_config.is_class_conditional(kind, config["model_flags"]):
                trained[flag] = (names, run_config.config_path(path))
        elif recognise and not named and path:
            _fill_recognised(args, flag, kind, position, explicit, filled)
    _check_trained_classes(args, trained)
    return args


def _check_trained_classes(args: argparse.Namespace, trained: dict[str, tuple[list[str], str]]):
    """
    Networks used together (a diffusion model and its classifier) must agree on what each
    label means: the same class names where their run configurations record them, and
    labels for every class that sampling draws (``num_classes_of``). Their label counts
    (``--num_classes``) may differ: a model kept at the default 1000 and a classifier
    trained with --num_classes 3 on the same 3 classes work together.

    :param trained: checkpoint flag -> (the class names its configuration records, its path).
    :raises RunConfigError: naming both checkpoints and their classes, or the network
        without labels for a drawn class.
    """
    (first, (names, where)), *others = list(trained.items()) or [(None, (None, None))]
    for flag, (other_names, other_where) in others:
        if other_names != names:
            raise run_config.RunConfigError(
                f"--{first} {getattr(args, first)} was trained on the classes "
                f"{_some(names)} ({where}) but --{flag} {getattr(args, flag)} on "
                f"{_some(other_names)} ({other_where}): a label would mean another class to "
                "each; use networks trained on the same classes"
            )
    drawn = num_classes_of(args)
    for flag, count in args.label_counts.items():
        if drawn > count:
            raise run_config.RunConfigError(
                f"sampling draws labels 0..{drawn - 1} ({class_count_origin(args)}) but --{flag} "
                f"{getattr(args, flag)} has labels for {count} classes only (its run "
                f"configuration says num_classes {count}): use networks trained on the same "
                "classes"
            )


def _some(names: list[str], shown: int = 5) -> str:
    """The first ``shown`` class names, for messages."""
    return ", ".join(names[:shown]) + (f", ... ({len(names)} in all)" if len(names) > shown else "")


def _fill_from_config(args, config: dict, flag: str, kind: str, position: int, explicit, filled):
    """Fill in the flags saved in a checkpoint's run configuration (see ``parse_args``)."""
    path = getattr(args, flag)
    if config["kind"] != kind:
        raise run_config.RunConfigError(
            f"--{flag} {path} holds a {config['kind'].replace('_', '-')} network (see "
            f"{run_config.config_path(path)}), not a {kind.replace('_', '-')} network: give it "
            "to the program for that kind"
        )
    values = dict(config["model_flags"])
    if position == 0:
        values.update(config.get("diffusion_flags") or {})
    if not run_config.is_class_conditional(kind, values):
        values.pop("num_classes", None)  # no label embedding: the count builds nothing
    elif "num_classes" in values:
        args.label_counts[flag] = values["num_classes"]
        if position > 0 and "num_classes" in filled:
            # each network keeps its own label count (load_classifier builds the classifier
            # with it); what the labels mean is compared by _check_trained_classes
            del values["num_classes"]
    _fill(args, values, explicit, filled, run_config.config_path(path))
    data = config.get("data")
    if args.class_names is None and run_config.is_class_conditional(kind, values) and data:
        args.class_names = list(data["class_names"])


def _fill_recognised(args, flag: str, kind: str, position: int, explicit, filled) -> None:
    """Fill in the flags of the published checkpoint whose layout ``--flag`` has, if any."""
    path = getattr(args, flag)
    found = presets.recognise_file(path, kind)
    if not found:
        return
    source = f"the published {found[0]} (recognised in the state dict of --{flag} {path})"
    values = _preset_values(found[0], kind, position)
    if explicit & presets.LAYOUT_FLAGS & set(values):
        _refuse_contradiction(args, found[0], explicit, source)
        return  # the layout flags given build it: the flags stay as given
    _fill(args, values, explicit, filled, source, check_given=False)
    shared = f" ({', '.join(found[1:])} have its layout too)" if found[1:] else ""
    args.presets[flag] = f"the flags of the published {found[0]}{shared}"


def _preset_values(name: str, kind: str, position: int) -> dict[str, Any]:
    """The flags a preset fills in for the checkpoint at ``position`` of ``parse_args``."""
    model_keys, diffusion_keys = run_config.flag_groups(kind)
    every = presets.PRESETS[name].all_flags()
    values = {k: every[k] for k in model_keys + (diffusion_keys if position == 0 else [])}
    if not run_config.is_class_conditional(kind, values):
        values.pop("num_classes", None)
    return values


def _refuse_contradiction(args, name: str, explicit: set[str], source: str) -> None:
    """Refuse a given flag that would build another layout than the preset ``name``'s."""
    bad = presets.contradiction(name, {k: getattr(args, k) for k in explicit if hasattr(args, k)})
    if bad:
        value = presets.PRESETS[name].all_flags()[bad]
        raise run_config.RunConfigError(
            f"--{bad} {getattr(args, bad)} contradicts {source}, whose layout has --{bad} "
            f"{value}: leave --{bad} out or give that value"
        )


def check_finite_flags(args: argparse.Namespace) -> None:
    """
    :raises ValueError: naming the first numeric flag whose value is NaN or infinite (e.g.
        ``--classifier_scale nan`` would sample all-black images).
    """
    for name, value in vars(args).items():
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"--{name} must be a finite number, got {value}")


MAX_SEED = 2**63 - 1


def check_seed_flags(args: argparse.Namespace) -> None:
    """:raises ValueError: naming a seed flag (``--seed``, ``--mask_seed``) given out of 0..2^63-1."""
    for name, value in vars(args).items():
        if name.endswith("seed") and isinstance(value, int) and not 0 <= value <= MAX_SEED:
            raise ValueError(f"--{name} must be an integer in 0..{MAX_SEED}, got {value}")


def _fill(
    args: argparse.Namespace,
    values: dict[str, Any],
    explicit: set[str],
    filled: dict[str, tuple[Any, str]],
    source: str,
    check_given: bool = True,
) -> None:
    """
    Set the flags in ``values`` that were not given; refuse a value another checkpoint set
    differently and, with ``check_given`` (a run configuration), a given value that differs.
    """
    for name, saved in values.items():
        if name in run_config.UNSAVED_FLAGS or not hasattr(args, name):
            continue
        if name in explicit:
            given = getattr(args, name)
            if check_given and given != saved and name not in run_config.RUNTIME_FLAGS:
                raise run_config.RunConfigError(
                    f"--{name} {given} contradicts the run configuration {source}, which "
                    f"says the network was trained with --{name} {saved}: leave --{name} "
                    "out or give the saved value"
                )
            continue
        if name in filled and filled[name][0] != saved:
            raise run_config.RunConfigError(
                f"--{name}: {filled[name][1]} says {filled[name][0]} but {source} says "
                f"{saved}; these checkpoints were trained for different settings"
            )
        setattr(args, name, saved)
        filled[name] = (saved, source)


# ---------------------------------------------------------------- sampling checks


def check_counts(num_samples: int, batch_size: int) -> None:
    """Reject a non-positive ``--num_samples`` or ``--batch_size``."""
    if num_samples <= 0:
        raise SamplingInputError(f"--num_samples must be a positive integer, got {num_samples}")
    if batch_size <= 0:
        raise SamplingInputError(f"--batch_size must be a positive integer, got {batch_size}")


def require_checkpoint(args: argparse.Namespace, flag: str, what: str) -> None:
    """:raises SamplingInputError: ``--flag`` was not given (``what`` says what it is for)."""
    if not getattr(args, flag, ""):
        raise SamplingInputError(f"--{flag} is required: the checkpoint (.pt) of {what}")


def parse_class_labels(
    text: str, num_classes: int, origin: Optional[str] = None
) -> Optional[list[int]]:
    """
    Parse ``--class_labels``.

    :param text: comma-separated class ids, or "" for random classes.
    :param num_classes: valid ids are 0..num_classes-1.
    :param origin: where that count comes from, for the message (``class_count_origin``;
        default: ``--num_classes``).
    :return: the ids, or None for random classes.
    """
    if not text.strip():
        return None
    try:
        labels = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise SamplingInputError(
            f"--class_labels must be comma-separated integers such as '1,207,360', got {text!r}"
        ) from None
    bad = [y for y in labels if not 0 <= y < num_classes]
    if not labels or bad:
        raise SamplingInputError(
            f"--class_labels {text!r}: class ids must lie in 0..{num_classes - 1} "
            f"({origin or f'--num_classes {num_classes}'}); out of range: {bad}"
        )
    return labels


def class_labels_of(args: argparse.Namespace) -> Optional[list[int]]:
    """:return: ``--class_labels`` parsed against ``num_classes_of(args)``, or None (random)."""
    return parse_class_labels(args.class_labels, num_classes_of(args), class_count_origin(args))


def num_classes_of(args: argparse.Namespace) -> int:
    """
    How many classes labels are drawn from: those of the training folder when the run
    configuration beside the checkpoint names them (``args.class_names``, set by
    ``parse_args``), else ``--num_classes`` (the original 1000 where a factory has none).
    """
    if getattr(args, "class_names", None):
        return len(args.class_names)
    return int(getattr(args, "num_classes", NUM_CLASSES))


def class_count_origin(args: argparse.Namespace) -> str:
    """
    Where ``num_classes_of(args)`` comes from, for messages: the training folder's classes
    or the ``num_classes`` saved in a checkpoint's run configuration (the first of
    ``--model_path``, ``--classifier_path`` that has one), else the ``--num_classes`` flag.

    :return: e.g. "the 3 classes of the training folder, from runs/model000600.json".
    """
    count, names = num_classes_of(args), getattr(args, "class_names", None)
    for flag in ("model_path", "classifier_path"):
        path = getattr(args, flag, "")
        config = run_config.read_run_config(path) if path else None
        if config is None or not run_config.is_class_conditional(
            config["kind"], config["model_flags"]
        ):
            continue
        where = run_config.config_path(path)
        if names and (config.get("data") or {}).get("class_names") == names:
            return f"the {count} classes of the training folder, from {where}"
        if not names and config["model_flags"].get("num_classes") == count:
            return f"num_classes {count}, from {where}"
    return f"--num_classes {count}"


# ---------------------------------------------------------------- training checks


def parse_train_args(
    parser: argparse.ArgumentParser, argv: Optional[list[str]], kind: str
) -> tuple[argparse.Namespace, TrainConfig]:
    """
    A training program's flags: parsed (``parse_args``: the model flags saved beside
    ``--resume_checkpoint``, or those of ``--preset``, fill in those not given) and checked
    (``check_train_args``) before anything is loaded or written.

    :param kind: "model", "super_res" or "classifier": the network being trained.
    :return: (the flags, the loop's checked settings).
    """
    args = parse_args(parser, argv, recognise=False, resume_checkpoint=kind)
    return args, check_train_args(args, kind)


def check_train_args(args, kind: str = "model") -> TrainConfig:
    """
    Check the training flags that can be checked before anything is loaded or written: the
    loop's settings (``train_config_from_flags``: batch and microbatch sizes,
    learning rate, EMA rates, intervals, step limits, seed, resume checkpoint), the precision
    flags and the class count of the data.

    :param args: parsed flags; one it lacks takes the program's default.
    :param kind: "model", "super_res" or "classifier": the program's network.
    :return: the checked settings, to give to the loop (``TrainLoop.from_config``,
        ``ClassifierTrainLoop(config=...)``) so that it does not check them again.
    :raises ValueError, FileNotFoundError: naming the flag at fault.
    """
    config = train_config_from_flags(args, kind)
    for fp16_flag in ("use_fp16", "classifier_use_fp16"):
        use_fp16, use_bf16 = getattr(args, fp16_flag, False), getattr(args, "use_bf16", False)
        check_precision(use_fp16, use_bf16, fp16_flag)
    if getattr(args, "class_cond", False):
        check_num_classes(args.data_dir, args.num_classes)
    return config


def check_num_classes(data_dir: str, num_classes: int) -> int:
    """
    Check that a class-conditional model has a label for every class of a data folder.

    :param data_dir: the image folder (class = file name part before the first "_").
    :param num_classes: the model's number of classes (--num_classes).
    :return: the number of classes in the folder.
    :raises ValueError: when the folder has more classes than ``num_classes``.
    """
    classes = list_classes(data_dir)
    if len(classes) > num_classes:
        raise ValueError(
            f"{data_dir!r} holds {len(classes)} classes ({', '.join(list(classes)[:5])}"
            f"{', ...' if len(classes) > 5 else ''}) but --num_classes is {num_classes}: "
            f"set --num_classes {len(classes)} or more"
        )
    return len(classes)


def train_config_from_flags(args, kind: str = "model") -> TrainConfig:
    """
    The settings given by a training program's parsed flags (those named like a
    ``TrainConfig`` setting); a flag that ``args`` lacks takes the program's default.

    :param kind: "model" or "super_res" (image_train.py, super_res_train.py flags) or
        "classifier" (classifier_train.py: --iterations, --anneal_lr, --classifier_use_fp16).
    """
    defaults = classifier_train_defaults() if kind == "classifier" else diffusion_train_defaults()
    values = {**defaults, **vars(args)}
    settings = {k: values[k] for k in TrainConfig.setting_names() if k in defaults}
    if kind != "classifier":
        return TrainConfig(**settings)
    return classifier_train_config(
        values["iterations"], values["anneal_lr"],
        use_fp16=getattr(args, "classifier_use_fp16", False), **settings,
    )  # fmt: skip
