"""
Compare the evaluator's KID, density and coverage with independent implementations on the
same features: the formula written out in numpy (float64), torchmetrics' ``poly_mmd`` on the
same subsets, and the ``prdc`` package (both in the dev extra: pip install -e ".[dev]").
Prints the relative differences.

Features: two activation caches the evaluator wrote beside batches (their "pool" arrays), or
random non-negative 2048-d features shaped like pool_3's.

Examples:

    python evaluations/compare_metrics.py --ref ref.npz.inception-<hash>.npz \\
        --sample samples.npz.inception-<hash>.npz --kid_subset_size 100
    python evaluations/compare_metrics.py --random 3000 --kid_subsets 20
"""

import argparse
import os
import sys

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np
import torch

from evaluations.metrics import kernel_inception_distance, kid_subsets, manifold_metrics
from guided_diffusion.script_errors import ArgumentParser, run_program


def formula_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 with k(a, b) = (a.b / d + 1)^3, from its definition, in float64."""
    m, d = x.shape
    k_xx, k_yy, k_xy = ((a @ b.T / d + 1.0) ** 3 for a, b in ((x, x), (y, y), (x, y)))
    within = k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)
    return float(within / (m * (m - 1)) - 2.0 * k_xy.sum() / (m * m))


def relative(a: float, b: float) -> float:
    return abs(a - b) / abs(b) if b else abs(a)


def compare_kid(ref: np.ndarray, sample: np.ndarray, subsets: int, size: int) -> None:
    import torchmetrics.image.kid as torchmetrics_kid

    draws = kid_subsets(len(ref), len(sample), subsets, size, seed=0)
    as64 = [(ref[i].astype(np.float64), sample[j].astype(np.float64)) for i, j in draws]
    formula = [formula_mmd2(x, y) for x, y in as64]
    theirs = [
        torchmetrics_kid.poly_mmd(torch.from_numpy(x), torch.from_numpy(y)).item() for x, y in as64
    ]
    mean, std = kernel_inception_distance(ref, sample, subsets, size, seed=0, device="cpu")
    print(f"KID {mean:.6g}, std {std:.3g} ({subsets} subsets of {size})")
    for name, values in (("formula (numpy float64)", formula), ("torchmetrics poly_mmd", theirs)):
        print(f"  vs {name}: mean {relative(mean, np.mean(values)):.1e}, "
              f"std {relative(std, np.std(values)):.1e} relative")


def compare_prdc(ref: np.ndarray, sample: np.ndarray, k: int) -> None:
    import prdc

    # float64 inputs: with float32 ones, scikit-learn returns the distances rounded to float32,
    # which moves points lying within ~1e-7 of a ball's boundary
    theirs = prdc.compute_prdc(
        real_features=ref.astype(np.float64), fake_features=sample.astype(np.float64), nearest_k=k
    )
    for dtype in (torch.float32, torch.float64):
        ours = manifold_metrics(ref, sample, k=k, dc_k=k, device="cpu", dtype=dtype)
        cells = [f"{name} {ours[name]:.6g} ({relative(ours[name], float(theirs[name])):.1e})"
                 for name in ours]
        print(f"  vs prdc, k = {k}, ours in {str(dtype).split('.')[-1]}: " + ", ".join(cells))


def create_argparser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ref", help="the reference batch's activation cache (.npz with 'pool')")
    parser.add_argument("--sample", help="the sample batch's activation cache")
    parser.add_argument("--random", type=int, default=None,
                        help="instead: this many random pool_3-like features per set")
    parser.add_argument("--kid_subsets", type=int, default=100, help="KID subsets")
    parser.add_argument("--kid_subset_size", type=int, default=1000, help="KID subset size")
    parser.add_argument("--nearest_k", type=int, default=5, help="k of density and coverage")
    return parser


def main() -> None:
    args = create_argparser().parse_args()
    if args.random:
        gen = torch.Generator().manual_seed(0)
        ref = (torch.randn(args.random, 2048, generator=gen) * 0.5).abs().numpy()
        sample = (torch.randn(args.random, 2048, generator=gen) * 0.5 + 0.05).abs().numpy()
    elif args.ref and args.sample:
        with np.load(args.ref) as r, np.load(args.sample) as s:
            ref, sample = r["pool"], s["pool"]
    else:
        raise ValueError("pass --ref and --sample activation caches, or --random N")
    print(f"{len(ref)} reference and {len(sample)} sample features of {ref.shape[1]} dimensions")
    compare_kid(ref, sample, args.kid_subsets, min(args.kid_subset_size, len(ref), len(sample)))
    print("density / coverage (and precision / recall at the same k):")
    compare_prdc(ref, sample, args.nearest_k)


if __name__ == "__main__":
    run_program(main, prog="compare_metrics.py")
