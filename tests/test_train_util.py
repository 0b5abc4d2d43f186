"""
train_util: resuming gives exactly the uninterrupted run, checkpoints are atomic, bad
arguments fail before anything is touched, microbatches add up to the batch gradient, EMA,
learning-rate anneal, loss logging, and the classifier loop on the same pieces.
"""

import itertools
import os

import numpy as np
import pytest
import torch
import torch.nn as nn

from guided_diffusion import logger
from guided_diffusion.resample import LossSecondMomentResampler
from guided_diffusion.script_util import (
    classifier_and_diffusion_defaults,
    create_classifier_and_diffusion,
    create_model_and_diffusion,
    model_and_diffusion_defaults,
)
from guided_diffusion.flags import check_train_args
from guided_diffusion.train_config import check_batch_flags, parse_ema_rate
from guided_diffusion.train_util import (
    ClassifierTrainLoop,
    TrainLoop,
    compute_top_k,
    find_ema_checkpoint,
    log_loss_dict,
    parse_resume_step_from_filename,
)

from conftest import TINY_CLASSIFIER_8, TINY_MODEL_8

# A UNet of ~0.76M parameters: 8x8 images, two resolutions, attention at 4x4; learned
# variances (so "vb" is logged) and dropout (so the per-step seeding matters).
TINY_MODEL = dict(
    **TINY_MODEL_8,
    diffusion_steps=10,
    noise_schedule="cosine",
    learn_sigma=True,
    dropout=0.1,
)
TINY_CLASSIFIER = dict(
    **TINY_CLASSIFIER_8,
    classifier_pool="adaptive",
    num_classes=3,
    diffusion_steps=10,
    noise_schedule="cosine",
)
BATCH = 4
NUM_BATCHES = 3


def _model_and_diffusion(init_seed: int = 0, **overrides):
    kwargs = model_and_diffusion_defaults()
    kwargs.update(TINY_MODEL, **overrides)
    torch.manual_seed(init_seed)
    return create_model_and_diffusion(**kwargs)


def _batches() -> list[torch.Tensor]:
    """Deterministic, distinct [BATCH x 3 x 8 x 8] batches in [-1, 1]."""
    base = torch.linspace(-1, 1, 3 * 8 * 8).reshape(1, 3, 8, 8)
    return [
        torch.cat([torch.roll(base, shifts=5 * i + j, dims=-1) for j in range(BATCH)])
        for i in range(NUM_BATCHES)
    ]


def _data(start: int = 0, labels: bool = False):
    """Batch ``step % NUM_BATCHES`` at every step, starting at step ``start``."""
    batches = _batches()
    for step in itertools.count(start):
        cond = {"y": torch.tensor([0, 1, 2, 1]) + 0 * step} if labels else {}
        yield batches[step % NUM_BATCHES], cond


def _loop(logdir, *, max_steps, resume="", init_seed=0, **overrides) -> TrainLoop:
    logger.configure(dir=str(logdir), format_strs=[])
    model, diffusion = _model_and_diffusion(init_seed)
    start = parse_resume_step_from_filename(resume) if resume else 0
    kwargs = dict(
        model=model,
        diffusion=diffusion,
        data=_data(start),
        batch_size=BATCH,
        microbatch=2,
        lr=1e-3,
        ema_rate="0.9,0.99",
        log_interval=1,
        save_interval=2,
        resume_checkpoint=resume,
        weight_decay=0.01,
        lr_anneal_steps=8,
        max_steps=max_steps,
        seed=3,
    )
    kwargs.update(overrides)
    return TrainLoop(**kwargs)


def _load(path):
    return torch.load(path, weights_only=True)


