"""The sample data in Resources/SampleData and the ground-truth generator metareg.learning.synthetic.

brain3d's moving image is a synthetic deformation of the fixed template (see Resources/SampleData/README.md); its
truth is rebuilt here from brain3d_truth.json, which also checks that random_smooth_field is deterministic.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from metareg.core.errors import InputError
from metareg.core.landmarks import match_landmarks, read_landmarks
from metareg.core.geometry import map_points, warp_image
from metareg.learning.synthetic import invert_points, random_smooth_field

SAMPLE_DATA = Path(__file__).resolve().parents[1] / "Resources" / "SampleData"


def sample(name: str) -> Path:
    path = SAMPLE_DATA / name
    assert path.is_file(), f"missing sample file {path}; rebuild with Resources/SampleData/build_sample_data.py"
    return path


def direction_matrix(image: sitk.Image) -> np.ndarray:
    dim = image.GetDimension()
    return np.asarray(image.GetDirection()).reshape(dim, dim)


# --- sample data ---------------------------------------------------------------------------------------------------


def test_brain3d_images_have_their_own_geometry():
    fixed = sitk.ReadImage(str(sample("brain3d_fixed_T1.nii.gz")))
    moving_t1 = sitk.ReadImage(str(sample("brain3d_moving_T1.nii.gz")))
    moving_t2 = sitk.ReadImage(str(sample("brain3d_moving_T2.nii.gz")))
    assert fixed.GetDimension() == 3 and moving_t1.GetDimension() == 3
    np.testing.assert_allclose(fixed.GetSpacing(), [2.0] * 3)
    np.testing.assert_allclose(moving_t1.GetSpacing(), [2.2] * 3, atol=1e-6)
    for image in (fixed, moving_t1, moving_t2):
        assert image.GetPixelID() == sitk.sitkUInt8
        direction = direction_matrix(image)
        np.testing.assert_allclose(direction @ direction.T, np.eye(3), atol=1e-5)
        values = sitk.GetArrayViewFromImage(image)
        assert values.mean() > 30 and values.max() > 200, "a sample image is (nearly) empty"
    # The moving grid is oblique and differs from the fixed one (which is the template's RAS-stored grid).
    assert not np.allclose(direction_matrix(moving_t1), direction_matrix(fixed), atol=0.05)
    assert not np.allclose(np.abs(direction_matrix(moving_t1)), np.eye(3), atol=0.05)
    assert moving_t2.GetSize() == moving_t1.GetSize()
    np.testing.assert_allclose(moving_t2.GetOrigin(), moving_t1.GetOrigin())
    np.testing.assert_allclose(moving_t2.GetDirection(), moving_t1.GetDirection())
    # Every moving voxel differs a little from a plain copy: T1 and T2 are different contrasts.
    t1 = sitk.GetArrayViewFromImage(moving_t1).astype(float)
    t2 = sitk.GetArrayViewFromImage(moving_t2).astype(float)
    assert np.corrcoef(t1.ravel(), t2.ravel())[0, 1] < 0.95


def test_brain3d_landmarks_are_the_32_afids_in_both_images():
    fixed = read_landmarks(sample("brain3d_fixed_landmarks.mrk.json"))
    moving = read_landmarks(sample("brain3d_moving_landmarks.mrk.json"))
    labels, fixed_points, moving_points = match_landmarks(fixed, moving)
    assert len(fixed) == len(moving) == len(labels) == 32
    assert {"AC", "PC", "genu of CC", "L MB", "R MB"} <= set(labels)
    # AC is near the MNI origin; the AFIDs lie inside the 2 mm fixed image and the moving image.
    np.testing.assert_allclose(fixed_points[labels.index("AC")], [0.2, -2.7, -4.9], atol=0.5)
    for name, points in (("fixed", fixed_points), ("moving", moving_points)):
        image = sitk.ReadImage(str(sample(f"brain3d_{name}_T1.nii.gz")))
        for point in points:
            index = np.asarray(image.TransformPhysicalPointToContinuousIndex(point.tolist()))
            assert np.all(index > 5) and np.all(index < np.asarray(image.GetSize()) - 5)


def test_brain3d_truth_maps_fixed_landmarks_onto_moving_ones():
    truth = json.loads(sample("brain3d_truth.json").read_text(encoding="utf-8"))
    fixed = read_landmarks(sample("brain3d_fixed_landmarks.mrk.json"))
    moving = read_landmarks(sample("brain3d_moving_landmarks.mrk.json"))
    labels, fixed_points, moving_points = match_landmarks(fixed, moving)
    grid = sitk.ReadImage(str(sample(truth["field"]["grid"])))
    field_e = random_smooth_field(
        grid, truth["field"]["max_displacement_mm"], truth["field"]["control_spacing_mm"], truth["field"]["seed"]
    )
    rotation = np.asarray(truth["rigid"]["matrix"])
    centre = np.asarray(truth["rigid"]["center_lps_mm"])
    translation = np.asarray(truth["rigid"]["translation_lps_mm"])

    def truth_mapping(points):  # T(y) = R(y + e(y)): moving point -> fixed (template) point
        return (map_points(field_e, points) - centre) @ rotation.T + centre + translation

    np.testing.assert_allclose(truth_mapping(moving_points), fixed_points, atol=1e-4)
    recovered = invert_points(field_e, (fixed_points - centre - translation) @ rotation + centre)
    np.testing.assert_allclose(recovered, moving_points, atol=1e-4)
    identity_tre_mm = np.linalg.norm(moving_points - fixed_points, axis=1)
    assert identity_tre_mm.mean() == pytest.approx(truth["landmarks"]["identity_tre_mm"]["mean"], abs=1e-6)
    assert 4.0 < identity_tre_mm.mean() < 12.0, "the pair should be misaligned by a few mm, not aligned or lost"


def test_brain2d_pair_is_two_real_slices_at_1mm():
    fixed = sitk.ReadImage(str(sample("brain2d_fixed.nii.gz")))
    moving = sitk.ReadImage(str(sample("brain2d_moving.nii.gz")))
    for image in (fixed, moving):
        assert image.GetDimension() == 2
        assert image.GetNumberOfComponentsPerPixel() == 1
        np.testing.assert_allclose(image.GetSpacing(), [1.0, 1.0])
        assert image.GetSize() == (221, 257)
    fixed_values = sitk.GetArrayViewFromImage(fixed).astype(float)
    moving_values = sitk.GetArrayViewFromImage(moving).astype(float)
    assert not np.array_equal(fixed_values, moving_values)
    assert 0.6 < np.corrcoef(fixed_values.ravel(), moving_values.ravel())[0, 1] < 0.99


# --- metareg.learning.synthetic ---------------------------------------------------------------------------------------------


def small_oblique_image() -> sitk.Image:
    """4 x 3 x 2 voxels, spacing (2, 1, 1) mm; index i runs along LPS +y, j along LPS -x; value = i + 10 j + 100 k."""
    k, j, i = np.meshgrid(np.arange(2), np.arange(3), np.arange(4), indexing="ij")
    image = sitk.GetImageFromArray((i + 10 * j + 100 * k).astype(np.float64))
    image.SetSpacing((2.0, 1.0, 1.0))
    image.SetOrigin((10.0, 20.0, 30.0))
    image.SetDirection((0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0))
    return image


def constant_field(reference: sitk.Image, displacement_mm) -> sitk.Image:
    vectors = np.broadcast_to(displacement_mm, sitk.GetArrayViewFromImage(reference).shape + (3,)).copy()
    field = sitk.GetImageFromArray(vectors.astype(np.float64), isVector=True)
    field.CopyInformation(reference)
    return field


def test_warp_image_with_a_constant_field_is_a_shift_along_the_physical_axes():
    image = small_oblique_image()
    # +2 mm along LPS y is one voxel along i (spacing 2): out[k, j, i] = image[k, j, i + 1].
    field = constant_field(image, (0.0, 2.0, 0.0))
    before = sitk.GetArrayFromImage(field)
    out = sitk.GetArrayFromImage(warp_image(image, field, default_value=-1.0))
    expected_first_row = [1.0, 2.0, 3.0, -1.0]  # voxel i = 3 maps outside the image
    np.testing.assert_array_equal(out[0, 0], expected_first_row)
    np.testing.assert_array_equal(out[1, 2], [121.0, 122.0, 123.0, -1.0])
    # -0.5 mm along LPS x is half a voxel along j (j runs along -x): values halfway between rows j and j + 1.
    half = sitk.GetArrayFromImage(warp_image(image, constant_field(image, (-0.5, 0.0, 0.0))))
    np.testing.assert_allclose(half[:, :2, :], sitk.GetArrayFromImage(image)[:, :2, :] + 5.0)
    # The field is left as it was (DisplacementFieldTransform would otherwise take its buffer).
    assert field.GetSize() == image.GetSize()
    np.testing.assert_array_equal(sitk.GetArrayFromImage(field), before)


def test_map_points_adds_the_displacement():
    image = small_oblique_image()
    field = constant_field(image, (0.5, -1.5, 2.0))
    points = np.array([[10.0, 20.0, 30.0], [9.2, 23.7, 30.6]])  # a voxel centre and a point between centres
    np.testing.assert_allclose(map_points(field, points), points + [0.5, -1.5, 2.0])
    with pytest.raises(InputError):
        map_points(field, np.zeros((2, 2)))


def smooth_reference(dim: int = 3) -> sitk.Image:
    reference = sitk.Image([40, 36, 30][:dim], sitk.sitkUInt8)
    reference.SetSpacing([2.5, 2.0, 3.0][:dim])
    reference.SetOrigin([-50.0, 12.0, 7.0][:dim])
    angle = np.deg2rad(25)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    reference.SetDirection(rotation[:dim, :dim].flatten().tolist())
    return reference


def test_random_smooth_field_is_deterministic_smooth_and_scaled():
    reference = smooth_reference()
    field = random_smooth_field(reference, 6.0, 30.0, seed=3)
    again = random_smooth_field(reference, 6.0, 30.0, seed=3)
    other = random_smooth_field(reference, 6.0, 30.0, seed=4)
    assert field.GetPixelID() == sitk.sitkVectorFloat64
    assert field.GetSize() == reference.GetSize()
    np.testing.assert_allclose(field.GetOrigin(), reference.GetOrigin())
    np.testing.assert_allclose(field.GetDirection(), reference.GetDirection())
    vectors = sitk.GetArrayFromImage(field)
    np.testing.assert_array_equal(vectors, sitk.GetArrayFromImage(again))
    assert not np.allclose(vectors, sitk.GetArrayFromImage(other))
    assert np.linalg.norm(vectors, axis=-1).max() == pytest.approx(6.0, rel=1e-12)
    jacobian = sitk.GetArrayFromImage(sitk.DisplacementFieldJacobianDeterminant(field))
    assert jacobian.min() > 0.2
    # Smooth: neighbouring voxels' displacements differ by far less than the maximum.
    assert np.abs(np.diff(vectors, axis=2)).max() < 1.5
    field_2d = random_smooth_field(smooth_reference(2), 4.0, 30.0, seed=3)
    assert field_2d.GetNumberOfComponentsPerPixel() == 2
    assert np.linalg.norm(sitk.GetArrayFromImage(field_2d), axis=-1).max() == pytest.approx(4.0, rel=1e-12)


def test_invert_points_undoes_map_points():
    field = random_smooth_field(smooth_reference(), 8.0, 30.0, seed=11)
    rng = np.random.default_rng(0)
    centre = np.asarray(field.TransformContinuousIndexToPhysicalPoint([19.5, 17.5, 14.5]))
    points = centre + rng.uniform(-20, 20, size=(25, 3))
    inverted = invert_points(field, points)
    np.testing.assert_allclose(map_points(field, inverted), points, atol=1e-5)
    np.testing.assert_allclose(invert_points(field, map_points(field, points)), points, atol=1e-5)
    assert np.linalg.norm(inverted - points, axis=1).max() > 1.0  # the test moved points at all
    with pytest.raises(InputError, match="did not converge"):
        invert_points(field, points, iterations=1)
