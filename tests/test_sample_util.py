"""
In-process tests of guided_diffusion.sample_util and sample_io: flags, label plans, the batch
loop and how it splits work over ranks, classifier guidance, and the .npz / PNG files.
"""

import os
from typing import Optional

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

from guided_diffusion import gaussian_diffusion as gd
from guided_diffusion import bpd, dist_util, flags, guidance, image_seeds, npz_batch
from guided_diffusion import sample_io, sample_util, shards
from guided_diffusion.image_seeds import ImageRandom
from guided_diffusion.respace import SpacedDiffusion, space_timesteps
from guided_diffusion.script_errors import SamplingInputError

STEPS, RESPACING = 20, "5"


def spaced_diffusion(learn_sigma: bool = False) -> SpacedDiffusion:
    return SpacedDiffusion(
        use_timesteps=space_timesteps(STEPS, RESPACING),
        betas=gd.get_named_beta_schedule("cosine", STEPS),
        model_mean_type=gd.ModelMeanType.EPSILON,
        model_var_type=(
            gd.ModelVarType.LEARNED_RANGE if learn_sigma else gd.ModelVarType.FIXED_LARGE
        ),
        loss_type=gd.LossType.MSE,
    )


class ConvEps(nn.Module):
    """A fixed random 3x3 convolution standing in for a UNet; labels shift its output."""

    def __init__(self, out_channels: int = 3):
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.conv = nn.Conv2d(3, out_channels, 3, padding=1)
        with torch.no_grad():
            self.conv.weight.copy_(0.1 * torch.randn(self.conv.weight.shape, generator=generator))
            self.conv.bias.zero_()
        self.seen_labels: list[torch.Tensor] = []

    def forward(self, x, t, y=None):
        out = self.conv(x)
        if y is not None:
            self.seen_labels.append(y.clone())
            out = out + 0.05 * y.float().view(-1, 1, 1, 1)
        return out


class ColourClassifier(nn.Module):
    """logits[k] = gain * mean of colour channel k: class 0 red, 1 green, 2 blue."""

    def __init__(self, gain: float = 4.0):
        super().__init__()
        self.gain = gain
        self.seen_timesteps: list[torch.Tensor] = []

    def forward(self, x, t):
        self.seen_timesteps.append(t.detach().clone())
        return self.gain * x.mean(dim=(2, 3))  # (N, 3)


# ---------------------------------------------------------------- flags


def test_parse_class_labels():
    assert flags.parse_class_labels("", 10) is None
    assert flags.parse_class_labels("3, 1,9", 10) == [3, 1, 9]
    with pytest.raises(ValueError, match=r"--class_labels.*0\.\.9.*\[10\]"):
        flags.parse_class_labels("1,10", 10)
    with pytest.raises(ValueError, match="comma-separated integers"):
        flags.parse_class_labels("cat,dog", 10)


@pytest.mark.parametrize(
    "num_samples, batch_size, flag", [(0, 4, "--num_samples"), (4, -1, "--batch_size")]
)
def test_check_counts_rejects_non_positive(num_samples, batch_size, flag):
    with pytest.raises(ValueError, match=flag):
        flags.check_counts(num_samples, batch_size)


# ---------------------------------------------------------------- conversion and work split


def test_to_uint8_nhwc_inverts_the_data_scaling():
    levels = torch.arange(256, dtype=torch.float32)
    x = (levels / 127.5 - 1).view(1, 1, 16, 16).repeat(1, 3, 1, 1)  # (1, 3, 16, 16)
    x[0, 1] = 2.0  # out of range: clamped
    x[0, 2] = -2.0
    out = sample_io.to_uint8_nhwc(x)
    assert out.dtype == torch.uint8 and out.shape == (1, 16, 16, 3)
    assert torch.equal(out[0, :, :, 0].flatten(), levels.to(torch.uint8))
    assert (out[..., 1] == 255).all() and (out[..., 2] == 0).all()


@pytest.mark.parametrize(
    "num_samples, batch_size, done",
    [(1, 4, []), (5, 2, [(0, 2)]), (10, 3, [(2, 4), (7, 9)]), (8, 4, [(0, 8)]), (7, 16, [(3, 5)])],
)
def test_plan_covers_every_missing_image_once_in_order(num_samples, batch_size, done):
    chunks = shards.plan_chunks(shards.missing_ranges(done, num_samples), batch_size)
    order = [i for start, count in chunks for i in range(start, start + count)]
    finished = {i for start, stop in done for i in range(start, stop)}
    assert order == [i for i in range(num_samples) if i not in finished]
    assert all(0 < count <= batch_size for _, count in chunks)


