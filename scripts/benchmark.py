"""
Time training steps (forward, backward and optimizer) and sampling steps of a named model
configuration, and print images per second, achieved TFLOP/s and, on a GPU, the share of
the GPU's measured bfloat16 matrix-multiply peak.

Configurations: the published checkpoints' (64x64_diffusion, 128x128_diffusion,
256x256_diffusion, 256x256_diffusion_uncond, 512x512_diffusion, lsun_bedroom,
64_256_upsampler, 128_512_upsampler, {64,128,256,512}x..._classifier) and two small ones
(tiny, small). A training step is what ``TrainLoop`` does per batch (the diffusion loss at
uniform timesteps, ``MixedPrecisionTrainer`` backward and AdamW step; cross-entropy on noised
images for classifiers); a sampling step is one ancestral ``p_sample`` step (for classifiers,
the guidance gradient of log p(y | x_t)). FLOPs are counted once per mode with
``torch.utils.flop_counter`` on the meta device (model forward, plus backward for training).

Examples:

    python scripts/benchmark.py --config small --mode both --device cpu --attention both
    python scripts/benchmark.py --config 256x256_diffusion --mode train --dtype bf16 \
        --batch_size 16 --compile True
"""

import argparse
import statistics
import sys
import tempfile
import time
from typing import Callable

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode
from tqdm.auto import tqdm

from guided_diffusion import dist_util, flags, logger, presets
from guided_diffusion import script_util as su
from guided_diffusion.fp16_util import MixedPrecisionTrainer
from guided_diffusion.script_errors import run_program
from guided_diffusion.unet import (
    ATTENTION_BACKENDS,
    EncoderUNetModel,
    SuperResModel,
    attention_backend,
)

# Flags over the defaults of the kind of network ("model", "super_res" or "classifier"): two
# small configurations and the published checkpoints' (lsun_cat and lsun_horse are
# lsun_bedroom's network).
CONFIGS = {
    "tiny": ("model", dict(
        image_size=32, num_channels=32, num_res_blocks=1, channel_mult="1,2",
        attention_resolutions="16", num_head_channels=32, learn_sigma=True, class_cond=True)),
    "small": ("model", dict(
        image_size=64, num_channels=64, num_res_blocks=2, attention_resolutions="16,8",
        num_head_channels=32, learn_sigma=True, class_cond=True, resblock_updown=True)),
    **{name: (preset.kind, preset.flags) for name, preset in presets.PRESETS.items()
       if name not in ("lsun_cat", "lsun_horse")},
}  # fmt: skip
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def build(config: str, device: str = "cpu"):
    """:return: (model, diffusion) of a named configuration in float32 on ``device``."""
    kind, flags = CONFIGS[config]
    fp16_flag = "classifier_use_fp16" if kind == "classifier" else "use_fp16"
    args = argparse.Namespace(**{**su.network_defaults(kind), **flags, fp16_flag: False})
    with torch.device(device):
        return su.create_from_flags(args, kind)  # --dtype sets the precision


