"""
Helpers to train and run models in reduced precision.
"""

import torch.nn as nn

_FP16_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def convert_module_to_f16(module: nn.Module) -> None:
    """
    Convert the weight and bias of a convolution or linear layer to float16;
    other modules are left alone. Meant for ``model.apply``.
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
