"""
Helpers to train and run models in reduced precision: float16 layer conversion, float32
master weights with dynamic loss scaling (``MixedPrecisionTrainer``), and bfloat16 autocast.
"""

import contextlib
import math
from collections.abc import Iterable
from typing import Optional

import torch
import torch.nn as nn

from . import logger

# As in the original, only convolutions run in float16: linear layers (the timestep
# projections of the residual blocks, the classifiers' spatial heads) stay float32.
_FP16_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def convert_module_to_f16(module: nn.Module) -> None:
    """
    Convert the weight and bias of a convolution to float16; other modules (linear
    layers included) are left alone. Meant for ``model.apply``.
    """
    if isinstance(module, _FP16_LAYERS):
        module.weight.data = module.weight.data.half()
        if module.bias is not None:
            module.bias.data = module.bias.data.half()


def convert_module_to_f32(module: nn.Module) -> None:
    """
    Undo ``convert_module_to_f16``: back to float32.
    """
    if isinstance(module, _FP16_LAYERS):
        module.weight.data = module.weight.data.float()
        if module.bias is not None:
            module.bias.data = module.bias.data.float()


# ----------------------------------------------------------------------------- master weights
#
# With ``use_fp16`` the model's convolution and linear weights are float16 while the
# optimizer works on float32 "master" copies. The master copies are kept flat, one tensor
# per parameter group: the 0- and 1-dimensional parameters (biases, norms) in a 1-D tensor
# of shape [n], every other parameter in a tensor of shape [1, n]. A group is a list of
# (name, parameter) pairs in ``model.named_parameters()`` order, so the flat tensors can be
# split back into the model's parameters and into a state dict with the float32 model's
# keys and shapes.

INITIAL_LOG_LOSS_SCALE = 20.0

ParamGroup = list[tuple[str, torch.Tensor]]


def get_param_groups_and_shapes(
    named_model_params: Iterable[tuple[str, torch.Tensor]],
) -> list[tuple[ParamGroup, tuple[int, ...]]]:
    """
    Split named parameters into the two groups that get one flat master tensor each.

    :param named_model_params: (name, parameter) pairs, e.g. ``model.named_parameters()``.
    :return: [(group, shape)]: the vectors and scalars with shape (-1,), then the matrices
        and kernels with shape (1, -1); empty groups are left out.
    """
    named = list(named_model_params)
    groups = [
        ([(n, p) for n, p in named if p.ndim <= 1], (-1,)),
        ([(n, p) for n, p in named if p.ndim > 1], (1, -1)),
    ]
    return [(group, shape) for group, shape in groups if group]


def _flatten(tensors: Iterable[torch.Tensor]) -> torch.Tensor:
    """Concatenate tensors into one float32 vector, [sum of numels]."""
    return torch.cat([t.detach().reshape(-1).float() for t in tensors])


def unflatten_master_params(
    param_group: ParamGroup, master_param: torch.Tensor
) -> list[torch.Tensor]:
    """
    Split a flat master tensor into views shaped like the group's parameters.

    :param param_group: the (name, parameter) pairs the master tensor was made from.
    :param master_param: their flat float32 copy, any shape with the right numel.
    :return: one float32 view per parameter, with that parameter's shape.
    """
    flat = master_param.reshape(-1)
    views, offset = [], 0
    for _, param in param_group:
        views.append(flat[offset : offset + param.numel()].view_as(param))
        offset += param.numel()
    if offset != flat.numel():
        raise ValueError(
            f"master tensor has {flat.numel()} values but its parameter group needs {offset}"
        )
    return views


def make_master_params(
    param_groups_and_shapes: list[tuple[ParamGroup, tuple[int, ...]]],
) -> list[nn.Parameter]:
    """
    Make the float32 master copy of each parameter group.

    :param param_groups_and_shapes: from ``get_param_groups_and_shapes``.
    :return: one flat float32 ``nn.Parameter`` per group, with the group's shape.
    """
    master_params = []
    for param_group, shape in param_groups_and_shapes:
        flat = _flatten(p for _, p in param_group).view(shape)
        master_params.append(nn.Parameter(flat, requires_grad=True))
    return master_params


