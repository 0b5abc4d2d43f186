"""
Training loops for diffusion models and noisy-image classifiers, and the pieces they share.

``BaseTrainLoop`` holds everything that is not specific to the loss: mixed precision
(``MixedPrecisionTrainer``), AdamW, EMA copies of the weights, DistributedDataParallel when
several ranks run, the learning-rate anneal, logging cadence and the checkpoint files.
``TrainLoop`` adds the diffusion loss (the original class, same arguments) and
``ClassifierTrainLoop`` the cross-entropy loss of a classifier on noised images.

Checkpoints go to the log directory, written atomically by rank 0 only, named after the
number of optimizer steps taken so far (N):

- ``model{N:06d}.pt``: the float32 model state dict (also with ``use_fp16`` / ``use_bf16``);
- ``ema_{rate}_{N:06d}.pt``: the EMA weights for each rate, same layout;
- ``opt{N:06d}.pt``: the AdamW state dict (plus ``lg_loss_scale`` with fp16);
- ``train_state{N:06d}.pt``, with a ``LossSecondMomentResampler``: its loss history and the
  step (tensors and plain values only).

Resuming from ``model{N}.pt`` loads those files, sets the step to N and carries on, exactly
as the run would have gone on without stopping: with a ``seed``, every step reseeds torch,
numpy and ``random`` from (seed, rank, step), so its noise, timesteps and dropout do not
depend on what ran before, and the data stream of step N (order, crops, flips) is batch N of
``image_datasets.load_data`` (the training programs start it at the resumed step). N straight
steps and N/2 + resume + N/2 give identical weights, EMA and optimizer state, on one rank or
several (``tests/test_train_resume.py``, on CPUs; GPUs add the nondeterminism of their kernels
unless deterministic ones are asked for, see docs/slurm.md). A SIGTERM stops a run at the next step boundary
with that step saved (see ``BaseTrainLoop.run_loop``).
"""

import argparse
import contextlib
import dataclasses
import math
import os
import random
import re
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import NoReturn, Optional, Union

import blobfile as bf
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel.distributed import DistributedDataParallel as DDP
from torch.optim import AdamW

from . import dist_util, logger
from .checkpoint_diagnosis import diagnose_mismatch
from .checkpoint_util import read_checkpoint, read_optimizer_state, read_state_dict
from .flags import train_config_from_flags
from .fp16_util import MixedPrecisionTrainer, NonFiniteLossError
from .io_util import atomic_torch_save, is_local_path
from .nn import update_ema
from .resample import (
    LossAwareSampler,
    ScheduleSampler,
    UniformSampler,
    create_named_schedule_sampler,
)
from .run_config import make_run_config, recorded_checkpoint_hash, write_run_config
from .script_util import create_from_flags
from .train_config import (
    TrainConfig,
    check_positive,
    classifier_train_config,
    parse_resume_step_from_filename,
)

Batch = tuple[torch.Tensor, dict[str, torch.Tensor]]


