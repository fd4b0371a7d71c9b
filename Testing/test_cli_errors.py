"""Bad input to the ``metareg`` command line: one clear line naming the input, exit status 2, and no outputs at all.

Every failing run asks for several outputs (``--warped``, ``--field``, ``--transform``, ``--jacobian``, ``--report``)
in a folder of its own; afterwards that folder must be byte-for-byte as before (hidden files included, so no
``.partial`` scratch folders either), and the input files must be unchanged. The CLI is called in-process
(:func:`metareg.app.cli.main`), plus once through the installed console script to see the exit status reach the shell.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from conftest import save_tiny_model
from metareg.app.cli import main

SIZE_3D, SPACING_3D = (24, 20, 16), (1.2, 0.9, 2.0)
SIZE_2D, SPACING_2D = (32, 28), (0.8, 1.1)
FAST = ["--iterations", "2,2"]  # the iterative method's two levels, two steps each: a fraction of a second


# ---------------------------------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------------------------------


def blobs(size, spacing, shift_mm: float = 0.0) -> sitk.Image:
    """Two smooth blobs on a grid with anisotropic spacing (float32), the first shifted by ``shift_mm`` along x."""
    axes = [np.arange(n) * s for n, s in zip(size, spacing)]
    coords = np.meshgrid(*axes[::-1], indexing="ij")[::-1]  # x, y(, z), each in array (z, y, x) order
    centre = [n * s / 2 for n, s in zip(size, spacing)]
    first = sum(((c - m - (shift_mm if i == 0 else 0.0)) / 6.0) ** 2 for i, (c, m) in enumerate(zip(coords, centre)))
    second = sum(((c - 0.3 * m) / 3.0) ** 2 for c, m in zip(coords, centre))
    image = sitk.GetImageFromArray((100 * np.exp(-first) + 60 * np.exp(-second)).astype(np.float32))
    image.SetSpacing(spacing)
    image.SetOrigin([-5.0, 12.5, 3.0][: len(size)])
    return image


def write(image: sitk.Image, path: Path) -> Path:
    sitk.WriteImage(image, str(path))
    return path


def write_points(path: Path, labels, points) -> Path:
    rows = "".join(f"{label},{x},{y},{z}\n" for label, (x, y, z) in zip(labels, points))
    path.write_text("# coordinateSystem = LPS\nlabel,x,y,z\n" + rows)
    return path


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """A folder of valid inputs: a 3D pair, a 2D pair, matching landmarks (3D) and a tiny 3D model."""
    folder = tmp_path_factory.mktemp("inputs")
    fixed = blobs(SIZE_3D, SPACING_3D)
    write(fixed, folder / "fixed.nii.gz")
    write(blobs(SIZE_3D, SPACING_3D, shift_mm=2.0), folder / "moving.nii.gz")
    write(blobs(SIZE_2D, SPACING_2D), folder / "fixed2d.nii.gz")
    write(blobs(SIZE_2D, SPACING_2D, shift_mm=1.5), folder / "moving2d.nii.gz")
    points = [fixed.TransformContinuousIndexToPhysicalPoint(index) for index in ((12, 10, 8), (6, 5, 4), (18, 14, 10))]
    write_points(folder / "fixed_points.csv", ["A", "B", "C"], points)
    write_points(folder / "moving_points.csv", ["A", "B", "C"], [(x + 2.0, y, z) for x, y, z in points])
    save_tiny_model(folder / "model" / "tiny.safetensors", card={"grid": {"size": None, "spacing": None}})
    return folder


@pytest.fixture
def out(tmp_path) -> Path:
    folder = tmp_path / "out"
    folder.mkdir()
    return folder


@pytest.fixture(autouse=True)
def empty_zoo(tmp_path, monkeypatch):
    """Model names are looked up in an empty zoo, whatever the repository's models/ holds."""
    zoo = tmp_path / "zoo"
    zoo.mkdir()
    monkeypatch.setenv("METAREG_MODEL_DIR", str(zoo))


def pair(inputs: Path, fixed: Path | None = None, moving: Path | None = None) -> list[str]:
    return ["--fixed", str(fixed or inputs / "fixed.nii.gz"), "--moving", str(moving or inputs / "moving.nii.gz")]


def outputs(out: Path) -> list[str]:
    return ["--warped", str(out / "warped.nii.gz"), "--field", str(out / "field.nii.gz"),
            "--transform", str(out / "fixed_to_moving.h5"), "--jacobian", str(out / "jacobian.nii.gz"),
            "--report", str(out / "report.json")]


