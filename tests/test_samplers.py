"""
Tests of guided_diffusion.samplers: DPM-Solver++ against the exact probability-flow
solution for Gaussian data, the sampler dispatch, guidance inside the solver and the
guidance interval.

For data x0 ~ N(mu, s^2) (per pixel) under x_t = alpha x0 + sigma eps, the exact
denoiser is E[x0 | x_t] = mu + alpha s^2 / (alpha^2 s^2 + sigma^2) (x_t - alpha mu), and
the probability-flow ODE keeps z = (x_t - alpha mu) / sqrt(alpha^2 s^2 + sigma^2) fixed,
so its solution between any two noise levels is known in closed form.
"""

import math

import numpy as np
import pytest
import torch

from guided_diffusion import gaussian_diffusion as gd
from guided_diffusion import samplers
from guided_diffusion.guidance import noise_level_lookup, parse_guidance_interval, within_interval
from guided_diffusion.respace import SpacedDiffusion, space_timesteps
from guided_diffusion.unet import SuperResModel, UNetModel

MU = torch.linspace(-0.6, 0.6, 16).view(1, 1, 4, 4)
S = torch.linspace(0.1, 1.3, 16).view(1, 1, 4, 4)
SHAPE = (32, 1, 4, 4)


def gaussian_x0(x: torch.Tensor, ab: torch.Tensor) -> torch.Tensor:
    """E[x0 | x_t] for x0 ~ N(MU, S^2); ab broadcastable to x."""
    alpha = ab.sqrt()
    return MU + alpha * S**2 / (ab * S**2 + 1 - ab) * (x - alpha * MU)


class GaussianModel(torch.nn.Module):
    """
    The exact model of Gaussian data under ``diffusion``: noise, x0 or posterior-mean
    prediction (by the diffusion's mean type), optionally with variance channels.

    :param alphas_cumprod: ab indexed by the timesteps the model is called with (the base
        process's for a respaced one; default the diffusion's own).
    :param time_scale: the model is called with timestep index * time_scale.
    """

    def __init__(self, diffusion, alphas_cumprod=None, learn_sigma=False, time_scale=1.0):
        super().__init__()
        self.diffusion = diffusion
        self.ab = torch.as_tensor(diffusion.alphas_cumprod if alphas_cumprod is None else alphas_cumprod)
        self.learn_sigma = learn_sigma
        self.time_scale = time_scale
        self.seen: list[torch.Tensor] = []
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x, t, **kwargs):
        self.seen.append(t.clone())
        ab = self.alpha_bar(t / self.time_scale).float().view(-1, 1, 1, 1)
        t = (t / self.time_scale).round().long()
        x0 = gaussian_x0(x, ab)
        mean_type = self.diffusion.model_mean_type
        if mean_type == gd.ModelMeanType.START_X:
            out = x0
        elif mean_type == gd.ModelMeanType.EPSILON:
            out = (x - ab.sqrt() * x0) / (1 - ab).sqrt()
        else:  # the posterior mean of the (respaced) process at its own indices
            step_map = getattr(self.diffusion, "timestep_map", None)
            index = t if step_map is None else torch.tensor([step_map.index(int(v)) for v in t])
            out, _, _ = self.diffusion.q_posterior_mean_variance(x0, x, index)
        if self.learn_sigma:
            out = torch.cat([out, torch.tanh(x)], dim=1)
        return out

    def alpha_bar(self, index: torch.Tensor) -> torch.Tensor:
        """ab at the indices; between two steps log(sigma / alpha) linear in the index (the
        EDM sampler's fractional timesteps; ``NoiseSchedule.model_time``)."""
        index = index.double()
        low = index.floor().long().clamp(0, len(self.ab) - 1)
        high = (low + 1).clamp(max=len(self.ab) - 1)
        log_sigma = 0.5 * (torch.log1p(-self.ab) - torch.log(self.ab))
        between = log_sigma[low] + (index - low) * (log_sigma[high] - log_sigma[low])
        exact = index == index.round()
        return torch.where(exact, self.ab[index.round().long()], torch.sigmoid(-2.0 * between))


