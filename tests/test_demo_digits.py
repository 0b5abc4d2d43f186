"""
The built-in digits data: what is written, the held-out split, and that the project's own
load_data reads the files back with the right classes.
"""

import json
import os

import numpy as np
import pytest
from PIL import Image


from guided_diffusion.demo import digits  # noqa: E402
from guided_diffusion.image_datasets import list_classes, load_data  # noqa: E402


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("digits"))
    return digits.write_digits_dataset(out, image_size=8, holdout_per_class=5, seed=3)


def _names(folder):
    return sorted(os.listdir(folder))


def test_counts_classes_and_balanced_holdout(written):
    assert (written.num_train, written.num_holdout) == (1797 - 50, 50)
    train, held = _names(written.train_dir), _names(written.holdout_dir)
    assert len(train) == 1747 and len(held) == 50
    assert all(n.endswith(".png") for n in train + held)
    held_digits = [int(n.split("_")[0]) for n in held]
    assert np.bincount(held_digits).tolist() == [5] * 10
    train_digits = np.bincount([int(n.split("_")[0]) for n in train])
    _, labels = digits.load_digit_arrays()
    assert (train_digits + 5).tolist() == np.bincount(labels).tolist()


def test_holdout_is_disjoint_and_seeded():
    _, labels = digits.load_digit_arrays()
    train, held = digits.holdout_split(labels, 7, seed=1)
    assert len(np.intersect1d(train, held)) == 0
    assert len(train) + len(held) == len(labels)
    assert np.array_equal(held, digits.holdout_split(labels, 7, seed=1)[1])
    assert not np.array_equal(held, digits.holdout_split(labels, 7, seed=2)[1])
    with pytest.raises(ValueError, match="holdout_per_class"):
        digits.holdout_split(labels, 10_000)


def test_files_hold_the_right_digits(written):
    images, labels = digits.load_digit_arrays()
    _, held = digits.holdout_split(labels, 5, seed=3)
    for name in _names(written.holdout_dir):
        pixels = np.asarray(Image.open(os.path.join(written.holdout_dir, name)))
        assert pixels.shape == (8, 8, 3)
        digit, index = map(int, name[: -len(".png")].split("_"))
        assert digit == labels[held[index]]
        expected = np.round(images[held[index]] * (255 / 16))
        assert np.abs(pixels[..., 0].astype(float) - expected).max() <= 1


def test_load_data_reads_digit_classes(written):
    assert list_classes(written.holdout_dir) == {str(d): d for d in range(10)}
    batch, cond = next(load_data(data_dir=written.holdout_dir, batch_size=50, image_size=8,
                                 class_cond=True, deterministic=True, random_flip=False))
    assert batch.shape == (50, 3, 8, 8)
    # the label of every image is the digit its file name starts with, and the image is it
    images, labels = digits.load_digit_arrays()
    features = digits.images_to_digit_features(
        ((batch.numpy().transpose(0, 2, 3, 1) + 1) * 127.5).round().astype(np.uint8))
    flat = images.reshape(len(images), -1).astype(float)
    for feature, label in zip(features, cond["y"].numpy()):
        nearest = np.abs(flat - feature).sum(axis=1).argmin()
        assert labels[nearest] == label


def test_written_once_and_reused(written, tmp_path):
    root = os.path.dirname(written.train_dir)
    before = os.path.getmtime(os.path.join(written.train_dir, _names(written.train_dir)[0]))
    again = digits.write_digits_dataset(root, image_size=8, holdout_per_class=5, seed=3)
    assert again == written
    assert os.path.getmtime(os.path.join(written.train_dir, _names(written.train_dir)[0])) == before
    with open(os.path.join(root, "digits.json")) as f:
        assert json.load(f) == {"image_size": 8, "holdout_per_class": 5, "seed": 3}
    with pytest.raises(ValueError, match="another folder"):
        digits.write_digits_dataset(root, image_size=16, holdout_per_class=5, seed=3)


def test_upscaled_digits_round_trip_to_the_clean_classifier(tmp_path):
    images, labels = digits.load_digit_arrays()
    big = np.stack([np.asarray(digits.digit_to_image(d, 16)) for d in images])
    assert big.shape == (1797, 16, 16, 3)
    features = digits.images_to_digit_features(big)
    assert features.shape == (1797, 64) and 0 <= features.min() and features.max() <= 16
    train, held = digits.holdout_split(labels, 30)
    clean = digits.fit_clean_classifier(features[train], labels[train])
    assert clean.score(features[held], labels[held]) > 0.95
    # it is a real judge: noise is not classified as the requested digits
    noise = np.random.default_rng(0).integers(0, 256, size=(100, 16, 16, 3), dtype=np.uint8)
    wanted = np.arange(100) % 10
    assert (clean.predict(digits.images_to_digit_features(noise)) == wanted).mean() < 0.3
