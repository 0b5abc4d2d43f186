"""
The Gaussian diffusion process of Ho et al. (2020) with the learned variances of
Nichol & Dhariwal (2021), DDIM sampling (Song et al. 2021) and classifier guidance
(Dhariwal & Nichol 2021), and the one sampling loop (``sample_loop_progressive``) that these
loops, the solvers of ``samplers`` and the methods of ``editing`` and ``restoration`` share.

Schedules are float64 numpy arrays; values gathered per timestep become float32
tensors. The order in which random numbers are drawn matches the original
guided-diffusion release, so a fixed seed gives the same samples.
"""

import enum
import inspect
import math
from typing import Callable, Iterable, Iterator, Optional, Sequence

import numpy as np
import torch

from .losses import discretized_gaussian_log_likelihood, normal_kl
from .nn import mean_flat
from .schedule import NoiseSchedule

BETA_SCHEDULES = ("linear", "cosine")


def get_named_beta_schedule(schedule_name: str, num_diffusion_timesteps: int) -> np.ndarray:
    """
    Get a pre-defined beta schedule by name.

    "linear" is the schedule of Ho et al. (2020), scaled so that any number of steps
    covers the same range as their 1000; "cosine" is that of Nichol & Dhariwal (2021).

    :return: a float64 array of shape (num_diffusion_timesteps,).
    """
    if schedule_name == "linear":
        scale = 1000 / num_diffusion_timesteps
        return np.linspace(scale * 0.0001, scale * 0.02, num_diffusion_timesteps, dtype=np.float64)
    if schedule_name == "cosine":
        return betas_for_alpha_bar(
            num_diffusion_timesteps,
            lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2,
        )
    raise ValueError(
        f"unknown noise schedule {schedule_name!r} (--noise_schedule): "
        f"valid names are {', '.join(BETA_SCHEDULES)}"
    )


def betas_for_alpha_bar(
    num_diffusion_timesteps: int, alpha_bar: Callable[[float], float], max_beta: float = 0.999
) -> np.ndarray:
    """
    Discretize a continuous alpha_bar(t), t in [0, 1], into betas:
    beta_i = min(1 - alpha_bar((i + 1) / T) / alpha_bar(i / T), max_beta).
    """
    betas = []
    for i in range(num_diffusion_timesteps):
        t1 = i / num_diffusion_timesteps
        t2 = (i + 1) / num_diffusion_timesteps
        betas.append(min(1 - alpha_bar(t2) / alpha_bar(t1), max_beta))
    return np.array(betas)


class ModelMeanType(enum.Enum):
    """What the model's first output channels predict."""

    PREVIOUS_X = enum.auto()  # x_{t-1}
    START_X = enum.auto()  # x_0
    EPSILON = enum.auto()  # the noise


class ModelVarType(enum.Enum):
    """
    How the reverse-process variance is chosen. LEARNED_RANGE (Nichol & Dhariwal 2021)
    interpolates in log space between FIXED_SMALL and FIXED_LARGE.
    """

    LEARNED = enum.auto()
    FIXED_SMALL = enum.auto()
    FIXED_LARGE = enum.auto()
    LEARNED_RANGE = enum.auto()


class LossType(enum.Enum):
    MSE = enum.auto()  # raw MSE (plus the variational bound for learned variances)
    RESCALED_MSE = enum.auto()  # the same, with the bound scaled as with RESCALED_KL
    KL = enum.auto()  # the variational lower bound
    RESCALED_KL = enum.auto()  # the bound times the number of timesteps

    def is_vb(self) -> bool:
        return self in (LossType.KL, LossType.RESCALED_KL)


# step(x, i) -> {"sample": x at the next index, "pred_xstart": ...}: one step of a sampling
# loop from process index i (an int)
StepFn = Callable[[torch.Tensor, int], dict]
# randn(x) -> standard normal noise of x's shape, dtype and device: the source of the
# sampling noise (default torch.randn_like); see image_seeds.ImageRandom for per-image noise.
RandnFn = Callable[[torch.Tensor], torch.Tensor]


def timesteps(index: int, x: torch.Tensor) -> torch.Tensor:
    """:return: the [N] int64 tensor of timestep ``index`` for the batch ``x``."""
    return torch.full((x.shape[0],), index, dtype=torch.long, device=x.device)