def grid_diffusion(
    alphas_cumprod, mean_type=gd.ModelMeanType.EPSILON, var_type=gd.ModelVarType.FIXED_SMALL
):
    """A process whose steps have exactly the given ab (index 0 least noisy)."""
    ab = np.asarray(alphas_cumprod, dtype=np.float64)
    return gd.GaussianDiffusion(
        betas=1 - ab / np.append(1.0, ab[:-1]), model_mean_type=mean_type, model_var_type=var_type,
        loss_type=gd.LossType.MSE,
    )  # fmt: skip


def lambda_grid(num_steps: int, lam_min: float = -5.0, lam_max: float = 5.0) -> np.ndarray:
    """ab on a grid uniform in lambda = log(alpha / sigma), from lam_max (index 0) to lam_min."""
    lam = np.linspace(lam_max, lam_min, num_steps)
    return 1.0 / (1.0 + np.exp(-2.0 * lam))


def spaced(num_steps: int, base_steps=1000, schedule="cosine", **kwargs) -> SpacedDiffusion:
    return SpacedDiffusion(
        space_timesteps(base_steps, [num_steps]),
        betas=gd.get_named_beta_schedule(schedule, base_steps),
        model_mean_type=kwargs.pop("mean_type", gd.ModelMeanType.EPSILON),
        model_var_type=kwargs.pop("var_type", gd.ModelVarType.FIXED_SMALL),
        loss_type=gd.LossType.MSE,
        **kwargs,
    )


def base_alphas_cumprod(schedule: str = "cosine", base_steps: int = 1000) -> np.ndarray:
    return np.cumprod(1.0 - gd.get_named_beta_schedule(schedule, base_steps))


def noise(seed: int = 0) -> torch.Tensor:
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed))


def exact_solution(diffusion: gd.GaussianDiffusion, x_start: torch.Tensor) -> torch.Tensor:
    """What every sampler approximates: the ODE solved exactly from index T-1 to 0, then denoised."""
    ab_first = torch.tensor(diffusion.alphas_cumprod[-1]).float()
    ab_last = torch.tensor(diffusion.alphas_cumprod[0]).float()
    z = (x_start - ab_first.sqrt() * MU) / (ab_first * S**2 + 1 - ab_first).sqrt()
    x_last = ab_last.sqrt() * MU + (ab_last * S**2 + 1 - ab_last).sqrt() * z
    return gaussian_x0(x_last, ab_last)


def solve(diffusion, sampler: str, model=None, **kwargs) -> torch.Tensor:
    if model is None:
        model = GaussianModel(diffusion, kwargs.pop("alphas_cumprod", None))
    kwargs.setdefault("clip_denoised", False)
    return samplers.sample(
        diffusion, model, SHAPE, sampler=sampler, noise=noise(), device="cpu", **kwargs
    )


def solve_3m(diffusion, d2_weight: float) -> torch.Tensor:
    return solve(diffusion, "dpm++3m", d2_weight=d2_weight)


# a sampler of each solver, to run it at another order
OF_SOLVER = {"dpm++": "dpm++2m", "dpm++sde": "dpm++2m-sde", "unipc": "unipc"}


def solve_multistep(diffusion, solver: str, order: int) -> torch.Tensor:
    return solve(diffusion, OF_SOLVER[solver], order=order)


def max_error(diffusion, sample: torch.Tensor) -> float:
    return (sample - exact_solution(diffusion, noise())).abs().max().item()


# ---------------------------------------------------------------- convergence

SOLVERS = {
    "ddim": lambda d: solve(d, "ddim"),
    "dpm++2m": lambda d: solve(d, "dpm++2m"),
    "dpm++3m": lambda d: solve(d, "dpm++3m"),
    "3m exact (2 D2)": lambda d: solve_3m(d, samplers.EXACT_D2_WEIGHT),
    "3m circulated (D2)": lambda d: solve_3m(d, samplers.CIRCULATED_D2_WEIGHT),
    "unipc": lambda d: solve(d, "unipc"),
    "unipc predictor 1": lambda d: solve_multistep(d, "unipc", 1),
}


@pytest.mark.parametrize(
    "name, low, high",
    [("ddim", 0.9, 1.1), ("dpm++2m", 1.85, 2.2), ("dpm++3m", 2.7, 5.0),
     ("3m exact (2 D2)", 2.7, 5.0), ("3m circulated (D2)", 1.85, 2.4), ("unipc", 2.8, 3.3),
     ("unipc predictor 1", 1.9, 2.2)],
)  # fmt: skip
def test_deterministic_samplers_converge_with_their_order(name, low, high):
    """log2 of the error ratio between N and 2N steps on a lambda-uniform grid."""
    grids = [grid_diffusion(lambda_grid(n)) for n in (20, 40, 80)]
    errors = [max_error(d, SOLVERS[name](d)) for d in grids]
    orders = [math.log2(a / b) for a, b in zip(errors, errors[1:])]
    assert low <= orders[-1] <= high, (errors, orders)
    assert errors[-1] < errors[0]


