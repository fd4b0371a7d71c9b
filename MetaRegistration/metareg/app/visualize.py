"""Pictures of a registration: the checkerboard image and the one-page PNG report."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from metareg.core.errors import MetaRegError
from metareg.core.geometry import Grid, resample_onto
from metareg.core.preprocess import intensity_window
from metareg.core.report import RegistrationReport


def _unit_window(image: sitk.Image, reference: sitk.Image) -> sitk.Image:
    """``image`` scaled to [0, 1] by ``reference``'s 1–99 % intensity window, as float32 (clipped)."""
    lo, hi = intensity_window(reference)
    scaled = (sitk.Cast(image, sitk.sitkFloat32) - lo) / max(hi - lo, 1e-12)
    return sitk.Clamp(scaled, sitk.sitkFloat32, 0.0, 1.0)


def checkerboard(fixed: sitk.Image, warped: sitk.Image, squares: int = 8) -> sitk.Image:
    """Alternating squares of ``fixed`` and ``warped`` on the fixed grid, each scaled to [0, 1] (float32).

    ``squares`` is the number of squares along every axis. ``warped`` must be on the fixed grid.
    """
    if not Grid.from_image(fixed).same_as(Grid.from_image(warped)):
        raise ValueError("the checkerboard needs the warped image on the fixed image's grid")
    pattern = [int(squares)] * fixed.GetDimension()
    return sitk.CheckerBoard(_unit_window(fixed, fixed), _unit_window(warped, warped), pattern)


def _middle_slice(image: sitk.Image) -> np.ndarray:
    """A 2D array to show (``origin="upper"``): the image in 2D, its middle slice along index k in 3D.

    Oriented as Slicer shows an axial slice: anterior at the top, the patient's right on the screen's left (index
    axes flipped according to the sign of their dominant LPS component).
    """
    array = sitk.GetArrayFromImage(image)
    plane = array[array.shape[0] // 2] if image.GetDimension() == 3 else array
    dim = image.GetDimension()
    direction = np.asarray(image.GetDirection()).reshape(dim, dim)
    if direction[1, 1] < 0:  # index j runs toward anterior (−y in LPS): put its end at the top
        plane = plane[::-1]
    if direction[0, 0] < 0:  # index i runs toward the patient's right (−x in LPS): put its end on the left
        plane = plane[:, ::-1]
    return plane


def render_report_png(
    path: str | Path,
    fixed: sitk.Image,
    moving: sitk.Image,
    warped: sitk.Image,
    jacobian: sitk.Image,
    report: RegistrationReport,
    title: str = "MetaRegistration",
    note: str = "",
) -> None:
    """Write a one-page PNG: fixed, moving, warped, checkerboard, difference and Jacobian panels, and the report's
    text (:meth:`RegistrationReport.summary_lines`), with ``note`` below it.

    3D images are shown at the middle slice of the fixed grid (last index axis). The moving image is shown resampled
    onto the fixed grid without any transform (what "before" means in the numbers).

    Needs matplotlib (a :class:`MetaRegError` naming it otherwise); matplotlib's backend is left as it is.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.colors import TwoSlopeNorm
        from matplotlib.figure import Figure
    except ImportError as error:
        raise MetaRegError("the PNG report needs matplotlib, which is not installed "
                           "(pip install matplotlib; registering itself needs no matplotlib)") from error

    grid = Grid.from_image(fixed)
    moving_on_fixed = resample_onto(moving, grid)
    fixed_u = _middle_slice(_unit_window(fixed, fixed))
    moving_u = _middle_slice(_unit_window(moving_on_fixed, moving))
    warped_u = _middle_slice(_unit_window(warped, moving))
    board = _middle_slice(checkerboard(fixed, warped))
    jac = _middle_slice(jacobian)
    # pixel aspect from the spacing of the two shown index axes (rows = j, columns = i)
    aspect = grid.spacing[1] / grid.spacing[0]

    # a Figure with its own Agg canvas, not pyplot: matplotlib's backend (Slicer's, in Slicer) stays as it is
    fig = Figure(figsize=(16, 8.6))
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 4)
    panels = [
        (fixed_u, "Fixed", "gray", None),
        (moving_u, "Moving (before)", "gray", None),
        (warped_u, "Warped moving", "gray", None),
        (board, "Checkerboard fixed / warped", "gray", None),
        (fixed_u - moving_u, "Fixed − moving (before)", "RdBu_r", (-1, 1)),
        (fixed_u - warped_u, "Fixed − warped (after)", "RdBu_r", (-1, 1)),
    ]
    for ax, (data, name, cmap, limits) in zip(axes.flat, panels):
        vmin, vmax = limits or (0, 1)
        ax.imshow(data, cmap=cmap, vmin=vmin, vmax=vmax, origin="upper", aspect=aspect, interpolation="nearest")
        ax.set_title(name)
        ax.axis("off")
    ax = axes.flat[6]
    low, high = min(float(np.min(jac)), 0.99), max(float(np.max(jac)), 1.01)
    shown = ax.imshow(jac, cmap="RdBu_r", norm=TwoSlopeNorm(vcenter=1.0, vmin=low, vmax=high), origin="upper",
                      aspect=aspect, interpolation="nearest")
    folds = np.ma.masked_where(jac > 0, np.ones_like(jac))
    ax.imshow(folds, cmap="autumn", origin="upper", aspect=aspect, interpolation="nearest")
    ax.set_title("Jacobian determinant (yellow: folding)")
    ax.axis("off")
    fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04)
    ax = axes.flat[7]
    ax.axis("off")
    method, *measures = report.summary_lines()
    text = "\n".join(textwrap.wrap(method, 52) + measures)
    if note:
        text += "\n\n" + "\n".join(textwrap.wrap(note, 52))
    ax.text(0.0, 1.0, text, va="top", ha="left", fontsize=9.5, family="monospace", transform=ax.transAxes)
    fig.suptitle(title, fontsize=14)
    fig.tight_layout()
    fig.savefig(str(path), dpi=90)
