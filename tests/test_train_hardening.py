"""
Training on bad input or when things go wrong: a diverging run stops at the first
non-finite loss or gradient and saves nothing non-finite, a fresh run never overwrites an
earlier run's checkpoints, a finished run is not "resumed" silently, a full disk is named,
temporary files of killed writes are cleaned up, a damaged optimizer file is named; and the
numbers that match the original (fp16 layers, the learning-rate anneal, lg_loss_scale).
"""

import os
import pickle

import pytest
import torch
import torch.nn as nn
from test_train_util import (
    BATCH,
    _classifier_loop,
    _data,
    _HalfFriendlyNet,
    _loop,
    _model_and_diffusion,
    learning_rates_of,
    one_thread_and_fresh_logger,  # noqa: F401 (autouse fixture)
)

from guided_diffusion import fp16_util, io_util, logger
from guided_diffusion.fp16_util import MixedPrecisionTrainer, NonFiniteLossError
from guided_diffusion.script_errors import describe
from guided_diffusion.flags import check_train_args
from guided_diffusion.train_util import TrainLoop, check_fresh_log_dir


def _poisoned(data, from_step: int):
    """The batches of ``data``, with NaN images from step ``from_step`` on."""
    for step, (batch, cond) in enumerate(data):
        yield (batch * float("nan") if step >= from_step else batch), cond


def _files(folder):
    return {name: (folder / name).read_bytes() for name in sorted(os.listdir(folder))}


# ----------------------------------------------------------------------------- divergence


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_nan_loss_stops_the_run_at_that_step_and_saves_nothing_of_it(tmp_path, precision):
    loop = _loop(tmp_path, max_steps=4, save_interval=1, use_bf16=precision == "bf16")
    loop.data = _poisoned(loop.data, from_step=1)
    with pytest.raises(NonFiniteLossError, match=r"step 1: the loss is nan.*--lr \(now 0.001\)"):
        loop.run_loop()
    assert sorted(os.listdir(tmp_path)) == [
        "ema_0.99_000001.pt",
        "ema_0.9_000001.pt",
        "model000001.pt",
        "opt000001.pt",
    ]
    assert all(torch.isfinite(p).all() for p in loop.model.parameters())


def test_a_huge_learning_rate_stops_instead_of_training_on_nan(tmp_path):
    loop = _loop(tmp_path, max_steps=6, save_interval=1, lr=1e30, lr_anneal_steps=0)
    with pytest.raises(NonFiniteLossError, match="training diverged at step"):
        loop.run_loop()
    for name in os.listdir(tmp_path):
        state = torch.load(tmp_path / name, weights_only=True)
        values = state["state"].values() if name.startswith("opt") else [state]
        for tensors in values:
            assert all(torch.isfinite(v).all() for v in tensors.values() if v.is_floating_point())


def test_non_finite_weights_are_never_saved(tmp_path):
    loop = _loop(tmp_path, max_steps=1, save_interval=10)
    with torch.no_grad():
        loop.mp_trainer.master_params[0].view(-1)[0] = float("inf")
    with pytest.raises(NonFiniteLossError, match="model000000.pt would hold non-finite"):
        loop.save()
    assert os.listdir(tmp_path) == []


def test_the_classifier_trainer_stops_on_a_nan_loss_too(tmp_path):
    loop = _classifier_loop(tmp_path, iterations=3)
    loop.data = _poisoned(loop.data, from_step=1)
    with pytest.raises(NonFiniteLossError, match="step 1: the loss is nan"):
        loop.run_loop()
    assert sorted(os.listdir(tmp_path)) == ["model000001.pt", "opt000001.pt"]


def _fp16_loop(logdir, **kwargs) -> TrainLoop:
    logger.configure(dir=str(logdir), format_strs=[])
    _, diffusion = _model_and_diffusion()
    torch.manual_seed(0)
    return TrainLoop(
        model=_HalfFriendlyNet(),
        diffusion=diffusion,
        data=_poisoned(_data(), from_step=0),
        batch_size=BATCH,
        microbatch=-1,
        lr=1e-3,
        ema_rate="",
        log_interval=1,
        save_interval=100,
        resume_checkpoint="",
        use_fp16=True,
        **kwargs,
    )


def test_fp16_stops_after_a_bounded_run_of_skipped_steps(tmp_path, monkeypatch):
    monkeypatch.setattr(fp16_util, "MAX_SKIPPED_FP16_STEPS", 3)
    loop = _fp16_loop(tmp_path, max_steps=0)  # no limit: would skip forever
    scale = loop.mp_trainer.lg_loss_scale
    expected = "step 2: 3 fp16 steps in a row were skipped.*--use_fp16 False"
    with pytest.raises(NonFiniteLossError, match=expected):
        loop.run_loop()
    assert loop.mp_trainer.lg_loss_scale == scale - 3
    assert os.listdir(tmp_path) == []


def test_lg_loss_scale_is_logged_on_skipped_fp16_steps_too():
    net = nn.Sequential(nn.Conv2d(1, 1, 1))
    trainer = MixedPrecisionTrainer(model=net, use_fp16=True, initial_lg_loss_scale=5.0)
    opt = torch.optim.SGD(trainer.master_params, lr=0.1)
    with logger.scoped_configure(format_strs=[]):
        trainer.zero_grad()
        trainer.backward(net(torch.ones(1, 1, 1, 1).half()).float().sum() * float("inf"))
        assert trainer.optimize(opt) is False
        assert logger.getkvs()["lg_loss_scale"] == 5.0  # the scale the step was tried with