def test_exact_third_order_beats_the_circulated_form():
    """Measured max errors at 10 / 20 / 40 / 80 / 160 steps (lambda-uniform grid, float32):
    DDIM 1.0 / 0.51 / 0.26 / 0.13 / 0.064 (order 1); 2M 0.14 / 0.064 / 0.017 / 4.1e-3 / 1.0e-3
    (order 2); 3M exact 0.64 / 0.017 / 9.2e-4 / 5.4e-5 / 3.6e-6 (order 3 or more); 3M
    circulated 0.58 / 0.039 / 6.7e-3 / 1.5e-3 / 3.4e-4 (order 2)."""
    for n in (20, 40, 80):
        d = grid_diffusion(lambda_grid(n))
        exact = max_error(d, SOLVERS["3m exact (2 D2)"](d))
        circulated = max_error(d, SOLVERS["3m circulated (D2)"](d))
        assert exact < circulated / 2, (n, exact, circulated)


def test_dpm_solver_at_20_steps_is_far_closer_than_ddim():
    """Measured max errors at 20 steps: DDIM 0.51, 2M 0.064, 3M 0.017 (lambda-uniform grid);
    on the cosine schedule respaced to 20 steps (uniform in t) DDIM 0.26, 2M 0.071, 3M 0.067."""
    d = grid_diffusion(lambda_grid(20))
    err = {s: max_error(d, solve(d, s)) for s in ("ddim", "dpm++2m", "dpm++3m")}
    assert err["dpm++2m"] < err["ddim"] / 5 and err["dpm++3m"] < err["ddim"] / 15, err
    d, ab = spaced(20), base_alphas_cumprod()
    err = {s: max_error(d, solve(d, s, alphas_cumprod=ab)) for s in ("ddim", "dpm++2m", "dpm++3m")}
    assert err["dpm++2m"] < err["ddim"] / 3 and err["dpm++3m"] < err["ddim"] / 3, err


def test_unipc_corrector_raises_the_order_and_helps_at_few_steps():
    """Measured max errors, lambda-uniform grid at 20 / 40 / 80 steps: UniPC (predictor order
    2 with corrector) 6.2e-2 / 7.4e-3 / 8.8e-4, order 3 (its predictor alone: order 2); on
    the cosine schedule respaced to 5 steps: DDIM 1.14, DPM-Solver++(2M) 0.86, UniPC 0.43."""
    d = grid_diffusion(lambda_grid(40))
    corrected, predictor = max_error(d, solve(d, "unipc")), max_error(d, solve_multistep(d, "dpm++", 2))
    assert corrected < predictor / 1.5, (corrected, predictor)
    d, ab = spaced(5), base_alphas_cumprod()
    err = {s: max_error(d, solve(d, s, alphas_cumprod=ab)) for s in ("ddim", "dpm++2m", "unipc")}
    assert err["unipc"] < err["dpm++2m"] / 1.5 < err["ddim"] / 1.5, err


def test_unipc_weights_reduce_to_dpm_solver_phi_functions():
    h = 0.7
    phi1 = math.expm1(-h)
    phi2 = phi1 / h + 1
    phi3 = phi2 / h - 0.5
    assert samplers._matching_weights([1.0], h) == pytest.approx([phi2])
    # psi_1 = phi2 and psi_2 = -2 phi3: the third-order DPM-Solver++ coefficients
    rs = [-1.0, 1.0]
    a = samplers._matching_weights(rs, h)
    assert a.sum() == pytest.approx(phi2)
    assert (a * np.array(rs)).sum() == pytest.approx(-2 * phi3)


# ---------------------------------------------------------------- the stochastic solver


def seeded(seed: int = 5):
    """A randn(x) with its own generator: the same step noise for every run."""
    generator = torch.Generator().manual_seed(seed)
    return lambda x: torch.randn(x.shape, generator=generator)


