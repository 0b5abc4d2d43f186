r"""
Train a diffusion model on a folder of images.

Checkpoints (model, EMA and optimizer, see ``guided_diffusion.train_util``) and logs go to
$OPENAI_LOGDIR (else a new timestamped folder in the temp directory, printed at start-up).

Example (a class-conditional 64x64 model, the ImageNet-64 flags of the paper):

    MODEL_FLAGS="--image_size 64 --num_channels 192 --num_res_blocks 3 --learn_sigma True \
        --class_cond True --attention_resolutions 32,16,8 --num_head_channels 64 \
        --resblock_updown True --use_new_attention_order True --use_scale_shift_norm True \
        --dropout 0.1 --use_fp16 True"
    DIFFUSION_FLAGS="--diffusion_steps 1000 --noise_schedule cosine"
    TRAIN_FLAGS="--lr 1e-4 --batch_size 32 --max_steps 500000"
    OPENAI_LOGDIR=runs/imagenet64 mpiexec -n 8 python scripts/image_train.py \
        --data_dir data/imagenet64 $MODEL_FLAGS $DIFFUSION_FLAGS $TRAIN_FLAGS

Resume with --resume_checkpoint runs/imagenet64/model200000.pt (the EMA and optimizer files
beside it are found automatically). `torchrun --nproc_per_node N` works as well as mpiexec.
"""

import argparse

from guided_diffusion import dist_util, flags, logger
from guided_diffusion.image_datasets import load_data
from guided_diffusion.script_errors import run_program
from guided_diffusion.script_util import args_to_dict, model_and_diffusion_defaults
from guided_diffusion.train_util import create_network, train_diffusion_model


def main(argv: list[str] | None = None) -> None:
    args, config = flags.parse_train_args(create_argparser(), argv, "model")
    dist_util.setup_dist()
    # the batches an uninterrupted run reads from the resumed step on (one batch per step)
    data = load_data(
        **args_to_dict(args, flags.DATA_FLAGS), seed=args.seed, start_batch=config.resume_step
    )
    logger.configure()

    model, diffusion = create_network(args, "model")
    train_diffusion_model(args, model, diffusion, data, kind="model", config=config)


def create_argparser() -> argparse.ArgumentParser:
    return flags.create_train_parser(
        __doc__, flags.diffusion_train_defaults(), model_and_diffusion_defaults()
    )


if __name__ == "__main__":
    run_program(main)
