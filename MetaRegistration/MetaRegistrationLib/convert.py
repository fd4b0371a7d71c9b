"""Conversions between MRML nodes and the engine's SimpleITK images and landmarks, with exact geometry.

Slicer stores volumes, markups and transforms in RAS millimetres; the engine works in ITK's LPS millimetres. The two
differ by negating x and y. Every change between them in this module goes through :data:`RAS_FROM_LPS`.

A volume node's voxel ``(i, j, k)`` sits at ``IJKToRAS @ (i, j, k, 1)`` with
``IJKToRAS = [[R @ diag(spacing), origin_ras], [0, 1]]`` (``R``: the node's IJK-to-RAS directions). A SimpleITK image's
voxel sits at ``origin_lps + D @ diag(spacing) @ index``. So ``D = RAS_FROM_LPS @ R`` and
``origin_lps = RAS_FROM_LPS @ origin_ras``, and the voxel arrays are the same (both ``(k, j, i)`` in numpy).

Inputs must not sit under a parent transform: the engine registers the images as they are stored, and a transform
above an input would make "as stored" and "as shown" differ. The error says to harden or remove the transform.

**Single-slice volumes (2D).** Slicer loads a 2D image as a volume with one voxel along one IJK axis (K for PNG,
2D NIfTI, ...). With ``allow_2d=True``, :func:`volume_to_image` turns such a volume into a 2D SimpleITK image when the
slice is *in-plane*: the one-voxel axis points along ±z (LPS = RAS S) and the two others have no z component, so the
slice is the plane ``z = const`` and the 2D image's geometry is exact (the 2D origin and the 2×2 direction are the
x/y parts of the 3D ones; direction cosines within :data:`IN_PLANE_TOLERANCE` of 0 or ±1 count as exact). An
*oblique* single slice (tilted out of ``z = const``) is refused with a
:class:`NodeInputError`: the engine registers in x/y, and a tilted plane has no exact 2D x/y geometry.
:class:`SliceGeometry` records where the slice lies (its axis, its z, its thickness), and the 2D outputs
(:func:`image_to_volume`, :func:`set_grid_transform`) take it from the fixed volume to become single-slice volumes and
a single-slice grid transform in the same plane. Both volumes of a pair must be 2D or both 3D, and two slices must
lie in the same plane (:func:`pair_dimension`); landmarks of a 2D pair must lie on their slice
(:func:`markups_to_landmarks` with ``volume=``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
import slicer
import vtk
import vtk.util.numpy_support

#: Diagonal of the matrix that turns LPS coordinates into RAS (and back: it is its own inverse).
RAS_FROM_LPS = np.array([-1.0, -1.0, 1.0])
#: How far a direction cosine of a single-slice volume may be from 0 or ±1 and the slice still count as in-plane
#: (1e-5 rad of tilt: 2.5 µm over 250 mm; file headers that store directions in single precision stay within it).
IN_PLANE_TOLERANCE = 1e-5
#: Slice thickness (mm) of a 2D output when no volume gives one.
DEFAULT_SLICE_THICKNESS = 1.0


class NodeInputError(ValueError):
    """An input node cannot be used; the message names the node and says what to do."""


def _check_no_parent_transform(node, role: str) -> None:
    parent = node.GetParentTransformNode()
    if parent is not None:
        raise NodeInputError(
            f"{role} '{node.GetName()}' is under the transform '{parent.GetName()}': harden that transform on it or "
            "remove it (Data or Transforms module) before registering"
        )


def _matrix3(vtk_matrix: vtk.vtkMatrix4x4) -> np.ndarray:
    return np.array([[vtk_matrix.GetElement(r, c) for c in range(3)] for r in range(3)])


def _vtk_matrix(matrix3: np.ndarray, translation=(0.0, 0.0, 0.0)) -> vtk.vtkMatrix4x4:
    result = vtk.vtkMatrix4x4()
    for r in range(3):
        for c in range(3):
            result.SetElement(r, c, float(matrix3[r, c]))
        result.SetElement(r, 3, float(translation[r]))
    return result


# ---------------------------------------------------------------------------------------------------------------------
# Volumes


def volume_geometry_lps(node) -> tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]]:
    """Spacing (mm), origin (LPS mm) and row-major direction (LPS) of a volume node, as SimpleITK wants them."""
    directions_ras = vtk.vtkMatrix4x4()
    node.GetIJKToRASDirectionMatrix(directions_ras)
    direction_lps = RAS_FROM_LPS[:, None] * _matrix3(directions_ras)
    origin_lps = RAS_FROM_LPS * np.asarray(node.GetOrigin(), dtype=np.float64)
    return (
        tuple(float(s) for s in node.GetSpacing()),
        tuple(float(o) for o in origin_lps),
        tuple(float(d) for d in direction_lps.ravel()),
    )


@dataclass(frozen=True)
class SliceGeometry:
    """Where the one slice of a single-slice volume lies, in-plane (the plane ``z = z_lps``).

    Attributes:
        axis: the IJK axis with one voxel (0 = I, 1 = J, 2 = K).
        z_lps: the slice's z in mm (LPS z = RAS S).
        thickness: the volume's spacing along ``axis`` in mm (the slice thickness).
        normal_sign: +1 or -1: the direction of ``axis`` is ``(0, 0, normal_sign)`` (LPS and RAS alike).
    """

    axis: int = 2
    z_lps: float = 0.0
    thickness: float = DEFAULT_SLICE_THICKNESS
    normal_sign: float = 1.0

    @property
    def in_plane_axes(self) -> tuple[int, int]:
        """The two IJK axes of the slice, in order: the 2D image's x and y index axes."""
        return tuple(a for a in range(3) if a != self.axis)

    def contains_z(self, z_lps: float, tolerance: float = 1e-6) -> bool:
        """Whether a point at this z lies on the slice (within half the slice thickness)."""
        return abs(float(z_lps) - self.z_lps) <= 0.5 * self.thickness + tolerance


