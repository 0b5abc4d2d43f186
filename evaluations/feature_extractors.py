"""
Feature extractors other than Inception, for the Frechet distance on their features (FD), e.g.
FD_DINOv2 (Stein et al. 2023), which EDM2 reports beside FID. Weights are never downloaded:
the extractor is a local file.

Two kinds:

- a TorchScript file (``--fd_extractor``): any network saved with ``torch.jit.trace`` or
  ``torch.jit.script`` and ``.save()``; ``evaluations/export_extractor.py`` makes the DINOv2
  ViT-L/14 one on a machine with internet. The file's code is TorchScript only (no Python
  runs from it).
- a timm model name with a local weights file (``--fd_timm_model``, ``--fd_weights``), where
  the optional ``timm`` package is installed (it is not a dependency of this project).

What the extractor receives, either kind: float32 RGB images [n x 3 x S x S] (NCHW) with values
in [0, 255], resized from the batch's uint8 images to S = ``--fd_image_size`` (224 by default,
FD_DINOv2's size) by bicubic, antialiased interpolation (EDM2's fast resize for FD_DINOv2) clipped
to [0, 255] (as dgm-eval's PIL resize to uint8 clips; EDM2 leaves the overshoot); at their own
size when S = 0. A TorchScript network normalises them itself (e.g. x / 255, then the
ImageNet mean and standard deviation); a timm model gets them normalised with its own mean and
standard deviation. It must return one finite feature vector per image: a float tensor [n x D].
"""

import os
import re

import torch
import torch.nn as nn
import torch.nn.functional as F

from evaluations.batches import file_sha256

FD_IMAGE_SIZE = 224
NAME_PATTERN = re.compile(r"[A-Za-z0-9._-]+")


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def fd_label(name: str) -> str:
    """
    :param name: the extractor's name, e.g. "dinov2_vitl14".
    :return: the metric's printed label and JSON key, e.g. "FD_dinov2_vitl14".
    """
    return f"FD_{name}"


class FeatureExtractor(nn.Module):
    """
    Wraps a network into what the evaluator's batch pipeline calls: uint8 [n x 3 x H x W]
    images in, {"features": [n x D]} out, with the resize and checks described in the module
    docstring. Its activations are cached under "features-<hash>" names, keyed by
    ``weights_id`` (the extractor file's content, the weights file's, and the image size).

    :param network: the module that maps preprocessed images to [n x D] features.
    :param source: what error messages name (the file, or the timm model and weights).
    :param name: the metric's name (printed as FD_<name>).
    :param weights_id: a string that changes whenever the network or preprocessing does.
    :param image_size: the side S the images are resized to; 0 keeps their size.
    :param mean: per-channel means to subtract from images scaled to [0, 1] (timm); None
                 passes [0, 255] images on unnormalised (TorchScript).
    :param std: per-channel standard deviations to divide by after the mean.
    """

    output_keys = ("features",)
    cache_tag = "features"

    def __init__(
        self,
        network: nn.Module,
        source: str,
        name: str,
        weights_id: str,
        image_size: int = FD_IMAGE_SIZE,
        mean: tuple[float, ...] | None = None,
        std: tuple[float, ...] | None = None,
    ):
        super().__init__()
        if image_size < 0:
            raise ValueError(f"--fd_image_size must be 0 (keep the size) or positive, got {image_size}")
        if not NAME_PATTERN.fullmatch(name):
            raise ValueError(
                f"--fd_name {name!r}: use letters, digits, '.', '-' and '_' only (it is printed "
                "as FD_<name>: <value>)"
            )
        self.network = network.eval()
        for parameter in network.parameters():  # (a ScriptModule has no requires_grad_)
            parameter.requires_grad_(False)
        self.source, self.name, self.weights_id, self.image_size = source, name, weights_id, image_size
        self.feature_dim: int | None = None
        # an empty buffer that follows .to(device), so that the batch pipeline finds the
        # device even for a network without parameters
        self.register_buffer("anchor", torch.empty(0), persistent=False)
        normalise = mean is not None
        self.register_buffer(
            "mean", torch.tensor(mean if normalise else (0.0,) * 3).reshape(1, 3, 1, 1), persistent=False
        )
        self.register_buffer(
            "std", torch.tensor(std if normalise else (1.0,) * 3).reshape(1, 3, 1, 1), persistent=False
        )
        self.normalise = normalise

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """
        :param images: uint8 or float [n x 3 x H x W] in [0, 255].
        :return: float32 [n x 3 x S x S]: [0, 255], or normalised for a timm model.
        """
        x = images.to(self.anchor.device, torch.float32)
        size = self.image_size
        if size and tuple(x.shape[2:]) != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bicubic", antialias=True, align_corners=False)
            x = x.clamp_(0.0, 255.0)  # bicubic overshoots; a uint8 resize (PIL's) clips too
        if self.normalise:
            x = (x / 255.0 - self.mean) / self.std
        return x

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """
        :param images: uint8 [n x 3 x H x W].
        :return: {"features": float32 [n x D]}; a network that fails, returns anything else
                 or non-finite values raises ValueError naming ``source``.
        """
        count = len(images)
        x = self.preprocess(images)
        try:
            out = self.network(x)
        except RuntimeError as err:  # torch.jit.Error is one
            raise ValueError(
                f"{self.source}: failed on {count} images of {x.shape[3]}x{x.shape[2]} "
                f"({_first_line(err)}); see --fd_image_size"
            ) from err
        if not isinstance(out, torch.Tensor) or not out.is_floating_point():
            kind = f"a {out.dtype} tensor" if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(
                f"{self.source}: returned {kind}, expected a float tensor [n x D] of features"
            )
        if out.dim() != 2 or out.shape[0] != count:
            raise ValueError(
                f"{self.source}: returned features of shape {tuple(out.shape)} for {count} images, "
                f"expected ({count}, D): one feature vector per image"
            )
        if self.feature_dim is not None and out.shape[1] != self.feature_dim:
            raise ValueError(
                f"{self.source}: returned {out.shape[1]} features per image after {self.feature_dim} "
                "for earlier images"
            )
        if not torch.isfinite(out).all():
            raise ValueError(f"{self.source}: returned NaN or infinite features")
        self.feature_dim = out.shape[1]
        return {"features": out.float()}


