"""
logger: directory choice, the output formats, running means (also over ranks), levels,
scoped configuration and rank-0-only files. (Two real ranks: tests/test_dist_util.py.)
"""

import csv
import json
import os
import re
import sys
import tempfile

import pytest
import torch

from guided_diffusion import dist_util, logger


@pytest.fixture(autouse=True)
def fresh_logger(monkeypatch):
    for name in ("OPENAI_LOGDIR", "OPENAI_LOG_FORMAT", "OPENAI_LOG_FORMAT_MPI"):
        monkeypatch.delenv(name, raising=False)
    logger.reset()
    yield
    logger.reset()


def _read_csv(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


def test_configure_writes_stdout_log_and_csv(tmp_path, capsys):
    logger.configure(dir=str(tmp_path))
    assert f"Logging to {tmp_path}" in capsys.readouterr().out
    logger.logkv("step", 3)
    logger.logkv("lr", 0.5)
    row = logger.dumpkvs()
    assert row == {"step": 3, "lr": 0.5}
    out = capsys.readouterr().out
    assert re.search(r"\| lr\s+\| 0\.5\s+\|", out) and re.search(r"\| step\s+\| 3\s+\|", out)
    assert sorted(os.listdir(tmp_path)) == ["log.txt", "progress.csv"]
    log_text = (tmp_path / "log.txt").read_text()
    assert f"Logging to {tmp_path}" in log_text and "| step" in log_text
    assert _read_csv(tmp_path / "progress.csv") == [["lr", "step"], ["0.5", "3"]]


def test_dir_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_LOGDIR", str(tmp_path / "run"))
    logger.configure(format_strs=["log"])
    assert logger.get_dir() == str(tmp_path / "run")
    assert os.path.isfile(tmp_path / "run" / "log.txt")


def test_default_dir_is_new_and_timestamped(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    logger.configure(format_strs=["csv"])
    first = logger.get_dir()
    assert os.path.dirname(first) == str(tmp_path)
    assert re.fullmatch(r"openai-\d{4}-\d\d-\d\d-\d\d-\d\d-\d\d-\d{6}", os.path.basename(first))
    assert os.path.isfile(os.path.join(first, "progress.csv"))
    logger.configure(format_strs=["csv"])
    assert logger.get_dir() != first


def test_logkv_mean_is_a_running_mean(tmp_path):
    logger.configure(dir=str(tmp_path), format_strs=[])
    for value in [1.0, 2.0, 6.0]:
        logger.logkv_mean("loss", value)
    logger.logkv_mean("norm", torch.tensor(4.0))
    assert logger.getkvs()["loss"] == pytest.approx(3.0)
    logger.logkv("loss", 10.0)  # a plain value replaces the mean
    logger.logkv_mean("loss", 20.0)  # and a new mean starts from it
    assert logger.dumpkvs() == {"loss": pytest.approx(20.0), "norm": pytest.approx(4.0)}
    assert logger.getkvs() == {}
    assert logger.dumpkvs() == {}


def test_csv_grows_columns_for_new_keys(tmp_path):
    logger.configure(dir=str(tmp_path), format_strs=["csv"])
    logger.logkvs({"a": 1, "b": 2})
    logger.dumpkvs()
    logger.logkvs({"a": 3, "c": 4.25})
    logger.dumpkvs()
    logger.logkv("b", 5)
    logger.dumpkvs()
    assert _read_csv(tmp_path / "progress.csv") == [
        ["a", "b", "c"], ["1", "2", ""], ["3", "", "4.25"], ["", "5", ""],
    ]


def test_resumed_run_continues_the_files(tmp_path):
    logger.configure(dir=str(tmp_path), format_strs=["csv", "log"])
    logger.logkvs({"step": 1, "loss": 0.5})
    logger.dumpkvs()
    logger.reset()
    logger.configure(dir=str(tmp_path), format_strs=["csv", "log"])
    logger.logkvs({"step": 2, "loss": 0.25})
    logger.dumpkvs()
    logger.logkvs({"step": 3, "loss": 0.125, "grad_norm": 2})
    logger.dumpkvs()
    assert _read_csv(tmp_path / "progress.csv") == [
        ["loss", "step", "grad_norm"], ["0.5", "1", ""], ["0.25", "2", ""], ["0.125", "3", "2"],
    ]
    assert (tmp_path / "log.txt").read_text().count(f"Logging to {tmp_path}") == 2


def test_json_lines(tmp_path):
    logger.configure(dir=str(tmp_path), format_strs=["json"])
    logger.logkv("step", 1)
    logger.logkv_mean("loss", torch.tensor(0.25))
    logger.dumpkvs()
    logger.record_tabular("step", 2)  # the old aliases
    logger.dump_tabular()
    lines = (tmp_path / "progress.json").read_text().splitlines()
    assert [json.loads(line) for line in lines] == [{"loss": 0.25, "step": 1}, {"step": 2}]


def test_levels(tmp_path):
    logger.configure(dir=str(tmp_path), format_strs=["log"])
    logger.debug("hidden debug")
    logger.info("shown info")
    logger.set_level(logger.WARN)
    logger.info("hidden info")
    logger.warn("shown warning")
    logger.error("shown error", 42)
    logger.set_level(logger.DEBUG)
    logger.debug("shown debug")
    text = (tmp_path / "log.txt").read_text()
    assert "hidden" not in text
    for line in ["shown info", "shown warning", "shown error 42", "shown debug"]:
        assert line in text.splitlines()


def test_scoped_configure_restores_previous(tmp_path):
    logger.configure(dir=str(tmp_path / "outer"), format_strs=["log"])
    logger.logkv("outer_key", 1)
    with logger.scoped_configure(dir=str(tmp_path / "inner"), format_strs=["log"]):
        assert logger.get_dir() == str(tmp_path / "inner")
        logger.log("inside")
    assert logger.get_dir() == str(tmp_path / "outer")
    assert logger.getkvs() == {"outer_key": 1}
    logger.log("outside")
    assert "inside" in (tmp_path / "inner" / "log.txt").read_text()
    outer = (tmp_path / "outer" / "log.txt").read_text()
    assert "outside" in outer and "inside" not in outer


def test_first_use_configures_defaults(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OPENAI_LOGDIR", str(tmp_path))
    logger.log("hello")
    assert capsys.readouterr().out == f"Logging to {tmp_path}\nhello\n"
    assert logger.get_dir() == str(tmp_path)


def test_other_ranks_write_no_files(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(dist_util, "get_rank", lambda: 2)
    logger.configure(dir=str(tmp_path))
    logger.log("quiet")
    logger.logkv("a", 1)
    logger.dumpkvs()
    assert capsys.readouterr().out == ""
    assert os.listdir(tmp_path) == []
    # Opting in gives files with a rank suffix.
    monkeypatch.setenv("OPENAI_LOG_FORMAT_MPI", "log,csv")
    logger.configure(dir=str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ["log-rank002.txt", "progress-rank002.csv"]


class _FakeComm:
    """Stands in for an mpi4py communicator: the other ranks' rows are fixed."""

    def __init__(self, others):
        self.others = others

    def allgather(self, local):
        return [local, *self.others]


def test_means_are_weighted_over_ranks(tmp_path):
    other_ranks = [{"loss": (4.0, 1)}, {"loss": (1.0, 3), "extra": (9.0, 1)}]
    logger.configure(dir=str(tmp_path), format_strs=["csv"], comm=_FakeComm(other_ranks))
    logger.logkv("step", 5)  # plain values stay this rank's
    logger.logkv_mean("loss", 2.0)
    logger.logkv_mean("loss", 2.0)
    row = logger.dumpkvs()
    # loss: (2 * 2.0 + 1 * 4.0 + 3 * 1.0) / 6; "extra" logged by one other rank only.
    assert row == {"step": 5, "loss": pytest.approx(11.0 / 6.0), "extra": pytest.approx(9.0)}


def test_unknown_format(tmp_path):
    with pytest.raises(ValueError, match="unknown log format 'xml'.*stdout, log, csv"):
        logger.configure(dir=str(tmp_path), format_strs=["xml"])


def test_tensorboard(tmp_path):
    # the [dev] extra installs tensorboard, so the real writer runs here
    logger.configure(dir=str(tmp_path), format_strs=["tensorboard"])
    logger.logkv("loss", 1.0)
    logger.dumpkvs()
    logger.reset()
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(tmp_path / "tb"))


def test_tensorboard_missing_names_its_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    with pytest.raises(ValueError, match=r'pip install -e "\.\[tensorboard\]"'):
        logger.configure(dir=str(tmp_path), format_strs=["tensorboard"])


def test_profile_kv_records_time(tmp_path):
    logger.configure(dir=str(tmp_path), format_strs=[])
    with logger.profile_kv("io"):
        pass
    assert logger.getkvs()["wait_io"] >= 0.0