def _describe(role: str, node) -> str:
    return f"{role} '{node.GetName()}'"


def _slice_geometry_3d(size, spacing, origin_lps, direction_lps: np.ndarray, what: str) -> SliceGeometry | None:
    """The :class:`SliceGeometry` of a 3D grid with one voxel along one axis (None when it has ≥ 2 along each)."""
    flat = [axis for axis in range(3) if int(size[axis]) < 2]
    if not flat:
        return None
    if len(flat) > 1:
        raise NodeInputError(f"{what} has one voxel along {len(flat)} axes (size {tuple(int(n) for n in size)}); "
                             "register images or single slices, not lines or points")
    axis = flat[0]
    in_plane = [a for a in range(3) if a != axis]
    normal = direction_lps[:, axis]
    tilted = max(abs(normal[0]), abs(normal[1]), abs(abs(normal[2]) - 1.0),
                 *[abs(direction_lps[2, a]) for a in in_plane])
    if tilted > IN_PLANE_TOLERANCE:
        angle = float(np.degrees(np.arccos(min(1.0, abs(float(normal[2]))))))
        raise NodeInputError(
            f"{what} is an oblique single slice (its plane is tilted {angle:.2f}° from an axial plane z = const); "
            "the module registers single slices in their x/y plane only: resample it onto an axial slice first, or "
            "register the 3D volume it was cut from"
        )
    return SliceGeometry(axis=axis, z_lps=float(origin_lps[2]), thickness=float(spacing[axis]),
                         normal_sign=float(np.sign(normal[2])))


def slice_geometry(node, role: str = "volume") -> SliceGeometry | None:
    """Where the slice of a single-slice volume node lies; None for a 3D volume (≥ 2 voxels along every axis).

    Raises:
        NodeInputError: the volume has no voxels, one voxel along more than one axis, or is an oblique single slice.
    """
    image_data = node.GetImageData()
    if image_data is None or image_data.GetNumberOfPoints() == 0:
        raise NodeInputError(f"{_describe(role, node)} has no voxels; load the image again")
    spacing, origin, direction = volume_geometry_lps(node)
    return _slice_geometry_3d(image_data.GetDimensions(), spacing, origin, np.reshape(direction, (3, 3)),
                              _describe(role, node))


def _as_slice_geometry(reference) -> SliceGeometry:
    """A :class:`SliceGeometry` from ``reference``: one already, a single-slice volume node, or None (the default:
    K axis, z = 0, :data:`DEFAULT_SLICE_THICKNESS`)."""
    if reference is None:
        return SliceGeometry()
    if isinstance(reference, SliceGeometry):
        return reference
    geometry = slice_geometry(reference, "reference volume")
    if geometry is None:
        raise ValueError(f"reference volume '{reference.GetName()}' is not a single slice; a 2D output needs the "
                         "single-slice volume it belongs to")
    return geometry


