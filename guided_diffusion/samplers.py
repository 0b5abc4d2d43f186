"""
Samplers over a GaussianDiffusion's own (possibly respaced) timesteps: the one dispatch
every sampling program uses (``sample``, names in ``SAMPLERS``) and two fast deterministic
multistep solvers of the probability-flow ODE: DPM-Solver++ (Lu et al. 2022) and UniPC
(Zhao et al. 2023).

Notation, for a VP process with alphas_cumprod ab: alpha_t = sqrt(ab_t), sigma_t =
sqrt(1 - ab_t), lambda_t = log(alpha_t / sigma_t), which grows as t goes to 0. In the
data-prediction form the exact solution of the ODE from s to t (t < s, h = lambda_t -
lambda_s > 0) is

    x_t = (sigma_t / sigma_s) x_s + sigma_t * int_{lambda_s}^{lambda_t} e^lambda x0(lambda) dlambda.

Writing x0(lambda) = m0 + u x0' + u^2 / 2 x0'' + ... with u = lambda - lambda_s and
integrating term by term (sigma_t e^lambda_s = alpha_t e^-h):

    x_t = (sigma_t / sigma_s) x_s - alpha_t phi1 m0 + alpha_t phi2 (h x0') - alpha_t phi3 (h^2 x0'')

with phi1 = expm1(-h), phi2 = phi1 / h + 1, phi3 = phi2 / h - 1/2. A k-th order multistep
solver estimates h x0' (and h^2 x0'') from the last k data predictions.

More generally the remainder is alpha_t * sum_k x0^(k) h^k psi_k / k!, with psi_k =
h * integral_0^1 e^(h (v - 1)) v^k dv (psi_1 = phi2). Given predictions m_j at
lambda_s + r_j h, the combination sum_j a_j (m_j - m0) / r_j matches it up to x0^(p) when
sum_j a_j r_j^(k-1) = psi_k for k = 1..p: UniPC's predictor uses earlier points (r_j < 0), its
corrector adds the prediction at the new point (r = 1), raising the order by one at no cost.

The reverse SDE has the same kind of solution (the stochastic form of DPM-Solver++, Lu et
al. 2022; "sde-dpmsolver++" in common implementations): with fresh noise z ~ N(0, I) and
eta = 1,

    x_t = (sigma_t / sigma_s) e^(-eta h) x_s + alpha_t (1 + eta) int_0^h e^(-(1 + eta)(h - u)) x0(u) du
          + sigma_t sqrt(-expm1(-2 eta h)) z,

and eta = 0 gives the ODE's. With x0 constant the integral term is alpha_t (-expm1(-(1 + eta) h))
m0, which at eta = 1 is exactly the posterior q(x_t | x_s, x0 = m0): DDPM's step with the
fixed small variance, i.e. DDIM with eta 1. The linear term adds alpha_t (1 + expm1(-(1 + eta)
h) / ((1 + eta) h)) (h x0'), with h x0' estimated from the last two predictions as in 2M
(common implementations use the midpoint weight (-expm1(-2h)) / 2 instead, equal to first order
in h).

The EDM sampler (Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based
Generative Models", Algorithm 2) runs in the variance-exploding view of the same process:
x_edm = x / alpha at the noise level sigma_edm = sigma / alpha, with the denoiser
D(x_edm; sigma_edm) = x_edm - sigma_edm eps(x_edm / sqrt(1 + sigma_edm^2), t(sigma_edm)),
which is the data prediction x0 above; t(sigma_edm) is the (fractional) timestep of the base
process at that level (``NoiseSchedule.model_time``), since its churn visits levels between
the steps.
"""

import math
from dataclasses import dataclass, field
from typing import Callable, NamedTuple, Optional, Sequence

import numpy as np
import torch

from . import gaussian_diffusion as gd
from . import guidance
from .gaussian_diffusion import GaussianDiffusion, StepFn, timesteps


class Sampler(NamedTuple):
    """A registry entry: the update rule (solver) a sampler name runs, at which order."""

    solver: str
    order: int


