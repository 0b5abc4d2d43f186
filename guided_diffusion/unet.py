"""
The ADM networks of "Diffusion Models Beat GANs on Image Synthesis": the UNet that predicts
noise (and variance), its super-resolution variant, and the encoder half used as a noisy
classifier, with the blocks they are made of.

Attention runs through ``torch.nn.functional.scaled_dot_product_attention`` (fused kernels
where the device has them); ``attention_backend("einsum")`` switches to the plain einsum
formulation, which computes the same function and serves as a reference.
"""

import contextlib
import math
from abc import abstractmethod
from dataclasses import dataclass, fields
from typing import Any, Iterator, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .fp16_util import convert_module_to_f16, convert_module_to_f32
from .nn import (
    avg_pool_nd,
    checkpoint,
    conv_nd,
    linear,
    normalization,
    timestep_embedding,
    zero_module,
)

ATTENTION_BACKENDS = ("sdpa", "einsum")
_attention_backend = "sdpa"


@contextlib.contextmanager
def attention_backend(name: str) -> Iterator[None]:
    """
    Compute attention with ``name`` inside the ``with`` block: "sdpa" (the default,
    ``scaled_dot_product_attention``) or "einsum" (the plain formulation: explicit weights,
    softmax in float32).
    """
    global _attention_backend
    if name not in ATTENTION_BACKENDS:
        raise ValueError(
            f"unknown attention backend {name!r} (valid: {', '.join(ATTENTION_BACKENDS)})"
        )
    previous, _attention_backend = _attention_backend, name
    try:
        yield
    finally:
        _attention_backend = previous


def _einsum_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """
    The plain formulation: explicit attention weights, softmax in float32.

    :param q: an [N x H x ch x T] tensor of queries (channels first, as the 1x1 conv gives).
    :param k: an [N x H x ch x S] tensor of keys.
    :param v: an [N x H x ch x S] tensor of values.
    :return: an [N x H x ch x T] tensor.
    """
    scale = q.shape[2] ** -0.25  # scaling q and k separately keeps float16 in range
    weight = torch.einsum("nhct,nhcs->nhts", q * scale, k * scale)  # (N, H, T, S)
    weight = torch.softmax(weight.to(torch.promote_types(weight.dtype, torch.float32)), dim=-1)
    return torch.einsum("nhts,nhcs->nhct", weight.type(v.dtype), v)


