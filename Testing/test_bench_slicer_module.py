"""python -m benchmarks.slicer_module --quick writes sane results (the module's engine process vs the CLI, in
slicer-core).

The benchmark runs as a user would run it (a subprocess, one CPU thread) into a temporary folder, so
benchmarks/results is never touched. The test checks the files and that every entry the benchmark promises is
there with finite numbers: the overhead of the module path over the CLI (and its parts), the cancel latency, the GIL
test's ratio and the thread simulation. The one number asserted is the cancel latency (< 2 s, the module's promise);
speed targets belong in the benchmark, not here.
"""

from __future__ import annotations

import csv
import json
import math

import pytest

from conftest import run_benchmark

pytestmark = pytest.mark.bench


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@pytest.fixture(scope="module")
def quick_result(tmp_path_factory):
    out = tmp_path_factory.mktemp("slicer-module")
    done = run_benchmark("slicer_module", "--quick", "--threads", "1", "--out", str(out / "slicer-module"))
    return out, json.loads((out / "slicer-module.json").read_text()), done.stdout


def test_quick_mode_writes_its_files_outside_benchmarks_results(quick_result):
    out, result, stdout = quick_result
    for suffix in ("csv", "md", "json"):
        assert (out / f"slicer-module.{suffix}").stat().st_size > 200, suffix
    assert result["quick"] is True and result["repeats"] == 1 and result["environment"]["threads"] == 1
    with open(out / "slicer-module.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(result["rows"]) and rows
    table = (out / "slicer-module.md").read_text()
    assert "| GIL test: ratio held / free |" in table and "cancel latency" in table
    assert "| measurement |" in stdout  # the table is printed at the end


def test_quick_mode_has_the_overhead_with_its_parts(quick_result):
    _, result, _ = quick_result
    assert set(result["overhead"]) == {"iterative"}  # quick: no zoo rows
    overhead = result["overhead"]["iterative"]
    assert overhead["setting"] == "iterative 4,2,1"
    assert _finite(overhead["median_difference_s"]) and _finite(overhead["median_outside_engine_difference_s"])
    for key in ("cli_wall_s", "cli_engine_total_s", "cli_outside_engine_s", "module_wall_s",
                "module_outside_engine_s", "difference_s", "outside_engine_difference_s"):
        assert _finite(overhead[key]["median"]) and overhead[key]["n"] == 1, key
    assert overhead["cli_wall_s"]["median"] > 0 and overhead["module_wall_s"]["median"] > 0
    for name in ("start_call_s", "write_inputs_s", "to_start_event_s", "engine_total_s", "read_outputs_s",
                 "create_nodes_s", "worker_rest_s"):
        assert _finite(overhead["module_parts"][name]["median"]), name
    run = overhead["runs"][0]
    # both paths registered the same pair with landmarks
    assert _finite(run["cli"]["tre_after_mm"]) and _finite(run["module"]["tre_after_mm"])


def test_quick_mode_cancel_latency_is_under_2_s(quick_result):
    _, result, _ = quick_result
    cancel = result["cancel_latency"]["iterative"]
    assert cancel["latency_s"]["n"] == 1
    assert _finite(cancel["median_s"]) and _finite(cancel["max_s"])
    assert 0 <= cancel["max_s"] < 2.0, f"cancel took {cancel['max_s']:.2f} s"
    assert all(run["folder_removed"] for run in cancel["runs"])


def test_quick_mode_has_the_gil_ratio_and_the_thread_simulation(quick_result):
    _, result, _ = quick_result
    gil = result["gil"]
    assert _finite(gil["median_ratio"]) and gil["median_ratio"] > 0
    assert _finite(gil["free_s"]["median"]) and _finite(gil["held_s"]["median"])
    simulation = result["thread_simulation"]
    for key in ("free_s", "held_s", "ratio"):
        assert _finite(simulation[key]) and simulation[key] > 0, key
    assert "before" in result["load"] and "after" in result["load"]
