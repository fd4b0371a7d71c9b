"""Image reading and writing: geometry survives, DICOM series folders read, unusable images are refused clearly."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import SimpleITK as sitk

from metareg.core.errors import InputError, OutputError
from metareg.core.imageio import read_image, write_image

SPACING = (0.7, 1.3, 2.5)
ORIGIN = (-12.5, 30.25, 7.0)


def rotation_direction(angle: float = 0.3) -> tuple[float, ...]:
    """A proper rotation about z, flattened row-major (ITK direction matrix)."""
    c, s = np.cos(angle), np.sin(angle)
    return tuple(np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]).ravel())


def ramp(size=(6, 5, 4), pixel_type=np.int16) -> sitk.Image:
    """A non-constant 3D image, (x, y, z) = size, with anisotropic spacing and a rotated direction."""
    image = sitk.GetImageFromArray(np.arange(np.prod(size)).reshape(size[::-1]).astype(pixel_type))
    image.SetSpacing(SPACING[: len(size)])
    image.SetOrigin(ORIGIN[: len(size)])
    if len(size) == 3:
        image.SetDirection(rotation_direction())
    return image


def write_dicom_series(image: sitk.Image, folder, series_uid: str) -> None:
    """One DICOM file per z slice, with the tags a series reader needs to restore the geometry."""
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    direction = image.GetDirection()
    row_column = (direction[0], direction[3], direction[6], direction[1], direction[4], direction[7])
    for z in range(image.GetDepth()):
        slice_image = image[:, :, z]
        tags = {
            "0008|0060": "CT",
            "0020|000d": "1.2.826.0.1.3680043.2.1125.1",
            "0020|000e": series_uid,
            "0008|0018": f"{series_uid}.{z + 1}",
            "0020|0032": "\\".join(f"{c:.6f}" for c in image.TransformIndexToPhysicalPoint((0, 0, z))),
            "0020|0037": "\\".join(f"{c:.6f}" for c in row_column),
            "0028|0030": f"{image.GetSpacing()[1]:.6f}\\{image.GetSpacing()[0]:.6f}",
            "0018|0050": f"{image.GetSpacing()[2]:.6f}",
            "0020|0013": str(z + 1),
        }
        for tag, value in tags.items():
            slice_image.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"{series_uid}_{z:03d}.dcm"))
        writer.Execute(slice_image)


def test_nifti_round_trip_keeps_geometry_and_pixel_type(tmp_path):
    image = ramp()
    path = tmp_path / "image.nii.gz"
    write_image(image, path)
    with gzip.open(path) as compressed:  # really gzipped, so the compound suffix reached the writer
        compressed.read(1)
    read = read_image(path)
    assert read.GetPixelID() == sitk.sitkInt16
    assert read.GetSize() == image.GetSize()
    np.testing.assert_allclose(read.GetSpacing(), SPACING, atol=1e-6)
    np.testing.assert_allclose(read.GetOrigin(), ORIGIN, atol=1e-5)
    np.testing.assert_allclose(read.GetDirection(), rotation_direction(), atol=1e-6)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(read), sitk.GetArrayFromImage(image))
    assert [p.name for p in tmp_path.iterdir()] == ["image.nii.gz"]


def test_metaimage_with_detached_data_is_written_whole(tmp_path):
    write_image(ramp(), tmp_path / "image.mhd")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["image.mhd", "image.zraw"]
    assert read_image(tmp_path / "image.mhd").GetSize() == (6, 5, 4)


def test_dicom_series_folder(tmp_path):
    image = ramp()
    write_dicom_series(image, tmp_path, "1.2.826.0.1.3680043.2.1125.2")
    read = read_image(tmp_path)
    assert read.GetSize() == image.GetSize()
    np.testing.assert_allclose(read.GetSpacing(), SPACING, atol=1e-4)
    np.testing.assert_allclose(read.GetOrigin(), ORIGIN, atol=1e-4)
    np.testing.assert_allclose(read.GetDirection(), rotation_direction(), atol=1e-4)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(read), sitk.GetArrayFromImage(image))


def test_folder_with_two_series_takes_the_larger_and_warns(tmp_path):
    write_dicom_series(ramp(), tmp_path, "1.2.826.0.1.3680043.2.1125.3")
    write_dicom_series(ramp((6, 5, 2)), tmp_path, "1.2.826.0.1.3680043.2.1125.4")
    with pytest.warns(UserWarning, match="holds 2 DICOM series; using 1.2.826.0.1.3680043.2.1125.3"):
        assert read_image(tmp_path).GetSize() == (6, 5, 4)


def test_rgb_becomes_luminance_with_geometry(tmp_path):
    rgb = np.zeros((3, 4, 3), np.uint8)
    rgb[..., 0], rgb[0, 0] = 100, (10, 20, 30)
    image = sitk.GetImageFromArray(rgb, isVector=True)
    image.SetSpacing((0.5, 2.0))
    image.SetOrigin((3.0, -4.0))
    path = tmp_path / "photo.mha"
    sitk.WriteImage(image, str(path))
    grey = read_image(path)
    assert grey.GetNumberOfComponentsPerPixel() == 1 and grey.GetSize() == (4, 3)
    assert (grey.GetSpacing(), grey.GetOrigin()) == ((0.5, 2.0), (3.0, -4.0))
    values = sitk.GetArrayFromImage(grey)
    assert values[0, 0] == pytest.approx(0.299 * 10 + 0.587 * 20 + 0.114 * 30, rel=1e-6)
    assert values[2, 3] == pytest.approx(29.9, rel=1e-6)


def test_2d_png_reads_as_2d(tmp_path):
    path = tmp_path / "slice.png"
    sitk.WriteImage(ramp((7, 5), np.uint8), str(path))
    image = read_image(path)
    assert image.GetDimension() == 2 and image.GetPixelID() == sitk.sitkUInt8


def unusable(tmp_path, case: str):
    if case == "text":
        path = tmp_path / "notes.txt"
        path.write_text("not an image\n")
        return path
    if case == "nan":
        image = sitk.Cast(ramp(), sitk.sitkFloat32)
        image[1, 2, 3] = float("nan")
        image[0, 0, 0] = float("inf")
    elif case == "constant":
        image = sitk.Image((4, 4, 4), sitk.sitkInt16) + 7
    elif case == "slice":
        image = ramp((6, 5, 1))
    elif case == "line":
        image = ramp((6, 1))
    elif case == "4d":
        image = sitk.Image((3, 3, 3, 3), sitk.sitkFloat32)
    path = tmp_path / f"{case}.nrrd"
    sitk.WriteImage(image, str(path))
    return path


@pytest.mark.parametrize(
    "case, problem",
    [
        ("text", "cannot be read as an image"),
        ("nan", r"contains 2 NaN/inf voxels \(fill or mask them"),
        ("constant", r"is constant \(7\); nothing to register"),
        ("slice", r"is a single slice .*pass it as a 2D image"),
        ("line", r"has size \(6, 1\)"),
        ("4d", "is 4D"),
    ],
)
def test_unusable_images_are_refused_with_the_path(tmp_path, case, problem):
    path = unusable(tmp_path, case)
    with pytest.raises(InputError, match=problem) as raised:
        read_image(path, name="--moving")
    assert str(raised.value).startswith(f"--moving {path}:")


def test_missing_path_and_empty_folder(tmp_path):
    with pytest.raises(InputError, match="does not exist") as raised:
        read_image(tmp_path / "absent.nii.gz")
    assert str(tmp_path / "absent.nii.gz") in str(raised.value)
    with pytest.raises(InputError, match="folder without a DICOM series"):
        read_image(tmp_path)


def test_write_into_missing_folder(tmp_path):
    path = tmp_path / "missing" / "out.nii.gz"
    with pytest.raises(OutputError, match="does not exist") as raised:
        write_image(ramp(), path, name="--warped")
    assert str(raised.value).startswith(f"--warped {path}:")
    assert not path.parent.exists()


def test_failed_write_leaves_nothing(tmp_path):
    path = tmp_path / "out.png"  # PNG cannot hold a 3D float image
    with pytest.raises(OutputError, match="cannot write this 3D 32-bit float image") as raised:
        write_image(sitk.Cast(ramp(), sitk.sitkFloat32), path)
    assert str(path) in str(raised.value)
    assert list(tmp_path.iterdir()) == []

