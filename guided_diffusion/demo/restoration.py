"""
The demo's restoration section: hide part of held-out digits, restore them with each method
of ``scripts/image_edit.py`` using the demo's trained model, and score the results.

Two tasks on the first ``--restoration_per_class`` held-out digits of every class:

- ``inpaint``: the lower half hidden (``--mask half``); RePaint, DDNM, DPS and SDEdit (which
  keeps the known upper half at every step). PSNR over the hidden half.
- ``sr4``: average-pooling super-resolution by ``--restoration_sr_factor`` (default 4: the 8x8
  digits seen as 2x2 averages; ``sr2`` with factor 2); DDNM, DPS, ILVR
  (with the average-pooling low-pass filter of the same factor, the measurement's own
  projection) and SDEdit (from the nearest-upsampled measurement). PSNR over every pixel.

The demo's model is class-conditional. With a null class (trained with
``--class_dropout_prob`` > 0) the labels are withheld by default (``--restoration_labels
auto``): every method runs on the null class (``--guidance_scale 0``), so the digit's identity
can only come from the measurement. Without one, every method is given each digit's true label.

Two baselines per task let a reader judge the methods: ``measurement`` (the measurement shown
as an image: the hidden half grey, or the low-resolution digit upsampled by repeating pixels)
and the same model sampling without the measurement (``scripts/image_sample.py``):
``unconditional`` when the labels are withheld, ``label only`` when they are given, which
shows how much of the accuracy the label gives by itself.

Each row reports the clean classifier's accuracy on the restored digits, the PSNR and the
seconds per image the program measured (model loading excluded). Every program run is the
real command line, logged like the demo's other stages; a run whose command and output are
already in the folder is reused.
"""

import argparse
import hashlib
import json
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

import numpy as np

from guided_diffusion import io_util
from guided_diffusion.demo.digits import images_to_digit_features
from guided_diffusion.edit_util import psnr, to_float
from guided_diffusion.io_util import atomic_write
from guided_diffusion.operators import named_mask
from guided_diffusion.run_config import read_run_config
from guided_diffusion.sample_io import save_png

COLUMNS = ("task", "method", "labels", "accuracy", "psnr", "psnr_region", "seconds_per_image",
           "flags")


class RestorationError(ValueError):
    """A bad restoration flag, reported as one line."""


@dataclass(frozen=True)
class Task:
    """One restoration problem: its operator flags and the methods that solve it."""

    name: str
    title: str
    operator_flags: tuple[str, ...]
    methods: tuple[tuple[str, tuple[str, ...]], ...]  # (method, its extra flags)
    hidden_only: bool  # PSNR over the hidden pixels (True) or every pixel (False)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the section's flags to the demo's parser."""
    add = parser.add_argument
    add("--restoration", choices=("yes", "no"), default="no",
        help="run the restoration section: inpainting and super-resolution of held-out digits "
             "with RePaint, DDNM, DPS, ILVR and SDEdit (scripts/image_edit.py)")
    add("--restoration_per_class", type=int, default=10,
        help="held-out digits of each class the restoration section restores")
    add("--restoration_labels", choices=("auto", "given", "withheld"), default="auto",
        help="restore with each digit's true label (given) or with the model's null class "
             "(withheld: --guidance_scale 0, needs --class_dropout_prob > 0); auto: withheld "
             "when the trained model has a null class")
    add("--restoration_sr_factor", type=int, default=4,
        help="super-resolution factor of the restoration section (4: 2x2 -> 8x8 on the digits)")


def check_args(args: argparse.Namespace) -> None:
    """
    Reject the section's bad flags before the demo does any work (with ``--restoration yes``).

    :param args: the demo's flags (image_size, holdout_per_class and the section's).
    """
    if args.restoration != "yes":
        return
    factor = args.restoration_sr_factor
    if factor < 2 or args.image_size % factor:
        raise RestorationError(
            f"--restoration_sr_factor must divide --image_size {args.image_size} and be at "
            f"least 2, got {factor}"
        )
    if not 1 <= args.restoration_per_class <= args.holdout_per_class:
        raise RestorationError(
            f"--restoration_per_class must lie in 1..{args.holdout_per_class} (the held-out "
            f"digits of each class, --holdout_per_class), got {args.restoration_per_class}"
        )


