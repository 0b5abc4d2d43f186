"""
Data and evaluator inputs that used to give a silent wrong result or a traceback: 16-bit
PNGs, a batch whose content changed behind the evaluator's cache (cp + touch -r), batches
of different resolutions, NaN reference statistics, the FID of identical batches, a text
file or an absurd .npz header given as a batch.
"""

import io
import os
import shutil
import zipfile

import numpy as np
import pytest
from PIL import Image
from test_evaluator import FakeExtractor, make_images

from evaluations.batches import ImageSource
from evaluations.evaluator import evaluate, main
from evaluations.metrics import compute_statistics, frechet_distance
from guided_diffusion import npz_batch, sample_io
from guided_diffusion.image_datasets import ImageDataset


@pytest.fixture(autouse=True)
def private_user_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "user_cache"))


# ----------------------------------------------------------------------------- 16-bit PNGs


def _gradient_png16(path):
    values = np.linspace(0, 65535, 16 * 16).round().astype(np.uint16).reshape(16, 16)
    Image.fromarray(values).save(path)
    return np.rint(values / 257.0)  # the 8-bit values they stand for


def test_16_bit_pngs_are_read_at_their_real_scale(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    expected = _gradient_png16(folder / "grad.png")
    image, _ = ImageDataset(16, [str(folder / "grad.png")], random_flip=False)[0]
    assert image.shape == (3, 16, 16)
    pixels = (image[0] + 1) * 127.5  # back to 0..255
    np.testing.assert_allclose(pixels, expected, atol=1e-3)
    assert (image >= 1.0 - 1e-6).mean() < 0.01  # not saturated to white
    # the evaluator's folders too (--make_ref)
    batch = next(ImageSource(str(folder)).iter_batches(4))
    np.testing.assert_array_equal(batch[0, :, :, 1], expected.astype(np.uint8))


def test_32_bit_images_of_unknown_range_are_refused(tmp_path):
    path = tmp_path / "deep.tif"
    Image.fromarray(np.arange(64, dtype=np.float32).reshape(8, 8), mode="F").save(path)
    with pytest.raises(ValueError, match="deep.tif.*'F' images.*not supported"):
        ImageDataset(8, [str(path)])[0]


# ----------------------------------------------------------------------------- evaluator


def test_a_copy_with_a_restored_mtime_is_not_taken_for_the_old_content(tmp_path):
    old, new = tmp_path / "old.npz", tmp_path / "s.npz"
    np.savez(old, make_images(8, seed=1))
    np.savez(new, make_images(8, seed=2))
    extractor = FakeExtractor()
    first = evaluate(str(old), str(new), extractor=extractor, device="cpu")
    stat = new.stat()
    shutil.copyfile(old, new)  # cp ref.npz s.npz: same size...
    os.utime(new, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # ...touch -r: same mtime
    assert new.stat().st_size == stat.st_size and new.stat().st_mtime_ns == stat.st_mtime_ns
    again = evaluate(str(old), str(new), extractor=extractor, device="cpu")
    assert first["fid"] > 1e-3 and again["fid"] == 0.0


def test_different_resolutions_are_warned_about():
    with pytest.warns(UserWarning, match="reference images are 16x16 but the samples are 8x8"):
        evaluate(make_images(6, 16), make_images(6, 8), extractor=FakeExtractor(), device="cpu")


def test_nan_reference_statistics_are_refused(tmp_path, capsys):
    ref = tmp_path / "ref.npz"
    mu, sigma = np.full(64, np.nan), np.eye(64)
    np.savez(ref, make_images(6), mu=mu, sigma=sigma, mu_s=np.zeros(40), sigma_s=np.eye(40))
    sample = tmp_path / "sample.npz"
    np.savez(sample, make_images(6, seed=3))
    with pytest.raises(SystemExit, match=r"ref.npz: statistics \['mu'\] hold NaN"):
        main([str(ref), str(sample), "--device", "cpu"], extractor=FakeExtractor())


def test_the_fid_of_identical_statistics_is_zero_not_a_tiny_negative():
    acts = np.random.default_rng(0).normal(size=(50, 64)).astype(np.float32)
    mu, sigma = compute_statistics(acts)
    assert frechet_distance(mu, sigma, mu, sigma) == 0.0  # was about -3e-07
    images = make_images(16, seed=3)
    results = evaluate(images, images.copy(), extractor=FakeExtractor(), device="cpu")
    assert results["fid"] == 0.0 and results["sfid"] == 0.0


# ----------------------------------------------------------------------------- .npz files


def absurd_npz(path, side: int = 64) -> str:
    """Write an .npz whose arr_0 header claims 10^13 images of side x side x 3."""
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, np.zeros((2, side, side, 3), np.uint8))
    shape = f"(2, {side}, {side}, 3)".encode()
    data = buffer.getvalue().replace(shape, shape.replace(b"(2,", b"(10000000000000,"))
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("arr_0.npy", data)
    return str(path)


@pytest.mark.parametrize("kind", ["text", "absurd"])
def test_a_text_file_or_absurd_header_is_a_clear_error_everywhere(tmp_path, kind):
    if kind == "text":
        path = tmp_path / "notes.npz"
        path.write_text("these are my notes, not images\n")
        message = r"notes.npz.*not (an .npz file|a zip archive)"
    else:
        path = absurd_npz(tmp_path / "huge.npz")
        message = r"huge.npz\[arr_0\]: its header claims an array of shape \[10000000000000, 64"
    readers = [
        lambda: next(npz_batch.iter_npz_images(str(path))),  # npz_to_png.py
        lambda: sample_io.load_base_samples(str(path), 64, False, 10),  # super_res_sample.py
        lambda: ImageSource(str(path)),  # the evaluator
    ]
    for read in readers:
        with pytest.raises(ValueError, match=message) as info:
            read()
        assert "allow_pickle" not in str(info.value)
