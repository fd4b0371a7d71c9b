"""Known smooth deformations: the ground truth behind synthetic pairs, tests and the sample data.

Convention (the project's): a displacement field is a SimpleITK vector image (``sitkVectorFloat64``) whose vectors
are physical LPS millimetres, on a grid with its own size, spacing, origin and direction. It maps a point ``x`` of that
grid's space to ``x + d(x)``; between voxel centres ``d`` is interpolated linearly (ITK's
``DisplacementFieldTransform``), and it is zero outside the grid.

This module generates and inverts *known* fields; applying a field (to images or points) is
:mod:`metareg.core.geometry`'s ``warp_image`` and ``map_points``.
"""

from __future__ import annotations

import math

import numpy as np
import SimpleITK as sitk

from metareg.core.errors import InputError
from metareg.core.geometry import field_to_transform, map_points

__all__ = ["random_smooth_field", "invert_points"]


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
    targets = np.asarray(points_lps, dtype=np.float64)
    transform = field_to_transform(field)

    def displacement(points: np.ndarray) -> np.ndarray:
        return map_points(field, points, transform) - points

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
