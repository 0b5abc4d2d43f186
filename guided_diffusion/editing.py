"""
Editing with a guide image on any model this project loads: DDIM inversion and decoding
(Song et al. 2021), SDEdit (Meng et al. 2022) and ILVR (Choi et al. 2021). The
restoration methods that use a degradation operator live in ``restoration``.

All functions take the (possibly re-spaced) diffusion and the model as the samplers do,
work on images [N x C x H x W] in [-1, 1], and index steps like the diffusion: index t
means the level alphas_cumprod[t], index -1 the clean image (``diffusion.schedule``), and run
the one sampling loop (``gaussian_diffusion.sample_loop_progressive``). Per-step noise comes
from torch's global generator, so seeding it makes a run reproducible.
"""

import math
from collections.abc import Iterator
from typing import Callable, Optional

import torch

from . import samplers
from .gaussian_diffusion import GaussianDiffusion, last, sample_loop_progressive, timesteps


def noised(diffusion: GaussianDiffusion, x0: torch.Tensor, t: int, noise=None) -> torch.Tensor:
    """x0 diffused to level t (``q_sample``); x0 itself at t = -1 (the clean image)."""
    return x0 if t < 0 else diffusion.q_sample(x0, timesteps(t, x0), noise)


# ---------------------------------------------------------------- DDIM inversion


def ddim_invert(
    diffusion: GaussianDiffusion,
    model: Callable,
    images: torch.Tensor,
    *,
    model_kwargs: Optional[dict] = None,
    cond_fn: Optional[Callable] = None,
    progress: bool = False,
) -> torch.Tensor:
    """
    Encode images into the noise x_{T-1} from which DDIM (eta 0, no clipping) decodes
    them: the DDIM ODE run forwards (Song et al. 2021),
    x_{t+1} = sqrt(ab_{t+1}) x0(x_t) + sqrt(1 - ab_{t+1}) eps(x_t), with x0 NOT clipped.
    The clean image is evaluated at timestep 0.

    :param images: [N x C x H x W] clean images.
    :param model_kwargs: e.g. {"y": labels} for a class-conditional model.
    :param cond_fn: classifier guidance, applied to eps as ``ddim_decode`` applies it
        (``condition_score``), so that decoding with the same ``cond_fn`` runs the same ODE
        back; decoding with another one (or none) edits.
    :return: [N x C x H x W] noise at the last index T-1; ``ddim_decode`` inverts it.
    """

    def step(x: torch.Tensor, t: int) -> dict:
        # x is at level t - 1 (the image at t = 0); the model sees it at max(t - 1, 0)
        t_in = timesteps(max(t - 1, 0), x)
        out = diffusion.p_mean_variance(
            model, x, t_in, clip_denoised=False, model_kwargs=model_kwargs
        )
        if cond_fn is not None:
            out = diffusion.condition_score(cond_fn, out, x, t_in, model_kwargs=model_kwargs)
        eps = diffusion._predict_eps_from_xstart(x, t_in, out["pred_xstart"])
        ab_next = diffusion.schedule.alpha_bar(t)
        sample = math.sqrt(ab_next) * out["pred_xstart"] + math.sqrt(1 - ab_next) * eps
        return {"sample": sample, "pred_xstart": out["pred_xstart"]}

    indices = range(diffusion.num_timesteps)
    return last(sample_loop_progressive(step, images, indices, progress, "DDIM inversion"))


def ddim_decode(
    diffusion: GaussianDiffusion,
    model: Callable,
    noise: torch.Tensor,
    *,
    clip_denoised: bool = False,
    cond_fn: Optional[Callable] = None,
    model_kwargs: Optional[dict] = None,
    progress: bool = False,
) -> torch.Tensor:
    """
    Decode noise from ``ddim_invert`` (or any x_{T-1}) with deterministic DDIM steps;
    change ``model_kwargs`` (the class) or ``cond_fn`` (guidance) to edit.

    :param noise: [N x C x H x W] at index T-1.
    :param clip_denoised: clamp x0 predictions (off for an exact round trip).
    :return: [N x C x H x W] images.
    """
    return samplers.sample(
        diffusion, model, tuple(noise.shape), sampler="ddim", noise=noise,
        clip_denoised=clip_denoised, cond_fn=cond_fn, model_kwargs=model_kwargs,
        device=noise.device, progress=progress, eta=0.0,
    )  # fmt: skip


