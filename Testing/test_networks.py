"""metareg.core.networks: the registration networks take any image size, start near the identity, are rebuilt
from their config, take their images by name, and the diffeomorphic one does not fold."""

from __future__ import annotations

import pytest
import torch

from metareg.core.geometry import Grid
from metareg.core.networks import RegistrationNetwork


@pytest.mark.parametrize("family", ["unet", "localnet"])
@pytest.mark.parametrize("shape", [(1, 1, 37, 29), (1, 1, 19, 22, 17)])
def test_networks_take_any_size_and_start_near_identity(family, shape):
    dim = len(shape) - 2
    network = RegistrationNetwork.from_config({"family": family, "dim": dim})
    moving, fixed = torch.rand(shape), torch.rand(shape)
    disp = network(fixed=fixed, moving=moving)
    assert disp.shape == (1, dim, *shape[2:])
    assert disp.abs().max() < 0.05


@pytest.mark.parametrize("config", [
    {"family": "unet", "dim": 2},
    {"family": "unet", "dim": 3, "encoder_channels": [4, 8], "decoder_channels": [8, 4, 4], "diffeomorphic": True,
     "integration_steps": 5},
    {"family": "localnet", "dim": 2, "channels": [4, 8, 8]},
])
def test_a_network_rebuilt_from_its_config_is_the_same_network(config):
    network = RegistrationNetwork.from_config(config)
    assert {**network.to_config(), **config} == network.to_config()  # every given parameter kept, defaults filled in
    again = RegistrationNetwork.from_config(network.to_config())
    assert again.to_config() == network.to_config()
    again.load_state_dict(network.state_dict(), strict=True)  # the same layers
    shape = (1, 1) + (20,) * config["dim"]
    fixed, moving = torch.rand(shape), torch.rand(shape)
    with torch.no_grad():
        torch.testing.assert_close(again(fixed=fixed, moving=moving), network(fixed=fixed, moving=moving))
        swapped = network(fixed=moving, moving=fixed)
    assert not torch.equal(swapped, network(fixed=fixed, moving=moving))  # the roles are not interchangeable


def test_a_network_is_called_with_named_images_and_refuses_unknown_parameters():
    network = RegistrationNetwork.from_config({"family": "unet", "dim": 2})
    image = torch.rand(1, 1, 16, 16)
    with pytest.raises(TypeError):
        network(image, image)  # positional (fixed, moving) or (moving, fixed)? refused: name them
    with pytest.raises(ValueError, match="has no parameter encoder_chanels"):
        RegistrationNetwork.from_config({"family": "unet", "dim": 2, "encoder_chanels": [8]})
    with pytest.raises(ValueError, match="unknown network family"):
        RegistrationNetwork.from_config({"family": "transformer", "dim": 2})


def test_diffeomorphic_network_output_does_not_fold():
    torch.manual_seed(0)
    network = RegistrationNetwork.from_config({"family": "unet", "dim": 2, "diffeomorphic": True})
    with torch.no_grad():
        network.head.weight.normal_(0, 3.0)  # a large random velocity
        disp = network(fixed=torch.rand(1, 1, 48, 40), moving=torch.rand(1, 1, 48, 40))
    raw = RegistrationNetwork.from_config({"family": "unet", "dim": 2})
    raw.load_state_dict(network.state_dict())
    assert disp.abs().max() > 1.0  # the test is not vacuous: the displacement is large
    from metareg.core.geometry import voxel_displacement_to_physical, vector_image
    from metareg.core.metrics import folding_fraction, jacobian_determinant

    grid = Grid((40, 48), (1.0, 1.0), (0.0, 0.0), (1.0, 0.0, 0.0, 1.0))
    field = vector_image(voxel_displacement_to_physical(disp, grid), grid)
    assert folding_fraction(jacobian_determinant(field)) == 0.0
    with torch.no_grad():
        raw_disp = raw(fixed=torch.rand(1, 1, 48, 40), moving=torch.rand(1, 1, 48, 40))
    raw_field = vector_image(voxel_displacement_to_physical(raw_disp, grid), grid)
    assert folding_fraction(jacobian_determinant(raw_field)) > 0.0  # without integration the same weights fold