def impulse_moments(draws: int, run) -> tuple[torch.Tensor, torch.Tensor]:
    """
    The exact mean and standard deviation per pixel of a sampler's samples when, with the
    exact model and no clipping, a sample is affine in the starting noise and its ``draws``
    fresh noises: one run on unit impulses gives every coefficient. Batch element 0 has all
    noise 0, element 1 starting noise 1, element 2 + k the k-th draw 1.

    :param run: (starting noise, randn) -> the samples.
    """
    start = torch.zeros(draws + 2, 1, 4, 4)
    start[1] = 1.0
    calls = []

    def impulse(x):
        z = torch.zeros_like(x)
        z[2 + len(calls)] = 1.0
        calls.append(z)
        return z

    out = run(start, impulse)
    assert len(calls) == draws
    coefficients = (out[1:] - out[0]).double()
    return out[0].double(), coefficients.pow(2).sum(0).sqrt()


def sde_moments(diffusion, order: int, alphas_cumprod=None) -> tuple[torch.Tensor, torch.Tensor]:
    """
    The exact mean and standard deviation per pixel of SDE-DPM-Solver++'s samples of the
    Gaussian data (impulse_moments): fresh noise at every step but the last (to x0).
    """
    model = GaussianModel(diffusion, alphas_cumprod)
    return impulse_moments(diffusion.num_timesteps - 1, lambda start, randn: samplers.sample(
        diffusion, model, start.shape, sampler="dpm++2m-sde", order=order, noise=start,
        clip_denoised=False, randn=randn,
    ))  # fmt: skip


def sde_std_error(diffusion, order: int, alphas_cumprod=None) -> float:
    """
    Largest error of the samples' standard deviation: a perfect solver of the reverse SDE
    reaches index 0 with x_0 ~ N(alpha MU, alpha^2 S^2 + sigma^2), and its final data
    prediction then has standard deviation alpha S^2 / sqrt(alpha^2 S^2 + sigma^2).
    """
    _, std = sde_moments(diffusion, order, alphas_cumprod)
    ab = torch.tensor(diffusion.alphas_cumprod[0]).double()
    s2 = S[0].double() ** 2
    return (std - ab.sqrt() * s2 / (ab * s2 + 1 - ab).sqrt()).abs().max().item()


@pytest.mark.parametrize("order, low, high", [(1, 0.9, 1.1), (2, 1.85, 2.2)])
def test_sde_solver_converges_in_distribution_with_its_order(order, low, high):
    """Measured errors of the standard deviation on a lambda-uniform grid at 10 / 20 / 40 /
    80 / 160 steps: first order 0.48 / 0.28 / 0.15 / 0.078 / 0.040, 2M 0.36 / 0.13 / 0.031 /
    0.0072 / 0.0018 (weak order 2); the mean is exact to float rounding."""
    errors = []
    for n in (40, 80, 160):
        diffusion = grid_diffusion(lambda_grid(n))
        mean, _ = sde_moments(diffusion, order)
        assert (mean - MU[0]).abs().max() < 1e-4
        errors.append(sde_std_error(diffusion, order))
    orders = [math.log2(a / b) for a, b in zip(errors, errors[1:])]
    assert low <= orders[-1] <= high, (errors, orders)


def test_sde_2m_at_20_steps_is_closer_in_distribution_than_ddpm():
    """Measured on the cosine schedule respaced to 10 / 20 / 40 steps: first order (DDPM's
    fixed-small-variance step) 0.24 / 0.13 / 0.067, 2M 0.078 / 0.042 / 0.016."""
    ab = base_alphas_cumprod()
    for n in (10, 20, 40):
        first, second = (sde_std_error(spaced(n), order, ab) for order in (1, 2))
        assert second < first / 2.5, (n, first, second)


def test_first_order_sde_solver_is_ddpm_with_the_posterior_variance():
    """SDE-DPM-Solver++ of order 1 is the step to q(x_t | x_s, x0): DDIM with eta 1 and
    ancestral sampling with the fixed small variance, given the same noise."""
    ab = base_alphas_cumprod()
    diffusion = spaced(12, var_type=gd.ModelVarType.FIXED_SMALL)

    sde = solve(diffusion, "dpm++2m-sde", alphas_cumprod=ab, order=1, randn=seeded())
    ddim = solve(diffusion, "ddim", alphas_cumprod=ab, eta=1.0, randn=seeded())
    ancestral = solve(diffusion, "ancestral", alphas_cumprod=ab, randn=seeded())
    torch.testing.assert_close(sde, ancestral, atol=1e-5, rtol=1e-5)  # measured 1e-6
    # DDIM's float32 coefficient sqrt(1 - ab_prev - sigma^2) cancels: measured 6e-5 apart
    torch.testing.assert_close(sde, ddim, atol=3e-4, rtol=0)
    assert not torch.allclose(sde, solve(diffusion, "ddim", alphas_cumprod=ab), atol=1e-3)