class BaseTrainLoop:
    """
    A training loop without a loss: subclasses implement ``forward_backward``.

    ``step`` counts the optimizer steps taken, those of the resumed run included, and
    ``model{N:06d}.pt`` holds the weights after N steps. (The original counted from the
    resume point and saved ``model000000.pt`` after the first step.)

    :param model: the network, on ``dist_util.dev()``.
    :param data: iterator of (images [N x C x H x W], {name: [N x ...] tensor}) batches.
    :param config: the loop's settings (batch sizes, learning rate, EMA, intervals, resume
        checkpoint, precision, step limits, seed), already checked.
    :param run_config: the run configuration (``run_config.make_run_config``) to write
        beside every model and EMA checkpoint as ``<name>.json``; None writes none.
    """

    def __init__(
        self,
        *,
        model: nn.Module,
        data: Iterator[Batch],
        config: TrainConfig,
        run_config: Optional[dict] = None,
    ):
        found = find_resume_checkpoint()
        if found:
            config = dataclasses.replace(config, resume_checkpoint=found)
        # Check what needs the log folder before anything is loaded, synced or written.
        self.resume_checkpoint, self.resume_step = config.resume_checkpoint, config.resume_step
        self._check_steps_left(config.max_steps, config.lr_anneal_steps)
        if not config.resume_checkpoint:
            check_fresh_log_dir(get_blob_logdir())

        self.config = config
        self.model = model
        self.data = data
        self.microbatch = config.micro_size
        self.ema_rate = config.ema_rates
        for name in ("batch_size", "lr", "log_interval", "save_interval", "weight_decay"):
            setattr(self, name, getattr(config, name))
        self.lr_anneal_steps, self.max_steps = config.lr_anneal_steps, config.max_steps
        self.seed = config.seed
        self.run_config = run_config
        self.step = self.resume_step
        self.global_batch = config.batch_size * dist_util.get_world_size()

        # Every rank starts from rank 0's weights (a resumed run loads them below).
        dist_util.sync_params(model.parameters())
        dist_util.sync_params(model.buffers())
        self.mp_trainer = MixedPrecisionTrainer(
            model=model,
            use_fp16=config.use_fp16,
            fp16_scale_growth=config.fp16_scale_growth,
            initial_lg_loss_scale=config.initial_lg_loss_scale,
            use_bf16=config.use_bf16,
        )
        self.opt = AdamW(
            self.mp_trainer.master_params, lr=config.lr, weight_decay=config.weight_decay
        )
        if self.resume_checkpoint:
            self._load_parameters()
        self.ema_params = [self._load_ema_parameters(rate) for rate in self.ema_rate]
        if self.resume_checkpoint:
            self._load_optimizer_state()

        self.use_ddp = dist_util.get_world_size() > 1
        self.ddp_model = self._wrap_ddp(model) if self.use_ddp else model

    # ------------------------------------------------------------------ resume

    # The flag that sets ``max_steps`` (the classifier trainer's is --iterations).
    max_steps_flag = "max_steps"
    # Step s trains with lr * (1 - (s - lr_anneal_offset) / lr_anneal_steps), s counted
    # from 0 and never above lr: the original diffusion TrainLoop anneals after each
    # optimizer step (offset 1), its classifier trainer before it (offset 0).
    lr_anneal_offset = 0

    def _check_steps_left(self, max_steps: int, lr_anneal_steps: int) -> None:
        """Refuse to resume a run that has already taken all its steps."""
        for flag, limit in ((self.max_steps_flag, max_steps), ("lr_anneal_steps", lr_anneal_steps)):
            if self.resume_step and limit and self.resume_step >= limit:
                raise ValueError(
                    f"--resume_checkpoint {self.resume_checkpoint} is at step "
                    f"{self.resume_step}, which already reaches --{flag} {limit}: nothing left "
                    f"to train; raise --{flag} to train further"
                )

    def _load_parameters(self) -> None:
        """Load the model weights (and the fp16 master weights) from ``resume_checkpoint``."""
        logger.log(f"loading model from checkpoint: {self.resume_checkpoint}...")
        if self.resume_step == 0:
            logger.log(
                f"{self.resume_checkpoint} is not named model<step>.pt: starting at "
                "step 0 with fresh EMA and optimizer state"
            )
        state_dict = self._read_model_state(self.resume_checkpoint)
        self.model.load_state_dict(state_dict)
        if self.mp_trainer.use_fp16:
            # Take the float32 values from the file, not their float16 rounding.
            with torch.no_grad():
                loaded = self.mp_trainer.state_dict_to_master_params(state_dict)
                for master, value in zip(self.mp_trainer.master_params, loaded):
                    master.copy_(value)

    def _load_ema_parameters(self, rate: float) -> list[torch.Tensor]:
        """:return: the EMA weights for ``rate``: from the file beside the resumed
        checkpoint when there is one, else a copy of the current weights."""
        ema_checkpoint = find_ema_checkpoint(self.resume_checkpoint or None, self.resume_step, rate)
        if ema_checkpoint is None:
            if self.resume_checkpoint:
                logger.log(
                    f"no EMA checkpoint for rate {rate} beside {self.resume_checkpoint}; "
                    "starting the EMA from the model weights"
                )
            return [p.detach().clone() for p in self.mp_trainer.master_params]
        logger.log(f"loading EMA from checkpoint: {ema_checkpoint}...")
        state_dict = self._read_model_state(ema_checkpoint)
        params = self.mp_trainer.state_dict_to_master_params(state_dict)
        return [p.detach().clone() for p in params]

    def _read_model_state(self, path: str) -> dict[str, torch.Tensor]:
        """:return: the state dict in ``path`` (safely read, its bytes checked against the
        SHA-256 its run configuration records); a ``CheckpointMismatchError`` naming the
        differing keys and likely flags when it does not fit the model."""
        recorded, where = recorded_checkpoint_hash(path)
        state_dict = read_state_dict(path, "cpu", expected_sha256=recorded, recorded_in=where)
        error = diagnose_mismatch(self.model, state_dict, path)
        if error is not None:
            raise error
        return state_dict

    def _load_optimizer_state(self) -> None:
        """Load the optimizer (and fp16 loss scale) saved beside ``resume_checkpoint``."""
        opt_checkpoint = bf.join(
            bf.dirname(self.resume_checkpoint), f"opt{self.resume_step:06d}.pt"
        )
        if not bf.exists(opt_checkpoint):
            logger.log(f"no optimizer state {opt_checkpoint}; starting AdamW afresh")
            return
        logger.log(f"loading optimizer state from checkpoint: {opt_checkpoint}")
        state_dict = read_optimizer_state(opt_checkpoint, map_location="cpu")
        lg_loss_scale = state_dict.pop("lg_loss_scale", None)
        _check_optimizer_state(state_dict, self.mp_trainer.master_params, opt_checkpoint)
        self.opt.load_state_dict(state_dict)
        if self.mp_trainer.use_fp16 and lg_loss_scale is not None:
            self.mp_trainer.lg_loss_scale = float(lg_loss_scale)
        # The learning rate comes from --lr and the anneal schedule, not from the file.
        self._set_lr(self.lr)

    def _wrap_ddp(self, model: nn.Module) -> DDP:
        device = dist_util.dev()
        return DDP(
            model,
            device_ids=[device] if device.type == "cuda" else None,
            output_device=device if device.type == "cuda" else None,
            broadcast_buffers=False,
            bucket_cap_mb=128,
            find_unused_parameters=False,
        )

    # ------------------------------------------------------------------ loop

    def run_loop(self) -> None:
        """
        Train until ``max_steps`` or ``lr_anneal_steps`` steps (forever when both are 0),
        logging every ``log_interval`` steps (with a progress line: steps per second and the
        time left) and saving every ``save_interval`` steps and at the end.

        A SIGTERM (a preempted job, ``kill``, Slurm's end of time) stops the run after the
        step in progress, on every rank at the same step: that step is saved, and the
        process exits with status 143 (128 + SIGTERM); resuming from the saved checkpoint
        continues exactly as if the run had not stopped.
        """
        if self.seed is not None:
            # the data loader draws its worker seeds from torch's generator when its first
            # batch is taken: seed that from the start step too
            seed_for_step(self.seed, self.step, stream=1)
        self._resume_train_state()
        progress = logger.ProgressLine(self.step, self._last_step(), self.global_batch)
        with _sigterm_stops() as stop_requested:
            while not self._finished():
                batch, cond = next(self.data)
                self.run_step(batch, cond)
                if self.step % self.log_interval == 0:
                    logger.dumpkvs()
                    logger.log(progress.line(self.step + 1))
                self.step += 1
                if self.step % self.save_interval == 0:
                    self.save()
                if dist_util.any_rank(stop_requested()):
                    self._stop_for_signal()
        if self.step > self.resume_step:
            if (self.step - 1) % self.log_interval != 0:
                logger.dumpkvs()
            if self.step % self.save_interval != 0:
                self.save()

    def _last_step(self) -> Optional[int]:
        """:return: the step the run stops at (None: no limit)."""
        limits = [limit for limit in (self.max_steps, self.lr_anneal_steps) if limit]
        return min(limits) if limits else None

    def _stop_for_signal(self) -> NoReturn:
        """Save the step just taken (unless just saved) and exit with status 143."""
        if (self.step - 1) % self.log_interval != 0:
            logger.dumpkvs()
        if self.step % self.save_interval != 0:
            self.save()
        logger.log(
            f"stopped by SIGTERM after step {self.step}: resume with --resume_checkpoint "
            f"{bf.join(get_blob_logdir(), f'model{self.step:06d}.pt')} (the same flags) to "
            "continue exactly where it stopped"
        )
        dist_util.cleanup()
        raise SystemExit(128 + signal.SIGTERM)
    def _finished(self) -> bool:
        return bool(
            (self.max_steps and self.step >= self.max_steps)
            or (self.lr_anneal_steps and self.step >= self.lr_anneal_steps)
        )

    def run_step(self, batch: torch.Tensor, cond: dict[str, torch.Tensor]) -> None:
        """
        Take optimizer step number ``self.step`` (counting from 0) on one batch.

        :param batch: [N x C x H x W] inputs, N = batch_size.
        :param cond: {name: [N x ...]} model keyword arguments (e.g. "y" labels).
        """
        if self.seed is not None:
            seed_for_step(self.seed, self.step)
        self._anneal_lr()
        self.forward_backward(batch, cond)
        try:
            took_step = self.mp_trainer.optimize(self.opt)
        except NonFiniteLossError as err:
            raise NonFiniteLossError(self._divergence_message(str(err))) from None
        if took_step:
            self._update_ema()
        self.log_step()

    def _divergence_message(self, what: str) -> str:
        """:return: what went wrong at this step, what was kept and what to try."""
        precision = (
            " or train in float32 (--use_fp16 False)"
            if self.mp_trainer.use_fp16
            else " or train in float32 (--use_bf16 False)" if self.mp_trainer.use_bf16 else ""
        )
        return (
            f"training diverged at step {self.step}: {what}. Stopped; nothing of this step "
            f"was saved (earlier checkpoints are kept). Try a lower --lr (now {self.lr:g})"
            f"{precision}, and check the data for broken images"
        )

    def forward_backward(self, batch: torch.Tensor, cond: dict[str, torch.Tensor]) -> None:
        """Zero the gradients and accumulate the gradients of the batch's loss."""
        raise NotImplementedError

    def _microbatches(
        self, batch: torch.Tensor, cond: dict[str, torch.Tensor]
    ) -> Iterator[tuple[torch.Tensor, dict, float, contextlib.AbstractContextManager]]:
        """
        Split a batch for gradient accumulation.

        :return: for each microbatch: (inputs [M x ...] on the device, cond [M x ...] on the
            device, M / N: its share of the batch, the context to run its forward and
            backward in: DDP's ``no_sync`` for all but the last microbatch).
        """
        n = batch.shape[0]
        for start in range(0, n, self.microbatch):
            micro = batch[start : start + self.microbatch].to(dist_util.dev())
            micro_cond = {
                k: v[start : start + self.microbatch].to(dist_util.dev()) for k, v in cond.items()
            }
            last = start + self.microbatch >= n
            sync = (
                self.ddp_model.no_sync() if self.use_ddp and not last else contextlib.nullcontext()
            )
            yield micro, micro_cond, micro.shape[0] / n, sync

    def _update_ema(self) -> None:
        with torch.no_grad():
            for rate, params in zip(self.ema_rate, self.ema_params):
                update_ema(params, self.mp_trainer.master_params, rate=rate)

    def _anneal_lr(self) -> None:
        """Step ``s`` uses ``lr * (1 - max(s - lr_anneal_offset, 0) / lr_anneal_steps)``."""
        if not self.lr_anneal_steps:
            return
        done = max(self.step - self.lr_anneal_offset, 0)
        self._set_lr(self.lr * (1 - done / self.lr_anneal_steps))

    def _set_lr(self, lr: float) -> None:
        for group in self.opt.param_groups:
            group["lr"] = lr

    def log_step(self) -> None:
        logger.logkv("step", self.step)
        logger.logkv("samples", (self.step + 1) * self.global_batch)

    # ------------------------------------------------------------------ checkpoints

    def save(self) -> None:
        """
        Write the checkpoint files for the current step into the log directory (rank 0;
        the others wait). The model file is written last: a resume never finds it without
        the EMA and optimizer files beside it. Nothing is written when a value is not
        finite (``NonFiniteLossError``); temporary files that a killed save left behind are
        removed first.
        """
        if dist_util.get_rank() == 0:
            logdir = get_blob_logdir()
            files = {
                f"ema_{rate}_{self.step:06d}.pt": self.mp_trainer.master_params_to_state_dict(
                    params
                )
                for rate, params in zip(self.ema_rate, self.ema_params)
            }
            opt_state = self.opt.state_dict()
            if self.mp_trainer.use_fp16:
                opt_state["lg_loss_scale"] = self.mp_trainer.lg_loss_scale
            files[f"opt{self.step:06d}.pt"] = opt_state
            train_state = self._train_state()
            if train_state is not None:
                files[f"train_state{self.step:06d}.pt"] = train_state
            files[f"model{self.step:06d}.pt"] = self.mp_trainer.master_params_to_state_dict(
                self.mp_trainer.master_params
            )
            for name, state in files.items():
                if not _all_finite(state):
                    raise NonFiniteLossError(
                        self._divergence_message(f"{name} would hold non-finite values")
                    )
            remove_stale_temp_files(logdir)
            for name, state in files.items():
                logger.log(f"saving {name} at step {self.step}...")
                if name.startswith(("opt", "train_state")):
                    atomic_torch_save(state, bf.join(logdir, name))
                else:
                    self._save_weights(state, bf.join(logdir, name))
        dist_util.barrier()

    def _train_state(self) -> Optional[dict]:
        """
        What a resumed run needs besides weights, EMA and optimizer to continue exactly: the
        schedule sampler's state (a loss-second-moment sampler's loss history), with the
        step. Tensors and plain values only (``weights_only`` reads it). The data order and
        every step's random numbers follow from ``seed`` and the step.

        :return: the state, or None when there is nothing to save (a uniform sampler).
        """
        sampler = getattr(self, "schedule_sampler", None)
        sampler_state = sampler.state_dict() if sampler is not None else {}
        if not sampler_state:
            return None
        return {"step": self.step, "schedule_sampler": sampler_state}

    def _resume_train_state(self) -> None:
        """Load ``train_state{N}.pt`` beside the resumed checkpoint, when there is one."""
        if not self.resume_checkpoint or not self.resume_step:
            return
        path = bf.join(bf.dirname(self.resume_checkpoint), f"train_state{self.resume_step:06d}.pt")
        sampler = getattr(self, "schedule_sampler", None)
        if not bf.exists(path):
            if sampler is not None and sampler.state_dict():
                logger.log(
                    f"no {path} (saved by an older version): the timestep sampler's loss "
                    "history starts afresh"
                )
            return
        state = read_checkpoint(path)
        if not isinstance(state, dict) or state.get("step") != self.resume_step:
            raise ValueError(
                f"{path} is not the training state of step {self.resume_step}: delete it to "
                "resume without it"
            )
        if sampler is not None and state.get("schedule_sampler"):
            try:
                sampler.load_state_dict(state["schedule_sampler"])
            except ValueError as err:
                raise ValueError(f"{path}: {err}; was it saved with other flags?") from None

    def _save_weights(self, state_dict: dict[str, torch.Tensor], path: str) -> None:
        """Write the weights and the run configuration beside them (if any), recording their
        SHA-256; the configuration is in place before the weights appear under ``path``."""
        if self.run_config is None:
            atomic_torch_save(state_dict, path)
            return

        def write_config(sha256: str) -> None:
            write_run_config(path, self.run_config, sha256)

        atomic_torch_save(state_dict, path, before_replace=write_config)


