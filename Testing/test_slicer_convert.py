"""MRML glue on real MRML nodes (slicer-core): volumes, markups and the field ↔ grid transform, geometry exact.

The geometry tests use an oblique, anisotropic grid (0.8 × 1.0 × 2.5 mm, rotated) so that any mix-up of axes, of
LPS and RAS, or of spacing and direction shows up.
"""

import numpy as np
import pytest
import SimpleITK as sitk

import slicer  # slicer-core, installed by `./run test` through the project's `slicer` extra

from MetaRegistrationLib import convert, headless
from metareg.core.geometry import field_to_transform, map_points, rotation_matrix

pytestmark = pytest.mark.slicer


@pytest.fixture()
def scene():
    app = headless.get_app()
    headless.clear_scene()
    return app.scene




def oblique_image(pixel_type=np.int16) -> sitk.Image:
    """An oblique anisotropic 3D image with distinct voxel values (x fastest)."""
    size = (13, 11, 7)
    array = np.arange(np.prod(size), dtype=np.float64).reshape(size[::-1]).astype(pixel_type)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.8, 1.0, 2.5))
    image.SetOrigin((12.5, -40.25, 7.75))
    image.SetDirection(tuple(rotation_matrix((1, 2, 3), 23).ravel()))
    return image


def smooth_field(reference: sitk.Image, amplitude_mm=4.0) -> sitk.Image:
    """A smooth, known displacement field (LPS mm) on ``reference``'s grid."""
    from metareg.core.geometry import Grid, vector_image

    grid = Grid.from_image(reference)
    points = grid.physical_points()
    centre = grid.center
    field = np.stack([amplitude_mm * np.sin((points[..., (c + 1) % 3] - centre[(c + 1) % 3]) / 9.0 + c)
                      for c in range(3)], axis=-1)
    return vector_image(field, grid)


def test_volume_round_trip_keeps_voxels_and_geometry_exactly(scene):
    image = oblique_image()
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "oblique")
    convert.image_to_volume(image, node)
    back = convert.volume_to_image(node, "test volume")
    assert back.GetSize() == image.GetSize()
    assert back.GetPixelID() == image.GetPixelID()
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(image))
    np.testing.assert_allclose(back.GetSpacing(), image.GetSpacing(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(back.GetOrigin(), image.GetOrigin(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(back.GetDirection(), image.GetDirection(), rtol=0, atol=1e-12)


def test_volume_voxels_sit_where_slicer_puts_them(scene):
    """Each voxel's RAS position from the node's IJKToRAS is the image's LPS position with x and y negated."""
    import vtk

    image = oblique_image()
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "oblique")
    convert.image_to_volume(image, node)
    ijk_to_ras = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(ijk_to_ras)
    for index in [(0, 0, 0), (12, 0, 0), (0, 10, 0), (0, 0, 6), (5, 7, 3)]:
        ras = ijk_to_ras.MultiplyPoint((*index, 1.0))[:3]
        lps = image.TransformIndexToPhysicalPoint(index)
        np.testing.assert_allclose(ras, [-lps[0], -lps[1], lps[2]], atol=1e-9)
    # and the value at that voxel is the same in both
    array = slicer.util.arrayFromVolume(node)
    assert array[3, 7, 5] == image[5, 7, 3]


def test_volume_made_in_slicer_converts_to_the_same_physical_points(scene):
    """The other direction: a node whose IJKToRAS is set directly (as Slicer's readers do)."""
    import vtk

    node = slicer.util.addVolumeFromArray(np.zeros((4, 5, 6), dtype=np.float32), name="made in slicer")
    matrix = np.eye(4)
    matrix[:3, :3] = rotation_matrix((0, 1, 1), -31) @ np.diag([1.2, 0.7, 3.0])
    matrix[:3, 3] = (-20.0, 15.0, 3.5)
    vtk_matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            vtk_matrix.SetElement(r, c, matrix[r, c])
    node.SetIJKToRASMatrix(vtk_matrix)
    image = convert.volume_to_image(node)
    np.testing.assert_allclose(image.GetSpacing(), (1.2, 0.7, 3.0), atol=1e-12)
    for index in [(0, 0, 0), (5, 4, 3), (2, 1, 0)]:
        lps = image.TransformIndexToPhysicalPoint(index)
        ras = matrix @ np.array([*index, 1.0])
        np.testing.assert_allclose(lps, [-ras[0], -ras[1], ras[2]], atol=1e-9)


def test_inputs_that_cannot_be_registered_get_a_message_naming_them(scene):
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "fixed T1")
    convert.image_to_volume(oblique_image(), node)
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "my shift")
    node.SetAndObserveTransformNodeID(transform.GetID())
    with pytest.raises(convert.NodeInputError, match="fixed volume 'fixed T1' is under the transform 'my shift'"):
        convert.volume_to_image(node, "fixed volume")
    flat = slicer.util.addVolumeFromArray(np.zeros((1, 5, 6), dtype=np.float32), name="one slice")
    with pytest.raises(convert.NodeInputError, match="single slice"):
        convert.volume_to_image(flat, "moving volume")
    with pytest.raises(convert.NodeInputError, match="none selected"):
        convert.volume_to_image(None, "moving volume")


def test_markups_become_lps_landmarks_and_back(scene):
    node = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "points")
    convert.set_markups_points(node, ["AC", "PC", "tip"], np.array([[1.0, 2.0, 3.0], [-4.5, 5.5, -6.0],
                                                                     [7.0, 8.0, 9.0]]))
    node.UnsetNthControlPointPosition(2)  # a point without a position: skipped
    landmarks = convert.markups_to_landmarks(node, "fixed landmarks")
    assert landmarks.labels == ("AC", "PC")
    np.testing.assert_allclose(landmarks.points_lps, [[-1.0, -2.0, 3.0], [4.5, -5.5, -6.0]], atol=0)
    np.testing.assert_allclose(convert.landmarks_ras(landmarks), [[1.0, 2.0, 3.0], [-4.5, 5.5, -6.0]], atol=0)


