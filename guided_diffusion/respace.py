"""
Re-spacing: sample or train with a subset of a diffusion process's timesteps
(Nichol & Dhariwal 2021, section 4), without touching the samplers.

Besides the original's forms ("N", "a,b,c", "ddimN"), ``space_timesteps`` takes four named
grids of N steps, for every sampler and editing method alike:

- "trailingN": uniform in t from the first step T - 1 (Lin et al. 2024: a grid that skips
  T - 1 starts from the wrong distribution), t_i = round(T (N - i) / N) - 1;
- "leadingN": uniform in t from 0 with the integer stride T // N, t_i = i (T // N) (any count,
  unlike "ddimN");
- "logsnrN": uniform in lambda = log(alpha / sigma) between the first and last steps
  (DPM-Solver's "logSNR" spacing, its authors' choice for pixel-space models);
- "karrasN" (Karras et al. 2022, rho 7) or "karrasN_rhoR": sigma_i = (sigma_max^(1/rho) +
  i / (N - 1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho in the EDM noise level sigma / alpha,
  sigma_max and sigma_min those of the steps T - 1 and 0.

Both take "_maxS" to start at the level S instead (e.g. "karras10_max80", the top of EDM's own
range): the cosine schedule's last step has sigma / alpha 20291 (641 one step before), so from
there most of a Karras or log-SNR grid would crowd into its last ten steps, all nearly pure noise.

The last two are noise levels: each maps to the fractional timestep where log(sigma / alpha),
linear between neighbouring steps, takes it (``NoiseSchedule.model_time``), rounded to the
nearest step. Where levels crowd closer than one step (a large N, or the cosine schedule's
last step, whose sigma / alpha jumps from 641 to 20291), a level that rounds onto a step
already taken moves to the next free step below it (less noise), keeping room for the levels
after it, so the grid always has exactly N distinct steps, from T - 1 down.
"""

import math
import re
from fractions import Fraction
from typing import Iterable, Optional, Sequence, Union

import numpy as np
import torch

from .gaussian_diffusion import GaussianDiffusion
from .schedule import NoiseSchedule

KARRAS_RHO = 7.0
# "trailing10", "leading10", "logsnr10", "karras10", "karras10_rho5", "karras10_max80"
_NAMED_GRID = re.compile(r"(trailing|leading|logsnr|karras)(\d+)((?:_(?:rho|max)[\d.]+)*)")
GRID_FORMS = "'trailingN', 'leadingN', 'logsnrN' or 'karrasN' (options '_rhoR', '_maxS')"


def trailing_timesteps(num_timesteps: int, count: int) -> list[int]:
    """:return: ``count`` steps uniform in t from T - 1 down: round(T (N - i) / N) - 1."""
    return [round(Fraction(num_timesteps * (count - i), count)) - 1 for i in range(count)]


