"""Registration quality metrics: intensity similarity, landmark error, overlap, surface distance, field regularity.

Plain numpy and SimpleITK (no torch), so results do not depend on a model or a device.

Conventions:
    * Images are SimpleITK images; their spacing, origin and direction are honoured. Two images compared voxel by
      voxel must lie on the same grid (same size, spacing, origin and direction), otherwise :class:`InputError`.
    * A displacement field is a SimpleITK vector image (``sitkVectorFloat64`` or ``sitkVectorFloat32``, one component
      per dimension) in physical LPS millimetres: the point ``x`` maps to ``x + d(x)``.
    * Landmarks are ``(N, D)`` arrays of physical points in mm, row ``i`` of one set matching row ``i`` of the other.
    * Distances are in mm; Jacobian determinants are dimensionless.
"""

from __future__ import annotations

import math

import numpy as np
import SimpleITK as sitk

from metareg.core.errors import InputError
from metareg.core.slabs import slabs

ImageLike = sitk.Image | np.ndarray

_GEOMETRY_RTOL = 1e-6


# ---------------------------------------------------------------------------------------------------------------------
# Input checks


def _array(image: ImageLike) -> np.ndarray:
    """Voxel values as float64, indexed ``[z, y, x]`` (numpy order), vector components last (a copy)."""
    if isinstance(image, sitk.Image):
        return sitk.GetArrayViewFromImage(image).astype(np.float64)
    return np.asarray(image, dtype=np.float64)


def _view(image: ImageLike) -> np.ndarray:
    """Voxel values without a copy (a read-only view of an image, or the array itself), ``[z, y, x]``."""
    return sitk.GetArrayViewFromImage(image) if isinstance(image, sitk.Image) else np.asarray(image)


def _slab_values(view: np.ndarray, inside: np.ndarray | None):
    """The values of ``view`` (inside the mask), slab by slab (:mod:`metareg.core.slabs`), as float64 1-D arrays."""
    for rows in slabs(view.shape):
        values = np.asarray(view[rows], dtype=np.float64)
        yield values.ravel() if inside is None else values[inside[rows]]


def _moments(a: ImageLike, b: ImageLike, inside: np.ndarray | None) -> tuple[int, float, float, float, float]:
    """Count, sums of squared deviations of ``a`` and ``b`` and their co-deviation, over the mask, slab by slab,
    combined exactly as one pass over all values would (Chan et al.'s pairwise update): ``(n, mean_a, Saa, Sbb,
    Sab)``."""
    n, mean_a, mean_b, saa, sbb, sab = 0, 0.0, 0.0, 0.0, 0.0, 0.0
    for x, y in zip(_slab_values(_view(a), inside), _slab_values(_view(b), inside)):
        k = x.size
        if k == 0:
            continue
        mx, my = float(x.mean()), float(y.mean())
        dx, dy = x - mx, y - my
        total = n + k
        delta_a, delta_b = mx - mean_a, my - mean_b
        saa += float(dx @ dx) + delta_a * delta_a * n * k / total
        sbb += float(dy @ dy) + delta_b * delta_b * n * k / total
        sab += float(dx @ dy) + delta_a * delta_b * n * k / total
        mean_a += delta_a * k / total
        mean_b += delta_b * k / total
        n = total
    return n, mean_a, saa, sbb, sab


def _geometry_difference(a: sitk.Image, b: sitk.Image) -> str:
    """Describe how the grids of ``a`` and ``b`` differ, or return ``""`` if they are the same."""
    if a.GetSize() != b.GetSize():
        return f"size {b.GetSize()} differs from {a.GetSize()}"
    scale = max(max(a.GetSpacing()), 1.0)
    checks = (
        ("spacing", a.GetSpacing(), b.GetSpacing(), _GEOMETRY_RTOL * scale),
        ("origin", a.GetOrigin(), b.GetOrigin(), _GEOMETRY_RTOL * scale),
        ("direction", a.GetDirection(), b.GetDirection(), _GEOMETRY_RTOL),
    )
    for name, value_a, value_b, atol in checks:
        if not np.allclose(value_a, value_b, rtol=_GEOMETRY_RTOL, atol=atol):
            return f"{name} {tuple(np.round(value_b, 6))} differs from {tuple(np.round(value_a, 6))}"
    return ""