def sample_loop_progressive(
    step: StepFn, x: torch.Tensor, indices: Iterable[int], progress: bool = False, desc: str = ""
) -> Iterator[dict]:
    """
    The one sampling loop: apply ``step(x, i)`` at each index i of ``indices`` without
    gradients, feed each output's "sample" to the next step, and yield every output.

    :param x: [N x ...] the starting point (noise at the first index).
    :param progress: show a tqdm progress bar titled ``desc``.
    """
    if progress:
        from tqdm.auto import tqdm

        indices = tqdm(list(indices), desc=desc, unit="step")
    for i in indices:
        with torch.no_grad():
            out = step(x, i)
        yield out
        x = out["sample"]


def starting_noise(
    shape: Sequence[int],
    noise: Optional[torch.Tensor] = None,
    device=None,
    randn: Optional[RandnFn] = None,
    model=None,
) -> torch.Tensor:
    """
    :return: ``noise`` if given, else standard normal noise of ``shape`` from ``randn`` (or
        torch's global generator) on ``device`` (default: ``model``'s).
    """
    if not isinstance(shape, (tuple, list)):
        raise ValueError(f"shape must be a tuple or list such as (N, C, H, W), got {shape!r}")
    if noise is not None:
        return noise
    if device is None:
        device = next(model.parameters()).device
    if randn is not None:
        return randn(torch.empty(*shape, device=device))
    return torch.randn(*shape, device=device)


def last(outputs: Iterator[dict], key: str = "sample") -> torch.Tensor:
    """:return: the ``key`` entry of the last output of a progressive loop."""
    final = None
    for final in outputs:
        pass
    return final[key]


def _final_sample(
    progressive: Callable[..., Iterator[dict]], doc: str
) -> Callable[..., torch.Tensor]:
    """
    The sampling loop that returns only the final sample of the ``*_progressive`` loop
    ``progressive``, with the same arguments (and signature, for ``help``).

    :param doc: the loop's docstring.
    """
    name = progressive.__name__.removesuffix("_progressive")

    def loop(self, *args, **kwargs) -> torch.Tensor:
        return last(getattr(self, progressive.__name__)(*args, **kwargs))

    loop.__name__, loop.__qualname__ = name, f"GaussianDiffusion.{name}"
    loop.__doc__ = doc
    loop.__signature__ = inspect.signature(progressive).replace(return_annotation=torch.Tensor)
    return loop


def processed_xstart(
    x0: torch.Tensor, clip_denoised: bool, denoised_fn: Optional[Callable]
) -> torch.Tensor:
    """:return: an x0 prediction through ``denoised_fn``, then clipped to [-1, 1] if asked."""
    if denoised_fn is not None:
        x0 = denoised_fn(x0)
    return x0.clamp(-1, 1) if clip_denoised else x0


