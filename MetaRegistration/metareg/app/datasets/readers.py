"""Readers for the sources SimpleITK cannot read as they are: InVesalius projects, multi-frame ultrasound DICOM (its
imaged region and frames), AFIDs landmark files; and landmarks placed on high image gradients."""

from __future__ import annotations

import csv
import struct
import tarfile
from pathlib import Path
from typing import Sequence

import numpy as np
import SimpleITK as sitk

from metareg.app.datasets.archives import DataError
from metareg.app.datasets.imaging import SLICE_SIZE, smoothed_to
from metareg.core.imageio import LUMINANCE_WEIGHTS
from metareg.core.landmarks import Landmarks, read_landmarks


def read_invesalius_project(folder_or_archive: Path) -> sitk.Image:
    """The CT volume of an InVesalius 3 project (``.inv3``: a tar.gz holding ``main.plist`` and ``matrix.dat``).

    ``matrix.dat`` is a raw C-ordered (z, y, x) array whose dtype, shape and spacing (x, y, z in mm) are in
    ``main.plist``. InVesalius stores rows bottom-up: row index increases towards the patient's anterior and slice
    index towards superior (checked on Cranium.inv3: face at high rows, skull top at high slices). Left-right cannot
    be read from the file; x is taken to increase towards the patient's left (as in DICOM). Direction diag(1, -1, 1)
    in LPS, origin 0.
    """
    import plistlib

    with tarfile.open(folder_or_archive, "r:*") as tar:
        members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
        if "main.plist" not in members or "matrix.dat" not in members:
            raise DataError(f"{folder_or_archive}: not an InVesalius project (no main.plist/matrix.dat)")
        info = plistlib.loads(tar.extractfile(members["main.plist"]).read())
        matrix = info["matrix"]
        raw = tar.extractfile(members[Path(matrix["filename"]).name]).read()
    shape = tuple(int(n) for n in matrix["shape"])
    values = np.frombuffer(raw, dtype=np.dtype(matrix["dtype"]).newbyteorder("<"))
    if values.size != int(np.prod(shape)):
        raise DataError(f"{folder_or_archive}: matrix.dat holds {values.size} values, main.plist says {shape}")
    image = sitk.GetImageFromArray(values.reshape(shape).astype(np.int16))
    image.SetSpacing([float(s) for s in info["spacing"]])
    image.SetDirection((1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0))
    return image


def ultrasound_region(path: Path) -> dict | None:
    """The first region of a DICOM's Sequence of Ultrasound Regions (0018,6011): pixel bounds and spacing in mm.

    Read straight from the explicit-VR little-endian header bytes (SimpleITK does not expose nested sequences):
    RegionLocationMin/Max X0/Y0/X1/Y1 (UL) and PhysicalDeltaX/Y (FD, with PhysicalUnitsX (US) 3 = cm). None when
    absent.
    """
    head = path.read_bytes()[:1 << 20]
    pixel_data = head.find(b"\xe0\x7f\x10\x00")
    head = head[: pixel_data if pixel_data > 0 else len(head)]

    def first(tag: bytes, vr: bytes, fmt: str):
        at = head.find(tag + vr)
        return None if at < 0 else struct.unpack_from(fmt, head, at + 8)[0]

    values = {
        "x0": first(b"\x18\x00\x18\x60", b"UL", "<I"), "y0": first(b"\x18\x00\x1a\x60", b"UL", "<I"),
        "x1": first(b"\x18\x00\x1c\x60", b"UL", "<I"), "y1": first(b"\x18\x00\x1e\x60", b"UL", "<I"),
        "units_x": first(b"\x18\x00\x24\x60", b"US", "<H"),
        "dx": first(b"\x18\x00\x2c\x60", b"FD", "<d"), "dy": first(b"\x18\x00\x2e\x60", b"FD", "<d"),
    }
    if any(v is None for v in values.values()) or values["units_x"] != 3:
        return None
    return {"bounds_px": [values["x0"], values["y0"], values["x1"], values["y1"]],
            "spacing_mm": [10.0 * values["dx"], 10.0 * values["dy"]]}