class _FusedAttention(torch.autograd.Function):
    """
    ``scaled_dot_product_attention`` on [N x H x T x ch] tensors with a backward pass that is
    itself differentiable. The fused kernels have no double backward, so when gradients of
    gradients are requested (``create_graph=True``) the backward is written out as tensor
    operations; otherwise it recomputes the fused forward and runs the fused backward (the
    recomputation costs one attention forward, a small share of a UNet step).
    """

    @staticmethod
    def forward(ctx, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(q, k, v)
        return F.scaled_dot_product_attention(q, k, v)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        q, k, v = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph: differentiable formulas
            scale = q.shape[-1] ** -0.5
            root = q.shape[-1] ** -0.25  # scaling q and k separately keeps float16 in range
            scores = ((q * root) @ (k * root).transpose(-1, -2)).to(
                torch.promote_types(q.dtype, torch.float32)
            )
            probs = torch.softmax(scores, dim=-1).type(q.dtype)  # (N, H, T, S)
            grad_probs = grad_out @ v.transpose(-1, -2)  # (N, H, T, S)
            grad_scores = probs * (grad_probs - (grad_probs * probs).sum(dim=-1, keepdim=True))
            return (
                grad_scores @ k * scale,
                grad_scores.transpose(-1, -2) @ q * scale,
                probs.transpose(-1, -2) @ grad_out,
            )
        with torch.enable_grad():
            inputs = [t.detach().requires_grad_(True) for t in (q, k, v)]
            out = F.scaled_dot_product_attention(*inputs)
        return torch.autograd.grad(out, inputs, grad_out)


def _heads_last(qkv: torch.Tensor, *shape: int) -> torch.Tensor:
    """
    Reshape a packed [N x width x T] qkv tensor to ``shape`` + [T], then move T before the
    last dimension and make it contiguous: fused attention kernels want the channels of each
    head adjacent in memory (on CPU this is several times faster than strided channels).
    """
    return qkv.reshape(*shape, qkv.shape[-1]).transpose(-1, -2).contiguous()


def _packed_attention(qkv: torch.Tensor, n_heads: int, legacy: bool) -> torch.Tensor:
    """
    Multi-head attention with scale 1 / sqrt(ch) on a packed qkv tensor.

    :param qkv: an [N x (3 * H * ch) x T] tensor: per head [q, k, v] when ``legacy``, else
        [q of every head, k of every head, v of every head].
    :param n_heads: H.
    :param legacy: the layout.
    :return: an [N x (H * ch) x T] tensor.
    """
    n, width, length = qkv.shape
    if width % (3 * n_heads):
        raise ValueError(f"qkv width {width} is not divisible by 3 * {n_heads} heads")
    ch = width // (3 * n_heads)
    if _attention_backend == "einsum":
        if legacy:
            q, k, v = qkv.reshape(n, n_heads, 3 * ch, length).split(ch, dim=2)  # (N, H, ch, T)
        else:
            q, k, v = qkv.reshape(n, 3, n_heads, ch, length).unbind(1)  # (N, H, ch, T)
        return _einsum_attention(q, k, v).reshape(n, -1, length)
    if legacy:
        q, k, v = _heads_last(qkv, n, n_heads, 3 * ch).split(ch, dim=-1)  # (N, H, T, ch)
    else:
        q, k, v = _heads_last(qkv, n, 3, n_heads, ch).unbind(1)  # (N, H, T, ch)
    if torch.is_grad_enabled() and not torch.compiler.is_compiling():
        out = _FusedAttention.apply(q, k, v)  # (N, H, T, ch)
    else:  # nothing to differentiate, or torch.compile (which derives its own backward)
        out = F.scaled_dot_product_attention(q, k, v)
    return out.transpose(-1, -2).reshape(n, -1, length)


def count_flops_attn(model: nn.Module, _x: Any, y: Any) -> None:
    """
    Count an attention layer's matrix products for a FLOP counter (thop's ``custom_ops``):
    q^T k and the weights times v take N * T^2 * C multiply-adds each, added to
    ``model.total_ops``; ``y`` is the layer's output [N x C x T] (or a tuple starting with it).
    """
    out = y[0] if isinstance(y, (tuple, list)) else y
    n, c, *spatial = out.shape
    tokens = math.prod(spatial)
    model.total_ops += torch.DoubleTensor([2 * n * tokens**2 * c])


class QKVAttentionLegacy(nn.Module):
    """
    Attention on a packed qkv tensor laid out heads first: each head's channels hold its
    q, k and v one after the other (the layout of the original checkpoints).
    """

    def __init__(self, n_heads: int):
        super().__init__()
        self.n_heads = n_heads

    def forward(self, qkv: torch.Tensor) -> torch.Tensor:
        """
        :param qkv: an [N x (H * 3 * ch) x T] tensor.
        :return: an [N x (H * ch) x T] tensor.
        """
        return _packed_attention(qkv, self.n_heads, legacy=True)

    count_flops = staticmethod(count_flops_attn)


class QKVAttention(nn.Module):
    """
    Attention on a packed qkv tensor laid out q, k, v first, then heads
    (``use_new_attention_order``).
    """

    def __init__(self, n_heads: int):
        super().__init__()
        self.n_heads = n_heads

    def forward(self, qkv: torch.Tensor) -> torch.Tensor:
        """
        :param qkv: an [N x (3 * H * ch) x T] tensor.
        :return: an [N x (H * ch) x T] tensor.
        """
        return _packed_attention(qkv, self.n_heads, legacy=False)

    count_flops = staticmethod(count_flops_attn)


class AttentionPool2d(nn.Module):
    """
    CLIP-style attention pooling: the spatial mean attends to every position (plus itself)
    with a learned positional embedding; the output is the mean token's result.
    """

    def __init__(
        self,
        spacial_dim: int,
        embed_dim: int,
        num_heads_channels: int,
        output_dim: Optional[int] = None,
    ):
        super().__init__()
        self.positional_embedding = nn.Parameter(
            torch.randn(embed_dim, spacial_dim**2 + 1) / embed_dim**0.5
        )
        self.qkv_proj = conv_nd(1, embed_dim, 3 * embed_dim, 1)
        self.c_proj = conv_nd(1, embed_dim, output_dim or embed_dim, 1)
        self.num_heads = embed_dim // num_heads_channels
        self.attention = QKVAttention(self.num_heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        :param x: an [N x C x H x W] tensor, H = W = spacial_dim.
        :return: an [N x output_dim] tensor.
        """
        n, c = x.shape[:2]
        x = x.reshape(n, c, -1)  # (N, C, HW)
        x = torch.cat([x.mean(dim=-1, keepdim=True), x], dim=-1)  # (N, C, HW + 1)
        x = x + self.positional_embedding[None].to(x.dtype)
        x = self.c_proj(self.attention(self.qkv_proj(x)))  # (N, output_dim, HW + 1)
        return x[:, :, 0]


class TimestepBlock(nn.Module):
    """A module whose forward takes the timestep embeddings as a second argument."""

    @abstractmethod
    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """Apply the module to ``x`` given the [N x emb_channels] embeddings ``emb``."""


class TimestepEmbedSequential(nn.Sequential, TimestepBlock):
    """A sequential module that passes the timestep embeddings to the children that take them."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        for layer in self:
            x = layer(x, emb) if isinstance(layer, TimestepBlock) else layer(x)
        return x


class _Resample(nn.Module):
    """
    What ``Upsample`` and ``Downsample`` share: their channel counts, checked.

    :param channels: input channels.
    :param use_conv: resample with a convolution (which may change the channel count).
    :param dims: 1, 2 or 3: the signal's dimensions.
    :param out_channels: output channels (default: ``channels``).
    """

    def __init__(self, channels: int, use_conv: bool, dims: int, out_channels: Optional[int]):
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        self.use_conv = use_conv
        self.dims = dims
        if not use_conv and self.out_channels != channels:
            raise ValueError(
                f"{type(self).__name__} without a convolution cannot change the channel count"
            )

    def _check_channels(self, x: torch.Tensor) -> None:
        if x.shape[1] != self.channels:
            raise ValueError(
                f"{type(self).__name__} expects {self.channels} channels, got {x.shape[1]}"
            )


class Upsample(_Resample):
    """
    Nearest-neighbour upsampling by 2 (the inner two dimensions for 3D signals), then an
    optional 3x3 convolution.
    """

    def __init__(
        self, channels: int, use_conv: bool, dims: int = 2, out_channels: Optional[int] = None
    ):
        super().__init__(channels, use_conv, dims, out_channels)
        if use_conv:
            self.conv = conv_nd(dims, self.channels, self.out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_channels(x)
        if self.dims == 3:
            x = F.interpolate(x, (x.shape[2], x.shape[3] * 2, x.shape[4] * 2), mode="nearest")
        else:
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(x) if self.use_conv else x


class Downsample(_Resample):
    """
    Downsampling by 2 (the inner two dimensions for 3D signals): a stride-2 3x3 convolution
    when ``use_conv``, else average pooling.
    """

    def __init__(
        self, channels: int, use_conv: bool, dims: int = 2, out_channels: Optional[int] = None
    ):
        super().__init__(channels, use_conv, dims, out_channels)
        stride = (1, 2, 2) if dims == 3 else 2
        if use_conv:
            self.op = conv_nd(dims, self.channels, self.out_channels, 3, stride=stride, padding=1)
        else:
            self.op = avg_pool_nd(dims, kernel_size=stride, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_channels(x)
        return self.op(x)


class ResBlock(TimestepBlock):
    """
    A residual block conditioned on the timestep embedding, optionally changing the channel
    count and up- or downsampling by 2.

    :param channels: input channels.
    :param emb_channels: timestep embedding channels.
    :param dropout: dropout rate before the last convolution.
    :param out_channels: output channels (default: ``channels``).
    :param use_conv: with a channel change, a 3x3 instead of a 1x1 convolution on the skip path.
    :param use_scale_shift_norm: AdaGN, h = norm(h) * (1 + scale) + shift, instead of adding
        the embedding.
    :param dims: signal dimensions (1, 2 or 3).
    :param use_checkpoint: recompute activations in the backward pass to save memory.
    :param up: upsample inside the block.
    :param down: downsample inside the block.
    """

    def __init__(
        self,
        channels: int,
        emb_channels: int,
        dropout: float,
        out_channels: Optional[int] = None,
        use_conv: bool = False,
        use_scale_shift_norm: bool = False,
        dims: int = 2,
        use_checkpoint: bool = False,
        up: bool = False,
        down: bool = False,
    ):
        super().__init__()
        self.channels = channels
        self.emb_channels = emb_channels
        self.dropout = dropout
        self.out_channels = out_channels or channels
        self.use_conv = use_conv
        self.use_checkpoint = use_checkpoint
        self.use_scale_shift_norm = use_scale_shift_norm

        self.in_layers = nn.Sequential(
            normalization(channels),
            nn.SiLU(),
            conv_nd(dims, channels, self.out_channels, 3, padding=1),
        )
        self.updown = up or down
        if up:
            self.h_upd, self.x_upd = (
                Upsample(channels, False, dims),
                Upsample(channels, False, dims),
            )
        elif down:
            self.h_upd, self.x_upd = (
                Downsample(channels, False, dims),
                Downsample(channels, False, dims),
            )
        else:
            self.h_upd = self.x_upd = nn.Identity()
        self.emb_layers = nn.Sequential(
            nn.SiLU(),
            linear(
                emb_channels, 2 * self.out_channels if use_scale_shift_norm else self.out_channels
            ),
        )
        self.out_layers = nn.Sequential(
            normalization(self.out_channels),
            nn.SiLU(),
            nn.Dropout(p=dropout),
            zero_module(conv_nd(dims, self.out_channels, self.out_channels, 3, padding=1)),
        )
        if self.out_channels == channels:
            self.skip_connection = nn.Identity()
        else:
            kernel = 3 if use_conv else 1
            self.skip_connection = conv_nd(
                dims, channels, self.out_channels, kernel, padding=kernel // 2
            )

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """
        :param x: an [N x C x ...] tensor of features.
        :param emb: an [N x emb_channels] tensor of timestep embeddings.
        :return: an [N x out_channels x ...] tensor.
        """
        return checkpoint(self._forward, (x, emb), self.parameters(), self.use_checkpoint)

    def _forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if self.updown:
            h = self.in_layers[:-1](x)
            h, x = self.h_upd(h), self.x_upd(x)
            h = self.in_layers[-1](h)
        else:
            h = self.in_layers(x)
        emb_linear = self.emb_layers[-1]
        emb_out = self.emb_layers(emb.to(emb_linear.weight.dtype)).to(h.dtype)
        emb_out = emb_out.reshape(*emb_out.shape, *([1] * (h.dim() - 2)))  # (N, C', 1, 1)
        if self.use_scale_shift_norm:
            scale, shift = emb_out.chunk(2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
            h = self.out_layers[1:](h)
        else:
            h = self.out_layers(h + emb_out)
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    """
    Self-attention over all spatial positions, with a residual connection.

    :param channels: input and output channels.
    :param num_heads: number of heads, used when ``num_head_channels`` is -1.
    :param num_head_channels: channels per head (overrides ``num_heads`` unless -1).
    :param use_checkpoint: recompute activations in the backward pass to save memory (unlike
        the original, which always checkpoints attention, this follows the flag).
    :param use_new_attention_order: split qkv before heads (``QKVAttention``) instead of
        after (``QKVAttentionLegacy``).
    """

    def __init__(
        self,
        channels: int,
        num_heads: int = 1,
        num_head_channels: int = -1,
        use_checkpoint: bool = False,
        use_new_attention_order: bool = False,
    ):
        super().__init__()
        self.channels = channels
        if num_head_channels == -1:
            self.num_heads = num_heads
        else:
            if channels % num_head_channels:
                raise ValueError(
                    f"{channels} attention channels are not divisible by "
                    f"num_head_channels {num_head_channels}"
                )
            self.num_heads = channels // num_head_channels
        if channels % self.num_heads:
            raise ValueError(
                f"{channels} attention channels are not divisible by {self.num_heads} heads"
            )
        self.use_checkpoint = use_checkpoint
        self.norm = normalization(channels)
        self.qkv = conv_nd(1, channels, channels * 3, 1)
        attention = QKVAttention if use_new_attention_order else QKVAttentionLegacy
        self.attention = attention(self.num_heads)
        self.proj_out = zero_module(conv_nd(1, channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        :param x: an [N x C x ...] tensor.
        :return: a tensor of the same shape.
        """
        return checkpoint(self._forward, (x,), self.parameters(), self.use_checkpoint)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, *spatial = x.shape
        x = x.reshape(n, c, -1)  # (N, C, T)
        h = self.proj_out(self.attention(self.qkv(self.norm(x))))
        return (x + h).reshape(n, c, *spatial)


def _convert_module_to_bf16(module: nn.Module) -> None:
    """``convert_module_to_f16`` for bfloat16."""
    convert_module_to_f16(module)
    for p in module.parameters(recurse=False):
        if p.dtype == torch.float16:
            p.data = p.data.bfloat16()


@dataclass(frozen=True)
class UNetConfig:
    """
    The architecture the UNet and its encoder half share: the ``UNetModel`` arguments (see
    there) but the class-conditioning ones.
    """

    image_size: int
    in_channels: int
    model_channels: int
    out_channels: int
    num_res_blocks: int
    attention_resolutions: Sequence[int]
    dropout: float = 0
    channel_mult: Sequence[float] = (1, 2, 4, 8)
    conv_resample: bool = True
    dims: int = 2
    use_checkpoint: bool = False
    use_fp16: bool = False
    num_heads: int = 1
    num_head_channels: int = -1
    num_heads_upsample: int = -1
    use_scale_shift_norm: bool = False
    resblock_updown: bool = False
    use_new_attention_order: bool = False

    @classmethod
    def from_arguments(cls, arguments: dict[str, Any]) -> "UNetConfig":
        """:param arguments: a constructor's ``locals()``: the fields are picked by name."""
        return cls(**{f.name: arguments[f.name] for f in fields(cls)})


class _UNetTrunk(nn.Module):
    """
    What the UNet and its encoder half share: hyper-parameters (a ``UNetConfig``, whose
    fields are also attributes), the timestep embedding, the downsampling path (input
    blocks), the middle block and the precision conversions.
    """

    def __init__(self, config: UNetConfig):
        super().__init__()
        if not config.channel_mult:
            raise ValueError("channel_mult must list at least one multiplier")
        self.config = config
        for field in fields(config):
            setattr(self, field.name, getattr(config, field.name))
        self.dtype = torch.float16 if config.use_fp16 else torch.float32
        if config.num_heads_upsample == -1:
            self.num_heads_upsample = config.num_heads

    def _res_block(
        self,
        channels: int,
        out_channels: Optional[int] = None,
        up: bool = False,
        down: bool = False,
    ) -> ResBlock:
        return ResBlock(
            channels,
            self.model_channels * 4,
            self.dropout,
            out_channels=out_channels,
            dims=self.dims,
            use_checkpoint=self.use_checkpoint,
            use_scale_shift_norm=self.use_scale_shift_norm,
            up=up,
            down=down,
        )

    def _attention_block(self, channels: int, num_heads: int) -> AttentionBlock:
        return AttentionBlock(
            channels,
            num_heads=num_heads,
            num_head_channels=self.num_head_channels,
            use_checkpoint=self.use_checkpoint,
            use_new_attention_order=self.use_new_attention_order,
        )

    def _make_time_embed(self) -> nn.Sequential:
        width = self.model_channels * 4
        return nn.Sequential(linear(self.model_channels, width), nn.SiLU(), linear(width, width))

    def _make_input_blocks(self) -> tuple[nn.ModuleList, list[int], int, int]:
        """
        :return: the input blocks, the channel count after each one, the channel count and the
            downsampling rate at the bottom.
        """
        ch = int(self.channel_mult[0] * self.model_channels)
        blocks = nn.ModuleList(
            [TimestepEmbedSequential(conv_nd(self.dims, self.in_channels, ch, 3, padding=1))]
        )
        chans, ds = [ch], 1
        for level, mult in enumerate(self.channel_mult):
            for _ in range(self.num_res_blocks):
                layers = [self._res_block(ch, int(mult * self.model_channels))]
                ch = int(mult * self.model_channels)
                if ds in self.attention_resolutions:
                    layers.append(self._attention_block(ch, self.num_heads))
                blocks.append(TimestepEmbedSequential(*layers))
                chans.append(ch)
            if level != len(self.channel_mult) - 1:
                if self.resblock_updown:
                    down = self._res_block(ch, ch, down=True)
                else:
                    down = Downsample(ch, self.conv_resample, dims=self.dims, out_channels=ch)
                blocks.append(TimestepEmbedSequential(down))
                chans.append(ch)
                ds *= 2
        return blocks, chans, ch, ds

    def _make_middle_block(self, ch: int) -> TimestepEmbedSequential:
        return TimestepEmbedSequential(
            self._res_block(ch), self._attention_block(ch, self.num_heads), self._res_block(ch)
        )

    def _embed_timesteps(self, timesteps: torch.Tensor, batch_size: int) -> torch.Tensor:
        if timesteps.dim() == 0:
            timesteps = timesteps.expand(batch_size)
        return self.time_embed(timestep_embedding(timesteps, self.model_channels))

    def _converted_blocks(self) -> list[nn.Module]:
        return [self.input_blocks, self.middle_block]

    def _convert(self, convert, dtype: torch.dtype) -> None:
        for blocks in self._converted_blocks():
            blocks.apply(convert)
        self.dtype = dtype

    def convert_to_fp16(self) -> None:
        """Convert the convolutions of the blocks to float16 (linear layers stay float32)."""
        self._convert(convert_module_to_f16, torch.float16)

    def convert_to_bf16(self) -> None:
        """Convert the convolutions of the blocks to bfloat16 (linear layers stay float32)."""
        self._convert(_convert_module_to_bf16, torch.bfloat16)

    def convert_to_fp32(self) -> None:
        """Convert the blocks back to float32."""
        self._convert(convert_module_to_f32, torch.float32)


class UNetModel(_UNetTrunk):
    """
    The full UNet with attention and timestep embedding.

    :param image_size: the image side length (kept for reference and checkpoints).
    :param in_channels: input channels.
    :param model_channels: base channel count.
    :param out_channels: output channels (twice the image channels with a learned variance).
    :param num_res_blocks: residual blocks per resolution.
    :param attention_resolutions: downsampling rates with attention, e.g. {2, 4, 8}
        (attention at 4x downsampling when it contains 4).
    :param dropout: dropout rate.
    :param channel_mult: channel multiplier per resolution (floats allowed: int(mult * ch)).
    :param conv_resample: learned convolutions for up- and downsampling.
    :param dims: signal dimensions (1, 2 or 3).
    :param num_classes: class-conditional with this many classes when given.
    :param use_checkpoint: gradient checkpointing to save memory.
    :param use_fp16: run the blocks in float16 (after ``convert_to_fp16()``).
    :param num_heads: attention heads per layer.
    :param num_head_channels: fixed channels per head instead of a fixed head count (unless -1).
    :param num_heads_upsample: heads in the upsampling path (-1: ``num_heads``); deprecated.
    :param use_scale_shift_norm: FiLM-like conditioning (AdaGN).
    :param resblock_updown: residual blocks for up- and downsampling.
    :param use_new_attention_order: split qkv before heads.
    :param class_dropout_prob: classifier-free guidance training (Ho & Salimans 2021): in
        training mode each label is replaced by the null class ``num_classes`` with this
        probability, and the label embedding gets one extra row for it (only when > 0, so
        the default layout is the original's).
    """

    def __init__(
        self,
        image_size: int,
        in_channels: int,
        model_channels: int,
        out_channels: int,
        num_res_blocks: int,
        attention_resolutions: Sequence[int],
        dropout: float = 0,
        channel_mult: Sequence[float] = (1, 2, 4, 8),
        conv_resample: bool = True,
        dims: int = 2,
        num_classes: Optional[int] = None,
        use_checkpoint: bool = False,
        use_fp16: bool = False,
        num_heads: int = 1,
        num_head_channels: int = -1,
        num_heads_upsample: int = -1,
        use_scale_shift_norm: bool = False,
        resblock_updown: bool = False,
        use_new_attention_order: bool = False,
        class_dropout_prob: float = 0.0,
    ):
        super().__init__(UNetConfig.from_arguments(locals()))
        self.num_classes = num_classes
        self.class_dropout_prob = _check_class_dropout(class_dropout_prob, num_classes)
        # the label of "no class" (classifier-free guidance), or None without that row
        self.null_label = num_classes if class_dropout_prob > 0 else None
        self.time_embed = self._make_time_embed()
        if num_classes is not None:
            rows = num_classes + (self.null_label is not None)
            self.label_emb = nn.Embedding(rows, model_channels * 4)
        self.input_blocks, input_block_chans, ch, ds = self._make_input_blocks()
        self.middle_block = self._make_middle_block(ch)
        self.output_blocks = nn.ModuleList([])
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(num_res_blocks + 1):
                out_ch = int(mult * model_channels)
                layers = [self._res_block(ch + input_block_chans.pop(), out_ch)]
                ch = out_ch
                if ds in attention_resolutions:
                    layers.append(self._attention_block(ch, self.num_heads_upsample))
                if level and i == num_res_blocks:
                    if resblock_updown:
                        layers.append(self._res_block(ch, ch, up=True))
                    else:
                        layers.append(Upsample(ch, conv_resample, dims=dims, out_channels=ch))
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))
        input_ch = int(channel_mult[0] * model_channels)
        self.out = nn.Sequential(
            normalization(ch),
            nn.SiLU(),
            zero_module(conv_nd(dims, input_ch, out_channels, 3, padding=1)),
        )

    def _converted_blocks(self) -> list[nn.Module]:
        return [self.input_blocks, self.middle_block, self.output_blocks]

    def forward(
        self, x: torch.Tensor, timesteps: torch.Tensor, y: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """
        :param x: an [N x C x ...] tensor of inputs.
        :param timesteps: a 1-D tensor of N timesteps (or one for the whole batch).
        :param y: an [N] tensor of labels, if class-conditional.
        :return: an [N x out_channels x ...] tensor of outputs.
        """
        if (y is not None) != (self.num_classes is not None):
            raise ValueError(
                "pass labels y if and only if the model is class-conditional "
                f"(num_classes={self.num_classes}, y {'given' if y is not None else 'missing'})"
            )
        emb = self._embed_timesteps(timesteps, x.shape[0])
        if self.num_classes is not None:
            if y.shape != (x.shape[0],):
                raise ValueError(f"labels y must have shape ({x.shape[0]},), got {tuple(y.shape)}")
            emb = emb + self.label_emb(self._drop_labels(y))
        skips = []
        h = x.type(self.dtype)
        for module in self.input_blocks:
            h = module(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb)
        for module in self.output_blocks:
            h = module(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h.type(x.dtype))


    def _drop_labels(self, y: torch.Tensor) -> torch.Tensor:
        """
        In training mode, replace each label by the null label with probability
        ``class_dropout_prob`` (drawn from torch's global generator, which the training loop
        reseeds every step); otherwise return ``y`` unchanged.

        :param y: an [N] tensor of labels.
        :return: an [N] tensor of labels.
        """
        if not self.training or self.null_label is None:
            return y
        drop = torch.rand(y.shape, device=y.device) < self.class_dropout_prob
        return torch.where(drop, torch.full_like(y, self.null_label), y)


def _check_class_dropout(prob: float, num_classes: Optional[int]) -> float:
    """Check ``class_dropout_prob``: in [0, 1), and above 0 only for a conditional model."""
    if not 0 <= prob < 1:
        raise ValueError(f"invalid --class_dropout_prob {prob}: expected a probability in [0, 1)")
    if prob > 0 and num_classes is None:
        raise ValueError(
            f"--class_dropout_prob {prob} needs a class-conditional model (--class_cond True)"
        )
    return float(prob)


class SuperResModel(UNetModel):
    """
    A UNet for super-resolution: the low-resolution image, bilinearly upsampled to the
    output size, is concatenated to the input channels. ``in_channels`` counts the image
    channels once.
    """

    def __init__(self, image_size: int, in_channels: int, *args, **kwargs):
        super().__init__(image_size, in_channels * 2, *args, **kwargs)

    def forward(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor,
        low_res: Optional[torch.Tensor] = None,
        **kwargs,
    ) -> torch.Tensor:
        """
        :param x: an [N x C x H x W] tensor of noisy high-resolution images.
        :param timesteps: a 1-D tensor of N timesteps.
        :param low_res: an [N x C x h x w] tensor of low-resolution images.
        :return: an [N x out_channels x H x W] tensor.
        """
        if low_res is None:
            raise ValueError("SuperResModel needs the low-resolution images as low_res=")
        upsampled = F.interpolate(low_res, x.shape[2:], mode="bilinear")
        return super().forward(torch.cat([x, upsampled], dim=1), timesteps, **kwargs)


class EncoderUNetModel(_UNetTrunk):
    """
    The downsampling half of the UNet with a timestep embedding and a pooling head: the noisy
    classifier. Takes the ``UNetModel`` arguments (without ``num_classes``; ``out_channels`` is
    the number of classes) plus:

    :param pool: the head: "adaptive" (global average pool and 1x1 convolution), "attention"
        (attention pooling), "spatial" or "spatial_v2" (an MLP on the spatial means of every
        block's output).
    """

    POOLS = ("adaptive", "attention", "spatial", "spatial_v2")

    def __init__(
        self,
        image_size: int,
        in_channels: int,
        model_channels: int,
        out_channels: int,
        num_res_blocks: int,
        attention_resolutions: Sequence[int],
        dropout: float = 0,
        channel_mult: Sequence[float] = (1, 2, 4, 8),
        conv_resample: bool = True,
        dims: int = 2,
        use_checkpoint: bool = False,
        use_fp16: bool = False,
        num_heads: int = 1,
        num_head_channels: int = -1,
        num_heads_upsample: int = -1,
        use_scale_shift_norm: bool = False,
        resblock_updown: bool = False,
        use_new_attention_order: bool = False,
        pool: str = "adaptive",
    ):
        super().__init__(UNetConfig.from_arguments(locals()))
        if pool not in self.POOLS:
            raise ValueError(f"unknown pool {pool!r} (valid: {', '.join(self.POOLS)})")
        self.pool = pool
        self.time_embed = self._make_time_embed()
        self.input_blocks, input_block_chans, ch, ds = self._make_input_blocks()
        self.middle_block = self._make_middle_block(ch)
        self._feature_size = sum(input_block_chans) + ch
        if pool == "adaptive":
            self.out = nn.Sequential(
                normalization(ch),
                nn.SiLU(),
                nn.AdaptiveAvgPool2d((1, 1)),
                zero_module(conv_nd(dims, ch, out_channels, 1)),
                nn.Flatten(),
            )
        elif pool == "attention":
            if num_head_channels == -1:
                raise ValueError("pool 'attention' needs num_head_channels (channels per head)")
            self.out = nn.Sequential(
                normalization(ch),
                nn.SiLU(),
                AttentionPool2d(image_size // ds, ch, num_head_channels, out_channels),
            )
        elif pool == "spatial":
            self.out = nn.Sequential(
                nn.Linear(self._feature_size, 2048), nn.ReLU(), nn.Linear(2048, out_channels)
            )
        else:
            self.out = nn.Sequential(
                nn.Linear(self._feature_size, 2048),
                normalization(2048),
                nn.SiLU(),
                nn.Linear(2048, out_channels),
            )

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """
        :param x: an [N x C x H x W] tensor of inputs.
        :param timesteps: a 1-D tensor of N timesteps.
        :return: an [N x out_channels] tensor of logits.
        """
        emb = self._embed_timesteps(timesteps, x.shape[0])
        spatial = self.pool.startswith("spatial")
        means = []
        h = x.type(self.dtype)
        for module in self.input_blocks:
            h = module(h, emb)
            if spatial:
                means.append(h.type(x.dtype).mean(dim=(2, 3)))  # (N, C_block)
        h = self.middle_block(h, emb)
        if spatial:
            means.append(h.type(x.dtype).mean(dim=(2, 3)))
            return self.out(torch.cat(means, dim=-1))  # (N, feature_size) -> (N, classes)
        return self.out(h.type(x.dtype))
