"""
The demo's two figures, drawn from its results rows with matplotlib (headless):

- FID against the number of model evaluations, one curve per sampler and guidance variant,
  with the 250-evaluation ancestral FID and 10% above it as reference lines;
- precision against recall, one curve per guidance method in order of its scale, each
  starting from plain conditional sampling (the row without any guidance).
"""

import math
import os
from collections import defaultdict
from typing import Optional, Sequence

from guided_diffusion.demo.settings import FID_FIGURE, PR_FIGURE, Setting
from guided_diffusion.io_util import atomic_write

Row = dict[str, object]


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(float(value))


def curves(settings: Sequence[Setting], rows: Sequence[Row], figure: str) -> dict[str, list[Row]]:
    """:return: {group: its rows in table order} of the settings drawn in ``figure``."""
    found: dict[str, list[Row]] = defaultdict(list)
    for setting, row in zip(settings, rows):
        if setting.figure == figure and setting.group:
            found[setting.group].append(row)
    return dict(found)


def _save(fig, path: str) -> str:
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=110, bbox_inches="tight")
    return path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def evaluations(row: Row) -> float:
    """:return: the row's model evaluations per image as counted, else its steps."""
    counted = row.get("model_evaluations", "")
    return float(counted) if _finite(counted) else float(row["steps"])


def plot_fid_vs_evaluations(
    settings: Sequence[Setting], rows: Sequence[Row], path: str
) -> Optional[str]:
    """
    Draw FID against model evaluations per image (log scale) for the FID_FIGURE rows.

    :return: ``path``, or None when no such row has a finite FID.
    """
    groups = {g: [r for r in rs if _finite(r["fid"])] for g, rs in
              curves(settings, rows, FID_FIGURE).items()}
    groups = {g: rs for g, rs in groups.items() if rs}
    if not groups:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    samplers = list(dict.fromkeys(group.split(",")[0] for group in groups))  # one colour each
    for group, rs in groups.items():
        rs = sorted(rs, key=evaluations)
        style = "--" if "interval" in group else (":" if "classifier" in group else "-")
        color = palette[samplers.index(group.split(",")[0]) % len(palette)]
        ax.plot([evaluations(r) for r in rs], [r["fid"] for r in rs], style, marker="o",
                markersize=3, label=group, color=color)
    ax.set_xscale("log")  # before the label below is placed on the axis' left end
    reference = [r for r in groups.get("ancestral", []) if int(r["steps"]) == 250]
    if reference:
        fid = float(reference[0]["fid"])
        ax.axhline(fid, color="grey", linewidth=0.8)
        ax.axhline(1.1 * fid, color="grey", linewidth=0.8, linestyle="--")
        ax.text(ax.get_xlim()[0], 1.1 * fid, " ancestral 250 + 10%", va="bottom", fontsize=7)
    ax.set_xlabel("model evaluations per image")
    ax.set_ylabel("FID (lower is better)")
    ax.set_title("FID against sampling cost")
    ax.legend(fontsize=6, ncol=2)
    try:
        return _save(fig, path)
    finally:
        plt.close(fig)


def plot_precision_recall(
    settings: Sequence[Setting], rows: Sequence[Row], path: str
) -> Optional[str]:
    """
    Draw precision against recall for the PR_FIGURE rows, one curve per guidance method in
    order of its scale, each starting at the unguided row (classifier scale 0, no
    classifier-free guidance) when the table has one.

    :return: ``path``, or None when no such row has finite precision and recall.
    """
    plain = [r for s, r in zip(settings, rows)
             if s.figure == PR_FIGURE and s.classifier_scale == 0 and s.guidance_scale is None]
    groups = {}
    for group, rs in curves(settings, rows, PR_FIGURE).items():
        rs = [r for r in rs if _finite(r["precision"]) and _finite(r["recall"])]
        rs.sort(key=lambda r: float(r["guidance_scale"] or 0) + float(r["classifier_scale"]))
        if rs and plain and rs[0] is not plain[0]:
            rs = [plain[0], *rs]
        if rs:
            groups[group] = rs
    if not groups:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 5))
    for group, rs in groups.items():
        line, = ax.plot([r["recall"] for r in rs], [r["precision"] for r in rs], marker="o",
                        markersize=4, label=group)
        for r in rs[1:]:
            scale = r["guidance_scale"] if r["guidance_scale"] != "" else r["classifier_scale"]
            ax.annotate(f"{float(scale):g}", (r["recall"], r["precision"]), fontsize=6,
                        color=line.get_color(), xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("recall (diversity)")
    ax.set_ylabel("precision (fidelity)")
    ax.set_title("guidance: fidelity against diversity (numbers: scales)")
    ax.legend(fontsize=7)
    try:
        return _save(fig, path)
    finally:
        plt.close(fig)


def write_figures(settings: Sequence[Setting], rows: Sequence[Row], out_dir: str) -> list[str]:
    """:return: the figures written into ``out_dir`` (those with rows to draw)."""
    written = [
        plot_fid_vs_evaluations(settings, rows, os.path.join(out_dir, f"{FID_FIGURE}.png")),
        plot_precision_recall(settings, rows, os.path.join(out_dir, f"{PR_FIGURE}.png")),
    ]
    return [path for path in written if path]
