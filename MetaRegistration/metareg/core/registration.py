"""Register one pair: the pipeline behind ``metareg register``, the Slicer module and the benchmarks.

fixed, moving (SimpleITK, any geometry)
  → optional affine pre-alignment (SimpleITK, fixed → moving points)
  → both resampled onto the model grid placed on the fixed image, intensities normalised as the card says
  → voxel displacement from the network (optionally after K test-time adaptation steps on this pair, then optionally
    refined by N steps of the iterative method started from it) or from the iterative method alone
  → the exported field on the fixed image's own grid (:func:`metareg.core.geometry.network_displacement_to_field`)
  → the original moving image warped through it, metrics, and a JSON-able report.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Union

import numpy as np
import SimpleITK as sitk
import torch

from metareg.core import memory, metrics
from metareg.core.adaptation import adapt_network
from metareg.core.card import MAX_REFINE_STEPS
from metareg.core.checks import check_float, check_int
from metareg.core.device import describe_device, resolve_device
from metareg.core.errors import (
    Cancelled,
    InputError,
    ParameterError,
    RegistrationWarning,
)
from metareg.core.geometry import (
    Grid,
    field_to_transform,
    map_points,
    model_grid_on_fixed,
    network_displacement_to_field,
    regrid_displacement,
    resample_onto,
    warp_image,
)
from metareg.core.imageio import check_image
from metareg.core.iterative import IterativeConfig, register_iterative
from metareg.core.landmarks import Landmarks, match_landmarks
from metareg.core.losses import LossConfig
from metareg.core.modelio import LoadedModel
from metareg.core.prealign import affine_prealign
from metareg.core.preprocess import prepare_pair
from metareg.core.report import RegistrationReport

ProgressCallback = Callable[[float, str], None]

#: Fewest voxels per axis an image needs to be registered (smaller ones crash the pyramid's smoothing kernels or
#: leave no voxel inside both images: measured on random 2D and 3D images of 2-8 voxels per axis, 6 was the first
#: size every method ran; 8 leaves a margin).
MIN_REGISTRATION_SIZE = 8
#: Most test-time adaptation steps :func:`register` accepts (the zoo's cards suggest 10).
MAX_ADAPT_STEPS = 10_000

#: The iterative method works on the fixed image's own grid, coarsened isotropically when it has more voxels than this.
ITERATIVE_MAX_VOXELS = {2: 512 * 512, 3: 128**3}
#: Refinement's two levels on the iterative method's grid: (shrink factor, B-spline control spacing in that level's
#: voxels); the first gets :data:`REFINE_FIRST_LEVEL_SHARE` of the steps, the second the rest. Chosen on
#: brain-mr-3d-test pairs 0-3 (brain-mr-3d-reptile, 30 steps) over dense per-voxel steps at half resolution, which
#: left a larger TRE; what the refinement gives each zoo model is in its card's metrics
#: (``benchmarks/results/zoo-*.json``).
REFINE_LEVELS = ((2, 2), (1, 4))
REFINE_FIRST_LEVEL_SHARE = 2 / 3


@dataclass
class RegistrationResult:
    """What a registration produces.

    Attributes:
        field: displacement field, ``sitkVectorFloat64`` on the fixed image's grid, LPS mm, fixed x ↦ moving x + d(x).
        warped: the original moving image resampled through ``field`` onto the fixed grid (float32).
        jacobian: determinant of the Jacobian of ``x ↦ x + d(x)`` on the fixed grid.
        report: what ran and what it measured (metrics, TRE, timings, settings); ``report.to_json()`` writes it.
        loss_curve: loss per optimisation step: the iterative method's, or test-time adaptation's followed by
            refinement's (on their own grids); empty for a network alone.
        prealign: the affine pre-alignment (fixed → moving points) when one was run; already inside ``field``.
        warped_labels: the moving label map warped onto the fixed grid (nearest neighbour), when labels were given.
    """

    field: sitk.Image
    warped: sitk.Image
    jacobian: sitk.Image
    report: RegistrationReport
    loss_curve: list[float] = dataclasses.field(default_factory=list)
    prealign: sitk.Transform | None = None
    warped_labels: sitk.Image | None = None

    @property
    def transform(self) -> sitk.DisplacementFieldTransform:
        """The field as an ITK transform (fixed → moving points); write it with ``sitk.WriteTransform``."""
        return field_to_transform(self.field)


class _Stages:
    """Wall-clock seconds per stage, and progress over the whole run."""

    def __init__(self, progress: ProgressCallback | None, weights: dict[str, float]):
        self.seconds: dict[str, float] = {}
        self.progress = progress
        total = sum(weights.values())
        self.spans: dict[str, tuple[float, float]] = {}
        start = 0.0
        for name, weight in weights.items():
            self.spans[name] = (start, start + weight / total)
            start += weight / total

    def report(self, name: str, fraction: float, message: str) -> None:
        if self.progress is not None:
            lo, hi = self.spans.get(name, (0.0, 1.0))
            self.progress(lo + (hi - lo) * min(max(fraction, 0.0), 1.0), message)

    @contextmanager
    def stage(self, name: str, message: str) -> Iterator[Callable[[float, str], None]]:
        self.report(name, 0.0, message)
        start = time.perf_counter()
        yield lambda fraction, text: self.report(name, fraction, text)
        self.seconds[name] = round(time.perf_counter() - start, 4)
        self.report(name, 1.0, message)


#: Seconds per voxel of the cost model behind the progress bar (:func:`stage_seconds`), measured on the 3D sample
#: brain (1.05 M voxels, CPU, 2 threads): network inference 0.3 s on 129 k voxels; an iterative or refinement step
#: 2.5e-7 s per voxel of its level; affine pre-alignment about 2 s; resampling, field, warp and metrics about 0.3 s per
#: million voxels each. Only the ratios matter: they spread the bar (and so its ETA) over the stages.
SECONDS_PER_VOXEL = {"inference": 2.3e-6, "adaptation_step": 7e-6, "iterative_step": 2.5e-7, "pass": 3e-7}


def stage_seconds(fixed: sitk.Image, model: LoadedModel | None, adapt_steps: int, refine_steps: int, affine: bool,
                  iterative_config: IterativeConfig) -> dict[str, float]:
    """Estimated seconds of each stage of :func:`register` (its progress weights): test-time adaptation in proportion
    to its steps on the model grid, refinement and the iterative method to their steps on each level's voxels."""
    dim = fixed.GetDimension()
    fixed_voxels = float(np.prod(fixed.GetSize()))
    work_voxels = float(np.prod(iterative_grid(fixed).size))

    def iterative(config: IterativeConfig) -> float:
        return sum(steps * work_voxels / factor**dim for steps, factor in zip(config.iterations, config.shrink_factors)
                   ) * SECONDS_PER_VOXEL["iterative_step"]

    per_pass = fixed_voxels * SECONDS_PER_VOXEL["pass"]
    weights = {"prealign": 2.0 + per_pass if affine else 0.0, "preprocess": per_pass}
    if model is not None:
        model_voxels = float(np.prod(model.card.grid.size)) if model.card.grid.size else fixed_voxels
        weights["adaptation"] = adapt_steps * model_voxels * SECONDS_PER_VOXEL["adaptation_step"]
        weights["registration"] = model_voxels * SECONDS_PER_VOXEL["inference"]
        weights["refinement"] = iterative(refinement_config(refine_steps, model.card.loss)) if refine_steps else 0.0
    else:
        weights.update(adaptation=0.0, registration=iterative(iterative_config), refinement=0.0)
    weights.update(field=per_pass, warp=per_pass, metrics=3 * per_pass)
    return weights