def squeeze_single_slice(image: sitk.Image, what: str = "image") -> sitk.Image:
    """A 3D SimpleITK image with one voxel along one axis as the 2D image of its slice (exact, see the module
    docstring); a 3D image with ≥ 2 voxels along every axis is returned as it is.

    Raises:
        NodeInputError: an oblique single slice, or one voxel along more than one axis (``what`` names the input).
    """
    if image.GetDimension() != 3:
        return image
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    geometry = _slice_geometry_3d(image.GetSize(), image.GetSpacing(), image.GetOrigin(), direction, what)
    if geometry is None:
        return image
    in_plane = list(geometry.in_plane_axes)
    array = sitk.GetArrayFromImage(image)  # (k, j, i[, c]); numpy axis of IJK axis a is 2 - a
    flat = np.take(array, 0, axis=2 - geometry.axis)
    result = sitk.GetImageFromArray(flat, isVector=image.GetNumberOfComponentsPerPixel() > 1)
    result.SetSpacing(tuple(float(image.GetSpacing()[a]) for a in in_plane))
    result.SetOrigin(tuple(float(o) for o in image.GetOrigin()[:2]))
    result.SetDirection(tuple(float(d) for d in direction[:2][:, in_plane].ravel()))
    return result


def geometry_3d(image: sitk.Image, reference=None) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[int, ...]]:
    """Spacing, origin (LPS), 3×3 direction (LPS) and size of the 3D grid of an image: its own for a 3D image; for a
    2D image the single-slice grid in the plane of ``reference`` (a :class:`SliceGeometry`, a single-slice volume
    node or None, see :func:`image_to_volume`), laid out along the same IJK axes as that volume."""
    if image.GetDimension() == 3:
        return (np.asarray(image.GetSpacing(), dtype=np.float64), np.asarray(image.GetOrigin(), dtype=np.float64),
                np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3), tuple(image.GetSize()))
    if image.GetDimension() != 2:
        raise ValueError(f"expected a 2D or 3D image, got {image.GetDimension()}-D")
    geometry = _as_slice_geometry(reference)
    in_plane = geometry.in_plane_axes
    direction_2d = np.asarray(image.GetDirection(), dtype=np.float64).reshape(2, 2)
    spacing, direction, size = np.zeros(3), np.zeros((3, 3)), [1, 1, 1]
    for column, axis in enumerate(in_plane):
        spacing[axis] = image.GetSpacing()[column]
        direction[:2, axis] = direction_2d[:, column]
        size[axis] = int(image.GetSize()[column])
    spacing[geometry.axis] = geometry.thickness
    direction[2, geometry.axis] = geometry.normal_sign
    origin = np.array([*image.GetOrigin(), geometry.z_lps], dtype=np.float64)
    return spacing, origin, direction, tuple(size)


def volume_to_image(node, role: str = "volume", allow_2d: bool = False) -> sitk.Image:
    """A scalar volume node as a SimpleITK image (a copy: voxel type, spacing, origin and direction kept exactly).

    Args:
        node: a ``vtkMRMLScalarVolumeNode`` (label map volumes included).
        role: how errors name the node to the user (e.g. ``"fixed volume"``).
        allow_2d: a single-slice volume (one voxel along one IJK axis) in an axial plane becomes a **2D** image (see
            the module docstring); False: it is refused (for callers that need 3D volumes).

    Raises:
        NodeInputError: no node, no voxels, a vector volume, a parent transform, a single-slice volume (unless
            ``allow_2d``), an oblique single slice or one voxel along two axes.
    """
    if node is None:
        raise NodeInputError(f"{role}: none selected; choose a volume")
    if not node.IsA("vtkMRMLScalarVolumeNode"):
        raise NodeInputError(f"{role} '{node.GetName()}' is a {node.GetClassName()}, not a scalar volume")
    image_data = node.GetImageData()
    if image_data is None or image_data.GetNumberOfPoints() == 0:
        raise NodeInputError(f"{role} '{node.GetName()}' has no voxels; load the image again")
    if image_data.GetNumberOfScalarComponents() != 1:
        raise NodeInputError(
            f"{role} '{node.GetName()}' has {image_data.GetNumberOfScalarComponents()} components per voxel; "
            "convert it to a scalar volume (Vector to Scalar Volume module)"
        )
    if min(image_data.GetDimensions()) < 2:
        if not allow_2d:
            raise NodeInputError(
                f"{role} '{node.GetName()}' is a single slice ({image_data.GetDimensions()}); a 3D volume is needed "
                "here"
            )
        slice_geometry(node, role)  # refuses oblique slices and lines with a message naming the node
    _check_no_parent_transform(node, role)
    array = np.array(slicer.util.arrayFromVolume(node), copy=True)
    image = sitk.GetImageFromArray(array)
    spacing, origin, direction = volume_geometry_lps(node)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction)
    return squeeze_single_slice(image, _describe(role, node)) if allow_2d else image


