"""The classical iterative method: optimise a displacement field directly for one pair (no network).

Seed 002's "classical iterative" baseline, made multi-resolution: at each level of an image pyramid the voxel
displacement (or, with ``diffeomorphic=True``, a stationary velocity integrated by scaling and squaring) is optimised
with Adam against the same losses the networks use, then upsampled to start the next level.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from .errors import Cancelled
from .geometry import integrate_velocity, resize_displacement, warp_tensor
from .losses import LossConfig, registration_loss

ProgressCallback = Callable[[float, str], None]


@dataclass(frozen=True)
class IterativeConfig:
    """Settings of the iterative method.

    Attributes:
        shrink_factors: pyramid levels, coarsest first (each a downsampling factor of the model grid).
        iterations: Adam steps per level.
        learning_rate: Adam step size, in voxels of the level's grid.
        loss: similarity and regulariser (regulariser in voxel units of each level).
        diffeomorphic: optimise a stationary velocity and integrate it (no folding in practice).
    """

    shrink_factors: tuple[int, ...] = (4, 2, 1)
    iterations: tuple[int, ...] = (150, 100, 50)
    learning_rate: float = 0.1
    loss: LossConfig = field(default_factory=lambda: LossConfig(similarity="lncc", regulariser_weight=3.0))
    diffeomorphic: bool = False

    def __post_init__(self):
        if len(self.shrink_factors) != len(self.iterations):
            raise ValueError("shrink_factors and iterations need one entry per level")

    def to_dict(self) -> dict:
        return asdict(self)


def _shrink(image: torch.Tensor, factor: int) -> torch.Tensor:
    """Box-smooth by ``factor`` and resample to ``ceil(n / factor)`` voxels with corner-aligned grids."""
    if factor == 1:
        return image
    dim = image.dim() - 2
    pool = F.avg_pool3d if dim == 3 else F.avg_pool2d
    kernel = factor + 1 - factor % 2  # odd, so the smoothing does not shift the image
    smoothed = pool(image, kernel, stride=1, padding=kernel // 2, count_include_pad=False)
    size = [max(2, -(-n // factor)) for n in image.shape[2:]]
    return F.interpolate(smoothed, size=size, mode="trilinear" if dim == 3 else "bilinear", align_corners=True)


def register_iterative(
    fixed: torch.Tensor,
    moving: torch.Tensor,
    config: IterativeConfig = IterativeConfig(),
    progress: ProgressCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
    initial: torch.Tensor | None = None,
) -> tuple[torch.Tensor, list[float]]:
    """Register ``moving`` to ``fixed`` (both ``(1, 1, *spatial)``, normalised) by direct optimisation.

    Args:
        initial: optional voxel displacement ``(1, dim, *spatial)`` on the input grid to start from (e.g. a network's
            prediction, which this then refines); the coarsest level starts from it resampled. Only for
            ``diffeomorphic=False``: a displacement is not a velocity.

    Returns:
        The voxel displacement ``(1, dim, *spatial)`` on the input grid and the loss after every step.

    Raises:
        Cancelled: when ``should_stop()`` returns True (checked every step).
    """
    dim = fixed.dim() - 2
    params = None  # the current level's optimised tensor
    if initial is not None:
        if config.diffeomorphic:
            raise ValueError("an initial displacement can only be refined with diffeomorphic=False")
        if tuple(initial.shape) != (1, dim, *fixed.shape[2:]):
            raise ValueError(f"initial displacement has shape {tuple(initial.shape)}, "
                             f"expected {(1, dim, *fixed.shape[2:])}")
        params = initial.detach().to(fixed.dtype)
    total_steps = sum(config.iterations)
    done = 0
    curve: list[float] = []
    for factor, iterations in zip(config.shrink_factors, config.iterations):
        fixed_level = _shrink(fixed, factor)
        moving_level = _shrink(moving, factor)
        shape = fixed_level.shape[2:]
        if params is None:
            start = torch.zeros((1, dim, *shape), dtype=fixed.dtype, device=fixed.device)
        else:
            start = resize_displacement(params.detach(), shape)
        params = start.clone().requires_grad_(True)
        optimiser = torch.optim.Adam([params], lr=config.learning_rate)
        for _ in range(iterations):
            if should_stop is not None and should_stop():
                raise Cancelled("registration cancelled")
            optimiser.zero_grad(set_to_none=True)
            disp = integrate_velocity(params) if config.diffeomorphic else params
            warped = warp_tensor(moving_level, disp)
            loss, _ = registration_loss(config.loss, fixed_level, warped, disp)
            loss.backward()
            optimiser.step()
            curve.append(float(loss.detach()))
            done += 1
            if progress is not None:
                progress(done / total_steps, f"iterative, level 1/{factor}")
    params = resize_displacement(params.detach(), fixed.shape[2:])
    disp = integrate_velocity(params) if config.diffeomorphic else params
    return disp.detach(), curve
