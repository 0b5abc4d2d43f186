r"""
DDIM inversion: encode images into the noise from which deterministic DDIM decodes them
(no clipping of x0), or decode such noise back, e.g. with another class label or with
classifier guidance, to edit the images.

Guidance is the same both ways: with --classifier_path, --mode encode inverts the guided
DDIM ODE (the classifier's gradient in every step's eps) and decodes with it for the
round-trip error; --mode decode with a classifier (or labels) other than the encoding's
edits the images.

    # encode: writes inverted_{N}x3x{H}x{W}.npz (arr_0 float32 noise, arr_1 labels, images)
    # and reports the round-trip error (decoding again)
    python scripts/ddim_invert.py $MODEL_FLAGS --model_path model.pt --timestep_respacing 100 \
        --mode encode --input images.npz
    # decode with class 207: writes samples_{N}x{H}x{W}x3.npz and its PNG grid
    python scripts/ddim_invert.py $MODEL_FLAGS --model_path model.pt --timestep_respacing 100 \
        --mode decode --input inverted_8x3x64x64.npz --class_labels 207

Use the same --timestep_respacing both ways. Runs under `mpiexec -n N` or `torchrun` too.
"""

import argparse
from typing import Optional

import numpy as np
import torch

from guided_diffusion import dist_util, edit_flags, edit_util, flags, logger
from guided_diffusion.editing import ddim_decode, ddim_invert
from guided_diffusion.image_seeds import shared_seed
from guided_diffusion.script_errors import run_program
from guided_diffusion.script_util import classifier_defaults, model_and_diffusion_defaults


def main(argv: Optional[list[str]] = None) -> None:
    args = flags.parse_args(
        create_argparser(), argv, model_path="model", classifier_path="classifier"
    )
    edit_flags.check_edit_flags(args)
    notes: list[str] = []  # choices made for the inputs, logged once the log is open
    if args.mode == "encode":
        images, labels = edit_util.read_images(
            args.input, args.image_size, args.num_samples, notes
        )
        inputs = edit_util.to_float(images)
    else:
        inputs, labels = edit_util.read_noise(args.input, args.image_size, args.num_samples)

    dist_util.setup_dist()
    logger.configure()
    for note in notes:
        logger.log(note)
    seed = shared_seed(args.seed)
    models = edit_util.load_models(args, labels, len(inputs), seed)
    model, diffusion, cond_fn = models.model, models.diffusion, models.cond_fn

    def run(x: torch.Tensor, y: Optional[torch.Tensor]) -> dict[str, torch.Tensor]:
        kwargs = {} if y is None else {"y": y}
        decode = dict(clip_denoised=args.clip_denoised, cond_fn=cond_fn, model_kwargs=kwargs)
        if args.mode == "decode":
            return {"decoded": ddim_decode(diffusion, model, x, **decode)}
        noise = ddim_invert(diffusion, model, x, model_kwargs=kwargs, cond_fn=cond_fn)
        decoded = ddim_decode(diffusion, model, noise, **decode) if args.report_error else x
        return {"noise": noise, "decoded": decoded}

    keys = ("decoded",) if args.mode == "decode" else ("noise", "decoded")
    result = edit_util.map_sharded(
        run, inputs, models.labels, keys=keys, batch_size=args.batch_size, seed=seed
    )
    if dist_util.is_main_process():
        write = _write_encoded if args.mode == "encode" else _write_decoded
        write(args, inputs, models.labels, result)
    dist_util.barrier()


def _write_encoded(args, inputs: torch.Tensor, labels, result) -> None:
    images = edit_util.to_uint8(inputs.numpy())
    arrays = {"arr_0": result.outputs["noise"], "images": images}
    if labels is not None:
        arrays["arr_1"] = labels
    grid = ()
    if args.report_error:
        arrays["decoded"] = edit_util.to_uint8(result.outputs["decoded"])
        grid = ("images", "decoded") if args.grid else ()
        error = (result.outputs["decoded"] - inputs.numpy()) / 2  # on the [0, 1] scale
        guided = f" with classifier guidance at scale {args.classifier_scale} both ways"
        logger.log(
            f"round-trip error over {len(images)} images and {diffusion_steps(args)} steps "
            f"each way{guided if args.classifier_path else ''}: per-dimension MSE "
            f"{np.mean(error**2):.3g} on [0, 1], largest |error| {np.abs(error).max():.3g}"
        )
    edit_util.write_edit_outputs(logger.get_dir() or ".", "inverted", arrays, grid)
    logger.log(f"{result.seconds / len(images):.2f} s per image; seed {result.seed}")


def _write_decoded(args, inputs: torch.Tensor, labels, result) -> None:
    arrays = {"arr_0": edit_util.to_uint8(result.outputs["decoded"])}
    if labels is not None:
        arrays["arr_1"] = labels
    grid = ("arr_0",) if args.grid else ()
    edit_util.write_edit_outputs(logger.get_dir() or ".", "samples", arrays, grid)


def diffusion_steps(args: argparse.Namespace) -> str:
    """The number of sampling steps, as --timestep_respacing gives it."""
    return args.timestep_respacing or str(args.diffusion_steps)


def create_argparser() -> argparse.ArgumentParser:
    return flags.create_sampling_parser(
        __doc__,
        edit_flags.ddim_invert_defaults(),
        model_and_diffusion_defaults(),
        classifier_defaults(),
        helps=edit_flags.EDIT_FLAG_HELP,
    )


if __name__ == "__main__":
    run_program(main)