def test_class_label_kwargs_cycles_or_draws_in_range():
    fixed = sample_util.class_label_kwargs([4, 7], num_classes=10)
    y = fixed(np.arange(3, 8), ImageRandom(0, range(3, 8)))["y"]
    assert y.tolist() == [7, 4, 7, 4, 7] and y.dtype == torch.int64
    random = sample_util.class_label_kwargs(None, num_classes=5)
    a = random(np.arange(200), ImageRandom(1, range(200)))["y"]
    b = random(np.arange(100, 200), ImageRandom(1, range(100, 200)))["y"]
    assert torch.equal(a[100:], b) and a.min() >= 0 and a.max() <= 4 and len(a.unique()) == 5


def test_shared_seed_fresh_unless_given():
    assert image_seeds.shared_seed(5) == 5
    fresh = {image_seeds.shared_seed(None) for _ in range(3)}
    assert len(fresh) == 3 and all(0 <= seed < 2**31 for seed in fresh)


def test_all_gather_rows_alone_returns_the_input():
    x = torch.arange(6).view(3, 2)
    assert torch.equal(dist_util.all_gather_rows(x), x)


# ---------------------------------------------------------------- the batch loop


def sample_images(out_dir, model, diffusion, *, num_samples, batch_size, seed, make_kwargs=None,
                  cond_fn=None, sample_fn=None) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """Draw 8x8 images with ``sample_util.sample_to_npz`` on the CPU; :return: (arr_0, arr_1)."""
    job = sample_util.ImageJob(
        model, sample_fn or diffusion.p_sample_loop, 8, seed,
        make_kwargs or sample_util.no_kwargs, cond_fn=cond_fn, device=torch.device("cpu"),
    )  # fmt: skip
    (path, *_) = sample_util.sample_to_npz(
        job, num_samples=num_samples, batch_size=batch_size, identity={"files": {}},
        out_dir=str(out_dir),
    )  # fmt: skip
    with np.load(path) as npz:
        return npz["arr_0"], (npz["arr_1"] if "arr_1" in npz.files else None)


def test_sample_to_npz_exact_count_labels_and_seed(tmp_path):
    model, diffusion = ConvEps(), spaced_diffusion()
    make = sample_util.class_label_kwargs([2, 0, 1], num_classes=3)
    kwargs = dict(num_samples=5, batch_size=2, make_kwargs=make)
    first, labels = sample_images(tmp_path / "a", model, diffusion, seed=3, **kwargs)
    again, _ = sample_images(tmp_path / "b", model, diffusion, seed=3, **kwargs)
    other, _ = sample_images(tmp_path / "c", model, diffusion, seed=4, **kwargs)
    assert first.shape == (5, 8, 8, 3) and first.dtype == np.uint8
    assert labels.dtype == np.int64 and labels.tolist() == [2, 0, 1, 2, 0]
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)
    assert first.std() > 10  # real noise went through, not a constant image
    # the model saw the saved labels, chunk by chunk (one call per step)
    steps = len(space_timesteps(STEPS, RESPACING))
    seen = [y.tolist() for y in model.seen_labels[: 3 * steps : steps]]
    assert seen == [[2, 0], [1, 2], [0]]


def test_sample_to_npz_without_labels_and_with_ddim(tmp_path):
    diffusion = spaced_diffusion()
    images, labels = sample_images(
        tmp_path, ConvEps(), diffusion, num_samples=3, batch_size=3, seed=0,
        sample_fn=diffusion.ddim_sample_loop,
    )  # fmt: skip
    assert labels is None and images.shape == (3, 8, 8, 3)


def test_classifier_cond_fn_matches_the_analytic_gradient():
    torch.manual_seed(0)
    linear = nn.Linear(3 * 4 * 4, 5)  # log p(y | x) = log softmax(W x + b)[y]
    classifier = lambda x, t: linear(x.flatten(1))  # noqa: E731
    x, y, scale = torch.randn(2, 3, 4, 4), torch.tensor([1, 4]), 2.5
    grad = guidance.classifier_cond_fn(classifier, scale)(x, torch.zeros(2), y=y)
    probs = torch.softmax(linear(x.flatten(1)), dim=-1).detach()  # (2, 5)
    expected = scale * (torch.eye(5)[y] - probs) @ linear.weight.detach()  # d/dx = W^T (e_y - p)
    torch.testing.assert_close(grad, expected.view_as(x), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="labels"):
        guidance.classifier_cond_fn(classifier, scale)(x, torch.zeros(2))


def test_labels_go_only_to_the_classifier_for_an_unconditional_model():
    model = ConvEps()
    x = torch.randn(2, 3, 4, 4)
    out = guidance.labels_to_classifier_only(model)(x, torch.zeros(2), y=torch.tensor([1, 2]))
    assert torch.equal(out, model(x, torch.zeros(2))) and not model.seen_labels


