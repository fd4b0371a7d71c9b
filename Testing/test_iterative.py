"""metareg.core.iterative: the B-spline levels of the iterative method, on a supersampled image, started from a
given displacement (the refinement of a network's field), and the checks of their settings."""

from __future__ import annotations

import pytest
import torch

from metareg.core.geometry import warp_tensor
from metareg.core.iterative import IterativeConfig, bspline_field, register_iterative, upsample_cubic2


def test_iterative_refinement_checks_its_start():
    fixed = torch.rand(1, 1, 16, 18)
    start = torch.zeros(1, 2, 16, 18)
    start[0, 0] = 1.5
    kept, curve = register_iterative(fixed, fixed, IterativeConfig(shrink_factors=(1,), iterations=(0,)), initial=start)
    torch.testing.assert_close(kept, start)  # zero steps hand the start back
    assert curve == []
    with pytest.raises(ValueError, match="shape"):
        register_iterative(fixed, fixed, IterativeConfig(), initial=torch.zeros(1, 2, 8, 9))
    with pytest.raises(ValueError, match="diffeomorphic"):
        register_iterative(fixed, fixed, IterativeConfig(diffeomorphic=True), initial=start)



def test_bspline_field_is_a_partition_of_unity_and_reproduces_a_ramp():
    """Control point k sits at voxel (k - 1) * s: constant coefficients give that constant, coefficients k give the
    ramp 1 + x / s, on every axis, and ceil(n / s) + 3 control points cover n voxels."""
    for spacing, shape in ((2, (7, 9, 5)), (4, (12, 10, 9))):
        control_shape = [-(-n // spacing) + 3 for n in shape]
        ones = bspline_field(torch.full((1, 1, *control_shape), 2.5), spacing, shape)
        assert ones.shape == (1, 1, *shape) and torch.allclose(ones, torch.full_like(ones, 2.5), atol=1e-6)
        ramp = torch.arange(control_shape[1], dtype=torch.float32).view(1, 1, 1, -1, 1).expand(1, 1, *control_shape)
        values = bspline_field(ramp.contiguous(), spacing, shape)
        expected = 1 + torch.arange(shape[1], dtype=torch.float32) / spacing
        assert torch.allclose(values[0, 0, 3, :, 2], expected, atol=1e-5)



def test_supersampled_warp_keeps_the_grid_and_shifts_exactly():
    """upsample_cubic2 keeps the voxels and their extent: warping it by a known half-voxel shift gives the shifted
    ramp (and quadratic) exactly, where linear interpolation of the original misses the quadratic."""
    x = torch.arange(10, dtype=torch.float32)
    image = (x.view(-1, 1) ** 2 + 3 * x.view(1, -1)).view(1, 1, 10, 10)
    upsampled = upsample_cubic2(image)
    assert upsampled.shape == (1, 1, 19, 19) and torch.equal(upsampled[..., ::2, ::2], image)
    shift = torch.zeros(1, 2, 10, 10)
    shift[:, 0] = 0.5  # half a voxel along axis 0 (the quadratic one)
    want = ((x.view(-1, 1) + 0.5) ** 2 + 3 * x.view(1, -1))[2:8, 2:8]  # inside, away from the repeated edges
    assert torch.allclose(warp_tensor(upsampled, shift)[0, 0, 2:8, 2:8], want, atol=1e-4)
    assert not torch.allclose(warp_tensor(image, shift)[0, 0, 2:8, 2:8], want, atol=1e-2)



def test_bspline_levels_refine_from_a_start_and_check_their_settings():
    with pytest.raises(ValueError, match="control_spacing"):
        IterativeConfig(shrink_factors=(2, 1), iterations=(3, 3), control_spacing=(2,))
    fixed = torch.rand(1, 1, 12, 14)
    start = torch.full((1, 2, 12, 14), 0.25)
    config = IterativeConfig(shrink_factors=(2, 1), iterations=(0, 0), control_spacing=(2, 4), supersample=True)
    kept, curve = register_iterative(fixed, fixed, config, initial=start)
    assert curve == [] and torch.allclose(kept, start)  # zero steps: the start comes back unchanged
    moved, curve = register_iterative(fixed, fixed.roll(1, dims=2), IterativeConfig(
        shrink_factors=(1,), iterations=(5,), control_spacing=(3,), supersample=True))
    assert len(curve) == 5 and moved.shape == (1, 2, 12, 14) and curve[-1] < curve[0]



def test_iterative_defaults_are_bspline_levels_on_a_supersampled_image_for_any_level_count():
    default = IterativeConfig()
    assert default.supersample and default.level_spacings() == (2, 2, 4)
    assert default.to_dict()["control_spacing"] == [2, 2, 4]  # the report says what ran
    assert IterativeConfig(shrink_factors=(2, 1), iterations=(5, 5)).level_spacings() == (2, 4)
    assert IterativeConfig(shrink_factors=(4, 2), iterations=(5, 5)).level_spacings() == (2, 2)
    assert IterativeConfig(control_spacing=(0, 0, 0)).level_spacings() == (0, 0, 0)  # dense, when asked
