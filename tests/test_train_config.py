"""
train_config: the training programs check their loop settings once, before anything is
loaded, and hand the checked TrainConfig to the loop, which trains exactly as when it is given
the same settings as keywords (the original TrainLoop API).
"""

import argparse
import os

import pytest
import torch

from guided_diffusion import logger, train_config
from guided_diffusion.flags import classifier_train_defaults, diffusion_train_defaults
from guided_diffusion.script_util import (
    classifier_and_diffusion_defaults,
    create_classifier_and_diffusion,
)
from guided_diffusion.flags import check_train_args
from guided_diffusion.train_util import ClassifierTrainLoop, TrainLoop
from tests.test_train_util import BATCH, TINY_CLASSIFIER, _data, _model_and_diffusion

SETTINGS = dict(
    batch_size=BATCH, microbatch=2, lr=1e-3, ema_rate="0.9", log_interval=1, save_interval=2,
    resume_checkpoint="", weight_decay=0.01, lr_anneal_steps=8, max_steps=2, seed=3,
)  # fmt: skip


@pytest.fixture
def check_calls(monkeypatch) -> list[str]:
    """The calls of the batch check and of the resume check, as they happen."""
    calls = []
    real_batch, real_resume = train_config.check_batch_flags, train_config.check_resume_checkpoint

    def batch(*args):
        calls.append("batch")
        return real_batch(*args)

    def resume(*args):
        calls.append("resume")
        return real_resume(*args)

    monkeypatch.setattr(train_config, "check_batch_flags", batch)
    monkeypatch.setattr(train_config, "check_resume_checkpoint", resume)
    return calls


def _flags(**values) -> argparse.Namespace:
    return argparse.Namespace(**{**diffusion_train_defaults(), **SETTINGS, **values})


def test_a_program_checks_its_settings_once_and_trains_as_with_keywords(tmp_path, check_calls):
    config = check_train_args(_flags())
    assert check_calls == ["batch", "resume"]
    assert (config.micro_size, config.ema_rates, config.resume_step) == (2, [0.9], 0)

    logger.configure(dir=str(tmp_path / "config"), format_strs=[])
    model, diffusion = _model_and_diffusion()
    TrainLoop.from_config(config, model=model, diffusion=diffusion, data=_data()).run_loop()
    assert check_calls == ["batch", "resume"]  # not again in the loop

    logger.configure(dir=str(tmp_path / "keywords"), format_strs=[])
    model, diffusion = _model_and_diffusion()
    TrainLoop(model=model, diffusion=diffusion, data=_data(), **SETTINGS).run_loop()
    assert check_calls == ["batch", "resume"] * 2  # once for the keywords
    runs = ("config", "keywords")
    names = sorted(os.listdir(tmp_path / "config"))
    assert names == sorted(os.listdir(tmp_path / "keywords")) and "model000002.pt" in names
    for name in (name for name in names if name.endswith(".pt") and not name.startswith("opt")):
        a, b = (torch.load(tmp_path / run / name, weights_only=True) for run in runs)
        assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)


@pytest.mark.parametrize(
    "flags, message",
    [
        (dict(microbatch=3), "--batch_size 4 is not divisible by --microbatch 3"),
        (dict(ema_rate="fast"), "--ema_rate must be comma-separated numbers"),
        (dict(save_interval=0), "--save_interval must be a positive integer, got 0"),
        (dict(max_steps=-1), "--max_steps must be 0 \\(off\\) or a positive integer"),
        (dict(seed=-2), "--seed must be a non-negative integer, got -2"),
        (dict(resume_checkpoint="nowhere/model000010.pt"), "--resume_checkpoint 'nowhere"),
    ],
)
def test_every_loop_setting_is_refused_before_the_loop_with_the_loops_message(flags, message):
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        check_train_args(_flags(**flags))
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        train_config.TrainConfig(**{**SETTINGS, **flags})


def test_the_classifier_flags_make_its_settings(tmp_path, check_calls):
    values = {**classifier_train_defaults(), "classifier_use_fp16": False}
    values.update(batch_size=BATCH, iterations=3, anneal_lr=True, lr=1e-3, save_interval=5)
    config = check_train_args(argparse.Namespace(**values), "classifier")
    assert (config.max_steps, config.lr_anneal_steps, config.ema_rates) == (3, 3, [])
    assert config.initial_lg_loss_scale == train_config.CLASSIFIER_LG_LOSS_SCALE
    logger.configure(dir=str(tmp_path), format_strs=[])
    model, diffusion = create_classifier_and_diffusion(
        **{**classifier_and_diffusion_defaults(), **TINY_CLASSIFIER}
    )
    loop = ClassifierTrainLoop(
        model=model, diffusion=diffusion, data=_data(labels=True), config=config
    )
    assert check_calls == ["batch", "resume"] and loop.max_steps == 3
    loop.run_loop()
    assert sorted(os.listdir(tmp_path)) == ["model000003.pt", "opt000003.pt"]
    with pytest.raises(ValueError, match="--iterations must be a positive integer, got 0"):
        check_train_args(argparse.Namespace(**{**values, "iterations": 0}), "classifier")
    with pytest.raises(TypeError, match="not both"):
        ClassifierTrainLoop(model=model, diffusion=diffusion, data=_data(), config=config, lr=1.0)
