"""python -m benchmarks.zoo_heldout (the held-out numbers in the model cards) runs as a user runs it and writes sane
rows.

Two pairs of the unseen 2D fundus task, the zoo's 2D Reptile model with 0 adaptation steps, with and without
refinement, and elastix in the same run; the card update on a copy of the model. No timing is asserted.
"""

from __future__ import annotations

import csv
import json
import math
import shutil

import pytest

from conftest import REPO, require_tasks, run_benchmark

pytestmark = pytest.mark.bench

MODEL = "multidomain-2d-reptile"


@pytest.fixture(scope="module")
def fundus_test_task():
    require_tasks("fundus-2d-test")


def _run_zoo_heldout(out, *arguments, model=MODEL):
    """python -m benchmarks.zoo_heldout on fundus-2d-test with ``model``, 1 thread, writing ``out``; its exit status
    is the test's to check."""
    return run_benchmark("zoo_heldout", "--model", str(model), "--task", "fundus-2d-test", "--threads", "1",
                         "--out", str(out), *arguments, check=False)


def test_zoo_heldout_reports_every_method_with_refinement_and_elastix(tmp_path, fundus_test_task):
    out = tmp_path / "zoo.json"
    done = _run_zoo_heldout(out, "--adapt-steps", "0", "--refine-steps", "0,20", "--elastix", "--limit", "2")
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    methods = result["summary"]["methods"]
    names = [f"{MODEL} +0 steps", f"{MODEL} +0 steps, refined 20", "elastix affine+bspline"]
    assert list(methods) == names
    for name, summary in methods.items():
        assert summary["pairs"] == 2, name
        assert math.isfinite(summary["tre_after_mm"]["mean"]) and summary["seconds"]["mean"] > 0, name
        assert summary["tre_after_mm"]["mean"] < summary["tre_before_mm"]["mean"], name  # each one registers
        # every field measured the same way: NCC on the common region (elastix's too), folding
        assert -1 <= summary["ncc_before"]["mean"] < summary["ncc_after"]["mean"] <= 1, name
        assert 0 <= summary["folding_fraction"]["mean"] <= 1, name
    # the same pairs for every method: the same TRE before
    assert len({summary["tre_before_mm"]["mean"] for summary in methods.values()}) == 1
    assert len(result["per_pair"]["elastix affine+bspline"]) == 2
    assert [row["pair"] for row in result["per_pair"][names[0]]] == [0, 1]
    assert result["summary"]["command"].startswith("python -m benchmarks.zoo_heldout --model")
    assert "synthetic" in result["summary"]["note"] and result["summary"]["task"] == "fundus-2d-test"
    # the markdown table and the CSV beside the JSON, with the command, machine and threads
    assert result["environment"]["threads"] == 1
    table = (tmp_path / "zoo.md").read_text()
    assert "- command: `python -m benchmarks.zoo_heldout" in table and "- threads: 1" in table
    assert all(f"| {name} | 2 |" in table for name in names)
    with open(tmp_path / "zoo.csv", newline="") as handle:
        assert [row["method"] for row in csv.DictReader(handle)] == names


def test_zoo_heldout_refine_weight_overrides_the_card_in_memory_only(tmp_path, fundus_test_task):
    card = REPO / "models" / f"{MODEL}.json"
    card_text = card.read_text()
    one_pair = ("--adapt-steps", "0", "--refine-steps", "20", "--limit", "1")
    refused = _run_zoo_heldout(tmp_path / "refused.json", *one_pair, "--refine-weight", "1000", "--update-card")
    assert refused.returncode == 2 and "--update-card" in refused.stderr
    default = _run_zoo_heldout(tmp_path / "default.json", *one_pair)
    stiff = _run_zoo_heldout(tmp_path / "stiff.json", *one_pair, "--refine-weight", "1000")
    assert default.returncode == 0 and stiff.returncode == 0, (default.stderr + stiff.stderr)[-3000:]
    tre_default = json.loads((tmp_path / "default.json").read_text())["summary"]["methods"][
        f"{MODEL} +0 steps, refined 20"]["tre_after_mm"]["mean"]
    tre_stiff = json.loads((tmp_path / "stiff.json").read_text())["summary"]["methods"][
        f"{MODEL} +0 steps, refined 20 (weight 1000)"]["tre_after_mm"]["mean"]
    assert abs(tre_stiff - tre_default) > 0.05  # the weight reached the refinement
    assert card.read_text() == card_text


def test_zoo_heldout_updates_a_card_and_it_still_loads(tmp_path, fundus_test_task):
    """--update-card on a copy of the zoo model: the summary lands in the card's metrics under the task, the other
    metrics and every setting stay, no temporary file is left, and the model loads (its weights still authenticate
    the card)."""
    from metareg.core.modelio import load_model

    weights = tmp_path / f"{MODEL}.safetensors"
    shutil.copy(REPO / "models" / weights.name, weights)
    shutil.copy(REPO / "models" / f"{MODEL}.json", weights.with_suffix(".json"))
    before = json.loads(weights.with_suffix(".json").read_text())
    refused = _run_zoo_heldout(tmp_path / "zoo.txt", "--limit", "1", model=weights)
    assert refused.returncode == 2 and "must end in .json" in refused.stderr
    done = _run_zoo_heldout(tmp_path / "zoo.json", "--adapt-steps", "0", "--limit", "1", "--update-card",
                            model=weights)
    assert done.returncode == 0, done.stderr[-3000:]
    after = json.loads(weights.with_suffix(".json").read_text())
    summary = json.loads((tmp_path / "zoo.json").read_text())["summary"]
    assert after["metrics"]["fundus-2d-test"] == json.loads(json.dumps(summary))
    assert list(after["metrics"]["fundus-2d-test"]["methods"]) == [f"{MODEL} +0 steps"]
    assert {k: v for k, v in after.items() if k != "metrics"} == {k: v for k, v in before.items() if k != "metrics"}
    assert {k: v for k, v in after["metrics"].items() if k != "fundus-2d-test"} == \
        {k: v for k, v in before["metrics"].items() if k != "fundus-2d-test"}
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    assert load_model(weights).card.metrics["fundus-2d-test"]["pairs"] == 1