# ---------------------------------------------------------------- SDEdit


def sdedit(
    diffusion: GaussianDiffusion,
    model: Callable,
    guide: torch.Tensor,
    *,
    strength: float = 0.5,
    repeats: int = 3,
    keep_mask: Optional[torch.Tensor] = None,
    clip_denoised: bool = True,
    cond_fn: Optional[Callable] = None,
    model_kwargs: Optional[dict] = None,
    progress: bool = False,
) -> torch.Tensor:
    """
    SDEdit (Meng et al. 2022): noise the guide to level t0 =
    round(strength * T), x_t0 = sqrt(ab_t0) guide + sqrt(1 - ab_t0) e, and take ancestral
    steps back to 0; each repeat starts from the previous output. With ``keep_mask``
    the kept region is reset after every step to the guide noised with the same e.

    :param guide: [N x C x H x W] guide images (strokes, a degraded image, ...).
    :param strength: t0 / T in [0, 1]; 0 returns the guide unchanged.
    :param repeats: how many times to noise and denoise.
    :param keep_mask: [1 or N x 1 or C x H x W], 1 where the guide is kept.
    :return: [N x C x H x W] edited images.
    """
    if not 0 <= strength <= 1:
        raise ValueError(f"SDEdit strength must lie in [0, 1], got {strength}")
    start = int(round(strength * diffusion.num_timesteps)) - 1  # the index of t0
    x = guide
    for _ in range(repeats if start >= 0 else 0):
        e = torch.randn_like(guide)

        def step(x_t: torch.Tensor, t: int) -> dict:
            out = diffusion.p_sample(
                model, x_t, timesteps(t, x_t), clip_denoised=clip_denoised, cond_fn=cond_fn,
                model_kwargs=model_kwargs,
            )  # fmt: skip
            if keep_mask is not None:
                kept = noised(diffusion, guide, t - 1, e)
                out["sample"] = keep_mask * kept + (1 - keep_mask) * out["sample"]
            return out

        x_start = noised(diffusion, x, start, e)
        x = last(sample_loop_progressive(step, x_start, range(start, -1, -1), progress, "SDEdit"))
    return x


# ---------------------------------------------------------------- ILVR


def ilvr_progressive(
    diffusion: GaussianDiffusion,
    model: Callable,
    reference: torch.Tensor,
    low_pass: Callable[[torch.Tensor], torch.Tensor],
    *,
    range_t: int = 0,
    noise: Optional[torch.Tensor] = None,
    clip_denoised: bool = True,
    cond_fn: Optional[Callable] = None,
    model_kwargs: Optional[dict] = None,
    progress: bool = False,
) -> Iterator[dict]:
    """
    ILVR (Choi et al. 2021, Algorithm 1): after each ancestral step x'_{t-1},
    x_{t-1} = phi(y_{t-1}) + x'_{t-1} - phi(x'_{t-1}), with y_{t-1} the reference noised
    to level t-1, while t > range_t.

    :param reference: [N x C x H x W] reference images.
    :param low_pass: phi, see ``operators.low_pass_filter``.
    :param range_t: refine only at steps t > range_t (re-spaced indices).
    :param noise: optional starting noise; default fresh Gaussian noise.
    :return: an iterator of dicts with "sample", "pred_xstart" and, at refined steps,
        "reference" (y_{t-1}).
    """

    def step(x: torch.Tensor, t: int) -> dict:
        out = diffusion.p_sample(
            model, x, timesteps(t, x), clip_denoised=clip_denoised, cond_fn=cond_fn,
            model_kwargs=model_kwargs,
        )  # fmt: skip
        if t > range_t:
            y = noised(diffusion, reference, t - 1)
            out["reference"] = y
            out["sample"] = low_pass(y) + out["sample"] - low_pass(out["sample"])
        return out

    x = noise if noise is not None else torch.randn_like(reference)
    indices = range(diffusion.num_timesteps - 1, -1, -1)
    return sample_loop_progressive(step, x, indices, progress, "ILVR")


def ilvr(
    diffusion: GaussianDiffusion, model: Callable, reference: torch.Tensor, low_pass, **kwargs
) -> torch.Tensor:
    """ILVR's final samples [N x C x H x W]; arguments as ``ilvr_progressive``."""
    return last(ilvr_progressive(diffusion, model, reference, low_pass, **kwargs))
