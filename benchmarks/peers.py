"""Classical and learned peers run on the same pairs as our methods, each returning a field in the project's convention.

Every runner returns ``(field, seconds)`` where ``field`` is a SimpleITK displacement field (``sitkVectorFloat64``,
LPS mm) on the fixed image's grid, fixed point ``x`` ↦ moving point ``x + d(x)`` — what elastix's ``transformix -def``
writes — so TRE is measured the same way for everyone (:func:`metareg.core.geometry.map_points`), and ``seconds`` is the
wall time (``time.perf_counter``) of the registration itself: no reading or writing of the inputs, no conversion of the
result into the field. Each runner uses ``threads`` CPU threads.

- **elastix** (:func:`run_elastix`): Debian's ``elastix`` 5.0.1 (``apt-get install elastix``), an affine stage then a
  B-spline stage, with the parameters elastix's manual recommends as a starting point for deformable registration
  (Mattes mutual information, adaptive stochastic gradient descent, 4 resolutions, final grid spacing 10 mm, 2048 random
  samples).
- **ANTs SyN** (:func:`run_ants_syn`): antspyx's ``ants.registration(type_of_transform="SyN")`` with all its defaults
  (a centre-of-mass translation, an affine stage with Mattes MI, then SyN with Mattes MI, 40/20/0 iterations). Its
  forward transforms (``[warp, affine]``) are composed into one displacement field by ANTs itself
  (``antsApplyTransforms`` with the fixed image as reference, the same call that warps the moving image), so the
  field is exactly the map ANTs uses to pull the moving image onto the fixed grid.
- **SimpleITK B-spline** (:func:`run_sitk_bspline`): a SimpleITK affine stage (:func:`metareg.core.prealign.affine_prealign`:
  Mattes MI, regular-step gradient descent, shrink 4/2/1) and then a cubic B-spline transform with a 10 mm final
  control-point spacing (mesh doubled over three levels, shrink 4/2/1), Mattes MI (32 bins, 10 000 random samples a
  level), L-BFGS (20 iterations a level).
- **SimpleITK demons** (:func:`run_sitk_demons`): the same SimpleITK affine stage, the moving image histogram-matched
  to the fixed one, then fast symmetric-forces demons over three levels (shrink 4/2/1), the displacement field smoothed
  with σ = 2.5 voxels after every iteration.
- **VoxelMorph** (:func:`train_voxelmorph`, :func:`run_voxelmorph`): the ``voxelmorph`` package's own network
  (``voxelmorph.nn.models.VxmPairwise``, PyTorch backend, its default U-Net and 5 scaling-and-squaring steps) and its
  loss (neurite's local NCC, 9-voxel window, + λ · L2 spatial gradient of the velocity, λ = 1), trained by us on the
  model grid, normalisation and pairs our zoo model was trained on.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

COMMON = {
    "FixedInternalImagePixelType": '"float"', "MovingInternalImagePixelType": '"float"',
    "Registration": '"MultiResolutionRegistration"', "Interpolator": '"BSplineInterpolator"',
    "ResampleInterpolator": '"FinalBSplineInterpolator"', "Resampler": '"DefaultResampler"',
    "FixedImagePyramid": '"FixedSmoothingImagePyramid"', "MovingImagePyramid": '"MovingSmoothingImagePyramid"',
    "Optimizer": '"AdaptiveStochasticGradientDescent"', "Metric": '"AdvancedMattesMutualInformation"',
    "NumberOfHistogramBins": "32", "NumberOfResolutions": "4", "ImageSampler": '"RandomCoordinate"',
    "NumberOfSpatialSamples": "2048", "NewSamplesEveryIteration": '"true"', "BSplineInterpolationOrder": "1",
    "FinalBSplineInterpolationOrder": "3", "DefaultPixelValue": "0", "WriteResultImage": '"false"',
    "AutomaticTransformInitialization": '"true"', "AutomaticScalesEstimation": '"true"',
    "HowToCombineTransforms": '"Compose"',
}
AFFINE = {**COMMON, "Transform": '"AffineTransform"', "MaximumNumberOfIterations": "250"}
BSPLINE = {**COMMON, "Transform": '"BSplineTransform"', "MaximumNumberOfIterations": "500",
           "FinalGridSpacingInPhysicalUnits": "10.0", "AutomaticTransformInitialization": '"false"'}


def _parameter_file(path: Path, parameters: dict, dim: int) -> Path:
    lines = [f"({key} {value})" for key, value in {**parameters, "FixedImageDimension": dim,
                                                     "MovingImageDimension": dim}.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def elastix_available() -> bool:
    return shutil.which("elastix") is not None and shutil.which("transformix") is not None


def run_elastix(fixed: sitk.Image, moving: sitk.Image, threads: int = 2,
                iterations: tuple[int, int] | None = None) -> tuple[sitk.Image, float]:
    """Affine + B-spline elastix; the field from ``transformix -def all``; wall seconds of elastix alone.

    ``iterations``: ``(affine, B-spline)`` iterations a resolution instead of the recommended 250 and 500 (smoke tests
    only).
    """
    if not elastix_available():
        raise RuntimeError("elastix is not installed: apt-get install elastix")
    dim = fixed.GetDimension()
    with tempfile.TemporaryDirectory(prefix="metareg-elastix-") as scratch:
        work = Path(scratch)
        sitk.WriteImage(sitk.Cast(fixed, sitk.sitkFloat32), str(work / "fixed.nii.gz"))
        sitk.WriteImage(sitk.Cast(moving, sitk.sitkFloat32), str(work / "moving.nii.gz"))
        affine_parameters, bspline_parameters = dict(AFFINE), dict(BSPLINE)
        if iterations is not None:
            affine_parameters["MaximumNumberOfIterations"] = str(int(iterations[0]))
            bspline_parameters["MaximumNumberOfIterations"] = str(int(iterations[1]))
        affine = _parameter_file(work / "affine.txt", affine_parameters, dim)
        bspline = _parameter_file(work / "bspline.txt", bspline_parameters, dim)
        started = time.perf_counter()
        subprocess.run(["elastix", "-f", str(work / "fixed.nii.gz"), "-m", str(work / "moving.nii.gz"), "-out",
                        str(work), "-p", str(affine), "-p", str(bspline), "-threads", str(threads)],
                       check=True, capture_output=True)
        seconds = time.perf_counter() - started
        subprocess.run(["transformix", "-def", "all", "-out", str(work), "-tp", str(work / "TransformParameters.1.txt"),
                        "-threads", str(threads)], check=True, capture_output=True)
        written = sorted(work.glob("deformationField.*"))
        field = sitk.ReadImage(str([p for p in written if p.suffix in (".nii", ".mhd", ".gz")][0]))
        field = sitk.Cast(field, sitk.sitkVectorFloat64)
        field.CopyInformation(fixed)
        return field, seconds


# ---------------------------------------------------------------------------------------------------------------------
# Shared pieces
# ---------------------------------------------------------------------------------------------------------------------


def _float32(image: sitk.Image) -> sitk.Image:
    return sitk.Cast(image, sitk.sitkFloat32)


def _on_fixed_grid(field: sitk.Image, fixed: sitk.Image, what: str) -> sitk.Image:
    """``field`` as ``sitkVectorFloat64`` carrying the fixed image's geometry (checked, then copied exactly)."""
    if tuple(field.GetSize()) != tuple(fixed.GetSize()):
        raise RuntimeError(f"{what}: field size {field.GetSize()} is not the fixed image's {fixed.GetSize()}")
    for name, a, b in (("origin", field.GetOrigin(), fixed.GetOrigin()),
                       ("spacing", field.GetSpacing(), fixed.GetSpacing()),
                       ("direction", field.GetDirection(), fixed.GetDirection())):
        if not np.allclose(a, b, atol=1e-3):
            raise RuntimeError(f"{what}: field {name} {a} is not the fixed image's {b}")
    field = sitk.Cast(field, sitk.sitkVectorFloat64)
    field.CopyInformation(fixed)
    return field


