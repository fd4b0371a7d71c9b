"""Losses for registration (torch, differentiable, 2D and 3D).

Image tensors are ``(B, C, *spatial)`` with intensities normalised to about [0, 1]. Displacements are ``(B, dim,
*spatial)`` in voxels of the tensor grid. Every similarity loss is "lower is better" and 0 for a perfect match where
that is defined (``1 − NCC``, MSE, ``−MI``).
"""

from __future__ import annotations

import functools
import math
import operator
from dataclasses import asdict, dataclass
from typing import Callable, Iterable

import torch
import torch.nn.functional as F

from metareg.core.checks import check_choice, check_float, check_int
from metareg.core.errors import ParameterError

#: Largest regulariser weight a config accepts (the zoo uses 1-10; beyond this the field is frozen at identity).
MAX_WEIGHT = 1e4
#: Largest local NCC window, voxels.
MAX_NCC_WINDOW = 63


def _box_mean(x: torch.Tensor, window: int) -> torch.Tensor:
    """Mean over a ``window``-wide cube around each voxel (zero padding, divided by the full window volume).

    Separable running sums (cumulative sum along each axis): O(dim) work per voxel whatever the window.
    """
    half = window // 2
    for axis in range(2, x.dim()):
        pad = [0] * (2 * (x.dim() - 2))
        slot = 2 * (x.dim() - 1 - axis)  # F.pad lists the last axis first
        pad[slot], pad[slot + 1] = half + 1, half
        running = F.pad(x, pad).cumsum(axis)
        n = x.shape[axis]
        x = (running.narrow(axis, window, n) - running.narrow(axis, 0, n)) / window
    return x


def local_ncc_loss(fixed: torch.Tensor, warped: torch.Tensor, window: int = 9, eps: float = 1e-5) -> torch.Tensor:
    """``1 − mean local squared NCC`` over ``window``-voxel windows (VoxelMorph's windowed NCC).

    Near 0 for a perfect match of textured images. Windows whose variance product is below ``eps`` (flat background)
    count as uncorrelated, a constant offset that does not depend on the alignment.
    """
    if window % 2 == 0:
        raise ValueError(f"the NCC window must be odd, got {window}")
    channels = fixed.shape[1]
    means = _box_mean(torch.cat([fixed, warped, fixed * warped, fixed * fixed, warped * warped], dim=1), window)
    mu_f, mu_w, mu_fw, mu_ff, mu_ww = torch.split(means, channels, dim=1)
    cov = mu_fw - mu_f * mu_w
    var_f = (mu_ff - mu_f * mu_f).clamp_min(0)
    var_w = (mu_ww - mu_w * mu_w).clamp_min(0)
    cc = cov * cov / (var_f * var_w + eps)
    return 1.0 - cc.mean()


