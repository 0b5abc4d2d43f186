"""The demo's figures: which rows make which curve, and the PNG files they are drawn into."""

import numpy as np
from PIL import Image

from guided_diffusion.demo import plots  # noqa: E402
from guided_diffusion.demo import settings as ds  # noqa: E402

BASE = ds.Setting(name="base", steps=25)


def _rows(settings, rng):
    metrics = lambda: dict(fid=float(rng.uniform(10, 50)), sfid=1.0,  # noqa: E731
                           precision=float(rng.uniform()), recall=float(rng.uniform()),
                           accuracy=1.0, images_per_second=1.0)
    return [ds.result_row(s, metrics()) for s in settings]


def test_curves_group_rows_by_figure():
    settings = (ds.scale_sweep([0, 2], BASE)
                + ds.sampler_sweep(BASE, [5, 250], ["ancestral", "ddim"], 2.0, (0.3, 5))
                + [ds.parse_setting("extra:steps=10", BASE)])
    rows = _rows(settings, np.random.default_rng(0))
    fid = plots.curves(settings, rows, ds.FID_FIGURE)
    assert len(fid) == 6 and all(len(rs) == 2 for rs in fid.values())
    assert [r["steps"] for r in fid["ddim"]] == [5, 250]
    pr = plots.curves(settings, rows, ds.PR_FIGURE)
    assert list(pr) == [ds.CLASSIFIER_GROUP]
    assert [r["setting"] for r in pr[ds.CLASSIFIER_GROUP]] == ["classifier_0", "classifier_2"]


def test_figures_are_written_only_when_there_is_something_to_draw(tmp_path):
    rng = np.random.default_rng(1)
    plain = [ds.parse_setting("a:steps=10", BASE)]
    assert plots.write_figures(plain, _rows(plain, rng), str(tmp_path)) == []
    settings = (ds.scale_sweep([0, 1, 4], BASE) + ds.guidance_sweep(BASE, [2, 3], "g.pt")
                + ds.sampler_sweep(BASE, [5, 10, 250], ["ancestral", "dpm++2m"], 2.0, (0.3, 5)))
    rows = _rows(settings, rng)
    written = plots.write_figures(settings, rows, str(tmp_path))
    assert [p.rsplit("/", 1)[1] for p in written] == [
        "fid_vs_evaluations.png", "precision_vs_recall.png"]
    for path in written:
        with Image.open(path) as image:
            assert image.format == "PNG" and min(image.size) > 200
    # rows without finite metrics (evaluation off) draw nothing
    nan_rows = [dict(r, fid=float("nan"), precision=float("nan")) for r in rows]
    assert plots.write_figures(settings, nan_rows, str(tmp_path / "none")) == []


def test_fid_plot_places_rows_at_their_counted_evaluations():
    from guided_diffusion.demo.plots import evaluations

    assert evaluations({"steps": 5, "model_evaluations": 9.0}) == 9.0  # edm: 2N - 1
    assert evaluations({"steps": 5, "model_evaluations": ""}) == 5.0  # rows from older tables