def labels_withheld(choice: str, model: str) -> bool:
    """
    :param choice: ``--restoration_labels``: auto, given or withheld.
    :param model: the diffusion checkpoint; auto reads its run configuration.
    :return: whether the methods run on the null class instead of the true labels.
    """
    if choice != "auto":
        return choice == "withheld"
    config = read_run_config(model) or {}
    return float(config.get("model_flags", {}).get("class_dropout_prob", 0.0)) > 0


def make_tasks(image_size: int, factor: int) -> list[Task]:
    """:return: the inpainting task and the super-resolution task by ``factor``."""
    low = image_size // factor
    inpaint = Task(
        name="inpaint", title="lower half hidden", hidden_only=True,
        operator_flags=("--operator", "inpaint", "--mask", "half"),
        methods=(("repaint", ()), ("ddnm", ()), ("dps", ()), ("sdedit", ())),
    )  # fmt: skip
    sr = Task(
        name=f"sr{factor}", hidden_only=False,
        title=f"{factor}x super-resolution ({low}x{low} -> {image_size}x{image_size})",
        operator_flags=("--operator", "sr_avgpool", "--sr_factor", str(factor)),
        methods=(("ddnm", ()), ("dps", ()),
                 ("ilvr", ("--ilvr_down_n", str(factor), "--ilvr_filter", "avgpool")),
                 ("sdedit", ())),
    )  # fmt: skip
    return [inpaint, sr]


def select_digits(
    images: np.ndarray, labels: np.ndarray, per_class: int
) -> tuple[np.ndarray, np.ndarray]:
    """
    The first ``per_class`` images of every class, interleaved (0, 1, ..., 9, 0, 1, ...) so
    that the first ten are one of each digit.

    :param images: uint8 [N x H x W x 3]; labels: int [N].
    :return: (uint8 [K x H x W x 3], int64 [K]).
    """
    classes = np.unique(labels)
    counts = [int((labels == c).sum()) for c in classes]
    if per_class < 1 or per_class > min(counts):
        raise RestorationError(
            f"--restoration_per_class must lie in 1..{min(counts)} (the held-out digits of "
            f"the smallest class), got {per_class}"
        )
    chosen = np.stack([np.flatnonzero(labels == c)[:per_class] for c in classes], axis=1)
    order = chosen.reshape(-1)  # row r holds the r-th image of every class
    return images[order], labels[order].astype(np.int64)


# ---------------------------------------------------------------- running the programs


def _cached(record: str, argv: list[str], output: str) -> Optional[dict]:
    """:return: the record of an earlier run of exactly ``argv`` that wrote ``output``."""
    try:
        with open(record) as f:
            found = json.load(f)
    except (OSError, ValueError):
        return None
    return found if found.get("argv") == argv and os.path.exists(output) else None


def run_cached(runner, name: str, argv: list[str], logdir: str, output: str, bar,
               seconds_per_image) -> float:
    """
    Run ``argv`` through the demo's runner unless the same command already wrote ``output``.

    :param seconds_per_image: reads the figure from (output, the program's log file).
    :return: the seconds per image of the run (or of the earlier one).
    """
    record = os.path.join(logdir, "command.json")
    found = _cached(record, argv[1:], output)
    if found is None:
        log = runner.run(name, argv, logdir, bar)
        found = {"argv": argv[1:], "seconds_per_image": seconds_per_image(output, log)}
        with atomic_write(record, "w") as f:
            json.dump(found, f)
    bar.update(1)
    return float(found["seconds_per_image"])


def _edit_seconds(output: str, _log: str) -> float:
    with open(output[: -len(".npz")] + ".json") as f:
        return float(json.load(f)["seconds_per_image"])


def _sample_seconds(_output: str, log: str) -> float:
    with open(log, errors="replace") as f:
        rate = re.findall(r"\(([\d.]+) images/s", f.read())
    return 1.0 / float(rate[-1]) if rate and float(rate[-1]) > 0 else float("nan")


