"""
Time the evaluator's metrics on random Inception-sized features: precision / recall (k = 3,
blocked distances) at 10,000 and 50,000 2048-d features on CPU and, when present, the GPU,
the 2048x2048 Frechet distance, and with --new what KID (100 subsets of 1,000, float64) and
density / coverage (k = 5, in precision / recall's distance pass) add to them.

Examples:

    python evaluations/benchmark_metrics.py --sizes 10000 --devices cpu
    # the cost of KID, density and coverage against the whole evaluator on 10,000 images, with
    # the Inception rate that benchmark_inception.py measured
    python evaluations/benchmark_metrics.py --sizes 10000 --devices cpu --new --images_per_second 19.7
"""

import argparse
import os
import sys
import time

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch

from evaluations.metrics import (
    KID_SUBSET_SIZE,
    compute_statistics,
    frechet_distance,
    kernel_inception_distance,
    manifold_metrics,
    precision_recall,
)
from guided_diffusion.script_errors import ArgumentParser, run_program


def random_features(count: int, dim: int, shift: float, seed: int) -> torch.Tensor:
    """Non-negative features like Inception's pool_3 (post-ReLU averages): [count x dim]."""
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(count, dim, generator=gen) + shift).abs_()


def create_argparser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        description="Benchmark precision / recall and FID on random features."
    )
    parser.add_argument(
        "--sizes", default="10000,50000", help="comma-separated feature counts per set"
    )
    parser.add_argument(
        "--dim", type=int, default=2048, help="feature size (Inception pool_3: 2048)"
    )
    parser.add_argument(
        "--devices",
        default=None,
        help="comma-separated torch devices (default: cpu, plus cuda when available)",
    )
    parser.add_argument(
        "--block_size", type=int, default=10000, help="rows and columns per distance tile"
    )
    parser.add_argument(
        "--dtype", default="float32", choices=["float32", "float64"], help="distance dtype"
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)"
    )
    parser.add_argument(
        "--fid", action="store_true", help="also time FID's statistics and Frechet distance"
    )
    parser.add_argument(
        "--new", action="store_true",
        help="also time what KID, density and coverage add: the original metrics (statistics, "
        "FID, sFID, precision / recall) against the same plus KID and the density / coverage "
        "counts in the precision / recall pass",
    )
    parser.add_argument(
        "--images_per_second", type=float, default=None,
        help="with --new: the Inception rate (benchmark_inception.py) to also express the added "
        "time as a share of the whole evaluator (features of one batch of the size; the "
        "reference's are cached or stored)",
    )
    return parser


def time_new_metrics(
    size: int, dim: int, device: str, block_size: int, images_per_second: float | None
) -> None:
    """
    Print the original metrics' time at ``size`` features per set, and what KID and density /
    coverage add (interleaved: original, then with the additions, so load changes on a shared
    machine hit both).
    """
    ref = random_features(size, dim, 0.0, seed=0)
    sample = random_features(size, dim, 0.1, seed=1)
    spatial_ref = random_features(size, dim, 0.0, seed=2)
    spatial_sample = random_features(size, dim, 0.1, seed=3)

    def timed(fn) -> float:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    def frechet(a, b):
        return frechet_distance(*compute_statistics(a.numpy()), *compute_statistics(b.numpy()))

    fid = timed(lambda: frechet(sample, ref)) + timed(lambda: frechet(spatial_sample, spatial_ref))
    pr = timed(lambda: precision_recall(ref, sample, block_size=block_size, device=device))
    everything = timed(
        lambda: manifold_metrics(ref, sample, block_size=block_size, device=device)
    )
    subset_size = min(KID_SUBSET_SIZE, size)
    kid = timed(lambda: kernel_inception_distance(ref, sample, subset_size=subset_size, device=device))
    original = fid + pr
    added = (everything - pr) + kid
    print(
        f"{size} x {size} on {device}: original metrics {original:.1f} s (statistics + FID + sFID "
        f"{fid:.1f} s, precision/recall {pr:.1f} s); added: density/coverage "
        f"{everything - pr:+.1f} s (precision/recall/density/coverage in one pass {everything:.1f} s), "
        f"KID {kid:.1f} s (100 subsets of {subset_size}, float64); {added:.1f} s = "
        f"{100 * added / original:.1f}% of the metrics",
        flush=True,
    )
    if images_per_second:
        extraction = size / images_per_second
        total = extraction + original
        print(
            f"  with Inception features of {size} images at {images_per_second} images/s "
            f"({extraction:.0f} s): the evaluator takes {total:.0f} s, KID + density/coverage add "
            f"{added:.1f} s = {100 * added / total:.1f}%",
            flush=True,
        )


def main() -> None:
    args = create_argparser().parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = (
        args.devices.split(",")
        if args.devices
        else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    )
    dtype = getattr(torch, args.dtype)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, dim {args.dim}, {args.dtype}"
    )
    for device in devices:
        if device.startswith("cuda"):
            print(f"{device}: {torch.cuda.get_device_name(device)}")
            precision_recall(
                random_features(64, args.dim, 0, 0),
                random_features(64, args.dim, 0, 1),
                device=device,
            )
        for size in (int(value) for value in args.sizes.split(",")):
            ref = random_features(size, args.dim, 0.0, seed=0)
            sample = random_features(size, args.dim, 0.1, seed=1)
            start = time.perf_counter()
            precision, recall = precision_recall(
                ref, sample, block_size=args.block_size, device=device, dtype=dtype
            )
            seconds = time.perf_counter() - start
            print(
                f"precision/recall {size} x {size} on {device}: {seconds:.2f} s "
                f"(block {args.block_size}; precision {precision:.4f}, recall {recall:.4f})",
                flush=True,
            )
    if args.new:
        for device in devices:
            for size in (int(value) for value in args.sizes.split(",")):
                time_new_metrics(size, args.dim, device, args.block_size, args.images_per_second)
    if args.fid:
        feats = random_features(max(4 * args.dim, 10000), args.dim, 0.0, seed=2).numpy()
        start = time.perf_counter()
        mu1, sigma1 = compute_statistics(feats[: len(feats) // 2])
        mu2, sigma2 = compute_statistics(feats[len(feats) // 2 :])
        middle = time.perf_counter()
        fid = frechet_distance(mu1, sigma1, mu2, sigma2)
        end = time.perf_counter()
        print(
            f"FID on {args.dim}-d features: statistics {middle - start:.2f} s, "
            f"Frechet distance {end - middle:.2f} s (value {fid:.4f}, float64 CPU)"
        )


if __name__ == "__main__":
    run_program(main, prog="benchmark_metrics.py")
