"""
"User errors end in one line with exit status 1" holds for the command line itself: every
program, run as a user runs it (``python PROGRAM ...`` in a subprocess), answers a flag value
of the wrong type with one line ``<program>: error: ...`` naming the flag and exit status 1,
not argparse's usage text and status 2; an unknown flag the same way (run in this process
through the ``__main__`` block, which is cheaper), with the closest flag as a suggestion. The
subprocesses start together, so that the test costs about one interpreter start per core.
"""

import os
import subprocess
import sys

import pytest
from test_program_errors import run_main_block

from guided_diffusion.script_errors import DEBUG_VAR, ArgumentParser, UsageError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Every program, with a flag of its that takes an integer.
PROGRAMS = {
    "scripts/image_sample.py": "--batch_size",
    "scripts/classifier_sample.py": "--batch_size",
    "scripts/super_res_sample.py": "--batch_size",
    "scripts/image_nll.py": "--batch_size",
    "scripts/image_edit.py": "--batch_size",
    "scripts/ddim_invert.py": "--batch_size",
    "scripts/image_train.py": "--batch_size",
    "scripts/classifier_train.py": "--batch_size",
    "scripts/super_res_train.py": "--batch_size",
    "scripts/npz_to_png.py": "--limit",
    "scripts/benchmark.py": "--batch_size",
    "scripts/benchmark_sampling_memory.py": "--num_samples",
    "scripts/demo.py": "--train_steps",
    "evaluations/evaluator.py": "--batch_size",
    "evaluations/export_extractor.py": "--image_size",
    "evaluations/compare_metrics.py": "--kid_subsets",
    "evaluations/benchmark_metrics.py": "--dim",
    "evaluations/benchmark_inception.py": "--batch_size",
}


def test_every_program_is_listed():
    found = {
        f"{folder}/{name}"
        for folder in ("scripts", "evaluations")
        for name in os.listdir(os.path.join(REPO, folder))
        if name.endswith(".py")
        and 'if __name__ == "__main__"' in open(os.path.join(REPO, folder, name)).read()
    }
    assert found == set(PROGRAMS)


# The arguments some programs require besides their flags.
REQUIRED = {
    "evaluations/evaluator.py": ["a.npz", "b.npz"],
    "scripts/npz_to_png.py": ["a.npz"],
    "evaluations/export_extractor.py": ["--hub", "repo", "model", "--out", "out.pt"],
}


def _positional(program: str) -> list[str]:
    """The arguments a program requires, given before the flag under test."""
    return REQUIRED.get(program, [])


@pytest.fixture(scope="module")
def answers(tmp_path_factory):
    """program -> (exit status, stderr) of ``python PROGRAM FLAG abc``."""
    env = {**os.environ, "PYTHONPATH": REPO, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    env.pop(DEBUG_VAR, None)
    env["OPENAI_LOGDIR"] = str(tmp_path_factory.mktemp("log") / "never_made")
    runs = {
        program: subprocess.Popen(
            [sys.executable, os.path.join(REPO, program), *_positional(program), flag, "abc"],
            env=env, cwd=tmp_path_factory.mktemp("cwd"), stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        for program, flag in PROGRAMS.items()
    }
    result = {}
    for program, proc in runs.items():
        _, err = proc.communicate(timeout=300)
        result[program] = (proc.returncode, err)
    return result


def _check_one_line(status: int, err: str, program: str, *fragments: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    name = os.path.basename(program)
    assert status == 1, err
    assert len(lines) == 1, err
    # the demo calls itself "demo"
    assert lines[0].startswith((f"{name}: error: ", f"{name[:-3]}: error: ")), err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, err)
    return lines[0]


@pytest.mark.parametrize("program", sorted(PROGRAMS))
def test_a_bad_flag_value_is_one_line_and_exit_1(answers, program):
    status, err = answers[program]
    _check_one_line(status, err, program, f"argument {PROGRAMS[program]}: invalid", "'abc'")


@pytest.mark.parametrize("program", sorted(PROGRAMS))
def test_an_unknown_flag_is_one_line_and_exit_1(monkeypatch, capsys, tmp_path, program):
    monkeypatch.delenv(DEBUG_VAR, raising=False)
    monkeypatch.setenv("OPENAI_LOGDIR", str(tmp_path / "never_made"))
    monkeypatch.chdir(tmp_path)
    status, err = run_main_block(
        monkeypatch, capsys, program, *_positional(program), "--batch_sise=2"
    )
    line = _check_one_line(status, err, program, "unrecognized arguments: --batch_sise=2")
    if PROGRAMS[program] == "--batch_size":
        assert "(did you mean --batch_size?)" in line
    assert not (tmp_path / "never_made").exists()


def test_the_parser_raises_a_user_error_and_keeps_help():
    parser = ArgumentParser(prog="p")
    parser.add_argument("--steps", type=int, default=1)
    with pytest.raises(UsageError, match=r"argument --steps: invalid int value: 'x' \(see --help\)"):
        parser.parse_args(["--steps", "x"])
    with pytest.raises(UsageError, match=r"did you mean --steps\?"):
        parser.parse_args(["--stpes", "3"])
    with pytest.raises(SystemExit) as info:
        parser.parse_args(["--help"])
    assert info.value.code == 0
