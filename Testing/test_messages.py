"""Issue 17, S4: inputs that do not overlap get a warning (one line in the CLI, a list in the report), and the progress
bar follows the work, so that its ETA holds for a long test-time adaptation."""

from __future__ import annotations

import json
import warnings

import pytest

from metareg.app.cli import main
from metareg.core.errors import RegistrationWarning
from metareg.core.landmarks import Landmarks
from metareg.core.modelio import load_model
from metareg.core.registration import NetworkMethod, register
from conftest import save_tiny_model
from test_cli_errors import blobs, write

SIZE, SPACING = (24, 20, 16), (1.2, 0.9, 2.0)


def _pair(moving_origin=None):
    fixed, moving = blobs(SIZE, SPACING), blobs(SIZE, SPACING, 2.0)
    if moving_origin is not None:
        moving.SetOrigin(moving_origin)
    return fixed, moving


def test_images_that_do_not_overlap_are_warned_about(tmp_path, capsys):
    fixed, moving = _pair(moving_origin=(400.0, 12.5, 3.0))  # 400 mm away: no overlap
    with pytest.warns(RegistrationWarning, match="fixed and moving images do not overlap in physical space"):
        result = register(fixed, moving, device="cpu")
    assert len(result.report.warnings) == 1 and "centres are 405 mm apart" in result.report.warnings[0]
    paths = [write(image, tmp_path / f"{name}.nii.gz") for name, image in (("fixed", fixed), ("moving", moving))]
    report = tmp_path / "report.json"
    assert main(["register", "--fixed", str(paths[0]), "--moving", str(paths[1]), "--iterations", "2,2",
                 "--report", str(report), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert err.splitlines() == [f"metareg register: warning: {result.report.warnings[0]}"]
    assert json.loads(report.read_text())["warnings"] == result.report.warnings


def test_overlapping_inputs_get_no_warning():
    fixed, moving = _pair()
    with warnings.catch_warnings():
        warnings.simplefilter("error", RegistrationWarning)
        assert register(fixed, moving, device="cpu").report.warnings == []


def test_landmarks_outside_their_image_are_warned_about():
    fixed, moving = _pair()
    inside = fixed.TransformContinuousIndexToPhysicalPoint((12, 10, 8))
    far = (inside[0], inside[1], inside[2] + 500.0)  # e.g. RAS points read as LPS, or another image's points
    fixed_points = Landmarks(("A", "B", "C"), [inside, far, far])
    moving_points = Landmarks(("A", "B", "C"), [inside, inside, inside])
    with pytest.warns(RegistrationWarning) as caught:
        result = register(fixed, moving, fixed_landmarks=fixed_points, moving_landmarks=moving_points, device="cpu")
    messages = [str(w.message) for w in caught]
    assert messages == ["fixed_landmarks: 2 of 3 points lie outside the fixed image (B, C): check their coordinate "
                        "system (LPS or RAS) and that they belong to this image"]
    assert result.report.warnings == messages


def test_the_progress_bar_follows_a_long_test_time_adaptation(tmp_path):
    """With 40 adaptation steps the adaptation is most of the work: it gets most of the bar, in equal steps, and
    its share of the bar is near its share of the measured seconds (so the ETA holds)."""
    model = load_model(save_tiny_model(tmp_path / "tiny.safetensors", card={"grid": {"size": [24, 20, 16], "spacing": None}}))
    fixed, moving = _pair()
    seen: list[tuple[float, str]] = []
    result = register(fixed, moving, method=NetworkMethod(model, adapt_steps=40, refine_steps=0), device="cpu",
                      progress=lambda fraction, message: seen.append((fraction, message)))
    steps = {message: fraction for fraction, message in seen if message.startswith("test-time adaptation ")}
    first, middle, last = steps["test-time adaptation 1/40"], steps["test-time adaptation 20/40"], \
        steps["test-time adaptation 40/40"]
    span = last - first
    assert span > 0.6, seen  # the bar gave most of itself to the adaptation
    assert middle - first == pytest.approx(19 / 39 * span, rel=1e-6)  # in equal steps
    fractions = [fraction for fraction, _ in seen]
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)
    seconds = result.report.seconds
    share = seconds["adaptation"] / seconds["total"]
    assert 0.5 * share < span < min(1.0, 2.0 * share), (span, seconds)
