"""
Tests of the Frechet distance on other features (evaluations/feature_extractors.py,
evaluations/export_extractor.py and the evaluator's --fd_* flags), with tiny TorchScript
modules made here and a stand-in for the optional timm package.
"""

import os
import sys
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from evaluations import evaluator, export_extractor
from evaluations.batches import cache_paths, compute_activations
from evaluations.evaluator import evaluate, main
from evaluations.feature_extractors import (
    FeatureExtractor,
    load_fd_extractor,
    load_torchscript_extractor,
)
from evaluations.metrics import compute_statistics, frechet_distance
from test_evaluator import (  # noqa: F401  (private_user_cache: an autouse fixture)
    DEFAULT_LINES,
    FLOAT,
    FakeExtractor,
    make_images,
    private_user_cache,
)


class Probe(torch.nn.Module):
    """Reports what it receives: height, width, min, max, the float32 flag, channel means."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        size = torch.tensor([x.shape[2], x.shape[3]], dtype=torch.float32).repeat(n, 1)
        is_float32 = torch.full((n, 1), float(x.dtype == torch.float32))
        extremes = torch.stack([x.amin(dim=(1, 2, 3)), x.amax(dim=(1, 2, 3))], dim=1)
        return torch.cat([size, extremes, is_float32, x.mean(dim=(2, 3))], dim=1)


class TinyFeatures(torch.nn.Module):
    """A small seeded convolutional feature extractor: [n x 3 x S x S] -> [n x 12]."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = torch.nn.Conv2d(3, 12, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.conv(x / 255.0)).mean(dim=(2, 3))


def save_script(module: torch.nn.Module, path) -> str:
    torch.jit.script(module).save(str(path))
    return str(path)


