"""Reading and writing images, through SimpleITK only.

Images keep their physical geometry: spacing (mm), origin (LPS mm) and direction (LPS). Reading checks that an image
can be registered at all (2D or 3D, at least 2 voxels along every axis, finite, not constant) and says what to do when
it cannot. Writing never leaves a partial file behind.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .errors import InputError, OutputError

LUMINANCE_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R BT.601, for R, G, B
READABLE = "NIfTI (.nii, .nii.gz), NRRD (.nrrd), MetaImage (.mha, .mhd), PNG/JPEG/TIFF, or a folder of one DICOM series"


def read_image(path: str | Path, name: str = "image") -> sitk.Image:
    """Read a 2D or 3D scalar image from a file or from a folder holding a DICOM series.

    A folder with several DICOM series gives the one with the most files, with a warning. RGB(A) 2D images become
    float32 luminance (0.299 R + 0.587 G + 0.114 B) with the same geometry; other images keep their pixel type.

    Args:
        path: an image file SimpleITK reads, or a DICOM series folder.
        name: how errors name the input, followed by the path (e.g. ``"--fixed"``).

    Returns:
        The image with its spacing (mm), origin (LPS mm) and direction.

    Raises:
        InputError: the path is missing or unreadable, or the image is not a usable 2D/3D scalar image.
    """
    path = Path(path)
    input_name = f"{name} {path}"
    if not path.exists():
        raise InputError(input_name, "does not exist", "check the path")
    try:
        image = _read_dicom_series(path, input_name) if path.is_dir() else sitk.ReadImage(str(path))
    except RuntimeError as error:
        problem = f"cannot be read as an image ({_sitk_message(error)})"
        raise InputError(input_name, problem, f"give {READABLE}") from error
    if image.GetDimension() not in (2, 3):
        raise InputError(input_name, f"is {image.GetDimension()}D", "give a 2D or 3D image")
    return _checked(_scalar(image, input_name), input_name)


def write_image(image: sitk.Image, path: str | Path, name: str = "output", compress: bool = True) -> None:
    """Write an image (compressed where the format allows, unless ``compress`` is False); the format follows the suffix
    (``.nii.gz``, ``.nrrd``, ...).

    The file appears complete or not at all.

    Raises:
        OutputError: the parent folder is missing or not writable, or SimpleITK cannot write this image there.
    """
    with atomic_output(path, name) as temporary:
        try:
            sitk.WriteImage(image, str(temporary), useCompression=bool(compress))
        except RuntimeError as error:
            raise OutputError(
                f"{name} {path}: SimpleITK cannot write this {image.GetDimension()}D "
                f"{image.GetPixelIDTypeAsString()} image there ({_sitk_message(error)}) "
                "(use a format that holds it, e.g. .nii.gz, .nrrd or .mha)"
            ) from error


def check_same_dimension(fixed: sitk.Image, moving: sitk.Image, fixed_name: str, moving_name: str) -> None:
    """Raise InputError unless both images are 2D or both are 3D."""
    if fixed.GetDimension() != moving.GetDimension():
        raise InputError(
            f"{fixed_name} and {moving_name}",
            f"are {fixed.GetDimension()}D and {moving.GetDimension()}D",
            "register a 2D image with a 2D image and a 3D image with a 3D image",
        )


def check_output_path(path: str | Path, name: str) -> Path:
    """``path`` as a Path if it can name an output file: not a folder, in a folder that exists."""
    target = Path(path)
    if target.is_dir():
        raise OutputError(f"{name} {target}: is a folder (give a file name)")
    if not target.parent.is_dir():
        raise OutputError(f"{name} {target}: folder {target.parent} does not exist (create it first)")
    return target


@contextmanager
def atomic_output(path: str | Path, name: str) -> Iterator[Path]:
    """Give a temporary path to write ``path`` through; move the result into place only if the block succeeds.

    The temporary path has the same file name as ``path``, in a hidden folder beside it, so writers that pick a format
    by suffix (``.nii.gz``) or add companion files (``.mhd`` + ``.zraw``) behave as for ``path``, and the final move
    is a rename within one file system. When the block raises, nothing is left behind.

    Raises:
        OutputError: the parent folder is missing or not writable, ``path`` is a folder, or the move fails.
    """
    target = check_output_path(path, name)
    folder = target.parent
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"{name} {target}: folder {folder} is not writable (choose another folder)")
    try:
        scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=folder))
    except OSError as error:
        raise OutputError(f"{name} {target}: cannot write in {folder} ({error.strerror or error})") from error
    try:
        temporary = scratch / target.name
        yield temporary
        if not temporary.is_file():
            raise OutputError(f"{name} {target}: nothing was written")
        for written in sorted(scratch.iterdir(), key=lambda file: file.name == target.name):  # the named file last
            os.replace(written, folder / written.name)
    except OSError as error:
        raise OutputError(f"{name} {target}: could not be written ({error.strerror or error})") from error
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _read_dicom_series(folder: Path, input_name: str) -> sitk.Image:
    series_ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if not series_ids:
        raise InputError(input_name, "is a folder without a DICOM series", f"give {READABLE}")
    files = {sid: sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), sid) for sid in series_ids}
    chosen = max(series_ids, key=lambda sid: len(files[sid]))
    if len(series_ids) > 1:
        warnings.warn(
            f"{input_name}: holds {len(series_ids)} DICOM series; using {chosen} ({len(files[chosen])} files). "
            "Put each series in its own folder to choose another.",
            stacklevel=3,
        )
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files[chosen])
    return reader.Execute()


def _scalar(image: sitk.Image, input_name: str) -> sitk.Image:
    """The image itself when scalar; float32 luminance for a 2D RGB(A) image."""
    components = image.GetNumberOfComponentsPerPixel()
    if components == 1:
        return image
    if image.GetDimension() != 2 or components not in (3, 4):
        raise InputError(input_name, f"has {components} values per voxel", "give a scalar (grey-value) image")
    rgb = sitk.GetArrayViewFromImage(image)[..., :3].astype(np.float32)
    luminance = sitk.GetImageFromArray(rgb @ np.array(LUMINANCE_WEIGHTS, dtype=np.float32))
    luminance.SetSpacing(image.GetSpacing())
    luminance.SetOrigin(image.GetOrigin())
    luminance.SetDirection(image.GetDirection())
    return luminance


def _checked(image: sitk.Image, input_name: str) -> sitk.Image:
    size = image.GetSize()
    if len(size) == 3 and min(size) == 1 and sorted(size)[1] > 1:
        raise InputError(
            input_name, f"is a single slice (size {size})", "pass it as a 2D image, e.g. extracted with sitk.Extract"
        )
    if min(size) < 2:
        raise InputError(input_name, f"has size {size}", "every axis needs at least 2 voxels")
    voxels = sitk.GetArrayViewFromImage(image)
    if np.issubdtype(voxels.dtype, np.floating):
        non_finite = int(voxels.size - np.count_nonzero(np.isfinite(voxels)))
        if non_finite:
            raise InputError(
                input_name, f"contains {non_finite} NaN/inf voxels", "fill or mask them before registering"
            )
    if voxels.min() == voxels.max():
        raise InputError(input_name, f"is constant ({voxels.min()}); nothing to register", "check the file")
    return image


def _sitk_message(error: RuntimeError) -> str:
    """The informative last line of a SimpleITK exception, without its source-file preamble."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1].removeprefix("sitk::ERROR:").strip() if lines else type(error).__name__
