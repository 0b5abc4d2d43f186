"""
The editing and restoration methods and the degradation operators, checked against the
properties each paper promises: closed-form Gaussian models where the exact answer is
known, exact data consistency, and the published schedules.
"""

import numpy as np
import pytest
import torch

from guided_diffusion import gaussian_diffusion as gd
from guided_diffusion import operators as ops
from guided_diffusion.editing import ddim_decode, ddim_invert, ilvr_progressive, sdedit
from guided_diffusion.respace import SpacedDiffusion, space_timesteps
from guided_diffusion.restoration import (
    ddnm,
    ddnm_lambda,
    ddnm_noise_variance,
    ddnm_step,
    dps,
    dps_correction,
    repaint,
    repaint_schedule,
)

from diffusion_toys import ToyModel, arange_images, make_diffusion


class GaussianEps(torch.nn.Module):
    """
    The exact noise prediction for data x_0 ~ N(mu, Sigma) (one Sigma for the channels of
    every pixel): eps(x_t) = sqrt(1 - ab) (ab Sigma + (1 - ab) I)^-1 (x_t - sqrt(ab) mu).
    """

    def __init__(self, alphas_cumprod: np.ndarray, mu: float, cov: torch.Tensor):
        super().__init__()
        self.ab = torch.tensor(alphas_cumprod, dtype=torch.float64)
        self.mu, self.cov = mu, cov.double()

    def forward(self, x, t, **_):
        ab = self.ab[t[0].long()].item()
        channels = x.shape[1]
        precision = torch.linalg.inv(ab * self.cov + (1 - ab) * torch.eye(channels, dtype=torch.float64))
        centred = (x.double() - ab**0.5 * self.mu).movedim(1, -1)  # (N, H, W, C)
        return ((1 - ab) ** 0.5 * centred @ precision).movedim(-1, 1).to(x.dtype)


def spaced(steps: int, base_steps: int = 1000, schedule: str = "linear") -> SpacedDiffusion:
    return SpacedDiffusion(
        space_timesteps(base_steps, str(steps)),
        betas=gd.get_named_beta_schedule(schedule, base_steps),
        model_mean_type=gd.ModelMeanType.EPSILON,
        model_var_type=gd.ModelVarType.FIXED_SMALL,
        loss_type=gd.LossType.MSE,
    )


# ---------------------------------------------------------------- DDIM inversion


