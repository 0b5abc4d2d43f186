"""
TensorFlow 1's legacy bilinear resize (``tf.image.resize_bilinear`` with
``align_corners=False`` and no half-pixel centres), the resize that the FID
Inception graph applies to its input.

It maps output index ``i`` to the source coordinate ``i * in_size / out_size``
(both in float32), so the output grid is anchored at the top-left pixel, unlike
``F.interpolate(..., align_corners=False)``, which samples at pixel centres and
differs from it by whole grey levels.
"""

import torch


def _source_taps(in_size: int, out_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """
    The two source pixels and the blend weight for each output position along one axis.

    :param in_size: length of the axis in the input.
    :param out_size: length of the axis in the output.
    :return: (lower, upper, lerp): int64 indices of shape (out_size,) and float32
        weights of shape (out_size,); output = in[lower] + (in[upper] - in[lower]) * lerp.
    """
    # float32 throughout, as TF computes it: scale = in / out, source = index * scale.
    scale = torch.tensor(in_size, dtype=torch.float32) / torch.tensor(out_size, dtype=torch.float32)
    source = torch.arange(out_size, dtype=torch.float32) * scale
    floor = torch.floor(source)
    lower = floor.long().clamp(max=in_size - 1)
    upper = (lower + 1).clamp(max=in_size - 1)
    return lower, upper, source - floor


def tf1_resize_bilinear(images: torch.Tensor, size: int = 299) -> torch.Tensor:
    """
    Resize images to ``size`` x ``size`` the way TF1's legacy ``resize_bilinear`` does.

    Each output pixel blends the source pixels at floor(coordinate) and the next
    one (clamped at the edge): first along the width in the two source rows, then
    between the rows, in the same order as TensorFlow's kernel.

    :param images: (N, C, H, W) tensor, any real dtype (computed in float32).
    :return: (N, C, size, size) float32 tensor.
    """
    if images.dim() != 4:
        raise ValueError(f"tf1_resize_bilinear expects (N, C, H, W) images, got shape {tuple(images.shape)}")
    images = images.float()
    _, _, in_h, in_w = images.shape
    y_lower, y_upper, y_lerp = (t.to(images.device) for t in _source_taps(in_h, size))
    x_lower, x_upper, x_lerp = (t.to(images.device) for t in _source_taps(in_w, size))

    top_rows = images[:, :, y_lower]  # (N, C, size, W)
    bottom_rows = images[:, :, y_upper]  # (N, C, size, W)
    top_left, top_right = top_rows[..., x_lower], top_rows[..., x_upper]  # (N, C, size, size)
    bottom_left, bottom_right = bottom_rows[..., x_lower], bottom_rows[..., x_upper]

    top = top_left + (top_right - top_left) * x_lerp
    bottom = bottom_left + (bottom_right - bottom_left) * x_lerp
    return top + (bottom - top) * y_lerp[:, None]