def run_method(runner, task: Task, method: str, flags: Sequence[str], common: list[str],
               count: int, bar) -> tuple[str, float, str]:
    """
    Run ``scripts/image_edit.py`` with one method on the task.

    :param common: the flags every run shares (model, input, steps, seed, batch size).
    :return: (the .npz it wrote, seconds per image, the method's own flags as text).
    """
    name = f"{task.name}_{method}" + ("_unconditional" if "--guidance_scale" in common else "")
    logdir = os.path.join(runner.out_dir, "restoration", name)  # both label choices kept
    side = _side(common)
    output = os.path.join(logdir, f"edited_{count}x{side}x{side}x3.npz")
    own = [*task.operator_flags, "--method", method, *flags]
    argv = [sys.executable, "scripts/image_edit.py", *common, *own]
    seconds = run_cached(runner, f"restore_{name}", argv, logdir, output, bar, _edit_seconds)
    return output, seconds, " ".join(own)


def run_unmeasured(runner, labels: np.ndarray, model: str, guidance: list[str], steps: int,
                   seed: int, side: int, bar) -> tuple[str, float]:
    """
    Sample one image per label with ``scripts/image_sample.py``: the baseline without the
    measurement.

    :param guidance: ``["--guidance_scale", "0"]`` to withhold the labels, or [].
    :return: (the .npz it wrote, seconds per image).
    """
    name = "unconditional" if guidance else "label_only"
    logdir = os.path.join(runner.out_dir, "restoration", name)
    count = len(labels)
    output = os.path.join(logdir, f"samples_{count}x{side}x{side}x3.npz")
    argv = [sys.executable, "scripts/image_sample.py", "--model_path", model,
            "--num_samples", str(count), "--batch_size", str(count), "--seed", str(seed),
            "--timestep_respacing", str(steps), "--class_labels", ",".join(map(str, labels)),
            *guidance]
    seconds = run_cached(runner, f"restore_{name}", argv, logdir, output, bar, _sample_seconds)
    return output, seconds


def _side(common: list[str]) -> str:
    return common[common.index("--image_size") + 1]


# ---------------------------------------------------------------- scoring and writing


def score(restored: np.ndarray, original: np.ndarray, labels: np.ndarray, clean,
          hidden: Optional[np.ndarray]) -> tuple[float, float]:
    """
    :param restored: uint8 [N x H x W x 3]; original the same; labels int [N].
    :param clean: the demo's clean classifier (predicts digits from 8x8 features).
    :param hidden: [1 x 1 x H x W] of 0 / 1 (1 = hidden), or None for every pixel.
    :return: (the clean classifier's accuracy against ``labels``, PSNR in dB).
    """
    predicted = clean.predict(images_to_digit_features(restored))
    accuracy = float((predicted == labels).mean())
    value = psnr(to_float(restored).numpy(), to_float(original).numpy(), hidden)
    return accuracy, value


def rows_grid(rows: Sequence[np.ndarray], columns: int, scale: int, padding: int = 1) -> np.ndarray:
    """
    One row per batch (original, measurement, each method), its first ``columns`` images.

    :param rows: each uint8 [N x H x W x 3] with N >= columns.
    :return: uint8 [R (H s + p) + p x C (W s + p) + p x 3] on white.
    """
    tiles = np.stack([batch[:columns] for batch in rows])  # R x C x H x W x 3
    tiles = tiles.repeat(scale, axis=2).repeat(scale, axis=3)
    tiles = np.pad(tiles, ((0, 0), (0, 0), (padding, 0), (padding, 0), (0, 0)),
                   constant_values=255)
    r, c, h, w, _ = tiles.shape
    grid = tiles.transpose(0, 2, 1, 3, 4).reshape(r * h, c * w, 3)
    return np.pad(grid, ((0, padding), (0, padding), (0, 0)), constant_values=255)


def _cell(_column: str, value: object) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def write_table(rows: Sequence[dict[str, object]], out_dir: str) -> tuple[str, str]:
    """
    Write ``restoration.csv`` (full precision) and ``restoration.md`` atomically.

    :return: (csv path, md path).
    """
    return io_util.write_table(os.path.join(out_dir, "restoration"), rows, COLUMNS, _cell)


# ---------------------------------------------------------------- the section