# the one registry: sampler name -> its solver and order
SAMPLERS: dict[str, Sampler] = {
    "ancestral": Sampler("ancestral", 1),  # Ho et al. 2020, Algorithm 2
    "ddim": Sampler("ddim", 1),  # Song et al. 2021
    "dpm++2m": Sampler("dpm++", 2),  # Lu et al. 2022, Algorithm 2
    "dpm++3m": Sampler("dpm++", 3),  # the third order of the module docstring
    "dpm++2m-sde": Sampler("dpm++sde", 2),  # the stochastic form, weak order 2
    "unipc": Sampler("unipc", 2),  # Zhao et al. 2023: order-2 predictor + corrector
    "edm": Sampler("edm", 2),  # Karras et al. 2022, Algorithm 2 (Heun; 2 evaluations a step)
}
# solver -> its highest order (UniPC: its predictor's)
MAX_ORDER = {"ancestral": 1, "ddim": 1, "dpm++": 3, "dpm++sde": 2, "unipc": 3, "edm": 2}
# The weight of D2 in the third-order update: 2 is the Taylor expansion's (order 3); 1 is
# the widely circulated "3M" form, which tests/test_samplers.py measures at order 2.
EXACT_D2_WEIGHT = 2.0
CIRCULATED_D2_WEIGHT = 1.0
THIRD_ORDER_FORMS = {"exact": EXACT_D2_WEIGHT, "circulated": CIRCULATED_D2_WEIGHT}
# When the multistep solvers lower their order at the last steps (``lowers_final_steps``):
# "always", "never", or "belowN" (only on grids of fewer than N steps).
LOWER_ORDER_FINAL = "always"


class Churn(NamedTuple):
    """
    The EDM sampler's stochasticity (Karras et al. 2022, Algorithm 2): at the levels
    S_tmin <= sigma <= S_tmax each step first adds noise up to sigma (1 + gamma), gamma =
    min(S_churn / N, sqrt(2) - 1), its standard deviation scaled by S_noise. S_churn 0 is the
    deterministic Heun sampler (Algorithm 1).
    """

    S_churn: float = 0.0
    S_tmin: float = 0.0
    S_tmax: float = math.inf
    S_noise: float = 1.0


# ---------------------------------------------------------------- evaluation counts


@dataclass
class EvaluationCounts:
    """Calls of the model and of the classifier gradient; each call covers a whole batch."""

    model: int = 0
    classifier: int = 0
    batches: int = 0  # sampling loops run (counted by ``SamplerSetting.sample_fn``)

    def per_image(self) -> str:
        """One line for the log: evaluations per image (the calls of one batch)."""
        batches = max(self.batches, 1)
        return (
            f"model evaluations / classifier evaluations per image: "
            f"{self.model / batches:g} / {self.classifier / batches:g}"
        )


class _Counted:
    """Calls ``fn`` and adds one to ``counts.<name>`` per call; keeps ``parameters()``."""

    def __init__(self, fn: Callable, counts: EvaluationCounts, name: str):
        self.fn, self.counts, self.name = fn, counts, name

    def parameters(self):
        return self.fn.parameters()

    def __call__(self, *args, **kwargs):
        setattr(self.counts, self.name, getattr(self.counts, self.name) + 1)
        return self.fn(*args, **kwargs)


# ---------------------------------------------------------------- DPM-Solver++ and UniPC


class SolverStep(NamedTuple):
    """A multistep solver's step from the newest point s to the target point t."""

    sigma_s: float
    alpha_t: float
    sigma_t: float  # > 0
    lambda_t: float


def dpm_solver_pp_update(
    x: torch.Tensor,
    x0s: Sequence[torch.Tensor],
    lambdas: Sequence[float],
    step: SolverStep,
    d2_weight: float = EXACT_D2_WEIGHT,
) -> torch.Tensor:
    """
    One multistep DPM-Solver++ step in the data-prediction form (Lu et al. 2022,
    "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion Probabilistic Models"):
    order len(x0s), first order (= DDIM, eta 0), second order (Algorithm 2, "2M") or the
    third order of the module docstring's expansion.

    :param x: [N x ...] the sample at the newest point s.
    :param x0s: 1 to 3 data predictions [N x ...], newest (at s) first.
    :param lambdas: their lambda values, same order (increasing towards s).
    :param step: sigma at s and alpha, sigma, lambda at the target point t.
    :param d2_weight: weight of D2 (~ h^2 x0'' / 2) at third order: 2 exact, 1 circulated.
    :return: [N x ...] the sample at t.
    """
    sigma_s, alpha_t, sigma_t, lambda_t = step
    m0 = x0s[0]
    h = lambda_t - lambdas[0]
    phi1 = math.expm1(-h)
    x_t = (sigma_t / sigma_s) * x - (alpha_t * phi1) * m0
    if len(x0s) == 2:
        r = (lambdas[0] - lambdas[1]) / h
        x_t = x_t - (alpha_t * phi1 / (2 * r)) * (m0 - x0s[1])  # D - m0 = (m0 - m1) / (2r)
    elif len(x0s) == 3:
        m1, m2 = x0s[1], x0s[2]
        r0, r1 = (lambdas[0] - lambdas[1]) / h, (lambdas[1] - lambdas[2]) / h
        d1_0, d1_1 = (m0 - m1) / r0, (m1 - m2) / r1  # divided differences, ~ h x0'
        d1 = d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1)  # ~ h x0'
        d2 = (d1_0 - d1_1) / (r0 + r1)  # ~ h^2 x0'' / 2
        phi2 = phi1 / h + 1.0
        phi3 = phi2 / h - 0.5
        x_t = x_t + (alpha_t * phi2) * d1 - (d2_weight * alpha_t * phi3) * d2
    elif len(x0s) != 1:
        raise ValueError(f"DPM-Solver++ steps have order 1, 2 or 3, got {len(x0s)} predictions")
    return x_t


