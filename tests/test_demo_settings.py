"""The demo's settings records (what each passes to the sampling program) and results files."""

import csv
import math

import pytest

from guided_diffusion.demo import settings as ds

BASE = ds.Setting(name="base", steps=50)


def test_scale_sweep_names_programs_and_flags():
    sweep = ds.scale_sweep([0, 1, 2.5], BASE)
    assert [s.name for s in sweep] == ["classifier_0", "classifier_1", "classifier_2.5"]
    assert sweep[0].script() == ds.PLAIN_PROGRAM
    assert sweep[0].sampling_flags() == ["--timestep_respacing", "50"]
    assert sweep[2].script() == ds.CLASSIFIER_PROGRAM
    assert sweep[2].sampling_flags() == ["--timestep_respacing", "50", "--classifier_scale", "2.5"]


def test_parse_setting_known_and_passed_through_keys():
    s = ds.parse_setting("fast:sampler=ddim,steps=25,classifier_scale=2,eta=0.5", BASE)
    assert (s.name, s.sampler, s.steps, s.classifier_scale) == ("fast", "ddim", 25, 2.0)
    assert s.sampling_flags() == [
        "--use_ddim", "True", "--timestep_respacing", "ddim25", "--classifier_scale", "2",
        "--eta", "0.5",
    ]
    cfg = ds.parse_setting("cfg3:sampler=dpm++2m,guidance_scale=3", BASE)
    assert cfg.script() == ds.PLAIN_PROGRAM and cfg.guidance_scale == 3.0
    assert cfg.sampling_flags() == [
        "--timestep_respacing", "50", "--sampler", "dpm++2m", "--guidance_scale", "3",
    ]
    forced = ds.parse_setting("zero:program=classifier_sample", BASE)
    assert forced.script() == ds.CLASSIFIER_PROGRAM
    assert forced.sampling_flags()[-2:] == ["--classifier_scale", "0"]
    assert ds.parse_setting("plain", BASE) == ds.Setting(name="plain", steps=50)


@pytest.mark.parametrize(
    "spec, message",
    [
        ("", "NAME"),
        ("bad name:steps=3", "NAME"),
        ("x:steps", "not key=value"),
        ("x:steps=0", "steps must be a positive integer"),
        ("x:classifier_scale=abc", "not a number"),
        ("x:classifier_scale=-1", ">= 0"),
        ("x:guidance_scale=inf", ">= 0"),
        ("x:program=other", "program must be one of"),
        ("x:--eta=1", "not key=value"),
    ],
)
def test_parse_setting_rejects(spec, message):
    with pytest.raises(ds.SettingError, match=message):
        ds.parse_setting(spec, BASE)


def test_check_unique():
    ds.check_unique(ds.scale_sweep([0, 1], BASE))
    with pytest.raises(ds.SettingError, match="classifier_1"):
        ds.check_unique(ds.scale_sweep([0, 1, 1.0], BASE))


