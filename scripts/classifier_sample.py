r"""
Generate a large batch of samples from a diffusion model guided by a noisy classifier
(Dhariwal & Nichol 2021, classifier guidance), and save them as a .npz file (arr_0:
uint8 NHWC images, arr_1: the int64 target labels) with a PNG grid beside it, in the log
directory ($OPENAI_LOGDIR). Works with class-conditional and unconditional models; for
an unconditional one the labels go only to the classifier.

Example (the published 256x256 conditional model and classifier):

    MODEL_FLAGS="--attention_resolutions 32,16,8 --class_cond True --diffusion_steps 1000 \
        --image_size 256 --learn_sigma True --noise_schedule linear --num_channels 256 \
        --num_head_channels 64 --num_res_blocks 2 --resblock_updown True --use_fp16 True \
        --use_scale_shift_norm True"
    python scripts/classifier_sample.py $MODEL_FLAGS --classifier_scale 1.0 \
        --classifier_path models/256x256_classifier.pt --model_path models/256x256_diffusion.pt \
        --batch_size 4 --num_samples 100 --timestep_respacing 250
"""

import argparse
from typing import Optional

from guided_diffusion import dist_util, flags, guidance, logger, model_loading, sample_util
from guided_diffusion.script_errors import run_program
from guided_diffusion.script_util import classifier_defaults, model_and_diffusion_defaults


def main(argv: Optional[list[str]] = None) -> None:
    args = flags.parse_args(
        create_argparser(), argv, model_path="model", classifier_path="classifier"
    )
    flags.check_counts(args.num_samples, args.batch_size)
    flags.require_checkpoint(args, "classifier_path", "the noisy classifier that guides sampling")
    sampler = sample_util.sampler_setting(args)
    num_classes = flags.num_classes_of(args)
    class_labels = flags.class_labels_of(args)

    dist_util.setup_dist()
    logger.configure()

    model, diffusion = sample_util.load_sampling_model(args, sampler)
    logger.log("loading classifier...")
    classifier = model_loading.load_classifier(args)

    model_fn = model if args.class_cond else guidance.labels_to_classifier_only(model)
    logger.log(f"sampling with classifier scale {args.classifier_scale}...")
    sample_util.sample_and_report(
        args,
        model_fn,
        diffusion,
        sampler,
        files={"model_path": args.model_path, "classifier_path": args.classifier_path},
        make_kwargs=sample_util.class_label_kwargs(class_labels, num_classes),
        cond_fn=guidance.classifier_cond_fn(classifier, args.classifier_scale),
    )


def create_argparser() -> argparse.ArgumentParser:
    return flags.create_sampling_parser(
        __doc__,
        flags.sampling_defaults(classifier_path="", classifier_scale=1.0, class_labels=""),
        model_and_diffusion_defaults(),
        classifier_defaults(),
    )


if __name__ == "__main__":
    run_program(main)
