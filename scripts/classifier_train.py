r"""
Train a classifier of noised images x_t, the guide of classifier-guided sampling, on a
folder of images whose file names carry their class ("<class>_<anything>.png").

Checkpoints (model{N}.pt, opt{N}.pt) and logs go to $OPENAI_LOGDIR (else a new timestamped
temp folder). The log rows hold the loss and top-1 / top-5 accuracy overall and per quartile
of t, for training and (with --val_data_dir) validation batches.

Example (the 128x128 ImageNet classifier flags of the paper):

    CLASSIFIER_FLAGS="--image_size 128 --classifier_attention_resolutions 32,16,8 \
        --classifier_depth 2 --classifier_width 128 --classifier_pool attention \
        --classifier_resblock_updown True --classifier_use_scale_shift_norm True \
        --classifier_use_fp16 True"
    DIFFUSION_FLAGS="--diffusion_steps 1000 --noise_schedule linear"
    OPENAI_LOGDIR=runs/classifier128 mpiexec -n 8 python scripts/classifier_train.py \
        --data_dir data/imagenet/train --val_data_dir data/imagenet/val \
        --iterations 300000 --anneal_lr True --batch_size 256 --lr 3e-4 \
        --save_interval 10000 --weight_decay 0.05 $CLASSIFIER_FLAGS $DIFFUSION_FLAGS
"""

import argparse

import blobfile as bf

from guided_diffusion import dist_util, flags, logger
from guided_diffusion.image_datasets import list_classes, load_data
from guided_diffusion.resample import create_named_schedule_sampler
from guided_diffusion.script_errors import run_program
from guided_diffusion.script_util import classifier_and_diffusion_defaults
from guided_diffusion.train_util import ClassifierTrainLoop, create_network, training_run_config


def main(argv: list[str] | None = None) -> None:
    args, config = flags.parse_train_args(create_argparser(), argv, "classifier")
    flags.check_num_classes(args.data_dir, args.num_classes)
    if args.val_data_dir and not bf.isdir(args.val_data_dir):
        raise FileNotFoundError(
            f"--val_data_dir {args.val_data_dir!r} is not a folder (validation images, named "
            "like the training images)"
        )
    if args.val_data_dir and list_classes(args.val_data_dir) != list_classes(args.data_dir):
        raise ValueError(
            f"--val_data_dir {args.val_data_dir!r} must hold the same classes as --data_dir "
            f"{args.data_dir!r} (labels are numbered from the sorted class names of each folder)"
        )

    dist_util.setup_dist()
    # the batches an uninterrupted run reads from the resumed step on: one per step, and a
    # validation batch every --eval_interval steps
    data = load_data(
        data_dir=args.data_dir,
        batch_size=args.batch_size,
        image_size=args.image_size,
        class_cond=True,
        random_crop=True,
        random_flip=args.random_flip,
        seed=args.seed,
        start_batch=config.resume_step,
    )
    val_data = None
    if args.val_data_dir:
        val_data = load_data(
            data_dir=args.val_data_dir,
            batch_size=args.batch_size,
            image_size=args.image_size,
            class_cond=True,
            seed=args.seed,
            start_batch=-(-config.resume_step // args.eval_interval),
        )
    logger.configure()

    model, diffusion = create_network(args, "classifier")
    model.to(dist_util.dev())
    schedule_sampler = create_named_schedule_sampler(args.schedule_sampler, diffusion)

    logger.log("training classifier model...")
    ClassifierTrainLoop(
        model=model,
        diffusion=diffusion,
        data=data,
        config=config,
        noised=args.noised,
        val_data=val_data,
        eval_interval=args.eval_interval,
        schedule_sampler=schedule_sampler,
        run_config=training_run_config("classifier", args),
    ).run_loop()
    dist_util.cleanup()


def create_argparser() -> argparse.ArgumentParser:
    return flags.create_train_parser(
        __doc__,
        flags.classifier_train_defaults(),
        classifier_and_diffusion_defaults(),
        kind="classifier",
    )


if __name__ == "__main__":
    run_program(main)
