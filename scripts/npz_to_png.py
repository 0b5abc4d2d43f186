"""
Turn any .npz image batch (the samples the sampling scripts write, or a reference batch)
into PNG files: one per image, named {index:06d}.png, or {index:06d}_class{label}.png when
the batch has labels (arr_1), and optionally a grid of the first images.

Example:

    python scripts/npz_to_png.py samples_100x64x64x3.npz --out_dir samples_png --grid True
"""

import argparse
import itertools
import os
from typing import Optional

import numpy as np

from guided_diffusion import dist_util, flags, npz_batch, sample_io
from guided_diffusion.script_errors import SamplingInputError, run_program
from guided_diffusion.script_util import str2bool


def main(argv: Optional[list[str]] = None) -> None:
    args = flags.parse_args(create_argparser(), argv)
    if args.limit < 0:
        raise SamplingInputError(f"--limit must be 0 (all) or positive, got {args.limit}")
    dist_util.setup_dist()
    out_dir = args.out_dir or os.path.splitext(args.npz)[0] + "_png"
    # read (and so check) the input before creating anything
    batches = npz_batch.iter_npz_images(args.npz, key=args.key, limit=args.limit)
    first = next(batches, None)
    if first is None or len(first[0]) == 0:
        raise SamplingInputError(f"{args.npz}: {args.key} holds no images")
    os.makedirs(out_dir, exist_ok=True)

    count, grid_images, size = 0, [], None
    for images, labels in itertools.chain([first], batches):
        for i, image in enumerate(images):
            suffix = "" if labels is None else f"_class{labels[i]}"
            sample_io.save_png(os.path.join(out_dir, f"{count + i:06d}{suffix}.png"), image)
        if args.grid and count < args.grid_size:
            grid_images.append(images[: args.grid_size - count])
        count += len(images)
        size = images.shape[1:3]
    print(f"wrote {count} PNG files ({size[0]}x{size[1]}) to {out_dir}")
    if args.grid:
        grid_path = os.path.join(out_dir, "grid.png")
        grid = sample_io.image_grid(np.concatenate(grid_images), max_images=args.grid_size)
        sample_io.save_png(grid_path, grid)
        print(f"wrote a grid of the first {min(count, args.grid_size)} to {grid_path}")


def create_argparser() -> argparse.ArgumentParser:
    parser = flags.create_parser(__doc__)
    parser.add_argument("npz", help="the .npz batch to convert")
    parser.add_argument(
        "--out_dir",
        default="",
        help="folder for the PNG files (default: beside the .npz, "
        "named after it with a _png suffix)",
    )
    parser.add_argument(
        "--key", default="arr_0", help="the array holding the images (default: arr_0)"
    )
    parser.add_argument(
        "--limit", type=int, default=0, help="convert only the first LIMIT images (default: 0, all)"
    )
    parser.add_argument(
        "--grid", type=str2bool, default=False, help="also write grid.png (default: False)"
    )
    parser.add_argument(
        "--grid_size", type=int, default=64, help="images in the grid (default: 64)"
    )
    return parser


if __name__ == "__main__":
    run_program(main)
