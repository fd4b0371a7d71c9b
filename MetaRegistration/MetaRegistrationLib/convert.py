"""Conversions between MRML nodes and the engine's SimpleITK images and landmarks, with exact geometry.

Slicer stores volumes, markups and transforms in RAS millimetres; the engine works in ITK's LPS millimetres. The two
differ by negating x and y. Every change between them in this module goes through :data:`RAS_FROM_LPS`.

A volume node's voxel ``(i, j, k)`` sits at ``IJKToRAS @ (i, j, k, 1)`` with
``IJKToRAS = [[R @ diag(spacing), origin_ras], [0, 1]]`` (``R``: the node's IJK-to-RAS directions). A SimpleITK image's
voxel sits at ``origin_lps + D @ diag(spacing) @ index``. So ``D = RAS_FROM_LPS @ R`` and
``origin_lps = RAS_FROM_LPS @ origin_ras``, and the voxel arrays are the same (both ``(k, j, i)`` in numpy).

Inputs must not sit under a parent transform: the engine registers the images as they are stored, and a transform
above an input would make "as stored" and "as shown" differ. The error says to harden or remove the transform.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
import slicer
import vtk
import vtk.util.numpy_support

#: Diagonal of the matrix that turns LPS coordinates into RAS (and back: it is its own inverse).
RAS_FROM_LPS = np.array([-1.0, -1.0, 1.0])


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


def volume_to_image(node, role: str = "volume") -> sitk.Image:
    """A scalar volume node as a 3D SimpleITK image (a copy: voxel type, spacing, origin and direction kept exactly).

    Args:
        node: a ``vtkMRMLScalarVolumeNode`` (label map volumes included).
        role: how errors name the node to the user (e.g. ``"fixed volume"``).

    Raises:
        NodeInputError: no node, no voxels, a vector volume, a single-slice volume, or a parent transform.
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
        raise NodeInputError(
            f"{role} '{node.GetName()}' is a single slice ({image_data.GetDimensions()}); the Slicer module registers "
            "3D volumes, use `metareg register` for 2D images"
        )
    _check_no_parent_transform(node, role)
    array = np.array(slicer.util.arrayFromVolume(node), copy=True)
    image = sitk.GetImageFromArray(array)
    spacing, origin, direction = volume_geometry_lps(node)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction)
    return image


def set_volume_geometry(node, image: sitk.Image) -> None:
    """Give a volume node the spacing, origin and direction of a 3D SimpleITK image (LPS → RAS)."""
    direction_lps = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    node.SetSpacing(*[float(s) for s in image.GetSpacing()])
    node.SetOrigin(*[float(o) for o in RAS_FROM_LPS * np.asarray(image.GetOrigin())])
    node.SetIJKToRASDirectionMatrix(_vtk_matrix(RAS_FROM_LPS[:, None] * direction_lps))


def image_to_volume(image: sitk.Image, node) -> None:
    """Fill a volume node with a 3D scalar SimpleITK image: voxels (copied, type kept) and geometry."""
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(f"expected a 3D scalar image, got {image.GetDimension()}-D with "
                         f"{image.GetNumberOfComponentsPerPixel()} components")
    slicer.util.updateVolumeFromArray(node, sitk.GetArrayFromImage(image))
    set_volume_geometry(node, image)


# ---------------------------------------------------------------------------------------------------------------------
# Markups


def markups_to_landmarks(node, role: str = "landmarks"):
    """The defined control points of a markups node as :class:`metareg.landmarks.Landmarks` (RAS → LPS mm).

    Points that were never placed (position status not "defined") are skipped, as the engine's file reader does.
    """
    from metareg.landmarks import Landmarks

    if node is None:
        raise NodeInputError(f"{role}: none selected")
    _check_no_parent_transform(node, role)
    labels, points = [], []
    for index in range(node.GetNumberOfControlPoints()):
        if node.GetNthControlPointPositionStatus(index) != node.PositionDefined:
            continue
        position = [0.0, 0.0, 0.0]
        node.GetNthControlPointPosition(index, position)
        labels.append(node.GetNthControlPointLabel(index))
        points.append(RAS_FROM_LPS * np.asarray(position, dtype=np.float64))
    if not labels:
        raise NodeInputError(f"{role} '{node.GetName()}' has no placed points; place at least one labelled point")
    return Landmarks(tuple(labels), np.asarray(points))


def set_markups_points(node, labels, points_ras: np.ndarray) -> None:
    """Replace the control points of a markups node with labelled RAS mm points."""
    node.RemoveAllControlPoints()
    for label, point in zip(labels, np.asarray(points_ras, dtype=np.float64)):
        node.AddControlPoint(vtk.vtkVector3d(*[float(c) for c in point]), str(label))


def landmarks_ras(landmarks) -> np.ndarray:
    """The points of :class:`metareg.landmarks.Landmarks` in RAS mm, ``(N, 3)``."""
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
    label value ``n + 1`` (so the fixed and moving maps use the same value for the same segment name).

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
    return image


# ---------------------------------------------------------------------------------------------------------------------
# Displacement field → grid transform


def field_to_grid_transform(field: sitk.Image) -> "slicer.vtkOrientedGridTransform":
    """The engine's exported field as a VTK grid transform in RAS, ready for a ``vtkMRMLGridTransformNode``.

    ``field``: 3D vector image in LPS mm on the fixed grid, fixed point ``x`` ↦ moving point ``x + d(x)``. The result
    maps a fixed RAS point to the matching moving RAS point (Slicer's *transform from parent*, the resampling
    direction), with linear interpolation of the displacement as ITK's DisplacementFieldTransform does.
    """
    if field.GetDimension() != 3 or field.GetNumberOfComponentsPerPixel() != 3:
        raise ValueError("expected a 3D field with 3 components per voxel (LPS mm)")
    displacement_ras = sitk.GetArrayFromImage(field).astype(np.float64) * RAS_FROM_LPS  # (k, j, i, 3)
    grid = vtk.vtkImageData()
    grid.SetDimensions(*[int(n) for n in field.GetSize()])
    grid.SetSpacing(*[float(s) for s in field.GetSpacing()])
    grid.SetOrigin(*[float(o) for o in RAS_FROM_LPS * np.asarray(field.GetOrigin())])
    vectors = vtk.util.numpy_support.numpy_to_vtk(displacement_ras.reshape(-1, 3), deep=True,
                                                  array_type=vtk.VTK_DOUBLE)
    vectors.SetName("displacement_ras_mm")
    grid.GetPointData().SetScalars(vectors)
    direction_lps = np.asarray(field.GetDirection(), dtype=np.float64).reshape(3, 3)
    transform = slicer.vtkOrientedGridTransform()
    transform.SetDisplacementGridData(grid)
    transform.SetGridDirectionMatrix(_vtk_matrix(RAS_FROM_LPS[:, None] * direction_lps))
    transform.SetInterpolationModeToLinear()
    transform.SetDisplacementScale(1.0)
    transform.SetDisplacementShift(0.0)
    return transform


def set_grid_transform(node, field: sitk.Image) -> None:
    """Make a ``vtkMRMLGridTransformNode``'s transform from parent the field (fixed RAS point → moving RAS point)."""
    node.SetAndObserveTransformFromParent(field_to_grid_transform(field))

