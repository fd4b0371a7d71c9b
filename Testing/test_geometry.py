"""The geometry contract: known shifts and affines through every conversion, on oblique anisotropic grids."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from metareg.core.geometry import (
    Grid,
    affine_to_field,
    field_to_transform,
    image_to_tensor,
    integrate_velocity,
    map_points,
    model_grid_on_fixed,
    network_displacement_to_field,
    physical_to_voxel_displacement,
    regrid_displacement,
    resample_onto,
    resize_displacement,
    rotation_matrix,
    voxel_displacement_to_physical,
    warp_image,
    warp_tensor,
)
from metareg.core.metrics import ncc
from metareg.core.prealign import affine_prealign

SHIFT_LPS_MM = np.array([3.7, -2.4, 5.1])




def blobs(points: np.ndarray) -> np.ndarray:
    """A smooth analytic intensity of LPS position (mm): a few Gaussian blobs."""
    centres = np.array([[0.0, 0.0, 0.0], [14.0, -9.0, 6.0], [-11.0, 12.0, -8.0], [6.0, 10.0, 12.0]])[:, : points.shape[-1]]
    widths = [9.0, 6.0, 7.0, 5.0]
    value = np.zeros(points.shape[:-1])
    for c, w, a in zip(centres, widths, [1.0, 0.8, 0.6, 0.9]):
        value += a * np.exp(-np.sum((points - c) ** 2, axis=-1) / (2 * w * w))
    return value


def analytic_image(grid: Grid, intensity) -> sitk.Image:
    array = intensity(grid.physical_points()).astype(np.float32)
    return grid.apply_to(sitk.GetImageFromArray(array))


@pytest.fixture(scope="module")
def oblique_grids():
    """Fixed: 0.8 × 1.0 × 2.5 mm, rotated 25° about an oblique axis. Moving: another grid altogether."""
    fixed_direction = rotation_matrix([1.0, 0.5, -0.3], 25.0)
    fixed_size = np.array([60, 48, 20])
    fixed_spacing = np.array([0.8, 1.0, 2.5])
    fixed_origin = -fixed_direction @ (fixed_spacing * (fixed_size - 1) / 2) + np.array([1.0, -2.0, 0.5])
    fixed = Grid(tuple(int(s) for s in fixed_size), tuple(fixed_spacing), tuple(fixed_origin),
                 tuple(fixed_direction.ravel()))
    moving_direction = rotation_matrix([0.2, -1.0, 0.4], -15.0)
    moving_size = np.array([44, 40, 36])
    moving_spacing = np.array([1.2, 1.3, 1.5])
    moving_origin = -moving_direction @ (moving_spacing * (moving_size - 1) / 2) + np.array([2.0, 1.0, -1.0])
    moving = Grid(tuple(int(s) for s in moving_size), tuple(moving_spacing), tuple(moving_origin),
                  tuple(moving_direction.ravel()))
    return fixed, moving


def interior_mask(grid: Grid, margin_mm: float = 8.0) -> np.ndarray:
    """Voxels farther than ``margin_mm`` from the grid's border (in each index direction)."""
    index = (grid.physical_points() - np.asarray(grid.origin)) @ np.linalg.inv(grid.index_to_physical_matrix).T
    size = np.asarray(grid.size, dtype=np.float64)
    spacing = np.asarray(grid.spacing)
    inside = np.ones(grid.tensor_shape, dtype=bool)
    for axis in range(grid.dim):
        margin_vox = min(margin_mm / spacing[axis], (size[axis] - 1) / 3)
        inside &= (index[..., axis] >= margin_vox) & (index[..., axis] <= size[axis] - 1 - margin_vox)
    return inside


