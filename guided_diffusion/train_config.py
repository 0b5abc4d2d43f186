"""
The settings of a training loop, checked once: ``TrainConfig`` holds what the loops of
``train_util`` take besides the network, the data and the loss (batch sizes, learning rate,
EMA, intervals, resume checkpoint, precision, step limits, seed), and building one runs every
check of those values. The training programs build it from their flags before anything is
loaded or written (``flags.parse_train_args``) and hand it to the loop, which does not check
again; ``TrainLoop``'s keyword arguments (the original API) build one the same way.
"""

import dataclasses
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import blobfile as bf

from .fp16_util import INITIAL_LOG_LOSS_SCALE

# The classifier trainer's first fp16 loss scale (log2), as in the original classifier_train.py.
CLASSIFIER_LG_LOSS_SCALE = 16.0


@dataclass
class TrainConfig:
    """
    A training loop's settings; creating one checks them all (``ValueError`` or
    ``FileNotFoundError`` naming the flag at fault).

    :param batch_size: images per batch on this rank (--batch_size).
    :param microbatch: images per forward/backward pass; gradients are accumulated over the
        batch. 0 or less: the whole batch at once (--microbatch).
    :param lr: AdamW learning rate (--lr).
    :param ema_rate: EMA decay rates, a float or a comma-separated string (--ema_rate);
        empty for none.
    :param log_interval: write the logged values every this many steps (--log_interval).
    :param save_interval: save a checkpoint every this many steps (--save_interval).
    :param resume_checkpoint: a ``model{N:06d}.pt`` file to resume from, or "".
    :param use_fp16: float16 model with float32 master weights and loss scaling.
    :param fp16_scale_growth: log2 loss-scale growth per good fp16 step.
    :param initial_lg_loss_scale: log2 of the first fp16 loss scale.
    :param use_bf16: forward pass in bfloat16 autocast (exclusive with ``use_fp16``).
    :param weight_decay: AdamW weight decay (--weight_decay).
    :param lr_anneal_steps: anneal the learning rate linearly to 0 over this many steps and
        stop there; 0 keeps it constant (--lr_anneal_steps).
    :param max_steps: stop after this many steps in total, counting the steps of the run
        resumed from; 0 for no limit (--max_steps).
    :param seed: reseed every step from (seed, rank, step) for reproducible, resumable runs;
        None leaves the random generators alone.

    Set by the checks: ``micro_size`` (the microbatch size used), ``ema_rates`` (floats) and
    ``resume_step`` (the step of ``resume_checkpoint``, 0 without one).
    """

    batch_size: int
    microbatch: int
    lr: float
    ema_rate: Union[str, float, Sequence[float]] = ""
    log_interval: int = 10
    save_interval: int = 10000
    resume_checkpoint: str = ""
    use_fp16: bool = False
    fp16_scale_growth: float = 1e-3
    initial_lg_loss_scale: float = INITIAL_LOG_LOSS_SCALE
    use_bf16: bool = False
    weight_decay: float = 0.0
    lr_anneal_steps: int = 0
    max_steps: int = 0
    seed: Optional[int] = None
    micro_size: int = field(init=False)
    ema_rates: list[float] = field(init=False)
    resume_step: int = field(init=False)

    def __post_init__(self) -> None:
        self.micro_size = check_batch_flags(self.batch_size, self.microbatch)
        check_learning_rate(self.lr)
        self.ema_rates = parse_ema_rate(self.ema_rate)
        check_positive(log_interval=self.log_interval, save_interval=self.save_interval)
        check_non_negative(lr_anneal_steps=self.lr_anneal_steps, max_steps=self.max_steps)
        if self.seed is not None and self.seed < 0:
            raise ValueError(f"--seed must be a non-negative integer, got {self.seed}")
        self.resume_step = check_resume_checkpoint(self.resume_checkpoint)

    @classmethod
    def setting_names(cls) -> tuple[str, ...]:
        """:return: the names of the settings (the constructor's arguments)."""
        return tuple(f.name for f in dataclasses.fields(cls) if f.init)

    @classmethod
    def from_arguments(cls, arguments: dict[str, Any]) -> "TrainConfig":
        """
        :param arguments: a constructor's ``locals()``; the settings are taken from it.
        """
        return cls(**{name: arguments[name] for name in cls.setting_names() if name in arguments})


