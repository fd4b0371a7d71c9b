"""The demo command end to end, and the packaging (the Slicer extension's CMake: test_extension_metadata)."""

from __future__ import annotations

import json
import re

import matplotlib.image
import numpy as np
import pytest
import SimpleITK as sitk

from conftest import REPO
from metareg.app.demo import main as demo_main


@pytest.mark.slow
def test_demo_writes_every_output_and_a_report_with_its_panels(tmp_path, capsys):
    out = tmp_path / "demo"
    assert demo_main(["--pair", "brain2d", "--output", str(out), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "the network multidomain-2d-reptile, adapted to this pair for 10 steps" in printed  # the zoo by default
    expected = {"warped.nii.gz", "field.nii.gz", "transform.h5", "checkerboard.nii.gz", "jacobian.nii.gz",
                "report.json", "report.png"}
    assert {p.name for p in out.iterdir()} == expected  # and nothing half-written beside them
    fixed = sitk.ReadImage(str(REPO / "Resources/SampleData/brain2d_fixed.nii.gz"))
    for name in ("warped.nii.gz", "checkerboard.nii.gz", "jacobian.nii.gz"):
        image = sitk.ReadImage(str(out / name))
        assert image.GetSize() == fixed.GetSize() and image.GetSpacing() == fixed.GetSpacing()
    field = sitk.ReadImage(str(out / "field.nii.gz"))
    assert field.GetNumberOfComponentsPerPixel() == 2
    sitk.ReadTransform(str(out / "transform.h5"))
    report = json.loads((out / "report.json").read_text())
    assert report["ncc_after"] > report["ncc_before"]
    assert report["model"] == "multidomain-2d-reptile" and report["adapt_steps"] == 10
    png = matplotlib.image.imread(out / "report.png")
    assert png.shape[0] > 500 and png.shape[1] > 1000
    # eight panels in a 2 × 4 layout: fixed, moving, warped, checkerboard and the "before" difference have content
    # (the "after" difference is nearly blank when the registration worked)
    rgb = png[..., :3]
    height, width = rgb.shape[:2]
    for row, column in [(0, 0), (0, 1), (0, 2), (0, 3), (1, 0)]:
        tile = rgb[int(height * (0.15 + 0.45 * row)): int(height * (0.45 + 0.45 * row)),
                   int(width * (0.03 + 0.195 * column)): int(width * (0.15 + 0.195 * column))]
        assert tile.std() > 0.05, f"panel row {row} column {column} looks blank"
    # the Jacobian panel is coloured (diverging map), the image panels are grey
    jacobian_tile = rgb[int(height * 0.6): int(height * 0.9), int(width * 0.42): int(width * 0.55)]
    assert np.abs(jacobian_tile[..., 0] - jacobian_tile[..., 2]).max() > 0.1


@pytest.mark.slow
def test_the_default_demo_registers_the_3d_pair_with_the_zoo(tmp_path, capsys):
    """`./run demo` with no options: the 3D brain pair, the zoo's 3D network with its card's affine step and refinement."""
    out = tmp_path / "demo3d"
    assert demo_main(["--output", str(out), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "affine pre-alignment, then the network brain-mr-3d-reptile, then 30 refinement steps" in printed
    report = json.loads((out / "report.json").read_text())
    assert report["pair"] == "brain3d" and report["model"] == "brain-mr-3d-reptile"
    assert report["affine"] and report["adapt_steps"] == 0 and report["refine_steps"] == 30
    assert report["tre_after"]["mean"] < 0.25 * report["tre_before"]["mean"]  # against the sample's known warp
    assert report["folding_fraction"] < 0.001


def test_packaging_pins_torch_and_exposes_the_cli():
    project = (REPO / "pyproject.toml").read_text()  # (tomllib is Python >= 3.11 only)
    assert re.search(r'^dependencies = \[[^\]]*"torch==2\.13\.0"', project, re.M | re.S)
    assert re.search(r'^metareg = "metareg\.app\.console:main"$', project, re.M)
    assert re.search(r'^package-dir = \{ "" = "MetaRegistration" \}$', project, re.M)
    run = (REPO / "run").read_text()
    assert "demo)" in run and "test)" in run and ".venv" in run
    assert "./run test" in (REPO / ".ci/run").read_text()
