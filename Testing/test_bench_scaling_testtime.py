"""The quick modes of benchmarks.scaling (protocol 4) and benchmarks.testtime_3d (protocol 2) write sane results.

Each benchmark runs as a user would run it (a subprocess, one CPU thread) into a temporary folder; the test checks the
files it writes: the expected rows, finite positive numbers, and — for the testtime benchmark — that the classical
iterative method lowers the TRE of the known synthetic warp. No timing is asserted.
"""

from __future__ import annotations

import csv
import json
import math
import os

import pytest

from conftest import require_tasks, run_benchmark, save_tiny_model

pytestmark = pytest.mark.bench


def _finite_positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_scaling_quick_writes_a_sane_table(tmp_path):
    run_benchmark("scaling", "--quick", "--threads", "1", "--out-dir", str(tmp_path))
    for suffix in ("csv", "md", "json", "png"):
        assert (tmp_path / f"scaling.{suffix}").stat().st_size > 0, suffix
    result = json.loads((tmp_path / "scaling.json").read_text())
    rows = result["rows"]
    assert [(r["dim"], r["grid"]) for r in rows] == [(3, "32³"), (3, "48³"), (2, "64²"), (2, "128²")]
    for row in rows:
        assert row["voxels"] == (32**3, 48**3, 64**2, 128**2)[rows.index(row)]
        for key in ("inference_s", "adapt_step_s", "adapt_10_steps_s", "register_s"):
            assert _finite_positive(row[key]), (row["grid"], key, row[key])
        for key in ("inference_peak_mib", "adapt_peak_mib", "register_peak_mib"):
            # a fresh process with torch and SimpleITK: more than 100 MiB, far less than the machine
            assert 100 < row[key] < 16000, (row["grid"], key, row[key])
        # a 10-step adaptation takes longer than one of its steps
        assert row["adapt_10_steps_s"] > row["adapt_step_s"]
    for raw in result["raw"]:
        assert len(raw["inference"]["seconds"]) == 2 and len(raw["register"]["seconds"]) == 1
        assert raw["adaptation"]["steps"] == len(raw["adaptation"]["step_seconds"]) == 3
        assert math.isfinite(raw["adaptation"]["loss_last"])
    for key in ("3d_inference_s", "3d_adapt_step_s", "2d_inference_s", "2d_register_s"):
        assert math.isfinite(result["fits"][key]["exponent"]) and result["fits"][key]["points"] == 2
    assert result["environment"]["threads"] == 1
    with open(tmp_path / "scaling.csv", newline="") as handle:
        assert len(list(csv.DictReader(handle))) == 4
    table = (tmp_path / "scaling.md").read_text()
    assert "| 3 | 48³ |" in table and "random weights" in table and "voxels^" in table


def test_testtime_quick_writes_a_sane_table(tmp_path):
    require_tasks("brain-mr-3d", "brain-mr-3d-warp", "brain-mr-3d-test")
    # the tiny network stands in for the zoo's meta-registration model (which the test must not depend on)
    stand_in = save_tiny_model(tmp_path / "stand-in.safetensors", 3, {
        "purpose": "test stand-in", "grid": {"size": [32, 40, 32], "spacing": None},
        "normalisation": {"method": "percentile", "low": 1.0, "high": 99.0}, "loss": {},
        "adaptation": {"learning_rate": 1e-3}, "training": {}, "metrics": {}})
    out = tmp_path / "results"
    done = run_benchmark("testtime_3d", "--quick", "--threads", "1", "--out-dir", str(out),
                         "--cache-dir", str(tmp_path / "cache"), "--model", str(stand_in))
    assert "training LocalNet, VoxelMorph-style U-Net: 3 steps" in done.stdout  # a fresh cache: both are trained
    for suffix in ("csv", "md", "json"):
        assert (out / f"testtime-3d.{suffix}").stat().st_size > 0, suffix
    result = json.loads((out / "testtime-3d.json").read_text())
    names = [row["method"] for row in result["rows"]]
    assert names == ["classical iterative (no network)", "LocalNet (budget-matched, 3 steps)",
                     "VoxelMorph-style U-Net (budget-matched, 3 steps)",
                     "meta-registration stand-in, 0 test-time steps", "meta-registration stand-in, 5 test-time steps"]
    assert result["has_labels"] is False and all(row["Dice"] == "—" for row in result["rows"])
    assert "no label maps" in (out / "testtime-3d.md").read_text()
    for name in names:
        pairs = result["per_pair"][name]
        assert len(pairs) == 1
        for pair in pairs:
            assert _finite_positive(pair["seconds"])
            assert _finite_positive(pair["tre_before_mm"]) and _finite_positive(pair["tre_after_mm"])
            assert -1.0 <= pair["ncc_after"] <= 1.0
            assert 0.0 <= pair["folding_percent"] <= 100.0
    iterative = result["per_pair"]["classical iterative (no network)"][0]
    assert iterative["tre_after_mm"] < iterative["tre_before_mm"]
    assert iterative["ncc_after"] > iterative["ncc_before"]
    # the adaptation row ran its 5 steps (an adaptation stage is timed) and the 0-step row did not
    assert "adaptation" in result["per_pair"]["meta-registration stand-in, 5 test-time steps"][0]["stages_s"]
    assert "adaptation" not in result["per_pair"]["meta-registration stand-in, 0 test-time steps"][0]["stages_s"]
    for info in result["reference_networks"].values():
        assert info["cached"] is False and math.isfinite(info["final_loss"])
        assert (tmp_path / "cache" / os.path.basename(info["file"])).is_file()
    assert (tmp_path / "cache" / ".gitignore").read_text().strip().endswith("*")
