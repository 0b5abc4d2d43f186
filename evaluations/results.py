"""
The evaluator's metrics by name (``--metrics``), its printed lines, and its machine-readable
record (``--json``).

Printed lines keep the original evaluator's labels ("Inception Score:", "FID:", "sFID:",
"Precision:", "Recall:") and add "KID:", "KID std:", "Density:", "Coverage:" and
"FD_<name>:" for a further feature extractor, one "<label>: <value>" per line.
"""

import json
import math
import os
from collections.abc import Sequence

from evaluations.batches import ImageSource, file_sha256
from guided_diffusion import __version__
from guided_diffusion.io_util import atomic_write

# --metrics names, in the order they are printed; "fd" is the Frechet distance on the features
# of --fd_extractor / --fd_timm_model
METRIC_NAMES = ("is", "fid", "sfid", "precision", "recall", "kid", "density", "coverage", "fd")
INCEPTION_METRICS = METRIC_NAMES[:-1]
# without --metrics: the original evaluator's five, KID, density and coverage, and FD when an
# extractor is given
DEFAULT_METRICS = INCEPTION_METRICS
# evaluate()'s result keys -> printed labels (FD's key is its label, e.g. "FD_dinov2_vitl14")
LABELS = {
    "inception_score": "Inception Score",
    "fid": "FID",
    "sfid": "sFID",
    "precision": "Precision",
    "recall": "Recall",
    "kid": "KID",
    "kid_std": "KID std",
    "density": "Density",
    "coverage": "Coverage",
}


def select_metrics(metrics: str | Sequence[str] | None, has_fd_extractor: bool) -> tuple[str, ...]:
    """
    :param metrics: "fid,kid", a list of names, or None for the default.
    :param has_fd_extractor: whether --fd_extractor or --fd_timm_model was given.
    :return: the chosen names of METRIC_NAMES, in METRIC_NAMES order.
    """
    if metrics is None:
        chosen = set(DEFAULT_METRICS) | ({"fd"} if has_fd_extractor else set())
    else:
        names = metrics.split(",") if isinstance(metrics, str) else list(metrics)
        chosen = {name.strip() for name in names if name.strip()}
        unknown = sorted(chosen - set(METRIC_NAMES))
        if unknown or not chosen:
            raise ValueError(
                f"--metrics: {'unknown ' + ', '.join(unknown) if unknown else 'none given'}; "
                f"choose from {','.join(METRIC_NAMES)}"
            )
    if "fd" in chosen and not has_fd_extractor:
        raise ValueError("--metrics fd needs a feature extractor: --fd_extractor or --fd_timm_model")
    if has_fd_extractor and "fd" not in chosen:
        raise ValueError("a feature extractor is given but --metrics leaves out fd; add fd or drop it")
    return tuple(name for name in METRIC_NAMES if name in chosen)


def metric_keys(results: dict[str, float | str | None]) -> list[str]:
    """:return: the metrics' keys of evaluate()'s results in printing order (LABELS', then FD's)."""
    return [key for key in LABELS if key in results] + [
        key for key in results if key.startswith("FD_")
    ]


def format_results(results: dict[str, float | str | None]) -> list[str]:
    """
    :return: one "<label>: <value>" line per metric in evaluate()'s results, in METRIC_NAMES
             order (the original evaluator's five lines first).
    """
    lines = []
    for key in metric_keys(results):
        value = results[key]
        if key == "inception_score" and value is None:
            value = f"unavailable ({results['inception_score_unavailable']})"
        lines.append(f"{LABELS.get(key, key)}: {value}")
    return lines


def batch_record(source: str) -> dict[str, object]:
    """:return: {"path", "sha256" (None for a folder), "images"} of a batch given on the command line."""
    is_file = not os.path.isdir(source)
    return {
        "path": os.path.abspath(source),
        "sha256": file_sha256(source) if is_file else None,
        "images": len(ImageSource(source)),
    }


def _finite_or_none(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def results_record(
    ref_batch: str,
    sample_batch: str,
    results: dict[str, float | str | None],
    settings: dict[str, object],
) -> dict[str, object]:
    """
    The --json record of one evaluation.

    :param ref_batch: the reference batch's path.
    :param sample_batch: the sample batch's path.
    :param results: evaluate()'s results.
    :param settings: how they were computed (metrics, k, KID subsets, extractors).
    :return: {"evaluator_version", "batches": {"reference", "sample"}, "metrics" (in the
             printed order),
             "inception_score_unavailable" (when it is), "settings"}.
    """
    metrics = {key: _finite_or_none(results[key]) for key in metric_keys(results)}
    record: dict[str, object] = {
        "evaluator_version": __version__,
        "batches": {"reference": batch_record(ref_batch), "sample": batch_record(sample_batch)},
        "metrics": metrics,
    }
    if results.get("inception_score_unavailable"):
        record["inception_score_unavailable"] = results["inception_score_unavailable"]
    record["settings"] = settings
    return record


def check_writable(path: str) -> None:
    """Raise PermissionError now, before any work, when ``path``'s folder cannot be written."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    if os.path.isdir(path) or not os.access(directory, os.W_OK):
        raise PermissionError(13, "cannot write the --json file", path)


def write_json(path: str, record: dict[str, object]) -> None:
    """Write ``record`` to ``path`` atomically (readers see the old file or the whole new one)."""
    with atomic_write(path, "w") as f:
        json.dump(record, f, indent=2, allow_nan=False)
        f.write("\n")