def _assert_same(a, b, where=""):
    """Exact equality of nested state dicts / lists / tensors."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert list(a) == list(b), where
        for k in a:
            _assert_same(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


@pytest.fixture(autouse=True)
def one_thread_and_fresh_logger():
    # One thread: with other processes on the same cores, several threads per process
    # make these small models ten times slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    logger.reset()


def test_resume_gives_the_uninterrupted_run_exactly(tmp_path):
    straight = _loop(tmp_path / "straight", max_steps=4)
    straight.run_loop()

    first = _loop(tmp_path / "split", max_steps=2)
    first.run_loop()
    # A model initialised differently: everything must come from the files.
    resumed = _loop(
        tmp_path / "split",
        max_steps=4,
        init_seed=1,
        resume=str(tmp_path / "split" / "model000002.pt"),
    )
    assert resumed.step == 2
    resumed.run_loop()
    assert resumed.step == 4

    for name in [
        "model000002.pt",
        "model000004.pt",
        "opt000004.pt",
        "ema_0.9_000004.pt",
        "ema_0.99_000004.pt",
    ]:
        _assert_same(_load(tmp_path / "straight" / name), _load(tmp_path / "split" / name), name)
    _assert_same(straight.model.state_dict(), resumed.model.state_dict(), "live model")
    _assert_same(straight.ema_params, resumed.ema_params, "live EMA")
    _assert_same(straight.opt.state_dict(), resumed.opt.state_dict(), "live optimizer")
    # The run did something: steps 3 and 4 moved the weights.
    before, after = _load(tmp_path / "split" / "model000002.pt"), _load(
        tmp_path / "split" / "model000004.pt"
    )
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert int(_load(tmp_path / "split" / "opt000004.pt")["state"][0]["step"]) == 4


def test_another_seed_draws_other_noise(tmp_path):
    # The reseeding is what makes resume exact: other seeds give other weights.
    a = _loop(tmp_path / "a", max_steps=1, save_interval=10)
    b = _loop(tmp_path / "b", max_steps=1, save_interval=10, seed=4)
    a.run_loop()
    b.run_loop()
    assert any(not torch.equal(x, y) for x, y in zip(a.model.parameters(), b.model.parameters()))


def test_checkpoint_files_and_state_dict_layout(tmp_path):
    loop = _loop(tmp_path, max_steps=3)
    loop.run_loop()
    assert sorted(os.listdir(tmp_path)) == sorted(
        [
            f"{kind}{step:06d}.pt"
            for kind in ("model", "opt", "ema_0.9_", "ema_0.99_")
            for step in (2, 3)
        ]
    )
    reference, _ = _model_and_diffusion()
    for name in ("model000003.pt", "ema_0.99_000003.pt"):
        state = _load(tmp_path / name)
        assert list(state) == list(reference.state_dict())
        assert all(state[k].shape == v.shape for k, v in reference.state_dict().items())


def _crash_during_torch_save(monkeypatch):
    real_save = torch.save

    def broken_save(obj, f, *args, **kwargs):
        f.write(b"partial checkpoint bytes")
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(torch, "save", broken_save)
    return real_save


def test_a_crash_while_saving_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    loop = _loop(tmp_path, max_steps=2)
    loop.run_loop()
    saved = {name: (tmp_path / name).read_bytes() for name in os.listdir(tmp_path)}

    loop.max_steps = 4
    _crash_during_torch_save(monkeypatch)
    with pytest.raises(OSError, match="disk full"):
        loop.run_loop()  # step 3 is taken, the save at step 4 crashes
    with pytest.raises(OSError, match="disk full"):
        loop.step = 2
        loop.save()  # overwriting the existing step-2 files crashes too
    monkeypatch.undo()

    assert {name: (tmp_path / name).read_bytes() for name in os.listdir(tmp_path)} == saved
    # ...and what is there still resumes.
    _loop(tmp_path, max_steps=3, resume=str(tmp_path / "model000002.pt"))


def test_a_missing_resume_checkpoint_fails_before_anything_is_touched(tmp_path):
    loop = _loop(tmp_path, max_steps=2)
    loop.run_loop()
    saved = {name: (tmp_path / name).read_bytes() for name in os.listdir(tmp_path)}
    missing = str(tmp_path / "model000010.pt")
    with pytest.raises(FileNotFoundError, match="--resume_checkpoint.*model000010.pt"):
        _loop(tmp_path, max_steps=12, resume=missing)
    assert {name: (tmp_path / name).read_bytes() for name in os.listdir(tmp_path)} == saved


def test_bad_batch_and_ema_flags_are_named():
    with pytest.raises(ValueError, match="--batch_size 6 is not divisible by --microbatch 4"):
        check_batch_flags(6, 4)
    assert (
        check_batch_flags(6, -1) == 6
        and check_batch_flags(6, 0) == 6
        and check_batch_flags(6, 3) == 3
    )
    with pytest.raises(ValueError, match="--batch_size"):
        check_batch_flags(0, -1)
    with pytest.raises(ValueError, match="--ema_rate"):
        parse_ema_rate("0.99,fast")
    with pytest.raises(ValueError, match="--ema_rate"):
        parse_ema_rate("1.5")
    assert parse_ema_rate("0.9999,0.999") == [0.9999, 0.999]
    assert parse_ema_rate(0.5) == [0.5] and parse_ema_rate("") == []


def test_trainloop_rejects_bad_microbatch(tmp_path):
    with pytest.raises(ValueError, match="--batch_size 4 is not divisible by --microbatch 3"):
        _loop(tmp_path, max_steps=1, microbatch=3)
    assert os.listdir(tmp_path) == []


class _DeterministicDiffusion:
    """A stand-in with the training_losses API whose loss involves no random numbers."""

    num_timesteps = 10

    def training_losses(self, model, x_start, t, model_kwargs=None, noise=None):
        out = model(x_start, t)[:, :3]
        loss = (out - x_start).pow(2).mean(dim=(1, 2, 3))
        return {"loss": loss, "mse": loss}


class _FixedSampler(LossSecondMomentResampler):
    """Timesteps 0, 1, 2, ... with unit weights (and still loss-aware)."""

    def sample(self, batch_size, device):
        return torch.arange(batch_size) % 10, torch.ones(batch_size)


def test_microbatches_accumulate_the_full_batch_gradient(tmp_path):
    grads = {}
    for microbatch in (-1, 2, 1):
        logger.configure(dir=str(tmp_path), format_strs=[])
        model, _ = _model_and_diffusion(dropout=0.0)
        diffusion = _DeterministicDiffusion()
        sampler = _FixedSampler(diffusion)
        loop = TrainLoop(
            model=model,
            diffusion=diffusion,
            data=_data(),
            batch_size=BATCH,
            microbatch=microbatch,
            lr=1e-3,
            ema_rate="",
            log_interval=1,
            save_interval=100,
            resume_checkpoint="",
            schedule_sampler=sampler,
        )
        batch, cond = next(loop.data)
        loop.forward_backward(batch, cond)
        grads[microbatch] = [p.grad.clone() for p in loop.mp_trainer.master_params]
        assert sampler._loss_counts.sum() == BATCH  # every microbatch updated the sampler
    for microbatch in (2, 1):
        for full, micro in zip(grads[-1], grads[microbatch]):
            torch.testing.assert_close(micro, full, rtol=1e-5, atol=1e-7)


def test_ema_follows_the_formula(tmp_path):
    loop = _loop(tmp_path, max_steps=1, save_interval=10, ema_rate="0.75")
    before = [p.detach().clone() for p in loop.mp_trainer.master_params]
    loop.run_loop()
    for ema, w0, w1 in zip(loop.ema_params[0], before, loop.mp_trainer.master_params):
        torch.testing.assert_close(ema, 0.75 * w0 + 0.25 * w1, rtol=0, atol=1e-7)
        assert not ema.requires_grad  # no autograd graph kept alive by the EMA


def learning_rates_of(loop) -> list[float]:
    """Run ``loop`` and return the learning rate of every optimizer step it took."""
    seen = []
    real_step = loop.opt.step
    loop.opt.step = lambda *a, **k: (
        seen.append(loop.opt.param_groups[0]["lr"]),
        real_step(*a, **k),
    )[1]
    loop.run_loop()
    return seen


def test_learning_rate_anneals_linearly_and_stops(tmp_path):
    loop = _loop(tmp_path, max_steps=0, lr_anneal_steps=4, save_interval=10)
    seen = learning_rates_of(loop)
    assert loop.step == 4
    # as the original's TrainLoop, which annealed after each step: step s (from 0) uses
    # lr * (1 - (s - 1) / N), the first two the full lr
    assert seen == pytest.approx([1e-3, 1e-3, 0.75e-3, 0.5e-3])
    assert sorted(os.listdir(tmp_path))[-1] == "opt000004.pt"  # the end is saved


def test_a_step_logs_losses_quartiles_norms_and_counts(tmp_path):
    loop = _loop(tmp_path, max_steps=1, save_interval=10)
    batch, cond = next(loop.data)
    loop.run_step(batch, cond)
    row = logger.getkvs()
    for key in ("loss", "mse", "vb", "grad_norm", "param_norm", "step", "samples"):
        assert key in row, key
    assert any(k.startswith("loss_q") for k in row)
    assert row["step"] == 0 and row["samples"] == BATCH
    assert row["grad_norm"] > 0 and np.isfinite(row["loss"])


def test_log_loss_dict_quartiles():
    class FakeDiffusion:
        num_timesteps = 8

    logger.configure(format_strs=[])
    ts = torch.tensor([0, 1, 2, 5, 7])
    log_loss_dict(FakeDiffusion(), ts, {"loss": torch.tensor([1.0, 3.0, 4.0, 6.0, 8.0])})
    row = logger.getkvs()
    assert row["loss"] == pytest.approx(22.0 / 5)
    # quartile = 4 t // T: t=0,1 -> q0; t=2 -> q1; t=5 -> q2; t=7 -> q3
    assert row["loss_q0"] == pytest.approx(2.0) and row["loss_q1"] == pytest.approx(4.0)
    assert row["loss_q2"] == pytest.approx(6.0) and row["loss_q3"] == pytest.approx(8.0)


def test_filename_helpers(tmp_path):
    assert parse_resume_step_from_filename("runs/a/model012345.pt") == 12345
    assert parse_resume_step_from_filename("model000000.pt") == 0
    assert parse_resume_step_from_filename("256x256_diffusion.pt") == 0
    assert parse_resume_step_from_filename("models/ema_0.9999_000100.pt") == 0
    (tmp_path / "ema_0.9999_000100.pt").write_bytes(b"")
    main = str(tmp_path / "model000100.pt")
    assert find_ema_checkpoint(main, 100, 0.9999) == str(tmp_path / "ema_0.9999_000100.pt")
    assert find_ema_checkpoint(main, 100, 0.999) is None
    assert find_ema_checkpoint(None, 100, 0.9999) is None


def test_compute_top_k():
    logits = torch.tensor([[0.1, 0.5, 0.4], [0.9, 0.05, 0.05]])
    labels = torch.tensor([2, 0])
    assert compute_top_k(logits, labels, k=1).item() == pytest.approx(0.5)
    assert compute_top_k(logits, labels, k=2, reduction="none").tolist() == [1.0, 1.0]
    assert compute_top_k(logits, labels, k=5).item() == 1.0  # k capped at 3 classes


def _classifier_loop(logdir, *, iterations, resume="", init_seed=0) -> ClassifierTrainLoop:
    logger.configure(dir=str(logdir), format_strs=[])
    kwargs = classifier_and_diffusion_defaults()
    kwargs.update(TINY_CLASSIFIER)
    torch.manual_seed(init_seed)
    model, diffusion = create_classifier_and_diffusion(**kwargs)
    start = parse_resume_step_from_filename(resume) if resume else 0
    return ClassifierTrainLoop(
        model=model,
        diffusion=diffusion,
        data=_data(start, labels=True),
        val_data=_data(start + 1, labels=True),
        eval_interval=1,
        iterations=iterations,
        anneal_lr=True,
        batch_size=BATCH,
        microbatch=2,
        lr=1e-3,
        log_interval=1,
        save_interval=1,
        resume_checkpoint=resume,
        seed=5,
    )


def test_classifier_loop_logs_validation_and_resumes_exactly(tmp_path):
    straight = _classifier_loop(tmp_path / "straight", iterations=2)
    straight.run_loop()
    assert sorted(os.listdir(tmp_path / "straight")) == [
        "model000001.pt",
        "model000002.pt",
        "opt000001.pt",
        "opt000002.pt",
    ]

    _classifier_loop(tmp_path / "split", iterations=1).run_loop()
    resumed = _classifier_loop(
        tmp_path / "split",
        iterations=2,
        init_seed=1,
        resume=str(tmp_path / "split" / "model000001.pt"),
    )
    resumed.run_loop()
    for name in ("model000002.pt", "opt000002.pt"):
        _assert_same(_load(tmp_path / "straight" / name), _load(tmp_path / "split" / name), name)

    batch, cond = next(resumed.data)
    resumed.run_step(batch, cond)
    row = logger.getkvs()
    for key in ("train_loss", "train_acc@1", "train_acc@5", "val_loss", "val_acc@1", "val_acc@5"):
        assert key in row, key
    assert any(k.startswith("train_loss_q") for k in row) and 0 <= row["train_acc@1"] <= 1


class _HalfFriendlyNet(nn.Module):
    """A stand-in for the UNet in float16 tests (CPU float16 convolutions are slow)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.emb = nn.Embedding(10, 6)

    def forward(self, x, t, **kwargs):
        h = self.conv(x.to(self.conv.weight.dtype)).float()
        # small outputs keep the float16 gradients of the 2**20-scaled loss finite
        return 1e-3 * (h + self.emb(t)[:, :, None, None])