def _compose_affine(inner: sitk.Image, affine: sitk.Transform) -> sitk.Image:
    """The field of ``x ↦ A(x + u(x))`` on ``inner``'s grid, ``u`` = ``inner`` (LPS mm), ``A`` affine (fixed → moving)."""
    from metareg.core.geometry import Grid, affine_matrix_offset, vector_image

    grid = Grid.from_image(inner)
    matrix, offset = affine_matrix_offset(affine, grid.dim)
    points = grid.physical_points()
    total = (points + sitk.GetArrayFromImage(inner)) @ matrix.T + offset - points
    return vector_image(total, grid)


def _affine_stage(fixed: sitk.Image, moving: sitk.Image) -> tuple[sitk.Transform, sitk.Image]:
    """SimpleITK affine (fixed → moving points, Mattes MI) and the moving image resampled through it onto the fixed grid.

    The deformable SimpleITK peers register ``fixed`` to this resampled image, so their own field ``u`` composes with
    the affine ``A`` as ``x ↦ A(x + u(x))`` without any question of transform order.
    """
    from metareg.core.geometry import Grid, resample_onto
    from metareg.core.prealign import affine_prealign

    affine = affine_prealign(fixed, moving)
    return affine, resample_onto(moving, Grid.from_image(fixed), affine)


