"""
The named sampling grids of ``respace`` ("trailingN", "leadingN", "logsnrN", "karrasN") held
exactly to their formulas (ADM_FACTS.md, "Sampler grids"), and the schedule's continuous map
between noise levels and the model's (fractional) timesteps that the noise-level grids and the
EDM sampler use.
"""

import math
from fractions import Fraction

import numpy as np
import pytest
import torch

from guided_diffusion import gaussian_diffusion as gd
from guided_diffusion.respace import SpacedDiffusion, space_timesteps
from guided_diffusion.schedule import NoiseSchedule
from guided_diffusion.script_util import create_gaussian_diffusion


def named(spec: str, T: int = 1000, ab=None) -> list[int]:
    """The grid's steps, decreasing."""
    return sorted(space_timesteps(T, spec, ab), reverse=True)


def alphas_cumprod(schedule: str, T: int = 1000) -> np.ndarray:
    return np.cumprod(1.0 - gd.get_named_beta_schedule(schedule, T))


def log_linear(T: int, a: float = -4.0, b: float = 0.01) -> np.ndarray:
    """ab of a process whose log(sigma / alpha) is exactly a + b t: t(sigma) = (log sigma - a) / b."""
    return 1.0 / (1.0 + np.exp(2.0 * (a + b * np.arange(T))))


# ---------------------------------------------------------------- index grids


@pytest.mark.parametrize("T", [1000, 250, 37, 10])
@pytest.mark.parametrize("N", [1, 2, 3, 7, 10, 25, 999])
def test_trailing_grid_is_uniform_in_t_from_the_last_step(T, N):
    if N > T:
        with pytest.raises(ValueError, match=f"1..{T}"):
            named(f"trailing{N}", T)
        return
    expected = [round(Fraction(T * (N - i), N)) - 1 for i in range(N)]
    assert named(f"trailing{N}", T) == expected
    assert expected[0] == T - 1 and len(set(expected)) == N


