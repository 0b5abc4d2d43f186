"""
Tests of the ADM networks and their blocks on tiny CPU configurations.
"""

import math

import pytest
import torch

from guided_diffusion.checkpoint_diagnosis import load_checkpoint
from guided_diffusion.io_util import atomic_torch_save
from guided_diffusion.nn import checkpoint, timestep_embedding
from guided_diffusion.unet import (
    AttentionBlock,
    AttentionPool2d,
    Downsample,
    EncoderUNetModel,
    QKVAttention,
    QKVAttentionLegacy,
    ResBlock,
    SuperResModel,
    UNetModel,
    Upsample,
    attention_backend,
)

# Output summary of ``_golden_model()`` on ``_golden_inputs()``: (sum, sum of |x|, x[0, 0, 0, 0],
# x[1, 5, 31, 31]). Produced once by this implementation (torch 2.13 CPU, float32, default
# "sdpa" attention) after its attention was checked against the einsum reference below; a
# change means the network computes a different function (or torch's init streams changed).
GOLDEN_UNET_SUMMARY = (-204.00874, 9598.2383, 0.59577096, 0.058217332)

TINY = dict(
    image_size=32,
    in_channels=3,
    model_channels=32,
    out_channels=6,
    num_res_blocks=1,
    attention_resolutions=(2,),
    channel_mult=(1, 2),
    num_head_channels=16,
)