def test_ddim_with_eta_one_over_a_long_step_is_finite():
    """1 - ab_prev - sigma^2 vanishes at eta 1 and float32 made it negative: NaN at 2 steps."""
    ab = base_alphas_cumprod()
    diffusion = spaced(2, var_type=gd.ModelVarType.FIXED_SMALL)
    torch.manual_seed(0)
    out = solve(diffusion, "ddim", alphas_cumprod=ab, eta=1.0)
    assert torch.isfinite(out).all()


def test_sde_update_without_noise_is_the_ode_solution():
    """At eta 0 the SDE step is the ODE's: first order DDIM, second order the exact
    integral of a linear x0 (phi2), which 2M approximates by the midpoint (-phi1 / 2)."""
    x, m0, m1 = torch.randn(3, 2, 5, generator=torch.Generator().manual_seed(0))
    step = samplers.SolverStep(sigma_s=0.9, alpha_t=0.6, sigma_t=0.8, lambda_t=-0.1)
    lambdas = [-0.5, -0.9]
    zero = torch.zeros_like(x)
    first = samplers.sde_dpm_solver_pp_update(x, [m0], lambdas[:1], step, zero, eta=0.0)
    torch.testing.assert_close(first, samplers.dpm_solver_pp_update(x, [m0], lambdas[:1], step))
    h, r = 0.4, 1.0
    phi1 = math.expm1(-h)
    phi2 = phi1 / h + 1
    second = samplers.sde_dpm_solver_pp_update(x, [m0, m1], lambdas, step, zero, eta=0.0)
    torch.testing.assert_close(second, first + 0.6 * phi2 / r * (m0 - m1))


def test_respaced_solver_uses_the_respaced_steps_and_the_model_sees_original_timesteps():
    diffusion = spaced(10)
    model = GaussianModel(diffusion, base_alphas_cumprod())
    solve(diffusion, "dpm++3m", model=model)
    seen = [int(t[0]) for t in model.seen]
    assert seen == sorted(diffusion.timestep_map, reverse=True)


def test_order_schedule_lower_at_the_first_and_last_steps():
    def orders(order, n):
        return [samplers.step_order(order, n - 1 - i, i) for i in range(n - 1, 0, -1)]

    assert orders(3, 6) == [1, 2, 3, 2, 1]
    assert orders(2, 4) == [1, 2, 1]
    assert orders(3, 20)[:3] == [1, 2, 3] and orders(3, 20)[-3:] == [3, 2, 1]
    assert orders(3, 2) == [1]


# ---------------------------------------------------------------- every kind of model


def test_first_order_solver_equals_ddim_and_2m_at_two_steps_too():
    diffusion = spaced(12)
    ab = base_alphas_cumprod()
    ddim = solve(diffusion, "ddim", alphas_cumprod=ab)
    first = solve(diffusion, "dpm++2m", alphas_cumprod=ab, order=1)
    torch.testing.assert_close(first, ddim, atol=1e-5, rtol=1e-5)
    two = spaced(2)
    torch.testing.assert_close(
        solve(two, "dpm++2m", alphas_cumprod=ab), solve(two, "ddim", alphas_cumprod=ab), atol=1e-5, rtol=1e-5
    )


MULTISTEP = ["dpm++2m", "dpm++3m", "dpm++2m-sde"]


