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
    from metareg.learning.tasks import default_data_dir

    if not (default_data_dir() / "tasks" / "fundus-2d-test" / "pairs.csv").is_file():
        pytest.fail("task fundus-2d-test is missing: run `metareg data fetch` first (see DATA.md)")


def _run_zoo_heldout(out, *arguments):
    """benchmarks/zoo_heldout.py on fundus-2d-test with the zoo's 2D Reptile model, 1 thread, writing ``out``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "zoo_heldout.py"), "--model", "multidomain-2d-reptile",
         "--task", "fundus-2d-test", "--threads", "1", "--out", str(out), *arguments],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def test_zoo_heldout_reports_every_method_with_refinement_and_elastix(tmp_path, fundus_test_task):
    out = tmp_path / "zoo.json"
    done = _run_zoo_heldout(out, "--adapt-steps", "0", "--refine-steps", "0,20", "--elastix", "--limit", "2")
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


def test_zoo_heldout_refine_weight_overrides_the_card_in_memory_only(tmp_path, fundus_test_task):
    card = REPO / "models" / "multidomain-2d-reptile.json"
    card_text = card.read_text()
    one_pair = ("--adapt-steps", "0", "--refine-steps", "20", "--limit", "1")
    refused = _run_zoo_heldout(tmp_path / "refused.json", *one_pair, "--refine-weight", "1000", "--update-card")
    assert refused.returncode == 2 and "--update-card" in refused.stderr
    default = _run_zoo_heldout(tmp_path / "default.json", *one_pair)
    stiff = _run_zoo_heldout(tmp_path / "stiff.json", *one_pair, "--refine-weight", "1000")
    assert default.returncode == 0 and stiff.returncode == 0, (default.stderr + stiff.stderr)[-3000:]
    tre_default = json.loads((tmp_path / "default.json").read_text())["summary"]["methods"][
        "multidomain-2d-reptile +0 steps, refined 20"]["tre_after_mm"]["mean"]
    tre_stiff = json.loads((tmp_path / "stiff.json").read_text())["summary"]["methods"][
        "multidomain-2d-reptile +0 steps, refined 20 (weight 1000)"]["tre_after_mm"]["mean"]
    assert abs(tre_stiff - tre_default) > 0.05  # the weight reached the refinement
    assert card.read_text() == card_text