def _check_same_grid(a: ImageLike, b: ImageLike, name_a: str, name_b: str) -> None:
    """Raise :class:`InputError` naming ``name_b`` unless ``b`` lies on the grid of ``a``."""
    if isinstance(a, sitk.Image) and isinstance(b, sitk.Image):
        problem = _geometry_difference(a, b)
    else:
        shape_a, shape_b = np.shape(_view(a)), np.shape(_view(b))
        problem = "" if shape_a == shape_b else f"array shape {shape_b} differs from {shape_a}"
    if problem:
        raise InputError(name_b, f"not on the grid of {name_a}: {problem}", f"resample {name_b} onto {name_a} first")


def _mask_array(mask: ImageLike | None, reference: ImageLike, reference_name: str) -> np.ndarray | None:
    """Boolean mask (non-zero = inside) on the spatial grid of ``reference``; ``None`` when no mask is given."""
    if mask is None:
        return None
    if isinstance(mask, sitk.Image) and isinstance(reference, sitk.Image):
        problem = _geometry_difference(reference, mask)
        if problem:
            raise InputError("mask", f"not on the grid of {reference_name}: {problem}", "resample the mask first")
    inside = _view(mask) != 0
    shape = np.shape(_view(reference))
    if inside.shape != shape[: inside.ndim]:
        raise InputError("mask", f"shape {inside.shape} does not match {reference_name} {shape}")
    if not inside.any():
        raise InputError("mask", "is empty (no non-zero voxel)", "give a mask that covers the region to evaluate")
    return inside


# ---------------------------------------------------------------------------------------------------------------------
# Intensity similarity


def ncc(a: ImageLike, b: ImageLike, mask: ImageLike | None = None) -> float:
    """Global normalised cross-correlation of ``a`` and ``b`` (over ``mask`` if given), in [-1, 1].

    ``a`` and ``b`` are images on the same grid, or arrays of the same shape. Invariant to ``b -> s*b + t`` for
    ``s > 0``. Returns ``nan`` when either image is constant over the region (the correlation is undefined).
    """
    _check_same_grid(a, b, "a", "b")
    _, _, saa, sbb, sab = _moments(a, b, _mask_array(mask, a, "a"))  # slab by slab: no copy of the images
    denominator = np.sqrt(saa * sbb)
    if denominator == 0:
        return float("nan")
    return float(np.clip(sab / denominator, -1.0, 1.0))


def mse(a: ImageLike, b: ImageLike, mask: ImageLike | None = None) -> float:
    """Mean squared intensity difference of ``a`` and ``b`` (over ``mask`` if given), in squared intensity units."""
    _check_same_grid(a, b, "a", "b")
    inside = _mask_array(mask, a, "a")
    total, count = 0.0, 0
    for x, y in zip(_slab_values(_view(a), inside), _slab_values(_view(b), inside)):
        total += float(np.sum((x - y) ** 2))
        count += x.size
    return total / count if count else float("nan")


# ---------------------------------------------------------------------------------------------------------------------
# Landmarks