# ---------------------------------------------------------------------------------------------------------------------
# ANTs SyN (antspyx)
# ---------------------------------------------------------------------------------------------------------------------


def ants_available() -> bool:
    try:
        import ants  # noqa: F401
    except ImportError:
        return False
    return True


def run_ants_syn(fixed: sitk.Image, moving: sitk.Image, threads: int = 1) -> tuple[sitk.Image, float]:
    """``ants.registration(type_of_transform="SyN")`` with its defaults; wall seconds of that call alone.

    ANTs' forward transforms ``[warp, affine]`` pull the moving image onto the fixed grid: a fixed point ``x`` goes to
    the moving point ``A(W(x))`` (the warp is the last stage found and acts first on the point). Rather than compose
    them ourselves, ANTs' own ``antsApplyTransforms`` writes the composed displacement field on the fixed grid
    (``compose=``), which is exactly our convention (fixed point ↦ moving point, LPS mm).
    """
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(threads)
    import ants

    fixed_a = ants.from_sitk(_float32(fixed))
    moving_a = ants.from_sitk(_float32(moving))
    with tempfile.TemporaryDirectory(prefix="metareg-ants-") as scratch:
        started = time.perf_counter()
        result = ants.registration(fixed=fixed_a, moving=moving_a, type_of_transform="SyN",
                                   outprefix=str(Path(scratch) / "syn_"))
        seconds = time.perf_counter() - started
        field = ants_forward_field(fixed_a, moving_a, result["fwdtransforms"], Path(scratch))
        return _on_fixed_grid(field, fixed, "ANTs SyN"), seconds


def ants_forward_field(fixed_a, moving_a, transforms: list[str], scratch: Path) -> sitk.Image:
    """ANTs' forward transforms (``[warp, affine]``, as ``ants.registration`` returns them) as one displacement field.

    ``antsApplyTransforms`` composes them on the fixed image's grid (``compose=``): the field maps each fixed point to
    the moving point ANTs samples when it warps the moving image, i.e. fixed ↦ moving, LPS mm.
    """
    import ants

    composed = ants.apply_transforms(fixed=fixed_a, moving=moving_a, transformlist=list(transforms),
                                     compose=str(Path(scratch) / "forward_"))
    if composed is None:
        raise RuntimeError("antsApplyTransforms did not write the composed displacement field")
    return sitk.Cast(sitk.ReadImage(composed), sitk.sitkVectorFloat64)


# ---------------------------------------------------------------------------------------------------------------------
# SimpleITK B-spline and demons
# ---------------------------------------------------------------------------------------------------------------------

#: B-spline control-point spacing at the finest level (mm), as elastix's FinalGridSpacingInPhysicalUnits.
BSPLINE_MESH_MM = 10.0
BSPLINE_LEVELS = (4, 2, 1)
#: Random samples of the B-spline stage's metric at each level (all voxels when a level has fewer).
BSPLINE_SAMPLES = 10000
#: L-BFGS iterations of the B-spline stage at each level.
BSPLINE_ITERATIONS = 20
#: Most metric evaluations of one L-BFGS line search (SimpleITK's default is 40).
BSPLINE_LINE_SEARCH = 5
DEMONS_LEVELS = (4, 2, 1)
DEMONS_ITERATIONS = (400, 200, 100)
DEMONS_FIELD_SIGMA_VOX = 2.5
SITK_SEED = 20261122