def _default_device(device: str | torch.device | None) -> torch.device:
    return torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))


def load_torchscript_extractor(
    path: str,
    image_size: int = FD_IMAGE_SIZE,
    device: str | torch.device | None = None,
    name: str | None = None,
) -> FeatureExtractor:
    """
    Load a TorchScript feature extractor (see the module docstring for its input and output).

    :param path: the .pt file written by ``torch.jit.save`` (or a ScriptModule's ``save``).
    :param image_size: the side images are resized to; 0 keeps their size.
    :param device: where to run it; default CUDA when available, else CPU.
    :param name: the metric's name; default the file name without its extension.
    :return: the extractor, in eval mode.
    """
    if not os.path.isfile(path):
        raise ValueError(f"{path}: no such TorchScript extractor file")
    device = _default_device(device)
    try:
        network = torch.jit.load(path, map_location=device)
    except (RuntimeError, ValueError) as err:
        raise ValueError(
            f"{path}: not a TorchScript file ({_first_line(err)}); save the network with "
            "torch.jit.trace(...).save(path) or evaluations/export_extractor.py"
        ) from err
    default_name = re.sub(r"[^A-Za-z0-9._-]", "_", os.path.splitext(os.path.basename(path))[0])
    weights_id = f"torchscript:{file_sha256(path)}:size={image_size}"
    extractor = FeatureExtractor(network, path, name or default_name, weights_id, image_size)
    return extractor.to(device)


def load_timm_extractor(
    model_name: str,
    weights: str,
    image_size: int = FD_IMAGE_SIZE,
    device: str | torch.device | None = None,
    name: str | None = None,
) -> FeatureExtractor:
    """
    Build a timm model without its classifier (``num_classes=0``: pooled features) and load
    its weights from a local file, through timm's own loader for pretrained weights (which
    adapts the file to the model as timm's downloads are adapted).

    :param model_name: a timm model name, e.g. "vit_large_patch14_dinov2.lvd142m".
    :param weights: the local weights file (.safetensors, .pth, .bin).
    :param image_size: the side images are resized to; 0 keeps their size. The model must
                       accept that size (timm's default size is in the error when it does not).
    :param device: where to run it; default CUDA when available, else CPU.
    :param name: the metric's name; default the model name.
    :return: the extractor, in eval mode.
    """
    try:
        import timm
        import timm.data
    except ImportError as err:
        raise ValueError(
            f"--fd_timm_model needs the timm package, an optional dependency that is not "
            f"installed ({_first_line(err)}): pip install timm, or pass a TorchScript file "
            "with --fd_extractor"
        ) from err
    if not os.path.isfile(weights):
        raise ValueError(f"{weights}: no such weights file for the timm model {model_name}")
    source = f"timm model {model_name} with weights {weights}"
    try:
        network = timm.create_model(
            model_name, pretrained=True, pretrained_cfg_overlay={"file": weights}, num_classes=0
        )
    except (RuntimeError, ValueError, KeyError, OSError) as err:
        raise ValueError(f"{source}: cannot be built ({_first_line(err)})") from err
    config = timm.data.resolve_model_data_config(network)
    weights_id = f"timm:{model_name}:{file_sha256(weights)}:size={image_size}"
    default_name = re.sub(r"[^A-Za-z0-9._-]", "_", model_name)
    source += f" (timm's input size {tuple(config['input_size'][1:])})"
    extractor = FeatureExtractor(
        network, source, name or default_name, weights_id, image_size,
        mean=tuple(config["mean"]), std=tuple(config["std"]),
    )
    return extractor.to(_default_device(device))


def load_fd_extractor(
    torchscript: str | None = None,
    timm_model: str | None = None,
    weights: str | None = None,
    image_size: int = FD_IMAGE_SIZE,
    device: str | torch.device | None = None,
    name: str | None = None,
) -> FeatureExtractor | None:
    """
    The evaluator's FD extractor from its flags: ``--fd_extractor`` or ``--fd_timm_model``
    with ``--fd_weights``; None when neither is given.
    """
    if torchscript and timm_model:
        raise ValueError("pass --fd_extractor or --fd_timm_model, not both")
    if weights and not timm_model:
        raise ValueError("--fd_weights is the weights file of --fd_timm_model; pass that too")
    if timm_model:
        if not weights:
            raise ValueError(
                f"--fd_timm_model {timm_model} needs --fd_weights: a local weights file (nothing is "
                "downloaded)"
            )
        return load_timm_extractor(timm_model, weights, image_size, device, name)
    if torchscript:
        return load_torchscript_extractor(torchscript, image_size, device, name)
    return None
