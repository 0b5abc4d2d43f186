"""
Sampling on bad input: non-finite weights refused at load, non-finite samples never
converted to uint8 (nothing written), a diffusion checkpoint given as --classifier_path
(and the reverse) named as such, image_nll.py asked for more images than its folder holds.
"""

import numpy as np
import pytest
import torch
from PIL import Image

from guided_diffusion import script_util
from guided_diffusion.checkpoint_diagnosis import CheckpointMismatchError, load_checkpoint
from guided_diffusion.sample_io import to_uint8_nhwc
from guided_diffusion.sample_util import ImageJob
from guided_diffusion.script_errors import SamplingInputError

from conftest import TINY_CLASSIFIER_8, TINY_MODEL_8, import_script


def _unet():
    kwargs = {**script_util.model_and_diffusion_defaults(), **TINY_MODEL_8}
    return script_util.create_model_and_diffusion(**kwargs)[0]


def _classifier():
    return script_util.create_classifier(**{**script_util.classifier_defaults(), **TINY_CLASSIFIER_8})


def test_a_checkpoint_with_nan_weights_is_refused_at_load(tmp_path):
    state = _unet().state_dict()
    state["out.2.weight"][0, 0, 0, 0] = float("nan")
    path = tmp_path / "diverged.pt"
    torch.save(state, path)
    expected = r"diverged.pt: 1 of its \d+ tensors hold NaN.*out.2.weight"
    with pytest.raises(ValueError, match=expected):
        load_checkpoint(_unet(), str(path))


def test_a_diffusion_checkpoint_given_as_classifier_is_named(tmp_path):
    path = tmp_path / "model.pt"
    torch.save(_unet().state_dict(), path)
    with pytest.raises(CheckpointMismatchError) as info:
        load_checkpoint(_classifier(), str(path))
    assert info.value.hints == [info.value.hints[0]]
    assert "is a diffusion model" in info.value.hints[0] and "--model_path" in info.value.hints[0]
    path = tmp_path / "classifier.pt"
    torch.save(_classifier().state_dict(), path)
    with pytest.raises(CheckpointMismatchError, match="is a noisy classifier.*--classifier_path"):
        load_checkpoint(_unet(), str(path))


def test_non_finite_samples_are_never_converted_to_pixels():
    sample = torch.zeros(3, 3, 4, 4)
    sample[1, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="1 of 3 samples hold NaN or infinite values"):
        to_uint8_nhwc(sample)
    assert to_uint8_nhwc(torch.zeros(1, 3, 2, 2)).unique().tolist() == [128]

    def diverging_sampler(model, shape, **kwargs):
        return torch.full(shape, float("nan"))

    job = ImageJob(model=None, sample_fn=diverging_sampler, image_size=4, seed=0)
    with pytest.raises(ValueError, match="2 of 2 samples hold NaN"):
        job(0, 2)


def test_image_nll_refuses_more_samples_than_images(tmp_path, monkeypatch):

    data = tmp_path / "data"
    data.mkdir()
    for i in range(3):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(data / f"img_{i}.png")
    monkeypatch.setenv("OPENAI_LOGDIR", str(tmp_path / "log"))
    main = import_script("image_nll").main
    with pytest.raises(SamplingInputError, match="--num_samples 4 is more than the 3 images"):
        main(["--data_dir", str(data), "--num_samples", "4", "--model_path", "m.pt",
              "--image_size", "8"])  # fmt: skip
    assert not (tmp_path / "log").exists()