def test_fp16_resume_restores_master_weights_and_loss_scale(tmp_path):
    _, diffusion = _model_and_diffusion()

    def loop(logdir, max_steps, resume=""):
        logger.configure(dir=str(logdir), format_strs=[])
        torch.manual_seed(0)
        start = parse_resume_step_from_filename(resume) if resume else 0
        return TrainLoop(
            model=_HalfFriendlyNet(),
            diffusion=diffusion,
            data=_data(start),
            batch_size=BATCH,
            microbatch=-1,
            lr=1e-2,
            ema_rate="0.9",
            log_interval=1,
            save_interval=1,
            resume_checkpoint=resume,
            use_fp16=True,
            fp16_scale_growth=0.5,
            max_steps=max_steps,
            seed=0,
        )

    straight = loop(tmp_path / "straight", 2)
    straight.run_loop()
    first = loop(tmp_path / "split", 1)
    first.run_loop()
    assert first.mp_trainer.lg_loss_scale == 20.5  # one good step
    resumed = loop(tmp_path / "split", 2, resume=str(tmp_path / "split" / "model000001.pt"))
    assert resumed.mp_trainer.lg_loss_scale == 20.5  # from opt000001.pt
    resumed.run_loop()
    assert straight.mp_trainer.lg_loss_scale == resumed.mp_trainer.lg_loss_scale == 21.0
    _assert_same(straight.mp_trainer.master_params, resumed.mp_trainer.master_params, "masters")
    for name in ("model000002.pt", "opt000002.pt", "ema_0.9_000002.pt"):
        _assert_same(_load(tmp_path / "straight" / name), _load(tmp_path / "split" / name), name)
    assert _load(tmp_path / "split" / "model000002.pt")["conv.weight"].dtype == torch.float32


