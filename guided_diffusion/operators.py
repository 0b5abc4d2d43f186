"""
Degradation operators A for image restoration: inpainting masks, super-resolution by
average pooling or bicubic resizing, Gaussian blur and colourisation, on image batches
[N x C x H x W] in [-1, 1].

Every operator is linear. ``forward`` measures (y = A x), ``adjoint`` applies A^T (for any
operator, through autograd), and ``pinv`` applies a pseudo-inverse A^+ with A A^+ y = y
where one is known in closed form (``has_pinv``); DDNM needs it. ``measure`` adds
measurement noise of standard deviation ``sigma_y``.
"""

from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .script_errors import SamplingInputError

MASK_NAMES = ("box", "half", "random", "lines")
OPERATOR_NAMES = ("none", "inpaint", "sr_avgpool", "sr_bicubic", "blur", "colorize")


class OperatorError(SamplingInputError):
    """An operator that does not fit the images, or a method that needs what it lacks."""


class Operator:
    """
    A linear degradation y = A x of images of a fixed shape [C x H x W].

    :param image_shape: (C, H, W) of the images it measures.
    """

    name = "operator"
    has_pinv = False

    def __init__(self, image_shape: Sequence[int]):
        self.image_shape = tuple(int(s) for s in image_shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """:param x: [N x C x H x W] images. :return: the measurement A x."""
        raise NotImplementedError

    def pinv(self, y: torch.Tensor) -> torch.Tensor:
        """:param y: a measurement. :return: A^+ y, [N x C x H x W]."""
        raise OperatorError(f"operator {self.name!r} has no pseudo-inverse")

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """
        A^T y, as the vector-Jacobian product of the (linear) forward map.

        :param y: a measurement [N x ...] of forward()'s output shape.
        :return: [N x C x H x W].
        """
        with torch.enable_grad():
            x = torch.zeros(len(y), *self.image_shape, dtype=y.dtype, device=y.device)
            x.requires_grad_(True)
            (grad,) = torch.autograd.grad(self.forward(x), x, grad_outputs=y)
        return grad

    def measure(
        self, x: torch.Tensor, sigma_y: float = 0.0, generator: Optional[torch.Generator] = None
    ) -> torch.Tensor:
        """
        y = A x + sigma_y n with n standard normal.

        :param generator: the source of n (CPU generator; default: the global one).
        """
        y = self.forward(x)
        if sigma_y > 0:
            noise = torch.randn(y.shape, generator=generator, dtype=y.dtype).to(y.device)
            y = y + sigma_y * noise
        return y

    def visualise(self, y: torch.Tensor) -> torch.Tensor:
        """
        A measurement shown as an image: resized (nearest) to the images' size and copied
        to every channel where it has fewer.

        :return: [N x C x H x W].
        """
        channels, height, width = self.image_shape
        if tuple(y.shape[1:]) == self.image_shape:
            return y
        y = F.interpolate(y, size=(height, width), mode="nearest")
        return y.expand(-1, channels, -1, -1).contiguous()


class Identity(Operator):
    """No degradation: y = x (for methods that take the image itself as their guide)."""

    name = "none"
    has_pinv = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def pinv(self, y: torch.Tensor) -> torch.Tensor:
        return y


class Inpainting(Operator):
    """
    y = m * x for a mask m (1 on known pixels, 0 on hidden ones); A is a projection, so
    A^T = A^+ = A.

    :param mask: [1 or N x 1 or C x H x W] of 0 / 1.
    """

    name = "inpaint"
    has_pinv = True

    def __init__(self, image_shape: Sequence[int], mask: torch.Tensor):
        super().__init__(image_shape)
        _, height, width = self.image_shape
        if mask.dim() != 4 or tuple(mask.shape[2:]) != (height, width):
            raise OperatorError(
                f"the mask is {list(mask.shape[-2:])} pixels but the images are "
                f"{height}x{width}; give a mask of the images' size"
            )
        self.mask = mask.float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mask.to(x) * x

    def pinv(self, y: torch.Tensor) -> torch.Tensor:
        return self.mask.to(y) * y

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return self.mask.to(y) * y


class AvgPoolSR(Operator):
    """
    Super-resolution by average pooling over factor x factor blocks; A^+ repeats each
    low-resolution pixel over its block (A A^+ = I), A^T does the same divided by factor^2.
    """

    name = "sr_avgpool"
    has_pinv = True

    def __init__(self, image_shape: Sequence[int], factor: int):
        super().__init__(image_shape)
        self.factor = _check_factor(factor, self.image_shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, self.factor)

    def pinv(self, y: torch.Tensor) -> torch.Tensor:
        return F.interpolate(y, scale_factor=self.factor, mode="nearest")


class BicubicSR(Operator):
    """Super-resolution by bicubic downsizing (antialiased); no closed-form pseudo-inverse."""

    name = "sr_bicubic"

    def __init__(self, image_shape: Sequence[int], factor: int):
        super().__init__(image_shape)
        self.factor = _check_factor(factor, self.image_shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, height, width = self.image_shape
        size = (height // self.factor, width // self.factor)
        return F.interpolate(x, size=size, mode="bicubic", antialias=True, align_corners=False)


class GaussianBlur(Operator):
    """
    Convolution with a normalised Gaussian kernel (zero padding, same size out);
    no closed-form pseudo-inverse.
    """

    name = "blur"

    def __init__(self, image_shape: Sequence[int], kernel_size: int = 61, sigma: float = 3.0):
        super().__init__(image_shape)
        if kernel_size < 1 or kernel_size % 2 == 0 or sigma <= 0:
            raise OperatorError(
                f"--blur_kernel_size must be odd and positive and --blur_sigma positive, got "
                f"{kernel_size} and {sigma}"
            )
        offsets = torch.arange(kernel_size, dtype=torch.float64) - kernel_size // 2
        line = torch.exp(-(offsets**2) / (2 * sigma**2))
        line = line / line.sum()
        self.kernel = torch.outer(line, line)  # (k, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels = x.shape[1]
        weight = self.kernel.to(x)[None, None].repeat(channels, 1, 1, 1)  # (C, 1, k, k)
        return F.conv2d(x, weight, padding=self.kernel.shape[0] // 2, groups=channels)


class Colorization(Operator):
    """
    y = the mean of the colour channels, [N x 1 x H x W]; A^+ copies y to every channel
    (A A^+ = I), A^T does the same divided by C.
    """

    name = "colorize"
    has_pinv = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=1, keepdim=True)

    def pinv(self, y: torch.Tensor) -> torch.Tensor:
        return y.expand(-1, self.image_shape[0], -1, -1).contiguous()


def _check_factor(factor: int, image_shape: tuple[int, ...]) -> int:
    _, height, width = image_shape
    if factor < 1 or height % factor or width % factor:
        raise OperatorError(
            f"--sr_factor {factor} must be a positive divisor of the image size "
            f"{height}x{width}"
        )
    return int(factor)


# ---------------------------------------------------------------- masks


def named_mask(
    name: str, image_size: int, ratio: float = 0.92, seed: int = 0
) -> torch.Tensor:
    """
    A named inpainting mask, 1 on known pixels.

    :param name: "box" (the central square of half the side hidden), "half" (the lower
        half hidden), "random" (a fraction ``ratio`` of the pixels hidden, the same for
        every channel) or "lines" (every other row hidden).
    :param image_size: H = W of the images.
    :param ratio: the hidden fraction of a "random" mask.
    :param seed: the seed of a "random" mask.
    :return: [1 x 1 x H x W] float of 0 / 1.
    """
    mask = torch.ones(image_size, image_size)
    if name == "box":
        lo, hi = image_size // 4, image_size // 4 + image_size // 2
        mask[lo:hi, lo:hi] = 0
    elif name == "half":
        mask[image_size // 2 :] = 0
    elif name == "random":
        if not 0 <= ratio <= 1:
            raise OperatorError(f"--mask_ratio must lie in [0, 1], got {ratio}")
        generator = torch.Generator().manual_seed(seed)
        hidden = torch.randperm(image_size * image_size, generator=generator)
        hidden = hidden[: int(round(ratio * image_size * image_size))]
        mask.view(-1)[hidden] = 0
    elif name == "lines":
        mask[1::2] = 0
    else:
        raise OperatorError(
            f"--mask {name!r} is neither an image file nor one of {', '.join(MASK_NAMES)}"
        )
    return mask[None, None]


def mask_from_image(pixels: np.ndarray) -> torch.Tensor:
    """
    A mask from an image's pixels: white (>= 128 in the first channel) is known.

    :param pixels: [H x W] or [H x W x C] uint8.
    :return: [1 x 1 x H x W] float of 0 / 1.
    """
    if pixels.ndim == 3:
        pixels = pixels[..., 0]
    return torch.from_numpy(pixels >= 128).float()[None, None]


def make_operator(
    name: str,
    image_shape: Sequence[int],
    *,
    mask: Optional[torch.Tensor] = None,
    sr_factor: int = 4,
    blur_kernel_size: int = 61,
    blur_sigma: float = 3.0,
) -> Operator:
    """
    Build an operator by its ``--operator`` name.

    :param name: one of OPERATOR_NAMES.
    :param image_shape: (C, H, W) of the images.
    :param mask: the inpainting mask (needed by "inpaint").
    :return: the operator.
    """
    if name == "none":
        return Identity(image_shape)
    if name == "inpaint":
        if mask is None:
            raise OperatorError("--operator inpaint needs --mask (an image file or a name)")
        return Inpainting(image_shape, mask)
    if name == "sr_avgpool":
        return AvgPoolSR(image_shape, sr_factor)
    if name == "sr_bicubic":
        return BicubicSR(image_shape, sr_factor)
    if name == "blur":
        return GaussianBlur(image_shape, blur_kernel_size, blur_sigma)
    if name == "colorize":
        if image_shape[0] != 3:
            raise OperatorError(f"--operator colorize needs 3-channel images, got {image_shape[0]}")
        return Colorization(image_shape)
    raise OperatorError(f"--operator {name!r} is not one of {', '.join(OPERATOR_NAMES)}")


def low_pass_filter(
    factor: int, image_shape: Sequence[int], kind: str = "bicubic"
) -> Callable[[torch.Tensor], torch.Tensor]:
    """
    ILVR's low-pass filter phi_N: resize down by N, then back up.

    :param factor: N, the resize factor (a divisor of the image size).
    :param image_shape: (C, H, W) of the images.
    :param kind: "bicubic" (ILVR's bicubic resizing both ways) or "avgpool" (average
        pooling, then repeating each pixel: an exact projection, phi(phi(x)) = phi(x)).
    :return: phi, mapping [N x C x H x W] to the same shape.
    """
    if kind == "avgpool":
        pool = AvgPoolSR(image_shape, factor)
        return lambda x: pool.pinv(pool.forward(x))
    if kind != "bicubic":
        raise OperatorError(f"--ilvr_filter {kind!r} is not one of bicubic, avgpool")
    down = BicubicSR(image_shape, factor)
    size = tuple(image_shape[1:])
    return lambda x: F.interpolate(down.forward(x), size=size, mode="bicubic", align_corners=False)
