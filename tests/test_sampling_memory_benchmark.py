"""
Tests of scripts/benchmark_sampling_memory.py: its memory readings follow what the process
holds, and a tiny run of image_sample.py reports every rank's memory at each phase and
writes the whole batch. No memory or time thresholds: those are the benchmark's figures.
"""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location(
    "benchmark_sampling_memory", ROOT / "scripts" / "benchmark_sampling_memory.py"
)
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)

needs_proc = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="reads /proc/self/status (Linux)"
)


@needs_proc
def test_the_peak_follows_an_allocation_and_resets():
    before = bench.status_kib("VmRSS")
    block = np.ones(64 * 2**20, np.uint8)  # 64 MiB, every page touched
    assert bench.status_kib("VmHWM") - before > 60 * 1024
    del block
    bench.reset_peak()
    assert bench.status_kib("VmHWM") - before < 30 * 1024  # the old peak is gone


def _check_run(result: dict, ranks: int, num_samples: int, side: int, zero: bool) -> None:
    assert [r["rank"] for r in result["ranks"]] == list(range(ranks))
    for report in result["ranks"]:
        assert report["zero_model"] is zero
        assert 0 < report["baseline"] <= report["start_peak"] <= report["peak"]
        for phase in bench.PHASES:
            assert 0 < report[phase] <= report["peak"] <= result["largest"]
    assert result["file_bytes"] >= num_samples * side * side * 3
    setting = dict(model="zero", num_samples=num_samples, image_size=side, batch_size=4)
    rows = bench.table_rows(result, setting)
    assert len(rows) == ranks and all(row.count("|") == 14 for row in rows)


@needs_proc
@pytest.mark.parametrize("model", ["zero", pytest.param("unet", marks=pytest.mark.slow)])
def test_a_tiny_run_reports_each_phase(tmp_path, model):
    flags = bench.make_checkpoint(str(tmp_path), bench.model_flags(8))
    result = bench.measure(str(tmp_path), flags, model=model, num_samples=6, batch_size=4)
    _check_run(result, 1, 6, 8, zero=model == "zero")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]  # the run cleaned up


@pytest.mark.slow
@needs_proc
@pytest.mark.parametrize("launcher", ["mpiexec", "torchrun"])
def test_two_ranks_report_each(tmp_path, launcher):
    flags = bench.make_checkpoint(str(tmp_path), bench.model_flags(8))
    result = bench.measure(
        str(tmp_path), flags, model="zero", num_samples=10, batch_size=4, ranks=2,
        launcher=launcher,
    )  # fmt: skip
    _check_run(result, 2, 10, 8, zero=True)
