"""Grids and every conversion between image, tensor, voxel and physical coordinates.

This module is the only place that knows how index, physical (LPS mm) and normalised ``grid_sample`` coordinates relate.

Conventions
-----------
* Physical space is ITK's: LPS millimetres. A grid maps a voxel index ``i`` (ITK order: x fastest, then y, then z) to
  the point ``origin + D @ diag(spacing) @ i``.
* Tensors use numpy/torch order: an image of ITK size ``(nx, ny, nz)`` is a tensor of spatial shape ``(nz, ny, nx)``.
* A network or the iterative method predicts a **voxel displacement** ``disp_vox`` of shape ``(B, dim, *spatial)`` in
  voxels of the model grid, where channel ``c`` is the displacement along tensor spatial axis ``c`` (channel 0 = z in
  3D). The moving tensor sampled at ``p + disp_vox(p)`` is the warped moving tensor.
* The **exported field** is a SimpleITK vector image (``sitkVectorFloat64``) in LPS mm on the fixed image's own grid:
  fixed point ``x`` maps to moving point ``x + d(x)``. :func:`network_displacement_to_field` is the one function that
  turns a voxel displacement into it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from metareg.core.errors import InputError
from metareg.core.slabs import slabs


@dataclass(frozen=True)
class Grid:
    """A sampling grid: size and spacing in ITK index order, origin and direction in LPS mm.

    Attributes:
        size: voxels along each ITK index axis (x, y[, z]).
        spacing: mm between voxel centres along each index axis.
        origin: LPS mm position of voxel index 0.
        direction: row-major ``dim × dim`` direction cosines (columns are the index axes in LPS).
    """

    size: tuple[int, ...]
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]

    @property
    def dim(self) -> int:
        return len(self.size)

    @property
    def tensor_shape(self) -> tuple[int, ...]:
        """Spatial shape of a tensor on this grid (numpy/torch order, reversed from ITK)."""
        return tuple(reversed(self.size))

    @property
    def direction_matrix(self) -> np.ndarray:
        return np.asarray(self.direction, dtype=np.float64).reshape(self.dim, self.dim)

    @property
    def index_to_physical_matrix(self) -> np.ndarray:
        """``D @ diag(spacing)``: maps an ITK-ordered index offset to an LPS mm offset."""
        return self.direction_matrix @ np.diag(self.spacing)

    @property
    def center(self) -> np.ndarray:
        """LPS mm position of the centre of the grid (midway between the first and last voxel centres)."""
        return self.index_to_physical((np.asarray(self.size, dtype=np.float64) - 1.0) / 2.0)

    @classmethod
    def from_image(cls, image: sitk.Image) -> "Grid":
        return cls(
            size=tuple(int(s) for s in image.GetSize()),
            spacing=tuple(float(s) for s in image.GetSpacing()),
            origin=tuple(float(o) for o in image.GetOrigin()),
            direction=tuple(float(d) for d in image.GetDirection()),
        )

    def reference_image(self, pixel_type: int = sitk.sitkFloat32) -> sitk.Image:
        """An empty image with this geometry (for ``sitk.Resample``)."""
        image = sitk.Image([int(s) for s in self.size], pixel_type)
        self.apply_to(image)
        return image

    def apply_to(self, image: sitk.Image) -> sitk.Image:
        """Give ``image`` (of matching size) this grid's spacing, origin and direction, in place; returns it."""
        if tuple(image.GetSize()) != self.size:
            raise ValueError(f"image size {image.GetSize()} does not match grid size {self.size}")
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image

    def index_to_physical(self, index: np.ndarray) -> np.ndarray:
        """ITK-ordered continuous indices ``(..., dim)`` → LPS mm points ``(..., dim)``."""
        index = np.asarray(index, dtype=np.float64)
        return np.asarray(self.origin) + index @ self.index_to_physical_matrix.T

    def physical_to_index(self, points: np.ndarray) -> np.ndarray:
        """LPS mm points ``(..., dim)`` → ITK-ordered continuous indices ``(..., dim)``."""
        points = np.asarray(points, dtype=np.float64)
        return (points - np.asarray(self.origin)) @ np.linalg.inv(self.index_to_physical_matrix).T

    def physical_points(self, rows: slice = slice(None)) -> np.ndarray:
        """LPS mm position of every voxel centre, shape ``(*tensor_shape, dim)``; with ``rows``, only those indices of
        the first tensor axis (z in 3D, y in 2D: a slab, to bound memory on large grids)."""
        axes = [np.arange(n, dtype=np.float64) for n in self.tensor_shape]
        axes[0] = axes[0][rows]
        index_zyx = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)
        return self.index_to_physical(index_zyx[..., ::-1])

    def rows(self, rows: slice) -> "Grid":
        """The part of this grid at indices ``rows`` of its first tensor axis (the last ITK index axis): a slab."""
        start = [0] * self.dim
        start[-1] = rows.start
        size = list(self.size)
        size[-1] = rows.stop - rows.start
        return Grid(size=tuple(size), spacing=self.spacing,
                    origin=tuple(float(v) for v in self.index_to_physical(np.asarray(start, dtype=np.float64))),
                    direction=self.direction)

    def slabs(self) -> list[slice]:
        """The first tensor axis cut into slabs of bounded size (:func:`metareg.core.slabs.slabs`)."""
        return slabs(self.tensor_shape)

    def same_as(self, other: "Grid", tol: float = 1e-6) -> bool:
        return (
            self.size == other.size
            and np.allclose(self.spacing, other.spacing, atol=tol)
            and np.allclose(self.origin, other.origin, atol=tol)
            and np.allclose(self.direction, other.direction, atol=tol)
        )