def classifier_train_config(
    iterations: int = 150000, anneal_lr: bool = False, **settings
) -> TrainConfig:
    """
    The settings of the classifier trainer: ``iterations`` steps in all (``max_steps``),
    annealed over all of them with ``anneal_lr``, fp16 loss scale starting at 2 ** 16.

    :param settings: the other ``TrainConfig`` settings.
    """
    check_positive(iterations=iterations)
    settings.setdefault("initial_lg_loss_scale", CLASSIFIER_LG_LOSS_SCALE)
    return TrainConfig(
        max_steps=iterations, lr_anneal_steps=iterations if anneal_lr else 0, **settings
    )


# ---------------------------------------------------------------- the checks


def check_batch_flags(batch_size: int, microbatch: int) -> int:
    """
    :return: the microbatch size to use (the batch size when ``microbatch`` <= 0).
    :raises ValueError: when the batch size is not positive or not a multiple of it.
    """
    if batch_size <= 0:
        raise ValueError(f"--batch_size must be a positive integer, got {batch_size}")
    if microbatch <= 0:
        return batch_size
    if batch_size % microbatch:
        raise ValueError(
            f"--batch_size {batch_size} is not divisible by --microbatch {microbatch}: use a "
            "microbatch that divides the batch size, or -1 for no microbatching"
        )
    return microbatch


def check_learning_rate(lr: float) -> None:
    """:raises ValueError: when ``lr`` (--lr) is negative or not finite."""
    if not (math.isfinite(lr) and lr >= 0):
        raise ValueError(f"--lr must be a finite number >= 0, e.g. 1e-4; got {lr}")


def parse_ema_rate(ema_rate: Union[str, float, Sequence[float]]) -> list[float]:
    """
    :param ema_rate: a float, a comma-separated string ("0.9999,0.999") or a sequence.
    :return: the rates as floats (empty for "").
    """
    if isinstance(ema_rate, str):
        parts = [p.strip() for p in ema_rate.split(",") if p.strip()]
        try:
            rates = [float(p) for p in parts]
        except ValueError:
            raise ValueError(
                "--ema_rate must be comma-separated numbers such as '0.9999,0.999', "
                f"got {ema_rate!r}"
            ) from None
    elif isinstance(ema_rate, (int, float)):
        rates = [float(ema_rate)]
    else:
        rates = [float(r) for r in ema_rate]
    bad = [r for r in rates if not 0.0 <= r <= 1.0]
    if bad:
        raise ValueError(f"--ema_rate values must lie in [0, 1], got {bad}")
    return rates


def parse_resume_step_from_filename(filename: str) -> int:
    """
    :param filename: a path like "path/to/model000100.pt".
    :return: its step (100), or 0 when the name has no step.
    """
    match = re.fullmatch(r"model(\d+)\.pt", os.path.basename(filename))
    return int(match.group(1)) if match else 0


def check_resume_checkpoint(resume_checkpoint: str) -> int:
    """
    :param resume_checkpoint: --resume_checkpoint: "" or a ``model{N:06d}.pt`` file.
    :return: the step to resume from (0 for "" or a file name without a step).
    :raises FileNotFoundError: when the file does not exist (ValueError for a folder).
    """
    if not resume_checkpoint:
        return 0
    hint = "give a model file saved by an earlier run, e.g. <log dir>/model010000.pt"
    if not bf.exists(resume_checkpoint):
        raise FileNotFoundError(
            f"--resume_checkpoint {resume_checkpoint!r} does not exist: {hint}, or leave it empty"
        )
    if bf.isdir(resume_checkpoint):
        raise ValueError(f"--resume_checkpoint {resume_checkpoint!r} is a folder: {hint}")
    return parse_resume_step_from_filename(resume_checkpoint)


def check_positive(**values: int) -> None:
    for name, value in values.items():
        if value <= 0:
            raise ValueError(f"--{name} must be a positive integer, got {value}")


def check_non_negative(**values: int) -> None:
    for name, value in values.items():
        if value < 0:
            raise ValueError(f"--{name} must be 0 (off) or a positive integer, got {value}")
