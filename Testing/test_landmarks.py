"""Landmark files: exact round trips, LPS/RAS handling, Slicer's old and new formats, pairing and errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from metareg.core.errors import InputError, OutputError
from metareg.core.landmarks import Landmarks, match_landmarks, read_landmarks, write_landmarks

# Values that only survive a round trip written with full precision.
LANDMARKS = Landmarks(
    ("A", "B, with comma", "C"),
    np.array([[1.0, 2.0, 3.0], [-12.345678901234567, 0.1 + 0.2, 1e-7], [100.0 / 3.0, -0.0, 2.0**0.5]]),
)
SUFFIXES = [".fcsv", ".mrk.json", ".csv"]


@pytest.mark.parametrize("coordinate_system", ["LPS", "RAS"])
@pytest.mark.parametrize("suffix", SUFFIXES)
def test_write_read_round_trip_is_exact(tmp_path, suffix, coordinate_system):
    path = tmp_path / f"points{suffix}"
    write_landmarks(LANDMARKS, path, coordinate_system)
    read = read_landmarks(path)
    assert read.labels == LANDMARKS.labels
    np.testing.assert_array_equal(read.points_lps, LANDMARKS.points_lps)
    other = "RAS" if coordinate_system == "LPS" else "LPS"
    assert coordinate_system in path.read_text() and other not in path.read_text()


def test_round_trip_through_every_format(tmp_path):
    landmarks = LANDMARKS
    for index, suffix in enumerate(SUFFIXES * 2):
        path = tmp_path / f"step{index}{suffix}"
        write_landmarks(landmarks, path, "RAS" if index % 2 else "LPS")
        landmarks = read_landmarks(path)
    np.testing.assert_array_equal(landmarks.points_lps, LANDMARKS.points_lps)


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_ras_files_store_negated_x_and_y(tmp_path, suffix):
    path = tmp_path / f"one{suffix}"
    write_landmarks(Landmarks(("P",), np.array([[-1.0, -2.0, 3.0]])), path, "RAS")
    text = path.read_text()
    if suffix == ".mrk.json":
        assert json.loads(text)["markups"][0]["controlPoints"][0]["position"] == [1.0, 2.0, 3.0]
    else:
        assert "1.0,2.0,3.0" in text and "-1.0" not in text


def test_to_ras():
    np.testing.assert_array_equal(Landmarks(("P",), [[-1.0, -2.0, 3.0]]).to_ras(), [[1.0, 2.0, 3.0]])


def test_hand_written_ras_files_read_as_lps(tmp_path):
    (tmp_path / "ras.csv").write_text("# coordinateSystem = RAS\nlabel,x,y,z\nP,1,2,3\n")
    (tmp_path / "lps.csv").write_text("label,x,y,z\nP,1,2,3\n")  # no convention line: LPS
    (tmp_path / "ras.fcsv").write_text(
        "# Markups fiducial file version = 4.11\n# CoordinateSystem = RAS\n"
        "# columns = id,x,y,z,ow,ox,oy,oz,vis,sel,lock,label,desc,associatedNodeID\n"
        "1,1,2,3,0,0,0,1,1,1,0,P,,\n"
    )
    np.testing.assert_array_equal(read_landmarks(tmp_path / "ras.csv").points_lps, [[-1.0, -2.0, 3.0]])
    np.testing.assert_array_equal(read_landmarks(tmp_path / "lps.csv").points_lps, [[1.0, 2.0, 3.0]])
    np.testing.assert_array_equal(read_landmarks(tmp_path / "ras.fcsv").points_lps, [[-1.0, -2.0, 3.0]])


@pytest.mark.parametrize("code, expected", [("0", [-1.0, -2.0, 3.0]), ("1", [1.0, 2.0, 3.0])])
def test_old_fcsv_numeric_coordinate_system(tmp_path, code, expected):
    path = tmp_path / "old.fcsv"
    path.write_text(
        f"# Markups fiducial file version = 4.6\n# CoordinateSystem = {code}\n"
        "# columns = id,x,y,z,ow,ox,oy,oz,vis,sel,lock,label,desc,associatedNodeID\n"
        "vtkMRMLMarkupsFiducialNode_0,1,2,3,0,0,0,1,1,1,0,F-1,,vtkMRMLScalarVolumeNode1\n"
    )
    landmarks = read_landmarks(path)
    assert landmarks.labels == ("F-1",)
    np.testing.assert_array_equal(landmarks.points_lps, [expected])


def test_fcsv_without_coordinate_system_is_ras(tmp_path):
    path = tmp_path / "bare.fcsv"
    path.write_text("vtkMRMLMarkupsFiducialNode_0,1,2,3,0,0,0,1,1,1,0,F-1,,\n")
    np.testing.assert_array_equal(read_landmarks(path).points_lps, [[-1.0, -2.0, 3.0]])


def test_mrk_json_skips_undefined_points_and_reads_ras(tmp_path):
    path = tmp_path / "points.mrk.json"
    points = [
        {"id": "1", "label": "A", "position": [1.0, 2.0, 3.0], "positionStatus": "defined"},
        {"id": "2", "label": "B", "position": [0.0, 0.0, 0.0], "positionStatus": "undefined"},
        {"id": "3", "label": "C", "position": [4.0, 5.0, 6.0]},  # no status: defined
    ]
    document = {"markups": [{"type": "Fiducial", "controlPoints": []},
                            {"type": "Fiducial", "coordinateSystem": "RAS", "controlPoints": points}]}
    path.write_text(json.dumps(document))
    landmarks = read_landmarks(path)
    assert landmarks.labels == ("A", "C")
    np.testing.assert_array_equal(landmarks.points_lps, [[-1.0, -2.0, 3.0], [-4.0, -5.0, 6.0]])


def test_written_mrk_json_has_slicer_fields(tmp_path):
    path = tmp_path / "points.mrk.json"
    write_landmarks(LANDMARKS, path)
    document = json.loads(path.read_text())
    assert "markups-schema-v1.0.3.json" in document["@schema"]
    markup = document["markups"][0]
    assert (markup["type"], markup["coordinateSystem"], markup["coordinateUnits"]) == ("Fiducial", "LPS", "mm")
    point = markup["controlPoints"][1]
    assert point["label"] == "B, with comma" and point["positionStatus"] == "defined"
    assert point["orientation"] == [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]


def test_match_landmarks_partial_overlap_in_fixed_order():
    fixed = Landmarks(("a", "b", "c"), [[0, 0, 0], [1, 1, 1], [2, 2, 2]])
    moving = Landmarks(("c", "x", "a"), [[20, 20, 20], [9, 9, 9], [10, 10, 10]])
    labels, fixed_points, moving_points = match_landmarks(fixed, moving)
    assert labels == ["a", "c"]
    np.testing.assert_array_equal(fixed_points, [[0, 0, 0], [2, 2, 2]])
    np.testing.assert_array_equal(moving_points, [[10, 10, 10], [20, 20, 20]])


def test_match_landmarks_without_shared_labels():
    fixed = Landmarks(("a",), [[0, 0, 0]])
    moving = Landmarks(("b",), [[0, 0, 0]])
    with pytest.raises(InputError, match="fixed.lm and moving.lm: share no labels"):
        match_landmarks(fixed, moving, "fixed.lm", "moving.lm")


def test_match_landmarks_duplicated_labels():
    fixed = Landmarks(("a", "b"), [[0, 0, 0], [1, 1, 1]])
    moving = Landmarks(("a", "b", "a"), [[0, 0, 0], [1, 1, 1], [2, 2, 2]])
    with pytest.raises(InputError, match="moving.lm: has duplicated labels 'a'"):
        match_landmarks(fixed, moving, "fixed.lm", "moving.lm")


@pytest.mark.parametrize(
    "file_name, text, problem",
    [
        ("points.txt", "1 2 3\n", "unknown landmark suffix"),
        ("rows.csv", "label,x,y,z\nA,1,2\n", "line 2: expected 4 columns"),
        ("header.csv", "name,x,y,z\nA,1,2,3\n", "header lacks label"),
        ("letters.csv", "label,x,y,z\nA,1,two,3\n", "line 2: coordinates"),
        ("nan.csv", "label,x,y,z\nA,1,nan,3\n", "NaN or infinite coordinates for 'A'"),
        ("empty.csv", "# coordinateSystem = LPS\nlabel,x,y,z\n", "no landmark points"),
        ("system.csv", "# coordinateSystem = IJK\nlabel,x,y,z\nA,1,2,3\n", "coordinateSystem = 'IJK'"),
        ("short.fcsv", "# CoordinateSystem = LPS\n1,2,3\n", "line 2: expected 14 columns"),
        ("broken.mrk.json", '{"markups": [', "is not valid JSON"),
        ("other.json", '{"points": []}', "no 'markups' list"),
        ("empty.mrk.json", '{"markups": [{"type": "Fiducial", "controlPoints": []}]}', "no landmark points"),
        ("bad.mrk.json", '{"markups": [{"controlPoints": [{"position": [1, 2]}]}]}', "control point 1: expected 3"),
    ],
)
def test_read_errors_name_the_file(tmp_path, file_name, text, problem):
    path = tmp_path / file_name
    path.write_text(text)
    with pytest.raises(InputError, match=problem) as raised:
        read_landmarks(path)
    assert str(path) in str(raised.value)


def test_missing_file(tmp_path):
    path = tmp_path / "absent.fcsv"
    with pytest.raises(InputError, match="does not exist") as raised:
        read_landmarks(path, name="--fixed-landmarks")
    assert str(raised.value).startswith(f"--fixed-landmarks {path}:")


def test_write_into_missing_folder(tmp_path):
    path = tmp_path / "missing" / "points.fcsv"
    with pytest.raises(OutputError, match="does not exist") as raised:
        write_landmarks(LANDMARKS, path)
    assert str(path) in str(raised.value)
    assert not path.parent.exists()


def test_failed_write_leaves_no_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    path = tmp_path / "points.csv"
    path.write_text("old contents")

    def failing_replace(source, destination):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("metareg.core.imageio.os.replace", failing_replace)
    with pytest.raises(OutputError, match="No space left on device") as raised:
        write_landmarks(LANDMARKS, path)
    assert str(path) in str(raised.value)
    assert path.read_text() == "old contents"
    assert [p.name for p in tmp_path.iterdir()] == ["points.csv"]


def test_write_rejects_bad_requests(tmp_path):
    with pytest.raises(InputError, match="'IJK'"):
        write_landmarks(LANDMARKS, tmp_path / "points.csv", "IJK")
    with pytest.raises(InputError, match="unknown landmark suffix"):
        write_landmarks(LANDMARKS, tmp_path / "points.txt")
    with pytest.raises(InputError, match="NaN"):
        write_landmarks(Landmarks(("A",), [[np.nan, 0, 0]]), tmp_path / "points.csv")
    assert list(tmp_path.iterdir()) == []


def test_mrk_json_in_micrometres_reads_as_mm(tmp_path):
    path = tmp_path / "um.mrk.json"
    markup = {"type": "Fiducial", "coordinateUnits": "um", "controlPoints": [{"label": "A", "position": [1500, -20, 3]}]}
    path.write_text(json.dumps({"markups": [markup]}))
    np.testing.assert_allclose(read_landmarks(path).points_lps, [[1.5, -0.02, 0.003]])
