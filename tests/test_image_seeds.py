"""
Per-image random streams (guided_diffusion.image_seeds) and the ``randn=`` keyword of the
diffusion loops: an image depends on (seed, index) alone, never on its batch.
"""

import torch
import torch.nn as nn

from guided_diffusion import gaussian_diffusion as gd
from guided_diffusion.image_seeds import ImageRandom, image_seeds
from guided_diffusion.respace import SpacedDiffusion, space_timesteps


def diffusion() -> SpacedDiffusion:
    return SpacedDiffusion(
        use_timesteps=space_timesteps(20, "4"),
        betas=gd.get_named_beta_schedule("cosine", 20),
        model_mean_type=gd.ModelMeanType.EPSILON,
        model_var_type=gd.ModelVarType.FIXED_SMALL,
        loss_type=gd.LossType.MSE,
    )


class PixelEps(nn.Module):
    """A per-pixel map (no mixing across the batch): eps = 0.5 * tanh(x)."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(0.5))

    def forward(self, x, t, **kwargs):
        return self.scale * torch.tanh(x)


def test_seeds_differ_by_image_and_by_run():
    assert image_seeds(0, 1) == image_seeds(0, 1)
    assert len({image_seeds(0, i) for i in range(50)} | {image_seeds(1, i) for i in range(50)}) == 100


def test_an_image_draws_the_same_numbers_in_any_batch():
    whole = ImageRandom(7, [3, 4, 5, 6])
    first, second = ImageRandom(7, [3, 4]), ImageRandom(7, [5, 6])
    like = torch.empty(4, 2, 3)
    for _ in range(3):  # x_T, then two steps
        expected = whole.randn(like)
        got = torch.cat([first.randn(like[:2]), second.randn(like[2:])])
        assert torch.equal(got, expected)
    labels = ImageRandom(7, [3, 4, 5, 6]).labels(10)
    assert torch.equal(torch.cat([first.labels(10), second.labels(10)]), labels)
    assert labels.dtype == torch.int64 and 0 <= labels.min() and labels.max() < 10
    assert not torch.equal(ImageRandom(8, [3]).noise((1, 4)), ImageRandom(7, [3]).noise((1, 4)))


def test_loops_with_per_image_noise_do_not_depend_on_the_batch():
    model, process = PixelEps(), diffusion()
    for loop in (process.p_sample_loop, lambda *a, **k: process.ddim_sample_loop(*a, eta=1.0, **k)):
        whole = loop(model, (4, 3, 4, 4), randn=ImageRandom(0, range(4)).randn)
        parts = [
            loop(model, (len(ix), 3, 4, 4), randn=ImageRandom(0, ix).randn)
            for ix in ([0, 1, 2], [3])
        ]
        torch.testing.assert_close(torch.cat(parts), whole, rtol=0, atol=1e-6)


def test_samplers_share_the_initial_noise():
    model, process = PixelEps(), diffusion()
    seen = []
    for loop in (process.p_sample_loop_progressive, process.ddim_sample_loop_progressive):
        randn = ImageRandom(3, [0, 1]).randn
        outputs = loop(model, (2, 3, 4, 4), randn=lambda x, r=randn: seen.append(r(x)) or seen[-1])
        next(iter(outputs))
    assert torch.equal(seen[0], seen[2])  # x_T of the ancestral run == x_T of the DDIM run


def test_default_noise_is_unchanged():
    model, process = PixelEps(), diffusion()
    torch.manual_seed(5)
    default = process.p_sample_loop(model, (2, 3, 4, 4))
    torch.manual_seed(5)
    explicit = process.p_sample_loop(model, (2, 3, 4, 4), randn=torch.randn_like)
    assert torch.equal(default, explicit)


def test_bpd_terms_per_image():
    model, process = PixelEps(), diffusion()
    x = torch.rand(3, 3, 4, 4) * 2 - 1
    whole = process.calc_bpd_loop(model, x, randn=ImageRandom(1, range(3)).randn)
    part = process.calc_bpd_loop(model, x[2:], randn=ImageRandom(1, [2]).randn)
    torch.testing.assert_close(part["mse"], whole["mse"][2:], rtol=0, atol=1e-6)