def iterative_grid(fixed: sitk.Image, max_voxels: int | None = None) -> Grid:
    """The grid of the iterative method: the fixed image's grid, coarsened isotropically above ``max_voxels``."""
    dim = fixed.GetDimension()
    max_voxels = max_voxels or ITERATIVE_MAX_VOXELS[dim]
    size = np.asarray(fixed.GetSize(), dtype=np.float64)
    if size.prod() <= max_voxels:
        return Grid.from_image(fixed)
    factor = (size.prod() / max_voxels) ** (1.0 / dim)
    return model_grid_on_fixed(fixed, size=[max(2, int(round(n / factor))) for n in size])


def refinement_config(steps: int, loss: LossConfig, regulariser_weight: float | None = None) -> IterativeConfig:
    """The iterative method as it refines a network's displacement: ``steps`` Adam steps in the levels of
    :data:`REFINE_LEVELS` (two thirds at half resolution with B-spline control points every 2 voxels, the rest at full
    resolution every 4 voxels; moving image supersampled), minimising the model's own loss (similarity and regulariser
    as on its card), with ``regulariser_weight`` instead of the loss's when given (a card's
    ``refinement.regulariser_weight``; the MI model's has one: with MI's noisier gradients, weight 1 let the refined
    field fold)."""
    if regulariser_weight is not None:
        loss = LossConfig(**{**loss.to_dict(), "regulariser_weight": float(regulariser_weight)})
    steps = int(steps)
    first = int(round(steps * REFINE_FIRST_LEVEL_SHARE))
    return IterativeConfig(shrink_factors=tuple(level[0] for level in REFINE_LEVELS),
                           iterations=(first, steps - first), loss=loss,
                           control_spacing=tuple(level[1] for level in REFINE_LEVELS), supersample=True)


