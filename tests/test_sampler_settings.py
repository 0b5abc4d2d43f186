"""
The sampler settings beyond --sampler: dynamic thresholding on constructed x0, the rule for
lowering the multistep solvers' order at the last steps (measured on an exact Gaussian-mixture
model against a float64 reference), the SDE solver's noise amount, and the flags that set them
(``SamplerSetting.from_flags``).
"""

import math

import numpy as np
import pytest
import torch

from guided_diffusion import gaussian_diffusion as gd
from guided_diffusion import samplers
from guided_diffusion.script_util import create_gaussian_diffusion

from mixture_toys import MixtureModel, reference_solution
from test_samplers import base_alphas_cumprod, grid_diffusion, lambda_grid, noise, seeded, solve, spaced

# ---------------------------------------------------------------- dynamic thresholding


def test_dynamic_threshold_on_constructed_x0():
    """Image 0 holds -3..3 in 1001 steps of 0.006: sorted, |x0| is 0, then each 0.006 k twice,
    so its 0.995 quantile (position 995 of 0..1000) is 0.006 * 498 = 2.988; it is clipped there
    and divided by it. Image 1
    lies inside [-1, 1] (s = max(1, q) = 1) and is left as it is."""
    ramp = torch.linspace(-3.0, 3.0, 1001)
    inside = torch.linspace(-0.9, 0.5, 1001)
    x0 = torch.stack([ramp, inside]).view(2, 1, 7, 143)
    out = samplers.dynamic_threshold(x0, 0.995)
    s = float(np.quantile(np.abs(ramp.numpy()), 0.995))
    assert s == pytest.approx(2.988, abs=1e-5)
    torch.testing.assert_close(out[0].flatten(), ramp.clamp(-s, s) / s)
    assert torch.equal(out[1].flatten(), inside)
    assert out.abs().max() <= 1.0


@pytest.mark.parametrize("p", [0.5, 0.9, 0.995, 1.0])
def test_dynamic_threshold_quantile_is_torch_quantile(p):
    x0 = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * torch.tensor([0.3, 1, 2, 5]).view(4, 1, 1, 1)
    s = torch.quantile(x0.abs().reshape(4, -1), p, dim=1).clamp(min=1).view(4, 1, 1, 1)
    torch.testing.assert_close(samplers.dynamic_threshold(x0, p), x0.clamp(-s, s) / s)


@pytest.mark.parametrize("sampler", samplers.SAMPLERS)
def test_every_sampler_thresholds_its_data_prediction(sampler):
    """Without clipping, the Gaussian data (mean up to 0.6, std up to 1.3) leaves [-1, 1];
    with --dynamic_threshold every x0 prediction is brought inside."""
    diffusion = spaced(8)
    ab = base_alphas_cumprod()
    seen = []

    def denoised_fn(x0):
        seen.append(x0)
        return x0

    plain = solve(diffusion, sampler, alphas_cumprod=ab, randn=seeded())
    out = solve(diffusion, sampler, alphas_cumprod=ab, randn=seeded(), dynamic_threshold=0.9,
                denoised_fn=denoised_fn)  # fmt: skip
    assert plain.abs().max() > 1.5 and out.abs().max() <= 1.0 + 1e-3
    assert seen  # a denoised_fn given too runs first


# ---------------------------------------------------------------- the last steps' order


def test_lowers_final_steps_rules():
    assert samplers.lowers_final_steps("always", 100) and not samplers.lowers_final_steps("never", 2)
    assert samplers.lowers_final_steps("below15", 14) and not samplers.lowers_final_steps("below15", 15)
    for bad in ("sometimes", "below", "below1.5", "15"):
        with pytest.raises(ValueError, match="--lower_order_final must be always, never or belowN"):
            samplers.lowers_final_steps(bad, 10)


def test_order_schedule_without_lowering_at_the_end():
    def orders(order, n, lower):
        return [samplers.step_order(order, n - 1 - i, i, lower) for i in range(n - 1, 0, -1)]

    assert orders(3, 6, True) == [1, 2, 3, 2, 1]
    assert orders(3, 6, False) == [1, 2, 3, 3, 3]
    assert orders(2, 4, False) == [1, 2, 2]


def test_below_n_lowers_only_on_short_grids():
    d = spaced(10)
    ab = base_alphas_cumprod()
    always, never = (solve(d, "dpm++3m", alphas_cumprod=ab, lower_order_final=r) for r in ("always", "never"))
    assert not torch.allclose(always, never)
    assert torch.equal(solve(d, "dpm++3m", alphas_cumprod=ab, lower_order_final="below11"), always)
    assert torch.equal(solve(d, "dpm++3m", alphas_cumprod=ab, lower_order_final="below10"), never)


SHAPE = (1024, 1, 1, 1)


