"""Augmentation of training tensors: random affine (seed 002) and random smooth deformations (seed 001).

Both act on tensors ``(B, C, *spatial)`` already on the model grid, through the one spatial transformer of
:mod:`metareg.core.geometry`, so intensities and geometry stay consistent. Randomness comes from an explicit
``torch.Generator`` so that a sample's augmentation depends only on its seed (and not on which process draws it).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from metareg.core.checks import check_float, check_int
from metareg.core.geometry import warp_tensor


@dataclass(frozen=True)
class AugmentConfig:
    """Strength of the augmentations (0 disables one).

    Attributes:
        rotation_deg: largest rotation about each axis, degrees.
        scale: largest relative scaling (0.1 = ±10 %).
        shift_fraction: largest translation as a fraction of the tensor extent.
        deformation_vox: largest random smooth displacement, voxels.
        deformation_control_points: control points per axis of the smooth deformation.
    """

    rotation_deg: float = 0.0
    scale: float = 0.0
    shift_fraction: float = 0.0
    deformation_vox: float = 0.0
    deformation_control_points: int = 5

    def __post_init__(self):
        check_float(self.rotation_deg, "AugmentConfig.rotation_deg", 0.0, 180.0)
        check_float(self.scale, "AugmentConfig.scale", 0.0, 0.9)
        check_float(self.shift_fraction, "AugmentConfig.shift_fraction", 0.0, 1.0)
        check_float(self.deformation_vox, "AugmentConfig.deformation_vox", 0.0, 1000.0)
        check_int(self.deformation_control_points, "AugmentConfig.deformation_control_points", 2, 64)

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def active(self) -> bool:
        return any((self.rotation_deg, self.scale, self.shift_fraction, self.deformation_vox))


def _uniform(generator: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.rand(*shape, generator=generator) * 2.0 - 1.0


def _rotation(angles_rad: torch.Tensor, dim: int) -> torch.Tensor:
    """Rotation matrix in tensor-axis order from one angle (2D) or three (3D, about each axis in turn)."""
    if dim == 2:
        c, s = math.cos(angles_rad[0]), math.sin(angles_rad[0])
        return torch.tensor([[c, -s], [s, c]])
    matrix = torch.eye(3)
    for axis in range(3):
        c, s = math.cos(angles_rad[axis]), math.sin(angles_rad[axis])
        i, j = [a for a in range(3) if a != axis]
        rot = torch.eye(3)
        rot[i, i], rot[i, j], rot[j, i], rot[j, j] = c, -s, s, c
        matrix = rot @ matrix
    return matrix


def random_displacement(
    spatial: tuple[int, ...], config: AugmentConfig, generator: torch.Generator
) -> torch.Tensor:
    """A random affine (about the centre) plus smooth deformation, as a voxel displacement ``(1, dim, *spatial)``."""
    dim = len(spatial)
    angles = _uniform(generator, 1 if dim == 2 else 3) * math.radians(config.rotation_deg)
    scales = 1.0 + _uniform(generator, dim) * config.scale
    shifts = _uniform(generator, dim) * config.shift_fraction * torch.tensor(spatial, dtype=torch.float32)
    matrix = _rotation(angles, dim) @ torch.diag(scales)
    axes = [torch.arange(n, dtype=torch.float32) for n in spatial]
    position = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=0)  # (dim, *spatial), voxels
    centre = torch.tensor([(n - 1) / 2.0 for n in spatial]).view(dim, *([1] * dim))
    relative = (position - centre).reshape(dim, -1)
    moved = (matrix @ relative).reshape(dim, *spatial) + centre + shifts.view(dim, *([1] * dim))
    disp = (moved - position)[None]
    if config.deformation_vox > 0:
        points = [config.deformation_control_points] * dim
        coarse = _uniform(generator, 1, dim, *points) * config.deformation_vox
        # control-point displacements are in voxels of the full grid already: resample values, keep units
        mode = "trilinear" if dim == 3 else "bilinear"
        disp = disp + torch.nn.functional.interpolate(coarse, size=spatial, mode=mode, align_corners=True)
    return disp


def augment(tensor: torch.Tensor, config: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """``tensor`` ``(1, C, *spatial)`` resampled through a random transform drawn from ``generator``."""
    if not config.active:
        return tensor
    disp = random_displacement(tuple(tensor.shape[2:]), config, generator).to(tensor.device, tensor.dtype)
    return warp_tensor(tensor, disp, padding_mode="zeros")


__all__ = ["AugmentConfig", "augment", "random_displacement"]