def run_sitk_bspline(fixed: sitk.Image, moving: sitk.Image, threads: int = 1,
                     mesh_mm: float = BSPLINE_MESH_MM) -> tuple[sitk.Image, float]:
    """SimpleITK affine, then a cubic B-spline transform whose control points end ``mesh_mm`` apart.

    Three levels (shrink 4/2/1, Gaussian smoothing 2/1/0 voxels); the control-point mesh starts at a quarter of the
    final one and is doubled at each level (``SetInitialTransformAsBSpline(scaleFactors=[1, 2, 4])``). Mattes MI
    (32 bins) on 10 000 random samples a level (fixed seed), optimised by L-BFGS (``LBFGS2``, ≤ 20 iterations a level).

    Why these choices: SimpleITK's metric handles a B-spline's derivative densely, so one evaluation costs
    samples × parameters, and its random samples are drawn once a level (elastix draws new ones every iteration), so
    too few samples let the ≈ 36 000 parameters of a 10 mm mesh on a 3D brain fit the sampling noise (measured: 5000
    samples gave up to 2.5 mm of spurious deformation on the known-shift test volume). 10 000 samples, 20 iterations a level and the
    mesh doubling keep a 3D brain near a minute on one thread. L-BFGS-B cannot follow the mesh doubling in
    SimpleITK 2.5 (its bounds array keeps the first level's size), L-BFGS can. Seconds: both stages.
    """
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    fixed_f, moving_f = _float32(fixed), _float32(moving)
    dim = fixed.GetDimension()
    extent_mm = [(n - 1) * s for n, s in zip(fixed.GetSize(), fixed.GetSpacing())]
    final_mesh = [max(1, int(round(e / mesh_mm))) for e in extent_mm]
    coarsest = BSPLINE_LEVELS[0]
    initial_mesh = [max(1, int(math.ceil(n / coarsest))) for n in final_mesh]
    voxels = float(np.prod(fixed.GetSize()))
    fractions = [min(1.0, BSPLINE_SAMPLES / (voxels / shrink**dim)) for shrink in BSPLINE_LEVELS]
    started = time.perf_counter()
    affine, moving_aligned = _affine_stage(fixed_f, moving_f)
    bspline = sitk.BSplineTransformInitializer(fixed_f, initial_mesh, 3)
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentagePerLevel(fractions, SITK_SEED)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsLBFGS2(solutionAccuracy=1e-5, numberOfIterations=BSPLINE_ITERATIONS,
                                deltaConvergenceTolerance=0, lineSearchMaximumEvaluations=BSPLINE_LINE_SEARCH)
    method.SetShrinkFactorsPerLevel(list(BSPLINE_LEVELS))
    method.SetSmoothingSigmasPerLevel([2, 1, 0])
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    method.SetInitialTransformAsBSpline(bspline, inPlace=True, scaleFactors=[1, 2, 4])
    method.Execute(fixed_f, moving_aligned)
    seconds = time.perf_counter() - started
    inner = sitk.TransformToDisplacementField(bspline, sitk.sitkVectorFloat64, fixed.GetSize(), fixed.GetOrigin(),
                                              fixed.GetSpacing(), fixed.GetDirection())
    return _on_fixed_grid(_compose_affine(inner, affine), fixed, "SimpleITK B-spline"), seconds


