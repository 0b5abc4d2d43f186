"""
The three training scripts: a few steps each on a tiny folder of images (as subprocesses,
the way users run them), resuming from the command line, and bad input: a clear error and
nothing already saved touched.
"""

import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from guided_diffusion import dist_util, logger

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIFFUSION_FLAGS = ["--diffusion_steps", "10", "--noise_schedule", "cosine"]
MODEL_FLAGS = [
    "--image_size",
    "8",
    "--num_channels",
    "32",
    "--num_res_blocks",
    "1",
    "--channel_mult",
    "1,2",
    "--attention_resolutions",
    "4",
    *DIFFUSION_FLAGS,
]
LAUNCH_VARS = (
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "MASTER_ADDR",
    "MASTER_PORT",
    "PMI_RANK",
    "PMI_SIZE",
    "OMPI_COMM_WORLD_RANK",
    "OMPI_COMM_WORLD_SIZE",
    "PMIX_RANK",
)


def _write_images(folder, names, seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name in names:
        Image.fromarray(rng.integers(0, 256, size=(12, 10, 3), dtype=np.uint8)).save(folder / name)
    return folder


@pytest.fixture
def images(tmp_path):
    """Six images of three classes (cat, dog, owl)."""
    names = [f"{c}_{i}.png" for i in range(2) for c in ("cat", "dog", "owl")]
    return _write_images(tmp_path / "images", names)


def _run_script(script, args, log_dir):
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    env.update(
        OPENAI_LOGDIR=str(log_dir),
        OMP_NUM_THREADS="1",
        CUDA_VISIBLE_DEVICES="",
        PYTHONPATH=REPO + os.pathsep + env.get("PYTHONPATH", ""),
    )
    return subprocess.run(
        [sys.executable, os.path.join(REPO, "scripts", script), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


def _snapshot(folder):
    return {name: (folder / name).read_bytes() for name in sorted(os.listdir(folder))}


def _load_script(name):
    """Import scripts/<name>.py as a module (to call its main() in this process)."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "scripts", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ----------------------------------------------------------------------------- smoke runs


def test_image_train_runs(images, tmp_path):
    log_dir = tmp_path / "log"
    proc = _run_script(
        "image_train.py",
        [
            "--data_dir",
            str(images),
            *MODEL_FLAGS,
            "--class_cond",
            "True",
            "--num_classes",
            "3",
            "--learn_sigma",
            "True",
            "--batch_size",
            "2",
            "--microbatch",
            "1",
            "--max_steps",
            "2",
            "--log_interval",
            "1",
            "--use_bf16",
            "True",
        ],
        log_dir,
    )
    assert proc.returncode == 0, proc.stderr
    assert sorted(os.listdir(log_dir)) == [
        "ema_0.9999_000002.json",
        "ema_0.9999_000002.pt",
        "log.txt",
        "model000002.json",
        "model000002.pt",
        "opt000002.pt",
        "progress.csv",
    ]
    assert "loss_q" in (log_dir / "progress.csv").read_text()
    state = torch.load(log_dir / "model000002.pt", weights_only=True)
    assert state["label_emb.weight"].shape == (3, 128)


def test_classifier_train_runs_with_validation(images, tmp_path):
    log_dir = tmp_path / "log"
    val = _write_images(tmp_path / "val", ["cat_9.png", "dog_9.png", "owl_9.png"], seed=1)
    proc = _run_script(
        "classifier_train.py",
        [
            "--data_dir",
            str(images),
            "--val_data_dir",
            str(val),
            "--image_size",
            "8",
            "--classifier_width",
            "32",
            "--classifier_depth",
            "1",
            "--classifier_channel_mult",
            "1,2",
            "--classifier_attention_resolutions",
            "4",
            "--num_classes",
            "3",
            *DIFFUSION_FLAGS,
            "--batch_size",
            "2",
            "--iterations",
            "2",
            "--eval_interval",
            "1",
            "--log_interval",
            "1",
            "--anneal_lr",
            "True",
            "--use_bf16",
            "True",
        ],
        log_dir,
    )
    assert proc.returncode == 0, proc.stderr
    assert sorted(os.listdir(log_dir)) == [
        "log.txt",
        "model000002.json",
        "model000002.pt",
        "opt000002.pt",
        "progress.csv",
    ]
    header = (log_dir / "progress.csv").read_text().splitlines()[0].split(",")
    for key in ("train_loss", "train_acc@1", "train_acc@5", "val_loss", "val_acc@1", "grad_norm"):
        assert key in header, key


def test_super_res_train_runs(tmp_path):
    names = [f"img{i}.png" for i in range(2)]
    data = _write_images(tmp_path / "big", names)
    log_dir = tmp_path / "log"
    proc = _run_script(
        "super_res_train.py",
        [
            "--data_dir",
            str(data),
            "--large_size",
            "32",
            "--small_size",
            "8",
            "--num_channels",
            "32",
            "--num_res_blocks",
            "1",
            "--attention_resolutions",
            "4",
            *DIFFUSION_FLAGS,
            "--batch_size",
            "2",
            "--max_steps",
            "1",
        ],
        log_dir,
    )
    assert proc.returncode == 0, proc.stderr
    assert "model000001.pt" in os.listdir(log_dir)


def test_low_res_inputs_are_area_averages():
    module = _load_script("super_res_train")
    big = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    batch, kwargs = next(module._add_low_res(iter([(big, {})]), 2))
    assert batch is big
    # each low-res pixel is the mean of a 2x2 block
    assert torch.equal(kwargs["low_res"][0, 0], torch.tensor([[2.5, 4.5], [10.5, 12.5]]))


# ----------------------------------------------------------------------------- in-process runs


@pytest.fixture
def in_process(tmp_path, monkeypatch):
    """Run scripts' main() here (cheaper than a subprocess); returns the log dir."""
    for name in LAUNCH_VARS:
        monkeypatch.delenv(name, raising=False)
    log_dir = tmp_path / "log"
    monkeypatch.setenv("OPENAI_LOGDIR", str(log_dir))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield log_dir
    torch.set_num_threads(threads)
    logger.reset()
    dist_util.cleanup()


def _image_train(data_dir, *extra):
    _load_script("image_train").main(
        [
            "--data_dir",
            str(data_dir),
            *MODEL_FLAGS,
            "--batch_size",
            "2",
            "--save_interval",
            "2",
            *extra,
        ]
    )


def test_resume_from_the_command_line(images, in_process):
    _image_train(images, "--max_steps", "2")
    before = _snapshot(in_process)
    _image_train(
        images, "--max_steps", "3", "--resume_checkpoint", str(in_process / "model000002.pt")
    )
    after = _snapshot(in_process)
    assert {k: v for k, v in after.items() if k.endswith("000002.pt")} == {
        k: v for k, v in before.items() if k.endswith("000002.pt")
    }
    assert {"model000003.pt", "opt000003.pt", "ema_0.9999_000003.pt"} <= set(after)
    # Rerunning the same command finds nothing left to do and writes nothing.
    _image_train(
        images, "--max_steps", "3", "--resume_checkpoint", str(in_process / "model000002.pt")
    )
    assert {k: v for k, v in _snapshot(in_process).items() if k.endswith(".pt")} == {
        k: v for k, v in after.items() if k.endswith(".pt")
    }


@pytest.fixture
def saved_run(images, in_process):
    """A log dir holding a finished run's checkpoints; returns (log dir, its snapshot)."""
    _image_train(images, "--max_steps", "2")
    return in_process, _snapshot(in_process)


@pytest.mark.parametrize(
    "case, error, message",
    [
        ("empty_dir", ValueError, "no images in data directory"),
        ("missing_dir", FileNotFoundError, "data directory not found"),
        ("not_divisible", ValueError, "--batch_size 2 is not divisible by --microbatch 3"),
        (
            "missing_resume",
            FileNotFoundError,
            "--resume_checkpoint .*model000099.pt.* does not exist",
        ),
        ("no_class_names", ValueError, "class_cond needs the class in each file name"),
        ("too_few_classes", ValueError, "holds 3 classes .* but --num_classes is 2"),
        ("corrupt_image", ValueError, "cannot read image file .*broken.png"),
    ],
)
def test_bad_input_fails_clearly_and_keeps_saved_checkpoints(
    case, error, message, images, saved_run, tmp_path
):
    log_dir, before = saved_run
    data, extra = images, []
    if case == "empty_dir":
        data = tmp_path / "empty"
        data.mkdir()
    elif case == "missing_dir":
        data = tmp_path / "nowhere"
    elif case == "not_divisible":
        extra = ["--microbatch", "3"]
    elif case == "missing_resume":
        extra = ["--resume_checkpoint", str(log_dir / "model000099.pt"), "--max_steps", "100"]
    elif case == "no_class_names":
        data = _write_images(tmp_path / "plain", ["a.png", "b.png"])
        extra = ["--class_cond", "True"]
    elif case == "too_few_classes":
        extra = ["--class_cond", "True", "--num_classes", "2"]
    elif case == "corrupt_image":
        data = _write_images(tmp_path / "corrupt", ["a.png"])
        (data / "broken.png").write_bytes(b"not a png")
        resume = ["--resume_checkpoint", str(log_dir / "model000002.pt")]
        extra = ["--batch_size", "2", "--max_steps", "4", "--save_interval", "1", *resume]
    with pytest.raises(error, match=message):
        _image_train(data, *extra)
    assert {k: v for k, v in _snapshot(log_dir).items() if k.endswith(".pt")} == {
        k: v for k, v in before.items() if k.endswith(".pt")
    }


def test_classifier_needs_matching_validation_classes(images, in_process, tmp_path):
    val = _write_images(tmp_path / "val", ["cat_9.png", "dog_9.png"])
    with pytest.raises(ValueError, match="--val_data_dir .* same classes"):
        _load_script("classifier_train").main(
            ["--data_dir", str(images), "--val_data_dir", str(val), "--num_classes", "3"]
        )


def test_a_bad_flag_exits_non_zero_with_the_message(tmp_path):
    proc = _run_script(
        "image_train.py", ["--data_dir", str(tmp_path / "nowhere"), *MODEL_FLAGS], tmp_path / "log"
    )
    assert proc.returncode != 0
    assert "data directory not found" in proc.stderr and "--data_dir" in proc.stderr


def test_classifier_names_a_missing_validation_folder(images, in_process, tmp_path):
    with pytest.raises(FileNotFoundError, match="--val_data_dir .*nowhere"):
        _load_script("classifier_train").main(
            ["--data_dir", str(images), "--val_data_dir", str(tmp_path / "nowhere")]
        )


@pytest.mark.parametrize("damage", ["junk", "code", "not_an_optimizer"])
def test_a_damaged_optimizer_file_is_named_on_resume(damage, saved_run):
    log_dir, _ = saved_run
    opt = log_dir / "opt000002.pt"
    if damage == "junk":
        opt.write_bytes(b"\x00not a checkpoint")
        message = "opt000002.pt is not a PyTorch checkpoint"
    elif damage == "code":
        torch.save({"state": {}, "param_groups": [], "x": _RunsCode()}, opt)
        message = "opt000002.pt holds Python objects other than tensors"
    else:
        torch.save({"weight": torch.zeros(2)}, opt)
        message = "opt000002.pt is not an optimizer state"
    with pytest.raises(ValueError, match=message):
        _image_train(log_dir.parent / "images", "--max_steps", "3",
                     "--resume_checkpoint", str(log_dir / "model000002.pt"))  # fmt: skip


class _RunsCode:
    def __reduce__(self):
        return (os.getcwd, ())
