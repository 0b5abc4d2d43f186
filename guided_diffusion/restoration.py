"""
Restoration of degraded images with an unconditional (or class-conditional) diffusion
model: RePaint (Lugmayr et al. 2022), DPS (Chung et al. 2023) and DDNM (Wang et al.
2023). The degradations are the linear operators of ``operators``; the step conventions
are those of ``editing`` (index t is the level alphas_cumprod[t], -1 the clean image).
"""

import math
from typing import Callable, Optional

import torch

from .editing import noised
from .gaussian_diffusion import GaussianDiffusion, last, sample_loop_progressive, timesteps
from .operators import Operator, OperatorError

# ---------------------------------------------------------------- RePaint


def repaint_schedule(t_T: int, jump_length: int = 10, jump_n_sample: int = 10) -> list[int]:
    """
    RePaint's resampling schedule (Lugmayr et al. 2022): the indices x visits,
    from t_T - 1 down to -1. Every ``jump_length`` steps (at 0, jump_length, ... below
    t_T - jump_length) the walk goes back up ``jump_length`` steps, ``jump_n_sample - 1``
    times per point. A step down is a model call; a step up re-noises one step.

    :param t_T: the number of (re-spaced) diffusion steps.
    :return: the schedule; with 250, 10, 10 it has 4,571 entries, 2,410 steps down.
    """
    jumps_left = {j: jump_n_sample - 1 for j in range(0, t_T - jump_length, jump_length)}
    t = t_T
    schedule = []
    while t >= 1:
        t -= 1
        schedule.append(t)
        if jumps_left.get(t, 0) > 0:
            jumps_left[t] -= 1
            for _ in range(jump_length):
                t += 1
                schedule.append(t)
    schedule.append(-1)
    return schedule


def repaint(
    diffusion: GaussianDiffusion,
    model: Callable,
    known: torch.Tensor,
    mask: torch.Tensor,
    *,
    jump_length: int = 10,
    jump_n_sample: int = 10,
    paste: bool = False,
    noise: Optional[torch.Tensor] = None,
    clip_denoised: bool = True,
    cond_fn: Optional[Callable] = None,
    model_kwargs: Optional[dict] = None,
    progress: bool = False,
) -> torch.Tensor:
    """
    RePaint inpainting (Lugmayr et al. 2022, Algorithm 1) along ``repaint_schedule``.
    Before each model call the known region is replaced by the known image noised to
    the current level, x_t <- m * (sqrt(ab_t) x_known + sqrt(1 - ab_t) z) + (1 - m) x_t;
    then an ordinary (optionally classifier-guided) ancestral step. A step back up
    re-noises, x_{t+1} = sqrt(1 - beta_{t+1}) x_t + sqrt(beta_{t+1}) z.

    :param known: [N x C x H x W] images; only the pixels where ``mask`` is 1 are used.
    :param mask: [1 or N x 1 or C x H x W], 1 on known pixels.
    :param paste: put the known pixels back into the result (the paper does not).
    :return: [N x C x H x W], the last x0 prediction.
    """
    schedule = repaint_schedule(diffusion.num_timesteps, jump_length, jump_n_sample)

    def step(x: torch.Tensor, k: int) -> dict:
        t, t_next = schedule[k], schedule[k + 1]
        if t_next > t:  # jump back: re-noise one step
            beta = float(diffusion.betas[t_next])
            return {"sample": math.sqrt(1 - beta) * x + math.sqrt(beta) * torch.randn_like(x)}
        x = mask * noised(diffusion, known, t) + (1 - mask) * x
        return diffusion.p_sample(
            model, x, timesteps(t, x), clip_denoised=clip_denoised, cond_fn=cond_fn,
            model_kwargs=model_kwargs,
        )  # fmt: skip

    x = noise if noise is not None else torch.randn_like(known)
    outputs = sample_loop_progressive(step, x, range(len(schedule) - 1), progress, "RePaint")
    result = last(outputs, "pred_xstart")
    return mask * known + (1 - mask) * result if paste else result


# ---------------------------------------------------------------- DPS