def _perturb(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every parameter small random values (zero-initialised layers would hide bugs)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            for name, p in module.named_parameters(recurse=False):
                scale = 1.0 if isinstance(module, torch.nn.GroupNorm) and name == "weight" else 0.0
                p.copy_(scale + 0.1 * torch.randn(p.shape, generator=gen))
    return model


def _inputs(batch: int = 2, channels: int = 3, size: int = 32):
    """Deterministic arange-based images in [-1, 1] and timesteps."""
    n = batch * channels * size * size
    x = (torch.arange(n, dtype=torch.float32) % 97 / 48.0 - 1.0).reshape(
        batch, channels, size, size
    )
    t = torch.linspace(0, 999, batch).round().long()
    return x, t


def reference_attention(qkv: torch.Tensor, n_heads: int, legacy: bool) -> torch.Tensor:
    """Attention written out head by head with einsum, as in the paper's formulation."""
    n, width, length = qkv.shape
    ch = width // (3 * n_heads)
    outs = []
    for b in range(n):
        heads = []
        for h in range(n_heads):
            if legacy:  # [q_h, k_h, v_h] per head
                base = h * 3 * ch
                q, k, v = (qkv[b, base + i * ch : base + (i + 1) * ch] for i in range(3))
            else:  # [q_0..q_H, k_0..k_H, v_0..v_H]
                q, k, v = (
                    qkv[b, i * n_heads * ch + h * ch : i * n_heads * ch + (h + 1) * ch]
                    for i in range(3)
                )
            weight = torch.einsum("ct,cs->ts", q, k) / math.sqrt(ch)  # (T, S)
            weight = torch.softmax(weight.double(), dim=-1).to(qkv.dtype)
            heads.append(torch.einsum("ts,cs->ct", weight, v))  # (ch, T)
        outs.append(torch.cat(heads, dim=0))
    return torch.stack(outs)


@pytest.mark.parametrize("legacy", [True, False])
@pytest.mark.parametrize("backend", ["sdpa", "einsum"])
def test_attention_matches_reference(legacy, backend):
    torch.manual_seed(0)
    qkv = torch.randn(2, 3 * 4 * 8, 19) * 2
    module = QKVAttentionLegacy(4) if legacy else QKVAttention(4)
    with attention_backend(backend):
        out = module(qkv)
    assert out.shape == (2, 32, 19)
    torch.testing.assert_close(out, reference_attention(qkv, 4, legacy), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("module", [QKVAttentionLegacy(2), QKVAttention(2)])
def test_attention_gradients_and_gradients_of_gradients(module):
    """Numerical gradient checks in float64: the fused path's backward and its double backward."""
    torch.manual_seed(0)
    qkv = torch.randn(1, 3 * 2 * 2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(module, (qkv,))
    assert torch.autograd.gradgradcheck(module, (qkv,), fast_mode=True)


def test_double_backward_stays_finite_in_float16():
    """q.k of ~1e5 overflows float16 unless q and k are scaled before the product."""
    torch.manual_seed(0)
    ch = 64
    signs = torch.sign(torch.randn(1, 3 * ch, 4))  # (N, 3 * ch, T): q, k, v of one head
    signs[:, ch : 2 * ch] = signs[:, :ch]  # k = q: the diagonal scores reach 64 * 40 * 40
    base = signs * torch.tensor([40.0] * (2 * ch) + [0.01] * ch)[:, None]  # |q.k| up to 102400
    grads = {}
    for dtype in (torch.float32, torch.float16):
        qkv = base.to(dtype).requires_grad_(True)
        out = QKVAttention(1)(qkv)
        (g,) = torch.autograd.grad(out.float().sum(), qkv, create_graph=True)
        assert torch.isfinite(g).all(), dtype
        grads[dtype] = g.float()
    torch.testing.assert_close(grads[torch.float16], grads[torch.float32], rtol=0.05, atol=0.5)


def test_attention_orders_differ():
    torch.manual_seed(0)
    qkv = torch.randn(1, 3 * 2 * 4, 5)
    assert not torch.allclose(QKVAttention(2)(qkv), QKVAttentionLegacy(2)(qkv))


def test_attention_backend_rejects_unknown_name():
    with pytest.raises(ValueError, match="sdpa"):
        with attention_backend("flash"):
            pass


def test_attention_reduced_precision_close_to_float32():
    torch.manual_seed(0)
    qkv = torch.randn(2, 3 * 2 * 16, 64)
    expected = reference_attention(qkv, 2, legacy=True)
    for dtype, tol in ((torch.bfloat16, 3e-2), (torch.float16, 5e-3)):
        out = QKVAttentionLegacy(2)(qkv.to(dtype))
        assert out.dtype == dtype
        torch.testing.assert_close(out.float(), expected, rtol=tol, atol=tol)


def test_timestep_embedding_closed_form():
    t = torch.tensor([0, 1, 250])
    emb = timestep_embedding(t, 7)  # odd: 3 cos, 3 sin, 1 zero
    assert emb.shape == (3, 7)
    freqs = [10000 ** (-i / 3) for i in range(3)]
    expected = [
        [math.cos(s * f) for f in freqs] + [math.sin(s * f) for f in freqs] + [0.0]
        for s in (0, 1, 250)
    ]
    torch.testing.assert_close(emb, torch.tensor(expected), rtol=1e-5, atol=1e-5)


def test_fresh_blocks_are_identity():
    """The last convolution of residual blocks and the attention projection start at zero."""
    torch.manual_seed(0)
    x = torch.randn(2, 32, 8, 8)
    emb = torch.randn(2, 64)
    assert torch.equal(ResBlock(32, 64, 0.0, use_scale_shift_norm=True)(x, emb), x)
    assert torch.equal(AttentionBlock(32, num_heads=2)(x), x)


def test_resblock_scale_shift_closed_form():
    """AdaGN: with a known scale and shift the block output follows the formula."""
    torch.manual_seed(0)
    block = _perturb(ResBlock(32, 8, 0.0, use_scale_shift_norm=True)).eval()
    x, emb = torch.randn(1, 32, 4, 4), torch.randn(1, 8)
    h = block.in_layers(x)
    scale, shift = block.emb_layers(emb)[..., None, None].chunk(2, dim=1)
    normed = torch.nn.functional.group_norm(
        h, 32, block.out_layers[0].weight, block.out_layers[0].bias
    )
    expected = x + block.out_layers[3](torch.nn.functional.silu(normed * (1 + scale) + shift))
    torch.testing.assert_close(block(x, emb), expected, rtol=1e-5, atol=1e-5)


def test_resample_blocks():
    x = torch.arange(16.0).reshape(1, 1, 4, 4).repeat(1, 32, 1, 1)
    up = Upsample(32, use_conv=False)(x)
    assert up.shape == (1, 32, 8, 8) and torch.equal(up[0, 0, 2:4, 2:4], torch.full((2, 2), 5.0))
    down = Downsample(32, use_conv=False)(x)
    assert torch.equal(down[0, 0], torch.tensor([[2.5, 4.5], [10.5, 12.5]]))
    assert Downsample(32, use_conv=True, out_channels=64)(x).shape == (1, 64, 2, 2)
    assert ResBlock(32, 8, 0.0, up=True)(x, torch.zeros(1, 8)).shape == (1, 32, 8, 8)
    assert ResBlock(32, 8, 0.0, down=True, out_channels=64)(x, torch.zeros(1, 8)).shape == (
        1,
        64,
        2,
        2,
    )


@pytest.mark.parametrize("block", [Upsample, Downsample])
def test_resample_blocks_name_themselves_in_their_errors(block):
    with pytest.raises(ValueError, match=f"{block.__name__} without a convolution cannot change"):
        block(32, use_conv=False, out_channels=64)
    with pytest.raises(ValueError, match=f"{block.__name__} expects 32 channels, got 16"):
        block(32, use_conv=True)(torch.zeros(1, 16, 4, 4))
    assert [name for name, _ in block(32, use_conv=True).named_parameters()][0].split(".")[0] == (
        "conv" if block is Upsample else "op"
    )  # the original's state-dict keys


def test_checkpointing_gives_same_gradients_and_double_backward():
    torch.manual_seed(0)
    x = torch.randn(2, 32, 8, 8, requires_grad=True)
    emb = torch.randn(2, 16)
    blocks = [
        _perturb(ResBlock(32, 16, 0.0, use_scale_shift_norm=True)),
        _perturb(AttentionBlock(32, num_head_channels=16)),
    ]
    for block in blocks:
        outputs, grads = [], []
        for flag in (False, True):
            block.use_checkpoint = flag
            args = (x, emb) if isinstance(block, ResBlock) else (x,)
            y = block(*args)
            (g,) = torch.autograd.grad(y.square().sum(), x, create_graph=True)
            (gg,) = torch.autograd.grad(g.square().sum(), x)  # grad of grad
            outputs.append(y)
            grads.append((g, gg))
        torch.testing.assert_close(outputs[0], outputs[1])
        torch.testing.assert_close(grads[0][0], grads[1][0])
        torch.testing.assert_close(grads[0][1], grads[1][1], rtol=1e-4, atol=1e-5)


def test_checkpointed_model_matches_plain_model():
    x, t = _inputs(batch=1, size=16)
    grads = []
    for flag in (False, True):
        model = _perturb(UNetModel(**TINY, use_checkpoint=flag, dropout=0.5), seed=3).train()
        torch.manual_seed(5)  # the same dropout masks; checkpointing replays them
        model(x, t).square().mean().backward()
        grads.append([p.grad for p in model.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


def test_checkpoint_helper_plain_call():
    calls = []
    assert checkpoint(lambda a: calls.append(a) or a * 2, (torch.ones(1),), [], False).item() == 2
    assert len(calls) == 1


def _golden_model() -> UNetModel:
    torch.manual_seed(1234)
    model = UNetModel(
        **{**TINY, "num_classes": 10}, use_scale_shift_norm=True, resblock_updown=True
    )
    return _perturb(model, seed=1234).eval()


def _golden_inputs():
    x, t = _inputs()
    return x, t, torch.tensor([3, 7])


def test_golden_unet_output():
    model = _golden_model()
    x, t, y = _golden_inputs()
    with torch.no_grad():
        out = model(x, t, y=y)
    assert out.shape == (2, 6, 32, 32)
    summary = (
        out.sum().item(),
        out.abs().sum().item(),
        out[0, 0, 0, 0].item(),
        out[1, 5, 31, 31].item(),
    )
    assert summary == pytest.approx(GOLDEN_UNET_SUMMARY, rel=1e-4, abs=1e-4)
    with attention_backend("einsum"), torch.no_grad():
        torch.testing.assert_close(model(x, t, y=y), out, rtol=1e-5, atol=1e-5)


MODEL_FACTORIES = {
    "unet": lambda: UNetModel(**TINY, use_scale_shift_norm=True),
    "unet_class_cond": lambda: UNetModel(
        **{**TINY, "num_classes": 5}, use_new_attention_order=True
    ),
    "super_res": lambda: SuperResModel(**{**TINY, "out_channels": 3}, resblock_updown=True),
    **{
        f"classifier_{pool}": lambda pool=pool: EncoderUNetModel(
            **{**TINY, "out_channels": 4},
            pool=pool,
            resblock_updown=True,
            use_scale_shift_norm=True,
        )
        for pool in EncoderUNetModel.POOLS
    },
}


def _model(name: str, seed: int = 0) -> torch.nn.Module:
    return _perturb(MODEL_FACTORIES[name](), seed=seed).eval()


def _call(name: str, model: torch.nn.Module, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    if name == "unet_class_cond":
        return model(x, t, y=torch.tensor([0, 4]))
    if name == "super_res":
        return model(x, t, low_res=x[:, :, ::2, ::2])
    return model(x, t)


@pytest.mark.parametrize("name", list(MODEL_FACTORIES))
def test_save_load_round_trip(name, tmp_path):
    model = _model(name)
    x, t = _inputs()
    with torch.no_grad():
        expected = _call(name, model, x, t)
    atomic_torch_save(model.state_dict(), tmp_path / "model.pt")
    restored = load_checkpoint(_model(name, seed=99), tmp_path / "model.pt")
    with torch.no_grad():
        assert torch.equal(_call(name, restored, x, t), expected)
    expected_shape = (2, 4) if name.startswith("classifier") else (2, model.out_channels, 32, 32)
    assert expected.shape == expected_shape


def test_class_labels_are_required_exactly_when_conditional():
    x, t = _inputs()
    with pytest.raises(ValueError, match="class-conditional"):
        _model("unet_class_cond")(x, t)
    with pytest.raises(ValueError, match="class-conditional"):
        _model("unet")(x, t, y=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="low_res"):
        _model("super_res")(x, t)


def test_labels_and_timesteps_change_the_output():
    model = _model("unet_class_cond")
    x, t = _inputs()
    with torch.no_grad():
        a = model(x, t, y=torch.tensor([0, 1]))
        b = model(x, t, y=torch.tensor([2, 1]))
        c = model(x, t + 1, y=torch.tensor([0, 1]))
    assert not torch.allclose(a[0], b[0]) and torch.allclose(a[1], b[1])
    assert not torch.allclose(a, c)


@pytest.mark.parametrize(
    "convert,dtype,tol",
    [("convert_to_fp16", torch.float16, 2e-2), ("convert_to_bf16", torch.bfloat16, 1e-1)],
)
def test_reduced_precision_conversion(convert, dtype, tol):
    model = _model("unet_class_cond")
    x, t = _inputs()
    y = torch.tensor([0, 4])
    with torch.no_grad():
        expected = model(x, t, y=y)
        getattr(model, convert)()
        out = model(x, t, y=y)
    converted = 0
    for name, module in model.named_modules():
        in_blocks = name.split(".")[0] in ("input_blocks", "middle_block", "output_blocks")
        conv = isinstance(module, (torch.nn.Conv1d, torch.nn.Conv2d))  # not Linear: as the original
        want = dtype if in_blocks and conv else torch.float32
        for p in module.parameters(recurse=False):
            assert p.dtype == want, name
            converted += want == dtype
    assert converted > 50
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, expected, rtol=tol, atol=tol * expected.abs().max().item())
    model.convert_to_fp32()
    assert all(p.dtype == torch.float32 for p in model.parameters())
    with torch.no_grad():
        back = model(x, t, y=y)  # float32 again, with the weights rounded once
    torch.testing.assert_close(back, expected, rtol=tol, atol=tol * expected.abs().max().item())


def test_classifier_fp16_converts_encoder_only():
    model = _model("classifier_attention")
    model.convert_to_fp16()
    assert model.input_blocks[0][0].weight.dtype == torch.float16
    assert model.middle_block[1].qkv.weight.dtype == torch.float16
    assert all(p.dtype == torch.float32 for p in model.out.parameters())
    assert all(p.dtype == torch.float32 for p in model.time_embed.parameters())
    x, t = _inputs()
    with torch.no_grad():
        assert model(x, t).dtype == torch.float32


def test_attention_pool_closed_form():
    """With one token and zero positional embedding the pool returns c_proj(v(mean))."""
    torch.manual_seed(0)
    pool = AttentionPool2d(1, 64, 32, output_dim=3)
    with torch.no_grad():
        pool.positional_embedding.zero_()
    x = torch.randn(2, 64, 1, 1)
    v_weight, v_bias = pool.qkv_proj.weight[128:, :, 0], pool.qkv_proj.bias[128:]
    value = x[:, :, 0, 0] @ v_weight.T + v_bias  # both tokens equal the mean: softmax is flat
    expected = value @ pool.c_proj.weight[:, :, 0].T + pool.c_proj.bias
    torch.testing.assert_close(pool(x), expected, rtol=1e-5, atol=1e-5)


def test_one_and_three_dimensional_signals():
    torch.manual_seed(0)
    for dims, shape in ((1, (2, 3, 16)), (3, (2, 3, 2, 8, 8))):
        model = UNetModel(8, 3, 32, 3, 1, (2,), channel_mult=(1, 2), dims=dims, num_heads=2)
        out = model(torch.randn(*shape), torch.tensor([1, 2]))
        assert out.shape == shape


def test_invalid_head_configuration():
    with pytest.raises(ValueError, match="num_head_channels"):
        AttentionBlock(64, num_head_channels=48)
    with pytest.raises(ValueError, match="heads"):
        AttentionBlock(64, num_heads=3)
    with pytest.raises(ValueError, match="divisible by 32"):
        UNetModel(32, 3, 16, 3, 1, (), channel_mult=(1,))
    with pytest.raises(ValueError, match="pool"):
        EncoderUNetModel(**{**TINY, "out_channels": 2}, pool="max")