def test_guidance_moves_samples_towards_the_target_class(tmp_path):
    classifier = ColourClassifier()
    diffusion = spaced_diffusion(learn_sigma=True)
    model = guidance.labels_to_classifier_only(ConvEps(out_channels=6))
    kwargs = dict(
        num_samples=6, batch_size=6, seed=11,
        make_kwargs=sample_util.class_label_kwargs([0, 1, 2], num_classes=3),
    )  # fmt: skip
    plain = sample_images(
        tmp_path / "plain", model, diffusion,
        cond_fn=guidance.classifier_cond_fn(classifier, 0.0), **kwargs,
    )  # fmt: skip
    guided = sample_images(
        tmp_path / "guided", model, diffusion,
        cond_fn=guidance.classifier_cond_fn(classifier, 50.0), **kwargs,
    )  # fmt: skip

    def mean_log_prob(result):
        images, labels = result
        x0 = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1  # (N, 3, H, W)
        log_probs = torch.log_softmax(classifier(x0, torch.zeros(len(x0))), dim=-1)
        return log_probs[torch.arange(len(x0)), torch.from_numpy(labels)].mean().item()

    assert np.array_equal(plain[1], guided[1])
    assert not np.array_equal(plain[0], guided[0])
    assert mean_log_prob(guided) > mean_log_prob(plain) + 0.5
    # the classifier saw the original process's timesteps, not the re-spaced indices
    seen = {int(t) for ts in classifier.seen_timesteps for t in ts}
    assert seen == space_timesteps(STEPS, RESPACING)


def test_evaluate_bpd_uses_exactly_num_samples_images(tmp_path):
    diffusion, model = spaced_diffusion(), ConvEps()
    images = torch.sin(torch.arange(5 * 3 * 8 * 8, dtype=torch.float32) * 0.37).view(5, 3, 8, 8)
    read_calls = []

    def read(start, count):
        read_calls.append((start, count))
        return images[start : start + count], {}

    job = bpd.BpdJob(model, diffusion, read, seed=7, device=torch.device("cpu"))
    metrics = bpd.evaluate_bpd_resumable(
        job, num_samples=5, batch_size=2, identity={"files": {}}, out_dir=str(tmp_path)
    )
    assert read_calls == [(0, 2), (2, 2), (4, 1)]
    # the same per-image terms in one batch of five
    whole = diffusion.calc_bpd_loop(model, images, randn=ImageRandom(7, range(5)).randn)
    torch.testing.assert_close(
        float(metrics["total_bpd"]), whole["total_bpd"].mean().item(), rtol=1e-5, atol=0
    )
    assert metrics["vb"].shape == (diffusion.num_timesteps,)
    assert np.isclose(metrics["vb"].sum() + metrics["prior_bpd"], metrics["total_bpd"])


# ---------------------------------------------------------------- files


def test_save_samples_npz_round_trip(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (3, 4, 5, 3), dtype=np.uint8)
    path = str(tmp_path / sample_io.samples_file_name(images))
    assert path.endswith("samples_3x4x5x3.npz")
    sample_io.save_samples_npz(path, images, np.array([1, 2, 3], np.int32))
    with np.load(path) as npz:
        assert sorted(npz.files) == ["arr_0", "arr_1"]
        assert np.array_equal(npz["arr_0"], images) and npz["arr_1"].dtype == np.int64
    assert os.listdir(tmp_path) == [os.path.basename(path)]  # no temporary files left


def test_failed_write_leaves_no_file(tmp_path, monkeypatch):
    def broken_write(f, array, **kwargs):
        f.write(b"\x93NUMPY partial")
        raise OSError("disk full")

    monkeypatch.setattr(np.lib.format, "write_array", broken_write)
    with pytest.raises(OSError, match="disk full"):
        sample_io.save_samples_npz(
            str(tmp_path / "samples_1x2x2x3.npz"), np.zeros((1, 2, 2, 3), np.uint8)
        )
    assert os.listdir(tmp_path) == []


def test_image_grid_places_images_row_by_row(tmp_path):
    images = np.stack(
        [np.full((2, 3, 3), 10 * (i + 1), np.uint8) for i in range(5)]
    )  # (5, 2, 3, 3)
    grid = sample_io.image_grid(images, padding=1)
    assert grid.shape == (2 * 3 + 1, 3 * 4 + 1, 3)  # 5 images -> 3 columns, 2 rows
    assert (
        (grid[1:3, 1:4] == 10).all()
        and (grid[1:3, 9:12] == 30).all()
        and (grid[4:6, 5:8] == 50).all()
    )
    assert (grid[4:6, 9:12] == 0).all() and (grid[0] == 0).all()  # empty cell, border
    sample_io.save_png(str(tmp_path / "g.png"), grid)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "g.png")), grid)