def fit_constant_voxel_shift(fixed_t: torch.Tensor, moving_t: torch.Tensor) -> torch.Tensor:
    """The constant voxel displacement that best warps moving onto fixed (found from image content alone)."""
    shift = torch.zeros(1, fixed_t.dim() - 2, *([1] * (fixed_t.dim() - 2)), dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.LBFGS([shift], lr=1.0, max_iter=200, tolerance_grad=1e-12, tolerance_change=1e-14,
                                  line_search_fn="strong_wolfe")
    fixed64, moving64 = fixed_t.double(), moving_t.double()

    def closure():
        optimiser.zero_grad()
        disp = shift.expand(1, shift.shape[1], *fixed64.shape[2:])
        # compare away from the border, where both images have content
        inner = tuple(slice(n // 5, n - n // 5) for n in fixed64.shape[2:])
        loss = torch.mean((warp_tensor(moving64, disp) - fixed64)[(..., *inner)] ** 2)
        loss.backward()
        return loss

    optimiser.step(closure)
    return shift.detach().expand(1, shift.shape[1], *fixed64.shape[2:]).float()


def test_grid_index_physical_round_trip(oblique_grids):
    fixed, _ = oblique_grids
    index = np.array([[0.0, 0.0, 0.0], [3.5, 7.25, 11.0], [59.0, 47.0, 19.0]])
    points = fixed.index_to_physical(index)
    image = fixed.reference_image()
    for i, p in zip(index, points):
        np.testing.assert_allclose(p, image.TransformContinuousIndexToPhysicalPoint(tuple(i)), atol=1e-9)
    np.testing.assert_allclose(fixed.physical_to_index(points), index, atol=1e-9)


def test_model_grid_is_centred_on_fixed_with_its_direction(oblique_grids):
    fixed, _ = oblique_grids
    image = fixed.reference_image()
    grid = model_grid_on_fixed(image, size=(32, 32, 16))
    np.testing.assert_allclose(grid.center, fixed.center, atol=1e-9)
    assert grid.direction == fixed.direction
    # covers the same field of view, voxel edge to voxel edge
    np.testing.assert_allclose(np.asarray(grid.size) * grid.spacing, np.asarray(fixed.size) * fixed.spacing)
    spaced = model_grid_on_fixed(image, spacing=(2.0, 2.0, 2.0))
    assert spaced.size == (24, 24, 25)
    np.testing.assert_allclose(spaced.center, fixed.center, atol=1e-9)


@pytest.mark.parametrize("slab_voxels", [None, 50], ids=["one-slab", "slab-by-slab"])
def test_known_shift_through_voxel_displacement_field_and_h5(oblique_grids, tmp_path, slab_voxels, monkeypatch):
    if slab_voxels is not None:  # the field is resampled onto the fixed grid slab by slab (large images)
        import metareg.core.slabs

        monkeypatch.setattr(metareg.core.slabs, "SLAB_VOXELS", slab_voxels)
    """A known translation, recovered from the images on the model grid, comes out as that translation in LPS mm."""
    fixed_grid, moving_grid = oblique_grids
    fixed = analytic_image(fixed_grid, blobs)
    # moving point x + t shows what fixed point x shows
    moving = analytic_image(moving_grid, lambda y: blobs(y - SHIFT_LPS_MM))
    model_grid = model_grid_on_fixed(fixed, size=(40, 36, 24))
    fixed_t = image_to_tensor(resample_onto(fixed, model_grid))
    moving_t = image_to_tensor(resample_onto(moving, model_grid))
    disp_vox = fit_constant_voxel_shift(fixed_t, moving_t)

    field = network_displacement_to_field(disp_vox, model_grid, fixed)
    assert Grid.from_image(field).same_as(fixed_grid)
    d = sitk.GetArrayFromImage(field)
    inside = interior_mask(fixed_grid)
    error = np.linalg.norm(d[inside] - SHIFT_LPS_MM, axis=-1)
    assert error.max() < 0.1, f"field differs from the known shift by up to {error.max():.3f} mm"

    # the same through an ITK .h5 DisplacementFieldTransform read back by SimpleITK
    path = tmp_path / "fixed_to_moving.h5"
    sitk.WriteTransform(field_to_transform(field), str(path))
    transform = sitk.ReadTransform(str(path))
    points = fixed_grid.physical_points()[inside][::97]
    mapped = np.array([transform.TransformPoint(tuple(p)) for p in points])
    assert np.abs(mapped - points - SHIFT_LPS_MM).max() < 0.1
    np.testing.assert_allclose(map_points(field, points), mapped, atol=1e-9)

    # the original moving image warped through the field is the fixed image
    warped = warp_image(moving, field)
    assert Grid.from_image(warped).same_as(fixed_grid)
    values_fixed = sitk.GetArrayFromImage(fixed)[inside]
    values_warped = sitk.GetArrayFromImage(warped)[inside]
    assert np.abs(values_fixed - values_warped).max() < 0.02
    assert ncc(values_fixed, values_warped) > 0.999


def test_voxel_displacement_channels_follow_tensor_axes():
    """Channel c of a voxel displacement moves along tensor axis c; conversion uses spacing and direction."""
    direction = rotation_matrix([0, 0, 1], 90.0)  # index x runs along LPS y, index y along LPS -x
    grid = Grid((10, 8, 6), (0.5, 2.0, 3.0), (0.0, 0.0, 0.0), tuple(direction.ravel()))
    disp = torch.zeros(1, 3, *grid.tensor_shape)
    disp[0, 2] = 1.0  # one voxel along tensor axis 2 = index x (0.5 mm) = +LPS y
    disp[0, 0] = 2.0  # two voxels along tensor axis 0 = index z (3 mm each) = +LPS z
    physical = voxel_displacement_to_physical(disp, grid)
    np.testing.assert_allclose(physical[0, 0, 0], [0.0, 0.5, 6.0], atol=1e-12)
    image = torch.arange(6 * 8 * 10, dtype=torch.float32).reshape(1, 1, 6, 8, 10)
    one_x = torch.zeros(1, 3, 6, 8, 10)
    one_x[0, 2] = 1.0
    np.testing.assert_allclose(warp_tensor(image, one_x)[0, 0, :, :, :-1], image[0, 0, :, :, 1:], atol=1e-4)


def test_warp_tensor_is_differentiable_and_moves_content():
    """out(p) = image(p + d(p)): a bright voxel lands where the shift says, and the gradient with respect to the
    displacement is the image's slope there, along each channel's axis (the exact slope of a ramp; autograd against
    finite differences on a smooth image)."""
    image = torch.zeros(1, 1, 16, 16)
    image[0, 0, 8, 8] = 1.0
    shift = torch.zeros(1, 2, 16, 16)
    shift[0, 1] = 2.0  # two voxels along tensor axis 1
    out = warp_tensor(image, shift)
    assert out[0, 0, 8, 6].item() == pytest.approx(1.0)  # out(p) = image(p + 2 along axis 1)
    assert out.sum().item() == pytest.approx(1.0)  # moved, not smeared
    rows, columns = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    ramp = (0.5 * columns - 0.25 * rows)[None, None].double()
    disp = torch.full((1, 2, 16, 16), 0.3, dtype=torch.float64, requires_grad=True)  # off the kinks of bilinear
    warp_tensor(ramp, disp)[..., 2:-2, 2:-2].sum().backward()  # inside: no sample reaches the border
    inside = disp.grad[0, :, 2:-2, 2:-2]
    torch.testing.assert_close(inside[0], torch.full_like(inside[0], -0.25))  # d out / d d_axis0 = slope along rows
    torch.testing.assert_close(inside[1], torch.full_like(inside[1], 0.5))  # d out / d d_axis1 = slope along columns
    generator = torch.Generator().manual_seed(0)
    smooth = torch.nn.functional.avg_pool2d(torch.rand(1, 1, 9, 8, generator=generator, dtype=torch.float64), 3, 1, 1)
    start = (0.3 + 0.4 * torch.rand(1, 2, 9, 8, generator=generator, dtype=torch.float64)).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda d: warp_tensor(smooth, d), (start,))


@pytest.mark.parametrize("slab_voxels", [None, 50], ids=["one-slab", "slab-by-slab"])
def test_prealignment_is_composed_into_the_field(oblique_grids, slab_voxels, monkeypatch):
    """Checked against ITK's own TransformPoint at every voxel, also when the grid goes slab by slab (as large
    images do to bound memory)."""
    if slab_voxels is not None:
        import metareg.core.slabs

        monkeypatch.setattr(metareg.core.slabs, "SLAB_VOXELS", slab_voxels)
    fixed_grid, _ = oblique_grids
    fixed = fixed_grid.reference_image()
    affine = sitk.AffineTransform(3)
    matrix = rotation_matrix([0.3, 1.0, 0.2], 8.0) * 1.05
    affine.SetMatrix(tuple(matrix.ravel()))
    affine.SetCenter((1.0, 2.0, 3.0))
    affine.SetTranslation((2.0, -1.0, 4.0))
    model_grid = model_grid_on_fixed(fixed, size=(30, 24, 10))
    disp_vox = torch.zeros(1, 3, *model_grid.tensor_shape)
    # a constant physical shift t on the model grid, expressed in its voxels
    index_shift = np.linalg.solve(model_grid.index_to_physical_matrix, SHIFT_LPS_MM)
    for c in range(3):
        disp_vox[0, c] = float(index_shift[2 - c])
    field = network_displacement_to_field(disp_vox, model_grid, fixed, prealign=affine)
    points = fixed_grid.physical_points()
    expected = np.array([affine.TransformPoint(tuple(p)) for p in (points + SHIFT_LPS_MM).reshape(-1, 3)])
    expected = expected.reshape(points.shape) - points
    np.testing.assert_allclose(sitk.GetArrayFromImage(field), expected, atol=1e-6)
    zero = affine_to_field(affine, fixed)
    expected_zero = np.array([affine.TransformPoint(tuple(p)) for p in points.reshape(-1, 3)]).reshape(points.shape)
    np.testing.assert_allclose(sitk.GetArrayFromImage(zero), expected_zero - points, atol=1e-9)


@pytest.mark.slow
@pytest.mark.parametrize("upsample", [1, 2], ids=["as-is", "8x-the-voxels"])
def test_affine_prealign_recovers_a_known_affine(sample_dir, upsample):
    """A real brain moved by a known rotation + shift + mild scaling: the pre-alignment finds it to < 0.5 mm; also at
    8× the voxels (8.4 M, above PREALIGN_MAX_VOXELS), where it works on an averaged-down copy."""
    fixed = sitk.ReadImage(str(sample_dir / "brain3d_fixed_T1.nii.gz"))
    if upsample > 1:
        reference = model_grid_on_fixed(fixed, size=[n * upsample for n in fixed.GetSize()]).reference_image()
        fixed = sitk.Resample(fixed, reference, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    known = sitk.AffineTransform(3)
    known.SetMatrix(tuple((rotation_matrix([0.4, -0.2, 1.0], 7.0) * 1.03).ravel()))
    known.SetCenter(tuple(Grid.from_image(fixed).center))
    known.SetTranslation((4.0, -3.0, 2.5))
    # moving(y) = fixed(A^-1 y), so fixed point x shows in moving at A(x)
    moving = sitk.Resample(fixed, fixed, known.GetInverse(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    transform = affine_prealign(fixed, moving)
    grid = Grid.from_image(fixed)
    points = grid.physical_points()[interior_mask(grid, 40.0)][::301]
    found = np.array([transform.TransformPoint(tuple(p)) for p in points])
    truth = np.array([known.TransformPoint(tuple(p)) for p in points])
    assert np.linalg.norm(found - truth, axis=1).max() < 0.5


def test_warp_image_leaves_its_inputs_unchanged(oblique_grids):
    fixed_grid, moving_grid = oblique_grids
    moving = analytic_image(moving_grid, blobs)
    field = affine_to_field(sitk.TranslationTransform(3, tuple(SHIFT_LPS_MM)), fixed_grid.reference_image())
    before_field = sitk.GetArrayFromImage(field).copy()
    before_moving = sitk.GetArrayFromImage(moving).copy()
    warp_image(moving, field)
    field_to_transform(field)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(field), before_field)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(moving), before_moving)


def test_2d_known_shift():
    direction = np.array([[0.0, -1.0], [1.0, 0.0]])
    size, spacing = np.array([60, 40]), np.array([0.7, 1.4])
    origin = -direction @ (spacing * (size - 1) / 2) + np.array([1.5, -1.0])
    grid = Grid((60, 40), (0.7, 1.4), tuple(origin), tuple(direction.ravel()))
    shift = np.array([2.3, -1.6])
    fixed = analytic_image(grid, blobs)
    moving_grid = Grid((55, 60), (1.1, 1.0), (-30.0, -28.0), (1.0, 0.0, 0.0, 1.0))
    moving = analytic_image(moving_grid, lambda y: blobs(y - shift))
    model_grid = model_grid_on_fixed(fixed, size=(40, 32))
    disp_vox = fit_constant_voxel_shift(image_to_tensor(resample_onto(fixed, model_grid)),
                                        image_to_tensor(resample_onto(moving, model_grid)))
    field = network_displacement_to_field(disp_vox, model_grid, fixed)
    d = sitk.GetArrayFromImage(field)[interior_mask(grid, 6.0)]
    assert np.abs(d - shift).max() < 0.1


def test_scaling_and_squaring_of_a_constant_velocity_is_a_translation():
    velocity = torch.zeros(1, 3, 12, 14, 16)
    velocity[0, 1] = 2.5
    disp = integrate_velocity(velocity)
    interior = disp[:, :, 2:-2, 2:-5, 2:-2]
    torch.testing.assert_close(interior, velocity[:, :, 2:-2, 2:-5, 2:-2], atol=1e-5, rtol=0)


def test_resize_displacement_keeps_physical_size():
    disp = torch.ones(1, 2, 11, 21)  # one voxel everywhere at 11 × 21
    resized = resize_displacement(disp, (21, 41))
    torch.testing.assert_close(resized[0, 0], torch.full((21, 41), 2.0))
    torch.testing.assert_close(resized[0, 1], torch.full((21, 41), 2.0))


def test_physical_to_voxel_displacement_inverts_the_conversion(oblique_grids):
    fixed, _ = oblique_grids
    disp = torch.randn(1, 3, *fixed.tensor_shape)
    back = physical_to_voxel_displacement(voxel_displacement_to_physical(disp, fixed), fixed)
    torch.testing.assert_close(back, disp, atol=1e-5, rtol=0)


def test_regrid_displacement_keeps_a_known_warp_in_physical_space(oblique_grids):
    """A known affine displacement on a coarse model grid, handed to the oblique fixed grid: the same mm vectors."""
    fixed, moving = oblique_grids
    model = model_grid_on_fixed(fixed.reference_image(), size=(20, 18, 12))
    matrix = np.array([[0.02, -0.01, 0.0], [0.01, 0.015, -0.02], [0.0, 0.01, -0.01]])

    def known(points):  # LPS mm displacement, linear in position plus the known shift
        return (points - np.asarray(fixed.center)) @ matrix.T + SHIFT_LPS_MM

    on_model = physical_to_voxel_displacement(known(model.physical_points()), model)
    on_fixed = regrid_displacement(on_model, model, fixed)
    assert on_fixed.shape == (1, 3, *fixed.tensor_shape)
    got = voxel_displacement_to_physical(on_fixed, fixed)
    inside = interior_mask(fixed)
    error = np.linalg.norm(got[inside] - known(fixed.physical_points())[inside], axis=-1)
    assert error.max() < 1e-4, f"regridded displacement is off by up to {error.max():.2e} mm"
    # and onto a grid of another direction and spacing (the moving grid's) where it overlaps the model grid
    on_other = voxel_displacement_to_physical(regrid_displacement(on_model, model, moving), moving)
    centre = np.all(np.abs(moving.physical_points() - np.asarray(fixed.center)) < 10.0, axis=-1)
    assert centre.any()
    np.testing.assert_allclose(on_other[centre], known(moving.physical_points())[centre], atol=1e-4)


def test_warp_image_slab_by_slab_equals_one_resample(monkeypatch):
    """Large fields warp slab by slab, each through a transform of its own part of the field: bit-identical to one
    resample through the whole field (oblique, anisotropic grids; linear and nearest neighbour)."""
    import metareg.core.slabs

    rng = np.random.default_rng(0)
    moving = sitk.GetImageFromArray(rng.random((30, 40, 50)).astype(np.float32))
    moving.SetSpacing((1.1, 0.9, 1.3))
    moving.SetDirection(tuple(rotation_matrix([0.2, 1.0, 0.3], 20.0).ravel()))
    field = sitk.GetImageFromArray(rng.normal(0.0, 2.0, (25, 33, 41, 3)), isVector=True)
    field.SetSpacing((1.2, 1.0, 1.4))
    field.SetOrigin((-3.0, 2.0, 1.0))
    field.SetDirection(moving.GetDirection())
    monkeypatch.setattr(metareg.core.slabs, "SLAB_VOXELS", 10**9)
    whole = [sitk.GetArrayFromImage(warp_image(moving, field, kind)) for kind in (sitk.sitkLinear,
                                                                                 sitk.sitkNearestNeighbor)]
    monkeypatch.setattr(metareg.core.slabs, "SLAB_VOXELS", 100)
    for kind, expected in zip((sitk.sitkLinear, sitk.sitkNearestNeighbor), whole):
        warped = warp_image(moving, field, kind)
        assert warped.GetSize() == field.GetSize() and warped.GetOrigin() == field.GetOrigin()
        np.testing.assert_array_equal(sitk.GetArrayFromImage(warped), expected)


def test_rotation_matrix_is_the_right_handed_rotation_about_its_axis():
    quarter = rotation_matrix((0, 0, 2), 90)  # the axis need not be a unit vector
    np.testing.assert_allclose(quarter @ [1, 0, 0], [0, 1, 0], atol=1e-12)  # x → y about +z: right-handed
    turned = rotation_matrix((1, 2, 3), 30)
    np.testing.assert_allclose(turned @ turned.T, np.eye(3), atol=1e-12)
    assert np.linalg.det(turned) == pytest.approx(1.0)
    np.testing.assert_allclose(turned @ np.array([1, 2, 3]), [1, 2, 3], atol=1e-12)  # the axis stays
    np.testing.assert_allclose(rotation_matrix((1, 2, 3), -30), turned.T, atol=1e-12)
