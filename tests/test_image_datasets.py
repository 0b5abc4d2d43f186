"""
image_datasets: pixel-exact crops (against a separate implementation of the same PIL
steps), file listing, classes, shards, batches and the errors for bad folders.
"""

import math
import os
import random

import numpy as np
import pytest
import torch
from PIL import Image

from guided_diffusion import dist_util, image_datasets
from guided_diffusion.image_datasets import (
    ImageDataset,
    _list_image_files_recursively,
    center_crop_arr,
    list_classes,
    load_data,
    random_crop_arr,
)

# (width, height) of test images for a 16-pixel target: odd sides, portrait and landscape,
# smaller than the target (upscaling), exactly 2x (one halving), > 4x (two halvings).
SIZES = [(16, 16), (17, 23), (23, 17), (9, 13), (13, 9), (32, 45), (45, 32), (33, 33),
         (35, 50), (71, 130), (130, 71), (64, 200)]


def _noise_image(width: int, height: int, seed: int = 0, mode: str = "RGB") -> Image.Image:
    rng = np.random.RandomState(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    pixels = rng.randint(0, 256, size=(height, width, channels), dtype=np.uint8)
    return Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels, mode)


def _reference_resize(image: Image.Image, shorter: int) -> Image.Image:
    """The documented steps, written independently: count the halvings first."""
    width, height = image.size
    halvings = 0
    while min(width >> halvings, height >> halvings) >= 2 * shorter:
        halvings += 1
    for _ in range(halvings):
        image = image.resize((image.size[0] // 2, image.size[1] // 2), Image.BOX)
    factor = shorter / min(image.size)
    target = tuple(int(round(side * factor)) for side in image.size)
    return image.resize(target, Image.BICUBIC)


def _reference_center_crop(image: Image.Image, size: int) -> np.ndarray:
    image = _reference_resize(image, size)
    left = (image.size[0] - size) // 2
    top = (image.size[1] - size) // 2
    return np.asarray(image.crop((left, top, left + size, top + size)))


def _reference_random_crop(image: Image.Image, size: int, rng: random.Random) -> np.ndarray:
    shorter = rng.randint(math.ceil(size / 1.0), math.ceil(size / 0.8))
    image = _reference_resize(image, shorter)
    top = rng.randint(0, image.size[1] - size)
    left = rng.randint(0, image.size[0] - size)
    return np.asarray(image.crop((left, top, left + size, top + size)))


@pytest.mark.parametrize("width,height", SIZES)
def test_center_crop_matches_reference(width, height):
    image = _noise_image(width, height, seed=width * 1000 + height)
    out = center_crop_arr(image, 16)
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, _reference_center_crop(image, 16))


@pytest.mark.parametrize("width,height", SIZES)
def test_random_crop_matches_reference(width, height):
    image = _noise_image(width, height, seed=width + height)
    for seed in range(4):
        random.seed(seed)
        out = random_crop_arr(image, 16)
        expected = _reference_random_crop(image, 16, random.Random(seed))
        assert out.shape == (16, 16, 3)
        np.testing.assert_array_equal(out, expected)


def test_center_crop_of_two_halves_is_exact():
    # 128 x 64, left half black, right half white, to 32: one box halving (64 x 32, no
    # resampling blur across the edge at column 32), no bicubic change, crop columns 16..47.
    pixels = np.zeros((64, 128, 3), dtype=np.uint8)
    pixels[:, 64:] = 255
    out = center_crop_arr(Image.fromarray(pixels), 32)
    expected = np.zeros((32, 32, 3), dtype=np.uint8)
    expected[:, 16:] = 255
    np.testing.assert_array_equal(out, expected)


def test_random_crop_draws_side_then_offsets(monkeypatch):
    # The shorter side is drawn from [ceil(size / max_frac), ceil(size / min_frac)], then
    # the top and left offsets: ceil(16 / 0.9) = 18, ceil(16 / 0.5) = 32.
    calls = []
    real_randrange = random.randrange

    def spy(*args):
        calls.append(args)
        return real_randrange(*args)

    monkeypatch.setattr(random, "randrange", spy)
    random.seed(1)
    image = _noise_image(40, 50, seed=5)
    out = random_crop_arr(image, 16, min_crop_frac=0.5, max_crop_frac=0.9)
    assert calls[0] == (18, 33)
    side = random.Random(1).randrange(18, 33)  # the side drawn after seed 1
    resized_height = round(50 * side / 40)
    assert calls[1:] == [(resized_height - 16 + 1,), (side - 16 + 1,)]
    assert out.shape == (16, 16, 3)


def _write_folder(root, names, size=(12, 10)):
    os.makedirs(root, exist_ok=True)
    for i, name in enumerate(names):
        path = os.path.join(root, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        # Each image one flat grey level, 10 * (its index), so pixels name the file.
        pixels = np.full((size[1], size[0], 3), 10 * i, dtype=np.uint8)
        Image.fromarray(pixels).save(path, format="PNG")


def test_list_image_files_recursively(tmp_path):
    root = str(tmp_path)
    for name in ["b.png", "a.JPEG", "z/c.gif", "z/y/d.jpg", "notes.txt", "noext", "m/e.jpeg"]:
        path = os.path.join(root, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        open(path, "wb").close()
    expected = ["a.JPEG", "b.png", "m/e.jpeg", "z/c.gif", "z/y/d.jpg"]
    assert _list_image_files_recursively(root) == [os.path.join(root, e) for e in expected]


def test_dataset_items_are_scaled_chw_with_labels(tmp_path):
    path = str(tmp_path / "x_0.png")
    image = _noise_image(20, 14, seed=3)
    image.save(path)
    dataset = ImageDataset(8, [path], classes=[5], random_flip=False)
    arr, cond = dataset[0]
    assert arr.shape == (3, 8, 8) and arr.dtype == np.float32
    expected = center_crop_arr(image, 8).astype(np.float32) / 127.5 - 1
    np.testing.assert_array_equal(arr, expected.transpose(2, 0, 1))
    assert cond["y"].dtype == np.int64 and int(cond["y"]) == 5
    assert arr.min() >= -1.0 and arr.max() <= 1.0


@pytest.mark.parametrize("mode", ["L", "RGBA", "P"])
def test_dataset_converts_to_rgb(tmp_path, mode):
    base = _noise_image(10, 10, seed=1, mode="RGBA" if mode == "RGBA" else "RGB")
    image = base.convert(mode) if mode != "RGBA" else base
    path = str(tmp_path / "img.png")
    image.save(path)
    arr, cond = ImageDataset(10, [path], random_flip=False)[0]
    assert cond == {}
    expected = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 127.5 - 1
    np.testing.assert_array_equal(arr, expected.transpose(2, 0, 1))


def test_random_flip_mirrors_about_half_the_time(tmp_path):
    path = str(tmp_path / "img.png")
    _noise_image(8, 8, seed=2).save(path)
    plain = ImageDataset(8, [path], random_flip=False)[0][0]
    dataset = ImageDataset(8, [path], random_flip=True)
    random.seed(0)
    flips = 0
    for _ in range(40):
        arr = dataset[0][0]
        if np.array_equal(arr, plain[:, :, ::-1]):
            flips += 1
        else:
            np.testing.assert_array_equal(arr, plain)
    assert 10 <= flips <= 30


def test_dataset_shards_are_strided():
    paths = [f"img{i}.png" for i in range(7)]
    shards = [ImageDataset(8, paths, classes=list(range(7)), shard=r, num_shards=3)
              for r in range(3)]
    assert [s.local_images for s in shards] == [
        ["img0.png", "img3.png", "img6.png"], ["img1.png", "img4.png"], ["img2.png", "img5.png"]
    ]
    assert shards[1].local_classes == [1, 4]


def test_load_data_batches_labels_and_order(tmp_path):
    names = ["dog_1.png", "cat_2.png", "sub/cat_1.png", "ant_x.png"]
    _write_folder(str(tmp_path), names)
    # Sorted listing: ant_x, cat_2, dog_1, sub/cat_1 (grey levels 30, 10, 0, 20).
    assert list_classes(str(tmp_path)) == {"ant": 0, "cat": 1, "dog": 2}
    data = load_data(data_dir=str(tmp_path), batch_size=3, image_size=4, class_cond=True,
                     deterministic=True, random_flip=False, num_workers=0)
    for _ in range(3):  # endless: the one full batch of each epoch, again and again
        images, cond = next(data)
        assert images.shape == (3, 3, 4, 4) and images.dtype == torch.float32
        assert cond["y"].dtype == torch.int64
        assert cond["y"].tolist() == [0, 1, 2]
        greys = ((images[:, 0, 0, 0] + 1) * 127.5).round().tolist()
        assert greys == [30.0, 10.0, 0.0]


def test_load_data_unconditional_shuffles_with_a_worker(tmp_path):
    _write_folder(str(tmp_path), [f"{i}.png" for i in range(6)])
    torch.manual_seed(0)
    data = load_data(data_dir=str(tmp_path), batch_size=6, image_size=4, num_workers=1)
    orders = []
    for _ in range(3):
        images, cond = next(data)
        assert cond == {}
        orders.append(((images[:, 0, 0, 0] + 1) * 127.5).round().int().tolist())
    assert all(sorted(o) == [0, 10, 20, 30, 40, 50] for o in orders)
    assert len({tuple(o) for o in orders}) > 1  # reshuffled each epoch


def test_load_data_reads_this_ranks_shard(tmp_path, monkeypatch):
    _write_folder(str(tmp_path), [f"{i}.png" for i in range(5)])
    monkeypatch.setattr(dist_util, "get_rank", lambda: 1)
    monkeypatch.setattr(dist_util, "get_world_size", lambda: 2)
    data = load_data(data_dir=str(tmp_path), batch_size=2, image_size=4,
                     deterministic=True, num_workers=0)
    images, _ = next(data)
    assert ((images[:, 0, 0, 0] + 1) * 127.5).round().tolist() == [10.0, 30.0]


def test_missing_data_dir(tmp_path):
    missing = str(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_data(data_dir=missing, batch_size=1, image_size=8)


def test_data_dir_that_is_a_file(tmp_path):
    path = tmp_path / "a.png"
    _noise_image(4, 4).save(path)
    with pytest.raises(ValueError, match="a.png"):
        load_data(data_dir=str(path), batch_size=1, image_size=8)


def test_folder_without_images(tmp_path):
    (tmp_path / "readme.txt").write_text("no images here")
    with pytest.raises(ValueError, match=r"no images in data directory .*\.png"):
        load_data(data_dir=str(tmp_path), batch_size=1, image_size=8)


@pytest.mark.parametrize("workers", [
    0,
    # Slow only because torch's DataLoader waits 5 s for a worker to exit after an error.
    pytest.param(1, marks=pytest.mark.slow),
])
def test_corrupt_image_is_named(tmp_path, workers):
    _write_folder(str(tmp_path), ["good.png"])
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    data = load_data(data_dir=str(tmp_path), batch_size=2, image_size=4,
                     deterministic=True, num_workers=workers)
    with pytest.raises(ValueError, match="cannot read image file .*broken.png"):
        next(data)


def test_class_cond_needs_classes_in_names(tmp_path):
    _write_folder(str(tmp_path), ["cat_1.png", "dog.png", "bird.png"])
    with pytest.raises(ValueError, match=r"<class>_<anything>.*2 of 3.*bird\.png"):
        load_data(data_dir=str(tmp_path), batch_size=1, image_size=8, class_cond=True)
    # The same folder is fine without class_cond.
    load_data(data_dir=str(tmp_path), batch_size=1, image_size=8, num_workers=0)


def test_batch_larger_than_shard(tmp_path, monkeypatch):
    _write_folder(str(tmp_path), [f"{i}.png" for i in range(3)])
    monkeypatch.setattr(dist_util, "get_rank", lambda: 0)
    monkeypatch.setattr(dist_util, "get_world_size", lambda: 2)
    # Rank 0 of 2 holds 2 of the 3 images, rank 1 only 1: both ranks must refuse.
    with pytest.raises(ValueError, match=r"batch_size 2 .* 1 of 3 images over 2 rank"):
        load_data(data_dir=str(tmp_path), batch_size=2, image_size=8)
    load_data(data_dir=str(tmp_path), batch_size=1, image_size=8, num_workers=0)


@pytest.mark.parametrize("kwargs", [{"batch_size": 0, "image_size": 8},
                                    {"batch_size": 1, "image_size": -1}])
def test_bad_sizes(tmp_path, kwargs):
    _write_folder(str(tmp_path), ["a.png"])
    with pytest.raises(ValueError, match="must be a positive integer"):
        load_data(data_dir=str(tmp_path), **kwargs)


def test_module_keeps_the_original_names():
    for name in ["load_data", "ImageDataset", "center_crop_arr", "random_crop_arr",
                 "_list_image_files_recursively"]:
        assert hasattr(image_datasets, name)


def test_read_rgb_is_public_for_other_readers(tmp_path):
    # The editing programs read inputs and masks through the public helpers.
    from guided_diffusion import edit_util

    path = str(tmp_path / "grey.png")
    Image.fromarray(np.full((3, 5), 200, np.uint8)).save(path)
    image = image_datasets.read_rgb(path)
    assert image.mode == "RGB" and image.size == (5, 3)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(ValueError, match="cannot read image file .*bad.png"):
        image_datasets.read_rgb(str(bad))
    private = [name for name, value in vars(edit_util).items() if name.startswith("_")
               and not name.startswith("__") and getattr(image_datasets, name, None) is value]
    assert private == []