@pytest.mark.parametrize("sampler", MULTISTEP)
def test_noise_x0_and_previous_x_models_of_the_same_data_agree(sampler):
    ab = base_alphas_cumprod()
    results = [
        solve(spaced(15, mean_type=mean_type), sampler, alphas_cumprod=ab, clip_denoised=True,
              randn=seeded())
        for mean_type in (gd.ModelMeanType.EPSILON, gd.ModelMeanType.START_X, gd.ModelMeanType.PREVIOUS_X)
    ]  # fmt: skip
    for other in results[1:]:
        torch.testing.assert_close(other, results[0], atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize("sampler", MULTISTEP)
def test_learned_and_fixed_variance_models_of_the_same_mean_give_the_same_samples(sampler):
    ab = base_alphas_cumprod()
    fixed = spaced(10, var_type=gd.ModelVarType.FIXED_LARGE)
    learned = spaced(10, var_type=gd.ModelVarType.LEARNED_RANGE)
    a = solve(fixed, sampler, model=GaussianModel(fixed, ab), randn=seeded())
    b = solve(learned, sampler, model=GaussianModel(learned, ab, learn_sigma=True), randn=seeded())
    assert torch.equal(a, b)


def test_clip_and_denoised_fn_apply_to_the_data_prediction():
    diffusion = spaced(8)
    model = GaussianModel(diffusion, base_alphas_cumprod())
    seen = []

    def denoised_fn(x0):
        seen.append(x0.abs().max().item())
        return x0 * 2.0

    out = samplers.sample(
        diffusion, model, SHAPE, sampler="dpm++3m", noise=noise() * 3, denoised_fn=denoised_fn,
        clip_denoised=True,
    )  # fmt: skip
    assert len(seen) == 8 and out.abs().max() <= 1.0


def tiny_unet(**kwargs) -> torch.nn.Module:
    kwargs = {
        "image_size": 8, "in_channels": 3, "model_channels": 32, "out_channels": 6, "num_res_blocks": 1,
        "attention_resolutions": (2,), "channel_mult": (1, 2), "num_head_channels": 16, **kwargs,
    }  # fmt: skip
    torch.manual_seed(0)
    model = (SuperResModel if "low_res" in kwargs.pop("kind", "") else UNetModel)(**kwargs)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))  # zero-initialised output layers would hide bugs
    return model.eval()


@pytest.mark.parametrize("kind", ["class_cond", "low_res"])
def test_real_networks_class_conditional_and_super_resolution(kind):
    diffusion = spaced(6, base_steps=100, var_type=gd.ModelVarType.LEARNED_RANGE)
    if kind == "class_cond":
        model = tiny_unet(num_classes=4)
        kwargs = {"y": torch.tensor([0, 3])}
    else:
        model = tiny_unet(kind="low_res")
        kwargs = {"low_res": torch.rand(2, 3, 4, 4) * 2 - 1}
    x_start = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    counts = samplers.EvaluationCounts()
    out = samplers.sample(
        diffusion, model, (2, 3, 8, 8), sampler="dpm++3m", noise=x_start, model_kwargs=kwargs, counts=counts
    )
    again = samplers.sample(
        diffusion, model, (2, 3, 8, 8), sampler="dpm++3m", noise=x_start, model_kwargs=kwargs
    )
    assert torch.isfinite(out).all() and out.abs().max() <= 1.0
    assert torch.equal(out, again)
    assert counts == samplers.EvaluationCounts(model=6, classifier=0)


@pytest.mark.parametrize("solver, order", [("dpm++sde", 3), ("dpm++", 4), ("unipc", 0), ("euler", 1)])
def test_solver_orders_beyond_each_solver_are_rejected(solver, order):
    with pytest.raises(ValueError, match="'dpm\\+\\+sde' of order 1 to 2"):
        samplers.dpm_solver_stepper(spaced(4), lambda x, t: x, order=order, solver=solver)


def test_unknown_sampler_names_the_valid_ones():
    with pytest.raises(ValueError, match="dpm\\+\\+2m"):
        solve(spaced(4), "euler")


# ---------------------------------------------------------------- guidance


def gradient_toward(target: float, scale: float, seen: list):
    """A cond_fn: scale times the gradient of -|x - target|^2 / 2, recording its timesteps."""

    def cond_fn(x, t, **kwargs):
        seen.append(t.clone())
        return scale * (target - x)

    return cond_fn


@pytest.mark.parametrize("sampler", samplers.SAMPLERS)
def test_guidance_scale_zero_equals_unguided(sampler):
    diffusion = spaced(8)
    ab = base_alphas_cumprod()
    torch.manual_seed(3)
    plain = solve(diffusion, sampler, alphas_cumprod=ab)
    torch.manual_seed(3)
    zero = solve(diffusion, sampler, alphas_cumprod=ab, cond_fn=gradient_toward(1.0, 0.0, []))
    torch.testing.assert_close(zero, plain, atol=1e-5, rtol=1e-5)


