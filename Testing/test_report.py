"""The registration report (metareg.core.report): JSON in and out, and the one-line summary every front end prints."""

from __future__ import annotations

import json

import numpy as np
import pytest

from metareg.core.report import RegistrationReport, json_safe


def network_report(**changes) -> RegistrationReport:
    values = dict(method="network", model="brain-mr-3d-reptile", refine_steps=30, affine=True, device="cpu (2 threads)",
                  ncc_before=np.float64(0.8841), ncc_after=0.99213, folding_fraction=0.0, std_log_jacobian=0.071,
                  tre_before={"n": 32, "mean": 6.912, "std": 1.0, "median": 6.5, "p90": 8.0, "max": 9.0},
                  tre_after={"n": 32, "mean": 0.401, "std": 0.2, "median": 0.33, "p90": 0.66, "max": 1.34},
                  labels={"per_label": {}, "mean_dice_before": 0.612, "mean_dice_after": 0.781},
                  seconds={"prealign": 1.93, "registration": 0.31, "refinement": 3.6, "metrics": 0.01, "total": 5.94})
    values.update(changes)
    return RegistrationReport(**values)


def test_the_summary_line_says_each_measure_before_and_after():
    line = network_report().summary_line()
    assert line == ("TRE 6.91 → 0.40 mm (mean of 32); NCC 0.884 → 0.992; Dice 0.612 → 0.781; folding 0.000 %; "
                    "5.9 s (prealign 1.9, registration 0.3, refinement 3.6); cpu (2 threads)")


@pytest.mark.parametrize("changes, present, absent", [
    ({"tre_before": None, "tre_after": None}, ["NCC 0.884 → 0.992"], ["TRE"]),
    ({"labels": None}, ["TRE 6.91"], ["Dice"]),
    ({"labels": {"per_label": {}, "mean_dice_before": None, "mean_dice_after": None}}, ["folding"], ["Dice"]),
    ({"ncc_before": None, "ncc_after": None}, ["NCC: the images share no region"], ["NCC 0."]),
    ({"folding_fraction": 0.0123}, ["folding 1.230 %"], []),
])
def test_the_summary_line_leaves_out_what_was_not_measured(changes, present, absent):
    line = network_report(**changes).summary_line()
    assert all(text in line for text in present) and not any(text in line for text in absent), line


@pytest.mark.parametrize("changes, sentence", [
    ({}, "Method: affine pre-alignment, then the network brain-mr-3d-reptile, then 30 refinement steps on its field."),
    ({"affine": False, "refine_steps": 0, "adapt_steps": 10},
     "Method: the network brain-mr-3d-reptile, adapted to this pair for 10 steps."),
    ({"method": "iterative", "model": None, "refine_steps": 0, "affine": False,
      "iterative": {"loss": {"similarity": "mi"}}},
     "Method: the built-in iterative method (multi-resolution optimisation of the displacement field, "
     "mutual information + smoothness); no network."),
])
def test_the_method_is_described_in_one_sentence(changes, sentence):
    assert network_report(**changes).method_description() == sentence


def test_the_figure_text_starts_with_the_method_and_gives_the_tre_distribution():
    lines = network_report().summary_lines()
    assert lines[0] == network_report().method_description()
    assert "TRE after: median 0.33, p90 0.66, max 1.34" in lines
    assert lines[-2:] == ["Seconds: total 5.9", "  prealign 1.9, registration 0.3, refinement 3.6"]


def test_json_has_no_nan_and_reads_back():
    report = network_report(ncc_after=float("nan"), loss_curve=[np.float32(0.5), float("inf")])
    text = report.to_json()
    data = json.loads(text)  # strict JSON: NaN and Infinity would not be valid
    assert "NaN" not in text and "Infinity" not in text
    assert data["ncc_after"] is None and data["loss_curve"] == [0.5, None] and isinstance(data["ncc_before"], float)
    assert "iterative" not in data and "landmarks" not in data  # optional parts only when present
    again = RegistrationReport.from_dict({**data, "pair": "brain3d", "fixed": "f.nii.gz"})  # context keys ignored
    assert again.to_dict() == data


@pytest.mark.parametrize("data", [{}, {"method": "elastix"}, [1, 2]])
def test_reading_something_else_as_a_report_is_refused(data):
    with pytest.raises(ValueError, match="not a registration report"):
        RegistrationReport.from_dict(data)


def test_json_safe_converts_numpy_scalars_and_tuples():
    assert json_safe({"a": (np.int64(3), np.float32(1.5)), 2: [np.float64("nan")]}) == {"a": [3, 1.5], "2": [None]}