def sde_dpm_solver_pp_update(
    x: torch.Tensor,
    x0s: Sequence[torch.Tensor],
    lambdas: Sequence[float],
    step: SolverStep,
    noise: torch.Tensor,
    eta: float = 1.0,
) -> torch.Tensor:
    """
    One multistep step of the stochastic DPM-Solver++ (the module docstring's SDE solution):
    first order (= DDPM's posterior step, DDIM with eta 1, when ``eta`` is 1) or second order
    ("SDE-DPM-Solver++(2M)", the linear term integrated exactly).

    :param x: [N x ...] the sample at the newest point s.
    :param x0s: 1 or 2 data predictions [N x ...], newest (at s) first.
    :param lambdas: their lambda values, same order.
    :param step: sigma at s and alpha, sigma, lambda at the target point t.
    :param noise: [N x ...] standard normal noise for this step.
    :param eta: the amount of noise: 1 the reverse SDE, 0 the probability-flow ODE.
    :return: [N x ...] the sample at t.
    """
    if len(x0s) not in (1, 2):
        raise ValueError(f"SDE-DPM-Solver++ steps have order 1 or 2, got {len(x0s)} predictions")
    sigma_s, alpha_t, sigma_t, lambda_t = step
    m0 = x0s[0]
    h = lambda_t - lambdas[0]
    decay = -math.expm1(-(1.0 + eta) * h)  # 1 - e^-(1 + eta) h
    x_t = (sigma_t / sigma_s * math.exp(-eta * h)) * x + (alpha_t * decay) * m0
    if len(x0s) == 2:
        r = (lambdas[0] - lambdas[1]) / h
        linear = 1.0 - decay / ((1.0 + eta) * h)  # ~ h/2 at eta 0, ~ h at eta 1
        x_t = x_t + (alpha_t * linear / r) * (m0 - x0s[1])
    return x_t + (sigma_t * math.sqrt(-math.expm1(-2.0 * eta * h))) * noise


def _matching_weights(rs: Sequence[float], h: float) -> np.ndarray:
    """
    Solve sum_j a_j r_j^(k-1) = psi_k (k = 1..len(rs)) for the weights a (module docstring),
    with psi_k = h J_k from J_0 = (1 - e^-h) / h and J_k = (1 - k J_{k-1}) / h.
    """
    if not rs:
        return np.zeros(0)
    j, psi = -math.expm1(-h) / h, []
    for k in range(1, len(rs) + 1):
        j = (1.0 - k * j) / h
        psi.append(h * j)
    vandermonde = np.array([[r ** (k - 1) for r in rs] for k in range(1, len(rs) + 1)])
    return np.linalg.solve(vandermonde, np.array(psi))


def unipc_update(
    x: torch.Tensor, x0s: Sequence[torch.Tensor], lambdas: Sequence[float], step: SolverStep
) -> torch.Tensor:
    """
    One UniPC step in the data-prediction form (Zhao et al. 2023, "UniPC: A Unified
    Predictor-Corrector Framework for Fast Sampling of Diffusion Models"), with weights from
    the exact order conditions (the module docstring; no B(h) choice is then needed). As the
    predictor, ``x0s`` holds the prediction at s and earlier ones; as the corrector it also
    holds the prediction at t, and the result replaces the predicted x_t.

    :param x: [N x ...] the sample at s.
    :param x0s: data predictions [N x ...], the one at s first, the others in any order.
    :param lambdas: their lambda values.
    :param step: as for dpm_solver_pp_update.
    :return: [N x ...] the sample at t.
    """
    sigma_s, alpha_t, sigma_t, lambda_t = step
    m0, h = x0s[0], lambda_t - lambdas[0]
    x_t = (sigma_t / sigma_s) * x - (alpha_t * math.expm1(-h)) * m0
    rs = [(lam - lambdas[0]) / h for lam in lambdas[1:]]
    for a, r, m in zip(_matching_weights(rs, h), rs, x0s[1:]):
        x_t = x_t + (alpha_t * a / r) * (m - m0)
    return x_t