@dataclass(frozen=True)
class NetworkMethod:
    """Registration by a network: a loaded model, optionally adapted to the pair and its field refined.

    Pass it to :func:`register` as ``method``; the iterative method is configured by an :class:`IterativeConfig`
    instead. Checked when made (errors name the parameter).

    Attributes:
        model: a loaded model (:func:`metareg.core.modelio.load_model`); it is never changed.
        adapt_steps: test-time adaptation steps on the pair (Adam on a copy of the network).
        adapt_learning_rate: Adam step size of the adaptation; None: the card's (``adaptation.learning_rate``). Only
            with adaptation steps.
        refine_steps: after the network, this many steps of the iterative method on the field, started from the
            network's displacement (:func:`refinement_config`); None: as the card says (``refinement.steps``). The
            refined field is not diffeomorphic by construction; the report's folding fraction says whether it folds.
    """

    model: LoadedModel
    adapt_steps: int = 0
    adapt_learning_rate: float | None = None
    refine_steps: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.model, LoadedModel):
            raise ParameterError("model",
                                 f"must be a loaded model (metareg.load_model), got {type(self.model).__name__}")
        object.__setattr__(self, "adapt_steps", check_int(self.adapt_steps, "adapt_steps", 0, MAX_ADAPT_STEPS))
        if self.adapt_learning_rate is not None:
            rate = check_float(self.adapt_learning_rate, "adapt_learning_rate", maximum=1.0, positive=True)
            object.__setattr__(self, "adapt_learning_rate", rate)
            if not self.adapt_steps:
                raise ParameterError("adapt_learning_rate", "is the step size of test-time adaptation, which is off",
                                     "give adaptation steps too, or no learning rate")
        if self.refine_steps is not None:
            object.__setattr__(self, "refine_steps", check_int(self.refine_steps, "refine_steps", 0, MAX_REFINE_STEPS))

    @property
    def learning_rate(self) -> float:
        """The adaptation's step size: the one given, else the card's."""
        return self.adapt_learning_rate if self.adapt_learning_rate is not None else \
            self.model.card.adaptation.learning_rate

    @property
    def refinement_steps(self) -> int:
        """The refinement steps that run: the ones given, else the card's."""
        return self.refine_steps if self.refine_steps is not None else self.model.card.refinement.steps


Method = Union[NetworkMethod, IterativeConfig]


