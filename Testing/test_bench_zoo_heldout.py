"""benchmarks/zoo_heldout.py (the held-out numbers in the model cards) runs as a user runs it and writes sane rows.

Two pairs of the unseen 2D fundus task, the zoo's 2D Reptile model with 0 adaptation steps, with and without
refinement, and elastix in the same run. No timing is asserted.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from conftest import REPO


@pytest.fixture(scope="module")
def fundus_test_task():
    from metareg.tasks import default_data_dir

    if not (default_data_dir() / "tasks" / "fundus-2d-test" / "pairs.csv").is_file():
        pytest.fail("task fundus-2d-test is missing: run `metareg data fetch` first (see DATA.md)")


def test_zoo_heldout_reports_every_method_with_refinement_and_elastix(tmp_path, fundus_test_task):
    out = tmp_path / "zoo.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "zoo_heldout.py"), "--model", "multidomain-2d-reptile",
         "--task", "fundus-2d-test", "--adapt-steps", "0", "--refine-steps", "0,20", "--elastix", "--threads", "1",
         "--limit", "2", "--out", str(out)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    methods = result["summary"]["methods"]
    assert set(methods) == {"multidomain-2d-reptile +0 steps", "multidomain-2d-reptile +0 steps, refined 20",
                            "elastix affine+bspline"}
    for name, summary in methods.items():
        assert summary["pairs"] == 2, name
        assert math.isfinite(summary["tre_after_mm"]["mean"]) and summary["seconds"]["mean"] > 0, name
        assert summary["tre_after_mm"]["mean"] < summary["tre_before_mm"]["mean"], name  # each one registers
    assert len(result["per_pair"]["elastix affine+bspline"]) == 2
    assert "command" in result["summary"] and "synthetic" in result["summary"]["note"]