def model_grid_on_fixed(
    fixed: sitk.Image,
    size: Sequence[int] | None = None,
    spacing: Sequence[float] | None = None,
) -> Grid:
    """The model grid placed on the fixed image: the fixed image's direction and centre.

    * ``size`` and ``spacing`` both given (a model card's canonical grid): used as they are, centred on the fixed image.
    * only ``size``: spacing chosen so the grid covers the fixed image's field of view (voxel edge to voxel edge).
    * only ``spacing``: size chosen (rounded up) to cover the fixed image's field of view.
    * neither: the fixed image's own grid.

    Sizes and spacings are in ITK index order (x, y[, z]); spacing in mm.
    """
    fixed_grid = Grid.from_image(fixed)
    fov_mm = np.asarray(fixed_grid.size, dtype=np.float64) * np.asarray(fixed_grid.spacing)
    if size is None and spacing is None:
        return fixed_grid
    if size is not None and len(size) != fixed_grid.dim:
        raise ValueError(f"model grid size {tuple(size)} has {len(size)} axes but the fixed image has {fixed_grid.dim}")
    if spacing is not None and len(spacing) != fixed_grid.dim:
        raise ValueError(f"model grid spacing {tuple(spacing)} has {len(spacing)} axes, "
                         f"the fixed image {fixed_grid.dim}")
    if size is None:
        new_spacing = np.asarray(spacing, dtype=np.float64)
        new_size = np.maximum(np.ceil(fov_mm / new_spacing - 1e-6), 2).astype(int)
    elif spacing is None:
        new_size = np.asarray(size, dtype=int)
        new_spacing = fov_mm / new_size
    else:
        new_size = np.asarray(size, dtype=int)
        new_spacing = np.asarray(spacing, dtype=np.float64)
    matrix = fixed_grid.direction_matrix @ np.diag(new_spacing)
    origin = fixed_grid.center - matrix @ ((new_size - 1.0) / 2.0)
    return Grid(
        size=tuple(int(s) for s in new_size),
        spacing=tuple(float(s) for s in new_spacing),
        origin=tuple(float(o) for o in origin),
        direction=fixed_grid.direction,
    )


def resample_onto(
    image: sitk.Image,
    grid: Grid,
    transform: sitk.Transform | None = None,
    interpolator: int = sitk.sitkLinear,
    default_value: float = 0.0,
    pixel_type: int = sitk.sitkFloat32,
) -> sitk.Image:
    """Sample ``image`` at the points of ``grid``; ``transform`` maps grid points (LPS mm) to image points."""
    return sitk.Resample(
        image,
        grid.reference_image(),
        transform if transform is not None else sitk.Transform(grid.dim, sitk.sitkIdentity),
        interpolator,
        float(default_value),
        pixel_type,
    )


def image_to_tensor(image: sitk.Image) -> torch.Tensor:
    """Scalar image → float32 tensor ``(1, 1, *spatial)`` in numpy order (z, y, x)."""
    array = sitk.GetArrayFromImage(image).astype(np.float32, copy=False)
    return torch.from_numpy(np.ascontiguousarray(array))[None, None]


# ---------------------------------------------------------------------------------------------------------------------
# Voxel displacement (torch, model grid)  <->  sampling positions for grid_sample
# ---------------------------------------------------------------------------------------------------------------------


