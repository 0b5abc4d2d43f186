"""
The EDM sampler (Karras et al. 2022, Algorithm 2) on ADM processes: deterministic Heun's
global order 2 and the stochastic sampler's distribution on exact Gaussian models (the models
of test_samplers, exact at fractional timesteps too), its evaluation count (2N - 1), the
fractional base-process timesteps it calls the model and the classifier with, guidance, and
per-image noise that depends on neither the batch nor the other images.
"""

import math

import pytest
import torch

from guided_diffusion import gaussian_diffusion as gd
from guided_diffusion import samplers
from guided_diffusion.guidance import AutoGuidance, interval_active
from guided_diffusion.image_seeds import ImageRandom
from guided_diffusion.script_util import create_gaussian_diffusion

from test_samplers import (
    MU, S, GaussianModel, base_alphas_cumprod, grid_diffusion, gradient_toward, impulse_moments,
    lambda_grid, max_error, solve, spaced, tiny_unet,
)  # fmt: skip


def heun_error(num_steps: int) -> float:
    d = grid_diffusion(lambda_grid(num_steps))
    return max_error(d, solve(d, "edm"))


def test_deterministic_heun_converges_with_order_2():
    """Measured max errors on a lambda-uniform grid at 10 / 20 / 40 / 80 steps: 0.86 / 0.16 /
    0.036 / 0.0085 (log2 ratios 2.4, 2.2, 2.1); 2M at the same steps 0.14 / 0.064 / 0.016 /
    0.0041 with half the evaluations."""
    errors = [heun_error(n) for n in (20, 40, 80)]
    orders = [math.log2(a / b) for a, b in zip(errors, errors[1:])]
    assert 1.9 <= orders[-1] <= 2.3, (errors, orders)


def test_heun_beats_ddim_at_equal_evaluations_on_a_karras_grid():
    """On the linear schedule's Karras grids, max errors of Heun at N steps (2N - 1
    evaluations) against DDIM at 2N - 1 steps, measured: N = 10: 0.76 / 0.56 (Heun loses),
    15: 0.29 / 0.37, 20: 0.15 / 0.27, 30: 0.063 / 0.18."""
    ab = base_alphas_cumprod("linear")
    heun, ddim = spaced_grid("karras20", "linear"), spaced_grid("karras39", "linear")
    err_heun = max_error(heun, solve(heun, "edm", model=GaussianModel(heun, ab)))
    err_ddim = max_error(ddim, solve(ddim, "ddim", model=GaussianModel(ddim, ab)))
    assert err_heun < err_ddim / 1.5, (err_heun, err_ddim)


def test_heun_needs_a_grid_without_long_steps_at_high_noise():
    """The cosine schedule's last step sits at sigma / alpha 20291: from there to a level near
    the data's scale (5.7 on a 10-step grid uniform in t) Heun's trapezoid extrapolates the
    end slope over the whole step, off by about sigma_hat S^2 / (2 sigma_next^2) even with the
    exact model. Measured max errors, DDIM / Heun: '10' 0.54 / 360, '25' 0.21 / 20,
    'karras10_max80' 0.95 / 0.59, 'karras25_max80' 0.38 / 0.074 (the grids docs/samplers.md
    gives it)."""
    ab = base_alphas_cumprod()
    errors = {}
    for spec in ("25", "karras25_max80"):
        d = spaced_grid(spec)
        errors[spec] = {s: max_error(d, solve(d, s, model=GaussianModel(d, ab))) for s in ("ddim", "edm")}
    assert errors["25"]["edm"] > 10 * errors["25"]["ddim"], errors
    assert errors["karras25_max80"]["edm"] < errors["karras25_max80"]["ddim"] / 3, errors


def spaced_grid(spec: str, schedule: str = "cosine", mean_type=gd.ModelMeanType.EPSILON, **kwargs):
    """The ADM process of ``schedule`` respaced to ``spec`` (a fixed small variance)."""
    d = create_gaussian_diffusion(steps=1000, noise_schedule=schedule, timestep_respacing=spec,
                                  predict_xstart=mean_type == gd.ModelMeanType.START_X, **kwargs)
    d.model_var_type = gd.ModelVarType.FIXED_SMALL
    return d