def mixture_rms(schedule: str, spec: str, sampler: str, **kwargs) -> float:
    """RMS error of ``sampler`` on the mixture against the float64 reference ODE solution from
    the grid's first level to the base process's step 0, denoised."""
    d = create_gaussian_diffusion(steps=1000, noise_schedule=schedule, timestep_respacing=spec)
    ab = np.cumprod(1 - gd.get_named_beta_schedule(schedule, 1000))
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    out = samplers.sample(d, MixtureModel(ab), SHAPE, sampler=sampler, noise=x, clip_denoised=False,
                          **kwargs)  # fmt: skip
    ref = reference_solution(x, d.alphas_cumprod[-1], ab[0])
    return math.sqrt(((out.double() - ref) ** 2).mean().item())


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("n", [10, 20])
def test_lowering_the_last_steps_pays_on_grids_uniform_in_t(schedule, n):
    """Grids that end at step 0 (sigma / alpha 0.0064 to 0.01) have a long last interval in
    lambda. Measured RMS errors of 2M, 'always' / 'never', on 'N' grids: linear 10 steps
    9.9e-2 / 3.3e-1, 20: 3.7e-2 / 1.5e-1; cosine 10: 3.6e-2 / 1.8e-1, 20: 2.3e-2 / 5.7e-2
    (3M and UniPC alike; see docs/samplers.md for every grid and count)."""
    errors = {rule: mixture_rms(schedule, str(n), "dpm++2m", lower_order_final=rule)
              for rule in ("always", "never")}  # fmt: skip
    assert errors["always"] < errors["never"] / 2, errors


def test_mixture_reference_is_converged():
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    ab = np.cumprod(1 - gd.get_named_beta_schedule("linear", 1000))
    fine, coarse = reference_solution(x, ab[-1], ab[0]), reference_solution(x, ab[-1], ab[0], steps=1000)
    assert (fine - coarse).abs().max() < 1e-6


# ---------------------------------------------------------------- the SDE solver's noise


def test_sde_eta_zero_is_deterministic_and_first_order_is_ddim():
    ab = base_alphas_cumprod()
    d = spaced(12)
    a = solve(d, "dpm++2m-sde", alphas_cumprod=ab, sde_eta=0.0, randn=seeded(1))
    b = solve(d, "dpm++2m-sde", alphas_cumprod=ab, sde_eta=0.0, randn=seeded(2))
    assert torch.equal(a, b)
    first = solve(d, "dpm++2m-sde", alphas_cumprod=ab, sde_eta=0.0, order=1)
    torch.testing.assert_close(first, solve(d, "ddim", alphas_cumprod=ab), atol=1e-5, rtol=1e-5)
    half = solve(d, "dpm++2m-sde", alphas_cumprod=ab, sde_eta=0.5, randn=seeded(1))
    full = solve(d, "dpm++2m-sde", alphas_cumprod=ab, randn=seeded(1))
    assert not torch.allclose(half, full) and not torch.allclose(half, a)


# ---------------------------------------------------------------- the flags


def test_setting_from_flags_maps_every_flag():
    setting = samplers.SamplerSetting.from_flags(
        "unipc", False, "", unipc_order=3, third_order_form="circulated", sde_eta=0.5,
        lower_order_final="below15", dynamic_threshold=0.995, S_churn=80, S_tmin=0.05, S_tmax=50,
        S_noise=1.003,
    )  # fmt: skip
    assert setting.options == dict(
        order=3, d2_weight=samplers.CIRCULATED_D2_WEIGHT, sde_eta=0.5, lower_order_final="below15",
        dynamic_threshold=0.995, churn=samplers.Churn(80.0, 0.05, 50.0, 1.003),
    )  # fmt: skip
    # --unipc_order is UniPC's alone; the defaults are today's behaviour
    assert "order" not in samplers.SamplerSetting.from_flags("dpm++2m", False, "").options
    assert samplers.SamplerSetting.from_flags("edm", False, "").options == dict(
        d2_weight=samplers.EXACT_D2_WEIGHT, sde_eta=1.0, lower_order_final=samplers.LOWER_ORDER_FINAL,
        dynamic_threshold=0.0, churn=samplers.Churn(),
    )  # fmt: skip


@pytest.mark.parametrize("flag, value, expected", [
    ("unipc_order", 4, "--unipc_order must be 1, 2 or 3"),
    ("third_order_form", "taylor", "--third_order_form must be exact or circulated"),
    ("sde_eta", -0.1, "--sde_eta must be a number >= 0"),
    ("lower_order_final", "maybe", "--lower_order_final must be always, never or belowN"),
    ("dynamic_threshold", 99.5, r"--dynamic_threshold must be 0 \(off\) or a quantile in \(0, 1\]"),
    ("S_churn", -1.0, "--S_churn must be a number >= 0"),
    ("S_tmin", 60.0, r"--S_tmin must be a number in \[0, --S_tmax\]"),
    ("S_noise", -1.0, "--S_noise must be a number >= 0"),
])  # fmt: skip
def test_bad_setting_flags_name_the_flag_and_the_valid_values(flag, value, expected):
    with pytest.raises(ValueError, match=expected):
        samplers.SamplerSetting.from_flags("edm", False, "", **{flag: value, "S_tmax": 50.0})


def test_sample_fn_passes_the_settings():
    d = grid_diffusion(lambda_grid(6))
    from test_samplers import GaussianModel

    setting = samplers.SamplerSetting.from_flags("dpm++3m", False, "", third_order_form="circulated",
                                                 lower_order_final="never")  # fmt: skip
    out = setting.sample_fn(d)(GaussianModel(d), (32, 1, 4, 4), noise=noise(), clip_denoised=False)
    direct = solve(d, "dpm++3m", d2_weight=samplers.CIRCULATED_D2_WEIGHT, lower_order_final="never")
    assert torch.equal(out, direct)