def voxel_displacement_to_sampling_grid(disp_vox: torch.Tensor) -> torch.Tensor:
    """Voxel displacement ``(B, dim, *spatial)`` → ``grid_sample`` positions ``(B, *spatial, dim)``.

    The positions are the voxel centres plus the displacement, in the normalised coordinates of
    ``F.grid_sample(..., align_corners=True)`` (−1 = first voxel centre, +1 = last), last axis in (x, y[, z]) order.
    """
    spatial = disp_vox.shape[2:]
    dim = len(spatial)
    if disp_vox.shape[1] != dim:
        raise ValueError(f"displacement has {disp_vox.shape[1]} channels for a {dim}-D tensor")
    axes = [torch.arange(n, dtype=disp_vox.dtype, device=disp_vox.device) for n in spatial]
    identity = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=0)[None]  # (1, dim, *spatial)
    positions = identity + disp_vox
    scale = torch.tensor([2.0 / max(n - 1, 1) for n in spatial], dtype=disp_vox.dtype, device=disp_vox.device)
    normalised = positions * scale.view(1, dim, *([1] * dim)) - 1.0
    # channels (z, y, x) -> last axis (x, y, z)
    return normalised.permute(0, *range(2, dim + 2), 1).flip(-1)


def warp_tensor(
    image: torch.Tensor, disp_vox: torch.Tensor, mode: str = "bilinear", padding_mode: str = "border"
) -> torch.Tensor:
    """The spatial transformer: ``out(p) = image(p + disp_vox(p))``.

    Args:
        image: ``(B, C, *spatial)``.
        disp_vox: ``(B, dim, *spatial)`` voxel displacement (channel c along tensor axis c).
        mode: ``"bilinear"`` (trilinear in 3D) or ``"nearest"``.
        padding_mode: what lies outside the tensor (``"border"`` repeats the edge, ``"zeros"``).
    """
    grid = voxel_displacement_to_sampling_grid(disp_vox)
    return F.grid_sample(image, grid, mode=mode, padding_mode=padding_mode, align_corners=True)


def integrate_velocity(velocity_vox: torch.Tensor, steps: int = 7) -> torch.Tensor:
    """Scaling and squaring: the displacement of the time-1 flow of a stationary velocity field (both in voxels).

    Divides the velocity by ``2**steps`` and composes the small displacement with itself ``steps`` times:
    ``u <- u + u∘(id + u)``. The result is diffeomorphic in practice (no folding) for smooth velocities.
    """
    disp = velocity_vox / (2.0**steps)
    for _ in range(steps):
        disp = disp + warp_tensor(disp, disp)
    return disp


def resize_displacement(disp_vox: torch.Tensor, spatial: Sequence[int]) -> torch.Tensor:
    """Resample a voxel displacement to another tensor shape of the same physical extent, rescaling its units.

    Both shapes span the same field of view with voxel centres at the corners (``align_corners=True``), so a
    displacement of one voxel at ``n`` voxels becomes ``(m - 1) / (n - 1)`` voxels at ``m`` voxels.
    """
    dim = disp_vox.shape[1]
    mode = "trilinear" if dim == 3 else "bilinear"
    old = disp_vox.shape[2:]
    resized = F.interpolate(disp_vox, size=tuple(spatial), mode=mode, align_corners=True)
    scale = torch.tensor(
        [(m - 1) / max(n - 1, 1) for n, m in zip(old, spatial)], dtype=disp_vox.dtype, device=disp_vox.device
    )
    return resized * scale.view(1, dim, *([1] * dim))


# ---------------------------------------------------------------------------------------------------------------------
# Voxel displacement  ->  physical field on the fixed image's grid
# ---------------------------------------------------------------------------------------------------------------------