def run_sitk_demons(fixed: sitk.Image, moving: sitk.Image, threads: int = 1) -> tuple[sitk.Image, float]:
    """SimpleITK affine, histogram matching, then multi-resolution fast symmetric-forces demons.

    Levels shrink 4/2/1 (images smoothed with σ = shrink/2 voxels before shrinking), 400/200/100 iterations at most, the
    displacement field smoothed with σ = 2.5 voxels of the level after every iteration; each level starts from the
    previous level's field resampled onto its grid. Seconds: all stages.
    """
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    fixed_f, moving_f = _float32(fixed), _float32(moving)
    dim = fixed.GetDimension()
    started = time.perf_counter()
    affine, moving_aligned = _affine_stage(fixed_f, moving_f)
    matched = sitk.HistogramMatching(moving_aligned, fixed_f, numberOfHistogramLevels=1024, numberOfMatchPoints=7,
                                     thresholdAtMeanIntensity=True)
    field = None
    for shrink, iterations in zip(DEMONS_LEVELS, DEMONS_ITERATIONS):
        if shrink > 1:
            sigma = [0.5 * shrink * s for s in fixed.GetSpacing()]
            fixed_l = sitk.Shrink(sitk.SmoothingRecursiveGaussian(fixed_f, sigma), [shrink] * dim)
            moving_l = sitk.Shrink(sitk.SmoothingRecursiveGaussian(matched, sigma), [shrink] * dim)
        else:
            fixed_l, moving_l = fixed_f, matched
        if field is None:
            initial = sitk.Image(fixed_l.GetSize(), sitk.sitkVectorFloat64, dim)
            initial.CopyInformation(fixed_l)
        else:
            initial = sitk.Resample(field, fixed_l, sitk.Transform(dim, sitk.sitkIdentity), sitk.sitkLinear, 0.0,
                                    sitk.sitkVectorFloat64)
        demons = sitk.FastSymmetricForcesDemonsRegistrationFilter()
        demons.SetNumberOfIterations(iterations)
        demons.SetSmoothDisplacementField(True)
        demons.SetStandardDeviations(DEMONS_FIELD_SIGMA_VOX)
        demons.SetUseImageSpacing(True)
        field = demons.Execute(fixed_l, moving_l, initial)
    seconds = time.perf_counter() - started
    field = sitk.Cast(field, sitk.sitkVectorFloat64)
    return _on_fixed_grid(_compose_affine(field, affine), fixed, "SimpleITK demons"), seconds


# ---------------------------------------------------------------------------------------------------------------------
# VoxelMorph (the voxelmorph package, PyTorch backend)
# ---------------------------------------------------------------------------------------------------------------------

#: VoxelMorph's loss weights: neurite's local NCC (squared correlation in a window) and λ · L2 gradient of the velocity.
VXM_NCC_WINDOW = 9
VXM_LAMBDA = 1.0


def voxelmorph_loss(ncc, grad, fixed, warped, velocity):
    """VoxelMorph's loss ``−NCC(fixed, warped) + λ · grad(velocity)`` with neurite's NCC and spatial gradient.

    The NCC is evaluated in float64: neurite computes local variances as ``Σx² − (Σx)²/N``, which in float32 cancels
    badly on flat background and trips its own range check (coefficients in [0, 1]) on these images.
    """
    return -ncc(warped.double(), fixed.double()).mean().float() + VXM_LAMBDA * grad(velocity)


def voxelmorph_available() -> bool:
    try:
        import voxelmorph.nn.models  # noqa: F401
    except ImportError:
        return False
    return True


def voxelmorph_network(dim: int):
    """``voxelmorph.nn.models.VxmPairwise`` with the package's defaults (U-Net 16×5 features, 5 integration steps).

    Its displacement ``(B, dim, *spatial)`` is in voxels, channel ``c`` along tensor axis ``c``, sampled as
    ``moving(p + d(p))`` with ``align_corners=True`` — the convention of :mod:`metareg.core.geometry` (checked by the tests).
    """
    import voxelmorph as vxm

    return vxm.nn.models.VxmPairwise(ndim=dim, source_channels=1, target_channels=1)


