"""
Guidance: functions that steer a diffusion model's sampling towards a condition.

Classifier guidance (Dhariwal & Nichol 2021): a ``cond_fn`` giving the scaled gradient of a
noisy classifier's log-probability, which ``GaussianDiffusion`` adds to the mean (ancestral
sampling) or to the score (DDIM), and the small adapter that keeps the target labels away
from an unconditional model.

Classifier-free guidance (Ho & Salimans 2021) and autoguidance (Karras et al. 2024) are
model wrappers: the guided model is called like the model, ``model_fn(x, t, **kwargs)``,
so every sampler and the respaced-timestep wrapper of ``SpacedDiffusion`` work unchanged
(the wrapper sees the timesteps the model would see and passes them on as they are).
Both combine a "main" and a weaker "base" prediction as base + s (main - base) on the
prediction channels (epsilon, or x_0 for ``--predict_xstart`` models: the weights sum to 1,
so combining epsilons and combining the x_0 they imply is the same), and keep the learned
variance channels of the main prediction: the variance is not what guidance steers, and
extrapolating log-variance interpolation weights could leave their valid range. They
combine with classifier guidance: its gradient is added to the guided prediction.

The guidance interval (Kynkaanniemi et al. 2024, "Applying Guidance in a Limited Interval
Improves Sample and Distribution Quality in Diffusion Models") applies guidance only
where the EDM noise level sigma_t / alpha_t lies in (lo, hi]: ``interval_active`` gives it
as an ``ActiveFn`` for the model wrappers, ``within_interval`` applies it to a ``cond_fn``.
"""

from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

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


# ---------------------------------------------------------------- model wrappers

# A function of the timesteps the model sees [N] -> bool [N]: where guidance applies
# (e.g. a guidance interval); None means at every step.
ActiveFn = Callable[[torch.Tensor], torch.Tensor]


class GuidanceError(ValueError):
    """A guidance setting that the model cannot honour; the message names the flag."""