def write_batches(tmp_path):
    ref, sample = str(tmp_path / "ref.npz"), str(tmp_path / "sample.npz")
    np.savez(ref, make_images(12, size=20, seed=31))
    np.savez(sample, make_images(10, size=20, seed=32) // 2)
    return ref, sample


def resized(images: np.ndarray, size: int) -> torch.Tensor:
    """The documented input: float32 NCHW [0, 255], bicubic with antialiasing to size x size, clipped."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=(size, size), mode="bicubic", antialias=True, align_corners=False)
    return x.clamp(0, 255)


# ----------------------------------------------------------------------------------------------
# What a TorchScript extractor receives and returns


def test_a_torchscript_extractor_receives_float32_nchw_0_255_at_fd_image_size(tmp_path):
    images = make_images(5, size=20, seed=33)
    for size, side in ((224, 224), (0, 20), (32, 32)):
        extractor = load_torchscript_extractor(save_script(Probe(), tmp_path / "probe.pt"), size, "cpu")
        feats = compute_activations(extractor, images, batch_size=2)["features"]
        x = resized(images, side) if size else torch.from_numpy(images).permute(0, 3, 1, 2).float()
        assert (feats[:, :2] == side).all() and (feats[:, 4] == 1.0).all()
        np.testing.assert_allclose(feats[:, 2], x.amin(dim=(1, 2, 3)), rtol=1e-6)
        np.testing.assert_allclose(feats[:, 5:], x.mean(dim=(2, 3)), rtol=1e-5)
        assert feats[:, 2].min() == 0.0 and feats[:, 3].max() == 255.0  # noise: clipped overshoot


def test_fd_is_the_frechet_distance_of_the_extractors_features(tmp_path, capsys):
    ref, sample = write_batches(tmp_path)
    path = save_script(TinyFeatures(), tmp_path / "tiny_net.pt")
    main([ref, sample, "--device", "cpu", "--metrics", "fd", "--fd_extractor", path,
          "--fd_image_size", "16"])
    line = capsys.readouterr().out.strip().splitlines()[-1]
    net = TinyFeatures()
    with torch.no_grad():
        feats = [net(resized(np.load(p)["arr_0"], 16)).numpy() for p in (ref, sample)]
    expected = frechet_distance(*compute_statistics(feats[1]), *compute_statistics(feats[0]))
    assert line.startswith("FD_tiny_net: ") and expected > 1e-3
    assert float(line.split(": ")[1]) == pytest.approx(expected, rel=1e-4)


def test_fd_only_never_loads_or_runs_inception(tmp_path, monkeypatch, capsys):
    ref, sample = write_batches(tmp_path)

    def no_inception(*args, **kwargs):
        raise AssertionError("the Inception network must not be loaded for --metrics fd")

    monkeypatch.setattr(evaluator, "_load_extractor", no_inception)
    path = save_script(TinyFeatures(), tmp_path / "net.pt")
    main([ref, sample, "--device", "cpu", "--metrics", "fd", "--fd_extractor", path, "--fd_name", "x"])
    out = capsys.readouterr().out
    assert "Inception" not in out and out.strip().splitlines()[-1].startswith("FD_x: ")


def test_an_extractor_adds_fd_after_the_default_lines(tmp_path, capsys):
    ref, sample = write_batches(tmp_path)
    path = save_script(TinyFeatures(), tmp_path / "dinov2_vitl14.pt")
    inception = FakeExtractor()
    main([ref, sample, "--device", "cpu", "--fd_extractor", path, "--batch_size", "4",
          "--fd_image_size", "16", "--kid_subsets", "10"], extractor=inception)
    lines = capsys.readouterr().out.strip().splitlines()[-10:]
    assert [line.split(": ")[0] + ": " for line in lines[:9]] == DEFAULT_LINES
    assert lines[9].startswith("FD_dinov2_vitl14: ")
    assert inception.calls == 3 + 3  # the FD extractor adds no Inception pass


# ----------------------------------------------------------------------------------------------
# The feature cache


def test_fd_features_are_cached_by_the_extractors_content(tmp_path, monkeypatch):
    ref, sample = write_batches(tmp_path)
    calls = []
    forward = FeatureExtractor.forward

    def counting(self, images):
        calls.append(len(images))
        return forward(self, images)

    monkeypatch.setattr(FeatureExtractor, "forward", counting)
    first_path = save_script(TinyFeatures(seed=0), tmp_path / "a.pt")
    first = evaluate(ref, sample, metrics="fd", fd_extractor=load_torchscript_extractor(first_path, 16, "cpu"))
    assert sum(calls) == 22
    cached = cache_paths(ref, load_torchscript_extractor(first_path, 16, "cpu"))[0]
    assert os.path.basename(cached).startswith("ref.npz.features-") and os.path.exists(cached)
    # the same content under another name: read from the cache
    copy = tmp_path / "copy.pt"
    copy.write_bytes(open(first_path, "rb").read())
    again = evaluate(ref, sample, metrics="fd", fd_extractor=load_torchscript_extractor(str(copy), 16, "cpu"))
    assert sum(calls) == 22 and again["FD_copy"] == first["FD_a"]
    # other weights, or another size: computed anew
    other = save_script(TinyFeatures(seed=1), tmp_path / "b.pt")
    evaluate(ref, sample, metrics="fd", fd_extractor=load_torchscript_extractor(other, 16, "cpu"))
    evaluate(ref, sample, metrics="fd", fd_extractor=load_torchscript_extractor(first_path, 24, "cpu"))
    assert sum(calls) == 22 * 3
    assert len([name for name in os.listdir(tmp_path) if name.startswith("ref.npz.features-")]) == 3


# ----------------------------------------------------------------------------------------------
# Bad extractors: one line, exit status 1


class WrongShape(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3), keepdim=True)  # [n x 3 x 1 x 1]


class OneRow(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(0, 2)) # [3 x W]: not one row per image


class Pair(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x.mean(dim=(2, 3)), x.amax(dim=(2, 3))


class NotFinite(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = x.mean(dim=(2, 3))
        return feats / (feats - feats)  # 0 / 0


class EightPixelsOnly(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], 3 * 8 * 8)


class IntegerFeatures(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3)).long()


def _junk(path):
    path.write_bytes(b"not a TorchScript archive")
    return str(path)


def _state_dict(path):
    torch.save(TinyFeatures().state_dict(), str(path))
    return str(path)


@pytest.mark.parametrize(
    "make, message",
    [
        (_junk, r"junk.pt: not a TorchScript file \(PytorchStreamReader failed.*\); save the network"),
        (_state_dict, r"junk.pt: not a TorchScript file"),
        (lambda p: str(p.parent / "missing.pt"), r"missing.pt: no such TorchScript extractor file"),
        (lambda p: save_script(WrongShape(), p), r"junk.pt: returned features of shape \(4, 3, 1, 1\) for 4 images, expected \(4, D\)"),
        (lambda p: save_script(OneRow(), p), r"junk.pt: returned features of shape \(3, 16\) for 4 images"),
        (lambda p: save_script(Pair(), p), r"junk.pt: returned tuple, expected a float tensor \[n x D\]"),
        (lambda p: save_script(IntegerFeatures(), p), r"junk.pt: returned a torch.int64 tensor"),
        (lambda p: save_script(NotFinite(), p), r"junk.pt: returned NaN or infinite features"),
        (lambda p: save_script(EightPixelsOnly(), p), r"junk.pt: failed on 4 images of 16x16 \(.*\); see --fd_image_size"),
    ],
)
def test_a_bad_extractor_is_one_line_naming_it(tmp_path, make, message):
    ref, sample = write_batches(tmp_path)
    path = make(tmp_path / "junk.pt")
    with pytest.raises(SystemExit) as info:
        main([ref, sample, "--device", "cpu", "--metrics", "fd", "--fd_extractor", path,
              "--fd_image_size", "16", "--batch_size", "4"])
    text = str(info.value.code)
    assert text.startswith("evaluator.py: error: ") and "\n" not in text
    assert __import__("re").search(message, text), text


def test_bad_fd_names_and_flag_combinations(tmp_path):
    path = save_script(TinyFeatures(), tmp_path / "net.pt")
    with pytest.raises(ValueError, match=r"--fd_name 'a: b': use letters"):
        load_fd_extractor(path, name="a: b")
    with pytest.raises(ValueError, match="not both"):
        load_fd_extractor(path, timm_model="resnet50", weights=path)
    with pytest.raises(ValueError, match="--fd_image_size must be 0"):
        load_fd_extractor(path, image_size=-1)
    ref, sample = write_batches(tmp_path)
    with pytest.raises(SystemExit, match="a feature extractor is given but --metrics leaves out fd"):
        main([ref, sample, "--metrics", "fid", "--fd_extractor", path], extractor=FakeExtractor())
    assert load_fd_extractor() is None
    # a file name that is not a valid metric name is made one
    odd = tmp_path / "dino v2 (L).pt"
    odd.write_bytes(open(path, "rb").read())
    assert load_fd_extractor(str(odd), device="cpu").name == "dino_v2__L_"


# ----------------------------------------------------------------------------------------------
# timm (optional)


def test_timm_missing_is_one_line_saying_it_is_optional(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm raises ImportError
    ref, sample = write_batches(tmp_path)
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"weights")
    with pytest.raises(SystemExit) as info:
        main([ref, sample, "--metrics", "fd", "--fd_timm_model", "vit_large_patch14_dinov2.lvd142m",
              "--fd_weights", str(weights)])
    text = str(info.value.code)
    assert "\n" not in text and "needs the timm package, an optional dependency" in text
    assert "pip install timm" in text and "--fd_extractor" in text


def fake_timm(created: list) -> types.ModuleType:
    """A stand-in for timm: create_model returns a network whose features are channel means."""

    class ChannelMeans(torch.nn.Module):
        def forward(self, x):
            return x.mean(dim=(2, 3))

    def create_model(name, pretrained=False, pretrained_cfg_overlay=None, num_classes=None):
        created.append((name, pretrained, pretrained_cfg_overlay, num_classes))
        return ChannelMeans()

    timm = types.ModuleType("timm")
    timm.create_model = create_model
    timm.data = types.ModuleType("timm.data")
    timm.data.resolve_model_data_config = lambda model: {
        "input_size": (3, 518, 518), "mean": (0.5, 0.4, 0.3), "std": (0.2, 0.25, 0.5)
    }
    return timm


def test_a_timm_model_loads_the_local_weights_and_gets_normalised_images(tmp_path, monkeypatch, capsys):
    created = []
    timm = fake_timm(created)
    monkeypatch.setitem(sys.modules, "timm", timm)
    monkeypatch.setitem(sys.modules, "timm.data", timm.data)
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"weights")
    extractor = load_fd_extractor(timm_model="vit_large_patch14_dinov2.lvd142m", weights=str(weights),
                                  image_size=16, device="cpu")
    assert created == [("vit_large_patch14_dinov2.lvd142m", True, {"file": str(weights)}, 0)]
    assert extractor.name == "vit_large_patch14_dinov2.lvd142m"
    images = make_images(3, size=20, seed=34)
    feats = compute_activations(extractor, images)["features"]
    mean, std = torch.tensor([0.5, 0.4, 0.3]), torch.tensor([0.2, 0.25, 0.5])
    expected = ((resized(images, 16) / 255 - mean[:, None, None]) / std[:, None, None]).mean(dim=(2, 3))
    np.testing.assert_allclose(feats, expected.numpy(), rtol=1e-5, atol=1e-6)
    # the weights file's content is part of the cache key
    ref, _ = write_batches(tmp_path)
    key = cache_paths(ref, extractor)
    weights.write_bytes(b"other weights")
    other = load_fd_extractor(timm_model="vit_large_patch14_dinov2.lvd142m", weights=str(weights),
                              image_size=16, device="cpu")
    assert cache_paths(ref, other) != key


# ----------------------------------------------------------------------------------------------
# export_extractor.py: the README's way to make the DINOv2 file


def test_export_writes_a_file_the_evaluator_reads_as_the_normalised_network(tmp_path):
    net = TinyFeatures(seed=2)
    out = str(tmp_path / "tiny.pt")
    error = export_extractor.export_extractor(net, out, image_size=24)
    assert error < 1e-6 and sorted(os.listdir(tmp_path)) == ["tiny.pt"]
    images = make_images(4, size=20, seed=35)
    feats = compute_activations(load_torchscript_extractor(out, 24, "cpu"), images)["features"]
    mean = torch.tensor(export_extractor.IMAGENET_MEAN)[:, None, None]
    std = torch.tensor(export_extractor.IMAGENET_STD)[:, None, None]
    with torch.no_grad():
        expected = net((resized(images, 24) / 255 - mean) / std)
    np.testing.assert_allclose(feats, expected.numpy(), rtol=1e-5, atol=1e-6)


def test_export_refuses_a_network_that_tracing_cannot_record(tmp_path):
    class Branchy(torch.nn.Module):
        def forward(self, x):
            # a data-dependent branch: traced once, wrong for other inputs (with seed 0, the
            # first pixel of the tracing batch is below the middle, the checking batch's above)
            if x[0, 0, 0, 0] > 0:
                return x.mean(dim=(2, 3))
            return -x.mean(dim=(2, 3))

    out = tmp_path / "branchy.pt"
    with pytest.raises(ValueError, match="differs from the eager one"):
        export_extractor.export_extractor(Branchy(), str(out), image_size=8, mean=(0.5,) * 3, std=(1,) * 3)
    assert not out.exists() and os.listdir(tmp_path) == []


def test_export_program_from_torch_hub(tmp_path, monkeypatch, capsys):
    loaded = []

    def hub_load(repo, model):
        loaded.append((repo, model))
        return TinyFeatures(seed=3)

    monkeypatch.setattr(torch.hub, "load", hub_load)
    out = str(tmp_path / "dinov2_vitl14.pt")
    monkeypatch.setattr(sys, "argv", ["export_extractor.py", "--hub", "facebookresearch/dinov2",
                                      "dinov2_vitl14", "--out", out, "--image_size", "28"])
    export_extractor.main()
    assert loaded == [("facebookresearch/dinov2", "dinov2_vitl14")]
    assert f"wrote {out} (traced at 28x28" in capsys.readouterr().out
    assert load_torchscript_extractor(out, 28, "cpu").name == "dinov2_vitl14"


def test_json_records_fd_and_the_extractors_hash(tmp_path, capsys):
    import hashlib
    import json

    ref, sample = write_batches(tmp_path)
    path = save_script(TinyFeatures(), tmp_path / "net.pt")
    out = str(tmp_path / "r.json")
    main([ref, sample, "--device", "cpu", "--metrics", "fid,fd", "--fd_extractor", path,
          "--fd_image_size", "16", "--json", out], extractor=FakeExtractor())
    printed = capsys.readouterr().out.strip().splitlines()
    with open(out) as f:
        record = json.load(f)
    assert list(record["metrics"]) == ["fid", "FD_net"]
    assert printed[-1] == f"wrote {out}" and printed[-2] == f"FD_net: {record['metrics']['FD_net']}"
    with open(path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    assert record["settings"]["fd"] == {
        "name": "FD_net", "extractor": path, "extractor_id": f"torchscript:{digest}:size=16",
        "image_size": 16,
    }
