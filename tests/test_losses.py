import math

import pytest
import torch

from guided_diffusion.losses import (
    approx_standard_normal_cdf,
    discretized_gaussian_log_likelihood,
    normal_kl,
)


def test_kl_of_identical_gaussians_is_zero():
    mean = torch.linspace(-2, 2, 11)
    logvar = torch.linspace(-3, 1, 11)
    assert torch.allclose(normal_kl(mean, logvar, mean, logvar), torch.zeros(11), atol=1e-7)


def test_kl_matches_closed_form_of_torch_distributions():
    g = torch.Generator().manual_seed(0)
    m1, m2 = torch.randn(20, generator=g, dtype=torch.float64), torch.randn(20, generator=g, dtype=torch.float64)
    lv1, lv2 = torch.randn(20, generator=g, dtype=torch.float64), torch.randn(20, generator=g, dtype=torch.float64)
    expected = torch.distributions.kl_divergence(
        torch.distributions.Normal(m1, torch.exp(0.5 * lv1)),
        torch.distributions.Normal(m2, torch.exp(0.5 * lv2)),
    )
    assert torch.allclose(normal_kl(m1, lv1, m2, lv2), expected, atol=1e-12)


def test_kl_accepts_scalars_and_needs_one_tensor():
    m = torch.tensor([0.3, -0.2])
    lv = torch.tensor([0.1, -0.5])
    assert torch.allclose(normal_kl(m, lv, 0.0, 0.0), normal_kl(m, lv, torch.zeros(2), torch.zeros(2)))
    with pytest.raises(TypeError, match="Tensor"):
        normal_kl(0.0, 0.0, 0.0, 0.0)


def test_approx_cdf_is_close_to_exact_normal_cdf():
    x = torch.linspace(-5, 5, 101, dtype=torch.float64)
    exact = 0.5 * (1 + torch.erf(x / math.sqrt(2)))
    assert (approx_standard_normal_cdf(x) - exact).abs().max() < 2e-3


@pytest.mark.parametrize("mean,log_scale", [(0.0, -3.0), (0.5, -1.0), (-0.9, -5.0), (0.99, 0.5)])
def test_discretized_likelihood_sums_to_one_over_the_256_bins(mean, log_scale):
    bins = torch.arange(256, dtype=torch.float64) / 127.5 - 1.0  # uint8 -> [-1, 1]
    log_probs = discretized_gaussian_log_likelihood(
        bins,
        means=torch.full_like(bins, mean),
        log_scales=torch.full_like(bins, log_scale),
    )
    assert log_probs.exp().sum().item() == pytest.approx(1.0, abs=1e-6)
    if log_scale <= -3.0:  # narrow: the most likely bin is the one nearest the mean
        assert abs(bins[log_probs.argmax()].item() - mean) <= 1.0 / 127.5 + 1e-9


def test_discretized_likelihood_shape_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match="one shape"):
        discretized_gaussian_log_likelihood(torch.zeros(3), means=torch.zeros(4), log_scales=torch.zeros(3))