def test_bf16_trainloop_runs_the_model_in_bfloat16(tmp_path):
    loop = _loop(tmp_path, max_steps=1, save_interval=10, use_bf16=True)
    dtypes = []
    loop.model.out.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    before = [p.detach().clone() for p in loop.model.parameters()]
    loop.run_loop()
    assert dtypes and all(d == torch.bfloat16 for d in dtypes)
    assert all(p.dtype == torch.float32 for p in loop.model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, loop.model.parameters()))
    assert _load(tmp_path / "model000001.pt")["out.2.weight"].dtype == torch.float32


def test_resuming_into_a_model_of_other_flags_names_the_difference(tmp_path):
    _loop(tmp_path, max_steps=2).run_loop()
    saved = {name: (tmp_path / name).read_bytes() for name in os.listdir(tmp_path)}
    logger.configure(dir=str(tmp_path), format_strs=[])
    model, diffusion = _model_and_diffusion(learn_sigma=False)
    with pytest.raises(ValueError, match="does not fit(.|\n)*--learn_sigma True"):
        TrainLoop(
            model=model,
            diffusion=diffusion,
            data=_data(2),
            batch_size=BATCH,
            microbatch=-1,
            lr=1e-3,
            ema_rate="0.9",
            log_interval=1,
            save_interval=1,
            resume_checkpoint=str(tmp_path / "model000002.pt"),
            max_steps=3,
        )
    assert {name: (tmp_path / name).read_bytes() for name in os.listdir(tmp_path)} == saved


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_reduced_precision_training_on_cuda(tmp_path, precision):
    logger.configure(dir=str(tmp_path), format_strs=[])
    model, diffusion = _model_and_diffusion(use_fp16=precision == "fp16")
    model.to("cuda")
    loop = TrainLoop(
        model=model,
        diffusion=diffusion,
        data=_data(),
        batch_size=BATCH,
        microbatch=2,
        lr=1e-3,
        ema_rate="0.9",
        log_interval=1,
        save_interval=2,
        resume_checkpoint="",
        use_fp16=precision == "fp16",
        use_bf16=precision == "bf16",
        max_steps=2,
        seed=0,
    )
    loop.run_loop()
    state = _load(tmp_path / "model000002.pt")
    assert all(v.dtype == torch.float32 for v in state.values())
    assert loop.mp_trainer.master_params[0].dtype == torch.float32
    if precision == "fp16":
        assert loop.model.input_blocks[0][0].weight.dtype == torch.float16
        assert 19.0 <= loop.mp_trainer.lg_loss_scale <= 20.002
    resumed = TrainLoop(
        model=_model_and_diffusion(use_fp16=precision == "fp16")[0].to("cuda"),
        diffusion=diffusion,
        data=_data(2),
        batch_size=BATCH,
        microbatch=2,
        lr=1e-3,
        ema_rate="0.9",
        log_interval=1,
        save_interval=2,
        resume_checkpoint=str(tmp_path / "model000002.pt"),
        use_fp16=precision == "fp16",
        use_bf16=precision == "bf16",
        max_steps=3,
    )
    _assert_same(loop.mp_trainer.master_params, resumed.mp_trainer.master_params, "masters")


