"""Intensity preprocessing as a model card states it (``card["normalisation"]``).

Only one normalisation exists so far: percentile scaling to [0, 1]. The window is computed on the *original* image's
voxels (not on the resampled tensor, whose padding would bias it) and then applied to the tensor.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
import torch

DEFAULT_NORMALISATION = {"method": "percentile", "low": 1.0, "high": 99.0}
_MAX_SAMPLES = 1_000_000


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


def check_normalisation(spec: dict) -> dict:
    """Validate a card's normalisation entry and fill defaults."""
    spec = {**DEFAULT_NORMALISATION, **(spec or {})}
    if spec["method"] != "percentile":
        raise ValueError(f"unknown normalisation method {spec['method']!r} (known: 'percentile')")
    if not 0.0 <= spec["low"] < spec["high"] <= 100.0:
        raise ValueError(f"percentile window must satisfy 0 <= low < high <= 100, got {spec['low']}, {spec['high']}")
    return spec