def dps_correction(
    x: torch.Tensor,
    x0_fn: Callable[[torch.Tensor], torch.Tensor],
    operator: Operator,
    y: torch.Tensor,
    zeta: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """
    DPS's measurement step (Chung et al. 2023, Algorithm 1, with the paper's step-size
    rule): -zeta_t grad_{x_t} ||y - A(x0(x_t))||^2, zeta_t = zeta / ||y - A(x0(x_t))||,
    per image (the authors' code takes one norm over the batch).

    :param x: [N x C x H x W] x_t.
    :param x0_fn: x_t -> the x0 prediction, differentiable.
    :param zeta: the paper's zeta'.
    :return: (the correction [N x C x H x W], the x0 prediction, detached).
    """
    with torch.enable_grad():
        x_in = x.detach().requires_grad_(True)
        pred_xstart = x0_fn(x_in)
        residual = (y - operator.forward(pred_xstart)).flatten(1)  # (N, measurement size)
        sq_norm = residual.pow(2).sum(dim=1)  # (N,)
        (grad,) = torch.autograd.grad(sq_norm.sum(), x_in)  # images are independent
    zeta_t = zeta / sq_norm.detach().sqrt().clamp_min(torch.finfo(x.dtype).tiny)
    return -zeta_t.view(-1, *([1] * (x.dim() - 1))) * grad, pred_xstart.detach()


def dps(
    diffusion: GaussianDiffusion,
    model: Callable,
    operator: Operator,
    y: torch.Tensor,
    *,
    zeta: float = 1.0,
    noise: Optional[torch.Tensor] = None,
    clip_denoised: bool = True,
    cond_fn: Optional[Callable] = None,
    model_kwargs: Optional[dict] = None,
    progress: bool = False,
) -> torch.Tensor:
    """
    Diffusion posterior sampling (Chung et al. 2023, Algorithm 1): an ancestral step
    x'_{t-1}, then x_{t-1} = x'_{t-1} - zeta_t grad ||y - A(x0(x_t))||^2 (``dps_correction``).

    :param y: the measurement A x + noise.
    :param zeta: zeta' (paper, ImageNet: 1.0 for SR x4 and inpainting, 0.4 for Gaussian
        deblurring).
    :return: [N x C x H x W] restored images.
    """
    shape = (len(y), *operator.image_shape)

    def x0_fn(x_t: torch.Tensor, t: torch.Tensor, holder: dict) -> torch.Tensor:
        holder.update(diffusion.p_mean_variance(model, x_t, t, clip_denoised, None, model_kwargs))
        return holder["pred_xstart"]

    def step(x: torch.Tensor, t: int) -> dict:
        tt, out = timesteps(t, x), {}
        correction, _ = dps_correction(x, lambda x_t: x0_fn(x_t, tt, out), operator, y, zeta)
        out = {key: value.detach() for key, value in out.items()}
        if cond_fn is not None:
            out["mean"] = diffusion.condition_mean(cond_fn, out, x, tt, model_kwargs=model_kwargs)
        sample = out["mean"] + (t > 0) * torch.exp(0.5 * out["log_variance"]) * torch.randn_like(x)
        return {"sample": sample + correction, "pred_xstart": out["pred_xstart"]}

    x = noise if noise is not None else torch.randn(shape, device=y.device)
    indices = range(diffusion.num_timesteps - 1, -1, -1)
    return last(sample_loop_progressive(step, x, indices, progress, "DPS"))


# ---------------------------------------------------------------- DDNM


def ddnm_lambda(diffusion: GaussianDiffusion, t: int, sigma_y: float) -> float:
    """
    DDNM+'s scale lambda_t of the range-space correction for noisy measurements (Wang et
    al. 2023, section 3.3): min(1, sigma_t / (a_t sigma_y)) with a_t = sqrt(ab_{t-1}), the
    weight of x0 in x_{t-1}, and sigma_t = sqrt(1 - ab_{t-1}), the noise x_{t-1} should hold;
    1 without measurement noise.
    """
    if sigma_y <= 0:
        return 1.0
    ab_prev = diffusion.schedule.alpha_bar(t - 1)
    return min(1.0, math.sqrt(1 - ab_prev) / (math.sqrt(ab_prev) * sigma_y))


def ddnm_noise_variance(diffusion: GaussianDiffusion, t: int, sigma_y: float) -> float:
    """
    DDNM+'s variance of the noise added at step t (Wang et al. 2023, section 3.3):
    gamma_t = sigma_t^2 - (a_t lambda_t sigma_y)^2, so that with the measurement noise the
    corrected x0 brings in (a_t lambda_t A^+ n, of variance (a_t lambda_t sigma_y)^2 where
    A A^+ = I), x_{t-1} holds the noise variance sigma_t^2 = 1 - ab_{t-1} of its level;
    1 - ab_{t-1} without measurement noise.
    """
    ab_prev = diffusion.schedule.alpha_bar(t - 1)
    correction = math.sqrt(ab_prev) * ddnm_lambda(diffusion, t, sigma_y) * sigma_y
    return max(0.0, (1 - ab_prev) - correction**2)


def require_pinv(operator: Operator) -> None:
    """Raise OperatorError unless DDNM can use ``operator`` (it needs a pseudo-inverse)."""
    if not operator.has_pinv:
        raise OperatorError(
            f"DDNM needs an operator with a pseudo-inverse; --operator {operator.name} has none "
            "(use none, inpaint, sr_avgpool or colorize, or --method dps)"
        )


def ddnm_step(
    diffusion: GaussianDiffusion,
    model: Callable,
    operator: Operator,
    y: torch.Tensor,
    x: torch.Tensor,
    t: int,
    *,
    eta: float = 0.85,
    sigma_y: float = 0.0,
    clip_denoised: bool = True,
    model_kwargs: Optional[dict] = None,
) -> dict:
    """
    One step of DDNM / DDNM+ (Wang et al. 2023, Algorithm 1 and section 3.3) from x_t:
    x0' = x0 - lambda_t A^+(A x0 - y), then
    x_{t-1} = sqrt(ab_{t-1}) x0' + sqrt(gamma_t) (eta z + sqrt(1 - eta^2) eps), with
    lambda_t = ``ddnm_lambda`` and gamma_t = ``ddnm_noise_variance`` (1 and 1 - ab_{t-1},
    plain DDNM, without measurement noise).

    :param x: [N x C x H x W] x_t.
    :return: {"sample": x_{t-1}, "pred_xstart": x0'}.
    """
    tt = timesteps(t, x)
    out = diffusion.p_mean_variance(model, x, tt, clip_denoised, None, model_kwargs)
    eps = diffusion._predict_eps_from_xstart(x, tt, out["pred_xstart"])
    lam = ddnm_lambda(diffusion, t, sigma_y)
    x0 = out["pred_xstart"] - lam * operator.pinv(operator.forward(out["pred_xstart"]) - y)
    ab_prev = diffusion.schedule.alpha_bar(t - 1)
    noise_scale = math.sqrt(ddnm_noise_variance(diffusion, t, sigma_y))
    direction = eta * torch.randn_like(x) + math.sqrt(1 - eta**2) * eps
    sample = math.sqrt(ab_prev) * x0 + noise_scale * direction
    return {"sample": sample, "pred_xstart": x0}


def ddnm(
    diffusion: GaussianDiffusion,
    model: Callable,
    operator: Operator,
    y: torch.Tensor,
    *,
    eta: float = 0.85,
    sigma_y: float = 0.0,
    noise: Optional[torch.Tensor] = None,
    clip_denoised: bool = True,
    model_kwargs: Optional[dict] = None,
    progress: bool = False,
) -> torch.Tensor:
    """
    DDNM (Wang et al. 2023, Algorithm 1) with DDNM+'s handling of noisy measurements
    (section 3.3) when ``sigma_y`` > 0: ``ddnm_step`` from x_T down to x_0. Without
    measurement noise the result satisfies A x = y exactly.

    :param operator: a linear operator with a pseudo-inverse (``has_pinv``).
    :param y: the measurement.
    :param eta: the share of fresh noise (paper: 0.85, with 100 steps).
    :param sigma_y: the measurement noise, for lambda_t and gamma_t.
    :return: [N x C x H x W] restored images.
    """
    require_pinv(operator)

    def step(x: torch.Tensor, t: int) -> dict:
        return ddnm_step(
            diffusion, model, operator, y, x, t, eta=eta, sigma_y=sigma_y,
            clip_denoised=clip_denoised, model_kwargs=model_kwargs,
        )  # fmt: skip

    shape = (len(y), *operator.image_shape)
    x = noise if noise is not None else torch.randn(shape, device=y.device)
    indices = range(diffusion.num_timesteps - 1, -1, -1)
    return last(sample_loop_progressive(step, x, indices, progress, "DDNM"))
