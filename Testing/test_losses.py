"""metareg.core.losses: each similarity and regulariser on inputs whose value is known (a case table), and the
windowed mutual information against the full Parzen histogram."""

from __future__ import annotations

import pytest
import torch

from metareg.core import losses


def _images() -> dict[str, torch.Tensor]:
    """The inputs of the cases, from a fixed seed (the global torch generator is not touched)."""
    generator = torch.Generator().manual_seed(0)
    image = torch.rand(1, 1, 24, 20, 22, generator=generator)
    smooth = torch.nn.functional.avg_pool3d(image, 3, 1, 1)
    smooth = (smooth - smooth.min()) / (smooth.max() - smooth.min())  # textured, full [0, 1] range
    linear = torch.zeros(1, 3, 10, 11, 12)
    linear[0, 0] = torch.arange(10.0).view(10, 1, 1) * 0.3  # an affine displacement (0.3 voxel a voxel): no bending
    one_hot = torch.zeros(1, 2, 8, 8)
    one_hot[0, 0, :4], one_hot[0, 1, 4:] = 1, 1  # two labels, top and bottom half
    return {"image": image, "smooth": smooth, "noise": torch.rand(smooth.shape, generator=generator),
            "linear": linear, "one_hot": one_hot}


IMAGES = _images()

#: A loss whose value is known: (loss, its inputs, the value, the absolute tolerance).
EXACT = {
    "global NCC of an image and its negative is 2": (
        losses.global_ncc_loss, lambda x: (x["smooth"], -x["smooth"]), 2.0, 1e-5),
    "global NCC of an image with itself is 0": (
        losses.global_ncc_loss, lambda x: (x["smooth"], x["smooth"]), 0.0, 1e-5),
    "MSE of a 0.5 offset is 0.25": (losses.mse_loss, lambda x: (x["image"], x["image"] + 0.5), 0.25, 1e-7),
    "bending energy of an affine displacement is 0": (losses.bending_energy_loss, lambda x: (x["linear"],), 0.0, 1e-10),
    "gradient L2 of a 0.3 ramp in one of 3 channels is 0.3² / 3": (
        losses.gradient_l2_loss, lambda x: (x["linear"],), 0.09 / 3, 1e-7),
    "gradient L2 of a constant displacement is 0": (
        losses.gradient_l2_loss, lambda x: (torch.ones(1, 2, 8, 8),), 0.0, 0.0),
    "Dice loss of identical labels is 0": (losses.dice_loss, lambda x: (x["one_hot"], x["one_hot"]), 0.0, 1e-6),
    "Dice loss of swapped labels is 1": (losses.dice_loss, lambda x: (x["one_hot"], x["one_hot"].flip(1)), 1.0, 1e-6),
}

#: A loss that must fall in a range: (loss, its inputs, lowest, highest).
RANGES = {
    "local NCC of an image with itself": (losses.local_ncc_loss, lambda x: (x["smooth"], x["smooth"]), 0.0, 0.05),
    "local NCC is blind to a linear intensity change": (
        losses.local_ncc_loss, lambda x: (x["smooth"], 2 * x["smooth"] + 0.3), 0.0, 0.05),
    "local NCC of unrelated images": (losses.local_ncc_loss, lambda x: (x["smooth"], x["noise"]), 0.5, 1.0),
}


@pytest.mark.parametrize("loss, inputs, expected, tolerance", EXACT.values(), ids=EXACT.keys())
def test_a_loss_has_its_known_value(loss, inputs, expected, tolerance):
    value = loss(*inputs(IMAGES))
    assert value.shape == () and float(value) == pytest.approx(expected, abs=tolerance)


@pytest.mark.parametrize("loss, inputs, lowest, highest", RANGES.values(), ids=RANGES.keys())
def test_a_loss_falls_in_its_range(loss, inputs, lowest, highest):
    value = loss(*inputs(IMAGES))
    assert value.shape == () and lowest <= float(value) <= highest


def test_mutual_information_takes_an_inverted_contrast_for_aligned():
    smooth = IMAGES["smooth"]
    aligned = losses.mutual_information_loss(smooth, 1 - smooth)
    shifted = losses.mutual_information_loss(smooth, 1 - torch.roll(smooth, 6, dims=2))
    assert aligned < shifted < 0  # the loss is minus the mutual information


def test_mutual_information_matches_full_parzen_histogram():
    """The windowed MI equals MI from the full Gaussian Parzen histogram (every voxel in every bin), value and
    gradient, on values that also fall outside [0, 1] and near the edge bins."""
    generator = torch.Generator().manual_seed(0)
    fixed = torch.rand(2, 1, 12, 10, 9, generator=generator, dtype=torch.float64) * 1.2 - 0.1
    moving = 1 - fixed + 0.1 * torch.rand(fixed.shape, generator=generator, dtype=torch.float64)

    def full_parzen_mi(a, b, bins=32, sigma_ratio=0.5):
        centres = torch.linspace(0.0, 1.0, bins, dtype=a.dtype)

        def soft(x):
            w = torch.exp(-0.5 * ((x.clamp(0, 1).flatten(1)[..., None] - centres) / (sigma_ratio / (bins - 1))) ** 2)
            return w / w.sum(-1, keepdim=True)

        joint = torch.einsum("bni,bnj->bij", soft(a), soft(b)) / a[0].numel()
        pa, pb = joint.sum(2, keepdim=True), joint.sum(1, keepdim=True)
        return -(joint * torch.log((joint + 1e-10) / (pa * pb + 1e-10))).sum((1, 2)).mean()

    for bins, sigma_ratio in ((32, 0.5), (16, 1.0)):
        reference_input = moving.clone().requires_grad_(True)
        windowed_input = moving.clone().requires_grad_(True)
        reference = full_parzen_mi(fixed, reference_input, bins, sigma_ratio)
        windowed = losses.mutual_information_loss(fixed, windowed_input, bins, sigma_ratio)
        reference.backward()
        windowed.backward()
        assert windowed.item() == pytest.approx(reference.item(), rel=1e-6)
        assert torch.allclose(windowed_input.grad, reference_input.grad, rtol=1e-4,
                              atol=1e-5 * reference_input.grad.abs().max())