def test_ddim_round_trip_error_falls_with_steps_and_is_tiny_at_1000():
    base = spaced(1000)
    model = GaussianEps(base.alphas_cumprod, mu=0.2, cov=0.36 * torch.eye(3))
    generator = torch.Generator().manual_seed(0)
    images = 0.2 + 0.6 * torch.randn(2, 3, 4, 4, generator=generator, dtype=torch.float64)
    assert (images.abs() > 1).any()  # clipping x0 to [-1, 1] would lose these pixels
    errors = []
    for steps in (10, 50, 200, 1000):
        diffusion = spaced(steps)
        noise = ddim_invert(diffusion, model, images)
        decoded = ddim_decode(diffusion, model, noise)
        errors.append(((decoded - images) / 2).pow(2).mean().item())  # MSE on [0, 1]
    assert all(a > b for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < 1e-5, errors


def test_ddim_inversion_gives_standard_noise_for_gaussian_data():
    diffusion = spaced(100)
    model = GaussianEps(spaced(1000).alphas_cumprod, mu=0.2, cov=0.36 * torch.eye(3))
    generator = torch.Generator().manual_seed(0)  # seeded: the global state varies by test order
    images = 0.2 + 0.6 * torch.randn(64, 3, 4, 4, dtype=torch.float64, generator=generator)
    noise = ddim_invert(diffusion, model, images)
    assert abs(noise.mean().item()) < 0.05 and abs(noise.std().item() - 1) < 0.05


def test_guided_ddim_inversion_is_a_round_trip_with_the_same_guidance():
    # classifier guidance toward a Gaussian likelihood: grad log p(y | x) = -0.1 (x - 0.5)
    base = spaced(1000)
    model = GaussianEps(base.alphas_cumprod, mu=0.2, cov=0.36 * torch.eye(3))

    def cond_fn(x, t, **_):
        return -0.1 * (x - 0.5)

    generator = torch.Generator().manual_seed(0)
    images = 0.2 + 0.6 * torch.randn(2, 3, 4, 4, generator=generator, dtype=torch.float64)
    errors, edits = [], []
    for steps in (10, 50, 200):
        diffusion = spaced(steps)
        noise = ddim_invert(diffusion, model, images, cond_fn=cond_fn)
        decoded = ddim_decode(diffusion, model, noise, cond_fn=cond_fn)
        errors.append(((decoded - images) / 2).pow(2).mean().item())  # MSE on [0, 1]
        # inverted without the guidance and decoded with it: an edit, not a round trip
        unguided = ddim_invert(diffusion, model, images)
        edited = ddim_decode(diffusion, model, unguided, cond_fn=cond_fn)
        edits.append(((edited - images) / 2).pow(2).mean().item())
    assert all(a > b for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < 1e-3 and min(edits) > 20 * errors[-1], (errors, edits)


# ---------------------------------------------------------------- RePaint


def test_repaint_schedule_with_published_settings():
    schedule = repaint_schedule(250, jump_length=10, jump_n_sample=10)
    pairs = list(zip(schedule, schedule[1:]))
    assert len(schedule) == 4571
    assert sum(b == a - 1 for a, b in pairs) == 2410  # model calls
    assert sum(b == a + 1 for a, b in pairs) == 2160  # re-noising steps
    assert schedule[0] == 249 and schedule[-1] == -1
    assert repaint_schedule(5, 10, 10) == [4, 3, 2, 1, 0, -1]


def _repaint_gaussian_mean(jump_n_sample: int, known_value: float, rho: float) -> float:
    diffusion = make_diffusion(steps=20, schedule="cosine", var_type=gd.ModelVarType.FIXED_SMALL)
    model = GaussianEps(diffusion.alphas_cumprod, 0.0, torch.tensor([[1.0, rho], [rho, 1.0]]))
    known = torch.zeros(2000, 2, 1, 1, dtype=torch.float64)
    known[:, 0] = known_value
    mask = torch.tensor([1.0, 0.0], dtype=torch.float64).view(1, 2, 1, 1)
    torch.manual_seed(0)
    out = repaint(
        diffusion, model, known, mask, jump_length=2, jump_n_sample=jump_n_sample,
        clip_denoised=False, noise=torch.randn(known.shape, dtype=torch.float64),
    )  # fmt: skip
    return out[:, 1].mean().item()


def test_repaint_resampling_approaches_the_exact_conditional_mean():
    rho, known_value = 0.95, 1.5
    exact = rho * known_value  # E[x_2 | x_1] for unit variances
    error_1 = abs(_repaint_gaussian_mean(1, known_value, rho) - exact)
    error_10 = abs(_repaint_gaussian_mean(10, known_value, rho) - exact)
    assert error_10 * 2 <= error_1, (error_1, error_10)


def test_repaint_paste_returns_known_pixels_exactly():
    diffusion = make_diffusion(steps=6)
    known = arange_images(2, 3, 8, 8)
    mask = ops.named_mask("half", 8)
    out = repaint(diffusion, ToyModel(), known, mask, jump_length=2, jump_n_sample=2, paste=True)
    assert torch.equal(out * mask, known * mask)
    unpasted = repaint(diffusion, ToyModel(), known, mask, jump_length=2, jump_n_sample=2)
    assert not torch.equal(unpasted * mask, known * mask)


def test_repaint_passes_labels_and_guidance():
    diffusion = make_diffusion(steps=4)
    model, seen = ToyModel(), []

    def cond_fn(x, t, y=None):
        seen.append(y)
        return torch.zeros_like(x)

    y = torch.tensor([1, 2])
    repaint(
        diffusion, model, arange_images(2, 3, 4, 4), ops.named_mask("box", 4), jump_length=1,
        jump_n_sample=2, cond_fn=cond_fn, model_kwargs={"y": y},
    )  # fmt: skip
    assert len(seen) == len(model.seen_timesteps) > 4 and all(torch.equal(s, y) for s in seen)


# ---------------------------------------------------------------- DDNM, ILVR, DPS, SDEdit


@pytest.mark.parametrize(
    "name,extra",
    [("inpaint", "random"), ("inpaint", "half"), ("sr_avgpool", None), ("colorize", None)],
)
def test_ddnm_result_satisfies_the_measurement(name, extra):
    shape = (3, 8, 8)
    mask = ops.named_mask(extra, 8, ratio=0.5) if extra else None
    operator = ops.make_operator(name, shape, mask=mask, sr_factor=2)
    x = arange_images(2, *shape)
    y = operator.forward(x)
    torch.manual_seed(0)
    diffusion = make_diffusion(steps=5, var_type=gd.ModelVarType.LEARNED_RANGE)
    out = ddnm(diffusion, ToyModel(learn_sigma=True), operator, y)
    assert (operator.forward(out) - y).abs().max().item() < 1e-5
    assert (out - x).abs().max().item() > 1e-2  # the null space is the model's


def test_ddnm_refuses_an_operator_without_pseudo_inverse():
    operator = ops.make_operator("blur", (3, 8, 8), blur_kernel_size=3, blur_sigma=1.0)
    with pytest.raises(ops.OperatorError, match="pseudo-inverse"):
        ddnm(make_diffusion(steps=2), ToyModel(), operator, operator.forward(arange_images(1, 3, 8, 8)))


def test_ddnm_lambda_scales_down_only_with_noisy_measurements():
    diffusion = make_diffusion(steps=10)
    assert ddnm_lambda(diffusion, 5, 0.0) == 1.0
    assert ddnm_lambda(diffusion, 9, 0.05) == 1.0  # noise level far above sigma_y
    ab = diffusion.alphas_cumprod[0]  # at t = 1, a_t = sqrt(ab_0), sigma_t = sqrt(1 - ab_0)
    assert ddnm_lambda(diffusion, 1, 0.5) == pytest.approx(np.sqrt(1 - ab) / (np.sqrt(ab) * 0.5))


class ZeroEps(torch.nn.Module):
    """Predicts no noise: x0(x_t) = x_t / sqrt(ab_t), the same for every draw of y and z."""

    def forward(self, x, t, **_):
        return torch.zeros_like(x)


@pytest.mark.parametrize("eta", [1.0, 0.5])
@pytest.mark.parametrize("ratio", [0.9, 2.0])  # a_t sigma_y / sigma_t: below 1 and above
def test_ddnm_plus_step_has_the_variance_of_its_closed_form(eta, ratio):
    """
    DDNM+ (Wang et al. 2023, section 3.3) with A = I and y = x + sigma_y n: the corrected
    x0' = (1 - lambda) x0 + lambda y brings a_t lambda sigma_y n into x_{t-1}, and the added
    noise has variance gamma_t eta^2, so Var[x_{t-1}] = (a_t lambda sigma_y)^2 + gamma_t eta^2;
    with eta = 1 it is sigma_t^2 = 1 - ab_{t-1}, the noise of the level, for any sigma_y.
    """
    diffusion, t = make_diffusion(steps=10), 4
    ab_prev = diffusion.schedule.alpha_bar(t - 1)
    a, sigma = np.sqrt(ab_prev), np.sqrt(1 - ab_prev)
    sigma_y = ratio * sigma / a
    lam = ddnm_lambda(diffusion, t, sigma_y)
    gamma = ddnm_noise_variance(diffusion, t, sigma_y)
    assert lam == pytest.approx(min(1.0, 1 / ratio))
    assert gamma == pytest.approx(max(0.0, sigma**2 - (a * lam * sigma_y) ** 2))

    draws, shape = 20000, (3, 2, 2)
    generator = torch.Generator().manual_seed(0)
    x = arange_images(1, *shape).double()
    y = x + sigma_y * torch.randn((draws, *shape), generator=generator, dtype=torch.float64)
    x_t = arange_images(1, *shape).double().flip(-1).expand(draws, *shape)
    torch.manual_seed(1)
    out = ddnm_step(
        diffusion, ZeroEps(), ops.make_operator("none", shape), y, x_t, t, eta=eta,
        sigma_y=sigma_y, clip_denoised=False,
    )  # fmt: skip
    variance = out["sample"].var(dim=0).mean().item()
    expected = (a * lam * sigma_y) ** 2 + gamma * eta**2
    assert variance == pytest.approx(expected, rel=0.03)
    if eta == 1.0:
        assert expected == pytest.approx(sigma**2)
    x0 = x_t[0] / np.sqrt(diffusion.alphas_cumprod[t])
    mean = a * ((1 - lam) * x0 + lam * x[0])  # eta = 1: no eps term; 0.5: eps = 0 here
    assert torch.allclose(out["sample"].mean(dim=0), mean, atol=0.02)


def test_ddnm_without_measurement_noise_is_plain_ddnm():
    diffusion = make_diffusion(steps=10)
    for t in range(10):
        assert ddnm_lambda(diffusion, t, 0.0) == 1.0
        assert ddnm_noise_variance(diffusion, t, 0.0) == 1 - diffusion.schedule.alpha_bar(t - 1)


def test_ilvr_with_exact_projection_keeps_the_reference_low_pass():
    diffusion = make_diffusion(steps=8)
    reference = arange_images(2, 3, 8, 8)
    phi = ops.low_pass_filter(2, (3, 8, 8), kind="avgpool")
    steps = list(ilvr_progressive(diffusion, ToyModel(), reference, phi, range_t=2))
    refined = [out for out in steps if "reference" in out]
    assert len(refined) == 5  # t = 7 .. 3
    for out in refined:
        assert torch.allclose(phi(out["sample"]), phi(out["reference"]), atol=1e-6)
    assert not torch.allclose(phi(steps[-1]["sample"]), phi(reference), atol=1e-3)


def test_dps_step_size_rule_equals_its_closed_form():
    torch.manual_seed(0)
    operator = ops.make_operator("sr_avgpool", (3, 4, 4), sr_factor=2)
    x = torch.randn(3, 3, 4, 4, dtype=torch.float64)
    y = torch.randn(3, 3, 2, 2, dtype=torch.float64)
    c, zeta = 0.7, 0.4
    correction, _ = dps_correction(x, lambda v: c * v, operator, y, zeta)
    # -zeta / ||r|| * grad ||r||^2 with r = y - A(c x): 2 zeta c A^T r / ||r||, per image
    residual = y - operator.forward(c * x)
    norms = residual.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    expected = 2 * zeta * c * operator.adjoint(residual) / norms
    assert correction.dtype == torch.float64
    assert torch.allclose(correction, expected, rtol=1e-12, atol=1e-14)


def test_dps_correction_is_per_image():
    operator = ops.make_operator("colorize", (3, 4, 4))
    x = arange_images(2, 3, 4, 4).double()
    y = operator.forward(torch.zeros_like(x))
    both, _ = dps_correction(x, lambda v: v, operator, y, 1.0)
    alone, _ = dps_correction(x[:1], lambda v: v, operator, y[:1], 1.0)
    assert torch.allclose(both[:1], alone, rtol=1e-12)


def test_dps_runs_and_moves_towards_the_measurement():
    operator = ops.make_operator("inpaint", (3, 8, 8), mask=ops.named_mask("half", 8))
    x = arange_images(2, 3, 8, 8)
    y = operator.forward(x)
    torch.manual_seed(0)
    plain = dps(make_diffusion(steps=6), ToyModel(), operator, y, zeta=0.0)
    torch.manual_seed(0)
    guided = dps(make_diffusion(steps=6), ToyModel(), operator, y, zeta=1.0)
    assert (operator.forward(guided) - y).norm() < (operator.forward(plain) - y).norm()


def test_sdedit_strength_zero_returns_the_input():
    guide = arange_images(2, 3, 4, 4)
    out = sdedit(make_diffusion(steps=10), ToyModel(), guide, strength=0.0, repeats=3)
    assert torch.equal(out, guide)


def test_sdedit_keeps_the_masked_region_and_repeats():
    diffusion, model = make_diffusion(steps=10), ToyModel()
    guide = arange_images(2, 3, 8, 8)
    keep = ops.named_mask("half", 8)
    out = sdedit(diffusion, model, guide, strength=0.5, repeats=2, keep_mask=keep)
    assert torch.equal(out * keep, guide * keep)
    assert len(model.seen_timesteps) == 10  # 5 steps, twice
    assert model.seen_timesteps[0][0].item() == 4


# ---------------------------------------------------------------- operators


@pytest.mark.parametrize("name", ops.OPERATOR_NAMES)
def test_operator_adjoint_and_pseudo_inverse(name):
    shape = (3, 8, 8)
    operator = ops.make_operator(
        name, shape, mask=ops.named_mask("lines", 8), sr_factor=2, blur_kernel_size=5, blur_sigma=1.0
    )
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, *shape, generator=generator, dtype=torch.float64)
    y = torch.randn(operator.forward(x).shape, generator=generator, dtype=torch.float64)
    # <A x, y> = <x, A^T y>
    assert torch.allclose((operator.forward(x) * y).sum(), (x * operator.adjoint(y)).sum())
    if operator.has_pinv:
        y = operator.forward(x)
        assert torch.allclose(operator.forward(operator.pinv(y)), y)
    else:
        with pytest.raises(ops.OperatorError):
            operator.pinv(y)
    assert operator.visualise(operator.forward(x)).shape == x.shape


def test_named_masks():
    assert ops.named_mask("half", 8)[0, 0, :4].all() and not ops.named_mask("half", 8)[0, 0, 4:].any()
    assert ops.named_mask("box", 8).sum() == 64 - 16
    assert ops.named_mask("random", 10, ratio=0.92).sum() == 8
    assert ops.named_mask("lines", 4)[0, 0, :, 0].tolist() == [1, 0, 1, 0]
    with pytest.raises(ops.OperatorError, match="--mask"):
        ops.named_mask("star", 8)


def test_operators_that_do_not_fit_the_image_are_refused():
    with pytest.raises(ops.OperatorError, match="--sr_factor 3"):
        ops.make_operator("sr_bicubic", (3, 16, 16), sr_factor=3)
    with pytest.raises(ops.OperatorError, match="mask"):
        ops.make_operator("inpaint", (3, 16, 16), mask=ops.named_mask("half", 8))
    with pytest.raises(ops.OperatorError, match="colorize"):
        ops.make_operator("colorize", (1, 16, 16))


def test_measurement_noise():
    operator = ops.make_operator("none", (3, 16, 16))
    x = torch.zeros(4, 3, 16, 16)
    y = operator.measure(x, sigma_y=0.05, generator=torch.Generator().manual_seed(0))
    assert abs(y.std().item() - 0.05) < 0.005