class TrainLoop(BaseTrainLoop):
    """
    Train a diffusion model: the original ``TrainLoop`` arguments plus ``use_bf16``,
    ``max_steps`` and ``seed``, the settings of ``train_config.TrainConfig`` (described
    there), which they build and check; ``TrainLoop.from_config`` takes a checked one.

    Each microbatch's loss is weighted by its share of the batch, so the gradient is the
    batch mean whatever ``microbatch`` is (the original summed the microbatch means).

    :param diffusion: a ``GaussianDiffusion`` (or ``SpacedDiffusion``).
    :param schedule_sampler: draws the timesteps (default uniform); a ``LossAwareSampler``
        is updated with every microbatch's losses.
    """

    lr_anneal_offset = 1  # as the original, which annealed after each optimizer step

    def __init__(
        self,
        *,
        model: nn.Module,
        diffusion,
        data: Iterator[Batch],
        batch_size: int,
        microbatch: int,
        lr: float,
        ema_rate: Union[str, float, Sequence[float]],
        log_interval: int,
        save_interval: int,
        resume_checkpoint: str,
        use_fp16: bool = False,
        fp16_scale_growth: float = 1e-3,
        schedule_sampler: Optional[ScheduleSampler] = None,
        weight_decay: float = 0.0,
        lr_anneal_steps: int = 0,
        use_bf16: bool = False,
        max_steps: int = 0,
        seed: Optional[int] = None,
        run_config: Optional[dict] = None,
    ):
        config = TrainConfig.from_arguments(locals())
        super().__init__(model=model, data=data, config=config, run_config=run_config)
        self.diffusion = diffusion
        self.schedule_sampler = schedule_sampler or UniformSampler(diffusion)

    @classmethod
    def from_config(
        cls,
        config: TrainConfig,
        *,
        model: nn.Module,
        diffusion,
        data: Iterator[Batch],
        schedule_sampler: Optional[ScheduleSampler] = None,
        run_config: Optional[dict] = None,
    ) -> "TrainLoop":
        """
        A ``TrainLoop`` with the settings of ``config`` (checked when it was made, not again).
        """
        loop = cls.__new__(cls)
        BaseTrainLoop.__init__(loop, model=model, data=data, config=config, run_config=run_config)
        loop.diffusion = diffusion
        loop.schedule_sampler = schedule_sampler or UniformSampler(diffusion)
        return loop

    def forward_backward(self, batch: torch.Tensor, cond: dict[str, torch.Tensor]) -> None:
        self.mp_trainer.zero_grad()
        for micro, micro_cond, share, sync in self._microbatches(batch, cond):
            t, weights = self.schedule_sampler.sample(micro.shape[0], dist_util.dev())
            with sync:
                with self.mp_trainer.autocast():
                    losses = self.diffusion.training_losses(
                        self.ddp_model, micro, t, model_kwargs=micro_cond
                    )
                if isinstance(self.schedule_sampler, LossAwareSampler):
                    self.schedule_sampler.update_with_local_losses(t, losses["loss"].detach())
                loss = (losses["loss"] * weights).mean()
                log_loss_dict(self.diffusion, t, {k: v * weights for k, v in losses.items()})
                self.mp_trainer.backward(loss * share)