def step_order(order: int, steps_done: int, index: int, lower_final: bool = True) -> int:
    """
    The order of the multistep step from process index ``index`` to ``index - 1``: lower
    at the first steps for lack of history, and, with ``lower_final``, at the last ones as in
    the solver authors' "lower_order_final": the step into index 0 is first order and the one
    before at most second. Index 0 of an ADM process sits at a tiny noise level, so on a grid
    uniform in t the last interval in lambda is several times longer than the one before it
    and extrapolating over it can cost accuracy (measured in tests/test_samplers.py).

    :param steps_done: steps before this one.
    :param index: the process index the step starts from (>= 1).
    :param lower_final: lower the order at the last steps.
    """
    return max(1, min(order, steps_done + 1, index if lower_final else order))


def lowers_final_steps(rule: str, num_steps: int) -> bool:
    """
    :param rule: "always", "never" or "belowN": lower the order at the last steps only on a
        grid of fewer than N steps (diffusers: 15, the DPM-Solver authors' code: 10).
    :param num_steps: the grid's step count.
    :raises ValueError: another rule, naming --lower_order_final.
    """
    if rule in ("always", "never"):
        return rule == "always"
    count = rule[len("below"):]
    if not rule.startswith("below") or not count.isdigit():
        raise ValueError(
            f"--lower_order_final must be always, never or belowN (e.g. below15), got {rule!r}"
        )
    return num_steps < int(count)


def data_prediction(
    diffusion: GaussianDiffusion,
    model: Callable,
    *,
    clip_denoised: bool = True,
    denoised_fn: Optional[Callable] = None,
    cond_fn: Optional[Callable] = None,
    model_kwargs: Optional[dict] = None,
) -> Callable[[torch.Tensor, int], torch.Tensor]:
    """
    The model as a data predictor x0(x_t, i) at process index i: ``p_mean_variance``'s x0,
    with classifier guidance as a shift of the noise prediction (``condition_score``:
    eps - sigma_t grad log p(y | x_t)); the guided x0 is processed (denoised_fn, clip) like
    the unguided one, since near t = T it is the shift divided by sqrt(alpha_bar) (~1e4).

    :return: x0_fn(x [N x ...], i) -> [N x ...].
    """

    def x0_fn(x: torch.Tensor, i: int) -> torch.Tensor:
        t = timesteps(i, x)
        out = diffusion.p_mean_variance(model, x, t, clip_denoised, denoised_fn, model_kwargs)
        if cond_fn is None:
            return out["pred_xstart"]
        out = diffusion.condition_score(cond_fn, out, x, t, model_kwargs=model_kwargs)
        return gd.processed_xstart(out["pred_xstart"], clip_denoised, denoised_fn)

    return x0_fn


def dpm_solver_stepper(
    diffusion: GaussianDiffusion,
    model: Callable,
    *,
    order: int = 2,
    solver: str = "dpm++",
    clip_denoised: bool = True,
    denoised_fn: Optional[Callable] = None,
    cond_fn: Optional[Callable] = None,
    model_kwargs: Optional[dict] = None,
    d2_weight: float = EXACT_D2_WEIGHT,
    randn: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
    sde_eta: float = 1.0,
    lower_order_final: str = LOWER_ORDER_FINAL,
) -> StepFn:
    """
    A multistep solver as a step function of the one sampling loop: called at indices T-1,
    ..., 0 of the (respaced) process, it takes the data prediction there and steps to the
    next index; from index 0 it returns that prediction (sigma = 0). One model evaluation
    per step.

    :param order: 1 to ``MAX_ORDER[solver]``: DPM-Solver++'s order, UniPC's predictor order
        (its corrector adds one).
    :param solver: "dpm++" (Lu et al. 2022), "dpm++sde" (its stochastic form) or "unipc"
        (Zhao et al. 2023).
    :param d2_weight: see dpm_solver_pp_update.
    :param randn: the stochastic solver's step noise, randn(x) -> noise like x (default
        torch.randn_like).
    :param sde_eta: the stochastic solver's amount of noise (1: the reverse SDE, 0: the ODE).
    :param lower_order_final: "always", "never" or "belowN" (``lowers_final_steps``).
    :return: step(x [N x ...], i) -> dict with "sample" and "pred_xstart".
    """
    _check_order(solver, order)
    x0_fn = data_prediction(
        diffusion, model, clip_denoised=clip_denoised, denoised_fn=denoised_fn, cond_fn=cond_fn,
        model_kwargs=model_kwargs,
    )  # fmt: skip
    schedule = diffusion.schedule
    alpha, sigma, lam = (v.tolist() for v in (schedule.alpha, schedule.sigma, schedule.log_snr))
    num_steps = diffusion.num_timesteps
    lower_final = lowers_final_steps(lower_order_final, num_steps)
    history: list[tuple[torch.Tensor, float]] = []  # (x0, lambda), newest first
    last_step: Optional[tuple[torch.Tensor, int]] = None  # (x at s, order) for the corrector
    next_index = num_steps - 1

    def step(x: torch.Tensor, i: int) -> dict:
        nonlocal next_index, last_step
        if i != next_index:
            raise RuntimeError(f"solver steps run once from index {num_steps - 1} to 0, got {i}")
        next_index -= 1
        x0 = x0_fn(x, i)
        if solver == "unipc" and last_step is not None and i > 0:  # UniC: correct x_t
            x_s, k = last_step
            x0s, lambdas = zip(history[0], (x0, lam[i]), *history[1:k])
            corrected = SolverStep(sigma[i + 1], alpha[i], sigma[i], lam[i])
            x = unipc_update(x_s, x0s, lambdas, corrected)
        history.insert(0, (x0, lam[i]))
        del history[order:]
        if i == 0:  # the step to sigma = 0 is first order: the data prediction itself
            return {"sample": x0, "pred_xstart": x0}
        k = step_order(order, num_steps - 1 - i, i, lower_final)
        last_step = (x, k)
        x0s, lambdas = zip(*history[:k])
        target = SolverStep(sigma[i], alpha[i - 1], sigma[i - 1], lam[i - 1])
        if solver == "unipc":
            sample = unipc_update(x, x0s, lambdas, target)
        elif solver == "dpm++sde":
            step_noise = (randn or torch.randn_like)(x)
            sample = sde_dpm_solver_pp_update(x, x0s, lambdas, target, step_noise, sde_eta)
        else:
            sample = dpm_solver_pp_update(x, x0s, lambdas, target, d2_weight)
        return {"sample": sample, "pred_xstart": x0}

    return step


