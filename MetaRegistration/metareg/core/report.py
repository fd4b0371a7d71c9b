"""The report of one registration: what ran, on which grids, how well it did, and how long each stage took.

:class:`RegistrationReport` is what :func:`metareg.core.registration.register` returns in its result, what
``metareg register --report`` writes (:meth:`RegistrationReport.to_json`), what the Slicer module keeps on its
transform node, and the one place the one-line summary (:meth:`RegistrationReport.summary_line`) and the report
figure's text (:meth:`RegistrationReport.summary_lines`) are written. Distances are in mm, NCC is on the region both
mappings see inside the moving image, and seconds are wall-clock per stage.

This module imports NumPy only (no image or tensor library), so a GUI process can read reports cheaply.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

METHODS = ("network", "iterative")


def json_safe(value: Any) -> Any:
    """``value`` with tuples as lists, NumPy scalars as Python numbers, and non-finite floats as None (JSON has no
    NaN or infinity)."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(float(value)) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


@dataclass
class RegistrationReport:
    """What one registration did and measured.

    Attributes:
        method: ``"network"`` or ``"iterative"``.
        model: the model's name (network), else None.
        adapt_steps, refine_steps: test-time adaptation and refinement steps run (0 for the iterative method).
        affine: whether the affine pre-alignment ran (it is inside the field).
        device: the device, in words (``cpu (2 threads)``).
        dimension: 2 or 3.
        fixed_grid, model_grid, refine_grid: ``{"size": [...], "spacing_mm": [...]}`` of the fixed image, of the grid
            the network (or the iterative method) worked on, and of the refinement's grid (None without refinement).
        ncc_before, ncc_after: normalised cross-correlation of fixed and moving without a transform and through the
            field, on the fixed-grid voxels that see the inside of the moving image both ways; None when there are
            none (the images do not overlap).
        ncc_region_fraction: the fraction of the fixed grid that region covers.
        folding_fraction: fraction of fixed-grid voxels where the Jacobian determinant of ``x ↦ x + d(x)`` is <= 0.
        std_log_jacobian, jacobian_min, jacobian_max: the Jacobian determinant's spread and range.
        max_displacement_mm: the largest displacement, mm.
        warnings: what about the inputs makes the result doubtful, one sentence each.
        memory: the memory plan (:class:`metareg.core.memory.MemoryPlan` as a dict).
        seconds: wall-clock seconds per stage, and ``total``.
        loss_curve: the loss per optimisation step (adaptation, then refinement; or the iterative method's).
        iterative: the iterative method's settings (iterative method only).
        tre_before, tre_after: target registration error (mm) without and with the field, summarised
            (``n``, ``mean``, ``std``, ``median``, ``p90``, ``max``); None without landmarks.
        landmarks: per landmark ``{"label", "tre_before_mm", "tre_after_mm"}``; None without landmarks.
        labels: per label Dice before and after, HD95 and mean surface distance after, and the mean Dice before and
            after (``{"per_label": {...}, "mean_dice_before", "mean_dice_after"}``); None without label maps.
    """

    method: str
    model: Optional[str] = None
    adapt_steps: int = 0
    refine_steps: int = 0
    affine: bool = False
    device: str = ""
    dimension: int = 3
    fixed_grid: dict = field(default_factory=dict)
    model_grid: dict = field(default_factory=dict)
    refine_grid: Optional[dict] = None
    ncc_before: Optional[float] = None
    ncc_after: Optional[float] = None
    ncc_region_fraction: float = 0.0
    warnings: list = field(default_factory=list)
    memory: dict = field(default_factory=dict)
    folding_fraction: float = 0.0
    std_log_jacobian: float = 0.0
    jacobian_min: float = 1.0
    jacobian_max: float = 1.0
    max_displacement_mm: float = 0.0
    iterative: Optional[dict] = None
    tre_before: Optional[dict] = None
    tre_after: Optional[dict] = None
    landmarks: Optional[list] = None
    labels: Optional[dict] = None
    seconds: dict = field(default_factory=dict)
    loss_curve: list = field(default_factory=list)

    #: Fields written only when they hold something (as the report has always been written).
    _OPTIONAL = ("iterative", "tre_before", "tre_after", "landmarks", "labels")

    # ------------------------------------------------------------------------------------------------------------------
    # to and from JSON

    def to_dict(self) -> dict:
        """The report as JSON-able data (non-finite numbers as None); the optional parts only when present."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for name in self._OPTIONAL:
            if data[name] is None:
                del data[name]
        return json_safe(data)

    def to_json(self, indent: Optional[int] = 2) -> str:
        """The report as JSON text (what ``metareg register --report`` writes)."""
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, data: dict) -> "RegistrationReport":
        """A report from :meth:`to_dict`'s data (or a report file read back). Keys this version does not know are
        ignored, so that a report written with extra context (the demo adds the pair's names) reads back."""
        if not isinstance(data, dict) or data.get("method") not in METHODS:
            raise ValueError(f"not a registration report: its method must be one of {', '.join(METHODS)}")
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in known})

    # ------------------------------------------------------------------------------------------------------------------
    # in words

    def method_description(self) -> str:
        """One sentence on what registered the pair."""
        if self.method == "iterative":
            similarity = ((self.iterative or {}).get("loss") or {}).get("similarity", "lncc")
            return ("Method: the built-in iterative method (multi-resolution optimisation of the displacement field, "
                    f"{_SIMILARITY_WORDS.get(similarity, similarity)} + smoothness); no network.")
        prealign = "affine pre-alignment, then " if self.affine else ""
        adapt = f", adapted to this pair for {self.adapt_steps} steps" if self.adapt_steps else ""
        refine = f", then {self.refine_steps} refinement steps on its field" if self.refine_steps else ""
        return f"Method: {prealign}the network {self.model}{adapt}{refine}."

    def summary_line(self) -> str:
        """One line: TRE, NCC, Dice (each before → after, when measured), folding, seconds per stage, device."""
        parts = []
        before, after, labels = self.tre_before, self.tre_after, self.labels or {}
        if before and after:
            parts.append(f"TRE {before['mean']:.2f} → {after['mean']:.2f} mm (mean of {before['n']})")
        parts.append(self._ncc_words())
        if self._has_dice():
            parts.append(f"Dice {labels['mean_dice_before']:.3f} → {labels['mean_dice_after']:.3f}")
        parts.append(f"folding {100 * self.folding_fraction:.3f} %")
        stages = self._stage_words()
        parts.append(f"{self.seconds.get('total', float('nan')):.1f} s" + (f" ({', '.join(stages)})" if stages else ""))
        parts.append(self.device)
        return "; ".join(part for part in parts if part)

    def summary_lines(self) -> list:
        """The report figure's text: the method, then one measure a line, with the TRE's distribution."""
        lines = [self.method_description()]
        if self.affine:
            lines.append("Affine pre-alignment: yes")
        lines.append(f"Device: {self.device}")
        lines.append(self._ncc_words())
        if self.tre_before and self.tre_after:
            before, after = self.tre_before, self.tre_after
            lines.append(f"TRE (mm, {before['n']} landmarks) mean before → after: "
                         f"{before['mean']:.2f} → {after['mean']:.2f}")
            lines.append(f"TRE after: median {after['median']:.2f}, p90 {after['p90']:.2f}, max {after['max']:.2f}")
        if self._has_dice():
            labels = self.labels or {}
            lines.append(f"Mean Dice before → after: {labels['mean_dice_before']:.3f} → "
                         f"{labels['mean_dice_after']:.3f}")
        lines.append(f"Folding (|J| ≤ 0): {100 * self.folding_fraction:.3f} %   "
                     f"std log|J|: {self.std_log_jacobian:.3f}")
        stages = self._stage_words()
        lines.append(f"Seconds: total {self.seconds.get('total', float('nan')):.1f}")
        for start in range(0, len(stages), 4):  # four stages a line, so the text does not run off the figure
            lines.append("  " + ", ".join(stages[start:start + 4]))
        return lines

    def _ncc_words(self) -> str:
        if self.ncc_before is None or self.ncc_after is None:
            return "NCC: the images share no region"
        return f"NCC {self.ncc_before:.3f} → {self.ncc_after:.3f}"

    def _has_dice(self) -> bool:
        labels = self.labels or {}
        return labels.get("mean_dice_after") is not None and labels.get("mean_dice_before") is not None

    def _stage_words(self) -> list:
        """``name seconds`` of each stage that took at least 0.05 s."""
        return [f"{name} {value:.1f}" for name, value in self.seconds.items()
                if name != "total" and value is not None and value >= 0.05]


_SIMILARITY_WORDS = {"lncc": "local NCC", "ncc": "NCC", "mse": "mean squared error", "mi": "mutual information"}