def affine_matrix_offset(transform: sitk.Transform, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Matrix ``M`` and offset ``t`` with ``transform(y) = M @ y + t`` (LPS mm), for any affine-family transform.

    Read off by mapping the origin and the unit vectors, so it works for Euler, similarity, affine and composite
    transforms of them alike. Raises ``ValueError`` if the transform is not affine (checked at a random point).
    """
    origin = np.asarray(transform.TransformPoint((0.0,) * dim))
    matrix = np.stack(
        [np.asarray(transform.TransformPoint(tuple(np.eye(dim)[a]))) - origin for a in range(dim)], axis=1
    )
    probe = np.array([37.0, -53.0, 71.0][:dim])
    if not np.allclose(transform.TransformPoint(tuple(probe)), matrix @ probe + origin, atol=1e-6):
        raise ValueError("the pre-alignment transform is not affine")
    return matrix, origin


def voxel_displacement_to_physical(disp_vox: torch.Tensor | np.ndarray, grid: Grid) -> np.ndarray:
    """Voxel displacement ``(1, dim, *spatial)`` on ``grid`` → LPS mm displacement ``(*spatial, dim)`` on ``grid``."""
    array = disp_vox.detach().cpu().double().numpy() if isinstance(disp_vox, torch.Tensor) else np.asarray(disp_vox)
    array = array.reshape((grid.dim, *grid.tensor_shape)).astype(np.float64, copy=False)
    # channel c moves along tensor axis c, which is ITK index axis dim-1-c
    index_disp = np.moveaxis(array[::-1], 0, -1)  # (*spatial, dim) in ITK index order
    return index_disp @ grid.index_to_physical_matrix.T


def physical_to_voxel_displacement(array: np.ndarray, grid: Grid) -> torch.Tensor:
    """LPS mm displacement ``(*spatial, dim)`` on ``grid`` → voxel displacement ``(1, dim, *spatial)`` (float32).

    The inverse of :func:`voxel_displacement_to_physical`.
    """
    array = np.asarray(array, dtype=np.float64).reshape((*grid.tensor_shape, grid.dim))
    index_disp = array @ np.linalg.inv(grid.index_to_physical_matrix).T  # (*spatial, dim) in ITK index order
    channels = np.moveaxis(index_disp, -1, 0)[::-1]  # channel c moves along tensor axis c = ITK index axis dim-1-c
    return torch.from_numpy(np.ascontiguousarray(channels, dtype=np.float32))[None]


def regrid_displacement(disp_vox: torch.Tensor, from_grid: Grid, to_grid: Grid) -> torch.Tensor:
    """The same physical displacement, re-expressed as a voxel displacement on another grid.

    ``disp_vox`` ``(1, dim, *from_grid.tensor_shape)`` → ``(1, dim, *to_grid.tensor_shape)``: resampled linearly in
    physical space (nearest value beyond ``from_grid``) and converted to ``to_grid``'s voxel units and axes, so grids
    of any spacing, origin and direction can hand a displacement to each other (e.g. a network's model grid to the
    finer grid a refinement runs on).
    """
    field = network_displacement_to_field(disp_vox, from_grid, to_grid.reference_image())
    return physical_to_voxel_displacement(sitk.GetArrayFromImage(field), to_grid).to(disp_vox.device)


def vector_image(array: np.ndarray, grid: Grid) -> sitk.Image:
    """``(*grid.tensor_shape, dim)`` float array of LPS mm vectors → ``sitkVectorFloat64`` image on ``grid``."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(array, dtype=np.float64), isVector=True)
    return grid.apply_to(image)


def network_displacement_to_field(
    disp_vox: torch.Tensor | np.ndarray,
    model_grid: Grid,
    fixed: sitk.Image,
    prealign: sitk.Transform | None = None,
) -> sitk.Image:
    """The one conversion from a predicted voxel displacement to the exported physical field.

    Args:
        disp_vox: ``(1, dim, *model_grid.tensor_shape)`` voxel displacement predicted on ``model_grid`` between the
            fixed image and the moving image as presented to the network (pre-aligned when ``prealign`` is given).
        model_grid: the grid the network saw (from :func:`model_grid_on_fixed`).
        fixed: the fixed image; the field is returned on its own grid.
        prealign: optional affine pre-alignment that maps fixed points (LPS mm) to moving points; the network then
            registered the fixed image to ``moving ∘ prealign``.

    Returns:
        ``sitkVectorFloat64`` image on the fixed grid, LPS mm: fixed point ``x`` ↦ moving point ``x + d(x)``, with
        ``d(x) = A(x + u(x)) − x`` where ``u`` is the network's physical displacement and ``A`` the pre-alignment.
        Beyond the model grid, ``u`` is extended by its nearest value.
    """
    fixed_grid = Grid.from_image(fixed)
    model_field = vector_image(voxel_displacement_to_physical(disp_vox, model_grid), model_grid)
    if model_grid.same_as(fixed_grid) and prealign is None:
        return model_field
    matrix, offset = affine_matrix_offset(prealign, fixed_grid.dim) if prealign is not None else (None, None)
    identity = sitk.Transform(fixed_grid.dim, sitk.sitkIdentity)
    field = fixed_grid.reference_image(sitk.sitkVectorFloat64)
    for rows in fixed_grid.slabs():  # slab by slab into the result: memory stays a few MB beyond it, at any size
        slab_grid = fixed_grid.rows(rows)
        # useNearestNeighborExtrapolator: no artificial zero displacement beyond the model grid's border
        u = sitk.Resample(model_field, slab_grid.reference_image(), identity, sitk.sitkLinear, 0.0,
                          sitk.sitkVectorFloat64, True)
        if matrix is not None:
            points = slab_grid.physical_points()
            u = vector_image((points + sitk.GetArrayViewFromImage(u)) @ matrix.T + offset - points, slab_grid)
        field[(*[slice(None)] * (fixed_grid.dim - 1), slice(rows.start, rows.stop))] = u
    return field


def affine_to_field(transform: sitk.Transform, reference: sitk.Image) -> sitk.Image:
    """The displacement field ``d(x) = A(x) − x`` of an affine transform on ``reference``'s grid (LPS mm)."""
    grid = Grid.from_image(reference)
    matrix, offset = affine_matrix_offset(transform, grid.dim)
    field = np.empty((*grid.tensor_shape, grid.dim), dtype=np.float64)
    for rows in grid.slabs():
        points = grid.physical_points(rows)
        field[rows] = points @ matrix.T + offset - points
    return vector_image(field, grid)


def rotation_matrix(axis: Sequence[float], angle_deg: float) -> np.ndarray:
    """The 3×3 right-handed rotation by ``angle_deg`` degrees about ``axis`` (any length; Rodrigues' formula)."""
    unit = np.asarray(axis, dtype=np.float64)
    unit = unit / np.linalg.norm(unit)
    angle = np.deg2rad(angle_deg)
    cross = np.array([[0, -unit[2], unit[1]], [unit[2], 0, -unit[0]], [-unit[1], unit[0], 0]])
    return np.eye(3) + np.sin(angle) * cross + (1 - np.cos(angle)) * cross @ cross


def identity_field(reference: sitk.Image) -> sitk.Image:
    """A zero displacement field on ``reference``'s grid."""
    grid = Grid.from_image(reference)
    return vector_image(np.zeros((*grid.tensor_shape, grid.dim)), grid)


# ---------------------------------------------------------------------------------------------------------------------
# Using the exported field
# ---------------------------------------------------------------------------------------------------------------------


def field_to_transform(field: sitk.Image) -> sitk.DisplacementFieldTransform:
    """An ITK DisplacementFieldTransform of the field (a copy: the transform takes ownership of its image)."""
    return sitk.DisplacementFieldTransform(sitk.Cast(field, sitk.sitkVectorFloat64))


def warp_image(
    moving: sitk.Image,
    field: sitk.Image,
    interpolator: int = sitk.sitkLinear,
    default_value: float = 0.0,
    pixel_type: int | None = None,
) -> sitk.Image:
    """Resample the original ``moving`` image through ``field``: ``out(x) = moving(x + d(x))`` on the field's grid.

    ``pixel_type`` defaults to float32 for linear/B-spline interpolation and to the moving image's own type for
    nearest-neighbour (label maps). Large fields go slab by slab, each through a transform of its own part of the
    field (at a slab's voxel centres the field's interpolation needs only that slab: the result is the same).
    """
    if pixel_type is None:
        pixel_type = moving.GetPixelID() if interpolator == sitk.sitkNearestNeighbor else sitk.sitkFloat32
    grid = Grid.from_image(field)
    pieces = grid.slabs()
    if len(pieces) == 1:
        return sitk.Resample(moving, field, field_to_transform(field), interpolator, float(default_value), pixel_type)
    warped = grid.reference_image(pixel_type)
    for rows in pieces:  # slab by slab (the transform copies its field): memory a few MB beyond the result
        region = (*[slice(None)] * (grid.dim - 1), slice(rows.start, rows.stop))
        slab = field[region]
        warped[region] = sitk.Resample(moving, slab, field_to_transform(slab), interpolator, float(default_value),
                                       pixel_type)
    return warped


def map_points(
    field: sitk.Image, points_lps: np.ndarray, transform: sitk.DisplacementFieldTransform | None = None
) -> np.ndarray:
    """Map points through the field: ``x ↦ x + d(x)`` (``d`` linearly interpolated, zero outside the field's grid).

    Args:
        field: displacement field (vector image, LPS mm).
        points_lps: ``(N, dim)`` LPS mm.
        transform: ``field_to_transform(field)`` when the caller already has it (saves a copy of the field).
    """
    points = np.asarray(points_lps, dtype=np.float64)
    dim = field.GetDimension()
    if points.ndim != 2 or points.shape[1] != dim:
        raise InputError("points", f"expected an (N, {dim}) array of LPS mm coordinates, got shape {points.shape}")
    transform = transform or field_to_transform(field)
    return np.array([transform.TransformPoint(tuple(p)) for p in points], dtype=np.float64).reshape(points.shape)