def make_batch(model: torch.nn.Module, batch_size: int, device: str, config: str):
    """:return: (images, model_kwargs, labels) of random data shaped for the model."""
    x = torch.randn(batch_size, 3, model.image_size, model.image_size, device=device)
    labels = torch.randint(0, 1000, (batch_size,), device=device)
    kwargs = {}
    if getattr(model, "num_classes", None) is not None:
        kwargs["y"] = labels % model.num_classes
    if isinstance(model, SuperResModel):
        small = CONFIGS[config][1].get("small_size", model.image_size // 4)
        kwargs["low_res"] = torch.randn(batch_size, 3, small, small, device=device)
    return x, kwargs, labels % getattr(model, "out_channels", 1000)


def count_flops(config: str, batch_size: int, train: bool) -> int:
    """FLOPs of one model forward (and backward when ``train``), counted on the meta device."""
    model, _ = build(config, "meta")
    x, kwargs, labels = make_batch(model, batch_size, "meta", config)
    t = torch.zeros(batch_size, dtype=torch.long, device="meta")
    x.requires_grad_(not train and isinstance(model, EncoderUNetModel))  # guidance gradient
    model.requires_grad_(train)
    counter = FlopCounterMode(display=False)
    with counter, attention_backend("einsum"):  # the same function, counted as plain matmuls
        out = model(x, t, **kwargs)
        if train or x.requires_grad:
            out.float().square().mean().backward()
    return counter.get_total_flops()


def train_step_fn(model, diffusion, trainer, batch, compiled) -> Callable[[], None]:
    """One training step of the model (or classifier) with its optimizer."""
    x, kwargs, labels = batch
    opt = torch.optim.AdamW(trainer.master_params, lr=1e-4)
    t = torch.randint(0, diffusion.num_timesteps, (x.shape[0],), device=x.device)

    def step():
        trainer.zero_grad()
        with trainer.autocast():
            if isinstance(model, EncoderUNetModel):
                loss = F.cross_entropy(compiled(diffusion.q_sample(x, t), t), labels)
            else:
                loss = diffusion.training_losses(compiled, x, t, model_kwargs=kwargs)["loss"].mean()
        trainer.backward(loss)
        trainer.optimize(opt)

    return step


def sample_step_fn(model, diffusion, batch, compiled) -> Callable[[], None]:
    """One ancestral sampling step (classifiers: the guidance gradient)."""
    x, kwargs, labels = batch
    t = torch.full((x.shape[0],), diffusion.num_timesteps // 2, device=x.device, dtype=torch.long)

    def step():
        if isinstance(model, EncoderUNetModel):
            x_in = x.detach().requires_grad_(True)
            log_probs = F.log_softmax(compiled(x_in, t), dim=-1)
            torch.autograd.grad(log_probs[torch.arange(len(labels)), labels].sum(), x_in)
        else:
            with torch.no_grad():
                diffusion.p_sample(compiled, x, t, model_kwargs=kwargs)

    return step


def time_steps(
    step: Callable[[], None],
    steps: int,
    warmup: int,
    device: str,
    backends: list[str],
    desc: str = "",
) -> dict[str, float]:
    """
    Time ``step`` with each attention backend, alternating between them step by step so
    that a busy machine slows them alike; with ``desc``, a progress bar on stderr (steps
    done, seconds per step, time left), as the sampling programs show.

    :return: the median seconds per step of each backend, after ``warmup`` untimed steps.
    """
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    times = {backend: [] for backend in backends}
    total = (warmup + steps) * len(backends)
    with tqdm(total=total, desc=desc, unit="step", disable=not desc, file=sys.stderr) as bar:
        for _ in range(warmup):
            for backend in backends:
                with attention_backend(backend):
                    step()
                bar.update()
        for _ in range(steps):
            for backend in backends:
                with attention_backend(backend):
                    sync()
                    start = time.perf_counter()
                    step()
                    sync()
                    times[backend].append(time.perf_counter() - start)
                bar.update()
    return {backend: statistics.median(t) for backend, t in times.items()}


def bf16_matmul_peak(device: str, size: int = 8192, repeats: int = 20) -> float:
    """:return: measured TFLOP/s of a size^3 bfloat16 matrix multiply on a CUDA device."""
    a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    b = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    seconds = time_steps(lambda: a @ b, repeats, 3, device, ["sdpa"])["sdpa"]
    return 2 * size**3 / seconds / 1e12


def run(args, mode: str, backends: list[str], peak: float) -> dict[str, float]:
    """Benchmark one mode; print a row per attention backend; return their images/s."""
    model, diffusion = build(args.config, args.device)
    dtype = DTYPES[args.dtype]
    batch = make_batch(model, args.batch_size, args.device, args.config)
    if mode == "train":
        trainer = MixedPrecisionTrainer(
            model=model, use_fp16=dtype == torch.float16, use_bf16=dtype == torch.bfloat16
        )
        model.train()
    else:
        model.eval()
        if dtype == torch.float16:
            model.convert_to_fp16()
        elif dtype == torch.bfloat16:
            model.convert_to_bf16()
    compiled = torch.compile(model) if args.compile else model
    if mode == "train":
        step = train_step_fn(model, diffusion, trainer, batch, compiled)
    else:
        step = sample_step_fn(model, diffusion, batch, compiled)
    desc = f"{args.config} {mode} ({args.warmup} warm-up + {args.steps} timed steps each)"
    seconds = time_steps(step, args.steps, args.warmup, args.device, backends, desc=desc)
    flops = count_flops(args.config, args.batch_size, train=mode == "train")
    speeds = {}
    for backend, sec in seconds.items():
        tflops = flops / sec / 1e12
        row = (
            f"{args.config} {mode:6s} {args.dtype} attention={backend:6s} "
            f"compile={args.compile} device={args.device} batch={args.batch_size}: "
            f"{args.batch_size / sec:9.2f} images/s, {sec * 1e3:9.1f} ms/step, "
            f"{flops / args.batch_size / 1e9:8.2f} GFLOP/image, {tflops:7.3f} TFLOP/s"
        )
        if peak:
            share = 100 * tflops / peak
            row += f", {share:5.1f}% of the measured bf16 matmul peak ({peak:.0f} TFLOP/s)"
        print(row, flush=True)
        speeds[backend] = args.batch_size / sec
    return speeds


def main(argv: list[str] | None = None) -> None:
    args = flags.parse_args(create_argparser(), argv)
    dist_util.setup_dist()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    peak = bf16_matmul_peak(args.device) if args.device.startswith("cuda") else 0.0
    modes = ["train", "sample"] if args.mode == "both" else [args.mode]
    backends = list(ATTENTION_BACKENDS) if args.attention == "both" else [args.attention]
    # the trainer logs gradient norms: keep them out of stdout and the disk
    with tempfile.TemporaryDirectory() as tmp, logger.scoped_configure(dir=tmp, format_strs=[]):
        for mode in modes:
            speeds = run(args, mode, backends, peak)
            if len(speeds) == 2:
                print(
                    f"{args.config} {mode}: sdpa / einsum speed ratio = "
                    f"{speeds['sdpa'] / speeds['einsum']:.3f}",
                    flush=True,
                )


HELP = {
    "config": "named model configuration",
    "mode": "what to time",
    "batch_size": "images per step",
    "dtype": "fp32; fp16 (float16 blocks, float32 master weights and loss scaling when "
    "training); bf16 (autocast when training, bfloat16 blocks when sampling)",
    "compile": "wrap the model in torch.compile",
    "device": "torch device",
    "steps": "timed steps (per attention backend); the median is reported",
    "warmup": "untimed steps first (compilation, caches)",
    "attention": "attention kernel: sdpa (scaled_dot_product_attention), einsum (the plain "
    "formulation) or both, printing their speed ratio",
    "threads": "CPU threads for torch (0: torch's default)",
}


def create_argparser() -> argparse.ArgumentParser:
    defaults = dict(
        config="small", mode="both", batch_size=8, dtype="fp32", compile=False,
        device="cuda" if torch.cuda.is_available() else "cpu", steps=5, warmup=2,
        attention="sdpa", threads=0,
    )  # fmt: skip
    choices = dict(
        config=sorted(CONFIGS), mode=["train", "sample", "both"], dtype=sorted(DTYPES),
        attention=[*ATTENTION_BACKENDS, "both"],
    )  # fmt: skip
    return flags.create_parser(__doc__.split("\n\n")[0], defaults, helps=HELP, choices=choices)


if __name__ == "__main__":
    run_program(main)
