"""
fp16_util: flat float32 master weights, dynamic loss scaling (overflow skips the step and
halves the scale, good steps grow it), the float32 state-dict layout, and bfloat16 autocast.
"""

import pytest
import torch
import torch.nn as nn

from guided_diffusion import logger
from guided_diffusion.fp16_util import (
    MixedPrecisionTrainer,
    check_overflow,
    get_param_groups_and_shapes,
    make_master_params,
    master_params_to_model_params,
    model_grads_to_master_grads,
    param_grad_or_zeros,
    unflatten_master_params,
    zero_grad,
)


class TinyNet(nn.Module):
    """A conv, a norm and a linear layer: matrices, kernels and vectors to group."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.norm = nn.GroupNorm(2, 4)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x)
        h = self.norm(h.float()).type(h.dtype)
        return self.fc(h.mean(dim=(2, 3)).to(self.fc.weight.dtype))  # fc stays float32


def _tiny_net(seed: int = 0) -> TinyNet:
    torch.manual_seed(seed)
    return TinyNet()


def _inputs() -> torch.Tensor:
    return (torch.arange(2 * 2 * 4 * 4, dtype=torch.float32).reshape(2, 2, 4, 4) / 32) - 1


@pytest.fixture(autouse=True)
def quiet_logger_one_thread(tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # other processes share the cores: avoid oversubscription
    with logger.scoped_configure(dir=str(tmp_path), format_strs=[]):
        yield
    torch.set_num_threads(threads)


def test_param_groups_split_vectors_from_matrices():
    net = _tiny_net()
    groups = get_param_groups_and_shapes(net.named_parameters())
    assert [shape for _, shape in groups] == [(-1,), (1, -1)]
    assert [n for n, _ in groups[0][0]] == ["conv.bias", "norm.weight", "norm.bias", "fc.bias"]
    assert [n for n, _ in groups[1][0]] == ["conv.weight", "fc.weight"]
    masters = make_master_params(groups)
    assert masters[0].shape == (4 + 4 + 4 + 3,)
    assert masters[1].shape == (1, 4 * 2 * 3 * 3 + 3 * 4)
    for master, (group, _) in zip(masters, groups):
        assert master.dtype == torch.float32 and master.requires_grad
        for (_, p), view in zip(group, unflatten_master_params(group, master)):
            assert torch.equal(view, p)


def test_grads_and_weights_move_between_model_and_masters():
    net = _tiny_net()
    groups = get_param_groups_and_shapes(net.named_parameters())
    masters = make_master_params(groups)
    net.fc.weight.grad = torch.full_like(net.fc.weight, 2.0)  # the others have no grad
    model_grads_to_master_grads(groups, masters)
    grads = dict(
        zip(
            [n for g, _ in groups for n, _ in g],
            [v for (g, _), m in zip(groups, masters) for v in unflatten_master_params(g, m.grad)],
        )
    )
    assert torch.equal(grads["fc.weight"], torch.full((3, 4), 2.0))
    assert torch.equal(grads["conv.weight"], torch.zeros(4, 2, 3, 3))

    with torch.no_grad():
        masters[1].add_(1.0)
    master_params_to_model_params(groups, masters)
    assert torch.equal(net.fc.weight, _tiny_net().fc.weight + 1.0)
    assert torch.equal(net.fc.bias, _tiny_net().fc.bias)


def test_small_helpers():
    assert (
        check_overflow(float("inf"))
        and check_overflow(float("-inf"))
        and check_overflow(float("nan"))
    )
    assert not check_overflow(1e30) and not check_overflow(0.0)
    p = nn.Parameter(torch.ones(3))
    assert torch.equal(param_grad_or_zeros(p), torch.zeros(3))
    p.grad = torch.ones(3)
    assert torch.equal(param_grad_or_zeros(p), torch.ones(3))
    zero_grad([p])
    assert torch.equal(p.grad, torch.zeros(3))


def test_fp16_state_dict_has_the_float32_layout_and_round_trips():
    reference = _tiny_net()
    net = _tiny_net()
    trainer = MixedPrecisionTrainer(model=net, use_fp16=True)
    assert net.conv.weight.dtype == torch.float16 and net.norm.weight.dtype == torch.float32
    state_dict = trainer.master_params_to_state_dict(trainer.master_params)
    expected = reference.state_dict()
    assert list(state_dict) == list(expected)
    for key, value in expected.items():
        assert state_dict[key].dtype == torch.float32
        # the masters were made before the conversion: exact float32 values
        assert torch.equal(state_dict[key], value), key
    again = trainer.state_dict_to_master_params(state_dict)
    for a, b in zip(again, trainer.master_params):
        assert torch.equal(a, b)


def _fp16_step(trainer: MixedPrecisionTrainer, opt, poison: bool = False) -> bool:
    trainer.zero_grad()
    out = trainer.model(_inputs().half())
    trainer.backward(out.float().pow(2).mean())
    if poison:
        trainer.model.fc.weight.grad[0, 0] = float("inf")
    return trainer.optimize(opt)


def test_fp16_overflow_skips_the_step_and_halves_the_scale():
    trainer = MixedPrecisionTrainer(model=_tiny_net(), use_fp16=True, initial_lg_loss_scale=10.0)
    opt = torch.optim.AdamW(trainer.master_params, lr=1e-2)
    masters_before = [p.detach().clone() for p in trainer.master_params]
    model_before = [p.detach().clone() for p in trainer.model_params]

    assert _fp16_step(trainer, opt, poison=True) is False
    assert trainer.lg_loss_scale == 9.0
    for p, before in zip(trainer.master_params, masters_before):
        assert torch.equal(p, before) and p.grad is None
    for p, before in zip(trainer.model_params, model_before):
        assert torch.equal(p, before)
    assert opt.state_dict()["state"] == {}  # AdamW never stepped

    assert _fp16_step(trainer, opt) is True
    assert trainer.lg_loss_scale == pytest.approx(9.0 + 1e-3)
    assert not torch.equal(trainer.master_params[1], masters_before[1])
    # the model holds the new masters, rounded to its dtypes
    state = trainer.master_params_to_state_dict(trainer.master_params)
    for name, p in trainer.model.named_parameters():
        assert torch.equal(p, state[name].to(p.dtype)), name


def test_fp16_good_steps_grow_the_scale_by_the_growth_rate():
    trainer = MixedPrecisionTrainer(
        model=_tiny_net(), use_fp16=True, fp16_scale_growth=0.25, initial_lg_loss_scale=8.0
    )
    opt = torch.optim.AdamW(trainer.master_params, lr=1e-3)
    for _ in range(4):
        assert _fp16_step(trainer, opt)
    assert trainer.lg_loss_scale == pytest.approx(8.0 + 4 * 0.25)


def test_fp16_gradients_are_unscaled_before_the_step():
    # loss = sum(fc.bias): d loss / d bias = 1 for every entry, whatever the loss scale;
    # with SGD(lr=0.5) the bias master must move by exactly -0.5.
    trainer = MixedPrecisionTrainer(model=_tiny_net(), use_fp16=True, initial_lg_loss_scale=12.0)
    opt = torch.optim.SGD(trainer.master_params, lr=0.5)
    bias_before = _tiny_net().fc.bias.detach().clone()
    trainer.zero_grad()
    trainer.backward(trainer.model.fc.bias.float().sum())
    assert trainer.optimize(opt)
    state = trainer.master_params_to_state_dict(trainer.master_params)
    assert torch.equal(state["fc.bias"], bias_before - 0.5)


def test_float32_trainer_uses_the_model_parameters():
    net = _tiny_net()
    trainer = MixedPrecisionTrainer(model=net)
    assert trainer.master_params == list(net.parameters())
    opt = torch.optim.SGD(trainer.master_params, lr=0.5)
    trainer.zero_grad()
    trainer.backward(net.fc.bias.sum())
    assert trainer.optimize(opt)
    assert torch.equal(net.fc.bias, _tiny_net().fc.bias - 0.5)
    assert list(trainer.master_params_to_state_dict(trainer.master_params)) == list(
        net.state_dict()
    )


def test_fp16_and_bf16_are_exclusive():
    with pytest.raises(ValueError, match="use_fp16.*use_bf16"):
        MixedPrecisionTrainer(model=_tiny_net(), use_fp16=True, use_bf16=True)


def test_bf16_autocast_runs_in_bfloat16_and_trains():
    net = _tiny_net()
    trainer = MixedPrecisionTrainer(model=net, use_bf16=True)
    opt = torch.optim.Adam(trainer.master_params, lr=3e-2)
    x = _inputs()
    target = torch.tensor([[0.5, -0.5, 0.25], [-0.25, 0.75, 0.0]])
    losses = []
    for _ in range(25):
        trainer.zero_grad()
        with trainer.autocast():
            out = net(x)
        assert out.dtype == torch.bfloat16
        loss = (out.float() - target).pow(2).mean()
        trainer.backward(loss)
        assert trainer.optimize(opt)
        losses.append(loss.item())
    assert all(p.dtype == torch.float32 for p in net.parameters())
    assert trainer.lg_loss_scale == 20.0  # no loss scaling in bf16
    assert losses[-1] < 0.2 * losses[0]
