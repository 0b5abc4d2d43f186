r"""
Evaluate a diffusion model's negative log-likelihood, in bits per dimension, on a folder
of images: logs the running mean after each batch and the final figure.

Example:

    python scripts/image_nll.py $MODEL_FLAGS --model_path models/model.pt \
        --data_dir datasets/val --num_samples 1000 --batch_size 8
"""

import argparse
import os
from typing import Optional

from guided_diffusion import bpd, dist_util, flags, logger, model_loading, shards
from guided_diffusion.image_datasets import indexed_images
from guided_diffusion.script_errors import SamplingInputError, run_program
from guided_diffusion.script_util import model_and_diffusion_defaults


def main(argv: Optional[list[str]] = None) -> None:
    args = flags.parse_args(create_argparser(), argv, model_path="model")
    flags.check_counts(args.num_samples, args.batch_size)
    if not args.data_dir:
        raise SamplingInputError("--data_dir is required: a folder of images")
    if not os.path.isdir(args.data_dir):
        raise FileNotFoundError(f"--data_dir: no such folder: {args.data_dir}")

    try:
        images = indexed_images(args.data_dir, args.image_size, args.class_cond)
    except ValueError as err:
        raise SamplingInputError(f"--data_dir {args.data_dir}: {err}") from None
    if args.num_samples > len(images):
        raise SamplingInputError(
            f"--num_samples {args.num_samples} is more than the {len(images)} images in "
            f"--data_dir {args.data_dir} (each image is counted once): use --num_samples "
            f"{len(images)} or fewer"
        )

    dist_util.setup_dist()
    logger.configure()
    logger.log("creating model and diffusion...")
    model, diffusion = model_loading.load_model_and_diffusion(args)

    logger.log("evaluating...")
    job = bpd.BpdJob(
        model,
        diffusion,
        bpd.dataset_reader(images),
        args.seed,
        clip_denoised=args.clip_denoised,
    )
    files = {"model_path": args.model_path, "data_dir": args.data_dir}
    metrics = bpd.evaluate_bpd_resumable(
        job,
        num_samples=args.num_samples,
        batch_size=args.batch_size,
        identity=shards.run_identity(args, files),
        keep_shards=args.keep_shards,
    )
    logger.log(
        f"bits/dim: {metrics['total_bpd']:.4f} over {args.num_samples} images "
        f"(prior term {metrics['prior_bpd']:.3g})"
    )
    if args.save_terms and dist_util.get_rank() == 0:
        for path in bpd.save_bpd_terms(metrics, logger.get_dir()):
            logger.log(f"saved {path}")
    logger.log("evaluation complete")


def create_argparser() -> argparse.ArgumentParser:
    return flags.create_sampling_parser(
        __doc__, flags.nll_defaults(), model_and_diffusion_defaults()
    )


if __name__ == "__main__":
    run_program(main)
