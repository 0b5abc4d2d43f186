r"""
Upsample a batch of low-resolution samples with a super-resolution diffusion model, in
the order of the base file, and save the result as a .npz file (arr_0: uint8 NHWC
images, arr_1: the base labels when there are any) with a PNG grid beside it, in the log
directory ($OPENAI_LOGDIR).

Example (64 -> 256 with the published upsampler, on samples from image_sample.py):

    SAMPLE_FLAGS="--batch_size 4 --num_samples 100 --timestep_respacing 250"
    MODEL_FLAGS="--attention_resolutions 32,16,8 --class_cond True --diffusion_steps 1000 \
        --large_size 256 --small_size 64 --learn_sigma True --noise_schedule linear \
        --num_channels 192 --num_heads 4 --num_res_blocks 2 --resblock_updown True \
        --use_fp16 True --use_scale_shift_norm True"
    python scripts/super_res_sample.py $MODEL_FLAGS --model_path models/64_256_upsampler.pt \
        --base_samples samples_100x64x64x3.npz $SAMPLE_FLAGS
"""

import argparse
from typing import Optional

from guided_diffusion import dist_util, flags, guidance, logger, sample_io, sample_util
from guided_diffusion.script_errors import run_program
from guided_diffusion.script_util import sr_model_and_diffusion_defaults


def main(argv: Optional[list[str]] = None) -> None:
    args = flags.parse_args(create_argparser(), argv, model_path="super_res")
    flags.check_counts(args.num_samples, args.batch_size)
    sampler = sample_util.sampler_setting(args)
    base = sample_io.load_base_samples(
        args.base_samples, args.small_size, args.class_cond, flags.num_classes_of(args)
    )

    dist_util.setup_dist()
    logger.configure()
    num_samples = args.num_samples
    if num_samples > len(base):
        logger.log(
            f"--num_samples {num_samples} is more than the {len(base)} images in "
            f"{args.base_samples}: upsampling all {len(base)}"
        )
        num_samples = len(base)

    model, diffusion = sample_util.load_sampling_model(args, sampler, super_res=True)

    logger.log(f"upsampling {num_samples} images to {args.large_size}x{args.large_size}...")
    # the base labels stay beside their images; they go to the model only when it takes them
    model_fn = model if args.class_cond else guidance.labels_to_classifier_only(model)
    sample_util.sample_and_report(
        args,
        model_fn,
        diffusion,
        sampler,
        files={"model_path": args.model_path, "base_samples": args.base_samples},
        image_size=args.large_size,
        make_kwargs=sample_util.base_sample_kwargs(base),
        num_samples=num_samples,
    )


def create_argparser() -> argparse.ArgumentParser:
    return flags.create_sampling_parser(
        __doc__,
        flags.sampling_defaults(base_samples=""),
        sr_model_and_diffusion_defaults(),
        kind="super_res",
    )


if __name__ == "__main__":
    run_program(main)
