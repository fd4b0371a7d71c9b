"""Known smooth deformations: the ground truth behind synthetic pairs, tests and the sample data.

Convention (the project's): a displacement field is a SimpleITK vector image (``sitkVectorFloat64``) whose vectors
are physical LPS millimetres, on a grid with its own size, spacing, origin and direction. It maps a point ``x`` of that
grid's space to ``x + d(x)``; between voxel centres ``d`` is interpolated linearly (ITK's
``DisplacementFieldTransform``), and it is zero outside the grid.

This module generates and applies *known* fields. The warp of a registration's output lives in
:mod:`metareg.geometry`; this is only the ground-truth generator.
"""

from __future__ import annotations

import math

import numpy as np
import SimpleITK as sitk

from metareg.errors import InputError

__all__ = ["random_smooth_field", "warp_image", "map_points", "invert_points"]


def random_smooth_field(
    reference: sitk.Image, max_displacement_mm: float, control_spacing_mm: float, seed: int
) -> sitk.Image:
    """A smooth random displacement field on ``reference``'s grid.

    Random control-point displacements (uniform in [-1, 1] per component, from ``numpy.random.default_rng(seed)``) on a
    coarse cubic B-spline grid that spans ``reference``'s physical domain, aligned with its direction, with a control
    spacing of at most ``control_spacing_mm`` per axis; the B-spline is sampled at ``reference``'s voxel centres and
    the samples scaled so that the largest displacement magnitude equals ``max_displacement_mm`` exactly.

    The result is deterministic for a given reference geometry, arguments and seed. It is a diffeomorphism in
    practice (Jacobian determinant > 0 everywhere) as long as ``max_displacement_mm`` stays below about
    ``control_spacing_mm / 3``; larger values can fold space.

    Args:
        reference: image whose grid (size, spacing, origin, direction) the field is sampled on; 2D or 3D.
        max_displacement_mm: the largest |d(x)| over the grid, in mm (>= 0).
        control_spacing_mm: approximate spacing of the B-spline control points, in mm (> 0).
        seed: random seed.

    Returns:
        ``sitkVectorFloat64`` image on ``reference``'s grid, displacements in LPS mm.
    """
    if max_displacement_mm < 0 or not math.isfinite(max_displacement_mm):
        raise InputError("max_displacement_mm", f"must be a finite number >= 0, got {max_displacement_mm}")
    if not control_spacing_mm > 0:
        raise InputError("control_spacing_mm", f"must be > 0, got {control_spacing_mm}")
    extent_mm = [n * s for n, s in zip(reference.GetSize(), reference.GetSpacing())]
    mesh_size = [max(1, math.ceil(e / control_spacing_mm)) for e in extent_mm]
    bspline = sitk.BSplineTransformInitializer(reference, mesh_size, 3)
    rng = np.random.default_rng(seed)
    coefficients = rng.random(bspline.GetNumberOfParameters()) * 2.0 - 1.0
    bspline.SetParameters(coefficients.tolist())
    field = sitk.TransformToDisplacementField(
        bspline,
        sitk.sitkVectorFloat64,
        reference.GetSize(),
        reference.GetOrigin(),
        reference.GetSpacing(),
        reference.GetDirection(),
    )
    vectors = sitk.GetArrayFromImage(field)  # (..., dim), LPS mm
    largest = float(np.sqrt((vectors**2).sum(axis=-1)).max())
    if largest > 0:
        vectors *= max_displacement_mm / largest
    scaled = sitk.GetImageFromArray(vectors, isVector=True)
    scaled.CopyInformation(field)
    return scaled


def _field_transform(field: sitk.Image) -> sitk.DisplacementFieldTransform:
    """A DisplacementFieldTransform over a private copy of ``field`` (the transform takes the image it is given)."""
    if field.GetNumberOfComponentsPerPixel() != field.GetDimension():
        raise InputError(
            "displacement field",
            f"has {field.GetNumberOfComponentsPerPixel()} components per voxel on a {field.GetDimension()}D grid",
            "a displacement field needs one vector component per image axis",
        )
    own_copy = sitk.Cast(sitk.Image(field), sitk.sitkVectorFloat64)
    return sitk.DisplacementFieldTransform(own_copy)


