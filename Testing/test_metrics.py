"""Tests of metareg.core.metrics against hand-computed and analytic values, on oblique, anisotropic grids."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
from metareg.core import metrics
from metareg.core.errors import InputError
from metareg.core.geometry import rotation_matrix

SPACING_3D = (0.8, 1.0, 2.5)




def rotation_2d(degrees: float) -> np.ndarray:
    c, s = np.cos(np.deg2rad(degrees)), np.sin(np.deg2rad(degrees))
    return np.array([[c, -s], [s, c]])


OBLIQUE_3D = rotation_matrix((1, 2, 3), 30)


def grid(size, spacing, direction, origin=None) -> sitk.Image:
    """Empty scalar image with the given geometry."""
    image = sitk.Image([int(n) for n in size], sitk.sitkFloat64)
    image.SetSpacing(spacing)
    image.SetDirection(np.asarray(direction, dtype=float).ravel().tolist())
    image.SetOrigin(origin if origin is not None else [-7.0, 3.0, 11.0][: len(size)])
    return image


def physical_points(image: sitk.Image) -> np.ndarray:
    """Physical coordinates (mm) of every voxel: array [z, y, x, component], components in (x, y, z) order."""
    dimension = image.GetDimension()
    index = np.stack(np.indices(image.GetSize()[::-1])[::-1], axis=-1).astype(float)
    direction = np.array(image.GetDirection()).reshape(dimension, dimension)
    return index @ (direction @ np.diag(image.GetSpacing())).T + np.array(image.GetOrigin())


def field_on(image: sitk.Image, displacement_mm: np.ndarray) -> sitk.Image:
    field = sitk.GetImageFromArray(displacement_mm, isVector=True)
    field.CopyInformation(image)
    return field


def label_image_on(image: sitk.Image, inside: np.ndarray) -> sitk.Image:
    labels = sitk.GetImageFromArray(inside.astype(np.uint8))
    labels.CopyInformation(image)
    return labels


def test_physical_points_helper_matches_simpleitk():
    image = grid((6, 5, 4), SPACING_3D, OBLIQUE_3D)
    points = physical_points(image)
    np.testing.assert_allclose(points[3, 1, 4], image.TransformIndexToPhysicalPoint((4, 1, 3)), atol=1e-12)


# --- Jacobian determinant -------------------------------------------------------------------------------------------


def test_jacobian_of_uniform_scaling_3d_oblique_anisotropic():
    image = grid((9, 8, 7), SPACING_3D, OBLIQUE_3D)
    points = physical_points(image)
    centre = points.reshape(-1, 3).mean(axis=0)
    field = field_on(image, 0.1 * (points - centre))

    jacobian = metrics.jacobian_determinant(field)

    assert jacobian.GetPixelID() == sitk.sitkFloat64
    assert metrics._geometry_difference(field, jacobian) == ""
    np.testing.assert_allclose(sitk.GetArrayViewFromImage(jacobian), 1.1**3, atol=1e-6)


def test_jacobian_of_uniform_scaling_2d_oblique_anisotropic_float32():
    image = grid((11, 7), (0.8, 2.5), rotation_2d(30))
    points = physical_points(image)
    field = field_on(image, (0.1 * (points - points.reshape(-1, 2).mean(axis=0))).astype(np.float32))

    jacobian = metrics.jacobian_determinant(field)

    np.testing.assert_allclose(sitk.GetArrayViewFromImage(jacobian), 1.1**2, atol=1e-6)


def test_jacobian_of_shear_is_one():
    image = grid((6, 7, 5), SPACING_3D, OBLIQUE_3D)
    points = physical_points(image)
    shear = np.zeros_like(points)
    shear[..., 0] = 0.7 * points[..., 1]  # d_x = 0.7 y: volume preserving

    jacobian = metrics.jacobian_determinant(field_on(image, shear))

    np.testing.assert_allclose(sitk.GetArrayViewFromImage(jacobian), 1.0, atol=1e-6)


@pytest.mark.parametrize(
    "spacing, direction",
    [
        ((1.0, 1.0, 1.0), np.eye(3)),
        (SPACING_3D, np.eye(3)),
        (SPACING_3D, OBLIQUE_3D),
        ((2.0, 0.5, 1.2), rotation_matrix((0, 1, 0), 90) @ np.diag([1.0, 1.0, -1.0])),  # improper (reflected) direction
    ],
)
def test_jacobian_of_linear_field_ignores_grid_geometry(spacing, direction):
    linear_map = np.array([[0.10, -0.20, 0.05], [0.30, 0.15, -0.10], [-0.05, 0.20, -0.25]])  # d(x) = A x
    image = grid((6, 5, 7), spacing, direction)

    jacobian = metrics.jacobian_determinant(field_on(image, physical_points(image) @ linear_map.T))

    expected = np.linalg.det(np.eye(3) + linear_map)
    np.testing.assert_allclose(sitk.GetArrayViewFromImage(jacobian), expected, atol=1e-6)


def test_jacobian_matches_itk_filter_inside_when_direction_is_identity():
    image = grid((10, 9, 8), SPACING_3D, np.eye(3))
    points = physical_points(image)
    displacement = np.stack([np.sin(points[..., 1] / 3), np.cos(points[..., 2] / 4), 0.3 * np.sin(points[..., 0] / 2)],
                            axis=-1)
    field = field_on(image, displacement)

    ours = sitk.GetArrayFromImage(metrics.jacobian_determinant(field))
    itk = sitk.GetArrayFromImage(sitk.DisplacementFieldJacobianDeterminant(field, useImageSpacing=True))

    np.testing.assert_allclose(ours[1:-1, 1:-1, 1:-1], itk[1:-1, 1:-1, 1:-1], atol=1e-5)


# --- Folding and field summary --------------------------------------------------------------------------------------


def test_folded_field_has_positive_folding_fraction():
    image = grid((12, 12, 10), SPACING_3D, OBLIQUE_3D)
    points = physical_points(image)
    centre = points[5, 6, 6]
    displacement = np.zeros_like(points)
    displacement[2:8, 3:9, 3:9] = -2.0 * (points[2:8, 3:9, 3:9] - centre)  # det(I - 2I) = -1 inside the box
    field = field_on(image, displacement)

    jacobian = metrics.jacobian_determinant(field)
    summary = metrics.field_summary(field)

    np.testing.assert_allclose(sitk.GetArrayViewFromImage(jacobian)[3:7, 4:8, 4:8], -1.0, atol=1e-9)
    assert metrics.folding_fraction(jacobian) >= 4 * 4 * 4 / jacobian.GetNumberOfPixels()
    assert summary["folding_fraction"] == metrics.folding_fraction(jacobian)
    assert summary["jacobian_min"] <= -1.0 + 1e-9


def test_identity_field_summary():
    image = grid((5, 6, 4), SPACING_3D, OBLIQUE_3D)
    field = field_on(image, np.zeros((4, 6, 5, 3)))

    summary = metrics.field_summary(field)

    assert summary == {
        "folding_fraction": 0.0,
        "std_log_jacobian": 0.0,
        "jacobian_min": 1.0,
        "jacobian_max": 1.0,
        "max_displacement_mm": 0.0,
    }
    json.dumps(summary)


def test_field_summary_max_displacement_and_mask():
    image = grid((9, 8, 7), SPACING_3D, OBLIQUE_3D)
    points = physical_points(image)
    centre = points[3, 4, 4]
    field = field_on(image, 0.1 * (points - centre))
    inside = np.zeros((7, 8, 9), dtype=bool)
    inside[3, 3, 4] = True  # one voxel, [z, y, x] like points
    mask = label_image_on(image, inside)

    whole = metrics.field_summary(field)
    masked = metrics.field_summary(field, mask)

    assert whole["max_displacement_mm"] == pytest.approx(0.1 * np.linalg.norm(points - centre, axis=-1).max())
    assert masked["max_displacement_mm"] == pytest.approx(0.1 * np.linalg.norm(points[3, 3, 4] - centre))
    assert masked["jacobian_min"] == pytest.approx(1.1**3)


def test_folding_fraction_and_std_log_jacobian_exclude_non_positive():
    jacobian = sitk.GetImageFromArray(np.array([[-1.0, 0.0, 1.0, np.e]]))
    mask = sitk.GetImageFromArray(np.array([[1, 1, 1, 0]], dtype=np.uint8))

    assert metrics.folding_fraction(jacobian) == 0.5
    assert metrics.std_log_jacobian(jacobian) == pytest.approx(0.5)  # log: {0, 1}
    assert metrics.folding_fraction(jacobian, mask) == pytest.approx(2 / 3)
    assert metrics.std_log_jacobian(jacobian, mask) == 0.0


def test_field_with_wrong_components_is_rejected():
    scalar = grid((4, 4, 4), SPACING_3D, np.eye(3))
    with pytest.raises(InputError) as error:
        metrics.jacobian_determinant(scalar)
    assert error.value.input_name == "field"


# --- Landmarks ------------------------------------------------------------------------------------------------------


def test_landmark_distances_and_tre_summary_by_hand():
    p = np.array([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [2.0, 0.0, 12.0], [5.0, 5.0, 5.0]])
    q = np.array([[3.0, 4.0, 0.0], [1.0, 1.0, 1.0], [2.0, 5.0, 0.0], [5.0, 2.0, 1.0]])

    distances = metrics.landmark_distances_mm(p, q)
    summary = metrics.tre_summary(distances)

    np.testing.assert_allclose(distances, [5.0, 0.0, 13.0, 5.0])
    assert summary["n"] == 4
    assert summary["mean"] == pytest.approx(5.75)
    assert summary["std"] == pytest.approx(np.sqrt(86.75 / 4))  # squared deviations 33.0625 + 0.5625 * 2 + 52.5625
    assert summary["median"] == pytest.approx(5.0)
    assert summary["p90"] == pytest.approx(10.6)  # sorted 0,5,5,13; rank 2.7 -> 5 + 0.7 * 8
    assert summary["max"] == 13.0
    json.dumps(summary)


def test_landmark_distances_2d_and_mismatch():
    np.testing.assert_allclose(metrics.landmark_distances_mm([[0, 0], [6, 8]], [[3, 4], [0, 0]]), [5.0, 10.0])
    with pytest.raises(InputError) as error:
        metrics.landmark_distances_mm(np.zeros((3, 3)), np.zeros((2, 3)))
    assert error.value.input_name == "q"
    with pytest.raises(InputError):
        metrics.tre_summary([])


# --- Overlap and surface distances ----------------------------------------------------------------------------------


def test_dice_of_two_boxes_by_hand():
    image = grid((20, 20, 20), SPACING_3D, OBLIQUE_3D)
    a = np.zeros((20, 20, 20), dtype=np.uint8)
    b = np.zeros_like(a)
    a[2:8, 2:8, 2:8] = 1  # 216 voxels
    b[2:8, 2:8, 4:10] = 1  # 216 voxels, 4 * 6 * 6 = 144 shared
    b[15:17, 15:17, 15:17] = 3  # only in b

    scores = metrics.dice(label_image_on(image, a), label_image_on(image, b))

    assert scores == {1: pytest.approx(2 * 144 / 432), 3: 0.0}
    assert metrics.dice(label_image_on(image, a), label_image_on(image, a), labels=[1, 2])[1] == 1.0
    assert np.isnan(metrics.dice(label_image_on(image, a), label_image_on(image, a), labels=[2])[2])


def sphere(image: sitk.Image, centre_mm, radius_mm: float) -> sitk.Image:
    return label_image_on(image, np.linalg.norm(physical_points(image) - centre_mm, axis=-1) <= radius_mm)


SPHERE_GRID = dict(size=(40, 32, 30), spacing=(0.8, 1.0, 1.5), direction=OBLIQUE_3D, origin=(0.0, 0.0, 0.0))


def sphere_centre(image: sitk.Image) -> np.ndarray:
    return np.array(image.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in image.GetSize()]))


@pytest.mark.parametrize("shift_voxels", [(0, 0, 4), (5, 0, 0)])
def test_surface_distances_of_shifted_spheres(shift_voxels):
    image = grid(**SPHERE_GRID)
    direction = np.array(image.GetDirection()).reshape(3, 3)
    shift_mm = direction @ (np.array(shift_voxels) * image.GetSpacing())  # 6 mm along z, or 4 mm along x
    shift = np.linalg.norm(shift_mm)
    voxel = max(image.GetSpacing())
    a = sphere(image, sphere_centre(image), 8.0)
    b = sphere(image, sphere_centre(image) + shift_mm, 8.0)

    # For a sphere shifted by t, a surface point at angle θ to the shift lies ≈ t|cos θ| from the other surface:
    # the 95th percentile is ≈ 0.95 t and the mean ≈ t / 2.
    assert metrics.hausdorff95_mm(a, b, 1) == pytest.approx(shift, abs=voxel)
    assert metrics.mean_surface_distance_mm(a, b, 1) == pytest.approx(shift / 2, abs=voxel / 2)
    assert metrics.hausdorff95_mm(a, b, 1) == pytest.approx(metrics.hausdorff95_mm(b, a, 1))


def test_surface_distances_of_concentric_spheres_and_identity():
    image = grid(**SPHERE_GRID)
    small, large = sphere(image, sphere_centre(image), 8.0), sphere(image, sphere_centre(image), 11.0)
    voxel = max(image.GetSpacing())

    assert metrics.hausdorff95_mm(small, large, 1) == pytest.approx(3.0, abs=voxel)
    assert metrics.mean_surface_distance_mm(small, large, 1) == pytest.approx(3.0, abs=voxel)
    assert metrics.hausdorff95_mm(small, small, 1) == pytest.approx(0.0, abs=1e-5)
    assert metrics.mean_surface_distance_mm(small, small, 1) == pytest.approx(0.0, abs=1e-5)


def test_surface_distances_of_empty_labels():
    image = grid((8, 8, 8), SPACING_3D, np.eye(3))
    inside = np.zeros((8, 8, 8), dtype=bool)
    inside[2:5, 2:5, 2:5] = True
    full, empty = label_image_on(image, inside), label_image_on(image, np.zeros_like(inside))

    assert metrics.hausdorff95_mm(full, empty, 1) == float("inf")
    assert metrics.mean_surface_distance_mm(empty, full, 1) == float("inf")
    assert np.isnan(metrics.hausdorff95_mm(empty, empty, 1))


def test_label_filling_the_image_has_a_surface_at_the_border():
    image = grid((6, 6, 6), (1.0, 1.0, 1.0), np.eye(3))
    everything = label_image_on(image, np.ones((6, 6, 6), dtype=bool))
    assert metrics.hausdorff95_mm(everything, everything, 1) == pytest.approx(0.0, abs=1e-5)


def test_mismatched_grids_are_rejected():
    a = label_image_on(grid((6, 6, 6), SPACING_3D, np.eye(3)), np.ones((6, 6, 6), dtype=bool))
    b = label_image_on(grid((6, 6, 6), (1.0, 1.0, 1.0), np.eye(3)), np.ones((6, 6, 6), dtype=bool))
    for function in (metrics.dice, metrics.ncc, metrics.mse):
        with pytest.raises(InputError, match="spacing") as error:
            function(a, b)
        assert error.value.input_name == "b"
    with pytest.raises(InputError, match="size"):
        metrics.hausdorff95_mm(a, label_image_on(grid((6, 6, 5), SPACING_3D, np.eye(3)), np.ones((5, 6, 6))), 1)


# --- Intensity similarity -------------------------------------------------------------------------------------------


def test_ncc_of_an_image_with_itself_affine_copy_and_negation():
    rng = np.random.default_rng(0)
    values = rng.normal(size=(6, 7, 8))
    image = sitk.GetImageFromArray(values)
    image.SetSpacing(SPACING_3D)
    brighter = sitk.GetImageFromArray(3.0 * values + 7.0)
    brighter.CopyInformation(image)

    assert metrics.ncc(image, image) == pytest.approx(1.0)
    assert metrics.ncc(image, brighter) == pytest.approx(1.0)
    assert metrics.ncc(values, -values) == pytest.approx(-1.0)
    assert abs(metrics.ncc(values, rng.normal(size=values.shape))) < 0.2
    assert np.isnan(metrics.ncc(values, np.ones_like(values)))


def test_mse_by_hand_with_and_without_mask():
    a = np.array([1.0, 2.0, 3.0, 4.0])
    b = np.array([1.0, 0.0, 3.0, 8.0])

    assert metrics.mse(a, b) == pytest.approx(20 / 4)
    assert metrics.mse(a, b, mask=np.array([1, 1, 1, 0])) == pytest.approx(4 / 3)
    assert metrics.ncc(a, b, mask=np.array([0, 1, 1, 1])) == pytest.approx(np.corrcoef(a[1:], b[1:])[0, 1])
    with pytest.raises(InputError) as error:
        metrics.mse(a, b, mask=np.zeros(4))
    assert error.value.input_name == "mask"


@pytest.mark.parametrize("shape", [(40, 33, 29, 3), (2, 30, 20, 3), (57, 41, 2)], ids=["3d", "3d-two-slices", "2d"])
def test_jacobian_and_field_summary_slab_by_slab_equal_the_whole_computation(shape, monkeypatch):
    """Large grids are processed slab by slab (bounded memory); with slabs of one row the determinant is bit-identical
    to one slab holding the whole grid, borders included, and the statistics equal up to rounding."""
    import metareg.core.slabs

    field = sitk.GetImageFromArray(np.random.default_rng(0).normal(size=shape), isVector=True)
    field.SetSpacing([0.7, 1.1, 2.0][: shape[-1]])
    monkeypatch.setattr(metareg.core.slabs, "SLAB_VOXELS", 10**9)
    whole, whole_summary = sitk.GetArrayFromImage(metrics.jacobian_determinant(field)), metrics.field_summary(field)
    monkeypatch.setattr(metareg.core.slabs, "SLAB_VOXELS", 31)
    assert len(metareg.core.slabs.slabs(shape[:-1])) == shape[0]  # one row per slab
    assert np.array_equal(sitk.GetArrayFromImage(metrics.jacobian_determinant(field)), whole)
    summary = metrics.field_summary(field)  # statistics combined over slabs: equal up to rounding
    assert summary == {key: pytest.approx(value, rel=1e-12) for key, value in whole_summary.items()}


def test_ncc_mse_and_jacobian_statistics_slab_by_slab_match_numpy(monkeypatch):
    import metareg.core.slabs

    monkeypatch.setattr(metareg.core.slabs, "SLAB_VOXELS", 37)
    rng = np.random.default_rng(3)
    a, b = rng.normal(5.0, 2.0, (9, 11, 13)), rng.normal(0.0, 1.0, (9, 11, 13))
    b = b + 0.7 * a
    mask = rng.random(a.shape) > 0.3
    x, y = a[mask], b[mask]
    assert metrics.ncc(a, b, mask) == pytest.approx(np.corrcoef(x, y)[0, 1], rel=1e-12)
    assert metrics.mse(a, b, mask) == pytest.approx(np.mean((x - y) ** 2), rel=1e-12)
    determinant = sitk.GetImageFromArray(rng.normal(1.0, 0.5, (9, 11, 13)))
    values = sitk.GetArrayFromImage(determinant)
    assert metrics.folding_fraction(determinant) == pytest.approx(np.mean(values <= 0))
    assert metrics.std_log_jacobian(determinant) == pytest.approx(np.std(np.log(values[values > 0])), rel=1e-12)
