import numpy as np
import pytest
from PIL import Image

from synthetic_data import SHAPE_CLASSES, draw_shape, write_shapes_dataset


def test_shapes_dataset_files_classes_and_determinism(tmp_path):
    paths = write_shapes_dataset(str(tmp_path / "a"), num_per_class=3, image_size=16, seed=1)
    assert len(paths) == 3 * len(SHAPE_CLASSES)
    names = sorted(p.split("/")[-1] for p in paths)
    assert {n.split("_")[0] for n in names} == set(SHAPE_CLASSES)
    img = Image.open(paths[0])
    assert img.size == (16, 16) and img.mode == "RGB"
    again = write_shapes_dataset(str(tmp_path / "b"), num_per_class=3, image_size=16, seed=1)
    for p, q in zip(paths, again):
        assert np.array_equal(np.array(Image.open(p)), np.array(Image.open(q)))


def test_shapes_differ_by_class():
    rng = np.random.default_rng(0)
    # the foreground covers a class-specific share of the image: squares most, crosses least
    cover = {}
    for shape in SHAPE_CLASSES:
        shares = []
        for _ in range(20):
            a = np.asarray(draw_shape(shape, 32, rng)).astype(int)
            shares.append((a.min(axis=2) >= 128).mean())
        cover[shape] = np.mean(shares)
    assert cover["square"] > cover["circle"] > cover["triangle"]
    assert cover["square"] > cover["cross"]


def test_bad_arguments():
    with pytest.raises(ValueError, match="hexagon"):
        draw_shape("hexagon", 16, np.random.default_rng(0))
    with pytest.raises(ValueError, match="num_per_class"):
        write_shapes_dataset("/tmp/never", num_per_class=0)