class ClassifierTrainLoop(BaseTrainLoop):
    """
    Train a classifier of noised images x_t (``q_sample`` at timesteps from the schedule
    sampler) with cross-entropy, logging loss and top-1 / top-5 accuracy per quartile of t,
    and the same on a validation batch every ``eval_interval`` steps.

    Checkpoints are ``model{N:06d}.pt`` and ``opt{N:06d}.pt`` (no EMA).

    :param diffusion: the diffusion process that noises the images.
    :param noised: train on x_t; False trains on clean images (t = 0).
    :param val_data: iterator of validation batches, or None.
    :param eval_interval: evaluate every this many steps (--eval_interval).
    :param schedule_sampler: draws the timesteps (default uniform).
    :param config: the loop's settings (``train_config.classifier_train_config``); None:
        made from ``settings``.
    :param settings: without ``config``: the arguments of ``classifier_train_config``
        (``iterations``, ``anneal_lr`` and the ``TrainConfig`` settings but the step limits).
    """

    max_steps_flag = "iterations"

    def __init__(
        self,
        *,
        model: nn.Module,
        diffusion,
        data: Iterator[Batch],
        config: Optional[TrainConfig] = None,
        noised: bool = True,
        val_data: Optional[Iterator[Batch]] = None,
        eval_interval: int = 5,
        schedule_sampler: Optional[ScheduleSampler] = None,
        run_config: Optional[dict] = None,
        **settings,
    ):
        check_positive(eval_interval=eval_interval)
        if config is not None and settings:
            raise TypeError(f"give config or the settings {sorted(settings)}, not both")
        config = config if config is not None else classifier_train_config(**settings)
        super().__init__(model=model, data=data, config=config, run_config=run_config)
        self.diffusion = diffusion
        self.noised = noised
        self.val_data = val_data
        self.eval_interval = eval_interval
        self.schedule_sampler = schedule_sampler or UniformSampler(diffusion)

    def run_step(self, batch: torch.Tensor, cond: dict[str, torch.Tensor]) -> None:
        super().run_step(batch, cond)
        if self.val_data is not None and self.step % self.eval_interval == 0:
            self.evaluate()

    def evaluate(self) -> None:
        """Log the loss and accuracies of one validation batch (keys prefixed "val_")."""
        batch, cond = next(self.val_data)
        self.model.eval()
        with torch.no_grad():
            self.forward_backward(batch, cond, prefix="val")
        self.model.train()

    def forward_backward(
        self, batch: torch.Tensor, cond: dict[str, torch.Tensor], prefix: str = "train"
    ) -> None:
        """
        :param batch: [N x C x H x W] clean images.
        :param cond: {"y": [N] int64 labels}.
        :param prefix: "train" (accumulate gradients) or "val" (only log, under no_grad).
        """
        if "y" not in cond:
            raise ValueError(
                "classifier training needs class labels: load the data with class_cond=True"
            )
        if prefix == "train":
            self.mp_trainer.zero_grad()
        for micro, micro_cond, share, sync in self._microbatches(batch, cond):
            labels = micro_cond["y"]
            if self.noised:
                t, _ = self.schedule_sampler.sample(micro.shape[0], dist_util.dev())
                micro = self.diffusion.q_sample(micro, t)
            else:
                t = torch.zeros(micro.shape[0], dtype=torch.long, device=micro.device)
            with sync:
                with self.mp_trainer.autocast():
                    logits = self.ddp_model(micro, timesteps=t)
                loss = F.cross_entropy(logits.float(), labels, reduction="none")
                losses = {
                    f"{prefix}_loss": loss.detach(),
                    f"{prefix}_acc@1": compute_top_k(logits, labels, k=1, reduction="none"),
                    f"{prefix}_acc@5": compute_top_k(logits, labels, k=5, reduction="none"),
                }
                log_loss_dict(self.diffusion, t, losses)
                if loss.requires_grad:
                    self.mp_trainer.backward(loss.mean() * share)


