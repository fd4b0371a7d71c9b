"""Image processing for the builders, all geometry in LPS mm: the common sizes and spacings of the task images,
anti-aliased resampling, foreground masks and boxes, slice stacks cut from volumes, and synthetic warps with known
landmarks."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import SimpleITK as sitk

from metareg.app.datasets.archives import DataError
from metareg.core.geometry import Grid, map_points, rotation_matrix, warp_image
from metareg.learning.synthetic import invert_points, random_smooth_field

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
    ``e`` is :func:`metareg.learning.synthetic.random_smooth_field` on ``grid``; ``T`` is checked to have no folding,
    and each ``q`` to satisfy ``|T(q) − p| < 1e-4 mm`` and to lie inside ``grid``.

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