def volume_dimension(node) -> int | None:
    """The dimension a volume node registers in: 3 (a 3D volume), 2 (a single slice in an axial plane), or None (no
    node, no voxels, an oblique single slice, a line): e.g. to offer the models of that dimension."""
    if node is None or node.GetImageData() is None or node.GetImageData().GetNumberOfPoints() == 0:
        return None
    try:
        return 3 if slice_geometry(node) is None else 2
    except NodeInputError:
        return None


def pair_dimension(fixed_node, moving_node, fixed_role: str = "fixed volume",
                   moving_role: str = "moving volume") -> int:
    """The dimension a pair of volume nodes registers in: 3 (two 3D volumes) or 2 (two single slices).

    Call it after :func:`volume_to_image` has read both (so missing or unusable volumes got their own message).

    Raises:
        NodeInputError: one is a single slice and the other 3D (the message names both), or the two slices do not
            lie in the same plane (z more than half a slice thickness apart).
    """
    fixed_slice = slice_geometry(fixed_node, fixed_role)
    moving_slice = slice_geometry(moving_node, moving_role)
    if (fixed_slice is None) != (moving_slice is None):
        def what(node, geometry):
            dims = tuple(node.GetImageData().GetDimensions())
            return f"a single slice (2D, {dims})" if geometry is not None else f"a 3D volume ({dims})"

        raise NodeInputError(
            f"{_describe(fixed_role, fixed_node)} is {what(fixed_node, fixed_slice)} but "
            f"{_describe(moving_role, moving_node)} is {what(moving_node, moving_slice)}; register two single slices "
            "(2D) or two 3D volumes"
        )
    if fixed_slice is None:
        return 3
    apart = abs(fixed_slice.z_lps - moving_slice.z_lps)
    if apart > 0.5 * min(fixed_slice.thickness, moving_slice.thickness) + 1e-6:
        raise NodeInputError(
            f"the slices of {_describe(fixed_role, fixed_node)} (S = {fixed_slice.z_lps:g} mm) and "
            f"{_describe(moving_role, moving_node)} (S = {moving_slice.z_lps:g} mm) lie {apart:g} mm apart; a 2D "
            "registration needs both in the same plane: move the moving volume onto the fixed slice (Transforms "
            "module: translate S, then harden)"
        )
    return 2


def set_volume_geometry(node, image: sitk.Image, reference=None) -> None:
    """Give a volume node the spacing, origin and direction of a SimpleITK image (LPS → RAS); a 2D image gets its
    single-slice geometry in the plane of ``reference`` (see :func:`image_to_volume`)."""
    spacing, origin, direction, _ = geometry_3d(image, reference)
    node.SetSpacing(*[float(s) for s in spacing])
    node.SetOrigin(*[float(o) for o in RAS_FROM_LPS * origin])
    node.SetIJKToRASDirectionMatrix(_vtk_matrix(RAS_FROM_LPS[:, None] * direction))


def image_to_volume(image: sitk.Image, node, reference=None) -> None:
    """Fill a volume node with a scalar SimpleITK image: voxels (copied, type kept) and geometry.

    A 2D image becomes a single-slice volume in the plane of ``reference``: the single-slice volume it came from or
    lies on (for registration outputs, the fixed volume), or a :class:`SliceGeometry`. The slice keeps that volume's
    IJK layout, z and slice thickness; without a reference it is the K slice at z = 0 with a thickness of
    :data:`DEFAULT_SLICE_THICKNESS` (1 mm). For a 3D image ``reference`` is not used.
    """
    if image.GetDimension() not in (2, 3) or image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(f"expected a 2D or 3D scalar image, got {image.GetDimension()}-D with "
                         f"{image.GetNumberOfComponentsPerPixel()} components")
    array = sitk.GetArrayFromImage(image)
    if image.GetDimension() == 2:
        geometry = _as_slice_geometry(reference)
        array = np.expand_dims(array, axis=2 - geometry.axis)
        reference = geometry
    slicer.util.updateVolumeFromArray(node, array)
    set_volume_geometry(node, image, reference)