def test_results_files(tmp_path):
    metrics = dict(fid=12.3456, sfid=150.25, precision=0.5, recall=0.25, accuracy=0.9,
                   images_per_second=3.5)
    rows = [
        ds.result_row(ds.scale_sweep([4], BASE)[0], metrics),
        ds.result_row(ds.parse_setting("cfg:guidance_scale=2", BASE),
                      dict(metrics, fid=float("nan"))),
    ]
    csv_path, md_path = ds.write_results(rows, str(tmp_path))
    with open(csv_path) as f:
        read = list(csv.DictReader(f))
    assert list(read[0]) == list(ds.RESULT_COLUMNS + ds.EXTRA_COLUMNS)
    assert read[0]["model_evaluations"] == "" and read[0]["guidance_interval"] == ""
    assert read[0]["setting"] == "classifier_4" and float(read[0]["fid"]) == 12.3456
    assert read[0]["guidance_scale"] == "" and read[1]["guidance_scale"] == "2.0"
    assert math.isnan(float(read[1]["fid"]))
    lines = open(md_path).read().splitlines()
    assert lines[0] == "| " + " | ".join(ds.RESULT_COLUMNS + ds.EXTRA_COLUMNS) + " |"
    assert lines[2].startswith("| classifier_4 | ancestral | 50 | 4 |  | 12.346 | 150.2 |")
    assert lines[3].startswith("| cfg | ancestral | 50 | 0 | 2 | nan |")
    assert len(lines) == 4
    # rows without the evaluator's newer metrics have NaN there; KID keeps its small digits
    assert math.isnan(float(read[0]["kid"])) and math.isnan(float(read[1]["coverage"]))
    row = ds.result_row(BASE, dict(metrics, kid=0.000123456, density=1.0625, coverage=0.5))
    cells = ds.format_markdown([row]).splitlines()[2].split(" | ")
    columns = list(ds.RESULT_COLUMNS + ds.EXTRA_COLUMNS)
    assert columns[5:12] == ["fid", "sfid", "precision", "recall", "kid", "density", "coverage"]
    assert [cells[columns.index(c)] for c in ("kid", "density", "coverage")] == [
        "0.000123", "1.062", "0.500"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.csv", "results.md"]


def test_sampler_sweep_rows_flags_and_curves():
    sweep = ds.sampler_sweep(BASE, [5, 20], ["ancestral", "dpm++2m"], 2.0, (0.3, 5.0))
    names = [s.name for s in sweep]
    assert len(sweep) == 12 and len(set(names)) == 12
    assert names[:4] == ["ancestral_5", "ancestral_20", "dpmpp2m_5", "dpmpp2m_20"]
    by_name = {s.name: s for s in sweep}
    plain, guided, interval = (by_name["dpmpp2m_20"], by_name["dpmpp2m_20_cg2"],
                               by_name["dpmpp2m_20_cg2_interval"])
    assert plain.sampling_flags() == ["--timestep_respacing", "20", "--sampler", "dpm++2m"]
    assert plain.script() == ds.PLAIN_PROGRAM and guided.script() == ds.CLASSIFIER_PROGRAM
    assert guided.sampling_flags()[-2:] == ["--classifier_scale", "2"]
    assert interval.sampling_flags()[-2:] == ["--guidance_interval", "0.3,5"]
    assert interval.guidance_interval() == "0.3,5" and guided.guidance_interval() == ""
    assert {s.figure for s in sweep} == {ds.FID_FIGURE}
    assert {s.group for s in sweep} == {
        "ancestral", "dpm++2m", "ancestral, classifier 2", "dpm++2m, classifier 2",
        "ancestral, classifier 2 in (0.3, 5]", "dpm++2m, classifier 2 in (0.3, 5]"}
    only = ds.sampler_sweep(BASE, [5], ["ddim"], 2.0, (0.3, 5.0), variants=["interval"])
    assert [s.name for s in only] == ["ddim_5_cg2_interval"]
    row = ds.result_row(interval, dict(fid=1.0, sfid=1.0, precision=0.5, recall=0.5,
                                       accuracy=1.0, images_per_second=2.0,
                                       model_evaluations=20.0, classifier_evaluations=9.0))
    assert row["guidance_interval"] == "0.3,5" and row["classifier_evaluations"] == 9.0


def test_guidance_sweep_methods():
    sweep = ds.guidance_sweep(BASE, [1.5, 3], "/run/ema_0.995_000500.pt")
    by_name = {s.name: s for s in sweep}
    assert sorted(by_name) == ["auto_1.5", "auto_3", "both_1.5", "both_3", "cfg_1.5", "cfg_3"]
    assert by_name["cfg_3"].script() == ds.PLAIN_PROGRAM
    assert by_name["cfg_3"].sampling_flags() == ["--timestep_respacing", "50",
                                                 "--guidance_scale", "3"]
    assert by_name["both_3"].script() == ds.CLASSIFIER_PROGRAM
    assert by_name["both_3"].sampling_flags()[-4:] == ["--classifier_scale", "3",
                                                       "--guidance_scale", "3"]
    assert by_name["auto_1.5"].sampling_flags()[-4:] == [
        "--guidance_scale", "1.5", "--guide_model_path", "/run/ema_0.995_000500.pt"]
    assert {s.group for s in sweep} == {"classifier-free", "classifier-free + classifier",
                                        "autoguidance"}
    assert {s.figure for s in sweep} == {ds.PR_FIGURE} == {
        s.figure for s in ds.scale_sweep([0, 1], BASE)}


def test_spacing_makes_the_named_grid_of_the_steps():
    base = ds.Setting(name="base", sampler="dpm++2m-sde", steps=25)
    setting = ds.parse_setting("a:spacing=logsnr_max10,steps=10", base)
    assert setting.respacing() == "logsnr10_max10"
    assert setting.sampling_flags()[:4] == ["--timestep_respacing", "logsnr10_max10", "--sampler", "dpm++2m-sde"]
    ddim = ds.parse_setting("b:sampler=ddim,spacing=trailing", base)
    assert ddim.sampling_flags()[:2] == ["--timestep_respacing", "trailing25"]  # not ddim25
    assert ds.result_row(setting, dict.fromkeys(ds.RESULT_COLUMNS[5:], 1.0))["spacing"] == "logsnr_max10"
    with pytest.raises(ds.SettingError, match="spacing must be trailing, leading, logsnr or karras"):
        ds.parse_setting("c:spacing=karras10", base)


def test_sampler_sweep_spacing_and_edm_steps_within_the_evaluations():
    base = ds.Setting(name="base", spacing="trailing")
    rows = ds.sampler_sweep(base, [5, 10], ["edm@karras_max80", "dpm++2m-sde"], 2.0, (0.3, 5.0),
                            ["unguided"])  # fmt: skip
    assert [(r.name, r.steps, r.spacing) for r in rows] == [
        ("edm_karras_max80_5", 3, "karras_max80"), ("edm_karras_max80_10", 5, "karras_max80"),
        ("dpmpp2m-sde_5", 5, "trailing"), ("dpmpp2m-sde_10", 10, "trailing"),
    ]  # fmt: skip
    assert rows[0].group == "edm @ karras_max80" and rows[2].group == "dpm++2m-sde"
    with pytest.raises(ds.SettingError, match="the spacing after '@'"):
        ds.sampler_sweep(base, [5], ["edm@karras5"], 2.0, (0.3, 5.0), ["unguided"])
