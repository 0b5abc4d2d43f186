"""
Write a TorchScript feature extractor for the evaluator's --fd_extractor: a network wrapped so
that it takes what the evaluator gives (float32 RGB [n x 3 x S x S], NCHW, values in [0, 255])
and normalises it itself (x / 255, then the mean and standard deviation it was trained with),
traced at S x S, checked against the eager network, and saved.

DINOv2 ViT-L/14 for FD_DINOv2 (Stein et al. 2023; EDM2 reports it), on a machine with internet
(torch.hub fetches the code and the published weights, about 1.2 GB):

    python evaluations/export_extractor.py --hub facebookresearch/dinov2 dinov2_vitl14 \\
        --out dinov2_vitl14.pt

then, wherever the batches are:

    python evaluations/evaluator.py ref.npz samples.npz --fd_extractor dinov2_vitl14.pt

Trace on the kind of device you will evaluate on (--device cuda for GPU evaluation): a traced
graph can keep the device of tensors it creates.
"""

import argparse
import os
import sys

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch
import torch.nn as nn

from evaluations.feature_extractors import FD_IMAGE_SIZE
from guided_diffusion.io_util import atomic_write
from guided_diffusion.script_errors import ArgumentParser, run_program

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# largest |traced - eager| allowed, relative to the features' largest magnitude
TRACE_TOLERANCE = 1e-4


class Normalised(nn.Module):
    """``network((x / 255 - mean) / std)`` for x in [0, 255]: the input convention of --fd_extractor."""

    def __init__(self, network: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        self.network = network
        self.register_buffer("mean", torch.tensor(mean).reshape(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).reshape(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network((x / 255.0 - self.mean) / self.std)


def export_extractor(
    network: nn.Module,
    out_path: str,
    image_size: int = FD_IMAGE_SIZE,
    mean: tuple[float, ...] = IMAGENET_MEAN,
    std: tuple[float, ...] = IMAGENET_STD,
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> float:
    """
    Trace ``Normalised(network, mean, std)`` on [2 x 3 x image_size x image_size] inputs,
    compare the saved file's features with the eager network's on other random images, and
    write the file atomically only when they agree to TRACE_TOLERANCE.

    :param network: maps normalised [n x 3 x S x S] images to [n x D] features.
    :param out_path: the .pt file to write.
    :param image_size: S, the evaluator's --fd_image_size.
    :return: the largest relative difference between the file's and the eager features.
    """
    wrapped = Normalised(network, mean, std).to(device).eval().requires_grad_(False)
    gen = torch.Generator().manual_seed(seed)
    example, check = (
        (torch.rand(2, 3, image_size, image_size, generator=gen) * 255).to(device) for _ in range(2)
    )
    with torch.no_grad():
        traced = torch.jit.trace(wrapped, example, check_trace=False)
        expected = wrapped(check)
        if not isinstance(expected, torch.Tensor) or expected.dim() != 2:
            shape = tuple(expected.shape) if isinstance(expected, torch.Tensor) else type(expected).__name__
            raise ValueError(f"the network returns {shape}, not [n x D] features per image")
        tmp = f"{out_path}.check"
        try:
            traced.save(tmp)
            got = torch.jit.load(tmp, map_location=device)(check)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    error = ((got - expected).abs().max() / expected.abs().max().clamp(min=1e-30)).item()
    if not error <= TRACE_TOLERANCE:
        raise ValueError(
            f"the traced network differs from the eager one by {error:.2e} (relative), more than "
            f"{TRACE_TOLERANCE}; it may branch on its input, which tracing cannot record"
        )
    with atomic_write(out_path, "wb") as f:
        torch.jit.save(traced, f)
    return error


def create_argparser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--hub", nargs=2, metavar=("REPO", "MODEL"), required=True,
        help="a torch.hub repository and entry point, e.g. facebookresearch/dinov2 dinov2_vitl14 "
        "(needs internet the first time; torch.hub caches both)",
    )
    parser.add_argument("--out", required=True, help="the TorchScript file to write")
    parser.add_argument(
        "--image_size", type=int, default=FD_IMAGE_SIZE,
        help=f"the input side to trace at; pass the same --fd_image_size to the evaluator "
        f"(default {FD_IMAGE_SIZE})",
    )
    parser.add_argument(
        "--mean", default=",".join(map(str, IMAGENET_MEAN)),
        help="per-channel mean of [0, 1] images the network expects (default ImageNet's)",
    )
    parser.add_argument(
        "--std", default=",".join(map(str, IMAGENET_STD)),
        help="per-channel standard deviation (default ImageNet's)",
    )
    parser.add_argument("--device", default="cpu", help="torch device to trace on")
    return parser


def _triple(text: str, flag: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3:
        raise ValueError(f"{flag} {text!r}: give three comma-separated numbers (R,G,B)")
    return values


def main() -> None:
    args = create_argparser().parse_args()
    mean, std = _triple(args.mean, "--mean"), _triple(args.std, "--std")
    if args.image_size < 1:
        raise ValueError(f"--image_size must be positive, got {args.image_size}")
    repo, model = args.hub
    print(f"loading {model} from {repo} via torch.hub...")
    network = torch.hub.load(repo, model)
    error = export_extractor(network, args.out, args.image_size, mean, std, args.device)
    print(f"wrote {args.out} (traced at {args.image_size}x{args.image_size}; largest relative "
          f"difference from the eager network {error:.1e})")


if __name__ == "__main__":
    run_program(main, prog="export_extractor.py")
