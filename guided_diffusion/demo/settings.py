"""
The demo's sampling settings and its results table.

A setting is one row of the table: a name, the sampler, the number of sampling steps, the
classifier scale, the classifier-free guidance scale and any further flags for the sampling
program. The demo's classifier-scale sweep is a list of settings; more rows come from the
command line as ``NAME:key=value,key=value`` (see parse_setting), so new sampling methods
(other samplers, classifier-free guidance) add rows to the same table.
"""

import math
import os
import re
from dataclasses import dataclass, field, replace
from typing import Optional, Sequence

from guided_diffusion.io_util import markdown_table, write_table

RESULT_COLUMNS = (
    "setting",
    "sampler",
    "steps",
    "classifier_scale",
    "guidance_scale",
    "fid",
    "sfid",
    "precision",
    "recall",
    "kid",
    "density",
    "coverage",
    "accuracy",
    "images_per_second",
)
# further columns, after the required ones: the guidance interval of the row, and the
# evaluations per image the sampling program counted (model forward passes, classifier
# gradients), so a guidance interval's savings and a solver's cost can be read off, and the
# spacing of the steps ("": the original's)
EXTRA_COLUMNS = ("guidance_interval", "model_evaluations", "classifier_evaluations", "spacing")
# the evaluator's KID, density and coverage: NaN in rows whose metrics predate them
NEWER_METRICS = ("kid", "density", "coverage")
# the sampling programs: guided by the noisy classifier, or not
CLASSIFIER_PROGRAM = "scripts/classifier_sample.py"
PLAIN_PROGRAM = "scripts/image_sample.py"
PROGRAMS = {"classifier_sample": CLASSIFIER_PROGRAM, "image_sample": PLAIN_PROGRAM}
SETTING_KEYS = ("sampler", "steps", "spacing", "classifier_scale", "guidance_scale", "program")
# --timestep_respacing's named grids without their count (respace.py), e.g. "karras_max80"
SPACING = re.compile(r"(trailing|leading|logsnr|karras)((?:_(?:rho|max)[\d.]+)*)")


class SettingError(ValueError):
    """A setting given on the command line that cannot be used."""


@dataclass(frozen=True)
class Setting:
    """
    One way of sampling, one row of the results table.

    :param name: the row's name (letters, digits, '.', '-', '_').
    :param sampler: "ancestral" (the original p_sample loop), "ddim", or a name the sampling
        program accepts with --sampler.
    :param steps: sampling steps (--timestep_respacing, from the trained number of steps).
    :param spacing: where the steps lie: "" the original's (uniform in t; "ddimN" for DDIM),
        else a named grid of --timestep_respacing without its count ("trailing", "leading",
        "logsnr", "karras", with options such as "karras_rho5_max80").
    :param classifier_scale: classifier-guidance scale; 0 samples without the classifier.
    :param guidance_scale: classifier-free guidance scale, None when not used.
    :param program: "classifier_sample" or "image_sample"; None: the classifier program when
        classifier_scale > 0, else the plain one.
    :param extra_flags: further (flag name without dashes, value) pairs for the program.
    :param group: the curve the row belongs to in the demo's plots (e.g. "classifier-free"
        or "dpm++2m, classifier 2"); "" for none.
    :param figure: the plot that curve is drawn in: FID_FIGURE, PR_FIGURE or "" for none.
    """

    name: str
    sampler: str = "ancestral"
    steps: int = 50
    spacing: str = ""
    classifier_scale: float = 0.0
    guidance_scale: Optional[float] = None
    program: Optional[str] = None
    extra_flags: tuple[tuple[str, str], ...] = field(default=())
    group: str = ""
    figure: str = ""

    def guidance_interval(self) -> str:
        """:return: the --guidance_interval this setting passes, "" for none."""
        return dict(self.extra_flags).get("guidance_interval", "")

    def script(self) -> str:
        """:return: the sampling program's path, relative to the repository root."""
        if self.program is not None:
            return PROGRAMS[self.program]
        return CLASSIFIER_PROGRAM if self.classifier_scale > 0 else PLAIN_PROGRAM

    def sampling_flags(self) -> list[str]:
        """
        :return: the flags this setting gives the sampling program (the model, checkpoint
            and count flags are the demo's).
        """
        if self.sampler == "ddim" and not self.spacing:
            flags = ["--use_ddim", "True", "--timestep_respacing", f"ddim{self.steps}"]
        else:
            flags = ["--timestep_respacing", self.respacing()]
            if self.sampler != "ancestral":
                flags += ["--sampler", self.sampler]
        if self.script() == CLASSIFIER_PROGRAM:
            flags += ["--classifier_scale", _number(self.classifier_scale)]
        if self.guidance_scale is not None:
            flags += ["--guidance_scale", _number(self.guidance_scale)]
        for key, value in self.extra_flags:
            flags += [f"--{key}", value]
        return flags


    def respacing(self) -> str:
        """:return: the --timestep_respacing of ``steps`` at ``spacing`` (not for ddim's own)."""
        form, _, options = self.spacing.partition("_")
        return f"{form}{self.steps}" + (f"_{options}" if options else "")


