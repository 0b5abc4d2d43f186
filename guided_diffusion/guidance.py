"""
Guidance: functions that steer a diffusion model's sampling towards a condition.

Today this holds classifier guidance (Dhariwal & Nichol 2021): a ``cond_fn`` giving the
scaled gradient of a noisy classifier's log-probability, which ``GaussianDiffusion``
adds to the mean (ancestral sampling) or to the score (DDIM), and the small adapter that
keeps the target labels away from an unconditional model. Other guidance methods
(classifier-free guidance, autoguidance, guidance intervals) belong here as well.
"""

from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F


def classifier_cond_fn(classifier: nn.Module, classifier_scale: float) -> Callable:
    """
    Classifier guidance (Dhariwal & Nichol 2021, Algorithms 1 and 2): the gradient of
    log p(y | x_t) with respect to the noisy input x_t, times ``classifier_scale``.

    :param classifier: maps (x_t [N x C x H x W], timesteps [N]) to logits [N x classes].
    :param classifier_scale: the guidance scale s.
    :return: cond_fn(x, t, y) -> gradient of x's shape; the diffusion passes it the
        model_kwargs, so ``y`` is the target label [N].
    """

    def cond_fn(
        x: torch.Tensor, t: torch.Tensor, y: Optional[torch.Tensor] = None, **_
    ) -> torch.Tensor:
        if y is None:
            raise ValueError("classifier guidance needs target labels: model_kwargs['y']")
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            log_probs = F.log_softmax(classifier(x_in, t).float(), dim=-1)  # (N, classes)
            selected = log_probs[torch.arange(len(log_probs), device=y.device), y.view(-1)]
            return torch.autograd.grad(selected.sum(), x_in)[0] * classifier_scale

    return cond_fn


def labels_to_classifier_only(model: nn.Module) -> Callable:
    """
    Adapt an unconditional diffusion model to classifier-guided sampling: the labels in
    model_kwargs (``y``) go to the classifier only, not to the model.

    :param model: called as model(x, t, **kwargs) without ``y``.
    :return: model_fn(x, t, y=None, **kwargs) -> model(x, t, **kwargs).
    """

    def model_fn(x: torch.Tensor, t: torch.Tensor, y: Optional[torch.Tensor] = None, **kwargs):
        return model(x, t, **kwargs)

    return model_fn