# ---------------------------------------------------------------- the EDM sampler


def edm_denoiser(
    diffusion: GaussianDiffusion,
    model: Callable,
    *,
    clip_denoised: bool = True,
    denoised_fn: Optional[Callable] = None,
    cond_fn: Optional[Callable] = None,
    model_kwargs: Optional[dict] = None,
) -> Callable[[torch.Tensor, float, float], torch.Tensor]:
    """
    An ADM model as the EDM denoiser D(x_edm; sigma) (module docstring): the model called
    directly at x_edm / sqrt(1 + sigma^2) and the base process's timestep t(sigma), which may
    lie between its steps; classifier guidance as in ``data_prediction`` (the condition_score
    shift eps - sqrt(1 - ab) grad log p(y | x_t), the guided x0 processed like the unguided one).

    :return: denoise(x_edm [N x C x ...], sigma, t) -> x0 [N x C x ...], with ``t`` the model's
        timestep at sigma (``NoiseSchedule.model_time``).
    :raises ValueError: a model predicting the previous sample (--predict_xprev).
    """
    if diffusion.model_mean_type == gd.ModelMeanType.PREVIOUS_X:
        raise ValueError("--sampler edm needs a model that predicts the noise or x_0, "
                         "not the previous sample")
    kwargs = model_kwargs or {}

    def denoise(x_edm: torch.Tensor, sigma: float, t: float) -> torch.Tensor:
        scale = 1.0 / math.sqrt(1.0 + sigma**2)  # alpha = sqrt(ab) at this level
        x = x_edm * scale
        timesteps = torch.full((x.shape[0],), t, dtype=torch.float32, device=x.device)
        out = model(x, timesteps, **kwargs)[:, : x.shape[1]]  # without variance channels
        if diffusion.model_mean_type == gd.ModelMeanType.START_X:
            x0 = gd.processed_xstart(out, clip_denoised, denoised_fn)
        else:
            x0 = gd.processed_xstart(x_edm - sigma * out, clip_denoised, denoised_fn)
        if cond_fn is None:
            return x0
        eps = (x_edm - x0) / sigma
        eps = eps - (sigma * scale) * cond_fn(x, timesteps, **kwargs)  # sigma_vp = sigma alpha
        return gd.processed_xstart(x_edm - sigma * eps, clip_denoised, denoised_fn)

    return denoise