# ---------------------------------------------------------------------------- helpers


def create_network(args: argparse.Namespace, kind: str) -> tuple[nn.Module, object]:
    """
    Seed torch from ``--seed`` and build the network to train and its diffusion process.

    :param kind: "model", "super_res" or "classifier".
    :return: (network, diffusion), the network still on the CPU.
    """
    logger.log("creating model and diffusion...")
    torch.manual_seed(args.seed)
    return create_from_flags(args, kind)


def train_diffusion_model(
    args,
    model: nn.Module,
    diffusion,
    data: Iterator[Batch],
    kind: str = "model",
    config: Optional[TrainConfig] = None,
) -> None:
    """
    What the diffusion training scripts share once model and data exist: put the model on
    this process's device, make the timestep sampler, run the TrainLoop (writing the run
    configuration beside every checkpoint), and leave the process group.

    :param args: parsed flags holding ``schedule_sampler``, the training flags and the model
        and diffusion flags.
    :param kind: "model" or "super_res": the network being trained.
    :param config: the loop's settings from ``flags.parse_train_args`` (None: made from
        ``args``).
    """
    model.to(dist_util.dev())
    schedule_sampler = create_named_schedule_sampler(args.schedule_sampler, diffusion)
    logger.log("training...")
    TrainLoop.from_config(
        config if config is not None else train_config_from_flags(args, kind),
        model=model,
        diffusion=diffusion,
        data=data,
        schedule_sampler=schedule_sampler,
        run_config=training_run_config(kind, args),
    ).run_loop()
    dist_util.cleanup()