def test_a_resumed_run_reads_the_batches_an_uninterrupted_run_reads(tmp_path):
    """
    The data stream is a function of the seed and the batch number: a run resumed at step 2
    (``start_batch=2``, as the training programs start it) reads the batches that steps 2
    and 3 of an uninterrupted run read, across an epoch boundary (16 images, 2 epochs of 4
    batches of 4), crops and flips included.
    """
    from PIL import Image

    from guided_diffusion.image_datasets import load_data

    data_dir = tmp_path / "data"
    data_dir.mkdir()
    for i in range(16):
        Image.new("RGB", (8, 10), (10 * i, 5 * i, 0)).save(data_dir / f"img_{i:02d}.png")

    def batches(count, start_batch=0, workers=0):
        data = load_data(data_dir=str(data_dir), batch_size=4, image_size=8, num_workers=workers,
                         seed=5, start_batch=start_batch, random_crop=True)  # fmt: skip
        return [next(data)[0] for _ in range(count)]

    straight = batches(7)
    for start in (3, 4, 6):  # in an epoch, at its start, in the next one
        resumed = batches(7 - start, start_batch=start, workers=1)
        assert all(torch.equal(a, b) for a, b in zip(straight[start:], resumed)), start
    assert not torch.equal(straight[0], straight[4])  # a new order in the second epoch
    other = load_data(data_dir=str(data_dir), batch_size=4, image_size=8, num_workers=0, seed=6)
    assert not torch.equal(next(other)[0], straight[0])


@pytest.mark.parametrize("fp16_flag", ["use_fp16", "classifier_use_fp16"])
def test_fp16_and_bf16_together_are_refused(fp16_flag):
    import argparse

    args = argparse.Namespace(batch_size=4, microbatch=-1, resume_checkpoint="", use_bf16=True)
    check_train_args(args)  # bf16 alone is fine
    setattr(args, fp16_flag, True)
    with pytest.raises(ValueError, match=f"--{fp16_flag} and --use_bf16"):
        check_train_args(args)
