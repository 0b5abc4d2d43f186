"""
Every program ends a user error the same way: one line "<program>: error: <message>" on
stderr, exit status 1, no traceback (GUIDED_DIFFUSION_DEBUG=1 shows it), nothing written.
The programs run in this process through their ``__main__`` block (runpy), as from a shell.
"""

import os
import runpy
import sys

import numpy as np
import pytest
import torch
from test_data_hardening import absurd_npz

from guided_diffusion import dist_util, logger
from guided_diffusion.script_errors import DEBUG_VAR, describe, run_program

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_main_block(monkeypatch, capsys, path: str, *argv: str) -> tuple[int, str]:
    """
    Run ``path`` (relative to the repository) as ``__main__`` with ``argv``.

    :return: (exit status, stderr).
    """
    monkeypatch.setattr(sys, "argv", [os.path.basename(path), *argv])
    try:
        with pytest.raises(SystemExit) as info:
            runpy.run_path(os.path.join(REPO, path), run_name="__main__")
    finally:
        logger.reset()
        dist_util.cleanup()
    code, err = info.value.code, capsys.readouterr().err
    if isinstance(code, str):  # what the interpreter does with SystemExit("message")
        code, err = 1, err + code + "\n"
    return code, err


def assert_one_line_error(status: int, err: str, program: str, *fragments: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert status == 1, err
    assert "Traceback" not in err, err
    assert lines and lines[-1].startswith(f"{program}: error: "), err
    for fragment in fragments:
        assert fragment in lines[-1], (fragment, err)


@pytest.fixture
def log_dir(tmp_path, monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "PMI_RANK", "PMI_SIZE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv(DEBUG_VAR, raising=False)
    path = tmp_path / "log"
    monkeypatch.setenv("OPENAI_LOGDIR", str(path))
    return path


@pytest.mark.parametrize(
    "program, flags, fragment",
    [
        ("image_train.py", ["--lr", "-0.001"], "--lr must be a finite number >= 0"),
        ("image_train.py", ["--batch_size", "0"], "--batch_size must be a positive integer"),
        ("classifier_train.py", ["--lr", "-1"], "--lr must be"),
        ("classifier_train.py", ["--batch_size", "-2"], "--batch_size must be a positive"),
        ("super_res_train.py", ["--lr", "nan"], "--lr must be"),
    ],
)
def test_training_programs_end_bad_flags_with_one_line_before_making_a_folder(
    monkeypatch, capsys, tmp_path, log_dir, program, flags, fragment
):
    data = tmp_path / "images"
    data.mkdir()
    status, err = run_main_block(
        monkeypatch, capsys, f"scripts/{program}", "--data_dir", str(data), *flags
    )
    assert_one_line_error(status, err, program, fragment)
    assert not log_dir.exists()


def test_debug_variable_shows_the_traceback(monkeypatch, log_dir):
    monkeypatch.setenv(DEBUG_VAR, "1")
    monkeypatch.setattr(sys, "argv", ["image_train.py", "--lr", "-1"])
    with pytest.raises(ValueError, match="--lr must be"):
        runpy.run_path(os.path.join(REPO, "scripts/image_train.py"), run_name="__main__")


def test_internal_errors_keep_their_traceback():
    def broken():
        raise KeyError("a bug")

    with pytest.raises(KeyError):
        run_program(broken)


def test_os_errors_name_the_file():
    err = OSError(28, "No space left on device", "/runs/model000004.pt")
    assert describe(err) == "no space left on device: /runs/model000004.pt"


# ----------------------------------------------------------------------------- other programs


def test_npz_to_png_names_an_absurd_header(monkeypatch, capsys, tmp_path, log_dir):
    path = absurd_npz(tmp_path / "huge.npz", side=8)
    status, err = run_main_block(
        monkeypatch, capsys, "scripts/npz_to_png.py", path, "--out_dir", str(tmp_path / "png")
    )
    assert_one_line_error(status, err, "npz_to_png.py", "header claims an array of shape")
    assert not (tmp_path / "png").exists()


@pytest.mark.parametrize("bad", ["missing", "text", "empty"])
def test_npz_to_png_creates_nothing_on_bad_input(monkeypatch, capsys, tmp_path, log_dir, bad):
    path = tmp_path / "batch.npz"
    if bad == "text":
        path.write_text("not a batch\n")
    elif bad == "empty":
        np.savez(path, np.zeros((0, 8, 8, 3), np.uint8))
    status, err = run_main_block(monkeypatch, capsys, "scripts/npz_to_png.py", str(path))
    assert_one_line_error(status, err, "npz_to_png.py", "batch.npz")
    assert sorted(os.listdir(tmp_path)) == (["batch.npz"] if bad != "missing" else [])


def test_super_res_sample_names_an_absurd_header(monkeypatch, capsys, tmp_path, log_dir):
    path = absurd_npz(tmp_path / "huge.npz", side=8)
    status, err = run_main_block(
        monkeypatch, capsys, "scripts/super_res_sample.py", "--base_samples", path,
        "--small_size", "8", "--large_size", "32", "--model_path", str(tmp_path / "m.pt"),
    )  # fmt: skip
    assert_one_line_error(status, err, "super_res_sample.py", "header claims an array of shape")
    assert not log_dir.exists()


def test_the_evaluator_names_a_text_file_without_numpy_advice(monkeypatch, capsys, tmp_path):
    path = tmp_path / "notes.npz"
    path.write_text("not a batch\n")
    status, err = run_main_block(
        monkeypatch, capsys, "evaluations/evaluator.py", str(path), str(path), "--device", "cpu"
    )
    assert_one_line_error(status, err, "evaluator.py", "notes.npz: not an .npz file")
    assert "allow_pickle" not in err


def test_a_nan_guidance_scale_is_refused_at_parse_time(monkeypatch, capsys, tmp_path, log_dir):
    status, err = run_main_block(
        monkeypatch, capsys, "scripts/classifier_sample.py", "--classifier_scale", "nan",
        "--model_path", str(tmp_path / "m.pt"), "--classifier_path", str(tmp_path / "c.pt"),
    )  # fmt: skip
    expected = "--classifier_scale must be a finite"
    assert_one_line_error(status, err, "classifier_sample.py", expected)
    assert not log_dir.exists()


def test_an_unwritable_output_folder_fails_before_sampling(monkeypatch, capsys, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    monkeypatch.setenv("OPENAI_LOGDIR", str(blocker / "samples"))
    status, err = run_main_block(
        monkeypatch, capsys, "scripts/image_sample.py", "--model_path", str(tmp_path / "m.pt")
    )
    assert_one_line_error(status, err, "image_sample.py", str(blocker))
    assert "loading" not in err


def test_a_truncated_checkpoint_is_one_line_naming_it(monkeypatch, capsys, tmp_path, log_dir):
    path = tmp_path / "model.pt"
    torch.save({"weight": torch.zeros(1000)}, path)
    path.write_bytes(path.read_bytes()[:1000])
    status, err = run_main_block(
        monkeypatch, capsys, "scripts/image_sample.py", "--model_path", str(path)
    )
    assert_one_line_error(status, err, "image_sample.py", f"{path} is damaged or incomplete")
    assert "miniz" not in err and len(err.strip().splitlines()[-1]) < 250