# ---------------------------------------------------------------------------------------------------------------------
# Markups


def markups_to_landmarks(node, role: str = "landmarks", volume=None, volume_role: str = "volume"):
    """The defined control points of a markups node as :class:`metareg.core.landmarks.Landmarks` (RAS → LPS mm).

    Points that were never placed (position status not "defined") are skipped, as the engine's file reader does.

    Args:
        node: a markups node (point list).
        role: how errors name it (e.g. ``"fixed landmarks"``).
        volume: the volume the points belong to. When it is a single slice (a 2D registration), every point must lie
            on that slice: its z (LPS = RAS S) within half the slice thickness of the slice's. The points keep their
            3 coordinates (the engine uses x and y of 2D landmarks). None or a 3D volume: no check.
        volume_role: how errors name ``volume`` (e.g. ``"fixed volume"``).

    Raises:
        NodeInputError: no node, a parent transform, no placed point, or (2D) a point off the slice (named).
    """
    from metareg.core.landmarks import Landmarks

    if node is None:
        raise NodeInputError(f"{role}: none selected")
    _check_no_parent_transform(node, role)
    labels, points_ras = markups_points(node)
    points = [RAS_FROM_LPS * point for point in points_ras]
    if not labels:
        raise NodeInputError(f"{role} '{node.GetName()}' has no placed points; place at least one labelled point")
    geometry = slice_geometry(volume, volume_role) if volume is not None else None
    if geometry is not None:
        for label, point in zip(labels, points):
            if not geometry.contains_z(point[2]):
                raise NodeInputError(
                    f"{role} '{node.GetName()}': point '{label}' lies at S = {point[2]:g} mm, "
                    f"{abs(point[2] - geometry.z_lps):g} mm off the slice of {_describe(volume_role, volume)} "
                    f"(S = {geometry.z_lps:g} mm, {geometry.thickness:g} mm thick); landmarks of a 2D registration "
                    "must lie on the slice: place the point again in the slice view"
                )
    return Landmarks(tuple(labels), np.asarray(points))


def markups_points(node) -> tuple[list[str], np.ndarray]:
    """Labels and local RAS positions (mm, the node's own coordinates: no parent transform applied) of the placed
    points of a markups node; points without a position are skipped."""
    labels, points = [], []
    for index in range(node.GetNumberOfControlPoints()):
        if node.GetNthControlPointPositionStatus(index) != node.PositionDefined:
            continue
        position = [0.0, 0.0, 0.0]
        node.GetNthControlPointPosition(index, position)
        labels.append(node.GetNthControlPointLabel(index))
        points.append(position)
    return labels, np.asarray(points, dtype=np.float64).reshape(-1, 3)


def set_markups_points(node, labels, points_ras: np.ndarray) -> None:
    """Replace the control points of a markups node with labelled RAS mm points."""
    node.RemoveAllControlPoints()
    for label, point in zip(labels, np.asarray(points_ras, dtype=np.float64)):
        node.AddControlPoint(vtk.vtkVector3d(*[float(c) for c in point]), str(label))


def landmarks_ras(landmarks) -> np.ndarray:
    """The points of :class:`metareg.core.landmarks.Landmarks` in RAS mm, ``(N, 3)``."""
    return np.asarray(landmarks.points_lps, dtype=np.float64) * RAS_FROM_LPS


# ---------------------------------------------------------------------------------------------------------------------
# Segmentations


def shared_segment_names(fixed_segmentation, moving_segmentation) -> list[str]:
    """Names of the segments present in both segmentation nodes, in the fixed node's order."""
    def names(node):
        segmentation = node.GetSegmentation()
        return [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]

    moving_names = set(names(moving_segmentation))
    return [name for name in names(fixed_segmentation) if name in moving_names]