def snapshot(folder: Path) -> dict[str, str]:
    """Every file and folder below ``folder`` (hidden ones too) with the sha256 of each file."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "<dir>"
        for path in sorted(folder.rglob("*"))
    }


def fails_cleanly(argv: list[str], capsys, *watched: Path, command: str = "register") -> str:
    """Run ``metareg ARGV`` in-process; check exit status 2, one error line, no traceback, and that no file in the
    ``watched`` folders (outputs and inputs) was created, changed or removed. Returns the error line."""
    before = [snapshot(folder) for folder in watched]
    rc = main(argv)
    captured = capsys.readouterr()
    assert rc == 2, captured.err
    assert [snapshot(folder) for folder in watched] == before, "a failing run left, changed or removed files"
    assert "Traceback" not in captured.err
    lines = [line for line in captured.err.splitlines() if line.startswith(f"metareg {command}: error: ")]
    assert len(lines) == 1, captured.err
    assert captured.out == ""
    return lines[0]


def register_fails(extra: list[str], capsys, inputs: Path, out: Path) -> str:
    """``metareg register EXTRA`` with every output requested in ``out`` (EXTRA may replace one): must fail cleanly
    and leave the shared inputs and everything in the test's own folder (outputs, damaged inputs, models) alone."""
    return fails_cleanly(["register", *outputs(out), *extra, "--quiet"], capsys, out, out.parent, inputs)


# ---------------------------------------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------------------------------------


def _missing(folder: Path) -> Path:
    return folder / "missing.nii.gz"


def _text_file(folder: Path) -> Path:
    path = folder / "notes.nii.gz"
    path.write_text("patient notes, not an image\n")
    return path


def _zero_voxels(folder: Path) -> Path:
    path = folder / "empty.mha"
    path.write_text("ObjectType = Image\nNDims = 3\nDimSize = 0 0 0\nElementType = MET_FLOAT\n"
                    "ElementDataFile = LOCAL\n")
    return path


def _one_voxel(folder: Path) -> Path:
    return write(sitk.Image([1, 1, 1], sitk.sitkFloat32), folder / "one_voxel.nii.gz")


def _single_slice(folder: Path) -> Path:
    return write(blobs((24, 20, 1), SPACING_3D), folder / "slice.nii.gz")


def _nan_voxels(folder: Path) -> Path:
    """NRRD: ITK's NIfTI reader turns NaN voxels into 0 (SimpleITK 2.5), so a .nii.gz could not carry them."""
    image = blobs(SIZE_3D, SPACING_3D)
    for index in ((0, 0, 0), (5, 6, 7), (23, 19, 15)):
        image[index] = float("nan")
    return write(image, folder / "nans.nrrd")


def _constant(folder: Path) -> Path:
    image = sitk.Image(list(SIZE_3D), sitk.sitkInt16) + 7
    image.SetSpacing(SPACING_3D)
    return write(image, folder / "constant.nii.gz")


def _folder_without_dicom(folder: Path) -> Path:
    path = folder / "dicom"
    path.mkdir()
    (path / "readme.txt").write_text("no DICOM here\n")
    return path


IMAGE_CASES = [
    (_missing, "--fixed", "does not exist"),
    (_text_file, "--moving", "cannot be read as an image"),
    (_zero_voxels, "--fixed", "has size (0, 0, 0)"),
    (_one_voxel, "--moving", "has size (1, 1, 1)"),
    (_single_slice, "--fixed", "is a single slice (size (24, 20, 1))"),
    (_nan_voxels, "--moving", "contains 3 NaN/inf voxels"),
    (_constant, "--fixed", "is constant"),
    (_folder_without_dicom, "--moving", "is a folder without a DICOM series"),
]


@pytest.mark.parametrize(
    "make, option, expected", IMAGE_CASES, ids=[f"{make.__name__.strip('_')}{option}" for make, option, _ in IMAGE_CASES]
)
def test_bad_image_names_the_option_and_the_file(make, option, expected, tmp_path, inputs, out, capsys):
    bad_inputs = tmp_path / "bad"
    bad_inputs.mkdir()
    bad = make(bad_inputs)
    args = pair(inputs, **{option.lstrip("-"): bad})
    line = register_fails(args + FAST, capsys, inputs, out)
    assert f"{option} {bad}: {expected}" in line
    assert os.listdir(out) == []