# ----------------------------------------------------------------------------- log folders


def test_a_fresh_run_into_a_folder_with_checkpoints_is_refused(tmp_path):
    _loop(tmp_path, max_steps=2).run_loop()
    before = _files(tmp_path)
    expected = r"already holds checkpoints.*--resume_checkpoint .*model000002\.pt.*OPENAI_LOGDIR"
    with pytest.raises(ValueError, match=expected):
        _loop(tmp_path, max_steps=2)
    assert _files(tmp_path) == before
    check_fresh_log_dir(str(tmp_path / "elsewhere"))  # a new or empty folder is fine


def test_resuming_a_run_that_reached_max_steps_is_an_error(tmp_path):
    _loop(tmp_path, max_steps=2).run_loop()
    with pytest.raises(ValueError, match="at step 2, which already reaches --max_steps 2"):
        _loop(tmp_path, max_steps=2, resume=str(tmp_path / "model000002.pt"))
    with pytest.raises(ValueError, match="already reaches --lr_anneal_steps 2"):
        _loop(tmp_path, max_steps=0, lr_anneal_steps=2, resume=str(tmp_path / "model000002.pt"))


def test_the_classifier_names_iterations_when_nothing_is_left(tmp_path):
    _classifier_loop(tmp_path, iterations=1).run_loop()
    with pytest.raises(ValueError, match="already reaches --iterations 1"):
        _classifier_loop(tmp_path, iterations=1, resume=str(tmp_path / "model000001.pt"))


@pytest.mark.parametrize("lr", [-1e-4, float("nan"), float("inf")])
def test_a_negative_or_non_finite_lr_is_refused_with_the_flags(lr):
    from argparse import Namespace

    with pytest.raises(ValueError, match="--lr must be a finite number >= 0"):
        check_train_args(Namespace(batch_size=2, microbatch=-1, resume_checkpoint="", lr=lr))


# ----------------------------------------------------------------------------- files


def _disk_full(monkeypatch):
    """Make atomic writes fail the way a full disk does (ENOSPC from write())."""
    real_fdopen = os.fdopen

    def full_fdopen(fd, mode="r", buffering=-1, **kwargs):
        os.close(fd)
        return real_fdopen(os.open("/dev/full", os.O_WRONLY), mode, buffering, **kwargs)

    monkeypatch.setattr(io_util.os, "fdopen", full_fdopen)


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_a_full_disk_is_named_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    loop = _loop(tmp_path, max_steps=2)
    loop.run_loop()
    before = _files(tmp_path)
    loop.max_steps = 4
    _disk_full(monkeypatch)
    with pytest.raises(OSError) as info:
        loop.run_loop()
    monkeypatch.undo()
    message = describe(info.value)
    assert message.startswith("no space left on device: ") and message.endswith("000004.pt")
    assert _files(tmp_path) == before  # no temporary files either


def test_temporary_files_of_a_killed_save_are_removed_at_the_next_save(tmp_path):
    loop = _loop(tmp_path, max_steps=1, save_interval=10)
    leftovers = [".model000001.pt.k3j_x9a2.tmp", ".ema_0.9_000001.pt.abcdefgh.tmp"]
    for name in leftovers:
        (tmp_path / name).write_bytes(b"half a checkpoint")
    (tmp_path / ".notes.tmp").write_text("not ours")
    loop.run_loop()
    names = os.listdir(tmp_path)
    assert not set(leftovers) & set(names)
    assert ".notes.tmp" in names and "model000001.pt" in names


class _Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


@pytest.mark.parametrize("damage", ["truncated", "malicious"])
def test_a_damaged_optimizer_file_is_named(tmp_path, damage):
    _loop(tmp_path, max_steps=2).run_loop()
    opt_file = tmp_path / "opt000002.pt"
    if damage == "truncated":
        opt_file.write_bytes(opt_file.read_bytes()[:200])
        message = r"opt000002\.pt is damaged or incomplete"
    else:
        opt_file.write_bytes(pickle.dumps({"state": _Exploit()}))
        message = r"opt000002\.pt (holds Python objects|is not a PyTorch checkpoint)"
    with pytest.raises(ValueError, match=message):
        _loop(tmp_path, max_steps=3, resume=str(tmp_path / "model000002.pt"))


# ----------------------------------------------------------------------------- original numbers


def test_fp16_converts_only_the_convolutions():
    model, _ = _model_and_diffusion(use_fp16=True)
    model.convert_to_fp16()
    kinds = {}
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d)):
            kinds.setdefault(type(module).__name__, set()).add(module.weight.dtype)
    assert kinds["Linear"] == {torch.float32}
    # the input, middle and output blocks' convolutions are float16 (not the final one)
    assert torch.float16 in kinds["Conv2d"] and kinds["Conv1d"] == {torch.float16}
    assert model.input_blocks[1][0].emb_layers[1].weight.dtype == torch.float32


def test_the_classifier_anneals_before_each_step(tmp_path):
    seen = learning_rates_of(_classifier_loop(tmp_path, iterations=4))
    assert seen == pytest.approx([1e-3, 0.75e-3, 0.5e-3, 0.25e-3])
