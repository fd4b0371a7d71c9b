"""Preprocessing as a model card states it: the model grid and the intensity normalisation.

:func:`prepare_pair` is the one path from two SimpleITK images to the two tensors a network (or the iterative method)
sees, used alike by registration and by training.

Normalisation (a card's :class:`metareg.core.card.Normalisation`): percentile scaling to [0, 1] — the window is computed
on the *original* image's voxels (not on the resampled tensor, whose padding would bias it) — then, optionally,
histogram equalisation (seed 000 equalised every image).
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
import torch

from metareg.core.card import GridSpec, Normalisation
from metareg.core.geometry import (
    Grid,
    image_to_tensor,
    model_grid_on_fixed,
    resample_onto,
)

_MAX_SAMPLES = 1_000_000
_EQUALISATION_BINS = 256


def intensity_window(image: sitk.Image, low: float = 1.0, high: float = 99.0) -> tuple[float, float]:
    """The ``low``-th and ``high``-th intensity percentiles of ``image`` (a regular subsample of at most 1M voxels)."""
    values = sitk.GetArrayViewFromImage(image).ravel()
    step = max(1, values.size // _MAX_SAMPLES)
    lo, hi = np.percentile(values[::step].astype(np.float64), [low, high])
    if hi <= lo:  # e.g. a mostly-empty image: fall back to the full range
        lo, hi = float(values.min()), float(values.max())
    return float(lo), float(hi)


def normalise(tensor: torch.Tensor, window: tuple[float, float]) -> torch.Tensor:
    """Map ``window`` linearly to [0, 1] and clip."""
    lo, hi = window
    return ((tensor - lo) / max(hi - lo, 1e-12)).clamp(0.0, 1.0)


def equalise_histogram(tensor: torch.Tensor, bins: int = _EQUALISATION_BINS) -> torch.Tensor:
    """Histogram equalisation of a [0, 1] tensor: each value replaced by its cumulative frequency (in [0, 1])."""
    histogram = torch.histc(tensor, bins=bins, min=0.0, max=1.0)
    cdf = torch.cumsum(histogram, 0)
    cdf = (cdf - cdf[0]) / max(float(cdf[-1] - cdf[0]), 1.0)
    index = (tensor * (bins - 1)).round().long().clamp(0, bins - 1)
    return cdf[index]


def image_tensor(image: sitk.Image, grid: Grid, normalisation: Normalisation,
                 transform: sitk.Transform | None = None) -> torch.Tensor:
    """``image`` sampled on ``grid`` (through ``transform``: grid point → image point) and normalised: a tensor
    ``(1, 1, *S)``."""
    tensor = normalise(image_to_tensor(resample_onto(image, grid, transform)),
                       intensity_window(image, normalisation.low, normalisation.high))
    return equalise_histogram(tensor) if normalisation.histogram_equalisation else tensor


def prepare_pair(
    fixed: sitk.Image,
    moving: sitk.Image,
    grid_spec: GridSpec | None,
    normalisation: Normalisation | None,
    prealign: sitk.Transform | None = None,
    grid: Grid | None = None,
) -> tuple[Grid, torch.Tensor, torch.Tensor]:
    """The model grid placed on ``fixed`` and both images on it, normalised: ``(grid, fixed_t, moving_t)``.

    Args:
        grid_spec: a card's model grid (:func:`metareg.core.geometry.model_grid_on_fixed`); None: the fixed image's own
            grid. Ignored when ``grid`` is given.
        normalisation: a card's normalisation (None: the default percentile window).
        prealign: optional transform (fixed → moving points) the moving image is sampled through.
    """
    if grid is None:
        grid_spec = grid_spec or GridSpec()
        grid = model_grid_on_fixed(fixed, size=grid_spec.size, spacing=grid_spec.spacing)
    normalisation = normalisation or Normalisation()
    return grid, image_tensor(fixed, grid, normalisation), image_tensor(moving, grid, normalisation, prealign)