def test_2d_fixed_with_3d_moving(inputs, out, capsys):
    line = register_fails(pair(inputs, fixed=inputs / "fixed2d.nii.gz") + FAST, capsys, inputs, out)
    assert f"--fixed {inputs / 'fixed2d.nii.gz'} and --moving {inputs / 'moving.nii.gz'}" in line
    assert "are 2D and 3D" in line
    assert os.listdir(out) == []


# ---------------------------------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture
def model(inputs, tmp_path) -> Path:
    """A private copy of the tiny model (weights + card) that a test may damage."""
    folder = tmp_path / "model"
    folder.mkdir()
    for name in ("tiny.safetensors", "tiny.json"):
        (folder / name).write_bytes((inputs / "model" / name).read_bytes())
    return folder / "tiny.safetensors"


def _card(weights: Path) -> dict:
    return json.loads(weights.with_suffix(".json").read_text())


def _set_card(weights: Path, **entries) -> None:
    weights.with_suffix(".json").write_text(json.dumps({**_card(weights), **entries}))


def _overwrite_middle(weights: Path) -> None:
    data = bytearray(weights.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 16] = bytes(16)
    weights.write_bytes(bytes(data))


def _truncate(weights: Path) -> None:
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])


def _wrong_sha256(weights: Path) -> None:
    _set_card(weights, sha256="0" * 64)


def _card_missing(weights: Path) -> None:
    weights.with_suffix(".json").unlink()


def _card_not_json(weights: Path) -> None:
    weights.with_suffix(".json").write_text('{"name": "tiny", "sha256": ')


def _garbage_with_matching_sha(weights: Path) -> None:
    """Not safetensors at all, but the card's sha256 was updated to match: the reader must refuse it cleanly."""
    weights.write_bytes(b"\xff" * 64 + b"not a safetensors file")
    _set_card(weights, sha256=hashlib.sha256(weights.read_bytes()).hexdigest())


def _weights_missing(weights: Path) -> None:
    weights.unlink()


@pytest.mark.parametrize(
    "damage, expected",
    [
        (_overwrite_middle, "do not match the sha256 in its card"),
        (_truncate, "do not match the sha256 in its card"),
        (_wrong_sha256, "do not match the sha256 in its card (expected 000000000000"),
        (_card_missing, "tiny.json is missing"),
        (_card_not_json, "tiny.json is not valid JSON"),
        (_garbage_with_matching_sha, "cannot be read as safetensors"),
        (_weights_missing, "does not exist"),
    ],
    ids=["bytes-overwritten", "truncated", "wrong-sha256", "card-missing", "card-not-json", "not-safetensors",
         "weights-missing"],
)
def test_damaged_model_file(damage, expected, model, inputs, out, capsys):
    damage(model)
    line = register_fails(pair(inputs) + ["--model", str(model)], capsys, inputs, out)
    assert line.startswith(f"metareg register: error: --model {model}: ")
    assert expected in line
    assert os.listdir(out) == []


def test_corrupted_weights_error_names_the_file_and_says_what_to_do(model, inputs, out, capsys):
    _overwrite_middle(model)
    line = register_fails(pair(inputs) + ["--model", str(model)], capsys, inputs, out)
    assert f"model weights {model} do not match" in line
    assert "corrupted or was modified" in line and "restore it" in line


def test_unknown_model_name(inputs, out, capsys):
    line = register_fails(pair(inputs) + ["--model", "no-such-model"], capsys, inputs, out)
    assert "--model no-such-model: unknown model 'no-such-model'" in line
    assert "metareg models" in line


def test_3d_model_on_2d_images(model, inputs, out, capsys):
    args = pair(inputs, fixed=inputs / "fixed2d.nii.gz", moving=inputs / "moving2d.nii.gz") + ["--model", str(model)]
    line = register_fails(args, capsys, inputs, out)
    assert f"--model {model}" in line
    assert "3-D model but the images are 2-D" in line