def test_sample_landmarks_read_by_slicer_equal_the_engine_reading(scene, sample_dir):
    """Slicer's own .mrk.json reader and the engine's reader agree to the micrometre (the file is LPS)."""
    from metareg.core.landmarks import read_landmarks

    path = sample_dir / "brain3d_fixed_landmarks.mrk.json"
    storage = slicer.vtkMRMLMarkupsJsonStorageNode()
    storage.SetFileName(str(path))
    node = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "fixed landmarks")
    assert storage.ReadData(node)
    from_slicer = convert.markups_to_landmarks(node)
    from_engine = read_landmarks(path)
    assert from_slicer.labels == from_engine.labels
    np.testing.assert_allclose(from_slicer.points_lps, from_engine.points_lps, atol=1e-6)


def test_grid_transform_maps_points_exactly_as_the_engine_field(scene):
    """Transform from parent of the node = fixed RAS point ↦ moving RAS point = x + d(x), linear as in ITK."""
    reference = oblique_image()
    field = smooth_field(reference)
    node = scene.AddNewNodeByClass("vtkMRMLGridTransformNode", "field")
    convert.set_grid_transform(node, field)
    rng = np.random.default_rng(0)
    index = rng.uniform(0.5, np.asarray(reference.GetSize()) - 1.5, size=(50, 3))
    points_lps = np.array([reference.TransformContinuousIndexToPhysicalPoint(tuple(i)) for i in index])
    expected_lps = map_points(field, points_lps)
    from_parent = node.GetTransformFromParent()
    mapped_ras = np.array([from_parent.TransformPoint(tuple(p * convert.RAS_FROM_LPS)) for p in points_lps])
    # agreement to 0.1 µm (VTK evaluates the grid in single precision)
    np.testing.assert_allclose(mapped_ras * convert.RAS_FROM_LPS, expected_lps, atol=1e-4)
    assert np.max(np.linalg.norm(expected_lps - points_lps, axis=1)) > 1.0  # the field really moves the points


def test_grid_transform_agrees_with_slicer_reading_the_itk_h5_file(scene, tmp_path):
    """The explicit conversion and Slicer's own .h5 reader (vtkMRMLTransformStorageNode) give the same mapping."""
    reference = oblique_image()
    field = smooth_field(reference)
    path = tmp_path / "field.h5"
    sitk.WriteTransform(field_to_transform(field), str(path))
    storage = slicer.vtkMRMLTransformStorageNode()
    storage.SetFileName(str(path))
    from_file = scene.AddNewNodeByClass("vtkMRMLGridTransformNode", "from file")
    assert storage.ReadData(from_file)
    explicit = scene.AddNewNodeByClass("vtkMRMLGridTransformNode", "explicit")
    convert.set_grid_transform(explicit, field)
    rng = np.random.default_rng(1)
    for index in rng.uniform(1, np.asarray(reference.GetSize()) - 2, size=(20, 3)):
        ras = np.asarray(reference.TransformContinuousIndexToPhysicalPoint(tuple(index))) * convert.RAS_FROM_LPS
        a = np.array(from_file.GetTransformFromParent().TransformPoint(tuple(ras)))
        b = np.array(explicit.GetTransformFromParent().TransformPoint(tuple(ras)))
        np.testing.assert_allclose(a, b, atol=0.05)  # Slicer's reader interpolates cubically, ours linearly