def test_solver_guidance_is_the_condition_score_shift():
    """At two steps both solvers are first order, so guided DPM-Solver++ equals guided DDIM,
    and a gradient towards 1 moves the samples up."""
    diffusion = spaced(2)
    ab = base_alphas_cumprod()
    seen = []
    cond_fn = gradient_toward(1.0, 2.0, seen)
    dpm = solve(diffusion, "dpm++2m", alphas_cumprod=ab, cond_fn=cond_fn)
    ddim = solve(diffusion, "ddim", alphas_cumprod=ab, cond_fn=cond_fn)
    torch.testing.assert_close(dpm, ddim, atol=1e-5, rtol=1e-5)
    assert (dpm - solve(diffusion, "dpm++2m", alphas_cumprod=ab)).mean() > 0.1
    assert [int(t[0]) for t in seen[:2]] == [999, 0]  # the classifier sees original timesteps


def evaluations(sampler: str, num_steps: int) -> int:
    """Model evaluations per image of ``num_steps`` steps: 2N - 1 for the EDM sampler (Heun)."""
    return 2 * num_steps - 1 if sampler == "edm" else num_steps


@pytest.mark.parametrize("sampler", samplers.SAMPLERS)
def test_interval_covering_every_step_equals_plain_guidance(sampler):
    diffusion = spaced(8)
    ab = base_alphas_cumprod()
    results, counts = [], []
    for interval in (None, (0.0, math.inf)):
        counts.append(samplers.EvaluationCounts())
        torch.manual_seed(5)
        results.append(
            solve(diffusion, sampler, alphas_cumprod=ab, cond_fn=gradient_toward(1.0, 1.0, []),
                  guidance_interval=interval, counts=counts[-1])
        )  # fmt: skip
    assert torch.equal(results[0], results[1])
    n = evaluations(sampler, 8)
    assert counts[0] == counts[1] == samplers.EvaluationCounts(model=n, classifier=n)


# the samplers with one evaluation per step, at the process's steps
STEP_SAMPLERS = [name for name in samplers.SAMPLERS if name != "edm"]


@pytest.mark.parametrize("sampler", STEP_SAMPLERS)
@pytest.mark.parametrize("rescale", [False, True])
def test_interval_guides_only_inside_and_skips_the_classifier_outside(sampler, rescale):
    base_steps = 500 if rescale else 1000  # rescaled, the model sees index * 2
    diffusion = spaced(10, base_steps=base_steps, rescale_timesteps=rescale)
    levels = np.sqrt((1 - diffusion.alphas_cumprod) / diffusion.alphas_cumprod)
    lo, hi = float(levels[2]), float(levels[6])  # indices 3..6 lie in (lo, hi]
    seen, counts = [], samplers.EvaluationCounts()
    scale = 1000 / base_steps if rescale else 1.0
    model = GaussianModel(diffusion, base_alphas_cumprod(base_steps=base_steps), time_scale=scale)
    cond_fn = gradient_toward(1.0, 1.0, seen)
    solve(diffusion, sampler, model=model, cond_fn=cond_fn, guidance_interval=(lo, hi), counts=counts)
    assert counts == samplers.EvaluationCounts(model=10, classifier=4)
    assert [float(t[0]) for t in seen] == [diffusion.timestep_map[i] * scale for i in (6, 5, 4, 3)]


def test_interval_covering_no_step_equals_unguided():
    diffusion = spaced(8)
    ab = base_alphas_cumprod()
    counts = samplers.EvaluationCounts()
    out = solve(diffusion, "dpm++2m", alphas_cumprod=ab, cond_fn=gradient_toward(1.0, 5.0, []),
                guidance_interval=(1e6, 1e7), counts=counts)  # fmt: skip
    torch.testing.assert_close(out, solve(diffusion, "dpm++2m", alphas_cumprod=ab), atol=1e-5, rtol=1e-5)
    assert counts.classifier == 0


def test_interval_masks_images_at_different_levels():
    diffusion = spaced(10)
    level = noise_level_lookup(diffusion)
    t = torch.tensor([diffusion.timestep_map[1], diffusion.timestep_map[8]])
    lo = float(level(t[:1])[0])  # the first image sits exactly at lo: outside
    guided = within_interval(lambda x, t: torch.ones_like(x), diffusion, (lo, math.inf))
    grad = guided(torch.zeros(2, 1, 2, 2), t)
    assert grad[0].abs().sum() == 0 and torch.equal(grad[1], torch.ones(1, 2, 2))