# ---------------------------------------------------------------------------------------------------------------------
# Options
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "extra, expected",
    [
        (["--adapt-steps", "3"], "--adapt-steps: test-time adaptation needs a network"),
        (["--method", "network"], "--method network: needs --model"),
        (["--iterations", "abc"], "--iterations abc: must be comma-separated integers"),
        (["--iterations", "2,-1"], "--iterations: must be >= 0, got -1"),
        (["--smoothness", "-5"], "--smoothness: must be >= 0, got -5"),
        (["--smoothness", "nan"], "--smoothness: must be a finite number, got nan"),
        (["--smoothness", "inf"], "--smoothness: must be a finite number, got inf"),
        (["--adapt-lr", "0.01"], "--adapt-lr: is the step size of test-time adaptation, which needs a network"),
        (["--refine-steps", "5"], "--refine-steps: refinement starts from a network's output"),
    ],
    ids=["adapt-steps-without-model", "network-without-model", "iterations-abc", "iterations-negative",
         "smoothness-negative", "smoothness-nan", "smoothness-inf", "adapt-lr-without-model", "refine-without-model"],
)
def test_bad_option(extra, expected, inputs, out, capsys):
    line = register_fails(pair(inputs) + extra, capsys, inputs, out)
    assert expected in line
    assert os.listdir(out) == []


def test_model_with_iterative_method(model, inputs, out, capsys):
    line = register_fails(pair(inputs) + ["--model", str(model), "--method", "iterative"], capsys, inputs, out)
    assert "--model with --method iterative" in line


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_device_cuda_without_a_gpu(inputs, out, capsys):
    line = register_fails(pair(inputs) + FAST + ["--device", "cuda"], capsys, inputs, out)
    assert "--device cuda: no CUDA GPU is available" in line
    assert os.listdir(out) == []


def test_unknown_device_is_refused_by_the_parser(inputs, out, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["register", *pair(inputs), "--device", "gpu", *outputs(out)])
    assert exit_info.value.code == 2
    assert "argument --device: invalid choice: 'gpu'" in capsys.readouterr().err
    assert os.listdir(out) == []


# ---------------------------------------------------------------------------------------------------------------------
# Landmarks
# ---------------------------------------------------------------------------------------------------------------------


def test_landmarks_without_common_labels(tmp_path, inputs, out, capsys):
    fixed_points = inputs / "fixed_points.csv"
    moving_points = write_points(tmp_path / "other_labels.csv", ["X", "Y"], [(0.0, 0.0, 0.0), (1.0, 2.0, 3.0)])
    args = pair(inputs) + FAST + ["--fixed-landmarks", str(fixed_points), "--moving-landmarks", str(moving_points)]
    line = register_fails(args, capsys, inputs, out)
    assert f"--fixed-landmarks {fixed_points}" in line and f"--moving-landmarks {moving_points}" in line
    assert "share no labels (fixed: 'A', 'B', 'C'; moving: 'X', 'Y')" in line


@pytest.mark.parametrize(
    "name, text, expected",
    [
        ("no_header.csv", "1.0,2.0,3.0\n4.0,5.0,6.0\n", "header lacks label"),
        ("short_row.csv", "label,x,y,z\nA,1.0,2.0\n", "line 2: expected 4 columns, found 3"),
        ("words.csv", "label,x,y,z\nA,one,two,three\n", "line 2: coordinates ['one', 'two', 'three'] are not numbers"),
        ("broken.mrk.json", '{"markups": [', "is not valid JSON"),
        ("points.txt", "A 1 2 3\n", "unknown landmark suffix '.txt'"),
        ("nothing.csv", "label,x,y,z\n", "holds no landmark points"),
        ("twice.csv", "label,x,y,z\nA,1,2,3\nA,4,5,6\n", "has duplicated labels 'A'"),
        ("absent.csv", None, "does not exist"),
    ],
    ids=["no-header", "short-row", "not-numbers", "broken-json", "unknown-suffix", "no-points", "duplicate-labels",
         "missing"],
)
def test_malformed_moving_landmarks(name, text, expected, tmp_path, inputs, out, capsys):
    bad = tmp_path / name
    if text is not None:
        bad.write_text(text)
    args = pair(inputs) + FAST + ["--fixed-landmarks", str(inputs / "fixed_points.csv"), "--moving-landmarks", str(bad)]
    line = register_fails(args, capsys, inputs, out)
    assert f"--moving-landmarks {bad}" in line
    assert expected in line
    assert os.listdir(out) == []


def test_only_one_landmark_file(inputs, out, capsys):
    args = pair(inputs) + FAST + ["--fixed-landmarks", str(inputs / "fixed_points.csv")]
    line = register_fails(args, capsys, inputs, out)
    assert "--fixed-landmarks" in line and "and --moving-landmarks: give both or neither" in line


# ---------------------------------------------------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------------------------------------------------


