"""
A small class-labelled image folder drawn procedurally (coloured shapes on a plain
background), needing nothing beyond Pillow: test data for training, guided sampling and
evaluation. (The demo uses real data instead: the digits of guided_diffusion.demo.digits.)

Files are named "{class}_{index:05d}.png", the class convention of load_data.
"""

import os

import numpy as np
from PIL import Image, ImageDraw

SHAPE_CLASSES = ("circle", "square", "triangle", "cross")


def draw_shape(shape: str, image_size: int, rng: np.random.Generator) -> Image.Image:
    """
    Draw one RGB image of ``shape`` with a random position, size and colours.

    :param shape: one of SHAPE_CLASSES.
    :param image_size: side of the square image in pixels.
    :param rng: the random generator to draw from.
    """
    if shape not in SHAPE_CLASSES:
        raise ValueError(f"unknown shape {shape!r}: valid shapes are {', '.join(SHAPE_CLASSES)}")
    background = tuple(int(c) for c in rng.integers(0, 96, size=3))
    colour = tuple(int(c) for c in rng.integers(128, 256, size=3))
    image = Image.new("RGB", (image_size, image_size), background)
    draw = ImageDraw.Draw(image)
    radius = image_size * rng.uniform(0.22, 0.38)
    cx, cy = image_size * rng.uniform(0.38, 0.62, size=2)
    box = (cx - radius, cy - radius, cx + radius, cy + radius)
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "square":
        draw.rectangle(box, fill=colour)
    elif shape == "triangle":
        draw.polygon([(cx, cy - radius), (cx + radius, cy + radius), (cx - radius, cy + radius)], fill=colour)
    else:
        bar = radius / 3
        draw.rectangle((cx - radius, cy - bar, cx + radius, cy + bar), fill=colour)
        draw.rectangle((cx - bar, cy - radius, cx + bar, cy + radius), fill=colour)
    return image


def write_shapes_dataset(
    data_dir: str, num_per_class: int = 64, image_size: int = 32, seed: int = 0
) -> list[str]:
    """
    Write the shapes data set as PNG files in ``data_dir`` (created if needed).

    :return: the paths written, class by class.
    """
    if num_per_class < 1 or image_size < 8:
        raise ValueError(
            f"need num_per_class >= 1 and image_size >= 8, got {num_per_class} and {image_size}"
        )
    os.makedirs(data_dir, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for shape in SHAPE_CLASSES:
        for i in range(num_per_class):
            path = os.path.join(data_dir, f"{shape}_{i:05d}.png")
            draw_shape(shape, image_size, rng).save(path)
            paths.append(path)
    return paths