def warp_image(
    image: sitk.Image, field: sitk.Image, interpolator=sitk.sitkLinear, default_value: float = 0.0
) -> sitk.Image:
    """Resample ``image`` through ``field``: ``out(x) = image(x + d(x))`` for ``x`` at the field's voxel centres.

    Args:
        image: the image to warp (any pixel type SimpleITK resamples), on its own grid.
        field: displacement field (vector image, LPS mm); the output has its grid. It is not modified.
        interpolator: a SimpleITK interpolator enum for sampling ``image``.
        default_value: intensity where ``x + d(x)`` falls outside ``image``.

    Returns:
        Image on the field's grid with ``image``'s pixel type.
    """
    if image.GetDimension() != field.GetDimension():
        raise InputError(
            "image", f"is {image.GetDimension()}D but the displacement field is {field.GetDimension()}D"
        )
    transform = _field_transform(field)
    return sitk.Resample(image, field, transform, interpolator, float(default_value), image.GetPixelID())


def _as_points(points_lps: np.ndarray, dim: int) -> np.ndarray:
    points = np.asarray(points_lps, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != dim:
        raise InputError("points", f"expected an (N, {dim}) array of LPS mm coordinates, got shape {points.shape}")
    return points


def map_points(field: sitk.Image, points_lps: np.ndarray) -> np.ndarray:
    """Map points through the field: ``x -> x + d(x)``, with ``d`` interpolated linearly (zero outside the grid).

    Args:
        field: displacement field (vector image, LPS mm).
        points_lps: (N, dim) physical LPS points in mm.

    Returns:
        (N, dim) float64 array of mapped LPS points in mm.
    """
    points = _as_points(points_lps, field.GetDimension())
    transform = _field_transform(field)
    return np.array([transform.TransformPoint(tuple(p)) for p in points], dtype=np.float64).reshape(points.shape)


def invert_points(
    field: sitk.Image, points_lps: np.ndarray, iterations: int = 50, tol_mm: float = 1e-6
) -> np.ndarray:
    """Solve ``y + d(y) = p`` for each point ``p`` by the fixed-point iteration ``y <- p - d(y)``.

    Converges when the field is a contraction-like smooth deformation (|grad d| < 1), which holds for fields from
    :func:`random_smooth_field` with max displacement below about control spacing / 3.

    Args:
        field: displacement field (vector image, LPS mm).
        points_lps: (N, dim) target LPS points ``p`` in mm.
        iterations: the most fixed-point iterations.
        tol_mm: stop when every ``|y + d(y) - p|`` is below this, in mm.

    Returns:
        (N, dim) float64 array of LPS points ``y`` in mm with ``|y + d(y) - p| < tol_mm``.

    Raises:
        InputError: if some point has not converged after ``iterations`` steps.
    """
    targets = _as_points(points_lps, field.GetDimension())
    transform = _field_transform(field)

    def displacement(points: np.ndarray) -> np.ndarray:
        mapped = np.array([transform.TransformPoint(tuple(p)) for p in points], dtype=np.float64)
        return mapped.reshape(points.shape) - points

    solution = targets.copy()
    for _ in range(iterations + 1):
        current = displacement(solution)
        residual_mm = np.linalg.norm(solution + current - targets, axis=1)
        if residual_mm.size == 0 or residual_mm.max() < tol_mm:
            return solution
        solution = targets - current
    worst = int(residual_mm.argmax())
    raise InputError(
        "displacement field",
        f"inverting it at point {worst} {targets[worst].tolist()} did not converge in {iterations} iterations "
        f"(residual {residual_mm[worst]:.3g} mm > {tol_mm:g} mm)",
        "the field may fold space; use a smoother field or a smaller displacement",
    )