def training_run_config(kind: str, args) -> dict:
    """
    The run configuration of a training run (``run_config.make_run_config``); logs once
    when the data folder has fewer classes than the network has labels for.

    :param kind: "model", "super_res" or "classifier".
    :param args: the parsed training flags.
    """
    config = make_run_config(kind, args)
    data = config["data"]
    if data is not None and data["num_classes"] < args.num_classes:
        logger.log(
            f"note: {args.data_dir} holds {data['num_classes']} classes but --num_classes is "
            f"{args.num_classes}: labels {data['num_classes']}..{args.num_classes - 1} are "
            "never trained; samplers reading the run configuration draw only the "
            f"{data['num_classes']} trained ones"
        )
    return config


def seed_for_step(seed: int, step: int, stream: int = 0) -> None:
    """
    Seed torch (every device), numpy's and Python's global generators from
    (seed, rank, step): each rank draws different noise, and a step draws the same numbers
    whether or not the run was resumed before it.

    :param stream: another independent stream for the same step (0 is the training step's;
        1 seeds the data order when a run starts).
    """
    entropy = [seed, dist_util.get_rank(), step] + ([stream] if stream else [])
    seeds = np.random.SeedSequence(entropy).generate_state(3)
    torch.manual_seed(int(seeds[0]))
    np.random.seed(int(seeds[1]))
    random.seed(int(seeds[2]))