def run_section(args: argparse.Namespace, runner, holdout: tuple[np.ndarray, np.ndarray],
                model: str, clean, bar_options: dict) -> tuple[str, str, list[str]]:
    """
    Restore held-out digits with every method of every task; write the table and the grids.

    :param args: the demo's flags (image_size, steps, seed, sample_batch_size and ours).
    :param runner: the demo's program runner (``run(name, argv, logdir, bar)``, ``out_dir``).
    :param holdout: (uint8 [N x H x W x 3], int [N]) the held-out digits.
    :param model: the trained diffusion checkpoint (its .json configuration beside it).
    :param clean: the clean classifier.
    :param bar_options: tqdm keyword arguments of the demo's progress bars.
    :return: (csv path, md path, grid paths).
    """
    from tqdm import tqdm

    check_args(args)
    tasks = make_tasks(args.image_size, args.restoration_sr_factor)
    images, labels = select_digits(*holdout, args.restoration_per_class)
    folder = os.path.join(runner.out_dir, "restoration")
    os.makedirs(folder, exist_ok=True)
    digest = hashlib.sha256(images.tobytes() + labels.tobytes()).hexdigest()[:12]
    inputs = os.path.join(folder, f"digits_{len(images)}_{digest}.npz")  # new digits: new runs
    with atomic_write(inputs, "wb") as f:
        np.savez(f, arr_0=images, arr_1=labels)
    withheld = labels_withheld(args.restoration_labels, model)
    guidance = ["--guidance_scale", "0"] if withheld else []
    common = ["--model_path", model, "--input", inputs, "--image_size", str(args.image_size),
              "--timestep_respacing", str(args.steps), "--seed", str(args.seed),
              "--batch_size", str(min(args.sample_batch_size, len(images))), *guidance]
    total = 1 + sum(len(task.methods) for task in tasks)
    rows, grids = [], []
    with tqdm(total=total, desc="restoring", unit="run", **bar_options) as bar:
        unmeasured = run_unmeasured(runner, labels, model, guidance, args.steps, args.seed,
                                    args.image_size, bar)
        for task in tasks:
            task_rows, grid = _run_task(runner, task, common, images, labels, clean,
                                        unmeasured, bar)
            rows += task_rows
            grids.append(grid)
    csv_path, md_path = write_table(rows, runner.out_dir)
    given = "labels withheld (the null class)" if withheld else "each digit's true label given"
    print(f"\nrestoration of {len(images)} held-out digits, {args.steps} steps, {given}:")
    with open(md_path) as f:
        print(f.read(), end="")
    print(f"results: {csv_path}\n         {md_path}\ngrids (original, measurement, each method):")
    print("\n".join(f"  {grid}" for grid in grids))
    return csv_path, md_path, grids


def _run_task(runner, task: Task, common: list[str], images: np.ndarray, labels: np.ndarray,
              clean, unmeasured: tuple[str, float], bar) -> tuple[list[dict], str]:
    """
    :param unmeasured: (the .npz, seconds per image) of the baseline without measurement.
    :return: (the task's rows: measurement, the unmeasured baseline, each method; its grid).
    """
    side = images.shape[1]
    hidden = 1.0 - named_mask("half", side).numpy() if task.hidden_only else None
    region = "hidden pixels" if task.hidden_only else "all pixels"
    outputs = []
    for method, flags in task.methods:
        npz, seconds, own = run_method(runner, task, method, flags, common, len(images), bar)
        with np.load(npz) as batch:
            outputs.append((method, batch["arr_0"], seconds, own, batch["degraded"]))
    measurement = outputs[0][4]
    with np.load(unmeasured[0]) as batch:
        sampled = batch["arr_0"]
    withheld = "--guidance_scale" in common
    labels_used = "withheld" if withheld else "given"  # to every model row
    rows = []
    for method, restored, seconds, own in [
        ("measurement", measurement, 0.0, " ".join(task.operator_flags)),
        ("unconditional" if withheld else "label only", sampled, unmeasured[1],
         "scripts/image_sample.py" + (" --guidance_scale 0" if withheld else "")),
        *[entry[:4] for entry in outputs],
    ]:
        accuracy, value = score(restored, images, labels, clean, hidden)
        rows.append(dict(task=task.name, method=method, accuracy=accuracy, psnr=value,
                         labels="" if method == "measurement" else labels_used,
                         psnr_region=region, seconds_per_image=seconds, flags=own))
    grid = os.path.join(runner.out_dir, "restoration", f"grid_{task.name}.png")
    batches = [images, measurement, *[entry[1] for entry in outputs]]
    save_png(grid, rows_grid(batches, columns=min(10, len(images)),
                             scale=max(1, 32 // side)))
    return rows, grid
