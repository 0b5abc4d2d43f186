"""
Time the evaluator's metrics on random Inception-sized features: precision / recall (k = 3,
blocked distances) at 10,000 and 50,000 2048-d features on CPU and, when present, the GPU,
and the 2048x2048 Frechet distance.

Example:

    python evaluations/benchmark_metrics.py --sizes 10000 --devices cpu
"""

import argparse
import os
import sys
import time

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch

from evaluations.metrics import compute_statistics, frechet_distance, precision_recall


def random_features(count: int, dim: int, shift: float, seed: int) -> torch.Tensor:
    """Non-negative features like Inception's pool_3 (post-ReLU averages): [count x dim]."""
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(count, dim, generator=gen) + shift).abs_()


def create_argparser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
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
    return parser


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
    main()
