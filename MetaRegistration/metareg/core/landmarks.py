"""Landmark sets: read, write and pair them by label.

Points are held in physical **LPS millimetres**, the ITK/SimpleITK convention, so they can be mapped through an ITK
displacement field directly. For 2D images z is 0. Files may store RAS instead (RAS = LPS with x and y negated); the
readers convert, and the writers convert when asked.

Formats, chosen by suffix:

- ``.fcsv``: Slicer Markups fiducial CSV. ``# CoordinateSystem = LPS|RAS`` (older files: ``0`` = RAS, ``1`` = LPS;
  absent = RAS, as in Slicer); ``# columns = ...`` names the columns (absent = Slicer's standard
  ``id,x,y,z,ow,ox,oy,oz,vis,sel,lock,label,desc,associatedNodeID``). Written as Slicer 4.11+ files.
- ``.mrk.json`` (and any other ``.json``): Slicer Markups JSON. The first markup that has control points is read;
  ``coordinateSystem`` absent = LPS, as in Slicer; control points whose ``positionStatus`` is not ``"defined"``
  (points placed in Slicer but never positioned, or only previewed) are skipped.
- ``.csv``: header ``label,x,y,z`` (other columns ignored), optionally preceded by ``# coordinateSystem = LPS`` or
  ``# coordinateSystem = RAS``. **Without that line the coordinates are read as LPS.** Written files always carry it.

Numbers are written with full ``repr`` precision, so a write/read round trip returns the same float64 values.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from metareg.core.errors import InputError
from metareg.core.imageio import atomic_output

MARKUPS_SCHEMA = (
    "https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/Resources/Schema/"
    "markups-schema-v1.0.3.json#"
)
FCSV_COLUMNS = ("id", "x", "y", "z", "ow", "ox", "oy", "oz", "vis", "sel", "lock", "label", "desc", "associatedNodeID")
COORDINATE_SYSTEMS = ("LPS", "RAS")
_RAS_TO_LPS = np.array([-1.0, -1.0, 1.0])  # the same flip converts either way
_UNITS_TO_MM = {"mm": 1.0, "um": 1e-3}


@dataclass(frozen=True)
class Landmarks:
    """Labelled points in physical LPS millimetres.

    Attributes:
        labels: one label per point, as in the file.
        points_lps: (N, 3) float64, physical LPS mm (read-only array; z is 0 for 2D images).
    """

    labels: tuple[str, ...]
    points_lps: np.ndarray

    def __post_init__(self) -> None:
        points = np.array(self.points_lps, dtype=np.float64).reshape(-1, 3)
        points.setflags(write=False)
        labels = tuple(str(label) for label in self.labels)
        if len(labels) != len(points):
            raise ValueError(f"{len(labels)} labels for {len(points)} points")
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "points_lps", points)

    def __len__(self) -> int:
        return len(self.labels)

    def to_ras(self) -> np.ndarray:
        """The points in RAS mm, (N, 3): x and y negated."""
        return self.points_lps * _RAS_TO_LPS


def read_landmarks(path: str | Path, name: str = "landmarks") -> Landmarks:
    """Read a landmark file (``.fcsv``, ``.mrk.json``/``.json``, ``.csv``) into LPS mm.

    Args:
        path: the file; its suffix picks the format.
        name: how errors name the input, followed by the path (e.g. ``"--fixed-landmarks"``).

    Raises:
        InputError: the file is missing, has an unknown suffix, is malformed, or holds no points or non-finite ones.
    """
    path = Path(path)
    input_name = f"{name} {path}"
    reader = _READERS[_format_of(path, input_name)]
    if not path.is_file():
        raise InputError(input_name, "does not exist or is not a file", "check the path")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(input_name, f"cannot be read ({error})") from error
    labels, points, system = reader(text, input_name)
    if not labels:
        raise InputError(input_name, "holds no landmark points", "place at least one labelled point")
    lps = np.array(points, dtype=np.float64)
    bad = [label for label, point in zip(labels, lps) if not np.all(np.isfinite(point))]
    if bad:
        raise InputError(input_name, f"has NaN or infinite coordinates for {_listing(bad)}", "fix or remove them")
    if system == "RAS":
        lps = lps * _RAS_TO_LPS
    return Landmarks(tuple(labels), lps)


def write_landmarks(landmarks: Landmarks, path: str | Path, coordinate_system: str = "LPS") -> None:
    """Write landmarks in the format chosen by the suffix, in ``"LPS"`` or ``"RAS"`` mm.

    The file appears complete or not at all (written to a temporary file beside it, then renamed).

    Raises:
        InputError: unknown suffix or coordinate system, or non-finite points.
        OutputError: the parent folder is missing or not writable, or the write fails.
    """
    path = Path(path)
    kind = _format_of(path, f"output landmarks {path}")
    if coordinate_system not in COORDINATE_SYSTEMS:
        raise InputError("coordinate_system", f"is {coordinate_system!r}", "use 'LPS' or 'RAS'")
    if not np.all(np.isfinite(landmarks.points_lps)):
        raise InputError(f"landmarks for {path}", "have NaN or infinite coordinates", "fix them before writing")
    points = landmarks.points_lps if coordinate_system == "LPS" else landmarks.to_ras()
    text = _WRITERS[kind](landmarks.labels, points, coordinate_system)
    with atomic_output(path, "output landmarks") as temporary:
        temporary.write_text(text, encoding="utf-8")


def match_landmarks(
    fixed: Landmarks,
    moving: Landmarks,
    fixed_name: str = "fixed landmarks",
    moving_name: str = "moving landmarks",
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Pair fixed and moving landmarks by label.

    Returns:
        The shared labels in the fixed set's order, and the (K, 3) LPS mm points of each set in that order. Points
        whose label is in only one set are dropped; compare ``len(labels)`` with ``len(fixed)`` to see how many.

    Raises:
        InputError: a label occurs twice within one set, or the sets share no label.
    """
    for landmarks, name in ((fixed, fixed_name), (moving, moving_name)):
        duplicated = sorted({label for label in landmarks.labels if landmarks.labels.count(label) > 1})
        if duplicated:
            problem = f"has duplicated labels {_listing(duplicated)}"
            raise InputError(name, problem, "give every landmark a unique label")
    moving_index = {label: index for index, label in enumerate(moving.labels)}
    shared = [label for label in fixed.labels if label in moving_index]
    if not shared:
        raise InputError(
            f"{fixed_name} and {moving_name}",
            f"share no labels (fixed: {_listing(fixed.labels)}; moving: {_listing(moving.labels)})",
            "landmarks are paired by label; name corresponding points the same in both sets",
        )
    fixed_index = {label: index for index, label in enumerate(fixed.labels)}
    fixed_points = fixed.points_lps[[fixed_index[label] for label in shared]]
    moving_points = moving.points_lps[[moving_index[label] for label in shared]]
    return shared, fixed_points, moving_points