@pytest.mark.parametrize("rescale", [False, True])
def test_model_sees_the_kept_steps_then_fractional_ones_with_churn(rescale):
    d = spaced_grid("karras6", "linear", rescale_timesteps=rescale)
    model = GaussianModel(d, base_alphas_cumprod("linear"))  # 1000 steps: rescaling keeps t
    counts = samplers.EvaluationCounts()
    solve(d, "edm", model=model, counts=counts)
    kept = d.timestep_map[::-1]  # 999 ... 0
    seen = [float(t[0]) for t in model.seen]
    # Heun: each step evaluates at its own level and at the next (the last step: Euler only)
    assert seen == [float(t) for i in range(5) for t in (kept[i], kept[i + 1])] + [float(kept[5])]
    assert counts.model == 2 * 6 - 1
    # churn: the first evaluation of a churned step sits above the step, between base steps
    model.seen.clear()
    churn = samplers.Churn(S_churn=2.0, S_tmin=0.05, S_tmax=50.0)
    torch.manual_seed(0)
    solve(d, "edm", model=model, churn=churn)
    levels = d.schedule.edm_sigma[::-1]
    firsts = [float(model.seen[2 * i][0]) for i in range(6)]
    for level, first, step in zip(levels, firsts, kept):
        if 0.05 <= level <= 50.0:
            gamma = min(2.0 / 6, math.sqrt(2) - 1)
            assert first == pytest.approx(d.schedule.model_time(level * (1 + gamma)), rel=1e-6)
            assert first > step and first != round(first)
        else:
            assert first == step


def test_rescaled_timesteps_reach_the_model_scaled():
    base_steps = 500
    d = spaced(5, base_steps=base_steps, rescale_timesteps=True)
    model = GaussianModel(d, base_alphas_cumprod(base_steps=base_steps), time_scale=2.0)
    solve(d, "edm", model=model, churn=samplers.Churn(S_churn=1.0))
    assert max(float(t.max()) for t in model.seen) <= 999.0
    assert float(model.seen[1][0]) == d.timestep_map[-2] * 2.0  # the second stage: a kept step


# ---------------------------------------------------------------- the stochastic sampler


def churned_moments(diffusion, churn: samplers.Churn):
    """
    Exact per-pixel mean and standard deviation of the EDM sampler's samples of the Gaussian
    data: with the exact model and no clipping a sample is affine in the starting noise and
    the churn noises (test_samplers.impulse_moments).
    """
    levels = diffusion.schedule.edm_sigma
    draws = int(sum(churn.S_tmin <= s <= churn.S_tmax for s in levels)) if churn.S_churn else 0
    model = GaussianModel(diffusion)
    return impulse_moments(draws, lambda start, randn: samplers.sample(
        diffusion, model, start.shape, sampler="edm", noise=start, clip_denoised=False,
        randn=randn, churn=churn,
    ))  # fmt: skip


def churned_std_error(num_steps: int, churn: samplers.Churn) -> float:
    """Largest error of the samples' standard deviation (see test_samplers.sde_std_error)."""
    d = grid_diffusion(lambda_grid(num_steps))
    mean, std = churned_moments(d, churn)
    assert (mean - MU[0]).abs().max() < 1e-2  # x_T ~ N(0, I) starts a little off the marginal
    ab = torch.tensor(d.alphas_cumprod[0]).double()
    s2 = S[0].double() ** 2
    return (std - ab.sqrt() * s2 / (ab * s2 + 1 - ab).sqrt()).abs().max().item()


def test_stochastic_sampler_converges_in_distribution():
    """Churn at every level but the last (sigma / alpha 0.0067), S_churn 40 (gamma at its cap
    sqrt(2) - 1 up to 97 steps): measured standard-deviation errors at 10 / 20 / 40 / 80 steps
    0.43 / 0.11 / 0.038 / 0.016 (deterministic Heun: 0.27 / 0.052 / 0.011 / 0.0027, the exact
    model needs no correction); with S_noise 1.3 they stay above 0.4."""
    churn = samplers.Churn(S_churn=40.0, S_tmin=0.01)
    errors = [churned_std_error(n, churn) for n in (20, 40, 80)]
    assert errors[0] > errors[1] > errors[2] and errors[2] < 0.025, errors
    assert math.log2(errors[1] / errors[2]) > 1.1, errors
    wrong = churned_std_error(80, churn._replace(S_noise=1.3))
    assert wrong > 10 * errors[2], (wrong, errors)


def test_churn_zero_and_an_empty_window_are_deterministic_heun():
    d = grid_diffusion(lambda_grid(12))
    heun = solve(d, "edm")
    torch.manual_seed(1)
    no_window = solve(d, "edm", churn=samplers.Churn(S_churn=80.0, S_tmin=1e6, S_tmax=1e7))
    assert torch.equal(heun, no_window)


# ---------------------------------------------------------------- guidance and noise


def test_classifier_guidance_is_the_condition_score_shift():
    """Guided Heun converges to the guided ODE that DPM-Solver++ solves (measured 0.011 apart
    at 30 steps; at 8 this stiff toy guidance diverges for every second-order solver)."""
    d = spaced_grid("karras30", "linear")
    ab = base_alphas_cumprod("linear")
    guided = {s: solve(d, s, model=GaussianModel(d, ab), cond_fn=gradient_toward(1.0, 1.0, []))
              for s in ("edm", "dpm++2m")}  # fmt: skip
    torch.testing.assert_close(guided["edm"], guided["dpm++2m"], atol=0.03, rtol=0)
    assert (guided["edm"] - solve(d, "edm", model=GaussianModel(d, ab))).mean() > 0.05


