r"""
Edit or restore images with a diffusion model: inpainting with RePaint, guided editing
with SDEdit or ILVR, and solving inverse problems (inpainting, super-resolution,
deblurring, colourisation) with DPS or DDNM. Writes ``edited_{N}x{H}x{W}x3.npz`` in the
log directory ($OPENAI_LOGDIR): arr_0 the results (uint8 NHWC), ``input`` and
``degraded`` beside them, arr_1 the labels where the model or classifier used them; a
PNG grid with input, degraded and result side by side; and a .json of the same name with
the PSNR (over the hidden pixels when inpainting) and the seconds per image.

Every method's hyper-parameters default to its paper's values. Examples with the 256x256
unconditional ImageNet model (MODEL_FLAGS as in the README):

    # RePaint, lower half hidden, 250 steps with jumps of 10 revisited 10 times
    python scripts/image_edit.py $MODEL_FLAGS --model_path models/256x256_diffusion_uncond.pt \
        --method repaint --operator inpaint --mask half --input faces.npz --timestep_respacing 250
    # DDNM 4x super-resolution by average pooling, 100 steps
    python scripts/image_edit.py $MODEL_FLAGS --model_path models/256x256_diffusion_uncond.pt \
        --method ddnm --operator sr_avgpool --sr_factor 4 --input photos/ --timestep_respacing 100
    # DPS Gaussian deblurring with noisy measurements
    python scripts/image_edit.py $MODEL_FLAGS --model_path models/256x256_diffusion_uncond.pt \
        --method dps --operator blur --dps_zeta 0.4 --sigma_y 0.05 --input photo.png

Run it under `mpiexec -n N` or `torchrun --nproc_per_node N` to share the images.
"""

import argparse
from typing import Optional

import numpy as np

from guided_diffusion import dist_util, edit_flags, edit_util, flags, logger
from guided_diffusion.image_seeds import shared_seed
from guided_diffusion.operators import make_operator
from guided_diffusion.restoration import require_pinv
from guided_diffusion.script_errors import run_program
from guided_diffusion.script_util import classifier_defaults, model_and_diffusion_defaults


def main(argv: Optional[list[str]] = None) -> None:
    args = flags.parse_args(
        create_argparser(), argv, model_path="model", classifier_path="classifier"
    )
    edit_flags.check_edit_flags(args)
    notes: list[str] = []  # choices made for the inputs, logged once the log is open
    images, labels = edit_util.read_images(args.input, args.image_size, args.num_samples, notes)
    mask = None
    if args.operator == "inpaint":
        mask = edit_util.load_mask(
            args.mask, args.image_size, args.mask_ratio, args.mask_seed, notes
        )
    operator = make_operator(
        args.operator, (3, args.image_size, args.image_size), mask=mask,
        sr_factor=args.sr_factor, blur_kernel_size=args.blur_kernel_size,
        blur_sigma=args.blur_sigma,
    )  # fmt: skip
    if args.method == "ddnm":
        require_pinv(operator)

    dist_util.setup_dist()
    logger.configure()
    for note in notes:
        logger.log(note)
    seed = shared_seed(args.seed)
    models = edit_util.load_models(args, labels, len(images), seed)

    logger.log(f"{args.method} with operator {args.operator} on {len(images)} images...")
    result = edit_util.map_sharded(
        edit_util.make_edit_fn(args, models.diffusion, models.model, operator, models.cond_fn),
        edit_util.to_float(images), models.labels, keys=("degraded", "result"),
        batch_size=args.batch_size, seed=seed,
    )  # fmt: skip
    if dist_util.is_main_process():
        _report(args, images, models.labels, result, None if mask is None else 1 - mask.numpy())
    dist_util.barrier()


def _report(args, images, labels, result, hidden: Optional[np.ndarray]) -> None:
    outputs = result.outputs
    arrays = {
        "arr_0": edit_util.to_uint8(outputs["result"]),
        "input": images,
        "degraded": edit_util.to_uint8(outputs["degraded"]),
    }
    if labels is not None:
        arrays["arr_1"] = labels
    metrics = {
        "method": args.method,
        "operator": args.operator,
        "images": len(images),
        "psnr": edit_util.psnr(outputs["result"], edit_util.to_float(images).numpy(), hidden),
        "psnr_region": "hidden pixels" if hidden is not None else "all pixels",
        "seconds_per_image": result.seconds / len(images),
        "seed": result.seed,
    }
    grid = ("input", "degraded", "arr_0") if args.grid else ()
    edit_util.write_edit_outputs(logger.get_dir() or ".", "edited", arrays, grid, metrics)
    logger.log(
        f"PSNR {metrics['psnr']:.2f} dB over the {metrics['psnr_region']}; "
        f"{metrics['seconds_per_image']:.2f} s per image; seed {result.seed}"
    )


def create_argparser() -> argparse.ArgumentParser:
    return flags.create_sampling_parser(
        __doc__,
        edit_flags.image_edit_defaults(),
        model_and_diffusion_defaults(),
        classifier_defaults(),
        helps=edit_flags.EDIT_FLAG_HELP,
    )


if __name__ == "__main__":
    run_program(main)