# --- formats -------------------------------------------------------------------------------------------------------

_Parsed = tuple[list[str], list[list[float]], str]  # labels, points as stored, "LPS" or "RAS"


def _format_of(path: Path, input_name: str) -> str:
    suffix = path.suffix.lower()
    if suffix in (".fcsv", ".csv", ".json"):
        return suffix
    raise InputError(input_name, f"has an unknown landmark suffix {suffix!r}", "use .fcsv, .mrk.json, .json or .csv")


def _listing(labels, limit: int = 8) -> str:
    labels = list(labels)
    shown = ", ".join(repr(label) for label in labels[:limit])
    return shown + (f" and {len(labels) - limit} more" if len(labels) > limit else "")


def _coordinates(values, input_name: str, where: str) -> list[float]:
    if not isinstance(values, (list, tuple)) or len(values) != 3:
        raise InputError(input_name, f"{where}: expected 3 coordinates x, y, z, found {values!r}")
    try:
        return [float(value) for value in values]
    except (TypeError, ValueError) as error:
        raise InputError(input_name, f"{where}: coordinates {values!r} are not numbers") from error


def _coordinate_system(value: str, input_name: str, key: str) -> str:
    system = {"0": "RAS", "1": "LPS"}.get(value.strip(), value.strip().upper())
    if system not in COORDINATE_SYSTEMS:
        raise InputError(input_name, f"has {key} = {value.strip()!r}", "use LPS or RAS")
    return system


def _header_value(line: str) -> tuple[str, str]:
    """``"# Key = value"`` -> ``("key", "value")``; ``("", "")`` for other comments."""
    key, equals, value = line.lstrip("#").partition("=")
    return (key.strip().lower(), value.strip()) if equals else ("", "")


def _rows(lines: list[tuple[int, str]], input_name: str) -> list[tuple[int, list[str]]]:
    try:
        return [(number, next(csv.reader([line]))) for number, line in lines]
    except csv.Error as error:
        raise InputError(input_name, f"is not valid CSV ({error})") from error


def _read_fcsv(text: str, input_name: str) -> _Parsed:
    system, columns, data = "RAS", list(FCSV_COLUMNS), []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.startswith("#"):
            key, value = _header_value(line)
            if key == "coordinatesystem":
                system = _coordinate_system(value, input_name, "CoordinateSystem")
            elif key == "columns":
                columns = [column.strip() for column in value.split(",")]
        elif line.strip():
            data.append((number, line))
    missing = [column for column in ("x", "y", "z", "label") if column not in columns]
    if missing:
        raise InputError(input_name, f"'# columns' lacks {', '.join(missing)}", "save it again from Slicer")
    x, label = columns.index("x"), columns.index("label")
    labels, points = [], []
    for number, row in _rows(data, input_name):
        if len(row) <= max(x + 2, label):
            raise InputError(input_name, f"line {number}: expected {len(columns)} columns, found {len(row)}")
        labels.append(row[label])
        points.append(_coordinates(row[x : x + 3], input_name, f"line {number}"))
    return labels, points, system