@pytest.mark.parametrize("T", [1000, 250, 37, 10])
@pytest.mark.parametrize("N", [1, 2, 3, 7, 10, 25, 300])
def test_leading_grid_has_the_integer_stride_and_any_count(T, N):
    if N > T:
        with pytest.raises(ValueError, match=f"1..{T}"):
            named(f"leading{N}", T)
        return
    assert named(f"leading{N}", T) == [i * (T // N) for i in range(N)][::-1]


def test_known_index_grids():
    assert named("trailing10") == [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]
    assert named("trailing3") == [999, 666, 332]
    assert named("leading10") == list(range(900, -1, -100))
    assert set(named("leading300")) == set(range(0, 900, 3))  # ddim300 is impossible
    assert set(named("leading50")) == space_timesteps(1000, "ddim50")


# ---------------------------------------------------------------- noise-level grids


def karras(sigma_min, sigma_max, n, rho=7.0):
    """The facts sheet's formula, one level at a time."""
    if n == 1:
        return [sigma_max]
    top, bottom = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    return [(top + i / (n - 1) * (bottom - top)) ** rho for i in range(n)]


def reference_steps(sigmas, ab):
    """
    Independent re-derivation: the fractional step of each level by searching its interval
    of log(sigma / alpha), rounded half to even, then moved below the step before it and kept
    above the room the later levels need.
    """
    log_levels = 0.5 * (np.log1p(-ab) - np.log(ab))
    steps = []
    for i, sigma in enumerate(sigmas):
        x = math.log(sigma)
        if x <= log_levels[0]:
            t = 0.0
        elif x >= log_levels[-1]:
            t = float(len(ab) - 1)
        else:
            k = int(np.searchsorted(log_levels, x)) - 1
            t = k + (x - log_levels[k]) / (log_levels[k + 1] - log_levels[k])
        step = round(t)
        if steps:
            step = min(step, steps[-1] - 1)
        steps.append(max(step, len(sigmas) - 1 - i))
    return steps


@pytest.mark.parametrize("N", [2, 5, 10, 20])
def test_logsnr_and_karras_grids_on_a_log_linear_schedule(N):
    """With log(sigma / alpha) = a + b t exactly, both grids have closed forms in t."""
    T, a, b = 401, -4.0, 0.02  # no level falls exactly half-way between two steps
    ab = log_linear(T, a, b)
    # uniform in log sigma = uniform in t, from T - 1 to 0
    assert named(f"logsnr{N}", T, ab) == [round((T - 1) * (1 - i / (N - 1))) for i in range(N)]
    sigma_min, sigma_max = math.exp(a), math.exp(a + b * (T - 1))
    for rho in (7, 3):
        levels = karras(sigma_min, sigma_max, N, rho)
        expected = [round((math.log(s) - a) / b) for s in levels]
        assert len(set(expected)) == N  # no crowding at these counts
        spec = f"karras{N}" if rho == 7 else f"karras{N}_rho{rho}"
        assert named(spec, T, ab) == expected


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("spec", ["karras10", "karras25", "karras250", "karras10_rho3", "logsnr10",
                                  "logsnr50", "karras10_max80", "logsnr25_max80", "karras1000"])
def test_noise_level_grids_match_the_formulas_on_adm_schedules(schedule, spec):
    ab = alphas_cumprod(schedule)
    levels = np.sqrt((1 - ab) / ab)
    n = int(spec.split("_")[0].lstrip("karslogn"))
    rho = float(spec.split("_rho")[1]) if "_rho" in spec else 7.0
    top = min(levels[-1], 80.0) if "_max80" in spec else levels[-1]
    if spec.startswith("karras"):
        sigmas = karras(levels[0], top, n, rho)
    else:
        sigmas = [math.exp(math.log(top) + i / (n - 1) * (math.log(levels[0]) - math.log(top)))
                  for i in range(n)]
    steps = named(spec, ab=ab)
    assert steps == reference_steps(sigmas, ab)
    assert len(steps) == n and steps[-1] == 0
    assert steps[0] == (999 if top == levels[-1] else int(np.abs(np.log(levels / top)).argmin()))


def test_known_noise_level_grids():
    """Golden values (this implementation, checked against reference_steps above)."""
    linear, cosine = alphas_cumprod("linear"), alphas_cumprod("cosine")
    assert named("karras10", ab=linear) == [999, 937, 864, 775, 663, 511, 301, 102, 18, 0]
    assert named("logsnr10", ab=linear) == [999, 886, 757, 603, 410, 202, 73, 22, 5, 0]
    # the cosine schedule's last step (sigma / alpha 20291, 641 one step before) crowds the
    # grid into its top steps, which move down one by one; '_max80' starts lower instead
    assert named("karras10", ab=cosine) == [999, 998, 997, 996, 995, 994, 983, 895, 259, 0]
    assert named("karras10_max80", ab=cosine) == [991, 984, 971, 941, 870, 697, 377, 117, 20, 0]


def test_crowded_levels_keep_exactly_n_distinct_steps():
    ab = alphas_cumprod("linear", 50)
    assert named("karras50", 50, ab) == list(range(49, -1, -1))
    steps = named("karras30_rho50", 50, ab)  # rho 50: nearly log-uniform, crowded at 0
    assert len(steps) == 30 and steps == sorted(set(steps), reverse=True) and steps[-1] == 0


@pytest.mark.parametrize("spec, match", [
    ("trailing10_rho3", "'_rhoR'"), ("logsnr10_rho3", "'_rhoR'"), ("karras10_rho0", "R > 0"),
    ("karras10_rho3_rho3", "once each"), ("karras0", r"1\.\.1000"), ("logsnr1001", r"1\.\.1000"),
    ("karras10_max", "'karrasN'"), ("leading10_max80", "'_maxS'"), ("karras", "'ddimN'"),
])  # fmt: skip
def test_bad_grids_name_the_flag_and_the_forms(spec, match):
    with pytest.raises(ValueError, match=match):
        space_timesteps(1000, spec, alphas_cumprod("linear"))


def test_noise_level_grids_need_the_schedule():
    with pytest.raises(ValueError, match="alphas_cumprod"):
        space_timesteps(1000, "karras10")


@pytest.mark.parametrize("spec", ["trailing10", "leading7", "logsnr12", "karras9_rho5_max80"])
def test_create_gaussian_diffusion_keeps_the_grid(spec):
    diffusion = create_gaussian_diffusion(steps=1000, noise_schedule="cosine", timestep_respacing=spec)
    assert diffusion.timestep_map == sorted(named(spec, ab=alphas_cumprod("cosine")))


# ---------------------------------------------------------------- the continuous map


def test_model_time_is_linear_in_log_sigma_between_steps_and_inverts():
    T, a, b = 200, -3.0, 0.03
    schedule = NoiseSchedule(log_linear(T, a, b), np.arange(T))
    for t in (0.0, 0.25, 17.5, 123.9, 199.0):
        sigma = math.exp(a + b * t)
        assert schedule.model_time(sigma) == pytest.approx(t, abs=1e-9)
        assert float(schedule.edm_sigma_at(torch.tensor([t], dtype=torch.float64))[0]) == pytest.approx(sigma, rel=1e-12)
    # beyond the ends: the first or last step
    assert schedule.model_time(1e-9) == 0.0 and schedule.model_time(1e9) == T - 1


@pytest.mark.parametrize("rescale", [False, True])
def test_respaced_schedule_maps_over_the_base_process(rescale):
    T = 500
    base = gd.get_named_beta_schedule("linear", T)
    spaced = SpacedDiffusion(
        space_timesteps(T, "10"), betas=base, model_mean_type=gd.ModelMeanType.EPSILON,
        model_var_type=gd.ModelVarType.FIXED_LARGE, loss_type=gd.LossType.MSE,
        rescale_timesteps=rescale,
    )  # fmt: skip
    schedule, scale = spaced.schedule, (1000 / T if rescale else 1.0)
    ab = np.cumprod(1 - base)
    levels = np.sqrt((1 - ab) / ab)
    # a base step that the respaced process skipped, and a point between two base steps
    assert schedule.model_time(levels[123]) == pytest.approx(123 * scale, abs=1e-9)
    between = math.exp(0.5 * (math.log(levels[300]) + math.log(levels[301])))
    assert schedule.model_time(between) == pytest.approx(300.5 * scale, abs=1e-9)
    # at the kept steps the respaced process's own levels, exactly
    kept = torch.tensor(schedule.model_timesteps)
    assert torch.equal(schedule.edm_sigma_at(kept), torch.from_numpy(schedule.edm_sigma))
    assert float(schedule.edm_sigma_at(torch.tensor([123 * scale]))[0]) == pytest.approx(levels[123])