def test_output_folder_that_does_not_exist(inputs, out, capsys):
    target = out / "not_created" / "field.nii.gz"
    line = register_fails(pair(inputs) + FAST + ["--field", str(target)], capsys, inputs, out)
    assert f"--field {target}: folder {target.parent} does not exist" in line
    assert os.listdir(out) == []


def test_output_inside_a_file(tmp_path, inputs, out, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder\n")
    target = blocker / "report.json"
    line = register_fails(pair(inputs) + FAST + ["--report", str(target)], capsys, inputs, out)
    assert f"--report {target}: folder {blocker} does not exist" in line
    assert blocker.read_text() == "not a folder\n"


def test_output_path_that_is_a_folder(inputs, out, capsys):
    (out / "warped.nii.gz").mkdir()
    line = register_fails(pair(inputs) + FAST, capsys, inputs, out)
    assert f"--warped {out / 'warped.nii.gz'}: is a folder" in line
    assert os.listdir(out) == ["warped.nii.gz"] and os.listdir(out / "warped.nii.gz") == []


def test_output_folder_not_writable(tmp_path, inputs, out, capsys, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    if os.geteuid() == 0:  # root writes anywhere: make the permission check see what a normal user would
        real_access = os.access
        monkeypatch.setattr(os, "access", lambda path, mode, **kw: False if Path(path) == locked and mode & os.W_OK
                            else real_access(path, mode, **kw))
    try:
        target = locked / "report.json"
        line = register_fails(pair(inputs) + FAST + ["--report", str(target)], capsys, inputs, out)
        assert f"--report {target}: folder {locked} is not writable" in line
    finally:
        locked.chmod(0o755)
    assert os.listdir(out) == [] and os.listdir(locked) == []


def test_transform_with_an_image_suffix(inputs, out, capsys):
    """``--transform out.png``: refused; the outputs that existed before the run are left exactly as they were."""
    (out / "warped.nii.gz").write_bytes(b"an older result the user keeps")
    (out / "report.json").write_text('{"older": true}\n')
    args = pair(inputs) + FAST + ["--warped", str(out / "warped.nii.gz"), "--field", str(out / "field.nii.gz"),
                                  "--transform", str(out / "out.png"), "--report", str(out / "report.json"), "--quiet"]
    line = fails_cleanly(["register", *args], capsys, out, inputs)
    assert f"--transform {out / 'out.png'}: give an ITK transform file name ending in .h5" in line
    assert sorted(os.listdir(out)) == ["report.json", "warped.nii.gz"]
    assert (out / "warped.nii.gz").read_bytes() == b"an older result the user keeps"


def test_write_that_fails_after_other_outputs_were_written(inputs, out, capsys):
    """The field cannot be stored as PNG; that is found out only when writing it, after the warped image was written.
    The new warped image is removed again and the file it replaced comes back."""
    (out / "warped.nii.gz").write_bytes(b"an older result the user keeps")
    args = pair(inputs) + FAST + ["--warped", str(out / "warped.nii.gz"), "--field", str(out / "field.png"),
                                  "--report", str(out / "report.json")]  # no --quiet: the progress bar is shown
    line = fails_cleanly(["register", *args], capsys, out, inputs)
    assert f"--field {out / 'field.png'}: SimpleITK cannot write this 3D vector" in line
    assert "use a format that holds it" in line
    assert os.listdir(out) == ["warped.nii.gz"]
    assert (out / "warped.nii.gz").read_bytes() == b"an older result the user keeps"


def test_write_that_fails_removes_companion_files(inputs, out, capsys):
    """A MetaImage output is two files (.mhd header, .zraw data); both go when a later output fails."""
    args = pair(inputs) + FAST + ["--warped", str(out / "warped.mhd"), "--field", str(out / "field.png"), "--quiet"]
    line = fails_cleanly(["register", *args], capsys, out, inputs)
    assert f"--field {out / 'field.png'}: SimpleITK cannot write" in line
    assert os.listdir(out) == []


def test_same_output_file_twice(inputs, out, capsys):
    line = register_fails(pair(inputs) + FAST + ["--field", str(out / "warped.nii.gz")], capsys, inputs, out)
    assert f"--field {out / 'warped.nii.gz'}: is also given as --warped" in line
    assert os.listdir(out) == []


def test_interrupt_while_writing_leaves_nothing(inputs, out, capsys, monkeypatch):
    import metareg.app.cli

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(metareg.app.cli, "write_transform", interrupted)
    (out / "field.nii.gz").write_bytes(b"older field")
    before = snapshot(out)
    rc = main(["register", *pair(inputs), *FAST, *outputs(out), "--quiet"])
    assert rc == 130
    assert "interrupted; no outputs were written" in capsys.readouterr().err
    assert snapshot(out) == before


# ---------------------------------------------------------------------------------------------------------------------
# The shell, a successful run, evaluate
# ---------------------------------------------------------------------------------------------------------------------


def test_exit_status_reaches_the_shell(inputs, out):
    script = Path(sys.executable).with_name("metareg")
    command = [str(script)] if script.is_file() else [sys.executable, "-m", "metareg.app.cli"]
    missing = inputs / "missing.nii.gz"
    result = subprocess.run([*command, "register", *pair(inputs, fixed=missing), *outputs(out)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert f"metareg register: error: --fixed {missing}: does not exist (check the path)" in result.stderr.splitlines()
    assert "Traceback" not in result.stderr
    assert os.listdir(out) == []


def test_success_writes_every_output_and_leaves_inputs_alone(inputs, out, capsys):
    before = snapshot(inputs)
    (out / "report.json").write_text("an older report, to be replaced\n")
    args = pair(inputs) + FAST + outputs(out) + [
        "--fixed-landmarks", str(inputs / "fixed_points.csv"), "--moving-landmarks", str(inputs / "moving_points.csv"),
        "--mapped-landmarks", str(out / "mapped.fcsv")]
    assert main(["register", *args]) == 0, capsys.readouterr().err
    assert "NCC" in capsys.readouterr().out
    assert snapshot(inputs) == before
    assert sorted(os.listdir(out)) == ["field.nii.gz", "fixed_to_moving.h5", "jacobian.nii.gz", "mapped.fcsv",
                                       "report.json", "warped.nii.gz"]
    fixed = sitk.ReadImage(str(inputs / "fixed.nii.gz"))
    for name, components in (("warped.nii.gz", 1), ("field.nii.gz", 3), ("jacobian.nii.gz", 1)):
        image = sitk.ReadImage(str(out / name))
        assert image.GetSize() == fixed.GetSize() and image.GetNumberOfComponentsPerPixel() == components
        np.testing.assert_allclose(image.GetSpacing(), SPACING_3D, rtol=1e-6)
    assert isinstance(sitk.ReadTransform(str(out / "fixed_to_moving.h5")), sitk.Transform)
    report = json.loads((out / "report.json").read_text())
    assert report["fixed"] == str(inputs / "fixed.nii.gz") and report["method"] == "iterative"
    assert report["tre_after"]["n"] == 3


def write_pairs(path: Path, rows: list[tuple[str, str]]) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["fixed", "moving"])
        writer.writerows(rows)
    return path


def test_evaluate_reports_a_missing_file_in_its_row_and_goes_on(tmp_path, inputs, out, capsys):
    missing = tmp_path / "gone.nii.gz"
    pairs = write_pairs(tmp_path / "pairs.csv", [(str(inputs / "fixed.nii.gz"), str(missing)),
                                                 (str(inputs / "fixed.nii.gz"), str(inputs / "moving.nii.gz"))])
    before = snapshot(inputs)
    rc = main(["evaluate", "--pairs", str(pairs), *FAST, "--out-csv", str(out / "per_pair.csv"),
               "--summary", str(out / "summary.json"), "--quiet"])
    assert rc == 1  # a row failed: the batch went on, and says so in its exit status
    assert f"pair 0 (line 2) failed: pair 0 (line 2) moving {missing}: does not exist" in capsys.readouterr().err
    assert snapshot(inputs) == before
    with open(out / "per_pair.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["status"] for row in rows] == ["error", "ok"]
    assert f"pair 0 (line 2) moving {missing}: does not exist" in rows[0]["error"]
    assert rows[1]["error"] == "" and float(rows[1]["ncc_after"]) > 0.5
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["pairs"], summary["succeeded"], summary["failed"]) == (2, 1, 1)
    assert sorted(os.listdir(out)) == ["per_pair.csv", "summary.json"]


def test_evaluate_without_a_pairs_file(tmp_path, inputs, out, capsys):
    pairs = tmp_path / "no_pairs.csv"
    argv = ["evaluate", "--pairs", str(pairs), *FAST, "--out-csv", str(out / "per_pair.csv"),
            "--summary", str(out / "summary.json"), "--quiet"]
    line = fails_cleanly(argv, capsys, out, inputs, command="evaluate")
    assert f"--pairs {pairs}: does not exist" in line
    assert os.listdir(out) == []