def test_churned_guidance_is_counted_and_sees_fractional_times():
    d = spaced_grid("karras8", "linear")
    ab = base_alphas_cumprod("linear")
    seen, counts = [], samplers.EvaluationCounts()
    churn = samplers.Churn(S_churn=5.0)
    torch.manual_seed(2)
    plain = solve(d, "edm", model=GaussianModel(d, ab), churn=churn)
    torch.manual_seed(2)
    zero = solve(d, "edm", model=GaussianModel(d, ab), churn=churn, counts=counts,
                 cond_fn=gradient_toward(1.0, 0.0, seen))  # fmt: skip
    torch.testing.assert_close(zero, plain, atol=1e-5, rtol=1e-5)
    assert counts == samplers.EvaluationCounts(model=15, classifier=15)
    assert any(float(t[0]) != round(float(t[0])) for t in seen)  # fractional for the classifier


def test_autoguidance_interval_reads_fractional_times_continuously():
    """The guide runs only where sigma / alpha lies in the interval, churned levels included."""
    d = spaced_grid("karras10", "linear")
    ab = base_alphas_cumprod("linear")
    lo, hi = 0.5, 20.0
    guide = GaussianModel(d, ab)
    wrapped = AutoGuidance(GaussianModel(d, ab), guide, 2.0, interval_active(d, (lo, hi)))
    torch.manual_seed(4)
    solve(d, "edm", model=wrapped, churn=samplers.Churn(S_churn=10.0))
    levels = [float(d.schedule.edm_sigma_at(t[:1])[0]) for t in guide.seen]
    assert levels and all(lo < level <= hi for level in levels)
    outside = [t for t in wrapped.model.seen if not lo < float(d.schedule.edm_sigma_at(t[:1])[0]) <= hi]
    assert outside  # the main model ran outside the interval alone


def test_per_image_noise_does_not_depend_on_the_batch():
    d = spaced_grid("karras6", "linear")
    ab = base_alphas_cumprod("linear")
    churn = samplers.Churn(S_churn=10.0)

    def draw(indices):
        rng = ImageRandom(7, indices)
        shape = (len(indices), 1, 4, 4)
        return samplers.sample(d, GaussianModel(d, ab), shape, sampler="edm", noise=rng.noise(shape),
                               randn=rng.randn, churn=churn, clip_denoised=False)  # fmt: skip

    whole = draw([0, 1, 2, 3])
    torch.testing.assert_close(torch.cat([draw([0, 1]), draw([2, 3])]), whole, atol=1e-6, rtol=0)
    torch.testing.assert_close(draw([3]), whole[3:], atol=1e-6, rtol=0)


@pytest.mark.parametrize("kind", ["class_cond", "low_res"])
def test_real_networks_with_learned_variance(kind):
    diffusion = spaced(6, base_steps=100, var_type=gd.ModelVarType.LEARNED_RANGE)
    if kind == "class_cond":
        model, kwargs = tiny_unet(num_classes=4), {"y": torch.tensor([0, 3])}
    else:
        model, kwargs = tiny_unet(kind="low_res"), {"low_res": torch.rand(2, 3, 4, 4) * 2 - 1}
    x_start = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    counts = samplers.EvaluationCounts()
    churn = samplers.Churn(S_churn=3.0)
    torch.manual_seed(0)
    out = samplers.sample(diffusion, model, (2, 3, 8, 8), sampler="edm", noise=x_start,
                          model_kwargs=kwargs, counts=counts, churn=churn)  # fmt: skip
    assert torch.isfinite(out).all() and out.abs().max() <= 1.0
    assert counts == samplers.EvaluationCounts(model=11, classifier=0)


def test_previous_x_models_are_refused_with_the_flag():
    d = spaced(4, mean_type=gd.ModelMeanType.PREVIOUS_X)
    with pytest.raises(ValueError, match="--sampler edm needs a model that predicts the noise or x_0"):
        solve(d, "edm", alphas_cumprod=base_alphas_cumprod())


def test_x0_and_noise_models_agree():
    ab = base_alphas_cumprod()
    a, b = (solve(spaced_grid("karras10_max80", mean_type=mean_type), "edm", alphas_cumprod=ab,
                  clip_denoised=True)
            for mean_type in (gd.ModelMeanType.EPSILON, gd.ModelMeanType.START_X))  # fmt: skip
    torch.testing.assert_close(a, b, atol=2e-4, rtol=1e-4)