def train_voxelmorph(card_path: str | Path, steps: int, out: str | Path, seed: int | None = None,
                     log_every: int = 50) -> dict:
    """Train VoxelMorph's network on the data of a zoo model's card; write ``out`` (.safetensors) and ``out``.json.

    From the card: the tasks (all of them, pooled), the model grid, the intensity normalisation, the batch size, the
    Adam learning rate, the augmentation and the seed; pairs are drawn and augmented exactly as
    :func:`metareg.learning.loops.train_loop` draws them (counter-based generator per step and slot). The loss is
    VoxelMorph's (``−NCC + λ · grad``), not ours. Returns the record written to the JSON (steps, seconds, loss curve).
    """
    import torch
    from neurite.nn.modules import NCC, SpatialGradient
    from safetensors.torch import save_file

    from metareg.learning.augment import AugmentConfig
    from metareg.learning.tasks import default_data_dir, load_task
    from metareg.learning.sampling import PairPool, draw_sample, generator
    from metareg.learning.tasks import TaskData

    from metareg.core.modelio import read_card

    card = read_card(Path(card_path))
    training = card.training
    dim = card.dim
    tasks = [load_task(t["name"], default_data_dir()) for t in training["tasks"]]
    datas = [TaskData(task, card.grid, card.normalisation, affine=card.affine) for task in tasks]
    pool = PairPool(datas)
    augment = AugmentConfig(**training["augment"])
    batch, rate = int(training["batch_size"]), float(training["learning_rate"])
    seed = int(training["seed"]) if seed is None else seed
    torch.manual_seed(seed)
    network = voxelmorph_network(dim)
    network.train()
    optimiser = torch.optim.Adam(network.parameters(), lr=rate)
    ncc, grad = NCC(window_size=VXM_NCC_WINDOW), SpatialGradient(penalty="l2")
    curve, step_seconds = [], 0.0
    started = time.perf_counter()
    for step in range(steps):
        samples = []
        for slot in range(batch):
            gen = generator(seed, step, slot)
            data, index = pool.draw(gen)
            samples.append(draw_sample(data, index, augment, gen))
        fixed = torch.cat([s[0] for s in samples])
        moving = torch.cat([s[1] for s in samples])
        t0 = time.perf_counter()
        velocity, warped = network(moving, fixed, return_warped_source=True, return_field_type="velocity")
        loss = voxelmorph_loss(ncc, grad, fixed, warped, velocity)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        step_seconds += time.perf_counter() - t0
        curve.append(float(loss.detach()))
        if log_every and (step + 1) % log_every == 0:
            print(f"voxelmorph step {step + 1}/{steps}: loss {np.mean(curve[-log_every:]):.4f}", flush=True)
    out = Path(out)
    state = {k: v.detach().cpu().contiguous() for k, v in network.state_dict().items()}
    save_file(state, str(out))
    record = {
        "network": "voxelmorph.nn.models.VxmPairwise (package defaults)", "dim": dim, "grid": card.grid.to_dict(),
        "normalisation": card.normalisation.to_dict(), "prealign": card.prealign,
        "trained_like": card.name, "tasks": [t["name"] for t in training["tasks"]], "steps": steps,
        "batch_size": batch, "learning_rate": rate, "augment": augment.to_dict(), "seed": seed,
        "loss": f"-NCC(window {VXM_NCC_WINDOW}) + {VXM_LAMBDA} * L2 grad(velocity)",
        "parameters": int(sum(p.numel() for p in network.parameters())),
        "seconds": round(time.perf_counter() - started, 1), "step_seconds": round(step_seconds, 1),
        "loss_curve": curve,
    }
    out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def run_voxelmorph(fixed: sitk.Image, moving: sitk.Image, weights: str | Path, threads: int = 1) -> tuple[sitk.Image, float]:
    """Register with a trained VoxelMorph network; seconds: resampling onto the model grid, inference, field.

    The pair goes onto the model grid placed on the fixed image with the card's normalisation, exactly as our networks
    see it (:func:`metareg.core.preprocess.prepare_pair`), and the voxel displacement becomes the field through the same
    conversion as ours (:func:`metareg.core.geometry.network_displacement_to_field`).
    """
    import torch
    from safetensors.torch import load_file

    from metareg.core.card import GridSpec, Normalisation
    from metareg.core.geometry import network_displacement_to_field
    from metareg.core.prealign import affine_prealign
    from metareg.core.preprocess import prepare_pair

    torch.set_num_threads(threads)
    weights = Path(weights)
    record = json.loads(weights.with_suffix(".json").read_text())
    network = voxelmorph_network(int(record["dim"]))
    network.load_state_dict(load_file(str(weights)))
    network.eval()
    started = time.perf_counter()
    prealign = affine_prealign(fixed, moving) if record.get("prealign") == "affine" else None
    grid, fixed_t, moving_t = prepare_pair(fixed, moving, GridSpec(**record["grid"]),
                                           Normalisation(**record["normalisation"]), prealign)
    with torch.no_grad():
        disp = network(moving_t, fixed_t)  # VoxelMorph: (source, target)
    field = network_displacement_to_field(disp, grid, fixed, prealign)
    seconds = time.perf_counter() - started
    return _on_fixed_grid(field, fixed, "VoxelMorph"), seconds
