"""Classical peers run on the same pairs as our methods, each returning a field in the project's convention.

Every runner returns ``(field, seconds)`` where ``field`` is a SimpleITK displacement field (LPS mm) on the fixed
image's grid, fixed point ``x`` ↦ moving point ``x + d(x)`` — what elastix's ``transformix -def`` writes — so TRE is
measured the same way for everyone (:func:`metareg.geometry.map_points`).

elastix: Debian's ``elastix`` 5.0.1 (``apt-get install elastix``), an affine stage then a B-spline stage, with the
parameters elastix's manual recommends as a starting point for deformable registration (Mattes mutual information,
adaptive stochastic gradient descent, 4 resolutions, final grid spacing 10 mm, 2048 random samples).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path

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


def run_elastix(fixed: sitk.Image, moving: sitk.Image, threads: int = 2) -> tuple[sitk.Image, float]:
    """Affine + B-spline elastix; the field from ``transformix -def all``; wall seconds of elastix alone."""
    if not elastix_available():
        raise RuntimeError("elastix is not installed: apt-get install elastix")
    dim = fixed.GetDimension()
    with tempfile.TemporaryDirectory(prefix="metareg-elastix-") as scratch:
        work = Path(scratch)
        sitk.WriteImage(sitk.Cast(fixed, sitk.sitkFloat32), str(work / "fixed.nii.gz"))
        sitk.WriteImage(sitk.Cast(moving, sitk.sitkFloat32), str(work / "moving.nii.gz"))
        affine = _parameter_file(work / "affine.txt", AFFINE, dim)
        bspline = _parameter_file(work / "bspline.txt", BSPLINE, dim)
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