def segmentation_to_labels(segmentation_node, reference_volume, segment_names: list[str], role: str) -> sitk.Image:
    """The named segments as one label map on the reference volume's grid: segment ``n`` of ``segment_names`` gets
    label value ``n + 1`` (so the fixed and moving maps use the same value for the same segment name). A single-slice
    reference volume (2D) gives a 2D label map of its slice.

    Nothing is added to the scene.
    """
    if segmentation_node is None:
        raise NodeInputError(f"{role}: none selected")
    _check_no_parent_transform(segmentation_node, role)
    segmentation = segmentation_node.GetSegmentation()
    ids = vtk.vtkStringArray()
    for name in segment_names:
        ids.InsertNextValue(segmentation.GetSegmentIdBySegmentName(name))
    values = vtk.vtkIntArray()
    for value in range(1, len(segment_names) + 1):
        values.InsertNextValue(value)
    geometry = slicer.vtkSlicerSegmentationsModuleLogic.CreateOrientedImageDataFromVolumeNode(reference_volume)
    merged = slicer.vtkOrientedImageData()
    if not segmentation_node.GenerateMergedLabelmapForAllSegments(
        merged, slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY, geometry, ids, values
    ):
        raise NodeInputError(f"{role} '{segmentation_node.GetName()}' could not be turned into a label map")
    dims = merged.GetDimensions()
    array = vtk.util.numpy_support.vtk_to_numpy(merged.GetPointData().GetScalars()).reshape(dims[::-1]).copy()
    image = sitk.GetImageFromArray(array.astype(np.int32))
    image_to_world = vtk.vtkMatrix4x4()
    merged.GetImageToWorldMatrix(image_to_world)
    matrix = np.array([[image_to_world.GetElement(r, c) for c in range(4)] for r in range(4)])
    spacing = np.linalg.norm(matrix[:3, :3], axis=0)
    extent = merged.GetExtent()
    origin_ras = matrix[:3, :3] @ np.array(extent[::2], dtype=np.float64) + matrix[:3, 3]
    image.SetSpacing(tuple(float(s) for s in spacing))
    image.SetOrigin(tuple(float(o) for o in RAS_FROM_LPS * origin_ras))
    image.SetDirection(tuple(float(d) for d in (RAS_FROM_LPS[:, None] * (matrix[:3, :3] / spacing)).ravel()))
    if slice_geometry(reference_volume, "reference volume") is not None:  # a 2D pair: the label map of its slice
        image = squeeze_single_slice(image, _describe(role, segmentation_node))
    return image


# ---------------------------------------------------------------------------------------------------------------------
# Displacement field ↔ grid transform


def field_to_grid_transform(field: sitk.Image, reference=None) -> "slicer.vtkOrientedGridTransform":
    """The engine's exported field as a VTK grid transform in RAS, ready for a ``vtkMRMLGridTransformNode``.

    ``field``: vector image in LPS mm on the fixed grid, fixed point ``x`` ↦ moving point ``x + d(x)`` (3D with 3
    components, or 2D with 2). The result maps a fixed RAS point to the matching moving RAS point (Slicer's *transform
    from parent*, the resampling direction), with linear interpolation of the displacement as ITK's
    DisplacementFieldTransform does.

    A 2D field becomes a grid with one slice in the plane of ``reference`` (the fixed single-slice volume, a
    :class:`SliceGeometry`, or None: z = 0) and zero displacement along z. VTK's grid interpolation clamps at the grid's
    edges, so the displacement of that one slice applies at every z: points on the slice (and beside it) move in x/y
    exactly as the 2D field says.
    """
    dim = field.GetDimension()
    if dim not in (2, 3) or field.GetNumberOfComponentsPerPixel() != dim:
        raise ValueError("expected a 3D field with 3 components or a 2D field with 2 components per voxel (LPS mm)")
    displacement = sitk.GetArrayFromImage(field).astype(np.float64)  # (k, j, i, 3) or (j, i, 2)
    if dim == 2:
        # the grid's own layout: x, y of the 2D field along I, J and the one slice along K
        geometry = _as_slice_geometry(reference)
        displacement = np.concatenate([displacement, np.zeros(displacement.shape[:-1] + (1,))], axis=-1)[None]
        direction_2d = np.asarray(field.GetDirection(), dtype=np.float64).reshape(2, 2)
        direction_lps = np.zeros((3, 3))
        direction_lps[:2, :2] = direction_2d
        direction_lps[2, 2] = geometry.normal_sign
        size = (*field.GetSize(), 1)
        spacing = (*field.GetSpacing(), geometry.thickness)
        origin_lps = np.array([*field.GetOrigin(), geometry.z_lps])
    else:
        direction_lps = np.asarray(field.GetDirection(), dtype=np.float64).reshape(3, 3)
        size, spacing, origin_lps = field.GetSize(), field.GetSpacing(), np.asarray(field.GetOrigin())
    displacement_ras = displacement * RAS_FROM_LPS
    grid = vtk.vtkImageData()
    grid.SetDimensions(*[int(n) for n in size])
    grid.SetSpacing(*[float(s) for s in spacing])
    grid.SetOrigin(*[float(o) for o in RAS_FROM_LPS * origin_lps])
    vectors = vtk.util.numpy_support.numpy_to_vtk(displacement_ras.reshape(-1, 3), deep=True,
                                                  array_type=vtk.VTK_DOUBLE)
    vectors.SetName("displacement_ras_mm")
    grid.GetPointData().SetScalars(vectors)
    transform = slicer.vtkOrientedGridTransform()
    transform.SetDisplacementGridData(grid)
    transform.SetGridDirectionMatrix(_vtk_matrix(RAS_FROM_LPS[:, None] * direction_lps))
    transform.SetInterpolationModeToLinear()
    transform.SetDisplacementScale(1.0)
    transform.SetDisplacementShift(0.0)
    return transform


