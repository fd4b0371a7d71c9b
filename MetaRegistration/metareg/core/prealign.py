"""Classical affine pre-alignment with SimpleITK (Mattes mutual information, multi-resolution).

The result maps fixed points (LPS mm) to moving points, the same direction as the exported field, so
:func:`metareg.core.geometry.network_displacement_to_field` can compose it into one field.
"""

from __future__ import annotations

import math
from typing import Callable

import SimpleITK as sitk

from metareg.core.errors import Cancelled

#: The affine step works on images of at most this many voxels: larger ones are first averaged down by an integer
#: factor per axis (sitk.BinShrink, which keeps their physical extent). An affine transform has 12 parameters; images
#: of clinical size (a 512×512×400 CT, 105 M voxels) add time, not accuracy. Below it (the 1 M-voxel sample brain) the
#: images are used as they are.
PREALIGN_MAX_VOXELS = 2_000_000


def working_image(image: sitk.Image, max_voxels: int = PREALIGN_MAX_VOXELS) -> sitk.Image:
    """``image`` as float32, averaged down (the same integer factor on every axis that has room) to at most
    ``max_voxels`` voxels; its physical extent, origin of the first voxel's corner and direction are kept."""
    image = sitk.Cast(image, sitk.sitkFloat32)
    voxels = math.prod(image.GetSize())
    if voxels <= max_voxels:
        return image
    factor = math.ceil((voxels / max_voxels) ** (1.0 / image.GetDimension()))
    while math.prod(max(1, n // min(factor, max(1, n // 8))) for n in image.GetSize()) > max_voxels:
        factor += 1
    return sitk.BinShrink(image, [min(factor, max(1, n // 8)) for n in image.GetSize()])


def affine_prealign(
    fixed: sitk.Image,
    moving: sitk.Image,
    iterations: int = 100,
    progress: Callable[[float, str], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    seed: int = 20261122,
) -> sitk.AffineTransform:
    """Affine transform (fixed → moving points) maximising Mattes MI, initialised by aligning image moments.

    Works across modalities. Deterministic for a given ``seed`` (random metric sampling). Images above
    :data:`PREALIGN_MAX_VOXELS` are averaged down first (:func:`working_image`).
    """
    dim = fixed.GetDimension()
    fixed_f = working_image(fixed)
    moving_f = working_image(moving)
    initial = sitk.CenteredTransformInitializer(
        fixed_f, moving_f, sitk.AffineTransform(dim), sitk.CenteredTransformInitializerFilter.MOMENTS
    )
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(0.1, seed)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(
        learningRate=1.0, minStep=1e-4, numberOfIterations=iterations, gradientMagnitudeTolerance=1e-8
    )
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel([4, 2, 1])
    method.SetSmoothingSigmasPerLevel([2, 1, 0])
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    method.SetInitialTransform(initial, inPlace=False)
    total = 3 * iterations
    count = [0]

    def on_iteration():
        count[0] += 1
        if should_stop is not None and should_stop():
            method.StopRegistration()
        if progress is not None:
            progress(min(count[0] / total, 1.0), "affine pre-alignment")

    method.AddCommand(sitk.sitkIterationEvent, on_iteration)
    result = method.Execute(fixed_f, moving_f)
    if should_stop is not None and should_stop():
        raise Cancelled("registration cancelled")
    # Execute returns the optimised initial transform wrapped in a composite; flatten it to one affine
    return sitk.AffineTransform(sitk.CompositeTransform(result).GetNthTransform(0).Downcast())
