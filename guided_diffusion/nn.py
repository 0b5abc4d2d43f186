"""
Stateless helpers for the networks: layer constructors, the timestep embedding, EMA
updates, flat means and gradient checkpointing.
"""

import math
from typing import Callable, Iterable, Sequence

import torch
import torch.nn as nn
import torch.utils.checkpoint


class SiLU(nn.SiLU):
    """x * sigmoid(x). Kept as a name of its own for code that imports it from here."""


class GroupNorm32(nn.GroupNorm):
    """Group normalisation computed in float32 and cast back to the input's dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).type(x.dtype)


def _of_dims(layers: tuple[type, type, type], dims: int) -> type:
    """:return: the 1D, 2D or 3D layer class of ``layers`` for ``dims``."""
    if dims not in (1, 2, 3):
        raise ValueError(f"unsupported dimensions: {dims} (valid: 1, 2, 3)")
    return layers[dims - 1]


def conv_nd(dims: int, *args, **kwargs) -> nn.Module:
    """
    A 1D, 2D or 3D convolution.

    :param dims: number of spatial dimensions (1, 2 or 3).
    :return: the ``nn.Conv{dims}d`` built from the remaining arguments.
    """
    return _of_dims((nn.Conv1d, nn.Conv2d, nn.Conv3d), dims)(*args, **kwargs)


def linear(*args, **kwargs) -> nn.Linear:
    """A fully connected layer (``nn.Linear``)."""
    return nn.Linear(*args, **kwargs)


def avg_pool_nd(dims: int, *args, **kwargs) -> nn.Module:
    """
    A 1D, 2D or 3D average pooling layer.

    :param dims: number of spatial dimensions (1, 2 or 3).
    :return: the ``nn.AvgPool{dims}d`` built from the remaining arguments.
    """
    return _of_dims((nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d), dims)(*args, **kwargs)


def normalization(channels: int) -> nn.Module:
    """
    The standard normalisation layer: 32-group GroupNorm in float32.

    :param channels: number of input channels (a multiple of 32).
    :return: the normalisation module.
    """
    if channels % 32:
        raise ValueError(
            f"32-group normalisation needs a channel count divisible by 32, got {channels} "
            "(check num_channels / channel_mult)"
        )
    return GroupNorm32(32, channels)


@torch.no_grad()
def update_ema(
    target_params: Iterable[torch.Tensor], source_params: Iterable[torch.Tensor], rate: float = 0.99
) -> None:
    """
    Move target parameters towards the source: target = rate * target + (1 - rate) * source.

    :param target_params: the EMA parameters, updated in place.
    :param source_params: the current parameters.
    :param rate: the EMA rate (closer to 1 moves more slowly).
    """
    for targ, src in zip(target_params, source_params):
        targ.mul_(rate).add_(src.to(targ.dtype), alpha=1 - rate)


def zero_module(module: nn.Module) -> nn.Module:
    """Zero the parameters of ``module`` in place and return it."""
    for p in module.parameters():
        p.detach().zero_()
    return module


def scale_module(module: nn.Module, scale: float) -> nn.Module:
    """Multiply the parameters of ``module`` by ``scale`` in place and return it."""
    for p in module.parameters():
        p.detach().mul_(scale)
    return module


def mean_flat(tensor: torch.Tensor) -> torch.Tensor:
    """Mean over all dimensions but the first (batch)."""
    return tensor.mean(dim=list(range(1, tensor.dim())))


def timestep_embedding(
    timesteps: torch.Tensor, dim: int, max_period: float = 10000
) -> torch.Tensor:
    """
    Sinusoidal timestep embeddings: [cos(t * f), sin(t * f)] for the frequencies
    f_i = max_period ** (-i / half), i < half = dim // 2, zero-padded when dim is odd.

    :param timesteps: a 1-D tensor of N timesteps, one per batch element (may be fractional).
    :param dim: the embedding width.
    :param max_period: the lowest frequency's period.
    :return: an [N x dim] float32 tensor.
    """
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period)
        * torch.arange(half, dtype=torch.float32, device=timesteps.device)
        / half
    )
    args = timesteps[:, None].float() * freqs[None]  # (N, half)
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (N, 2 * half)
    if dim % 2:
        embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
    return embedding


def checkpoint(
    func: Callable, inputs: Sequence[torch.Tensor], params: Iterable[torch.Tensor], flag: bool
):
    """
    Evaluate ``func(*inputs)``, recomputing its activations in the backward pass instead of
    storing them when ``flag`` is set (less memory, one more forward per step). Uses the
    non-reentrant implementation of ``torch.utils.checkpoint``, so gradients of gradients work
    and parameters get their gradients without being listed.

    :param func: the function to evaluate.
    :param inputs: the positional arguments of ``func``.
    :param params: the parameters ``func`` depends on (kept for the original signature; the
        non-reentrant implementation finds them itself).
    :param flag: checkpoint when True, plain call when False.
    :return: what ``func`` returns.
    """
    del params
    if flag:
        return torch.utils.checkpoint.checkpoint(func, *inputs, use_reentrant=False)
    return func(*inputs)


class CheckpointFunction(torch.autograd.Function):
    """
    The original's reentrant gradient checkpoint, for code that calls it directly:
    ``CheckpointFunction.apply(func, len(inputs), *inputs, *params)`` runs ``func(*inputs)``
    without storing its activations and runs it again in the backward pass to get the
    gradients of the inputs and of ``params`` (``checkpoint`` above uses torch's own).
    """

    @staticmethod
    def forward(ctx, run_function: Callable, length: int, *args: torch.Tensor):
        ctx.run_function = run_function
        ctx.input_tensors = list(args[:length])
        ctx.input_params = list(args[length:])
        with torch.no_grad():
            return run_function(*ctx.input_tensors)

    @staticmethod
    def backward(ctx, *output_grads: torch.Tensor):
        inputs = [x.detach().requires_grad_(True) for x in ctx.input_tensors]
        with torch.enable_grad():
            # views, so that a function changing its input in place leaves ours alone
            outputs = ctx.run_function(*[x.view_as(x) for x in inputs])
        grads = torch.autograd.grad(
            outputs, inputs + ctx.input_params, output_grads, allow_unused=True
        )
        del ctx.input_tensors, ctx.input_params
        return (None, None) + grads