def compute_top_k(
    logits: torch.Tensor, labels: torch.Tensor, k: int, reduction: str = "mean"
) -> torch.Tensor:
    """
    :param logits: [N x classes] scores.
    :param labels: [N] int64 true classes.
    :param k: count a hit when the label is among the k best scores (k is capped at the
        number of classes).
    :param reduction: "mean" for the accuracy, "none" for the [N] float hits.
    """
    top_ks = torch.topk(logits, min(k, logits.shape[-1]), dim=-1).indices  # [N x k]
    hits = (top_ks == labels[:, None]).any(dim=-1).float()
    if reduction == "mean":
        return hits.mean()
    if reduction == "none":
        return hits
    raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")


def log_loss_dict(diffusion, ts: torch.Tensor, losses: dict[str, torch.Tensor]) -> None:
    """
    Log the mean of each loss, and its mean in each quartile of the timesteps as
    "{key}_q0" (t < T/4) ... "{key}_q3".

    :param diffusion: gives T (``num_timesteps``).
    :param ts: [N] timesteps.
    :param losses: {key: [N] per-example values}.
    """
    quartiles = (4 * ts.detach().cpu().numpy() // diffusion.num_timesteps).tolist()
    for key, values in losses.items():
        values = values.detach().float()
        logger.logkv_mean(key, values.mean().item())
        for quartile, value in zip(quartiles, values.cpu().tolist()):
            logger.logkv_mean(f"{key}_q{int(quartile)}", value)


@contextlib.contextmanager
def _sigterm_stops() -> Iterator[Callable[[], bool]]:
    """
    While the block runs, SIGTERM only records that it came (the loop stops at the next step
    boundary); the previous handler is restored afterwards. Outside the main thread, where
    Python cannot handle signals, nothing changes.

    :return: a function telling whether a SIGTERM came.
    """
    if threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return
    received: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum))
    try:
        yield lambda: bool(received)
    finally:
        signal.signal(signal.SIGTERM, previous)


