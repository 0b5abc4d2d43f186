"""
Guidance: functions that steer a diffusion model's sampling towards a condition.

Today this holds classifier guidance (Dhariwal & Nichol 2021): a ``cond_fn`` giving the
scaled gradient of a noisy classifier's log-probability, which ``GaussianDiffusion``
adds to the mean (ancestral sampling) or to the score (DDIM), and the small adapter that
keeps the target labels away from an unconditional model. Other guidance methods
(classifier-free guidance, autoguidance) belong here as well.

The guidance interval (Kynkaanniemi et al. 2024, "Applying Guidance in a Limited Interval
Improves Sample and Distribution Quality in Diffusion Models") applies guidance only
where the EDM noise level sigma_t / alpha_t lies in (lo, hi].
"""

from typing import TYPE_CHECKING, Callable, Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

if TYPE_CHECKING:
    from .gaussian_diffusion import GaussianDiffusion


def classifier_cond_fn(classifier: nn.Module, classifier_scale: float) -> Callable:
    """
    Classifier guidance (Dhariwal & Nichol 2021, Algorithms 1 and 2): the gradient of
    log p(y | x_t) with respect to the noisy input x_t, times ``classifier_scale``.

    :param classifier: maps (x_t [N x C x H x W], timesteps [N]) to logits [N x classes].
    :param classifier_scale: the guidance scale s.
    :return: cond_fn(x, t, y) -> gradient of x's shape; the diffusion passes it the
        model_kwargs, so ``y`` is the target label [N].
    """

    def cond_fn(
        x: torch.Tensor, t: torch.Tensor, y: Optional[torch.Tensor] = None, **_
    ) -> torch.Tensor:
        if y is None:
            raise ValueError("classifier guidance needs target labels: model_kwargs['y']")
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            log_probs = F.log_softmax(classifier(x_in, t).float(), dim=-1)  # (N, classes)
            selected = log_probs[torch.arange(len(log_probs), device=y.device), y.view(-1)]
            return torch.autograd.grad(selected.sum(), x_in)[0] * classifier_scale

    return cond_fn


def labels_to_classifier_only(model: nn.Module) -> Callable:
    """
    Adapt an unconditional diffusion model to classifier-guided sampling: the labels in
    model_kwargs (``y``) go to the classifier only, not to the model.

    :param model: called as model(x, t, **kwargs) without ``y``.
    :return: model_fn(x, t, y=None, **kwargs) -> model(x, t, **kwargs).
    """

    def model_fn(x: torch.Tensor, t: torch.Tensor, y: Optional[torch.Tensor] = None, **kwargs):
        return model(x, t, **kwargs)

    return model_fn


# ---------------------------------------------------------------- guidance interval


def parse_guidance_interval(text: str, flag: str = "--guidance_interval") -> Optional[tuple[float, float]]:
    """
    Parse ``--guidance_interval LO,HI``.

    :param text: "LO,HI" with 0 <= LO < HI (HI may be "inf"), or "" for guidance at every step.
    :return: (lo, hi), or None for no interval.
    :raises ValueError: naming the flag and the expected form.
    """
    if not text.strip():
        return None
    parts = text.split(",")
    try:
        lo, hi = (float(p) for p in parts)
    except ValueError:
        lo = hi = float("nan")
    if len(parts) != 2 or not 0 <= lo < hi:
        raise ValueError(
            f"{flag} must be two noise levels sigma/alpha 'LO,HI' with 0 <= LO < HI "
            f"(e.g. '0.28,5.42'; HI may be 'inf'), got {text!r}"
        )
    return lo, hi


def noise_level_lookup(diffusion: "GaussianDiffusion") -> Callable[[torch.Tensor], torch.Tensor]:
    """
    The EDM noise level sigma / alpha = sqrt((1 - ab) / ab) at timesteps as the model and
    ``cond_fn`` receive them: original-process indices for a respaced process, scaled to
    [0, 1000) when ``rescale_timesteps``.

    :return: level(t [N]) -> [N] float64 noise levels (each t mapped to the nearest step).
    """
    indices = np.arange(diffusion.num_timesteps, dtype=np.float64)
    seen = np.asarray(getattr(diffusion, "timestep_map", indices), dtype=np.float64)
    if diffusion.rescale_timesteps:
        seen = seen * (1000.0 / getattr(diffusion, "original_num_steps", diffusion.num_timesteps))
    ab = np.asarray(diffusion.alphas_cumprod, dtype=np.float64)
    seen_t, levels = torch.from_numpy(seen), torch.from_numpy(np.sqrt((1.0 - ab) / ab))

    def level(t: torch.Tensor) -> torch.Tensor:
        nearest = (t.detach().cpu().double()[:, None] - seen_t[None, :]).abs().argmin(dim=1)
        return levels[nearest]

    return level


def within_interval(
    cond_fn: Callable, diffusion: "GaussianDiffusion", interval: tuple[float, float]
) -> Callable:
    """
    Restrict a guidance gradient to a noise-level interval (Kynkaanniemi et al. 2024):
    ``cond_fn`` is called only when some image's sigma_t / alpha_t lies in (lo, hi], and
    its gradient is zero for the images outside.

    :param cond_fn: cond_fn(x, t, **model_kwargs) -> gradient of x's shape.
    :param interval: (lo, hi).
    :return: a cond_fn of the same signature.
    """
    lo, hi = interval
    level = noise_level_lookup(diffusion)

    def guided(x: torch.Tensor, t: torch.Tensor, **kwargs) -> torch.Tensor:
        sigma_over_alpha = level(t)
        inside = (sigma_over_alpha > lo) & (sigma_over_alpha <= hi)  # (N,)
        if not inside.any():
            return torch.zeros_like(x)
        gradient = cond_fn(x, t, **kwargs)
        if inside.all():
            return gradient
        mask = inside.to(device=gradient.device, dtype=gradient.dtype)
        return gradient * mask.view(-1, *([1] * (gradient.dim() - 1)))

    return guided