def param_grad_or_zeros(param: torch.Tensor) -> torch.Tensor:
    """:return: the parameter's gradient, or zeros of its shape when it has none."""
    if param.grad is not None:
        return param.grad.detach()
    return torch.zeros_like(param)


def model_grads_to_master_grads(
    param_groups_and_shapes: list[tuple[ParamGroup, tuple[int, ...]]],
    master_params: list[torch.Tensor],
) -> None:
    """Copy the (float16) model gradients into the float32 master gradients."""
    for master_param, (param_group, shape) in zip(master_params, param_groups_and_shapes):
        master_param.grad = _flatten(param_grad_or_zeros(p) for _, p in param_group).view(shape)


def master_params_to_model_params(
    param_groups_and_shapes: list[tuple[ParamGroup, tuple[int, ...]]],
    master_params: list[torch.Tensor],
) -> None:
    """Copy the float32 master weights into the model's parameters (cast to their dtype)."""
    with torch.no_grad():
        for master_param, (param_group, _) in zip(master_params, param_groups_and_shapes):
            for (_, param), value in zip(
                param_group, unflatten_master_params(param_group, master_param)
            ):
                param.copy_(value)


def zero_grad(model_params: Iterable[torch.Tensor]) -> None:
    """Zero the gradients of ``model_params`` in place (those that have one)."""
    for param in model_params:
        if param.grad is not None:
            param.grad.detach_()
            param.grad.zero_()


def zero_master_grads(master_params: Iterable[torch.Tensor]) -> None:
    """Drop the master gradients (they are rebuilt from the model's on every step)."""
    for param in master_params:
        param.grad = None


# fp16: a run of this many skipped steps in a row (each halving the loss scale) means the
# gradients are not finite whatever the scale: training stops instead of skipping forever.
MAX_SKIPPED_FP16_STEPS = 20


class NonFiniteLossError(ValueError):
    """Training produced a loss, gradient or weight that is infinite or NaN."""


def check_overflow(value: float) -> bool:
    """:return: True when ``value`` (a gradient norm) is infinite or NaN."""
    return not math.isfinite(value)


def _global_norm(tensors: list[torch.Tensor]) -> torch.Tensor:
    """:return: the 2-norm of all ``tensors`` together, a float32 scalar tensor (no sync)."""
    if not tensors:
        return torch.zeros((), dtype=torch.float32)
    norms = torch.stack([torch.linalg.vector_norm(t, dtype=torch.float32) for t in tensors])
    return torch.linalg.vector_norm(norms)


def check_precision(use_fp16: bool, use_bf16: bool, fp16_flag: str = "use_fp16") -> None:
    """
    :param fp16_flag: the flag that asked for float16 ("use_fp16", "classifier_use_fp16").
    :raises ValueError: when float16 and bfloat16 are both asked for.
    """
    if use_fp16 and use_bf16:
        raise ValueError(f"--{fp16_flag} and --use_bf16 cannot both be True: choose one")


