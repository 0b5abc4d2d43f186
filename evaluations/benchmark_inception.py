"""
Benchmark Inception feature extraction (pool_3, mixed_6/conv and logits) in images per second,
on the CPU and, when there is one, the GPU, for uint8 NHWC inputs like the evaluator reads
(256x256 by default: each image is resized to 299x299 inside the network).

Example:
    python -m evaluations.benchmark_inception --batch_size 32 --num_batches 4
"""

import argparse
import os
import sys
import time

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch

from evaluations.inception import InceptionFeatureExtractor, load_inception
from guided_diffusion.script_errors import ArgumentParser, run_program

GPU_TARGET_IMAGES_PER_SECOND = 1000  # for 256x256 inputs (issue 6)


def _extractor(weights: str | None, device: str) -> InceptionFeatureExtractor:
    try:
        return load_inception(weights, device=device, download=False)
    except FileNotFoundError as err:
        # Speed does not depend on the values of the weights.
        print(f"note: timing an untrained network ({str(err).splitlines()[0]})", file=sys.stderr)
        return InceptionFeatureExtractor(has_logits=True).to(device).eval()


def _synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def time_extraction(
    extractor: InceptionFeatureExtractor, images: torch.Tensor, num_batches: int, warmup: int
) -> float:
    """
    :param images: one uint8 (B, H, W, 3) batch on the CPU, fed ``num_batches`` times.
    :return: images per second, host-to-device copy included.
    """
    device = str(extractor.conv.weight.device)
    with torch.inference_mode():
        for _ in range(warmup):
            extractor(images)
        _synchronize(device)
        start = time.perf_counter()
        for _ in range(num_batches):
            extractor(images)
        _synchronize(device)
    return num_batches * len(images) / (time.perf_counter() - start)


def main():
    args = create_argparser().parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    images = torch.randint(
        0, 256, (args.batch_size, args.image_size, args.image_size, 3),
        dtype=torch.uint8, generator=torch.Generator().manual_seed(0),
    )
    print(f"input: uint8 {tuple(images.shape)} NHWC; torch {torch.__version__}, "
          f"{torch.get_num_threads()} CPU threads")
    for device in devices:
        extractor = _extractor(args.inception_weights, device)
        name = torch.cuda.get_device_name(device) if device.startswith("cuda") else "cpu"
        rate = time_extraction(extractor, images, args.num_batches, args.warmup)
        line = f"{device} ({name}): {rate:.1f} images/s, batch {args.batch_size}"
        if device.startswith("cuda"):
            line += f" (target >= {GPU_TARGET_IMAGES_PER_SECOND})"
        print(line)


def create_argparser() -> argparse.ArgumentParser:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch_size", type=int, default=32, help="images per forward pass")
    parser.add_argument("--num_batches", type=int, default=4, help="timed forward passes per device")
    parser.add_argument("--warmup", type=int, default=1, help="untimed forward passes before timing")
    parser.add_argument("--image_size", type=int, default=256, help="height and width of the input images")
    parser.add_argument("--devices", nargs="*", default=None,
                        help="devices to time, e.g. cpu cuda:0 (default: cpu, and cuda when available)")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: torch's default)")
    parser.add_argument("--inception_weights", type=str, default=None,
                        help="Inception weights file (default: the usual lookup, without download; "
                             "an untrained network is timed when none is found)")
    return parser


if __name__ == "__main__":
    run_program(main, prog="benchmark_inception.py")
