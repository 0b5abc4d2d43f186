import numpy as np
import pytest
import torch

from guided_diffusion.resample import (
    LossAwareSampler,
    LossSecondMomentResampler,
    UniformSampler,
    create_named_schedule_sampler,
)

from diffusion_toys import make_diffusion


def test_named_samplers_and_unknown_name():
    d = make_diffusion(20)
    assert isinstance(create_named_schedule_sampler("uniform", d), UniformSampler)
    assert isinstance(create_named_schedule_sampler("loss-second-moment", d), LossSecondMomentResampler)
    with pytest.raises(ValueError, match=r"'lossy'.*uniform, loss-second-moment"):
        create_named_schedule_sampler("lossy", d)


def test_uniform_sampler_draws_all_timesteps_with_unit_weights():
    sampler = UniformSampler(make_diffusion(20))
    np.random.seed(0)
    t, w = sampler.sample(4000, "cpu")
    assert t.dtype == torch.int64 and w.dtype == torch.float32
    assert torch.equal(w, torch.ones(4000))
    counts = np.bincount(t.numpy(), minlength=20)
    assert counts.min() > 120 and counts.max() < 280


def test_second_moment_sampler_warms_up_then_weights_by_rms_loss():
    d = make_diffusion(10)
    sampler = LossSecondMomentResampler(d, history_per_term=3, uniform_prob=0.01)
    assert isinstance(sampler, LossAwareSampler)
    assert np.array_equal(sampler.weights(), np.ones(10))
    losses = np.arange(1, 11, dtype=np.float64)
    for rep in range(3):
        sampler.update_with_local_losses(torch.arange(10), torch.tensor(losses))
    w = sampler.weights()
    expected = losses / losses.sum() * 0.99 + 0.001
    assert np.allclose(w, expected)
    # the history is a sliding window: new losses push the oldest out
    for rep in range(3):
        sampler.update_with_all_losses([0], [100.0])
    assert np.allclose(sampler._loss_history[0], [100.0] * 3)
    # importance weights keep the estimator unbiased: E[w * 1] = 1
    np.random.seed(1)
    t, iw = sampler.sample(20000, "cpu")
    assert iw.mean().item() == pytest.approx(1.0, abs=0.05)
    assert (t == 0).float().mean().item() > 0.5  # timestep 0 now dominates


def test_numpy_2_integer_counts():
    sampler = LossSecondMomentResampler(make_diffusion(5), history_per_term=2)
    assert sampler._loss_counts.dtype == np.int64
    sampler.update_with_local_losses(torch.tensor([1, 1, 1]), torch.tensor([1.0, 2.0, 3.0]))
    assert sampler._loss_counts[1] == 2