def steps_for(sampler: str, evaluations: int) -> int:
    """:return: the most steps of ``sampler`` within ``evaluations`` model evaluations per
    image (the EDM sampler's N steps cost 2N - 1)."""
    return (evaluations + 1) // 2 if sampler == "edm" else evaluations


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _float(text: str, key: str, spec: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise SettingError(f"setting {spec!r}: {key}={text!r} is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise SettingError(f"setting {spec!r}: {key} must be a finite number >= 0, got {text}")
    return value


def _apply(setting: Setting, key: str, value: str, spec: str) -> Setting:
    """One key=value of a setting spec applied to ``setting``."""
    if key == "sampler":
        return replace(setting, sampler=value)
    if key == "steps":
        if not value.isdigit() or int(value) < 1:
            raise SettingError(f"setting {spec!r}: steps must be a positive integer, got {value!r}")
        return replace(setting, steps=int(value))
    if key == "spacing":
        if SPACING.fullmatch(value) is None:
            raise SettingError(
                f"setting {spec!r}: spacing must be trailing, leading, logsnr or karras (with "
                f"options such as karras_rho5_max80), got {value!r}"
            )
        return replace(setting, spacing=value)
    if key == "classifier_scale":
        return replace(setting, classifier_scale=_float(value, key, spec))
    if key == "guidance_scale":
        return replace(setting, guidance_scale=_float(value, key, spec))
    if key == "program":
        if value not in PROGRAMS:
            raise SettingError(
                f"setting {spec!r}: program must be one of {', '.join(PROGRAMS)}, got {value!r}"
            )
        return replace(setting, program=value)
    return replace(setting, extra_flags=setting.extra_flags + ((key, value),))


def parse_setting(spec: str, base: Setting) -> Setting:
    """
    Parse ``NAME:key=value,key=value`` (e.g. ``ddim25:sampler=ddim,steps=25``) into a
    Setting; keys not given keep ``base``'s values. The keys are SETTING_KEYS; any other key
    is passed to the sampling program as ``--key value``.

    :param spec: the text from the command line.
    :param base: the defaults (the demo's sampler and steps).
    :return: the Setting.
    :raises SettingError: naming what is wrong.
    """
    name, _, body = spec.partition(":")
    name = name.strip()
    if not name or not all(ch.isalnum() or ch in "._-" for ch in name):
        raise SettingError(
            f"setting {spec!r}: expected NAME:key=value,... with a NAME of letters, digits, "
            "'.', '-' or '_' (e.g. 'ddim25:sampler=ddim,steps=25')"
        )
    setting = replace(base, name=name)
    for item in filter(None, (part.strip() for part in body.split(","))):
        key, eq, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not eq or not key or not value or not all(ch.isalnum() or ch == "_" for ch in key):
            raise SettingError(
                f"setting {spec!r}: {item!r} is not key=value (keys: {', '.join(SETTING_KEYS)}, "
                "or any flag of the sampling program without its dashes)"
            )
        setting = _apply(setting, key, value, spec)
    return setting


# the plots a setting's row can be drawn in (scripts/demo.py writes them)
FID_FIGURE = "fid_vs_evaluations"
PR_FIGURE = "precision_vs_recall"
CLASSIFIER_GROUP = "classifier guidance"


def scale_sweep(scales: Sequence[float], base: Setting) -> list[Setting]:
    """
    :return: one setting per classifier scale, named ``classifier_{scale}`` (the curve
        CLASSIFIER_GROUP of the precision / recall plot).
    """
    return [
        replace(base, name=f"classifier_{_number(s)}", classifier_scale=float(s),
                group=CLASSIFIER_GROUP, figure=PR_FIGURE)
        for s in scales
    ]


SWEEP_VARIANTS = ("unguided", "guided", "interval")


def sampler_sweep(
    base: Setting,
    evaluations: Sequence[int],
    samplers: Sequence[str],
    classifier_scale: float,
    interval: tuple[float, float],
    variants: Sequence[str] = SWEEP_VARIANTS,
) -> list[Setting]:
    """
    The solver comparison (FID against model evaluations): every sampler at every number of
    evaluations, unguided, classifier-guided at ``classifier_scale``, and guided only inside
    the guidance interval (lo, hi] of the noise level sigma_t / alpha_t (``variants``, a
    subset of SWEEP_VARIANTS, chooses among these three).

    :param evaluations: model evaluations per image; the EDM sampler takes the most steps
        within them (``steps_for``: 2N - 1 <= n).
    :param samplers: sampler names, each optionally with its spacing as "sampler@spacing"
        (e.g. "dpm++2m-sde@karras_max80"; without one, ``base``'s).
    :return: settings named ``{sampler}_{n}``, ``{sampler}_{n}_cg{scale}`` and
        ``{sampler}_{n}_cg{scale}_interval`` ('+' written 'p'; with a spacing
        ``{sampler}_{spacing}_{n}...``), one FID_FIGURE curve per sampler, spacing and variant.
    :raises SettingError: an unknown spacing.
    """
    lo, hi = interval
    scale = _number(classifier_scale)
    rows = {
        "unguided": ("", "", 0.0, ()),
        "guided": (f"_cg{scale}", f", classifier {scale}", float(classifier_scale), ()),
        "interval": (f"_cg{scale}_interval", f", classifier {scale} in ({lo:g}, {hi:g}]",
                     float(classifier_scale), (("guidance_interval", f"{lo:g},{hi:g}"),)),
    }
    entries = []
    for entry in samplers:
        sampler, at, spacing = entry.partition("@")
        spacing = spacing if at else base.spacing
        if spacing and SPACING.fullmatch(spacing) is None:
            raise SettingError(f"sampler {entry!r}: the spacing after '@' must be trailing, "
                               "leading, logsnr or karras (with options such as karras_max80)")
        entries.append((sampler, spacing, sampler.replace("+", "p") + (f"_{spacing}" if at else ""),
                        sampler + (f" @ {spacing}" if at else "")))
    return [
        replace(base, name=f"{name}_{n}{suffix}", sampler=sampler, spacing=spacing,
                steps=steps_for(sampler, n), classifier_scale=cs,
                extra_flags=base.extra_flags + flags, group=group + label, figure=FID_FIGURE)
        for suffix, label, cs, flags in (rows[v] for v in SWEEP_VARIANTS if v in variants)
        for sampler, spacing, name, group in entries
        for n in evaluations
    ]


def guidance_sweep(base: Setting, scales: Sequence[float], guide_model: str) -> list[Setting]:
    """
    The guidance methods side by side (precision against recall), at each scale s:
    classifier-free guidance ``cfg_{s}`` (--guidance_scale s), classifier-free and classifier
    guidance together ``both_{s}`` (--guidance_scale s --classifier_scale s) and autoguidance
    ``auto_{s}`` (--guidance_scale s with ``guide_model`` as the guide). Classifier guidance
    alone is scale_sweep's; scale 1 of each of these is plain conditional sampling.

    :return: the settings, one PR_FIGURE curve per method.
    """
    rows = []
    for name, group, both, guide in (("cfg", "classifier-free", False, False),
                                     ("both", "classifier-free + classifier", True, False),
                                     ("auto", "autoguidance", False, True)):
        for s in scales:
            flags = base.extra_flags + ((("guide_model_path", guide_model),) if guide else ())
            rows.append(replace(
                base, name=f"{name}_{_number(s)}", guidance_scale=float(s),
                classifier_scale=float(s) if both else 0.0, extra_flags=flags,
                group=group, figure=PR_FIGURE,
            ))
    return rows


def check_unique(settings: Sequence[Setting]) -> None:
    """Reject two settings with the same name (their files would overwrite each other)."""
    names = [s.name for s in settings]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise SettingError(f"settings must have distinct names; repeated: {', '.join(repeated)}")


# ---------------------------------------------------------------- the results table


def result_row(setting: Setting, metrics: dict[str, float]) -> dict[str, object]:
    """
    :param metrics: fid, sfid, precision, recall, accuracy, images_per_second, and
        optionally kid, density, coverage (NaN when missing), model_evaluations and
        classifier_evaluations.
    :return: one row of the table, keyed by RESULT_COLUMNS + EXTRA_COLUMNS.
    """
    row = {
        "setting": setting.name,
        "sampler": setting.sampler,
        "steps": setting.steps,
        "classifier_scale": setting.classifier_scale,
        "guidance_scale": "" if setting.guidance_scale is None else setting.guidance_scale,
    }
    row.update({key: metrics.get(key, math.nan) if key in NEWER_METRICS else metrics[key]
                for key in RESULT_COLUMNS[5:]})
    row["guidance_interval"] = setting.guidance_interval()
    for key in ("model_evaluations", "classifier_evaluations"):
        row[key] = metrics.get(key, "")
    row["spacing"] = setting.spacing
    return row


def _cell(column: str, value: object) -> str:
    if not isinstance(value, float):
        return str(value)
    if column in RESULT_COLUMNS[:5] or column in EXTRA_COLUMNS:  # counts and settings as given
        return _number(value)
    if column == "kid":  # typically 1e-4 to 1e-1
        return f"{value:.3g}"
    return f"{value:.3f}" if abs(value) < 100 else f"{value:.1f}"


def format_markdown(rows: Sequence[dict[str, object]]) -> str:
    """:return: the rows as a Markdown table with the RESULT_COLUMNS + EXTRA_COLUMNS header."""
    return markdown_table(rows, RESULT_COLUMNS + EXTRA_COLUMNS, _cell)


def write_results(rows: Sequence[dict[str, object]], out_dir: str) -> tuple[str, str]:
    """
    Write ``results.csv`` (full precision) and ``results.md`` (rounded) atomically.

    :return: (csv path, md path).
    """
    return write_table(os.path.join(out_dir, "results"), rows, RESULT_COLUMNS + EXTRA_COLUMNS,
                       _cell)