def register(
    fixed: sitk.Image,
    moving: sitk.Image,
    method: Method | None = None,
    *,
    affine: bool | None = None,
    device: str = "auto",
    fixed_landmarks: Landmarks | None = None,
    moving_landmarks: Landmarks | None = None,
    fixed_labels: sitk.Image | None = None,
    moving_labels: sitk.Image | None = None,
    progress: ProgressCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> RegistrationResult:
    """Register ``moving`` to ``fixed`` with a network or the iterative method.

    Args:
        fixed, moving: images of the same dimension (2D or 3D), any spacing, origin and direction. Not modified.
        method: a :class:`NetworkMethod` (a model, with its adaptation and refinement), or an :class:`IterativeConfig`
            for the iterative method; None: the iterative method with its defaults.
        affine: run a classical affine pre-alignment first and compose it into the field. None (default): as the
            model's card says (``"prealign": "affine"`` for models trained on pre-aligned pairs), off for the
            iterative method.
        device: ``auto``, ``cpu``, ``cuda`` or ``mps``.
        fixed_landmarks, moving_landmarks: optional, matched by label, for TRE before/after (mm).
        fixed_labels, moving_labels: optional label maps (integer images on each image's own grid) for Dice, HD95 and
            mean surface distance per label, before and after; the moving labels are warped by nearest neighbour.
        progress: called with (fraction of the whole run in [0, 1], message).
        should_stop: polled often; when it returns True the run raises :class:`Cancelled`.

    Example::

        model = load_model("brain-mr-3d-reptile")
        result = register(fixed, moving, NetworkMethod(model, adapt_steps=5), fixed_landmarks=fl, moving_landmarks=ml)
        print(result.report.summary_line())
    """
    dim, affine = _check_arguments(fixed, moving, method, affine, fixed_landmarks, moving_landmarks, fixed_labels,
                                   moving_labels)
    model: LoadedModel | None = None
    iterative_config: IterativeConfig | None = None
    adapt_steps, adapt_learning_rate, refine_steps = 0, 0.0, 0
    if isinstance(method, NetworkMethod):
        model = method.model
        adapt_steps, adapt_learning_rate = method.adapt_steps, method.learning_rate
        refine_steps = method.refinement_steps
    else:
        iterative_config = method or IterativeConfig()
    if fixed_labels is not None and not Grid.from_image(fixed_labels).same_as(Grid.from_image(fixed)):
        fixed_labels = resample_onto(fixed_labels, Grid.from_image(fixed), interpolator=sitk.sitkNearestNeighbor,
                                     pixel_type=fixed_labels.GetPixelID())
    matched = None
    if fixed_landmarks is not None and moving_landmarks is not None:
        matched = match_landmarks(fixed_landmarks, moving_landmarks, "fixed_landmarks", "moving_landmarks")
    torch_device = resolve_device(device)
    usual_work_grid = iterative_grid(fixed)
    memory_plan = memory.plan(dim, int(np.prod(fixed.GetSize())), int(np.prod(usual_work_grid.size)),
                              uses_work_grid=model is None or refine_steps > 0, device=torch_device)
    work_grid = iterative_grid(fixed, memory_plan.work_max_voxels) if memory_plan.work_max_voxels else usual_work_grid
    doubts = input_warnings(fixed, moving, fixed_landmarks, moving_landmarks, affine)
    if memory_plan.note:
        doubts.append(memory_plan.note)
    for doubt in doubts:
        warnings.warn(doubt, RegistrationWarning, stacklevel=2)
    started = time.perf_counter()
    stages = _Stages(progress, stage_seconds(fixed, model, adapt_steps, refine_steps, affine,
                                             iterative_config or IterativeConfig()))
    loss_curve: list[float] = []

    prealign = None
    if affine:
        with stages.stage("prealign", "affine pre-alignment") as stage_progress:
            prealign = affine_prealign(fixed, moving, progress=stage_progress, should_stop=should_stop)

    with stages.stage("preprocess", "resampling onto the model grid"):
        if model is not None:
            grid, fixed_t, moving_t = prepare_pair(fixed, moving, model.card.grid, model.card.normalisation, prealign)
        else:
            grid, fixed_t, moving_t = prepare_pair(fixed, moving, None, None, prealign, grid=work_grid)
        fixed_t, moving_t = fixed_t.to(torch_device), moving_t.to(torch_device)

    field_grid = grid  # the grid disp_vox lives on
    if model is not None:
        network = model.network.to(torch_device)
        loss_config = model.card.loss
        if adapt_steps:
            with stages.stage("adaptation", "test-time adaptation") as stage_progress:
                network, loss_curve = adapt_network(
                    network, lambda step: [(fixed_t, moving_t)], loss_config, adapt_steps, adapt_learning_rate,
                    progress=stage_progress, should_stop=should_stop,
                )
        with stages.stage("registration", "network inference"), torch.no_grad():
            if should_stop is not None and should_stop():
                raise Cancelled("registration cancelled")
            disp_vox = network(fixed=fixed_t, moving=moving_t)
        if refine_steps:
            with stages.stage("refinement", "refining the field") as stage_progress:
                refine_grid = work_grid
                _, fixed_r, moving_r = prepare_pair(fixed, moving, None, model.card.normalisation, prealign,
                                                    grid=refine_grid)
                initial = regrid_displacement(disp_vox.cpu(), grid, refine_grid).to(torch_device)
                disp_vox, refine_curve = register_iterative(
                    fixed_r.to(torch_device), moving_r.to(torch_device),
                    refinement_config(refine_steps, loss_config, model.card.refinement.regulariser_weight),
                    progress=stage_progress, should_stop=should_stop, initial=initial,
                )
                loss_curve = loss_curve + refine_curve
                field_grid = refine_grid
    else:
        assert iterative_config is not None
        with stages.stage("registration", "iterative optimisation") as stage_progress:
            disp_vox, loss_curve = register_iterative(fixed_t, moving_t, iterative_config, progress=stage_progress,
                                                      should_stop=should_stop)

    with stages.stage("field", "physical displacement field"):
        displacement = network_displacement_to_field(disp_vox.cpu(), field_grid, fixed, prealign)
    with stages.stage("warp", "warping the moving image"):
        warped = warp_image(moving, displacement)
    with stages.stage("metrics", "metrics"):
        moving_on_fixed = resample_onto(moving, Grid.from_image(fixed))
        overlap = overlap_mask(moving, displacement)
        jacobian = metrics.jacobian_determinant(displacement)
        report = RegistrationReport(
            method="network" if model is not None else "iterative",
            model=model.name if model is not None else None,
            adapt_steps=int(adapt_steps),
            refine_steps=int(refine_steps),
            affine=bool(affine),
            device=describe_device(torch_device),
            dimension=dim,
            fixed_grid=_grid_dict(Grid.from_image(fixed)),
            model_grid=_grid_dict(grid),
            refine_grid=_grid_dict(field_grid) if refine_steps else None,
            # on the region both mappings see inside the moving image; None when there is none (images apart)
            ncc_before=metrics.ncc(sitk.GetArrayViewFromImage(fixed), sitk.GetArrayViewFromImage(moving_on_fixed),
                                   overlap) if overlap.any() else None,
            ncc_after=metrics.ncc(sitk.GetArrayViewFromImage(fixed), sitk.GetArrayViewFromImage(warped), overlap)
            if overlap.any() else None,
            ncc_region_fraction=float(overlap.mean()),
            warnings=doubts,
            memory=memory_plan.to_dict(),
            iterative=iterative_config.to_dict() if iterative_config is not None else None,
            **metrics.field_summary(displacement, jacobian=jacobian),
        )
        if matched is not None:
            report.tre_before, report.tre_after, report.landmarks = landmark_report(displacement, *matched, dim=dim)
        warped_labels = None
        if fixed_labels is not None and moving_labels is not None:
            warped_labels = warp_image(moving_labels, displacement, sitk.sitkNearestNeighbor)
            report.labels = label_report(fixed_labels, moving_labels, warped_labels)
    stages.seconds["total"] = round(time.perf_counter() - started, 4)
    report.seconds = stages.seconds
    report.loss_curve = loss_curve
    return RegistrationResult(displacement, warped, jacobian, report, loss_curve, prealign, warped_labels)


def _check_arguments(fixed, moving, method, affine, fixed_landmarks, moving_landmarks, fixed_labels, moving_labels):
    """:func:`register`'s checks of its arguments, before any work; errors name the parameters. Returns the images'
    dimension and the pre-alignment with the card's default filled in."""
    check_image(fixed, "fixed", MIN_REGISTRATION_SIZE)
    check_image(moving, "moving", MIN_REGISTRATION_SIZE)
    dim = fixed.GetDimension()
    if moving.GetDimension() != dim:
        raise InputError("fixed and moving", f"are {dim}D and {moving.GetDimension()}D",
                         "register a 2D image with a 2D image and a 3D image with a 3D image")
    if method is not None and not isinstance(method, (NetworkMethod, IterativeConfig)):
        hint = " (wrap a loaded model as NetworkMethod(model))" if isinstance(method, LoadedModel) else ""
        raise ParameterError("method", f"must be a NetworkMethod or an IterativeConfig, got {type(method).__name__}"
                             + hint)
    model = method.model if isinstance(method, NetworkMethod) else None
    if model is not None and model.card.dim != dim:
        raise InputError("model", f"{model.name} is a {model.card.dim}-D model but the images are {dim}-D",
                         "pick a model of the images' dimension (`metareg models`) or the iterative method")
    if affine is None:
        affine = model is not None and model.card.affine
    elif not isinstance(affine, bool):
        raise ParameterError("affine", f"must be True, False or None, got {affine!r}")
    for name, points in (("fixed_landmarks", fixed_landmarks), ("moving_landmarks", moving_landmarks)):
        if points is not None and not isinstance(points, Landmarks):
            raise ParameterError(name, f"must be Landmarks (metareg.read_landmarks), got {type(points).__name__}")
    if (fixed_landmarks is None) != (moving_landmarks is None):
        raise InputError("fixed_landmarks and moving_landmarks", "give both or neither")
    if (fixed_labels is None) != (moving_labels is None):
        raise InputError("fixed_labels and moving_labels", "give both label maps or neither")
    for name, labels in (("fixed_labels", fixed_labels), ("moving_labels", moving_labels)):
        if labels is None:
            continue
        if not isinstance(labels, sitk.Image):
            raise ParameterError(name, f"must be a SimpleITK image, got {type(labels).__name__}")
        if labels.GetDimension() != dim:
            raise InputError(name, f"is {labels.GetDimension()}-D but the images are {dim}-D")
        if labels.GetNumberOfComponentsPerPixel() != 1:
            raise InputError(name, f"has {labels.GetNumberOfComponentsPerPixel()} values per voxel",
                             "give a label map: one integer label per voxel")
    return dim, affine


def _domain(grid: Grid) -> tuple[np.ndarray, np.ndarray]:
    """The axis-aligned LPS box (low and high corners, mm) around a grid's voxels, voxel edges included."""
    corners = np.array(np.meshgrid(*[(-0.5, n - 0.5) for n in grid.size], indexing="ij")).reshape(grid.dim, -1).T
    points = grid.index_to_physical(corners)
    return points.min(0), points.max(0)


def _outside(grid: Grid, points_lps: np.ndarray) -> np.ndarray:
    """Which points (LPS mm, (N, 3)) lie outside the grid's voxels (beyond half a voxel from the edge ones)."""
    index = grid.physical_to_index(points_lps[:, : grid.dim])
    return np.any((index < -0.5) | (index > np.asarray(grid.size) - 0.5), axis=1)


def input_warnings(fixed: sitk.Image, moving: sitk.Image, fixed_landmarks: Landmarks | None = None,
                   moving_landmarks: Landmarks | None = None, affine: bool = False) -> list[str]:
    """What about the inputs makes a result doubtful: images whose physical extents do not overlap (or hardly: less
    than 10 % of the fixed image's box), and landmarks outside their own image. One sentence each."""
    found = []
    fixed_grid, moving_grid = Grid.from_image(fixed), Grid.from_image(moving)
    (f_low, f_high), (m_low, m_high) = _domain(fixed_grid), _domain(moving_grid)
    shared = np.clip(np.minimum(f_high, m_high) - np.maximum(f_low, m_low), 0, None).prod()
    covered = float(shared / np.prod(f_high - f_low))
    if covered < 0.1:
        gap = float(np.linalg.norm((f_low + f_high) / 2 - (m_low + m_high) / 2))
        how = "do not overlap" if covered == 0 else f"overlap in only {100 * covered:.1f} % of the fixed image's extent"
        found.append(f"fixed and moving images {how} in physical space (their centres are {gap:.0f} mm apart): check "
                     "their origins and orientations" + ("" if affine else ", or add the affine pre-alignment"))
    for name, points, grid in (("fixed_landmarks", fixed_landmarks, fixed_grid),
                               ("moving_landmarks", moving_landmarks, moving_grid)):
        if points is None:
            continue
        outside = _outside(grid, points.points_lps)
        if outside.any():
            labels = [label for label, out in zip(points.labels, outside) if out]
            shown = ", ".join(labels[:5]) + (f" and {len(labels) - 5} more" if len(labels) > 5 else "")
            image = name.split("_")[0]
            found.append(f"{name}: {len(labels)} of {len(points.labels)} points lie outside the {image} image "
                         f"({shown}): check their coordinate system (LPS or RAS) and that they belong to this image")
    return found


def overlap_mask(moving: sitk.Image, displacement: sitk.Image) -> np.ndarray:
    """Fixed-grid voxels that see the inside of the moving image both without a transform and through the field.

    NCC before and after is measured on this common region, so that neither number counts the padding outside
    the moving image (which would favour whichever mapping stays inside it).
    """
    inside = sitk.Image(moving.GetSize(), sitk.sitkUInt8) + 1
    inside.CopyInformation(moving)
    fixed_grid = Grid.from_image(displacement)
    before = resample_onto(inside, fixed_grid, interpolator=sitk.sitkNearestNeighbor, pixel_type=sitk.sitkUInt8)
    after = warp_image(inside, displacement, sitk.sitkNearestNeighbor)
    return (sitk.GetArrayFromImage(before) > 0) & (sitk.GetArrayFromImage(after) > 0)


def landmark_report(
    displacement: sitk.Image, labels: list[str], fixed_points: np.ndarray, moving_points: np.ndarray, dim: int
) -> tuple[dict, dict, list[dict]]:
    """TRE (mm) before (identity) and after (fixed landmark mapped through the field): the summaries before and
    after (:func:`metareg.core.metrics.tre_summary`) and the rows per landmark, as :class:`RegistrationReport` holds
    them."""
    p = fixed_points[:, :dim]
    q = moving_points[:, :dim]
    before = metrics.landmark_distances_mm(p, q)
    after = metrics.landmark_distances_mm(map_points(displacement, p), q)
    rows = [{"label": label, "tre_before_mm": float(b), "tre_after_mm": float(a)}
            for label, b, a in zip(labels, before, after)]
    return metrics.tre_summary(before), metrics.tre_summary(after), rows


def label_report(fixed_labels: sitk.Image, moving_labels: sitk.Image, warped_labels: sitk.Image) -> dict:
    """Per label: Dice before (moving labels on the fixed grid, no transform) and after, HD95 and mean surface
    distance (mm) after. Labels are the non-zero values present in either map."""
    before_labels = resample_onto(moving_labels, Grid.from_image(fixed_labels), interpolator=sitk.sitkNearestNeighbor,
                                  pixel_type=moving_labels.GetPixelID())
    fixed_int = sitk.Cast(fixed_labels, sitk.sitkInt32)
    before_int = sitk.Cast(before_labels, sitk.sitkInt32)
    after_int = sitk.Cast(warped_labels, sitk.sitkInt32)
    dice_before = metrics.dice(fixed_int, before_int)
    dice_after = metrics.dice(fixed_int, after_int)
    rows = {}
    for label in sorted(set(dice_before) | set(dice_after)):
        rows[str(label)] = {
            "dice_before": dice_before.get(label),
            "dice_after": dice_after.get(label),
            "hd95_after_mm": metrics.hausdorff95_mm(fixed_int, after_int, label),
            "mean_surface_distance_after_mm": metrics.mean_surface_distance_mm(fixed_int, after_int, label),
        }
    def measured(key: str) -> list[float]:
        values = [row[key] for row in rows.values()]
        return [float(value) for value in values if value is not None and np.isfinite(value)]

    finite, before = measured("dice_after"), measured("dice_before")
    return {"per_label": rows, "mean_dice_before": float(np.mean(before)) if before else None,
            "mean_dice_after": float(np.mean(finite)) if finite else None}


def _grid_dict(grid: Grid) -> dict:
    return {"size": list(grid.size), "spacing_mm": [round(s, 6) for s in grid.spacing]}
