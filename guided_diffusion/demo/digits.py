"""
The built-in real data: scikit-learn's 1,797 handwritten 8x8 digits (10 classes, shipped with
scikit-learn, no download), written once as class-prefixed PNG files that ``load_data`` reads
("{digit}_{index:04d}.png": the class is the digit, so labels 0..9 are the digits themselves).

A fixed, class-balanced part is held out as the evaluation reference and never trained on.
The same module turns images back into 8x8 digit features for an independent "clean"
classifier, so that samples can be scored by a judge the guidance never saw.

Needs scikit-learn (``pip install -e ".[demo]"``).
"""

import json
import os
from dataclasses import dataclass

import numpy as np
from PIL import Image

from guided_diffusion.extras import require

DIGIT_CLASSES = tuple(str(d) for d in range(10))
DIGIT_SIDE = 8
DIGIT_MAX = 16  # sklearn's digits hold integer ink levels 0..16
MANIFEST = "digits.json"


@dataclass(frozen=True)
class DigitsSplit:
    """Where the written digits are: ``train_dir`` to train on, ``holdout_dir`` as reference."""

    train_dir: str
    holdout_dir: str
    num_train: int
    num_holdout: int
    image_size: int


def load_digit_arrays() -> tuple[np.ndarray, np.ndarray]:
    """
    :return: (images uint8 [1797 x 8 x 8] with ink levels 0..16, labels int64 [1797]).
    """
    require("sklearn", purpose="the digits data")
    from sklearn.datasets import load_digits

    digits = load_digits()
    return digits.images.astype(np.uint8), digits.target.astype(np.int64)


def holdout_split(
    labels: np.ndarray, holdout_per_class: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """
    Choose ``holdout_per_class`` images of every class at random (seeded) as the held-out part.

    :param labels: int [N] class of each image.
    :return: (train indices, held-out indices), each sorted, disjoint, covering 0..N-1.
    """
    counts = np.bincount(labels)
    if holdout_per_class < 0 or holdout_per_class >= counts.min():
        raise ValueError(
            f"holdout_per_class must lie in 0..{counts.min() - 1} (the smallest class has "
            f"{counts.min()} images), got {holdout_per_class}"
        )
    rng = np.random.default_rng(seed)
    held = [
        rng.choice(np.flatnonzero(labels == c), holdout_per_class, replace=False)
        for c in range(len(counts))
    ]
    held = np.sort(np.concatenate(held)).astype(np.int64)
    train = np.setdiff1d(np.arange(len(labels)), held)
    return train, held


def digit_to_image(digit: np.ndarray, image_size: int) -> Image.Image:
    """
    One 8x8 digit as an RGB image: white ink on black, bilinearly upscaled.

    :param digit: [8 x 8] ink levels 0..16.
    :param image_size: side of the output in pixels (>= 8).
    :return: a PIL RGB image [image_size x image_size].
    """
    grey = np.round(digit.astype(np.float64) * (255.0 / DIGIT_MAX)).astype(np.uint8)
    image = Image.fromarray(grey, mode="L")
    if image_size != DIGIT_SIDE:
        image = image.resize((image_size, image_size), Image.BILINEAR)
    return image.convert("RGB")


def images_to_digit_features(images: np.ndarray) -> np.ndarray:
    """
    Images back to sklearn's digit features: grey level, box-averaged down to 8x8, on 0..16.

    :param images: uint8 [N x H x W x 3] (or [N x H x W] grey).
    :return: float64 [N x 64].
    """
    images = np.asarray(images)
    if images.ndim == 4:
        images = images.astype(np.float64).mean(axis=3)
    out = np.empty((len(images), DIGIT_SIDE * DIGIT_SIDE))
    for i, image in enumerate(images):
        small = Image.fromarray(image.astype(np.float32), mode="F").resize(
            (DIGIT_SIDE, DIGIT_SIDE), Image.BOX
        )
        out[i] = np.asarray(small, dtype=np.float64).reshape(-1) * (DIGIT_MAX / 255.0)
    return out


def _manifest(image_size: int, holdout_per_class: int, seed: int) -> dict:
    return {"image_size": image_size, "holdout_per_class": holdout_per_class, "seed": seed}


def _write_folder(folder: str, images: np.ndarray, labels: np.ndarray, image_size: int) -> None:
    os.makedirs(folder, exist_ok=True)
    for index, (digit, label) in enumerate(zip(images, labels)):
        path = os.path.join(folder, f"{DIGIT_CLASSES[label]}_{index:04d}.png")
        digit_to_image(digit, image_size).save(path)


def write_digits_dataset(
    out_dir: str, image_size: int = 16, holdout_per_class: int = 30, seed: int = 0
) -> DigitsSplit:
    """
    Write the digits once as ``out_dir/train/{digit}_{i:04d}.png`` and
    ``out_dir/holdout/{digit}_{i:04d}.png``; a later call with the same arguments reuses them
    (``out_dir/digits.json`` records what was written, and is written last).

    :param image_size: side of the written images (>= 8).
    :param holdout_per_class: images of each digit held out as the evaluation reference.
    :param seed: which images are held out.
    :return: the DigitsSplit.
    """
    if image_size < DIGIT_SIDE:
        raise ValueError(f"image_size must be at least {DIGIT_SIDE}, got {image_size}")
    images, labels = load_digit_arrays()
    train, held = holdout_split(labels, holdout_per_class, seed)
    split = DigitsSplit(
        os.path.join(out_dir, "train"), os.path.join(out_dir, "holdout"),
        len(train), len(held), image_size,
    )
    manifest_path = os.path.join(out_dir, MANIFEST)
    wanted = _manifest(image_size, holdout_per_class, seed)
    if os.path.exists(manifest_path):
        with open(manifest_path) as f:
            found = json.load(f)
        if found == wanted:
            return split
        raise ValueError(
            f"{out_dir} already holds digits written with {json.dumps(found)}; "
            f"use another folder for {json.dumps(wanted)}"
        )
    _write_folder(split.train_dir, images[train], labels[train], image_size)
    _write_folder(split.holdout_dir, images[held], labels[held], image_size)
    tmp = manifest_path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(wanted, f)
    os.replace(tmp, manifest_path)
    return split


def fit_clean_classifier(features: np.ndarray, labels: np.ndarray):
    """
    The independent judge: an RBF support-vector classifier on 8x8 digit features.

    :param features: float [N x 64] on 0..16 (see images_to_digit_features).
    :param labels: int [N].
    :return: a fitted sklearn classifier (``predict``, ``score``).
    """
    require("sklearn", purpose="the digits data")
    from sklearn.svm import SVC

    return SVC(gamma=0.001, C=10.0).fit(features, labels)
