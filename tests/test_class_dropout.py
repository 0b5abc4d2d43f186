"""
Label dropout for classifier-free guidance (--class_dropout_prob): the null-class row exists
only when the probability is above 0, the default model is the original one, and training
replaces labels by the null class at the requested rate, reproducibly.
"""

import itertools

import pytest
import torch

from guided_diffusion import logger
from guided_diffusion import script_util as su
from guided_diffusion.train_util import TrainLoop

from conftest import TINY_MODEL_8

NUM_CLASSES = 5
TINY = dict(
    **TINY_MODEL_8,
    num_head_channels=32,
    class_cond=True,
    num_classes=NUM_CLASSES,
    diffusion_steps=10,
    noise_schedule="cosine",
)


def tiny(seed: int = 0, **overrides):
    torch.manual_seed(seed)
    flags = {**su.model_and_diffusion_defaults(), **TINY, **overrides}
    return su.create_model_and_diffusion(**flags)


def shapes(model) -> dict:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def test_null_row_only_when_labels_are_dropped():
    plain, _ = tiny()
    with_null, _ = tiny(class_dropout_prob=0.1)
    assert plain.label_emb.weight.shape == (NUM_CLASSES, 128) and plain.null_label is None
    assert with_null.label_emb.weight.shape == (NUM_CLASSES + 1, 128)
    assert with_null.null_label == NUM_CLASSES
    # the extra row is the only difference in the layout
    expected = {**shapes(plain), "label_emb.weight": (NUM_CLASSES + 1, 128)}
    assert shapes(with_null) == expected
    # the upsampler takes the flag as well
    sr = {**su.sr_model_and_diffusion_defaults(), **TINY, "large_size": 32, "small_size": 16}
    del sr["image_size"], sr["channel_mult"]
    sr["attention_resolutions"] = "16"
    sr_model, _ = su.sr_create_model_and_diffusion(**{**sr, "class_dropout_prob": 0.2})
    assert sr_model.label_emb.weight.shape[0] == NUM_CLASSES + 1


def test_zero_dropout_is_the_original_model():
    # what code written against the original builds: no class_dropout_prob at all
    flags = {**su.model_and_diffusion_defaults(), **TINY}
    del flags["class_dropout_prob"]
    torch.manual_seed(0)
    original, _ = su.create_model_and_diffusion(**flags)
    model, _ = tiny(class_dropout_prob=0.0)
    assert list(model.state_dict()) == list(original.state_dict())
    for key, value in original.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    # a training-mode forward draws no random numbers: training runs are unchanged too
    model.train()
    state = torch.get_rng_state()
    model(torch.zeros(2, 3, 8, 8), torch.tensor([1, 2]), y=torch.tensor([0, 4]))
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize(
    "overrides,match",
    [
        (dict(class_cond=False, class_dropout_prob=0.1), "--class_dropout_prob 0.1 needs"),
        (dict(class_dropout_prob=1.0), r"--class_dropout_prob 1.0: expected a probability"),
        (dict(class_dropout_prob=-0.1), r"--class_dropout_prob -0.1"),
    ],
)
def test_bad_dropout_is_rejected(overrides, match):
    with pytest.raises(ValueError, match=match):
        tiny(**overrides)


def test_labels_are_dropped_at_the_rate_in_training_mode_only():
    model, _ = tiny(class_dropout_prob=0.3)
    y = torch.randint(0, NUM_CLASSES, (20000,))
    model.train()
    dropped = model._drop_labels(y)
    is_null = dropped == NUM_CLASSES
    assert abs(is_null.float().mean().item() - 0.3) < 0.02  # std ~0.003
    assert torch.equal(dropped[~is_null], y[~is_null])  # the others are kept
    model.eval()
    assert torch.equal(model._drop_labels(y), y)


def _labels_seen_in_training(logdir, seed: int, steps: int = 4) -> torch.Tensor:
    """The labels that reach the label embedding during ``steps`` TrainLoop steps."""
    logger.configure(dir=str(logdir), format_strs=[])
    model, diffusion = tiny(class_dropout_prob=0.5)
    seen = []
    model.label_emb.register_forward_pre_hook(lambda _, args: seen.append(args[0].clone()))
    labels = torch.arange(16) % NUM_CLASSES
    data = ((torch.zeros(16, 3, 8, 8), {"y": labels}) for _ in itertools.count())
    TrainLoop(
        model=model,
        diffusion=diffusion,
        data=data,
        batch_size=16,
        microbatch=-1,
        lr=1e-4,
        ema_rate="0.9",
        log_interval=100,
        save_interval=100,
        resume_checkpoint="",
        max_steps=steps,
        seed=seed,
    ).run_loop()
    logger.reset()
    seen = torch.stack(seen)
    kept = seen != NUM_CLASSES
    assert torch.equal(seen[kept], labels.expand_as(seen)[kept])
    return seen


def test_training_drops_labels_reproducibly(tmp_path):
    torch.set_num_threads(1)
    first = _labels_seen_in_training(tmp_path / "a", seed=1)
    rate = (first == NUM_CLASSES).float().mean().item()
    assert 0.3 < rate < 0.7, rate  # 64 labels at 0.5: std 0.06
    assert not torch.equal(first[0], first[1])  # each step draws its own
    assert torch.equal(_labels_seen_in_training(tmp_path / "b", seed=1), first)
    assert not torch.equal(_labels_seen_in_training(tmp_path / "c", seed=2), first)