def write_npz(path, **arrays):
    np.savez(path, **arrays)
    return str(path)


def test_load_base_samples_reads_images_and_labels(tmp_path):
    images = np.zeros((4, 8, 8, 3), np.uint8)
    path = write_npz(tmp_path / "b.npz", arr_0=images, arr_1=np.array([0, 1, 2, 1]))
    base = sample_io.load_base_samples(path, small_size=8, need_labels=True, num_classes=3)
    assert len(base) == 4 and base.labels.tolist() == [0, 1, 2, 1]
    assert base.read(1, 2).shape == (2, 8, 8, 3)
    kwargs = sample_util.base_sample_kwargs(base)(np.array([2, 3]), ImageRandom(0, [2, 3]))
    assert kwargs["low_res"].shape == (2, 3, 8, 8) and (kwargs["low_res"] == -1).all()
    assert kwargs["y"].tolist() == [2, 1]


@pytest.mark.parametrize(
    "arrays, message",
    [
        (dict(images=np.zeros((2, 8, 8, 3), np.uint8)), "no arr_0.*'images'"),
        (dict(arr_0=np.zeros((2, 16, 16, 3), np.uint8)), "16x16.*--small_size 8"),
        (dict(arr_0=np.zeros((2, 8, 8, 3), np.float32)), "uint8.*float32"),
        (dict(arr_0=np.zeros((2, 8, 8, 4), np.uint8)), r"\(2, 8, 8, 4\)"),
        (dict(arr_0=np.zeros((2, 8, 8, 3), np.uint8)), "no arr_1"),
        (dict(arr_0=np.zeros((2, 8, 8, 3), np.uint8), arr_1=np.array([0, 9])), r"0\.\.2"),
    ],
)
def test_load_base_samples_rejects_bad_files(tmp_path, arrays, message):
    path = write_npz(tmp_path / "b.npz", **arrays)
    with pytest.raises(ValueError, match=message):
        sample_io.load_base_samples(path, small_size=8, need_labels=True, num_classes=3)


def test_load_base_samples_missing_or_unreadable(tmp_path):
    with pytest.raises(FileNotFoundError, match="--base_samples.*nope.npz"):
        sample_io.load_base_samples(str(tmp_path / "nope.npz"), 8, False, 3)
    (tmp_path / "junk.npz").write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match="not a readable .npz"):
        sample_io.load_base_samples(str(tmp_path / "junk.npz"), 8, False, 3)


def test_read_npz_images_accepts_grey_and_labels(tmp_path):
    grey = write_npz(tmp_path / "g.npz", arr_0=np.zeros((2, 5, 5), np.uint8))
    images, labels = npz_batch.read_npz_images(grey)
    assert images.shape == (2, 5, 5, 1) and labels is None
    labelled = write_npz(
        tmp_path / "l.npz", arr_0=np.zeros((2, 5, 5, 3), np.uint8), arr_1=np.array([3, 4])
    )
    assert npz_batch.read_npz_images(labelled)[1].tolist() == [3, 4]
    with pytest.raises(ValueError, match="no array named 'mu'"):
        npz_batch.read_npz_images(labelled, key="mu")


def test_sample_to_npz_checks_the_folder_before_sampling(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    model = ConvEps()
    job = sample_util.ImageJob(
        model, spaced_diffusion().p_sample_loop, 8, seed=0,
        make_kwargs=sample_util.class_label_kwargs(None, 3), device=torch.device("cpu"),
    )  # fmt: skip
    with pytest.raises(SamplingInputError, match="cannot write the samples beside"):
        sample_util.sample_to_npz(
            job, num_samples=2, batch_size=2, identity={"files": {}},
            out_dir=str(tmp_path / "file" / "out"),
        )  # fmt: skip
    assert not model.seen_labels  # nothing was sampled


def test_sample_to_npz_does_not_depend_on_the_batch_size(tmp_path):
    model, diffusion = ConvEps(), spaced_diffusion()
    make = sample_util.class_label_kwargs(None, num_classes=3)
    kwargs = dict(num_samples=5, seed=4, make_kwargs=make)
    two = sample_images(tmp_path / "two", model, diffusion, batch_size=2, **kwargs)
    three = sample_images(tmp_path / "three", model, diffusion, batch_size=3, **kwargs)
    assert np.array_equal(two[0], three[0])
    assert np.array_equal(two[1], three[1]) and two[1].dtype == np.int64
    assert sorted(os.listdir(tmp_path / "two")) == ["samples_5x8x8x3.npz", "samples_5x8x8x3.png"]