def _read_markups_json(text: str, input_name: str) -> _Parsed:
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        raise InputError(input_name, f"is not valid JSON ({error})") from error
    markups = document.get("markups") if isinstance(document, dict) else None
    if not isinstance(markups, list):
        raise InputError(input_name, "has no 'markups' list", "save it from Slicer as a Markups JSON file")
    markup = next((m for m in markups if isinstance(m, dict) and m.get("controlPoints")), None)
    if markup is None:
        return [], [], "LPS"
    system = _coordinate_system(str(markup.get("coordinateSystem", "LPS")), input_name, "coordinateSystem")
    units = markup.get("coordinateUnits", "mm")
    units = units[0] if isinstance(units, list) and units else units
    if units not in _UNITS_TO_MM:
        raise InputError(input_name, f"has coordinateUnits {units!r}", "use mm")
    labels, points = [], []
    for number, point in enumerate(markup["controlPoints"], start=1):
        if not isinstance(point, dict) or "position" not in point:
            raise InputError(input_name, f"control point {number} has no position")
        if point.get("positionStatus", "defined") != "defined":
            continue
        labels.append(str(point.get("label", "")))
        position = _coordinates(point["position"], input_name, f"control point {number}")
        points.append([c * _UNITS_TO_MM[units] for c in position])
    return labels, points, system


def _read_csv(text: str, input_name: str) -> _Parsed:
    system, data = "LPS", []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.startswith("#"):
            key, value = _header_value(line)
            if key == "coordinatesystem":
                system = _coordinate_system(value, input_name, "coordinateSystem")
        elif line.strip():
            data.append((number, line))
    rows = _rows(data, input_name)
    if not rows:
        return [], [], system
    header = [column.strip().lower() for column in rows[0][1]]
    missing = [column for column in ("label", "x", "y", "z") if column not in header]
    if missing:
        raise InputError(input_name, f"header lacks {', '.join(missing)}", "the first row must be label,x,y,z")
    label, xyz = header.index("label"), [header.index(axis) for axis in "xyz"]
    labels, points = [], []
    for number, row in rows[1:]:
        if len(row) != len(header):
            raise InputError(input_name, f"line {number}: expected {len(header)} columns, found {len(row)}")
        labels.append(row[label].strip())
        points.append(_coordinates([row[i] for i in xyz], input_name, f"line {number}"))
    return labels, points, system


def _csv_text(rows: list[list[str]], preamble: str) -> str:
    buffer = io.StringIO()
    buffer.write(preamble)
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue()


def _write_fcsv(labels: tuple[str, ...], points: np.ndarray, system: str) -> str:
    preamble = (
        "# Markups fiducial file version = 4.11\n"
        f"# CoordinateSystem = {system}\n"
        f"# columns = {','.join(FCSV_COLUMNS)}\n"
    )
    rows = [
        [str(index), *map(repr, map(float, point)), "0", "0", "0", "1", "1", "1", "0", label, "", ""]
        for index, (label, point) in enumerate(zip(labels, points), start=1)
    ]
    return _csv_text(rows, preamble)


def _write_csv(labels: tuple[str, ...], points: np.ndarray, system: str) -> str:
    rows = [["label", "x", "y", "z"]] + [[label, *map(repr, map(float, point))] for label, point in zip(labels, points)]
    return _csv_text(rows, f"# coordinateSystem = {system}\n")


def _write_markups_json(labels: tuple[str, ...], points: np.ndarray, system: str) -> str:
    control_points = [
        {
            "id": str(index),
            "label": label,
            "description": "",
            "associatedNodeID": "",
            "position": [float(c) for c in point],
            "orientation": [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
            "selected": True,
            "locked": False,
            "visibility": True,
            "positionStatus": "defined",
        }
        for index, (label, point) in enumerate(zip(labels, points), start=1)
    ]
    markup = {
        "type": "Fiducial",
        "coordinateSystem": system,
        "coordinateUnits": "mm",
        "locked": False,
        "fixedNumberOfControlPoints": False,
        "labelFormat": "%N-%d",
        "lastUsedControlPointNumber": len(control_points),
        "controlPoints": control_points,
        "measurements": [],
    }
    return json.dumps({"@schema": MARKUPS_SCHEMA, "markups": [markup]}, indent=4) + "\n"


_READERS = {".fcsv": _read_fcsv, ".json": _read_markups_json, ".csv": _read_csv}
_WRITERS = {".fcsv": _write_fcsv, ".json": _write_markups_json, ".csv": _write_csv}
