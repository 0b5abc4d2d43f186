"""
Guidance: functions that steer a diffusion model's sampling towards a condition.

The guidance interval (Kynkaanniemi et al. 2024, "Applying Guidance in a Limited Interval
Improves Sample and Distribution Quality in Diffusion Models") applies guidance only
where the EDM noise level sigma_t / alpha_t lies in (lo, hi].
"""

from typing import TYPE_CHECKING, Callable, Optional

import numpy as np
import torch

if TYPE_CHECKING:
    from .gaussian_diffusion import GaussianDiffusion


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
