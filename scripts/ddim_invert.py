r"""
DDIM inversion: encode images into the noise from which deterministic DDIM decodes them
(no clipping of x0), or decode such noise back, e.g. with another class label or with
classifier guidance, to edit the images.

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

import blobfile as bf
import numpy as np
import torch

from guided_diffusion import dist_util, edit_util, logger, sample_util
from guided_diffusion.editing import ddim_decode, ddim_invert
from guided_diffusion.script_util import (
    add_dict_to_argparser,
    classifier_defaults,
    model_and_diffusion_defaults,
)


def main(argv: Optional[list[str]] = None) -> None:
    args = create_argparser().parse_args(argv)
    if args.mode not in ("encode", "decode"):
        raise sample_util.SamplingInputError(f"--mode must be encode or decode, got {args.mode!r}")
    if args.mode == "encode":
        images, labels = edit_util.read_images(args.input, args.image_size, args.num_samples)
        inputs = edit_util.to_float(images)
    else:
        inputs, labels = read_noise(args.input, args.image_size, args.num_samples)

    dist_util.setup_dist()
    logger.configure()
    seed = sample_util.shared_seed(args.seed)
    model, diffusion = sample_util.load_model_and_diffusion(args)
    cond_fn = None
    if args.classifier_path:
        classifier = sample_util.load_classifier(args)
        cond_fn = sample_util.classifier_cond_fn(classifier, args.classifier_scale)
        model = model if args.class_cond else sample_util.labels_to_classifier_only(model)
    if args.class_cond or cond_fn is not None:
        num_classes = sample_util.num_classes_of(args)
        labels = edit_util.image_labels(args.class_labels, labels, len(inputs), num_classes, seed)
    else:
        labels = None

    def run(x: torch.Tensor, y: Optional[torch.Tensor]) -> dict[str, torch.Tensor]:
        kwargs = {} if y is None else {"y": y}
        decode = dict(clip_denoised=args.clip_denoised, cond_fn=cond_fn, model_kwargs=kwargs)
        if args.mode == "decode":
            return {"decoded": ddim_decode(diffusion, model, x, **decode)}
        noise = ddim_invert(diffusion, model, x, model_kwargs=kwargs)
        decoded = ddim_decode(diffusion, model, noise, **decode) if args.report_error else x
        return {"noise": noise, "decoded": decoded}

    keys = ("decoded",) if args.mode == "decode" else ("noise", "decoded")
    result = edit_util.map_sharded(
        run, inputs, labels, keys=keys, batch_size=args.batch_size, seed=seed
    )
    if dist_util.is_main_process():
        (_write_encoded if args.mode == "encode" else _write_decoded)(args, inputs, labels, result)
    dist_util.barrier()


def read_noise(path: str, image_size: int, limit: int) -> tuple[torch.Tensor, Optional[np.ndarray]]:
    """
    Read an ``inverted_*.npz`` file.

    :return: (float32 noise [N x 3 x H x W], int64 labels [N] or None).
    """
    if not path:
        raise sample_util.SamplingInputError("--input is required: the .npz of --mode encode")
    if not bf.exists(path):
        raise FileNotFoundError(f"--input: no such file: {path}")
    try:
        with bf.BlobFile(path, "rb") as f, np.load(f, allow_pickle=False) as npz:
            noise = npz["arr_0"]
            labels = npz["arr_1"] if "arr_1" in npz.files else None
    except (OSError, ValueError, KeyError) as err:
        raise sample_util.SamplingInputError(
            f"--input {path} is not a noise .npz written by --mode encode ({err})"
        ) from None
    expected = (3, image_size, image_size)
    if noise.ndim != 4 or noise.shape[1:] != expected or noise.dtype.kind != "f":
        raise sample_util.SamplingInputError(
            f"--input {path}: arr_0 must be float noise [N x 3 x {image_size} x {image_size}], "
            f"got {noise.dtype} {list(noise.shape)}"
        )
    if limit > 0:
        noise, labels = noise[:limit], None if labels is None else labels[:limit]
    return torch.from_numpy(noise.astype(np.float32)), labels


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
        logger.log(
            f"round-trip error over {len(images)} images and {diffusion_steps(args)} steps "
            f"each way: per-dimension MSE {np.mean(error**2):.3g} on [0, 1], "
            f"largest |error| {np.abs(error).max():.3g}"
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
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    edit_util.add_flags(parser, edit_util.ddim_invert_defaults())
    defaults = model_and_diffusion_defaults()
    defaults.update(classifier_defaults())
    add_dict_to_argparser(parser, defaults)
    return parser


if __name__ == "__main__":
    sample_util.run_script(main)