def edm_stepper(
    diffusion: GaussianDiffusion,
    model: Callable,
    *,
    churn: Churn = Churn(),
    randn: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
    **denoiser_kwargs,
) -> StepFn:
    """
    Implements Algorithm 2 (stochastic Heun steps) of Karras et al. (2022) on the noise
    levels sigma / alpha of the process's steps, then 0: a step of the one sampling loop
    goes from index i to i - 1 (from index 0 to sigma 0, an Euler step, which returns the
    denoised sample). The loop's samples stay in the process's own scale, x = x_edm alpha.
    N steps cost 2N - 1 model evaluations.

    :param churn: S_churn, S_tmin, S_tmax, S_noise (``Churn``; the default is Heun's ODE).
    :param randn: the churn's noise, randn(x) -> noise like x (default torch.randn_like);
        drawn only at the steps that churn.
    :param denoiser_kwargs: clip_denoised, denoised_fn, cond_fn, model_kwargs (``edm_denoiser``).
    :return: step(x [N x ...], i) -> dict with "sample" and "pred_xstart".
    """
    denoise = edm_denoiser(diffusion, model, **denoiser_kwargs)
    schedule = diffusion.schedule
    sigmas, times = schedule.edm_sigma.tolist(), schedule.model_timesteps.tolist()
    gamma_max = min(churn.S_churn / len(sigmas), math.sqrt(2.0) - 1.0)

    def step(x: torch.Tensor, i: int) -> dict:
        sigma, sigma_next = sigmas[i], (sigmas[i - 1] if i > 0 else 0.0)
        x_cur = x * math.sqrt(1.0 + sigma**2)  # to the EDM scale
        # increase the noise temporarily
        gamma = gamma_max if churn.S_tmin <= sigma <= churn.S_tmax else 0.0
        sigma_hat = sigma * (1.0 + gamma)
        x_hat, t_hat = x_cur, times[i]
        if gamma > 0:
            noise = (randn or torch.randn_like)(x)
            x_hat = x_cur + math.sqrt(sigma_hat**2 - sigma**2) * churn.S_noise * noise
            t_hat = schedule.model_time(sigma_hat)
        # Euler step from sigma_hat to sigma_next
        x0 = denoise(x_hat, sigma_hat, t_hat)
        d = (x_hat - x0) / sigma_hat
        x_next = x_hat + (sigma_next - sigma_hat) * d
        if sigma_next == 0:
            return {"sample": x_next, "pred_xstart": x0}
        # second-order correction
        d_prime = (x_next - denoise(x_next, sigma_next, times[i - 1])) / sigma_next
        x_next = x_hat + (sigma_next - sigma_hat) * (0.5 * d + 0.5 * d_prime)
        return {"sample": x_next / math.sqrt(1.0 + sigma_next**2), "pred_xstart": x0}

    return step


# ---------------------------------------------------------------- dynamic thresholding


def dynamic_threshold(x0: torch.Tensor, percentile: float) -> torch.Tensor:
    """
    Dynamic thresholding (Saharia et al. 2022, "Photorealistic Text-to-Image Diffusion Models
    with Deep Language Understanding", section 2.3): per image s = max(1, the ``percentile``
    quantile of |x0|), x0 <- clip(x0, -s, s) / s, which keeps high guidance scales from
    saturating the pixels.

    :param x0: [N x ...] data predictions.
    :param percentile: p in (0, 1] (Imagen: 0.995); the quantile interpolates linearly
        between the sorted values, as torch.quantile does.
    :return: [N x ...] the thresholded predictions.
    """
    flat = x0.detach().abs().reshape(x0.shape[0], -1).float()  # (N, D)
    ordered = flat.sort(dim=1).values
    position = percentile * (ordered.shape[1] - 1)
    low = int(math.floor(position))
    high = min(low + 1, ordered.shape[1] - 1)
    quantile = ordered[:, low] + (position - low) * (ordered[:, high] - ordered[:, low])
    s = quantile.clamp(min=1.0).to(x0.dtype).view(-1, *([1] * (x0.dim() - 1)))
    return torch.maximum(torch.minimum(x0, s), -s) / s


def thresholded(denoised_fn: Optional[Callable], percentile: float) -> Optional[Callable]:
    """:return: ``denoised_fn`` followed by ``dynamic_threshold`` (``denoised_fn`` at p 0)."""
    if not percentile:
        return denoised_fn
    if denoised_fn is None:
        return lambda x0: dynamic_threshold(x0, percentile)
    return lambda x0: dynamic_threshold(denoised_fn(x0), percentile)


# ---------------------------------------------------------------- the samplers by name


def _check_order(solver: str, order: int) -> None:
    if order not in range(1, MAX_ORDER.get(solver, 0) + 1):
        valid = ", ".join(f"{name!r} of order 1 to {top}" for name, top in MAX_ORDER.items())
        raise ValueError(f"expected solver {valid}; got {solver!r}, {order}")


def _check_sampler(sampler: str) -> None:
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; expected one of {', '.join(SAMPLERS)}")