def landmark_distances_mm(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Euclidean distance between matching rows of two ``(N, D)`` point sets (D = 2 or 3), in mm: shape ``(N,)``.

    For target registration error pass the fixed landmarks mapped through the field, ``p + d(p)``, and their moving
    partners ``q``, both in physical LPS mm.
    """
    p, q = np.asarray(p, dtype=np.float64), np.asarray(q, dtype=np.float64)
    for name, points in (("p", p), ("q", q)):
        if points.ndim != 2 or points.shape[1] not in (2, 3):
            raise InputError(name, f"landmark array has shape {points.shape}", "give an (N, 2) or (N, 3) array")
    if p.shape != q.shape:
        raise InputError("q", f"shape {q.shape} does not match p {p.shape}", "pair landmarks by label first")
    return np.linalg.norm(p - q, axis=1)


def tre_summary(distances_mm: np.ndarray) -> dict:
    """Summary of landmark errors in mm: ``{"n", "mean", "std", "median", "p90", "max"}`` as plain Python numbers.

    ``std`` is the population standard deviation (ddof=0); ``p90`` uses linear interpolation between order statistics.
    """
    distances = np.asarray(distances_mm, dtype=np.float64).ravel()
    if distances.size == 0:
        raise InputError("distances_mm", "is empty", "give at least one matched landmark pair")
    if not np.all(np.isfinite(distances)):
        raise InputError("distances_mm", "contains non-finite values", "check the landmarks and the field")
    return {
        "n": int(distances.size),
        "mean": float(distances.mean()),
        "std": float(distances.std()),
        "median": float(np.median(distances)),
        "p90": float(np.percentile(distances, 90)),
        "max": float(distances.max()),
    }


# ---------------------------------------------------------------------------------------------------------------------
# Label overlap and surface distances


def dice(a: sitk.Image, b: sitk.Image, labels: list[int] | None = None) -> dict[int, float]:
    """Dice overlap ``2|A∩B| / (|A|+|B|)`` per label of two label images on the same grid.

    ``labels=None`` evaluates every non-zero label present in either image. A requested label absent from both gives
    ``nan``.
    """
    _check_same_grid(a, b, "a", "b")
    labels_a, labels_b = sitk.GetArrayViewFromImage(a), sitk.GetArrayViewFromImage(b)
    if labels is None:
        labels = sorted((set(np.unique(labels_a).tolist()) | set(np.unique(labels_b).tolist())) - {0})
    scores = {}
    for label in labels:
        in_a, in_b = labels_a == label, labels_b == label
        total = int(in_a.sum()) + int(in_b.sum())
        scores[int(label)] = 2.0 * int(np.sum(in_a & in_b)) / total if total else float("nan")
    return scores


def _surface_and_distance_mm(labels: sitk.Image, label: int) -> tuple[np.ndarray, np.ndarray]:
    """Surface voxels of ``label`` and the unsigned distance (mm) of every voxel to them, on a grid padded by one.

    The surface is the set of label voxels with a face neighbour outside the label; padding makes the image border
    count as outside, so a label touching the border has a surface there.
    """
    padding = [1] * labels.GetDimension()
    mask = sitk.ConstantPad(labels == label, padding, padding, 0)
    surface = sitk.GetArrayFromImage(sitk.LabelContour(mask, fullyConnected=False)) != 0
    distance = sitk.SignedMaurerDistanceMap(mask, insideIsPositive=False, squaredDistance=False, useImageSpacing=True)
    return surface, np.abs(sitk.GetArrayFromImage(distance))


def _directed_surface_distances_mm(a: sitk.Image, b: sitk.Image, label: int) -> tuple[np.ndarray, np.ndarray] | float:
    """Distances (mm) from each surface voxel of ``label`` in ``a`` to the surface in ``b``, and from ``b`` to ``a``.

    Returns ``inf`` if the label is empty in exactly one image and ``nan`` if it is empty in both.
    """
    _check_same_grid(a, b, "a", "b")
    present = [bool(np.any(sitk.GetArrayViewFromImage(image) == label)) for image in (a, b)]
    if not all(present):
        return float("inf") if any(present) else float("nan")
    surface_a, distance_to_a = _surface_and_distance_mm(a, label)
    surface_b, distance_to_b = _surface_and_distance_mm(b, label)
    return distance_to_b[surface_a], distance_to_a[surface_b]


def hausdorff95_mm(a: sitk.Image, b: sitk.Image, label: int) -> float:
    """Symmetric 95th-percentile Hausdorff distance of ``label`` between two label images on the same grid, in mm.

    The larger of the two directed 95th percentiles of surface-voxel distances (as in DeepMind's ``surface-distance``
    and MedPy's ``hd95``). Distances are between voxel centres, so expect errors up to about one voxel. Returns
    ``inf`` if the label is empty in exactly one image and ``nan`` if it is empty in both.
    """
    distances = _directed_surface_distances_mm(a, b, label)
    if isinstance(distances, float):
        return distances
    return float(max(np.percentile(directed, 95) for directed in distances))


def mean_surface_distance_mm(a: sitk.Image, b: sitk.Image, label: int) -> float:
    """Symmetric mean surface distance of ``label`` between two label images on the same grid, in mm.

    The average of the two directed mean surface-voxel distances (MedPy's ``assd``). Returns ``inf`` if the label is
    empty in exactly one image and ``nan`` if it is empty in both.
    """
    distances = _directed_surface_distances_mm(a, b, label)
    if isinstance(distances, float):
        return distances
    return float(np.mean([directed.mean() for directed in distances]))


# ---------------------------------------------------------------------------------------------------------------------
# Displacement field regularity


def _check_field(field: sitk.Image) -> int:
    dimension = field.GetDimension()
    if dimension not in (2, 3) or field.GetNumberOfComponentsPerPixel() != dimension:
        raise InputError(
            "field",
            f"has {field.GetNumberOfComponentsPerPixel()} components per voxel in {dimension}D",
            "give a 2D or 3D displacement field with one component per dimension",
        )
    if min(field.GetSize()) < 2:
        raise InputError("field", f"size {field.GetSize()} is too small to differentiate", "need >= 2 voxels per axis")
    return dimension


def jacobian_determinant(field: sitk.Image) -> sitk.Image:
    """Determinant of the Jacobian of ``x -> x + d(x)``, ``det(I + ∇_x d)``, with ``∇_x`` in physical coordinates.

    ``field`` is a 2D or 3D displacement field in mm. The result is a float64 scalar image on the field's grid.
    With ``x = origin + D · diag(spacing) · idx``, ``∇_x d = (∂d/∂idx) · diag(1/spacing) · Dᵀ``; ``∂d/∂idx`` uses
    central differences inside and one-sided differences at the border, so any field linear in ``x`` is exact.
    (Unlike ``sitk.DisplacementFieldJacobianDeterminant``, this honours the direction matrix.)
    """
    dimension = _check_field(field)
    displacement = sitk.GetArrayViewFromImage(field)  # [z, y, x, component], components in (x, y, z) order
    direction = np.array(field.GetDirection()).reshape(dimension, dimension)
    index_to_physical = np.diag(1.0 / np.array(field.GetSpacing())) @ direction.T  # ∂idx/∂x
    image = sitk.Image(field.GetSize(), sitk.sitkFloat64)
    image.CopyInformation(field)
    total_rows = displacement.shape[0]
    for rows in slabs(displacement.shape[:-1]):  # slab by slab into the result, to bound memory
        low, high = max(rows.start - 1, 0), min(rows.stop + 1, total_rows)  # a neighbour row each side: exact
        keep = slice(rows.start - low, rows.stop - low)
        slab = sitk.GetImageFromArray(_jacobian_determinant_of(displacement[low:high], index_to_physical, dimension,
                                                               keep))
        region = (*[slice(None)] * (dimension - 1), slice(rows.start, rows.stop))
        slab.SetOrigin(image.TransformIndexToPhysicalPoint([0] * (dimension - 1) + [rows.start]))
        slab.SetSpacing(image.GetSpacing())
        slab.SetDirection(image.GetDirection())
        image[region] = slab
    return image


def _jacobian_determinant_of(displacement: np.ndarray, index_to_physical: np.ndarray, dimension: int,
                             keep: slice) -> np.ndarray:
    """``det(I + ∇_x d)`` of a displacement array ``[z, y, x, component]`` (a slab), for the rows ``keep`` of its
    first axis."""
    array_axes = tuple(range(dimension))
    jacobian: list[list[np.ndarray]] = [[np.empty(0)] * dimension for _ in range(dimension)]  # δ_cj + ∂d_c/∂x_j
    for c in range(dimension):
        gradients = np.gradient(np.asarray(displacement[..., c], dtype=np.float64), axis=array_axes)
        d_by_index = [g[keep] for g in gradients[::-1]]  # d_by_index[k] = ∂d_c/∂idx_k
        for j in range(dimension):
            jacobian[c][j] = sum(d_by_index[k] * index_to_physical[k, j] for k in range(dimension)) + (c == j)
    if dimension == 2:
        (j00, j01), (j10, j11) = jacobian
        return j00 * j11 - j01 * j10
    (j00, j01, j02), (j10, j11, j12), (j20, j21, j22) = jacobian
    return j00 * (j11 * j22 - j12 * j21) - j01 * (j10 * j22 - j12 * j20) + j02 * (j10 * j21 - j11 * j20)


def _jacobian_statistics(jacobian: sitk.Image, inside: np.ndarray | None) -> dict:
    """Folded fraction, std of log|J| over the unfolded voxels, min and max of the determinant, slab by slab."""
    count = folded = 0
    low, high = math.inf, -math.inf
    n, mean, squares = 0, 0.0, 0.0  # of log det over det > 0, combined pairwise (Chan et al.)
    for values in _slab_values(_view(jacobian), inside):
        if values.size == 0:
            continue
        count += values.size
        folded += int(np.count_nonzero(values <= 0))
        low, high = min(low, float(values.min())), max(high, float(values.max()))
        logs = np.log(values[values > 0])
        k = logs.size
        if k:
            m = float(logs.mean())
            delta, total = m - mean, n + k
            squares += float(np.sum((logs - m) ** 2)) + delta * delta * n * k / total
            mean += delta * k / total
            n = total
    return {"folding_fraction": folded / count if count else float("nan"),
            "std_log_jacobian": math.sqrt(squares / n) if n else float("nan"),
            "jacobian_min": low, "jacobian_max": high}


def folding_fraction(jacobian: sitk.Image, mask: ImageLike | None = None) -> float:
    """Fraction (0..1) of voxels (inside ``mask`` if given) where the Jacobian determinant is <= 0, i.e. folded."""
    return _jacobian_statistics(jacobian, _mask_array(mask, jacobian, "jacobian"))["folding_fraction"]


def std_log_jacobian(jacobian: sitk.Image, mask: ImageLike | None = None) -> float:
    """Standard deviation (ddof=0) of ``log(det)`` over voxels (inside ``mask``) with ``det > 0``.

    Folded voxels (``det <= 0``) are excluded, not clipped; report them with :func:`folding_fraction`. Returns ``nan``
    if no voxel has a positive determinant.
    """
    return _jacobian_statistics(jacobian, _mask_array(mask, jacobian, "jacobian"))["std_log_jacobian"]


def field_summary(field: sitk.Image, mask: ImageLike | None = None, jacobian: sitk.Image | None = None) -> dict:
    """Regularity of a displacement field (mm) over its grid, or over ``mask`` on the same grid.

    Returns ``{"folding_fraction", "std_log_jacobian", "jacobian_min", "jacobian_max", "max_displacement_mm"}`` as
    plain floats.
    """
    jacobian = jacobian_determinant(field) if jacobian is None else jacobian
    inside = _mask_array(mask, field, "field")
    vectors = sitk.GetArrayViewFromImage(field)
    largest = 0.0
    for rows in slabs(vectors.shape[:-1]):
        lengths = np.sqrt(np.sum(np.square(vectors[rows], dtype=np.float64), axis=-1))
        if inside is not None:
            lengths = lengths[inside[rows]]
        largest = max(largest, float(lengths.max()) if lengths.size else 0.0)
    return {**_jacobian_statistics(jacobian, inside), "max_displacement_mm": largest}
