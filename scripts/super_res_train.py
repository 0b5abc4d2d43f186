r"""
Train a super-resolution diffusion model (an upsampler) on a folder of images: each batch
is resized to --large_size, and its --small_size version, made by area averaging, is the
model's low-resolution input.

Checkpoints and logs go to $OPENAI_LOGDIR (else a new timestamped temp folder).

Example (the 64 -> 256 upsampler flags of the paper):

    MODEL_FLAGS="--large_size 256 --small_size 64 --num_channels 192 --num_res_blocks 2 \
        --learn_sigma True --class_cond True --attention_resolutions 32,16,8 \
        --num_heads 4 --resblock_updown True --use_scale_shift_norm True --use_fp16 True"
    DIFFUSION_FLAGS="--diffusion_steps 1000 --noise_schedule linear"
    OPENAI_LOGDIR=runs/upsample256 mpiexec -n 8 python scripts/super_res_train.py \
        --data_dir data/imagenet256 $MODEL_FLAGS $DIFFUSION_FLAGS --lr 3e-4 --batch_size 4
"""

import argparse
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from guided_diffusion import dist_util, flags, logger
from guided_diffusion.image_datasets import load_data
from guided_diffusion.script_errors import run_program
from guided_diffusion.script_util import sr_model_and_diffusion_defaults
from guided_diffusion.train_util import create_network, train_diffusion_model


def main(argv: list[str] | None = None) -> None:
    args, config = flags.parse_train_args(create_argparser(), argv, "super_res")
    dist_util.setup_dist()
    data = load_superres_data(
        args.data_dir, args.batch_size, args.large_size, args.small_size, args.class_cond,
        args.random_flip, seed=args.seed, start_batch=config.resume_step,
    )  # fmt: skip
    logger.configure()

    model, diffusion = create_network(args, "super_res")
    train_diffusion_model(args, model, diffusion, data, kind="super_res", config=config)


def load_superres_data(
    data_dir: str,
    batch_size: int,
    large_size: int,
    small_size: int,
    class_cond: bool = False,
    random_flip: bool = True,
    seed: int | None = None,
    start_batch: int = 0,
) -> Iterator[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
    """
    Batches of (images [N x 3 x large x large], {"low_res": [N x 3 x small x small], "y"?}),
    flipped horizontally at random when ``random_flip``; ``seed`` and ``start_batch`` as
    ``load_data``'s.
    The folder is checked when this is called, before the first batch is read.
    """
    data = load_data(
        data_dir=data_dir,
        batch_size=batch_size,
        image_size=large_size,
        class_cond=class_cond,
        random_flip=random_flip,
        seed=seed,
        start_batch=start_batch,
    )
    return _add_low_res(data, small_size)


def _add_low_res(data, small_size: int):
    for large_batch, model_kwargs in data:
        model_kwargs["low_res"] = F.interpolate(large_batch, small_size, mode="area")
        yield large_batch, model_kwargs


def create_argparser() -> argparse.ArgumentParser:
    return flags.create_train_parser(
        __doc__,
        flags.diffusion_train_defaults(),
        sr_model_and_diffusion_defaults(),
        kind="super_res",
    )


if __name__ == "__main__":
    run_program(main)