@pytest.mark.parametrize(
    "text, expected",
    [("", None), ("0.28,5.42", (0.28, 5.42)), ("0,inf", (0.0, math.inf)), ("0.5:2", (0.5, 2.0))],
)
def test_parse_guidance_interval(text, expected):
    assert parse_guidance_interval(text) == expected


@pytest.mark.parametrize("text", ["1", "2,1", "a,b", "-1,2", "1,2,3", "1,1", "1:2:3", "1;2"])
def test_parse_guidance_interval_rejects_bad_values(text):
    with pytest.raises(ValueError, match="--guidance_interval must be two noise levels"):
        parse_guidance_interval(text)


def test_interval_as_active_fn_for_model_wrappers():
    """The same interval restricts autoguidance: the guide runs only inside it."""
    from guided_diffusion.guidance import AutoGuidance, interval_active

    diffusion = spaced(10)
    ab = base_alphas_cumprod()
    levels = np.sqrt((1 - diffusion.alphas_cumprod) / diffusion.alphas_cumprod)
    guide = GaussianModel(diffusion, ab)
    active = interval_active(diffusion, (levels[2], levels[6]))
    wrapped = AutoGuidance(GaussianModel(diffusion, ab), guide, 2.0, active)
    solve(diffusion, "dpm++2m", model=wrapped)
    assert [int(t[0]) for t in guide.seen] == [diffusion.timestep_map[i] for i in (6, 5, 4, 3)]


def test_sample_fn_counts_batches_and_evaluations():
    diffusion = spaced(5)
    counts = samplers.EvaluationCounts()
    setting = samplers.SamplerSetting("dpm++2m", guidance_interval=(0.0, 1.0), counts=counts)
    sample_fn = setting.sample_fn(diffusion)
    model = GaussianModel(diffusion, base_alphas_cumprod())
    for _ in range(2):
        sample_fn(model, SHAPE, noise=noise(), clip_denoised=False, cond_fn=gradient_toward(0.0, 1.0, []))
    inside = int((np.sqrt((1 - diffusion.alphas_cumprod) / diffusion.alphas_cumprod) <= 1.0).sum())
    assert counts == samplers.EvaluationCounts(model=10, classifier=2 * inside, batches=2)
    assert counts.per_image() == f"model evaluations / classifier evaluations per image: 5 / {inside}"


@pytest.mark.parametrize(
    "name, use_ddim, expected",
    [("ancestral", False, "ancestral"), ("ancestral", True, "ddim"), ("ddim", True, "ddim"),
     ("dpm++3m", False, "dpm++3m")],
)  # fmt: skip
def test_sampler_from_flags(name, use_ddim, expected):
    assert samplers.sampler_from_flags(name, use_ddim) == expected


def test_sampler_from_flags_rejects_unknown_and_conflicting():
    with pytest.raises(ValueError, match="--sampler must be one of ancestral, ddim, dpm"):
        samplers.sampler_from_flags("dpm++", False)
    with pytest.raises(ValueError, match="--use_ddim True selects DDIM and conflicts with --sampler dpm"):
        samplers.sampler_from_flags("dpm++2m", True)


@pytest.mark.parametrize("sampler", ["dpm++2m", "dpm++3m", "dpm++2m-sde", "unipc"])
def test_guided_x0_is_clipped_like_the_unguided_one(sampler):
    # At t = T of the cosine schedule sqrt(alpha_bar) ~ 5e-5: a guidance shift of the noise
    # prediction moves x0 by ~1e4. The multistep history must hold the clipped x0, as it does
    # without guidance, or the later steps carry the 1e4 on (seen as FID 300 on the digits).
    diffusion = spaced(20)
    guided = dict(cond_fn=lambda x, t, **kwargs: torch.full_like(x, 0.05), clip_denoised=True,
                  alphas_cumprod=base_alphas_cumprod())
    sample = solve(diffusion, sampler, randn=seeded(), **guided)
    unguided = solve(diffusion, sampler, randn=seeded(), **dict(guided, cond_fn=None))
    shift = (sample - unguided).abs().mean()
    assert 0 < shift < 0.2  # a weak guidance moves the samples a little, not to the clip