def set_grid_transform(node, field: sitk.Image, reference=None) -> None:
    """Make a ``vtkMRMLGridTransformNode``'s transform from parent the field (fixed RAS point → moving RAS point).

    A 2D field needs ``reference``, the fixed single-slice volume (or its :class:`SliceGeometry`), to lie in its plane
    (see :func:`field_to_grid_transform`).
    """
    node.SetAndObserveTransformFromParent(field_to_grid_transform(field, reference))


def grid_transform_to_field(node) -> sitk.Image:
    """The field of a grid transform node made by :func:`set_grid_transform`, as the engine's displacement field: a
    ``sitkVectorFloat64`` image in LPS mm, fixed point ``x`` ↦ moving point ``x + d(x)`` (the reverse of
    :func:`field_to_grid_transform`, exact: the same numbers and geometry).

    A grid with one slice and no displacement along its normal (what a 2D field becomes) gives the 2D field back.

    Raises:
        ValueError: the node's transform from parent is not a single grid transform (e.g. a composite).
    """
    transform = node.GetTransformFromParent() if node.IsA("vtkMRMLTransformNode") else node
    if transform is None or not transform.IsA("vtkOrientedGridTransform"):
        raise ValueError(f"'{node.GetName() if hasattr(node, 'GetName') else node}' has no grid transform from parent")
    grid = transform.GetDisplacementGrid()
    if grid is None:
        raise ValueError("the grid transform has no displacement grid")
    dims = grid.GetDimensions()
    vectors = vtk.util.numpy_support.vtk_to_numpy(grid.GetPointData().GetScalars()).astype(np.float64)
    displacement_lps = (vectors.reshape(dims[2], dims[1], dims[0], 3) * transform.GetDisplacementScale()
                        + transform.GetDisplacementShift()) * RAS_FROM_LPS
    direction_ras = vtk.vtkMatrix4x4()
    if transform.GetGridDirectionMatrix() is not None:
        direction_ras.DeepCopy(transform.GetGridDirectionMatrix())
    direction_lps = RAS_FROM_LPS[:, None] * _matrix3(direction_ras)
    origin_lps = RAS_FROM_LPS * np.asarray(grid.GetOrigin(), dtype=np.float64)
    spacing = np.asarray(grid.GetSpacing(), dtype=np.float64)
    flat_in_plane = (dims[2] == 1 and np.allclose(np.abs(direction_lps[:, 2]), [0, 0, 1], atol=IN_PLANE_TOLERANCE)
                     and np.allclose(direction_lps[2, :2], 0.0, atol=IN_PLANE_TOLERANCE)
                     and not np.any(displacement_lps[..., 2]))
    if flat_in_plane:
        field = sitk.GetImageFromArray(np.ascontiguousarray(displacement_lps[0, ..., :2]), isVector=True)
        field.SetSpacing(tuple(float(s) for s in spacing[:2]))
        field.SetOrigin(tuple(float(o) for o in origin_lps[:2]))
        field.SetDirection(tuple(float(d) for d in direction_lps[:2, :2].ravel()))
        return field
    field = sitk.GetImageFromArray(np.ascontiguousarray(displacement_lps), isVector=True)
    field.SetSpacing(tuple(float(s) for s in spacing))
    field.SetOrigin(tuple(float(o) for o in origin_lps))
    field.SetDirection(tuple(float(d) for d in direction_lps.ravel()))
    return field