def stepper(
    diffusion: GaussianDiffusion,
    model: Callable,
    sampler: str = "ancestral",
    *,
    order: Optional[int] = None,
    eta: float = 0.0,
    clip_denoised: bool = True,
    denoised_fn: Optional[Callable] = None,
    cond_fn: Optional[Callable] = None,
    model_kwargs: Optional[dict] = None,
    randn: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
    d2_weight: float = EXACT_D2_WEIGHT,
    sde_eta: float = 1.0,
    lower_order_final: str = LOWER_ORDER_FINAL,
    churn: Churn = Churn(),
) -> StepFn:
    """
    The step function of one of ``SAMPLERS`` for the one sampling loop
    (``gaussian_diffusion.sample_loop_progressive``): "ancestral" is ``p_sample`` (Ho et al.
    2020), "ddim" is ``ddim_sample`` with ``eta`` (Song et al. 2021), "edm" is
    ``edm_stepper`` (Karras et al. 2022), the others are ``dpm_solver_stepper``'s solvers.

    :param order: the solver's order instead of the sampler's own (1 to its MAX_ORDER).
    :param d2_weight: the third-order form (see dpm_solver_pp_update).
    :param sde_eta: dpm++2m-sde's amount of noise (1: the reverse SDE).
    :param lower_order_final: when the multistep solvers lower the order at the last steps
        (``lowers_final_steps``).
    :param churn: the EDM sampler's stochasticity (``Churn``; default deterministic).
    :return: step(x, i) -> dict with "sample" and "pred_xstart".
    """
    _check_sampler(sampler)
    solver, default_order = SAMPLERS[sampler]
    order = default_order if order is None else order
    _check_order(solver, order)
    common = dict(clip_denoised=clip_denoised, denoised_fn=denoised_fn, cond_fn=cond_fn,
                  model_kwargs=model_kwargs, randn=randn)
    if solver == "ancestral":
        return lambda x, i: diffusion.p_sample(model, x, timesteps(i, x), **common)
    if solver == "ddim":
        return lambda x, i: diffusion.ddim_sample(model, x, timesteps(i, x), eta=eta, **common)
    if solver == "edm":
        return edm_stepper(diffusion, model, churn=churn, **common)
    return dpm_solver_stepper(
        diffusion, model, order=order, solver=solver, d2_weight=d2_weight, sde_eta=sde_eta,
        lower_order_final=lower_order_final, **common,
    )  # fmt: skip


def sample_progressive(
    diffusion: GaussianDiffusion,
    model: Callable,
    shape: Sequence[int],
    *,
    sampler: str = "ancestral",
    guidance_interval: Optional[tuple[float, float]] = None,
    counts: Optional[EvaluationCounts] = None,
    noise: Optional[torch.Tensor] = None,
    device=None,
    progress: bool = False,
    dynamic_threshold: float = 0.0,
    **step_kwargs,
):
    """
    Like ``sample``, but yield the output dict of every step.
    """
    if dynamic_threshold:
        step_kwargs["denoised_fn"] = thresholded(step_kwargs.get("denoised_fn"), dynamic_threshold)
    cond_fn = step_kwargs.get("cond_fn")
    if counts is not None:
        model = _Counted(model, counts, "model")
        cond_fn = cond_fn and _Counted(cond_fn, counts, "classifier")
    if cond_fn is not None and guidance_interval is not None:
        cond_fn = guidance.within_interval(cond_fn, diffusion, guidance_interval)
    step = stepper(diffusion, model, sampler, **{**step_kwargs, "cond_fn": cond_fn})
    x = gd.starting_noise(shape, noise, device, step_kwargs.get("randn"), model)
    indices = range(diffusion.num_timesteps - 1, -1, -1)
    return gd.sample_loop_progressive(step, x, indices, progress, desc=sampler)


def sample(
    diffusion: GaussianDiffusion, model: Callable, shape: Sequence[int], **kwargs
) -> torch.Tensor:
    """
    Draw a batch of samples with one of ``SAMPLERS`` over every timestep of ``diffusion``
    (one model evaluation per timestep; "edm": two, but one at the last).

    :param shape: (N, C, H, W).
    :param sampler: a name of ``SAMPLERS`` (default "ancestral").
    :param order: the solver's order instead of the sampler's own.
    :param eta: DDIM's noise (0: deterministic).
    :param guidance_interval: (lo, hi): call ``cond_fn`` only where sigma_t / alpha_t lies
        in (lo, hi] (Kynkaanniemi et al. 2024); None guides at every step.
    :param counts: if given, the model and classifier calls are added to it.
    :param dynamic_threshold: p of dynamic thresholding (``dynamic_threshold``), 0 for none.
    :param kwargs: the ``stepper`` settings (``d2_weight``, ``sde_eta``, ``lower_order_final``,
        ``churn``), and ``noise`` (the starting noise, default from ``randn`` or
        torch.randn), ``clip_denoised``, ``denoised_fn``, ``cond_fn`` (guidance gradient of
        log p(y | x_t), called with the model's timesteps), ``model_kwargs``, ``device``,
        ``progress`` and ``randn`` (randn(x) -> noise like x, the source of the starting
        noise and of the stochastic samplers' step noise).
    :return: [N x C x H x W] samples.
    """
    return gd.last(sample_progressive(diffusion, model, shape, **kwargs))


