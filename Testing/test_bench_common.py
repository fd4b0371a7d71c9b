"""benchmarks.common, the machinery every benchmark shares: the measures of a field on a pair with known truth, the
summaries over pairs, the parser, the atomic write; and the method table of benchmarks.peers_side_by_side.

The pair is the 2D sample slice and the same slice with its origin shifted by a known vector ``s``: content at fixed
point ``x`` sits at moving point ``x + s``, so the constant field ``s`` is the exact registration, the zero field
changes nothing, and a field that mirrors one axis folds every pixel.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk

from benchmarks import common, peers_side_by_side
from metareg.core.geometry import Grid, identity_field, vector_image

pytestmark = pytest.mark.bench

SHIFT = np.array([3.0, -2.0])


@pytest.fixture(scope="module")
def shifted_pair(sample_dir) -> common.LandmarkPair:
    fixed = sitk.Cast(sitk.ReadImage(str(sample_dir / "brain2d_fixed.nii.gz")), sitk.sitkFloat32)
    moving = sitk.Image(fixed)
    moving.SetOrigin(tuple(np.asarray(fixed.GetOrigin()) + SHIFT))
    grid = Grid.from_image(fixed)
    index = np.stack(np.meshgrid(np.linspace(60, 160, 4), np.linspace(60, 190, 5), indexing="ij"), -1).reshape(-1, 2)
    points = grid.index_to_physical(index)
    return common.LandmarkPair(0, fixed, moving, points, points + SHIFT)


def _field(pair: common.LandmarkPair, displacement) -> sitk.Image:
    """A field on the fixed grid: ``displacement(points)`` at every pixel's physical point (LPS mm)."""
    grid = Grid.from_image(pair.fixed)
    points = grid.physical_points()
    return vector_image(displacement(points), grid)


def test_the_zero_field_changes_nothing(shifted_pair):
    measured = common.evaluate_field(shifted_pair, identity_field(shifted_pair.fixed))
    assert measured["tre_before_mm"] == pytest.approx(np.linalg.norm(SHIFT), abs=1e-9)
    assert measured["tre_after_mm"] == pytest.approx(measured["tre_before_mm"], abs=1e-12)
    assert measured["tre_after_max_mm"] == pytest.approx(measured["tre_before_mm"], abs=1e-12)
    assert measured["ncc_after"] == pytest.approx(measured["ncc_before"], abs=1e-12)
    assert measured["ncc_before"] < 0.9  # a 3.6 mm shift of a brain slice decorrelates it
    assert measured["folding_fraction"] == 0.0


def test_the_exact_field_registers_the_pair(shifted_pair):
    measured = common.evaluate_field(shifted_pair, _field(shifted_pair, lambda x: np.broadcast_to(SHIFT, x.shape)))
    assert measured["tre_after_mm"] < 1e-6 and measured["tre_after_max_mm"] < 1e-6
    assert measured["ncc_after"] > 0.999 > measured["ncc_before"]
    assert measured["folding_fraction"] == 0.0


def test_a_mirroring_field_folds_everywhere(shifted_pair):
    centre = Grid.from_image(shifted_pair.fixed).center

    def mirror(x):  # x ↦ x + d(x) mirrors the first axis about the centre: Jacobian determinant −1
        d = np.zeros_like(x)
        d[..., 0] = -2.0 * (x[..., 0] - centre[0])
        return d

    measured = common.evaluate_field(shifted_pair, _field(shifted_pair, mirror))
    assert measured["folding_fraction"] == 1.0
    assert measured["tre_after_mm"] > measured["tre_before_mm"]


def test_summaries_leave_out_what_was_not_measured():
    rows = [{"tre_after_mm": 1.0, "ncc_after": None, "seconds": 2.0},
            {"tre_after_mm": 3.0, "ncc_after": 0.5, "seconds": float("nan")},
            {"tre_after_mm": 5.0, "ncc_after": 0.7}]
    summary = common.summarise(rows, ("tre_after_mm", "ncc_after", "seconds", "dice_after"))
    assert summary["pairs"] == 3
    assert summary["tre_after_mm"] == {"mean": 3.0, "sd": pytest.approx(math.sqrt(8 / 3))}
    assert summary["ncc_after"]["mean"] == pytest.approx(0.6) and summary["ncc_after"]["sd"] == pytest.approx(0.1)
    assert summary["seconds"] == {"mean": 2.0, "sd": 0.0}
    assert all(math.isnan(v) for v in summary["dice_after"].values())  # never measured
    assert common.mean_sd([1.0, 3.0, 5.0]) == common.mean_sd(summary["tre_after_mm"]) == "3.00 ± 1.63"
    assert common.mean_sd([None, float("nan")]) == common.mean_sd(summary["dice_after"]) == "—"


def test_a_method_row_is_the_table_line_of_its_pairs():
    rows = [{"tre_before_mm": 4.0, "tre_after_mm": 1.0, "ncc_before": 0.5, "ncc_after": 0.8, "folding_fraction": 0.0,
             "seconds": 0.05},
            {"tre_before_mm": 6.0, "tre_after_mm": 2.0, "ncc_before": 0.7, "ncc_after": 0.9,
             "folding_fraction": 0.001, "seconds": 0.07}]
    assert common.method_row("m", rows) == {
        "method": "m", "pairs": 2, "TRE before mm": "5.00 ± 1.00", "TRE after mm (mean ± sd)": "1.50 ± 0.50",
        "NCC before": "0.60 ± 0.10", "NCC after (mean ± sd)": "0.85 ± 0.05", "folding %": "0.050", "s/pair": 0.06}


def test_the_parser_every_benchmark_starts_from(capsys):
    parser = common.benchmark_parser("the doc", threads=2, quick="smoke test", out_dir="where")
    args = parser.parse_args([])
    assert args.threads == 2 and args.quick is False and args.out_dir == common.RESULTS
    assert parser.parse_args(["--out-dir", "x", "--threads", "3", "--quick"]).out_dir.name == "x"
    with pytest.raises(SystemExit) as raised:
        parser.parse_args(["--threads", "0"])
    assert raised.value.code == 2 and "at least 1 thread" in capsys.readouterr().err
    bare = common.benchmark_parser("the doc")
    assert vars(bare.parse_args([])) == {"threads": 1}  # no --quick, no --out-dir unless asked for


def test_an_atomic_write_leaves_the_old_file_when_it_fails(tmp_path, monkeypatch):
    path = tmp_path / "card.json"
    common.write_atomic(path, "old\n")
    assert path.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["card.json"]

    def fail(*_):
        raise OSError("disk full")

    monkeypatch.setattr(common.os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        common.write_atomic(path, "new\n")
    assert path.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["card.json"]


def test_the_peers_benchmark_runs_its_methods_from_one_table():
    assert set(peers_side_by_side.METHODS) == {"elastix", "ants", "sitk-bspline", "sitk-demons", "voxelmorph",
                                              "ours-network", "ours-iterative"}
    assert all(callable(runner) for runner in peers_side_by_side.METHODS.values())
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        peers_side_by_side.job_method("nope", "fundus-2d-test", 1, 1, 1, {})
