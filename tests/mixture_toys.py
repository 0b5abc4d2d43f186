"""
An exact model of Gaussian-mixture data for the sampler tests: each pixel independently
x0 ~ sum_k w_k N(m_k, s_k^2), whose denoiser E[x0 | x_t] has a closed form, and the
probability-flow ODE's solution to float64 precision as the reference (no closed form).
"""

import math

import numpy as np
import torch

from guided_diffusion import samplers

WEIGHTS = (0.3, 0.3, 0.4)
MEANS = (-0.7, 0.1, 0.8)
STDS = (0.1, 0.25, 0.05)


def mixture_x0(x: torch.Tensor, ab: torch.Tensor) -> torch.Tensor:
    """E[x0 | x_t] for the mixture: components weighted by their likelihood of x_t."""
    alpha = ab.sqrt()
    logits, means = [], []
    for w, m, s in zip(WEIGHTS, MEANS, STDS):
        var = ab * s**2 + 1 - ab  # the component's variance at x_t
        logits.append(math.log(w) - 0.5 * torch.log(var) - 0.5 * (x - alpha * m) ** 2 / var)
        means.append(m + alpha * s**2 / var * (x - alpha * m))
    weights = torch.softmax(torch.stack(logits), dim=0)
    return (weights * torch.stack(means)).sum(0)


class MixtureModel(torch.nn.Module):
    """
    The exact noise-predicting model of the mixture under a process with base
    ``alphas_cumprod``, at integer or fractional timesteps (between steps log(sigma / alpha) is
    linear in t, as ``NoiseSchedule.model_time`` assumes).
    """

    def __init__(self, alphas_cumprod: np.ndarray):
        super().__init__()
        ab = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
        self.log_sigma = 0.5 * (torch.log1p(-ab) - torch.log(ab))
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def alpha_bar(self, t: torch.Tensor) -> torch.Tensor:
        t = t.double()
        low = t.floor().long().clamp(0, len(self.log_sigma) - 1)
        high = (low + 1).clamp(max=len(self.log_sigma) - 1)
        log_sigma = self.log_sigma[low] + (t - low) * (self.log_sigma[high] - self.log_sigma[low])
        return torch.sigmoid(-2.0 * log_sigma)

    def forward(self, x: torch.Tensor, t: torch.Tensor, **kwargs) -> torch.Tensor:
        ab = self.alpha_bar(t).view(-1, *([1] * (x.dim() - 1))).to(x.dtype)
        return (x - ab.sqrt() * mixture_x0(x, ab)) / (1 - ab).sqrt()


def reference_solution(x_start: torch.Tensor, ab_first: float, ab_last: float,
                       steps: int = 2000) -> torch.Tensor:
    """
    The ODE from the level ab_first to ab_last solved in float64 by third-order DPM-Solver++
    on ``steps`` lambda-uniform steps (error far below any sampler's), then denoised.
    """
    lam_first = 0.5 * (math.log(ab_first) - math.log1p(-ab_first))
    lam_last = 0.5 * (math.log(ab_last) - math.log1p(-ab_last))
    lambdas = np.linspace(lam_first, lam_last, steps + 1)
    x = x_start.double()
    history = []
    for k, lam in enumerate(lambdas):
        ab = torch.tensor(1.0 / (1.0 + math.exp(-2.0 * lam)), dtype=torch.float64)
        x0 = mixture_x0(x, ab)
        if k == steps:
            return x0
        history = [(x0, lam)] + history[:2]
        nxt = lambdas[k + 1]
        alpha_t, sigma_t = 1 / math.sqrt(1 + math.exp(-2 * nxt)), 1 / math.sqrt(1 + math.exp(2 * nxt))
        step = samplers.SolverStep(1 / math.sqrt(1 + math.exp(2 * lam)), alpha_t, sigma_t, nxt)
        x0s, lams = zip(*history)
        x = samplers.dpm_solver_pp_update(x, x0s, lams, step)