def leading_timesteps(num_timesteps: int, count: int) -> list[int]:
    """:return: ``count`` steps from 0 up with the integer stride T // N."""
    return [i * (num_timesteps // count) for i in range(count)]


def karras_sigmas(sigma_min: float, sigma_max: float, count: int, rho: float = KARRAS_RHO):
    """
    :return: [count] the noise levels sigma / alpha of Karras et al. (2022), eq. 5, from
        sigma_max down to sigma_min (without the final 0).
    """
    ramp = np.linspace(0.0, 1.0, count) if count > 1 else np.zeros(1)
    top, bottom = sigma_max ** (1.0 / rho), sigma_min ** (1.0 / rho)
    return (top + ramp * (bottom - top)) ** rho


def logsnr_sigmas(sigma_min: float, sigma_max: float, count: int) -> np.ndarray:
    """:return: [count] noise levels sigma / alpha uniform in log, from sigma_max down."""
    if count == 1:
        return np.array([sigma_max])
    return np.exp(np.linspace(math.log(sigma_max), math.log(sigma_min), count))


def noise_level_timesteps(sigmas: Sequence[float], alphas_cumprod: np.ndarray) -> list[int]:
    """
    The steps of a process nearest to decreasing noise levels (module docstring): each
    level's fractional timestep rounded, moved below the step before it where it would repeat
    one, and kept high enough to leave a step for each level after it.

    :param sigmas: [N] decreasing noise levels sigma / alpha.
    :param alphas_cumprod: [T] ab of the process (N <= T).
    :return: N distinct steps, decreasing.
    """
    schedule = NoiseSchedule(alphas_cumprod, np.arange(len(alphas_cumprod)))
    steps, count = [], len(sigmas)
    for i, sigma in enumerate(sigmas):
        t = int(np.rint(schedule.model_time(float(sigma))))
        if steps:
            t = min(t, steps[-1] - 1)
        steps.append(max(t, count - 1 - i))
    return steps


def named_grid(
    num_timesteps: int, spec: str, alphas_cumprod: Optional[np.ndarray] = None
) -> Optional[list[int]]:
    """
    :param spec: a --timestep_respacing value.
    :return: the steps of a named grid (module docstring), decreasing; None when ``spec`` is
        not one.
    :raises ValueError: a bad count or rho, or a noise-level grid without ``alphas_cumprod``.
    """
    match = _NAMED_GRID.fullmatch(spec)
    if match is None:
        return None
    form, count = match.group(1), int(match.group(2))
    options = _grid_options(spec, form, match.group(3))
    if not 1 <= count <= num_timesteps:
        raise ValueError(f"--timestep_respacing {spec}: the step count must lie in "
                         f"1..{num_timesteps} (the diffusion steps), got {count}")
    if form == "trailing":
        return trailing_timesteps(num_timesteps, count)
    if form == "leading":
        return leading_timesteps(num_timesteps, count)[::-1]
    if alphas_cumprod is None or len(alphas_cumprod) != num_timesteps:
        raise ValueError(f"timestep respacing {spec!r} needs the process's alphas_cumprod")
    levels = np.sqrt((1.0 - alphas_cumprod) / alphas_cumprod)
    sigma_min, sigma_max = float(levels[0]), min(float(levels[-1]), options.get("max", math.inf))
    if form == "logsnr":
        sigmas = logsnr_sigmas(sigma_min, sigma_max, count)
    else:
        sigmas = karras_sigmas(sigma_min, sigma_max, count, options.get("rho", KARRAS_RHO))
    return noise_level_timesteps(sigmas, alphas_cumprod)


def _grid_options(spec: str, form: str, text: str) -> dict[str, float]:
    """:return: the '_rhoR' and '_maxS' options of a named grid, checked."""
    options = {}
    for item in filter(None, text.split("_")):
        key = item[:3]
        try:
            value = float(item[3:])
        except ValueError:
            value = math.nan
        allowed = {"rho": ("karras",), "max": ("karras", "logsnr")}[key]
        if form not in allowed or key in options or not 0 < value < math.inf:
            raise ValueError(
                f"--timestep_respacing {spec}: '_rhoR' (R > 0) may follow 'karrasN' and '_maxS' "
                "(the largest noise level sigma / alpha, S > 0) 'karrasN' or 'logsnrN', once each"
            )
        options[key] = value
    return options


def space_timesteps(
    num_timesteps: int,
    section_counts: Union[str, Iterable[int]],
    alphas_cumprod: Optional[np.ndarray] = None,
) -> set[int]:
    """
    Choose which timesteps of the original process to keep.

    The T steps are split into len(section_counts) equal sections (the first
    T % len(section_counts) one step longer), and section i keeps section_counts[i]
    steps at evenly rounded fractional strides, so "10,15,20" keeps 10 steps from the
    first third, 15 from the second and 20 from the last.

    "ddimN" keeps range(0, T, s) for the one integer stride s that gives exactly N
    steps, as in the DDIM paper. "trailingN", "leadingN", "logsnrN" and "karrasN" are the
    named grids of the module docstring.

    :param num_timesteps: T, the number of steps of the original process.
    :param section_counts: a list of counts, or a string "N", "a,b,c", "ddimN" or a named grid.
    :param alphas_cumprod: [T] the original process's ab, needed by "logsnrN" and "karrasN".
    :return: the set of original timestep indices to keep.
    """
    if isinstance(section_counts, str):
        spec = section_counts
        grid = named_grid(num_timesteps, spec, alphas_cumprod)
        if grid is not None:
            return set(grid)
        if spec.startswith("ddim"):
            try:
                desired_count = int(spec[len("ddim"):])
            except ValueError:
                raise ValueError(
                    f"invalid timestep respacing {spec!r}: 'ddim' must be followed by an "
                    "integer step count, e.g. 'ddim50'"
                ) from None
            for stride in range(1, num_timesteps):
                if len(range(0, num_timesteps, stride)) == desired_count:
                    return set(range(0, num_timesteps, stride))
            raise ValueError(
                f"cannot create exactly {desired_count} steps with an integer stride from "
                f"{num_timesteps} diffusion steps (--timestep_respacing {spec}); use "
                f"{_ddim_alternatives(num_timesteps, desired_count)}"
            )
        try:
            section_counts = [int(count) for count in spec.split(",")]
        except ValueError:
            raise ValueError(
                f"invalid timestep respacing {spec!r}: expected a step count ('250'), "
                f"comma-separated counts per section ('10,15,20'), 'ddimN' or {GRID_FORMS}"
            ) from None
    section_counts = list(section_counts)
    if not section_counts or any(c < 0 for c in section_counts) or sum(section_counts) == 0:
        raise ValueError(
            "timestep respacing section counts must be non-negative integers with a "
            f"positive total, got {section_counts}"
        )

    size_per = num_timesteps // len(section_counts)
    extra = num_timesteps % len(section_counts)
    start_idx = 0
    all_steps = []
    for i, section_count in enumerate(section_counts):
        size = size_per + (1 if i < extra else 0)
        if size < section_count:
            raise ValueError(
                f"cannot keep {section_count} steps from a section of {size} steps "
                f"({num_timesteps} diffusion steps in {len(section_counts)} sections); "
                f"at most {size} are possible there"
            )
        frac_stride = 1 if section_count <= 1 else (size - 1) / (section_count - 1)
        cur_idx = 0.0
        for _ in range(section_count):
            all_steps.append(start_idx + round(cur_idx))
            cur_idx += frac_stride
        start_idx += size
    return set(all_steps)


def _ddim_alternatives(num_timesteps: int, desired_count: int) -> str:
    """:return: the 'ddimN' nearest to N that some stride gives, and a plain count, both valid."""
    counts = sorted({len(range(0, num_timesteps, s)) for s in range(1, num_timesteps)})
    nearest = min(counts, key=lambda c: (abs(c - desired_count), c)) if counts else None
    plain = min(max(desired_count, 2), num_timesteps)  # a process needs 2 steps at least
    ddim = f"'ddim{nearest}' (the nearest count a stride gives) or " if nearest else ""
    return f"{ddim}the plain count '{plain}'"


class SpacedDiffusion(GaussianDiffusion):
    """
    A diffusion process that keeps only some steps of a base process.

    The kept steps get new betas from the base process's alphas_cumprod at those steps,
    and the model and cond_fn always see the base process's timestep indices.

    :param use_timesteps: the base-process timesteps to keep.
    :param kwargs: the keyword arguments that build the base GaussianDiffusion.
    """

    def __init__(self, use_timesteps: Iterable[int], **kwargs):
        self.use_timesteps = set(use_timesteps)
        self.original_num_steps = len(kwargs["betas"])
        base_diffusion = GaussianDiffusion(**kwargs)
        self.base_alphas_cumprod = base_diffusion.alphas_cumprod
        bad = sorted(t for t in self.use_timesteps if not 0 <= t < self.original_num_steps)
        if bad or not self.use_timesteps:
            raise ValueError(
                f"use_timesteps must be a non-empty subset of range({self.original_num_steps}); "
                f"out of range: {bad[:5]}"
            )
        self.timestep_map = []
        new_betas = []
        last_alpha_cumprod = 1.0
        for i, alpha_cumprod in enumerate(base_diffusion.alphas_cumprod):
            if i in self.use_timesteps:
                new_betas.append(1 - alpha_cumprod / last_alpha_cumprod)
                last_alpha_cumprod = alpha_cumprod
                self.timestep_map.append(i)
        kwargs["betas"] = np.array(new_betas)
        super().__init__(**kwargs)

    def p_mean_variance(self, model, *args, **kwargs):
        return super().p_mean_variance(self._wrap_model(model), *args, **kwargs)

    def training_losses(self, model, *args, **kwargs):
        return super().training_losses(self._wrap_model(model), *args, **kwargs)

    def condition_mean(self, cond_fn, *args, **kwargs):
        return super().condition_mean(self._wrap_model(cond_fn), *args, **kwargs)

    def condition_score(self, cond_fn, *args, **kwargs):
        return super().condition_score(self._wrap_model(cond_fn), *args, **kwargs)

    def _wrap_model(self, model):
        if isinstance(model, _WrappedModel):
            return model
        return _WrappedModel(model, self.timestep_map, self.rescale_timesteps, self.original_num_steps)

    def _scale_timesteps(self, t):
        # the wrapper maps and scales timesteps
        return t

    def _model_timesteps(self) -> np.ndarray:
        t = np.asarray(self.timestep_map, dtype=np.float64)
        return t * (1000.0 / self.original_num_steps) if self.rescale_timesteps else t

    def _base_process(self) -> tuple[np.ndarray, float]:
        scale = 1000.0 / self.original_num_steps if self.rescale_timesteps else 1.0
        return self.base_alphas_cumprod, scale


class _WrappedModel:
    """Calls a model (or cond_fn) with re-spaced indices mapped to the base process's."""

    def __init__(self, model, timestep_map: list[int], rescale_timesteps: bool, original_num_steps: int):
        self.model = model
        self.timestep_map = timestep_map
        self.rescale_timesteps = rescale_timesteps
        self.original_num_steps = original_num_steps

    def parameters(self):
        return self.model.parameters()

    def __call__(self, x, ts, **kwargs):
        map_tensor = torch.tensor(self.timestep_map, device=ts.device, dtype=ts.dtype)
        new_ts = map_tensor[ts]
        if self.rescale_timesteps:
            new_ts = new_ts.float() * (1000.0 / self.original_num_steps)
        return self.model(x, new_ts, **kwargs)
