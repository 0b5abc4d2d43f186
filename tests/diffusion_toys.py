"""Tiny deterministic models and helpers shared by the diffusion tests."""

import torch
import torch.nn as nn

from guided_diffusion import gaussian_diffusion as gd


class ToyModel(nn.Module):
    """
    A deterministic stand-in for a UNet: the mean channels are an affine function of x and
    t, the (optional) variance channels are tanh(x). Records the timesteps it sees.
    """

    def __init__(self, learn_sigma: bool = False, scale: float = 0.5):
        super().__init__()
        self.learn_sigma = learn_sigma
        self.scale = nn.Parameter(torch.tensor(scale))
        self.seen_timesteps: list[torch.Tensor] = []

    def forward(self, x, t, y=None):
        self.seen_timesteps.append(t.detach().clone())
        tt = t.float().view(-1, *([1] * (x.dim() - 1)))
        mean = self.scale * x + 0.001 * tt
        if y is not None:
            mean = mean + 0.01 * y.float().view(-1, *([1] * (x.dim() - 1)))
        if self.learn_sigma:
            return torch.cat([mean, torch.tanh(x)], dim=1)
        return mean


def make_diffusion(
    steps: int = 20,
    schedule: str = "cosine",
    mean_type=gd.ModelMeanType.EPSILON,
    var_type=gd.ModelVarType.FIXED_LARGE,
    loss_type=gd.LossType.MSE,
    rescale_timesteps: bool = False,
) -> gd.GaussianDiffusion:
    return gd.GaussianDiffusion(
        betas=gd.get_named_beta_schedule(schedule, steps),
        model_mean_type=mean_type,
        model_var_type=var_type,
        loss_type=loss_type,
        rescale_timesteps=rescale_timesteps,
    )


def arange_images(n: int = 2, c: int = 3, h: int = 4, w: int = 4) -> torch.Tensor:
    """Deterministic images in [-1, 1]."""
    x = torch.arange(n * c * h * w, dtype=torch.float32).view(n, c, h, w)
    return torch.sin(x * 0.37)