class MixedPrecisionTrainer:
    """
    Gradients, loss scaling and optimizer steps for a model in one of three precisions:

    - float32 (default): the model's parameters are the master parameters.
    - ``use_fp16``: the model's convolution and linear weights are float16 (the model's
      ``convert_to_fp16()`` is called); the optimizer updates flat float32 master copies.
      The loss is multiplied by ``2 ** lg_loss_scale`` before ``backward``; gradients are
      copied to the masters and divided by the scale. A step whose gradients are not finite
      is skipped and halves the scale (``lg_loss_scale -= 1``); every good step grows it by
      ``fp16_scale_growth`` (in log2 units). After ``max_skipped_steps`` skipped steps in a
      row a ``NonFiniteLossError`` is raised.
    - ``use_bf16``: the parameters stay float32 and are their own masters; the forward pass
      runs under ``torch.autocast`` in bfloat16 (enter ``autocast()`` around it). bfloat16
      has float32's exponent range, so no loss scaling is needed and no step is skipped.
      Checkpoints are therefore plain float32 state dicts in every mode.

    In float32 and bfloat16 a non-finite loss, gradient or weight raises a
    ``NonFiniteLossError`` before the optimizer step, so the weights stay those of the last
    good step.

    :param model: the network (not wrapped in DistributedDataParallel).
    :param use_fp16: train a float16 model with float32 master weights.
    :param fp16_scale_growth: log2 scale added after every good fp16 step.
    :param initial_lg_loss_scale: log2 of the initial fp16 loss scale.
    :param use_bf16: run the forward pass in bfloat16 autocast.
    :param max_skipped_steps: fp16: stop after this many skipped steps in a row (default
        ``MAX_SKIPPED_FP16_STEPS``).
    """

    def __init__(
        self,
        *,
        model: nn.Module,
        use_fp16: bool = False,
        fp16_scale_growth: float = 1e-3,
        initial_lg_loss_scale: float = INITIAL_LOG_LOSS_SCALE,
        use_bf16: bool = False,
        max_skipped_steps: Optional[int] = None,
    ):
        check_precision(use_fp16, use_bf16)
        self.model = model
        self.use_fp16 = use_fp16
        self.use_bf16 = use_bf16
        self.fp16_scale_growth = fp16_scale_growth
        self.lg_loss_scale = initial_lg_loss_scale
        self.max_skipped_steps = max_skipped_steps or MAX_SKIPPED_FP16_STEPS
        self.skipped_in_a_row = 0
        self._loss_sum: Optional[torch.Tensor] = None  # the step's losses, to check them

        self.model_params = list(model.parameters())
        self.master_params = self.model_params
        self.param_groups_and_shapes = None
        if use_fp16:
            self.param_groups_and_shapes = get_param_groups_and_shapes(model.named_parameters())
            self.master_params = make_master_params(self.param_groups_and_shapes)
            if hasattr(model, "convert_to_fp16"):
                model.convert_to_fp16()
            else:
                model.apply(convert_module_to_f16)

    def autocast(self) -> contextlib.AbstractContextManager:
        """
        :return: the context to run the forward pass in: bfloat16 autocast on the model's
            device type with ``use_bf16``, else a context that does nothing.
        """
        if not self.use_bf16:
            return contextlib.nullcontext()
        device_type = self.model_params[0].device.type if self.model_params else "cpu"
        return torch.autocast(device_type=device_type, dtype=torch.bfloat16)

    def zero_grad(self) -> None:
        """Zero the model's gradients (before accumulating a new step's)."""
        zero_grad(self.model_params)
        self._loss_sum = None

    def backward(self, loss: torch.Tensor) -> None:
        """
        Accumulate the gradients of ``loss`` (a scalar), scaled by ``2 ** lg_loss_scale``
        with ``use_fp16``.
        """
        value = loss.detach().float().sum()
        self._loss_sum = value if self._loss_sum is None else self._loss_sum + value
        if self.use_fp16:
            (loss * 2**self.lg_loss_scale).backward()
        else:
            loss.backward()

    def optimize(self, opt: torch.optim.Optimizer) -> bool:
        """
        Take an optimizer step with the accumulated gradients, logging ``grad_norm`` and
        ``param_norm`` (and ``lg_loss_scale`` with fp16).

        :param opt: an optimizer over ``master_params``.
        :return: False when the step was skipped (fp16 overflow), else True.
        """
        if self.use_fp16:
            return self._optimize_fp16(opt)
        return self._optimize_normal(opt)

    def _optimize_normal(self, opt: torch.optim.Optimizer) -> bool:
        grad_norm, param_norm, loss = self._step_values()
        what = _non_finite(loss=loss, gradient_norm=grad_norm, weight_norm=param_norm)
        if what:
            self._loss_sum = None
            raise NonFiniteLossError(what)
        logger.logkv_mean("grad_norm", grad_norm)
        logger.logkv_mean("param_norm", param_norm)
        opt.step()
        self._loss_sum = None
        return True

    def _optimize_fp16(self, opt: torch.optim.Optimizer) -> bool:
        logger.logkv_mean("lg_loss_scale", self.lg_loss_scale)  # skipped steps too
        model_grads_to_master_grads(self.param_groups_and_shapes, self.master_params)
        grad_scale = 2**self.lg_loss_scale
        grad_norm, param_norm, loss = self._step_values(grad_scale=grad_scale)
        self._loss_sum = None
        if check_overflow(param_norm):
            raise NonFiniteLossError(_non_finite(weight_norm=param_norm))
        if check_overflow(grad_norm) or check_overflow(loss):
            self.lg_loss_scale -= 1
            self.skipped_in_a_row += 1
            logger.log(f"Found NaN, decreased lg_loss_scale to {self.lg_loss_scale}")
            zero_master_grads(self.master_params)
            if self.skipped_in_a_row >= self.max_skipped_steps:
                raise NonFiniteLossError(
                    f"{self.skipped_in_a_row} fp16 steps in a row were skipped whatever the "
                    f"loss scale (down to 2^{self.lg_loss_scale:g}); at the last one "
                    f"{_non_finite(loss=loss, gradient_norm=grad_norm)}"
                )
            return False

        self.skipped_in_a_row = 0
        logger.logkv_mean("grad_norm", grad_norm)
        logger.logkv_mean("param_norm", param_norm)
        for param in self.master_params:
            param.grad.mul_(1.0 / grad_scale)
        opt.step()
        zero_master_grads(self.master_params)
        master_params_to_model_params(self.param_groups_and_shapes, self.master_params)
        self.lg_loss_scale += self.fp16_scale_growth
        return True

    def _step_values(self, grad_scale: float = 1.0) -> tuple[float, float, float]:
        """
        :return: (gradient norm divided by ``grad_scale``, parameter norm, sum of the
            losses passed to ``backward`` since ``zero_grad``), read in one device sync.
        """
        grads = [p.grad for p in self.master_params if p.grad is not None]
        with torch.no_grad():
            values = [_global_norm(grads), _global_norm([p.detach() for p in self.master_params])]
            device = values[1].device
            loss = self._loss_sum if self._loss_sum is not None else torch.zeros(())
            values = torch.stack([v.to(device) for v in values + [loss]]).tolist()
        return values[0] / grad_scale, values[1], values[2]

    def master_params_to_state_dict(
        self, master_params: list[torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """See the module function ``master_params_to_state_dict``, for this trainer's model."""
        return master_params_to_state_dict(
            self.model, self.param_groups_and_shapes, master_params, self.use_fp16
        )

    def state_dict_to_master_params(
        self, state_dict: dict[str, torch.Tensor]
    ) -> list[torch.Tensor]:
        """See the module function ``state_dict_to_master_params``, for this trainer's model."""
        return state_dict_to_master_params(self.model, state_dict, self.use_fp16)


def master_params_to_state_dict(
    model: nn.Module,
    param_groups_and_shapes: Optional[list[tuple[ParamGroup, tuple[int, ...]]]],
    master_params: list[torch.Tensor],
    use_fp16: bool,
) -> dict[str, torch.Tensor]:
    """
    :param param_groups_and_shapes: the groups of the flat fp16 masters (None without fp16).
    :param master_params: the master parameters or a copy of them (e.g. EMA weights): flat
        per group with ``use_fp16``, else one per ``model.named_parameters()``.
    :return: a state dict with the float32 model's keys, order and shapes, holding those
        weights (and the model's buffers).
    """
    state_dict = model.state_dict()
    if use_fp16:
        for master_param, (param_group, _) in zip(master_params, param_groups_and_shapes):
            for (name, _), value in zip(
                param_group, unflatten_master_params(param_group, master_param)
            ):
                state_dict[name] = value.detach()
    else:
        for (name, _), value in zip(model.named_parameters(), master_params):
            state_dict[name] = value.detach()
    return state_dict


def state_dict_to_master_params(
    model: nn.Module, state_dict: dict[str, torch.Tensor], use_fp16: bool
) -> list[torch.Tensor]:
    """
    Inverse of ``master_params_to_state_dict``.

    :param state_dict: a float32 model state dict (e.g. loaded from a checkpoint).
    :return: tensors laid out like the master parameters, on the model's devices.
    """
    named = [(name, state_dict[name].to(p.device)) for name, p in model.named_parameters()]
    if use_fp16:
        return make_master_params(get_param_groups_and_shapes(named))
    return [value for _, value in named]


def _non_finite(**values: float) -> str:
    """:return: "the loss is nan, ..." for the values that are not finite ("" if none)."""
    bad = [f"the {name.replace('_', ' ')} is {value}" for name, value in values.items()]
    bad = [text for text, value in zip(bad, values.values()) if not math.isfinite(value)]
    return ", ".join(bad)