def global_ncc_loss(fixed: torch.Tensor, warped: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """``1 − NCC`` computed over the whole image of each batch item, averaged over the batch."""
    f = fixed.flatten(1) - fixed.flatten(1).mean(1, keepdim=True)
    w = warped.flatten(1) - warped.flatten(1).mean(1, keepdim=True)
    ncc = (f * w).sum(1) / torch.sqrt((f * f).sum(1) * (w * w).sum(1) + eps)
    return 1.0 - ncc.mean()


def mse_loss(fixed: torch.Tensor, warped: torch.Tensor) -> torch.Tensor:
    """Mean squared difference (SSD divided by the voxel count)."""
    return torch.mean((fixed - warped) ** 2)


def _parzen_window(x: torch.Tensor, bins: int, sigma: float, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Soft assignment of intensities to histogram bins: ``(B, N)`` values in [0, 1] (clamped) to the indices
    ``(B, N, width)`` of the ``width`` bins nearest each value and their Gaussian weights (width ``sigma`` in bin
    units, normalised to sum to 1 over those bins; bins outside ``[0, bins)`` get weight 0)."""
    position = x.clamp(0, 1) * (bins - 1)  # in bin units
    first = torch.floor(position).detach().long() - (width // 2 - 1)
    index = first[..., None] + torch.arange(width, device=x.device)
    weights = torch.exp(-0.5 * ((position[..., None] - index.to(x.dtype)) / sigma) ** 2)
    inside = (index >= 0) & (index < bins)
    weights = weights * inside
    return index.clamp(0, bins - 1), weights / (weights.sum(-1, keepdim=True) + 1e-10)


def mutual_information_loss(
    fixed: torch.Tensor, warped: torch.Tensor, bins: int = 32, sigma_ratio: float = 0.5
) -> torch.Tensor:
    """``−MI`` (nats) with Gaussian Parzen windows; for images of different contrast (T1 ↔ T2).

    Intensities are clamped to [0, 1] and softly assigned to ``bins`` bin centres with a Gaussian of width
    ``sigma_ratio × bin width``. Each value's window is cut at the bins more than 6 widths away (weights below
    ``exp(-18)`` of the peak), so the joint histogram costs a few dozen products per voxel, not ``bins²``.
    """
    sigma = float(sigma_ratio)
    width = 2 * max(1, math.ceil(6 * sigma))
    batch = fixed.shape[0]
    index_f, weight_f = _parzen_window(fixed.flatten(1), bins, sigma, width)
    index_w, weight_w = _parzen_window(warped.flatten(1), bins, sigma, width)
    voxels = index_f.shape[1]
    joint = warped.new_zeros(batch, bins * bins)
    for k in range(width):  # one fixed-side bin of each voxel's window at a time, all warped-side bins at once
        cells = (index_f[..., k : k + 1] * bins + index_w).reshape(batch, -1)
        joint = joint.scatter_add(1, cells, (weight_f[..., k : k + 1] * weight_w).reshape(batch, -1))
    joint = joint.view(batch, bins, bins) / voxels
    pf = joint.sum(2, keepdim=True)
    pw = joint.sum(1, keepdim=True)
    mi = (joint * torch.log((joint + 1e-10) / (pf * pw + 1e-10))).sum((1, 2))
    return -mi.mean()


def _total(terms: Iterable[torch.Tensor]) -> torch.Tensor:
    """The sum of a non-empty sequence of tensors (what ``sum`` gives, typed as a tensor)."""
    return functools.reduce(operator.add, terms)


def _differences(disp: torch.Tensor) -> list[torch.Tensor]:
    """Forward differences of ``disp`` along each spatial axis."""
    return [torch.diff(disp, dim=axis) for axis in range(2, disp.dim())]


def gradient_l2_loss(disp: torch.Tensor) -> torch.Tensor:
    """Diffusion regulariser: mean squared first derivative of the displacement (voxel units), summed over axes."""
    return _total(d.pow(2).mean() for d in _differences(disp))


def bending_energy_loss(disp: torch.Tensor) -> torch.Tensor:
    """Bending energy: mean squared second derivatives (all pure and mixed, mixed counted twice), voxel units."""
    axes = list(range(2, disp.dim()))
    total = disp.new_zeros(())
    for i, a in enumerate(axes):
        first = torch.diff(disp, dim=a)
        for b in axes[i:]:
            second = torch.diff(first, dim=b)
            total = total + (1.0 if a == b else 2.0) * second.pow(2).mean()
    return total


def dice_loss(fixed_labels: torch.Tensor, warped_labels: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """``1 − mean soft Dice`` over channels of one-hot (or probabilistic) label maps ``(B, L, *spatial)``."""
    dims = tuple(range(2, fixed_labels.dim()))
    intersection = (fixed_labels * warped_labels).sum(dims)
    total = fixed_labels.sum(dims) + warped_labels.sum(dims)
    return 1.0 - ((2 * intersection + eps) / (total + eps)).mean()


SIMILARITIES: dict[str, Callable[..., torch.Tensor]] = {
    "lncc": local_ncc_loss,
    "ncc": global_ncc_loss,
    "mse": mse_loss,
    "mi": mutual_information_loss,
}
REGULARISERS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gradient_l2": gradient_l2_loss,
    "bending": bending_energy_loss,
}


@dataclass(frozen=True)
class LossConfig:
    """Similarity + weighted regulariser, as stored in a model card.

    Attributes:
        similarity: ``"lncc"``, ``"ncc"``, ``"mse"`` or ``"mi"``.
        regulariser: ``"gradient_l2"`` or ``"bending"``.
        regulariser_weight: weight of the regulariser relative to the similarity.
        ncc_window: window of ``"lncc"`` in voxels (odd).
    """

    similarity: str = "lncc"
    regulariser: str = "gradient_l2"
    regulariser_weight: float = 1.0
    ncc_window: int = 9

    def __post_init__(self):
        check_choice(self.similarity, "LossConfig.similarity", SIMILARITIES)
        check_choice(self.regulariser, "LossConfig.regulariser", REGULARISERS)
        object.__setattr__(self, "regulariser_weight",
                           check_float(self.regulariser_weight, "LossConfig.regulariser_weight", 0.0, MAX_WEIGHT))
        window = check_int(self.ncc_window, "LossConfig.ncc_window", 3, MAX_NCC_WINDOW)
        if window % 2 == 0:
            raise ParameterError("LossConfig.ncc_window", f"must be odd, got {window}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "LossConfig":
        """From a card's ``loss`` entry; unknown keys are refused (a misspelt key would silently fall back)."""
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise ParameterError(f"LossConfig.{unknown[0]}", f"is not a loss setting (known: "
                                 f"{', '.join(cls.__dataclass_fields__)})")
        return cls(**data)


def similarity_loss(config: LossConfig, fixed: torch.Tensor, warped: torch.Tensor) -> torch.Tensor:
    if config.similarity == "lncc":
        return local_ncc_loss(fixed, warped, window=config.ncc_window)
    return SIMILARITIES[config.similarity](fixed, warped)


def registration_loss(
    config: LossConfig, fixed: torch.Tensor, warped: torch.Tensor, disp_vox: torch.Tensor
) -> tuple[torch.Tensor, dict[str, float]]:
    """Total loss ``similarity + weight × regulariser`` and its parts (as floats, for logging)."""
    similarity = similarity_loss(config, fixed, warped)
    regulariser = REGULARISERS[config.regulariser](disp_vox)
    total = similarity + config.regulariser_weight * regulariser
    return total, {"similarity": float(similarity.detach()), "regulariser": float(regulariser.detach())}
