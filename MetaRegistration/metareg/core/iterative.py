"""The classical iterative method: optimise a displacement field directly for one pair (no network).

Seed 002's "classical iterative" baseline, made multi-resolution: at each level of an image pyramid the voxel
displacement (or, with ``diffeomorphic=True``, a stationary velocity integrated by scaling and squaring) is optimised
with Adam against the same losses the networks use, then upsampled to start the next level. The same function refines
a network's field (:func:`metareg.core.registration.refinement_config`). Two choices, both on by default:

- each level optimises a cubic B-spline correction on control points every ``s`` voxels (by default 2 on the coarser
  levels, 4 at full resolution) instead of every voxel: the spatially coupled parameters move smooth errors far faster
  than per-voxel Adam steps do (``control_spacing`` 0 keeps a level dense);
- ``supersample``: the moving image of each level is upsampled 2x by cubic convolution before it is warped, so that
  the warp's (bi/tri)linear interpolation no longer smooths the image by an amount that depends on the sub-voxel
  position, a bias that pulls similarity optima towards whole-voxel shifts.

Both were chosen on training and development pairs (brain-mr-3d-warp 0-3, fundus-2d-finetune; as refinement,
brain-mr-3d-test 0-3), where each lowered the TRE against dense per-voxel steps in less time; the iterative method's
accuracy beside the peers is in ``benchmarks/results/peers-*.md``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from metareg.core.checks import check_float, check_int
from metareg.core.errors import Cancelled, ParameterError
from metareg.core.geometry import integrate_velocity, resize_displacement, warp_tensor
from metareg.core.losses import LossConfig, registration_loss

ProgressCallback = Callable[[float, str], None]

#: Most pyramid levels, and most Adam steps in one level, a config accepts (the defaults are 3 levels, 100 steps).
MAX_LEVELS = 8
MAX_STEPS_PER_LEVEL = 100_000


@dataclass(frozen=True)
class IterativeConfig:
    """Settings of the iterative method.

    Attributes:
        shrink_factors: pyramid levels, coarsest first (each a downsampling factor of the model grid).
        iterations: Adam steps per level.
        learning_rate: Adam step size, in voxels of the level's grid.
        loss: similarity and regulariser (regulariser in voxel units of each level).
        diffeomorphic: optimise a stationary velocity and integrate it (no folding in practice).
        control_spacing: per level, 0 to optimise every voxel of the field, or ``s > 0`` to optimise a cubic B-spline
            correction (control points every ``s`` voxels of the level's grid) added to the field the level starts
            from. None (default): 2 on every shrunk level, 4 on the full-resolution one (:meth:`level_spacings`).
        supersample: warp a 2x cubic-convolution upsampling of each level's moving image (see the module docstring).
    """

    shrink_factors: tuple[int, ...] = (4, 2, 1)
    iterations: tuple[int, ...] = (100, 67, 33)
    learning_rate: float = 0.1
    loss: LossConfig = field(default_factory=lambda: LossConfig(similarity="lncc", regulariser_weight=3.0))
    diffeomorphic: bool = False
    control_spacing: tuple[int, ...] | None = None
    supersample: bool = True

    def __post_init__(self):
        levels = len(self.iterations)
        if not 1 <= levels <= MAX_LEVELS:
            raise ParameterError("IterativeConfig.iterations", f"needs 1 to {MAX_LEVELS} levels, got {levels}")
        if len(self.shrink_factors) != levels:
            raise ParameterError("IterativeConfig.shrink_factors",
                                 f"needs one entry per level of iterations ({levels}), got {len(self.shrink_factors)}")
        setattr_ = object.__setattr__
        setattr_(self, "iterations", tuple(check_int(n, "IterativeConfig.iterations", 0, MAX_STEPS_PER_LEVEL)
                                           for n in self.iterations))
        setattr_(self, "shrink_factors", tuple(check_int(n, "IterativeConfig.shrink_factors", 1, 64)
                                               for n in self.shrink_factors))
        setattr_(self, "learning_rate", check_float(self.learning_rate, "IterativeConfig.learning_rate",
                                                    maximum=100.0, positive=True))
        if self.control_spacing is not None:
            if len(self.control_spacing) != levels:
                raise ParameterError("IterativeConfig.control_spacing", f"needs one entry per level ({levels})")
            setattr_(self, "control_spacing", tuple(check_int(n, "IterativeConfig.control_spacing", 0, 64)
                                                    for n in self.control_spacing))
        if not isinstance(self.loss, LossConfig):
            raise ParameterError("IterativeConfig.loss", f"must be a LossConfig, got {type(self.loss).__name__}")

    def level_spacings(self) -> tuple[int, ...]:
        """The control-point spacing of each level (0: dense): ``control_spacing``, or by default every 2 voxels on a
        shrunk level and every 4 on the full-resolution one (any number of levels)."""
        if self.control_spacing is not None:
            return tuple(self.control_spacing)
        return tuple(4 if factor == 1 else 2 for factor in self.shrink_factors)

    def with_iterations(self, iterations: Sequence[int]) -> "IterativeConfig":
        """This config with ``iterations`` steps per level. With another number of levels than it has, the pyramid
        becomes one level per entry, each halving the resolution of the next (…, 4, 2, 1), and a per-level control
        spacing falls back to the default of :meth:`level_spacings`."""
        iterations = tuple(iterations)
        if len(iterations) == len(self.shrink_factors):
            return replace(self, iterations=iterations)
        return replace(self, iterations=iterations, control_spacing=None,
                       shrink_factors=tuple(2**level for level in reversed(range(len(iterations)))))

    def to_dict(self) -> dict:
        """The settings as JSON-ready values, the control spacing resolved per level."""
        return asdict(self) | {"control_spacing": list(self.level_spacings())}


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


def _cubic_bspline(t: np.ndarray) -> np.ndarray:
    t = np.abs(t)
    return np.where(t < 1, 2 / 3 - t**2 + t**3 / 2, np.where(t < 2, (2 - t) ** 3 / 6, 0.0))


def bspline_field(coefficients: torch.Tensor, spacing: int, shape: Sequence[int]) -> torch.Tensor:
    """The cubic B-spline ``(1, C, *shape)`` of control coefficients ``(1, C, *control)``, control point ``k`` of an
    axis at voxel ``(k - 1) * spacing`` (so ``ceil(n / spacing) + 3`` control points cover ``n`` voxels)."""
    kernel = torch.tensor(_cubic_bspline((np.arange(4 * spacing) - 2 * spacing) / spacing),
                          dtype=coefficients.dtype, device=coefficients.device).view(1, 1, -1)
    values = coefficients
    for axis in range(2, coefficients.dim()):
        values = values.movedim(axis, -1)
        lead = values.shape[:-1]
        line = F.conv_transpose1d(values.reshape(-1, 1, values.shape[-1]), kernel, stride=spacing,
                                  padding=3 * spacing)[..., : shape[axis - 2]]
        values = line.reshape(*lead, line.shape[-1]).movedim(-1, axis)
    return values


def upsample_cubic2(image: torch.Tensor) -> torch.Tensor:
    """``(B, C, *n)`` -> ``(B, C, *(2n - 1))``: the voxels kept, one new sample between each pair of neighbours by
    cubic convolution (Keys, a = -1/2: weights -1, 9, 9, -1 over 16; edges repeated). The corner voxel centres stay
    where they were, so the result spans the same extent under ``align_corners=True`` sampling."""
    kernel = torch.tensor([-1.0, 9.0, 9.0, -1.0], dtype=image.dtype, device=image.device).view(1, 1, 4) / 16
    for axis in range(2, image.dim()):
        image = image.movedim(axis, -1)
        lead, n = image.shape[:-1], image.shape[-1]
        lines = image.reshape(-1, 1, n)
        between = F.conv1d(F.pad(lines, (1, 2), mode="replicate"), kernel)[..., : n - 1]
        woven = torch.stack([lines[..., :-1], between], dim=-1).reshape(lines.shape[0], 1, 2 * (n - 1))
        image = torch.cat([woven, lines[..., -1:]], dim=-1).reshape(*lead, 2 * n - 1).movedim(-1, axis)
    return image


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
    params = None  # the field (or velocity) the next level starts from
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
    for factor, iterations, spacing in zip(config.shrink_factors, config.iterations, config.level_spacings()):
        fixed_level = _shrink(fixed, factor)
        moving_level = _shrink(moving, factor)
        if config.supersample:  # same extent, twice the samples: warp_tensor samples it at the level's points
            moving_level = upsample_cubic2(moving_level)
        shape = fixed_level.shape[2:]
        if params is None:
            start = torch.zeros((1, dim, *shape), dtype=fixed.dtype, device=fixed.device)
        else:
            start = resize_displacement(params.detach(), shape)
        # the level optimises a correction added to its start: every voxel's, or a B-spline's control points
        control_shape = [-(-n // spacing) + 3 for n in shape] if spacing else shape
        control = torch.zeros((1, dim, *control_shape), dtype=fixed.dtype, device=fixed.device, requires_grad=True)

        def level_params(start=start, control=control, spacing=spacing, shape=shape) -> torch.Tensor:
            return start + (bspline_field(control, spacing, shape) if spacing else control)

        optimiser = torch.optim.Adam([control], lr=config.learning_rate)
        for _ in range(iterations):
            if should_stop is not None and should_stop():
                raise Cancelled("registration cancelled")
            optimiser.zero_grad(set_to_none=True)
            params = level_params()
            disp = integrate_velocity(params) if config.diffeomorphic else params
            warped = warp_tensor(moving_level, disp)
            loss, _ = registration_loss(config.loss, fixed_level, warped, disp)
            loss.backward()
            optimiser.step()
            curve.append(float(loss.detach()))
            done += 1
            if progress is not None:
                progress(done / total_steps, f"iterative, level 1/{factor}")
        params = level_params().detach()
    assert params is not None  # every config has at least one level
    params = resize_displacement(params, fixed.shape[2:])
    disp = integrate_velocity(params) if config.diffeomorphic else params
    return disp.detach(), curve