def sampler_from_flags(sampler: str, use_ddim: bool) -> str:
    """
    The sampler that ``--sampler`` and the original ``--use_ddim`` select together:
    ``--use_ddim True`` means "ddim" unless another sampler is named.

    :raises ValueError: an unknown name, or ``--use_ddim True`` with a non-DDIM sampler.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"--sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
    if use_ddim and sampler not in ("ancestral", "ddim"):
        raise ValueError(f"--use_ddim True selects DDIM and conflicts with --sampler {sampler}")
    return "ddim" if use_ddim else sampler


# the sampling programs' flags that set a SamplerSetting beyond --sampler (flags.py)
SETTING_FLAGS = ("unipc_order", "third_order_form", "sde_eta", "lower_order_final",
                 "dynamic_threshold", "S_churn", "S_tmin", "S_tmax", "S_noise")


@dataclass
class SamplerSetting:
    """
    The sampler of a run, as ``--sampler``, ``--use_ddim``, ``--guidance_interval`` and the
    flags of ``SETTING_FLAGS`` set it, with the evaluation counts of every sample_fn it makes.
    """

    name: str = "ancestral"
    guidance_interval: Optional[tuple[float, float]] = None
    counts: EvaluationCounts = field(default_factory=EvaluationCounts)
    # ``sample``'s keyword arguments: order, d2_weight, sde_eta, lower_order_final, churn,
    # dynamic_threshold
    options: dict = field(default_factory=dict)

    @classmethod
    def from_flags(
        cls, sampler: str, use_ddim: bool, guidance_interval: str, **flags
    ) -> "SamplerSetting":
        """
        :param flags: any of ``SETTING_FLAGS`` (the flags' defaults for those not given).
        :raises ValueError: a bad flag value; the message names the flag.
        """
        name = sampler_from_flags(sampler, use_ddim)
        return cls(name, guidance.parse_guidance_interval(guidance_interval),
                   options=_options_from_flags(name, **flags))

    def sample_fn(self, diffusion: GaussianDiffusion) -> Callable[..., torch.Tensor]:
        """
        :return: ``sample`` with this setting, called like ``diffusion.p_sample_loop``:
            sample_fn(model, shape, **kwargs) -> [N x C x H x W] samples; each call adds one
            batch to ``self.counts`` and its model and classifier calls.
        """

        def sample_fn(model: Callable, shape: Sequence[int], **kwargs) -> torch.Tensor:
            self.counts.batches += 1
            return sample(
                diffusion, model, shape, sampler=self.name,
                guidance_interval=self.guidance_interval, counts=self.counts,
                **{**self.options, **kwargs},
            )  # fmt: skip

        return sample_fn


def _options_from_flags(
    name: str,
    *,
    unipc_order: int = SAMPLERS["unipc"].order,
    third_order_form: str = "exact",
    sde_eta: float = 1.0,
    lower_order_final: str = LOWER_ORDER_FINAL,
    dynamic_threshold: float = 0.0,
    S_churn: float = 0.0,
    S_tmin: float = 0.0,
    S_tmax: float = math.inf,
    S_noise: float = 1.0,
) -> dict:
    """:return: ``sample``'s keyword arguments for the flags; ValueError naming a bad one."""
    checks = [
        ("--unipc_order", unipc_order, unipc_order in range(1, MAX_ORDER["unipc"] + 1), "1, 2 or 3"),
        ("--third_order_form", third_order_form, third_order_form in THIRD_ORDER_FORMS,
         " or ".join(THIRD_ORDER_FORMS)),
        ("--sde_eta", sde_eta, 0 <= sde_eta < math.inf, "a number >= 0"),
        ("--dynamic_threshold", dynamic_threshold, dynamic_threshold == 0 or 0 < dynamic_threshold <= 1,
         "0 (off) or a quantile in (0, 1], e.g. 0.995"),
        ("--S_churn", S_churn, 0 <= S_churn < math.inf, "a number >= 0"),
        ("--S_tmin", S_tmin, 0 <= S_tmin <= S_tmax, "a number in [0, --S_tmax]"),
        ("--S_tmax", S_tmax, S_tmax >= S_tmin, "a number >= --S_tmin ('inf' allowed)"),
        ("--S_noise", S_noise, 0 <= S_noise < math.inf, "a number >= 0"),
    ]  # fmt: skip
    for flag, value, valid, expected in checks:
        if not valid:
            raise ValueError(f"{flag} must be {expected}, got {value!r}")
    lowers_final_steps(lower_order_final, 1)  # check the rule
    options = dict(d2_weight=THIRD_ORDER_FORMS[third_order_form], sde_eta=float(sde_eta),
                   lower_order_final=lower_order_final, dynamic_threshold=float(dynamic_threshold),
                   churn=Churn(float(S_churn), float(S_tmin), float(S_tmax), float(S_noise)))
    if name == "unipc":
        options["order"] = int(unipc_order)
    return options
