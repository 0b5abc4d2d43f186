r"""
Generate a large batch of image samples from a diffusion model and save them as a
.npz file (arr_0: uint8 NHWC images, arr_1: int64 labels for class-conditional models),
with a PNG grid of the first ones beside it, in the log directory ($OPENAI_LOGDIR).

Example (the published 64x64 ImageNet model, 100 samples, 250 steps):

    MODEL_FLAGS="--attention_resolutions 32,16,8 --class_cond True --diffusion_steps 1000 \
        --dropout 0.1 --image_size 64 --learn_sigma True --noise_schedule cosine \
        --num_channels 192 --num_head_channels 64 --num_res_blocks 3 --resblock_updown True \
        --use_new_attention_order True --use_fp16 True --use_scale_shift_norm True"
    python scripts/image_sample.py $MODEL_FLAGS --model_path models/64x64_diffusion.pt \
        --batch_size 16 --num_samples 100 --timestep_respacing 250 --seed 0

Run it under `mpiexec -n N` or `torchrun --nproc_per_node N` to share the work.
"""

import argparse
from typing import Optional

from guided_diffusion import dist_util, flags, logger, sample_util
from guided_diffusion.script_errors import SamplingInputError, run_program
from guided_diffusion.script_util import model_and_diffusion_defaults


def main(argv: Optional[list[str]] = None) -> None:
    args = flags.parse_args(create_argparser(), argv, model_path="model")
    flags.check_counts(args.num_samples, args.batch_size)
    sampler = sample_util.sampler_setting(args)
    class_labels = flags.class_labels_of(args)
    if class_labels is not None and not args.class_cond:
        raise SamplingInputError(
            "--class_labels needs a class-conditional model (--class_cond True); "
            "to steer an unconditional model use scripts/classifier_sample.py"
        )

    dist_util.setup_dist()
    logger.configure()

    model, diffusion = sample_util.load_sampling_model(args, sampler)

    logger.log("sampling...")
    labels = sample_util.no_kwargs
    if args.class_cond:
        labels = sample_util.class_label_kwargs(class_labels, flags.num_classes_of(args))
    sample_util.sample_and_report(
        args, model, diffusion, sampler, files={"model_path": args.model_path}, make_kwargs=labels
    )


def create_argparser() -> argparse.ArgumentParser:
    return flags.create_sampling_parser(
        __doc__, flags.sampling_defaults(class_labels=""), model_and_diffusion_defaults()
    )


if __name__ == "__main__":
    run_program(main)