def cine_frames(path: Path, spacing_mm: float, size: Sequence[int] = SLICE_SIZE) -> tuple[list[sitk.Image], dict]:
    """The frames of a multi-frame ultrasound DICOM as grey 2D images on a common ``size`` grid of ``spacing_mm``.

    Colour frames become luminance (imageio's BT.601 weights). Each frame is cropped to the ultrasound region and
    given its pixel spacing (from the DICOM's ultrasound region), then resampled (anti-aliased) to ``spacing_mm`` and
    padded/cropped around the region's centre. Without a region the whole frame is used with spacing 1.0.
    """
    cine = sitk.ReadImage(str(path))
    values = sitk.GetArrayFromImage(cine)  # (frames, rows, cols[, 3])
    if values.ndim == 4:
        values = values[..., :3].astype(np.float32) @ np.asarray(LUMINANCE_WEIGHTS, dtype=np.float32)
    region = ultrasound_region(path)
    if region:
        x0, y0, x1, y1 = region["bounds_px"]
        values = values[:, y0: y1 + 1, x0: x1 + 1]
        own_spacing = region["spacing_mm"]
    else:
        own_spacing = [1.0, 1.0]
    frames = []
    for frame in values:
        image = sitk.GetImageFromArray(frame.astype(np.float32))
        image.SetSpacing(own_spacing)
        frames.append(_resample_2d(image, spacing_mm, size))
    return frames, {"region": region, "n_frames": len(frames)}


def _resample_2d(image: sitk.Image, spacing_mm: float, size: Sequence[int]) -> sitk.Image:
    """A 2D image anti-aliased and resampled to ``spacing_mm`` on a ``size`` grid with the same centre."""
    corner = np.asarray(image.GetSize(), dtype=np.float64) - 1
    centre = np.asarray(image.TransformContinuousIndexToPhysicalPoint((corner / 2).tolist()))
    origin = centre - (np.asarray(size) - 1) * spacing_mm / 2
    background = float(sitk.GetArrayViewFromImage(image).min())
    return sitk.Resample(smoothed_to(image, [spacing_mm] * 2), [int(s) for s in size], sitk.Transform(),
                         sitk.sitkLinear, origin.tolist(), [spacing_mm] * 2, (1.0, 0.0, 0.0, 1.0), background,
                         sitk.sitkFloat32)


def high_gradient_points(image: sitk.Image, count: int, min_distance_px: float, margin_px: int,
                         mask: np.ndarray | None = None, sigma_px: float = 1.5) -> np.ndarray:
    """Up to ``count`` (x, y) LPS points of a 2D image at strong gradients, at least ``min_distance_px`` apart.

    Greedy: strongest gradient magnitude (Gaussian derivative of ``sigma_px``) first, skipping pixels closer than
    ``min_distance_px`` to a chosen one, within ``margin_px`` of the border, or outside ``mask`` (numpy (y, x) bool).
    """
    spacing = np.asarray(image.GetSpacing())
    magnitude = sitk.GetArrayFromImage(
        sitk.GradientMagnitudeRecursiveGaussian(sitk.Cast(image, sitk.sitkFloat32), float(sigma_px * spacing[0])))
    allowed = np.zeros(magnitude.shape, dtype=bool)
    allowed[margin_px:-margin_px, margin_px:-margin_px] = True
    if mask is not None:
        allowed &= mask
    order = np.argsort(np.where(allowed, magnitude, -np.inf), axis=None)[::-1]
    chosen: list[tuple[int, int]] = []
    for flat in order:
        y, x = np.unravel_index(flat, magnitude.shape)
        if not allowed[y, x]:
            break
        if all((x - cx) ** 2 + (y - cy) ** 2 >= min_distance_px**2 for cx, cy in chosen):
            chosen.append((int(x), int(y)))
            if len(chosen) == count:
                break
    return np.array([image.TransformIndexToPhysicalPoint(p) for p in chosen], dtype=np.float64).reshape(-1, 2)


def afids(fcsv: Path) -> Landmarks:
    """The AFIDs of a ``.fcsv`` in LPS mm, labelled by their names (the ``desc`` column: ``AC``, ``PC``, ...)."""
    numbered = read_landmarks(fcsv, "AFIDs")
    rows = [row for row in csv.reader(fcsv.read_text(encoding="utf-8").splitlines()) if row and row[0][:1] != "#"]
    names = {row[11]: row[12] for row in rows}
    labels = tuple(names[number] for number in numbered.labels)
    if len(set(labels)) != len(labels):
        raise DataError(f"{fcsv}: AFID names are not unique")
    return Landmarks(labels, numbered.points_lps)