class GaussianDiffusion:
    """
    Utilities for training and sampling diffusion models.

    :param betas: a 1-D sequence of betas, one per timestep, from T-1 down to 0 reversed
                  (index 0 is the first, least noisy step).
    :param model_mean_type: a ModelMeanType, what the model outputs.
    :param model_var_type: a ModelVarType, how the variance is output or fixed.
    :param loss_type: a LossType, the training objective.
    :param rescale_timesteps: if True, the model sees timesteps scaled to [0, 1000)
                              whatever the number of steps.
    """

    def __init__(
        self,
        *,
        betas: Sequence[float],
        model_mean_type: ModelMeanType,
        model_var_type: ModelVarType,
        loss_type: LossType,
        rescale_timesteps: bool = False,
    ):
        self.model_mean_type = model_mean_type
        self.model_var_type = model_var_type
        self.loss_type = loss_type
        self.rescale_timesteps = rescale_timesteps

        betas = np.array(betas, dtype=np.float64)
        if betas.ndim != 1 or len(betas) < 2:
            # one step leaves no posterior variance to clip the t = 0 log variance with
            raise ValueError(
                f"a diffusion process needs at least 2 steps, got betas of shape {betas.shape} "
                "(--diffusion_steps, or --timestep_respacing when sampling, must be >= 2)"
            )
        if not ((betas > 0).all() and (betas <= 1).all()):
            raise ValueError(
                f"every beta must lie in (0, 1], got values from {betas.min():.4g} to "
                f"{betas.max():.4g} (the 'linear' schedule needs more than 20 diffusion steps, "
                "--diffusion_steps)"
            )
        self.betas = betas
        self.num_timesteps = int(betas.shape[0])

        alphas = 1.0 - betas
        self.alphas_cumprod = np.cumprod(alphas, axis=0)
        self.alphas_cumprod_prev = np.append(1.0, self.alphas_cumprod[:-1])
        self.alphas_cumprod_next = np.append(self.alphas_cumprod[1:], 0.0)

        # for q(x_t | x_0)
        self.sqrt_alphas_cumprod = np.sqrt(self.alphas_cumprod)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - self.alphas_cumprod)
        self.log_one_minus_alphas_cumprod = np.log(1.0 - self.alphas_cumprod)
        self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod)
        self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod - 1)

        # for the posterior q(x_{t-1} | x_t, x_0)
        self.posterior_variance = (
            betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        )
        # the variance is 0 at t = 0: clip its log with the next entry
        self.posterior_log_variance_clipped = np.log(
            np.append(self.posterior_variance[1], self.posterior_variance[1:])
        )
        self.posterior_mean_coef1 = (
            betas * np.sqrt(self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        )
        self.posterior_mean_coef2 = (
            (1.0 - self.alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - self.alphas_cumprod)
        )
        self.schedule = NoiseSchedule(self.alphas_cumprod, self._model_timesteps(),
                                      *self._base_process())

    def _model_timesteps(self) -> np.ndarray:
        """:return: [T] the timestep the model receives at each index (``_scale_timesteps``)."""
        t = np.arange(self.num_timesteps, dtype=np.float64)
        return t * (1000.0 / self.num_timesteps) if self.rescale_timesteps else t

    def _base_process(self) -> tuple[np.ndarray, float]:
        """:return: (alphas_cumprod of the process the model was trained on, the model's
        timestep per index of it): this process itself."""
        return self.alphas_cumprod, 1000.0 / self.num_timesteps if self.rescale_timesteps else 1.0

    # ------------------------------------------------------------------ forward process

    def q_mean_variance(self, x_start: torch.Tensor, t: torch.Tensor):
        """
        The distribution q(x_t | x_0).

        :param x_start: [N x C x ...] noiseless inputs.
        :param t: [N] timestep indices (0 is the first step).
        :return: (mean, variance, log_variance), each of x_start's shape.
        """
        mean = _extract_into_tensor(self.sqrt_alphas_cumprod, t, x_start.shape) * x_start
        variance = _extract_into_tensor(1.0 - self.alphas_cumprod, t, x_start.shape)
        log_variance = _extract_into_tensor(self.log_one_minus_alphas_cumprod, t, x_start.shape)
        return mean, variance, log_variance

    def q_sample(
        self, x_start: torch.Tensor, t: torch.Tensor, noise: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """
        Diffuse the data by t steps: a sample of q(x_t | x_0).

        :param noise: optional standard normal noise of x_start's shape.
        :return: a noisy version of x_start.
        """
        if noise is None:
            noise = torch.randn_like(x_start)
        _check_same_shape("noise", noise, "x_start", x_start)
        return (
            _extract_into_tensor(self.sqrt_alphas_cumprod, t, x_start.shape) * x_start
            + _extract_into_tensor(self.sqrt_one_minus_alphas_cumprod, t, x_start.shape) * noise
        )

    def q_posterior_mean_variance(self, x_start: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor):
        """
        The diffusion posterior q(x_{t-1} | x_t, x_0).

        :return: (mean, variance, log_variance_clipped), each of x_t's shape.
        """
        _check_same_shape("x_start", x_start, "x_t", x_t)
        mean = (
            _extract_into_tensor(self.posterior_mean_coef1, t, x_t.shape) * x_start
            + _extract_into_tensor(self.posterior_mean_coef2, t, x_t.shape) * x_t
        )
        variance = _extract_into_tensor(self.posterior_variance, t, x_t.shape)
        log_variance = _extract_into_tensor(self.posterior_log_variance_clipped, t, x_t.shape)
        return mean, variance, log_variance

    # ------------------------------------------------------------------ reverse process

    def p_mean_variance(
        self,
        model,
        x: torch.Tensor,
        t: torch.Tensor,
        clip_denoised: bool = True,
        denoised_fn: Optional[Callable] = None,
        model_kwargs: Optional[dict] = None,
    ) -> dict:
        """
        Apply the model to get p(x_{t-1} | x_t) and a prediction of x_0.

        :param model: maps (x, timesteps, **model_kwargs) to its output.
        :param x: the [N x C x ...] tensor at time t.
        :param t: [N] timestep indices.
        :param clip_denoised: clamp the x_0 prediction to [-1, 1].
        :param denoised_fn: applied to the x_0 prediction before clipping.
        :return: dict with "mean", "variance", "log_variance" and "pred_xstart", each of
                 x's shape.
        """
        if model_kwargs is None:
            model_kwargs = {}
        B, C = x.shape[:2]
        if tuple(t.shape) != (B,):
            raise ValueError(f"timesteps must have shape ({B},) for a batch of {B}, got {tuple(t.shape)}")
        model_output = model(x, self._scale_timesteps(t), **model_kwargs)

        if self.model_var_type in (ModelVarType.LEARNED, ModelVarType.LEARNED_RANGE):
            self._check_model_output(model_output, x, 2 * C)
            model_output, model_var_values = torch.split(model_output, C, dim=1)
            if self.model_var_type == ModelVarType.LEARNED:
                model_log_variance = model_var_values
            else:
                min_log = _extract_into_tensor(self.posterior_log_variance_clipped, t, x.shape)
                max_log = _extract_into_tensor(np.log(self.betas), t, x.shape)
                frac = (model_var_values + 1) / 2  # model outputs lie in [-1, 1]
                model_log_variance = frac * max_log + (1 - frac) * min_log
            model_variance = torch.exp(model_log_variance)
        else:
            self._check_model_output(model_output, x, C)
            if self.model_var_type == ModelVarType.FIXED_LARGE:
                # betas, with the first entry set so that the decoder's log is finite
                variance = np.append(self.posterior_variance[1], self.betas[1:])
                log_variance = np.log(variance)
            else:
                variance = self.posterior_variance
                log_variance = self.posterior_log_variance_clipped
            model_variance = _extract_into_tensor(variance, t, x.shape)
            model_log_variance = _extract_into_tensor(log_variance, t, x.shape)

        def process_xstart(x0):
            return processed_xstart(x0, clip_denoised, denoised_fn)

        if self.model_mean_type == ModelMeanType.PREVIOUS_X:
            pred_xstart = process_xstart(self._predict_xstart_from_xprev(x, t, model_output))
            model_mean = model_output
        else:
            if self.model_mean_type == ModelMeanType.START_X:
                pred_xstart = process_xstart(model_output)
            else:
                pred_xstart = process_xstart(self._predict_xstart_from_eps(x, t, model_output))
            model_mean, _, _ = self.q_posterior_mean_variance(pred_xstart, x, t)

        return {
            "mean": model_mean,
            "variance": model_variance,
            "log_variance": model_log_variance,
            "pred_xstart": pred_xstart,
        }

    def _check_model_output(self, model_output: torch.Tensor, x: torch.Tensor, channels: int):
        expected = (x.shape[0], channels, *x.shape[2:])
        if tuple(model_output.shape) != expected:
            learned = self.model_var_type in (ModelVarType.LEARNED, ModelVarType.LEARNED_RANGE)
            hint = (
                "a learned variance (--learn_sigma True) needs twice the input channels"
                if learned
                else "a fixed variance (--learn_sigma False) needs as many channels as the input"
            )
            raise ValueError(
                f"model output has shape {tuple(model_output.shape)}, expected {expected}: {hint}"
            )

    def _predict_xstart_from_eps(self, x_t, t, eps):
        _check_same_shape("eps", eps, "x_t", x_t)
        return (
            _extract_into_tensor(self.sqrt_recip_alphas_cumprod, t, x_t.shape) * x_t
            - _extract_into_tensor(self.sqrt_recipm1_alphas_cumprod, t, x_t.shape) * eps
        )

    def _predict_xstart_from_xprev(self, x_t, t, xprev):
        _check_same_shape("x_prev", xprev, "x_t", x_t)
        return (  # invert the posterior mean: x_prev = coef1 x_0 + coef2 x_t
            _extract_into_tensor(1.0 / self.posterior_mean_coef1, t, x_t.shape) * xprev
            - _extract_into_tensor(
                self.posterior_mean_coef2 / self.posterior_mean_coef1, t, x_t.shape
            )
            * x_t
        )

    def _predict_eps_from_xstart(self, x_t, t, pred_xstart):
        return (
            _extract_into_tensor(self.sqrt_recip_alphas_cumprod, t, x_t.shape) * x_t - pred_xstart
        ) / _extract_into_tensor(self.sqrt_recipm1_alphas_cumprod, t, x_t.shape)

    def _scale_timesteps(self, t: torch.Tensor) -> torch.Tensor:
        if self.rescale_timesteps:
            return t.float() * (1000.0 / self.num_timesteps)
        return t

    # ------------------------------------------------------------------ guidance

    def condition_mean(self, cond_fn, p_mean_var: dict, x, t, model_kwargs=None) -> torch.Tensor:
        """
        Shift the mean by the variance times the gradient of log p(y | x_t) that
        cond_fn returns (Sohl-Dickstein et al. 2015; Dhariwal & Nichol 2021, Alg. 1).
        """
        gradient = cond_fn(x, self._scale_timesteps(t), **(model_kwargs or {}))
        return p_mean_var["mean"].float() + p_mean_var["variance"] * gradient.float()

    def condition_score(self, cond_fn, p_mean_var: dict, x, t, model_kwargs=None) -> dict:
        """
        Shift the predicted noise by -sqrt(1 - alpha_bar) times the gradient of
        log p(y | x_t) and recompute x_0 and the mean (Song et al. 2020 score
        conditioning; Dhariwal & Nichol 2021, Alg. 2).
        """
        alpha_bar = _extract_into_tensor(self.alphas_cumprod, t, x.shape)
        eps = self._predict_eps_from_xstart(x, t, p_mean_var["pred_xstart"])
        eps = eps - (1 - alpha_bar).sqrt() * cond_fn(
            x, self._scale_timesteps(t), **(model_kwargs or {})
        )
        out = p_mean_var.copy()
        out["pred_xstart"] = self._predict_xstart_from_eps(x, t, eps)
        out["mean"], _, _ = self.q_posterior_mean_variance(out["pred_xstart"], x, t)
        return out

    # ------------------------------------------------------------------ steppers

    def p_sample(
        self,
        model,
        x: torch.Tensor,
        t: torch.Tensor,
        clip_denoised: bool = True,
        denoised_fn: Optional[Callable] = None,
        cond_fn: Optional[Callable] = None,
        model_kwargs: Optional[dict] = None,
        *,
        randn: Optional[RandnFn] = None,
    ) -> dict:
        """
        One ancestral step: sample x_{t-1} from the model at x_t.

        :param cond_fn: optional gradient of log p(y | x_t) for classifier guidance.
        :param randn: optional source of the step noise (default ``torch.randn_like``).
        :return: dict with "sample" (x_{t-1}) and "pred_xstart".
        """
        out = self.p_mean_variance(model, x, t, clip_denoised, denoised_fn, model_kwargs)
        noise = (randn or torch.randn_like)(x)
        nonzero_mask = (t != 0).float().view(-1, *([1] * (x.dim() - 1)))  # no noise at t == 0
        if cond_fn is not None:
            out["mean"] = self.condition_mean(cond_fn, out, x, t, model_kwargs=model_kwargs)
        sample = out["mean"] + nonzero_mask * torch.exp(0.5 * out["log_variance"]) * noise
        return {"sample": sample, "pred_xstart": out["pred_xstart"]}

    def ddim_sample(
        self,
        model,
        x: torch.Tensor,
        t: torch.Tensor,
        clip_denoised: bool = True,
        denoised_fn: Optional[Callable] = None,
        cond_fn: Optional[Callable] = None,
        model_kwargs: Optional[dict] = None,
        eta: float = 0.0,
        *,
        randn: Optional[RandnFn] = None,
    ) -> dict:
        """
        One DDIM step (Song et al. 2021, Eq. 12) from x_t to x_{t-1}; eta = 1 gives
        ancestral-like noise, eta = 0 is deterministic.

        :param randn: optional source of the step noise (default ``torch.randn_like``).
        :return: dict with "sample" and "pred_xstart".
        """
        out = self.p_mean_variance(model, x, t, clip_denoised, denoised_fn, model_kwargs)
        if cond_fn is not None:
            out = self.condition_score(cond_fn, out, x, t, model_kwargs=model_kwargs)
        # the noise implied by the (possibly clipped) x_0 prediction
        eps = self._predict_eps_from_xstart(x, t, out["pred_xstart"])
        alpha_bar = _extract_into_tensor(self.alphas_cumprod, t, x.shape)
        alpha_bar_prev = _extract_into_tensor(self.alphas_cumprod_prev, t, x.shape)
        sigma = (
            eta
            * torch.sqrt((1 - alpha_bar_prev) / (1 - alpha_bar))
            * torch.sqrt(1 - alpha_bar / alpha_bar_prev)
        )
        noise = (randn or torch.randn_like)(x)
        # 1 - ab_prev - sigma^2 = (1 - ab_prev) e^(-2 h) at eta 1: float32 cancellation can
        # make it slightly negative over a long step (NaN in the original), hence the clamp
        mean_pred = (
            out["pred_xstart"] * torch.sqrt(alpha_bar_prev)
            + torch.sqrt((1 - alpha_bar_prev - sigma**2).clamp(min=0)) * eps
        )
        nonzero_mask = (t != 0).float().view(-1, *([1] * (x.dim() - 1)))
        sample = mean_pred + nonzero_mask * sigma * noise
        return {"sample": sample, "pred_xstart": out["pred_xstart"]}

    def ddim_reverse_sample(
        self,
        model,
        x: torch.Tensor,
        t: torch.Tensor,
        clip_denoised: bool = True,
        denoised_fn: Optional[Callable] = None,
        model_kwargs: Optional[dict] = None,
        eta: float = 0.0,
    ) -> dict:
        """
        One deterministic reverse-DDIM step from x_t to x_{t+1} (encoding an image into
        noise). Only eta = 0 is defined.

        :return: dict with "sample" (x_{t+1}) and "pred_xstart".
        """
        if eta != 0.0:
            raise ValueError(f"reverse DDIM is deterministic: eta must be 0.0, got {eta}")
        out = self.p_mean_variance(model, x, t, clip_denoised, denoised_fn, model_kwargs)
        eps = (
            _extract_into_tensor(self.sqrt_recip_alphas_cumprod, t, x.shape) * x
            - out["pred_xstart"]
        ) / _extract_into_tensor(self.sqrt_recipm1_alphas_cumprod, t, x.shape)
        alpha_bar_next = _extract_into_tensor(self.alphas_cumprod_next, t, x.shape)
        mean_pred = (
            out["pred_xstart"] * torch.sqrt(alpha_bar_next) + torch.sqrt(1 - alpha_bar_next) * eps
        )
        return {"sample": mean_pred, "pred_xstart": out["pred_xstart"]}

    # ------------------------------------------------------------------ loops

    def _sample_progressive(
        self, step: StepFn, model, shape, noise, device, progress, desc, randn
    ) -> Iterator[dict]:
        """Run ``step`` over the indices T-1 down to 0, from ``starting_noise``."""
        x = starting_noise(shape, noise, device, randn, model)
        indices = range(self.num_timesteps - 1, -1, -1)
        return sample_loop_progressive(step, x, indices, progress, desc)

    def p_sample_loop_progressive(
        self,
        model,
        shape: Sequence[int],
        noise: Optional[torch.Tensor] = None,
        clip_denoised: bool = True,
        denoised_fn: Optional[Callable] = None,
        cond_fn: Optional[Callable] = None,
        model_kwargs: Optional[dict] = None,
        device=None,
        progress: bool = False,
        *,
        randn: Optional[RandnFn] = None,
    ) -> Iterator[dict]:
        """
        Like p_sample_loop, but yield the output dict of p_sample at every step.
        """
        def step(x: torch.Tensor, i: int) -> dict:
            return self.p_sample(
                model, x, timesteps(i, x), clip_denoised=clip_denoised, denoised_fn=denoised_fn,
                cond_fn=cond_fn, model_kwargs=model_kwargs, randn=randn,
            )  # fmt: skip

        return self._sample_progressive(step, model, shape, noise, device, progress, "sampling",
                                        randn)

    p_sample_loop = _final_sample(
        p_sample_loop_progressive,
        """
        Ancestral sampling from the model (Ho et al. 2020, Algorithm 2).

        :param shape: the shape of the samples, (N, C, H, W).
        :param noise: optional starting noise of that shape.
        :param device: where to sample; defaults to the model's device.
        :param progress: show a tqdm progress bar.
        :param randn: optional source of the noise, randn(x) -> noise like x; it gives the
            starting noise too when ``noise`` is None (default: torch's global generator).
        :return: a non-differentiable batch of samples.
        """,
    )

    def ddim_sample_loop_progressive(
        self,
        model,
        shape: Sequence[int],
        noise: Optional[torch.Tensor] = None,
        clip_denoised: bool = True,
        denoised_fn: Optional[Callable] = None,
        cond_fn: Optional[Callable] = None,
        model_kwargs: Optional[dict] = None,
        device=None,
        progress: bool = False,
        eta: float = 0.0,
        *,
        randn: Optional[RandnFn] = None,
    ) -> Iterator[dict]:
        """
        Like ddim_sample_loop, but yield the output dict of ddim_sample at every step.
        """
        def step(x: torch.Tensor, i: int) -> dict:
            return self.ddim_sample(
                model, x, timesteps(i, x), clip_denoised=clip_denoised, denoised_fn=denoised_fn,
                cond_fn=cond_fn, model_kwargs=model_kwargs, eta=eta, randn=randn,
            )  # fmt: skip

        return self._sample_progressive(step, model, shape, noise, device, progress, "DDIM",
                                        randn)

    ddim_sample_loop = _final_sample(
        ddim_sample_loop_progressive,
        """
        DDIM sampling (Song et al. 2021); same arguments as p_sample_loop plus eta.
        """,
    )

    # ------------------------------------------------------------------ likelihood

    def _vb_terms_bpd(
        self, model, x_start, x_t, t, clip_denoised: bool = True, model_kwargs=None
    ) -> dict:
        """
        One term of the variational bound, in bits per dimension: the decoder NLL at
        t == 0, KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)) elsewhere.

        :return: dict with "output" ([N] bits/dim) and "pred_xstart".
        """
        true_mean, _, true_log_variance_clipped = self.q_posterior_mean_variance(x_start, x_t, t)
        out = self.p_mean_variance(model, x_t, t, clip_denoised=clip_denoised, model_kwargs=model_kwargs)
        kl = normal_kl(true_mean, true_log_variance_clipped, out["mean"], out["log_variance"])
        kl = mean_flat(kl) / math.log(2.0)
        decoder_nll = -discretized_gaussian_log_likelihood(
            x_start, means=out["mean"], log_scales=0.5 * out["log_variance"]
        )
        decoder_nll = mean_flat(decoder_nll) / math.log(2.0)
        output = torch.where(t == 0, decoder_nll, kl)
        return {"output": output, "pred_xstart": out["pred_xstart"]}

    def training_losses(
        self,
        model,
        x_start: torch.Tensor,
        t: torch.Tensor,
        model_kwargs: Optional[dict] = None,
        noise: Optional[torch.Tensor] = None,
    ) -> dict:
        """
        Training losses for one batch at the given timesteps.

        :param x_start: the [N x C x ...] clean inputs.
        :param t: [N] timestep indices.
        :param noise: optional Gaussian noise to diffuse with.
        :return: dict of [N] tensors: "loss", and for MSE losses "mse" (plus "vb" with a
                 learned variance).
        """
        if model_kwargs is None:
            model_kwargs = {}
        if noise is None:
            noise = torch.randn_like(x_start)
        x_t = self.q_sample(x_start, t, noise=noise)

        terms = {}
        if self.loss_type.is_vb():
            terms["loss"] = self._vb_terms_bpd(
                model, x_start, x_t, t, clip_denoised=False, model_kwargs=model_kwargs
            )["output"]
            if self.loss_type == LossType.RESCALED_KL:
                terms["loss"] = terms["loss"] * self.num_timesteps
            return terms
        if self.loss_type not in (LossType.MSE, LossType.RESCALED_MSE):
            raise NotImplementedError(self.loss_type)

        model_output = model(x_t, self._scale_timesteps(t), **model_kwargs)
        if self.model_var_type in (ModelVarType.LEARNED, ModelVarType.LEARNED_RANGE):
            C = x_t.shape[1]
            self._check_model_output(model_output, x_t, 2 * C)
            model_output, model_var_values = torch.split(model_output, C, dim=1)
            # the bound trains only the variance: the mean goes in detached
            frozen_out = torch.cat([model_output.detach(), model_var_values], dim=1)
            terms["vb"] = self._vb_terms_bpd(
                lambda *args, r=frozen_out: r, x_start, x_t, t, clip_denoised=False
            )["output"]
            if self.loss_type == LossType.RESCALED_MSE:
                # the MSE term is a mean over pixels; 1000 steps keep the original weighting
                terms["vb"] = terms["vb"] * (self.num_timesteps / 1000.0)
        else:
            self._check_model_output(model_output, x_t, x_t.shape[1])

        if self.model_mean_type == ModelMeanType.PREVIOUS_X:
            target = self.q_posterior_mean_variance(x_start, x_t, t)[0]
        elif self.model_mean_type == ModelMeanType.START_X:
            target = x_start
        else:
            target = noise
        terms["mse"] = mean_flat((target - model_output) ** 2)
        terms["loss"] = terms["mse"] + terms["vb"] if "vb" in terms else terms["mse"]
        return terms

    def _prior_bpd(self, x_start: torch.Tensor) -> torch.Tensor:
        """
        KL(q(x_T | x_0) || N(0, I)) in bits/dim; not trainable, but part of the bound.

        :return: [N] bits/dim.
        """
        t = torch.tensor([self.num_timesteps - 1] * x_start.shape[0], device=x_start.device)
        qt_mean, _, qt_log_variance = self.q_mean_variance(x_start, t)
        kl_prior = normal_kl(qt_mean, qt_log_variance, 0.0, 0.0)
        return mean_flat(kl_prior) / math.log(2.0)

    def calc_bpd_loop(
        self,
        model,
        x_start: torch.Tensor,
        clip_denoised: bool = True,
        model_kwargs=None,
        *,
        randn: Optional[RandnFn] = None,
    ) -> dict:
        """
        The whole variational bound in bits/dim, with the terms behind it.

        :param x_start: the [N x C x ...] inputs.
        :param randn: optional source of the noise of each term (default ``torch.randn_like``).
        :return: dict with "total_bpd" [N], "prior_bpd" [N], "vb" [N x T] (bound terms),
                 "xstart_mse" [N x T] and "mse" [N x T] (epsilon MSE) per timestep.
        """
        batch_size = x_start.shape[0]
        vb, xstart_mse, mse = [], [], []
        for i in list(range(self.num_timesteps))[::-1]:
            t = torch.tensor([i] * batch_size, device=x_start.device)
            noise = (randn or torch.randn_like)(x_start)
            x_t = self.q_sample(x_start, t, noise=noise)
            with torch.no_grad():
                out = self._vb_terms_bpd(
                    model, x_start, x_t, t, clip_denoised=clip_denoised, model_kwargs=model_kwargs
                )
            vb.append(out["output"])
            xstart_mse.append(mean_flat((out["pred_xstart"] - x_start) ** 2))
            eps = self._predict_eps_from_xstart(x_t, t, out["pred_xstart"])
            mse.append(mean_flat((eps - noise) ** 2))

        vb = torch.stack(vb, dim=1)  # (N, T), from t = T-1 down to 0
        prior_bpd = self._prior_bpd(x_start)
        return {
            "total_bpd": vb.sum(dim=1) + prior_bpd,
            "prior_bpd": prior_bpd,
            "vb": vb,
            "xstart_mse": torch.stack(xstart_mse, dim=1),
            "mse": torch.stack(mse, dim=1),
        }


def _check_same_shape(name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{name_a} has shape {tuple(a.shape)} but {name_b} has {tuple(b.shape)}")


def _extract_into_tensor(arr: np.ndarray, timesteps: torch.Tensor, broadcast_shape) -> torch.Tensor:
    """
    Gather a 1-D numpy array at a batch of indices, as float32 broadcast to a shape.

    :param arr: the 1-D array (float64).
    :param timesteps: [N] integer indices.
    :param broadcast_shape: a shape [N x ...] to broadcast to.
    :return: a float32 tensor of broadcast_shape on the timesteps' device.
    """
    res = torch.from_numpy(arr).to(device=timesteps.device)[timesteps].float()
    return res.view(*res.shape, *([1] * (len(broadcast_shape) - res.dim()))).expand(broadcast_shape)
