"""
Every program ends a user error the same way: one line "<program>: error: <message>" on
stderr, exit status 1, no traceback (GUIDED_DIFFUSION_DEBUG=1 shows it), nothing written.
The programs run in this process through their ``__main__`` block (runpy), as from a shell.
"""

import os
import runpy
import sys

import pytest

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
    return info.value.code, capsys.readouterr().err


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