class _GuidedModel(nn.Module):
    """
    The shared part of the guidance wrappers: where guidance applies, compute the main and
    base predictions and return base + scale (main - base) on the first C channels, the
    main prediction's other channels (learned variance) as they are; elsewhere the main
    prediction alone, without evaluating the base.
    """

    def __init__(self, model: nn.Module, scale: float, active: Optional[ActiveFn]):
        super().__init__()
        self.model = model
        self.scale = float(scale)
        self.active = active
        # an object with a ``model`` count (``samplers.EvaluationCounts``): each call adds
        # the share of the batch that also got the base prediction, so that the count is
        # network evaluations (one call of the wrapper counts one)
        self.counts = None

    def forward(self, x: torch.Tensor, t: torch.Tensor, **kwargs) -> torch.Tensor:
        """
        :param x: [N x C x ...] noisy inputs.
        :param t: [N] timesteps, as the model takes them.
        :param kwargs: the model's keyword arguments (e.g. ``y`` [N] labels).
        :return: [N x out_channels x ...] guided model output.
        """
        t = _per_image(t, x.shape[0])
        inside = self._inside(t, x.device)
        if inside is None:
            return self.model(x, t, **kwargs)
        main, base = self.predictions(x, t, inside, kwargs)
        if self.counts is not None:
            self.counts.model += inside.float().mean().item()
        channels = x.shape[1]
        guided = main.clone()
        mean = base[:, :channels] + self.scale * (main[inside, :channels] - base[:, :channels])
        guided[inside, :channels] = mean.to(guided.dtype)
        return guided

    def _inside(self, t: torch.Tensor, device: torch.device) -> Optional[torch.Tensor]:
        """Bool [N] mask of the images to guide, or None when there are none."""
        if self.scale == 1:
            return None  # base + 1 (main - base) is main: skip the base entirely
        if self.active is None:
            return torch.ones(t.shape[0], dtype=torch.bool, device=device)
        inside = torch.as_tensor(self.active(t), dtype=torch.bool).to(device)
        return inside if inside.any() else None

    def predictions(
        self, x: torch.Tensor, t: torch.Tensor, inside: torch.Tensor, kwargs: dict
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """
        :return: (main prediction [N x ...] for every image, base prediction [M x ...] for the
            M images where ``inside`` is True).
        """
        raise NotImplementedError


def _per_image(t: torch.Tensor, n: int) -> torch.Tensor:
    """Timesteps [N] from [N], [1] or a scalar (the model takes one for the whole batch too)."""
    return t.reshape(1).expand(n) if t.numel() == 1 else t


def _is_per_image(value, n: int) -> bool:
    """Whether a keyword argument holds one entry per image (a tensor with first dim n)."""
    return isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == n


def _select(kwargs: dict, n: int, rows: torch.Tensor) -> dict:
    """The keyword arguments of the images ``rows`` (per-image tensors indexed, others kept)."""
    return {k: v[rows] if _is_per_image(v, n) else v for k, v in kwargs.items()}


def _stack(kwargs: dict, extra: dict, n: int) -> dict:
    """Per-image keyword arguments of two batches, concatenated (``extra`` after ``kwargs``)."""
    return {k: torch.cat([v, extra[k]]) if _is_per_image(v, n) else v for k, v in kwargs.items()}


# The other guidance the sampling programs offer, named in the messages of classifier-free
# guidance that cannot run (a program with other means passes its own).
OTHER_GUIDANCE = "--classifier_path (classifier guidance) or --guide_model_path (autoguidance)"


class ClassifierFreeGuidance(_GuidedModel):
    """
    Classifier-free guidance (Ho & Salimans 2021): eps~ = eps(x, null) + s (eps(x, y) -
    eps(x, null)), the conditional and null-class predictions in one batched forward pass.
    s = 1 is plain conditional sampling (the model is called exactly as without guidance);
    s = 0 is unconditional sampling (the null-class prediction alone, variance included).

    :param model: a class-conditional model trained with label dropout (``null_label``).
    :param scale: the guidance scale s >= 0.
    :param active: where guidance applies (see ``ActiveFn``); elsewhere conditional.
    :raises GuidanceError: s != 1 for a model without a null class.
    """

    def __init__(
        self,
        model: nn.Module,
        scale: float,
        active: Optional[ActiveFn] = None,
        others: str = OTHER_GUIDANCE,
    ):
        super().__init__(model, scale, active)
        self.null_label = getattr(model, "null_label", None)
        if scale < 0:
            raise GuidanceError(f"--guidance_scale must be >= 0, got {scale}")
        if scale != 1 and getattr(model, "num_classes", None) is None:
            raise GuidanceError(
                f"--guidance_scale {scale} (classifier-free guidance) needs a class-conditional "
                f"model (--class_cond True); for an unconditional one use --guidance_scale 1, "
                f"or guide with {others}"
            )
        if scale != 1 and self.null_label is None:
            raise GuidanceError(
                f"--guidance_scale {scale} needs a model trained with --class_dropout_prob > 0 "
                "(a null-class row in its label embedding); this one has none: use "
                f"--guidance_scale 1, or guide with {others}"
            )

    def forward(self, x: torch.Tensor, t: torch.Tensor, **kwargs) -> torch.Tensor:
        if self.scale != 0:
            return super().forward(x, t, **kwargs)
        t = _per_image(t, x.shape[0])
        inside = self._inside(t, x.device)
        if inside is not None:
            y = kwargs["y"]
            kwargs = {**kwargs, "y": torch.where(inside, torch.full_like(y, self.null_label), y)}
        return self.model(x, t, **kwargs)

    def predictions(
        self, x: torch.Tensor, t: torch.Tensor, inside: torch.Tensor, kwargs: dict
    ) -> tuple[torch.Tensor, torch.Tensor]:
        n = x.shape[0]
        if kwargs.get("y") is None:
            raise GuidanceError("classifier-free guidance needs class labels: model_kwargs['y']")
        extra = _select(kwargs, n, inside)
        extra["y"] = torch.full_like(extra["y"], self.null_label)
        # one forward pass: the N conditional rows, then the M null-class rows   (N + M, ...)
        x_both, t_both = torch.cat([x, x[inside]]), torch.cat([t, t[inside]])
        out = self.model(x_both, t_both, **_stack(kwargs, extra, n))
        return out[:n], out[n:]


class AutoGuidance(_GuidedModel):
    """
    Autoguidance (Karras et al. 2024, "Guiding a diffusion model with a bad version of
    itself"): D~ = D_guide + s (D_main - D_guide), with a guide model of the same kind that
    is smaller and/or trained shorter; it works for unconditional models too. Both models
    get the same inputs and keyword arguments, except that an unconditional guide (no
    ``num_classes``) of a class-conditional model gets no labels: classifier-free guidance
    with a separate unconditional model (Ho & Salimans 2021 describe that form too). The
    variance channels come from the main model.

    :param model: the main model.
    :param guide: the guide model (its prediction channels must match the main model's).
    :param scale: the guidance scale s (1: the main model alone).
    :param active: where guidance applies (see ``ActiveFn``); elsewhere the main model.
    """

    def __init__(
        self, model: nn.Module, guide: nn.Module, scale: float, active: Optional[ActiveFn] = None
    ):
        super().__init__(model, scale, active)
        self.guide = guide

    def predictions(
        self, x: torch.Tensor, t: torch.Tensor, inside: torch.Tensor, kwargs: dict
    ) -> tuple[torch.Tensor, torch.Tensor]:
        main = self.model(x, t, **kwargs)
        guide_kwargs = _select(kwargs, x.shape[0], inside)
        if getattr(self.guide, "num_classes", 0) is None:
            guide_kwargs.pop("y", None)  # an unconditional guide of a conditional model
        guide = self.guide(x[inside], t[inside], **guide_kwargs)
        if guide.shape[1] < x.shape[1]:
            raise GuidanceError(
                f"the guide model predicts {guide.shape[1]} channels, fewer than the "
                f"{x.shape[1]} image channels: --guide_model_path must be a model of the same kind"
            )
        return main, guide


def guided_model(
    model: nn.Module,
    guidance_scale: float = 1.0,
    *,
    guide: Optional[nn.Module] = None,
    active: Optional[ActiveFn] = None,
    others: str = OTHER_GUIDANCE,
) -> nn.Module:
    """
    The model to sample with for ``--guidance_scale`` and ``--guide_model_path``: autoguidance
    when a guide is given, else classifier-free guidance, else (scale 1, no guide) the model
    itself.

    :param model: the diffusion model.
    :param guidance_scale: s; 1 means no guidance.
    :param guide: the autoguidance guide model, or None.
    :param active: where guidance applies (e.g. a guidance interval); None: every step.
    :param others: the other guidance the program offers, for the messages.
    :return: a module called like ``model``.
    :raises GuidanceError: the model cannot be guided that way.
    """
    if guide is not None:
        return AutoGuidance(model, guide, guidance_scale, active)
    if guidance_scale == 1:
        return model
    return ClassifierFreeGuidance(model, guidance_scale, active, others)


# ---------------------------------------------------------------- guidance interval


def parse_guidance_interval(
    text: str, flag: str = "--guidance_interval"
) -> Optional[tuple[float, float]]:
    """
    Parse ``--guidance_interval LO,HI`` (or ``LO:HI``, which fits inside comma-separated
    lists such as the demo's settings).

    :param text: "LO,HI" with 0 <= LO < HI (HI may be "inf"), or "" for guidance at every step.
    :return: (lo, hi), or None for no interval.
    :raises ValueError: naming the flag and the expected form.
    """
    if not text.strip():
        return None
    parts = text.replace(":", ",").split(",")
    try:
        lo, hi = (float(p) for p in parts)
    except ValueError:
        lo = hi = float("nan")
    if len(parts) != 2 or not 0 <= lo < hi:
        raise ValueError(
            f"{flag} must be two noise levels sigma/alpha 'LO,HI' with 0 <= LO < HI "
            f"(e.g. '0.28,5.42' or '0.28:5.42'; HI may be 'inf'), got {text!r}"
        )
    return lo, hi


def noise_level_lookup(diffusion: GaussianDiffusion) -> Callable[[torch.Tensor], torch.Tensor]:
    """
    The EDM noise level sigma / alpha = sqrt((1 - ab) / ab) at timesteps as the model and
    ``cond_fn`` receive them (``diffusion.schedule``: original-process indices for a respaced
    process, scaled to [0, 1000) when ``rescale_timesteps``; fractional ones, as the EDM
    sampler gives, between the base process's steps).

    :return: level(t [N]) -> [N] float64 noise levels.
    """
    return diffusion.schedule.edm_sigma_at


def check_interval_has_steps(
    diffusion: GaussianDiffusion, interval: tuple[float, float], flag: str = "--guidance_interval"
) -> None:
    """
    Refuse a guidance interval that contains none of the sampling grid's noise levels
    sigma_t / alpha_t: guidance would silently be off at every step.

    :raises ValueError: naming the interval and the grid's levels.
    """
    lo, hi = interval
    levels = diffusion.schedule.edm_sigma  # (N,), increasing with the index
    if ((levels > lo) & (levels <= hi)).any():
        return
    shown = ", ".join(f"{v:.4g}" for v in levels)
    if len(levels) > 8:
        below, above = levels[levels <= lo], levels[levels > hi]
        near = [f"{below.max():.4g} below" if len(below) else "", f"{above.min():.4g} above" if len(above) else ""]
        shown = (
            f"{levels.min():.4g} to {levels.max():.4g}, the nearest "
            + " and ".join(n for n in near if n)
        )
    raise ValueError(
        f"{flag} {lo:g},{hi:g} contains none of the {len(levels)} sampling steps' noise levels "
        f"sigma/alpha ({shown}), so guidance would be off at every step: choose LO,HI around "
        "some of them, or leave it empty to guide at every step"
    )


def interval_active(diffusion: GaussianDiffusion, interval: tuple[float, float]) -> ActiveFn:
    """
    The guidance interval (Kynkaanniemi et al. 2024) as an ``ActiveFn``: True where
    sigma_t / alpha_t lies in (lo, hi], for timesteps as the model sees them.

    :param interval: (lo, hi).
    """
    lo, hi = interval
    level = noise_level_lookup(diffusion)

    def active(t: torch.Tensor) -> torch.Tensor:
        sigma_over_alpha = level(t)
        return ((sigma_over_alpha > lo) & (sigma_over_alpha <= hi)).to(t.device)  # (N,)

    return active


def within_interval(
    cond_fn: Callable, diffusion: GaussianDiffusion, interval: tuple[float, float]
) -> Callable:
    """
    Restrict a guidance gradient to a noise-level interval (Kynkaanniemi et al. 2024):
    ``cond_fn`` is called only when some image's sigma_t / alpha_t lies in (lo, hi], and
    its gradient is zero for the images outside.

    :param cond_fn: cond_fn(x, t, **model_kwargs) -> gradient of x's shape.
    :param interval: (lo, hi).
    :return: a cond_fn of the same signature.
    """
    active = interval_active(diffusion, interval)

    def guided(x: torch.Tensor, t: torch.Tensor, **kwargs) -> torch.Tensor:
        inside = active(t)  # (N,)
        if not inside.any():
            return torch.zeros_like(x)
        gradient = cond_fn(x, t, **kwargs)
        if inside.all():
            return gradient
        mask = inside.to(device=gradient.device, dtype=gradient.dtype)
        return gradient * mask.view(-1, *([1] * (gradient.dim() - 1)))

    return guided