def get_blob_logdir() -> str:
    """:return: where checkpoints are saved: the logger's directory."""
    return logger.get_dir()


def find_resume_checkpoint() -> Optional[str]:
    """
    Hook for finding the latest checkpoint automatically (e.g. on blob storage); like the
    original, nothing is found and ``--resume_checkpoint`` decides.
    """
    return None


def find_ema_checkpoint(main_checkpoint: Optional[str], step: int, rate: float) -> Optional[str]:
    """
    :return: the ``ema_{rate}_{step:06d}.pt`` file beside ``main_checkpoint`` if it exists,
        else None.
    """
    if main_checkpoint is None:
        return None
    path = bf.join(bf.dirname(main_checkpoint), f"ema_{rate}_{step:06d}.pt")
    return path if bf.exists(path) else None


_CHECKPOINT_FILE = re.compile(r"(model|opt|train_state)\d+\.pt|ema_[^_]+_\d+\.pt")
# What atomic_write leaves when killed while writing a checkpoint or its run configuration:
# ".<name>.<random>.tmp".
_CHECKPOINT_TEMP_FILE = re.compile(
    r"\.((model|opt|train_state)\d+|ema_[^_]+_\d+)\.(pt|json)\.\w+\.tmp"
)


def check_fresh_log_dir(logdir: Optional[str]) -> None:
    """
    Refuse to start a new run in a log folder that holds another run's checkpoints (the two
    runs would overwrite and mix each other's files).

    :param logdir: the log folder (None or missing: nothing to check).
    :raises ValueError: naming the folder, the latest checkpoint and what to do instead.
    """
    if not logdir or not bf.isdir(logdir):
        return
    found = sorted(name for name in bf.listdir(logdir) if _CHECKPOINT_FILE.fullmatch(name))
    if not found:
        return
    models = [name for name in found if name.startswith("model")]
    latest = max(models, key=parse_resume_step_from_filename) if models else None
    resume = (
        f"resume it with --resume_checkpoint {bf.join(logdir, latest)}, or "
        if latest
        else ""
    )
    raise ValueError(
        f"the log folder {logdir} already holds checkpoints of an earlier run ({found[-1]}"
        f"{f' and {len(found) - 1} more' if len(found) > 1 else ''}): {resume}set "
        "OPENAI_LOGDIR to a new folder (or move those files away) to start a new run"
    )


def remove_stale_temp_files(logdir: str) -> list[str]:
    """
    Remove the temporary files of checkpoint writes that were killed before they finished
    (they never replaced a checkpoint, so nothing is lost).

    :return: the names removed.
    """
    if not is_local_path(logdir) or not os.path.isdir(logdir):
        return []
    stale = [name for name in os.listdir(logdir) if _CHECKPOINT_TEMP_FILE.fullmatch(name)]
    for name in stale:
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(logdir, name))
    if stale:
        logger.log(f"removed {len(stale)} unfinished checkpoint file(s): {', '.join(stale)}")
    return stale


def _all_finite(obj) -> bool:
    """:return: False when a floating-point tensor in ``obj`` (nested dicts / lists) holds an
    infinite or NaN value."""
    if isinstance(obj, torch.Tensor):
        return not obj.is_floating_point() or bool(torch.isfinite(obj).all())
    if isinstance(obj, float):
        return math.isfinite(obj)
    if isinstance(obj, dict):
        return all(_all_finite(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return all(_all_finite(v) for v in obj)
    return True


def _check_optimizer_state(state_dict: dict, master_params: list[torch.Tensor], path: str) -> None:
    """Raise a ValueError when an optimizer file was saved for other parameters."""
    saved = [i for group in state_dict.get("param_groups", []) for i in group["params"]]
    state = state_dict.get("state", {})
    shapes_ok = len(saved) == len(master_params) and all(
        i not in state
        or "exp_avg" not in state[i]
        or tuple(state[i]["exp_avg"].shape) == tuple(p.shape)
        for i, p in zip(saved, master_params)
    )
    if not shapes_ok:
        raise ValueError(
            f"optimizer state {path} was saved for different parameters ({len(saved)} tensors, "
            f"this model has {len(master_params)}): was it saved with another --use_fp16 setting "
            "or model flags?"
        )
