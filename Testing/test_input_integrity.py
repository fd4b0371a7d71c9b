"""Inputs that ITK would read silently wrong (issue 17, S2 #6 and #8) are refused by ``metareg register``.

Each case makes the fault for real on disk (a file cut short, an older uncompressed file beside a compressed one, a
sheared direction matrix) and checks: exit status 2, one error line naming the input and saying what to do, the input
files byte-for-byte unchanged (sha256), and nothing written in the output folder (hidden scratch folders included).
"""

from __future__ import annotations

import gzip
import hashlib
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from metareg.app.cli import main
from metareg.core.imageio import read_image

SIZE, SPACING = (24, 20, 16), (1.2, 0.9, 2.0)
FAST = ["--method", "iterative", "--iterations", "2,2", "--quiet"]


def blobs(shift_mm: float = 0.0, direction=None) -> sitk.Image:
    axes = [np.arange(n) * s for n, s in zip(SIZE, SPACING)]
    x, y, z = np.meshgrid(*axes[::-1], indexing="ij")[::-1]
    centre = [n * s / 2 for n, s in zip(SIZE, SPACING)]
    blob = ((x - centre[0] - shift_mm) / 6) ** 2 + ((y - centre[1]) / 6) ** 2 + ((z - centre[2]) / 6) ** 2
    image = sitk.GetImageFromArray((100 * np.exp(-blob) + 5 * np.sin(x / 3)).astype(np.float32))
    image.SetSpacing(SPACING)
    image.SetOrigin((-5.0, 12.5, 3.0))
    if direction is not None:
        image.SetDirection(direction)
    return image


def write(image: sitk.Image, path: Path, compress: bool = True) -> Path:
    sitk.WriteImage(image, str(path), useCompression=compress)
    return path


def truncate(path: Path, keep: float = 0.5) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "<dir>"
            for p in sorted(folder.rglob("*"))}


@pytest.fixture
def folders(tmp_path) -> tuple[Path, Path]:
    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    out.mkdir()
    write(blobs(), inputs / "fixed.nii.gz")
    return inputs, out


def refused(capsys, inputs: Path, out: Path, moving: Path, fixed: Path | None = None) -> str:
    """Run ``metareg register`` with every image output requested; check exit 2, one error line, inputs unchanged and
    no output; return the line."""
    before = hashes(inputs)
    argv = ["register", "--fixed", str(fixed or inputs / "fixed.nii.gz"), "--moving", str(moving),
            "--warped", str(out / "warped.nii.gz"), "--field", str(out / "field.nii.gz"),
            "--jacobian", str(out / "jacobian.nii.gz"), "--report", str(out / "report.json"), *FAST]
    rc = main(argv)
    captured = capsys.readouterr()
    assert rc == 2, captured.err
    assert hashes(inputs) == before, "an input changed"
    assert list(out.iterdir()) == [], "a refused run wrote something"
    assert "Traceback" not in captured.err
    lines = [line for line in captured.err.splitlines() if line.startswith("metareg register: error: ")]
    assert len(lines) == 1, captured.err
    return lines[0]


# --- S2 #6: a file cut short ---------------------------------------------------------------------------------------


def test_truncated_nii_gz_is_refused(capsys, folders):
    inputs, out = folders
    moving = truncate(write(blobs(2.0), inputs / "moving.nii.gz"))
    line = refused(capsys, inputs, out, moving)
    assert f"--moving {moving}: is truncated or corrupt" in line
    assert "copy it again from its source" in line


def test_truncated_uncompressed_nii_is_refused(capsys, folders):
    inputs, out = folders
    moving = truncate(write(blobs(2.0), inputs / "moving.nii", compress=False), keep=0.7)
    line = refused(capsys, inputs, out, moving)
    header_end = 352 + int(np.prod(SIZE)) * 4
    assert f"--moving {moving}: is truncated: it holds {int(header_end * 0.7)} bytes, its header describes " \
           f"{header_end}" in line
    assert "copy it again from its source" in line


def test_truncated_gzip_whose_header_survives_is_refused(capsys, folders):
    """Cut only the last bytes (the gzip CRC and length): the voxels may all be there, the stream is still not whole."""
    inputs, out = folders
    moving = write(blobs(2.0), inputs / "moving.nii.gz")
    moving.write_bytes(moving.read_bytes()[:-4])
    line = refused(capsys, inputs, out, moving)
    assert f"--moving {moving}: is truncated or corrupt" in line


def test_truncated_data_file_of_a_pair_is_refused(capsys, folders):
    inputs, out = folders
    header = write(blobs(2.0), inputs / "moving.hdr.gz")
    data = truncate(inputs / "moving.img.gz")
    line = refused(capsys, inputs, out, header)
    assert f"--moving {header}: its file {data} is truncated or corrupt" in line


def test_truncated_uncompressed_pair_is_refused(capsys, folders):
    inputs, out = folders
    header = write(blobs(2.0), inputs / "moving.hdr", compress=False)
    data = truncate(inputs / "moving.img")
    line = refused(capsys, inputs, out, header)
    assert f"--moving {header}: its data file {data} is truncated" in line


@pytest.mark.parametrize("suffix", [".nrrd", ".mha"])
def test_truncated_compressed_nrrd_and_mha_were_already_refused_by_itk(capsys, folders, suffix):
    """ITK's NRRD (gzip encoding) and MetaImage (zlib) readers check the length themselves."""
    inputs, out = folders
    moving = truncate(write(blobs(2.0), inputs / f"moving{suffix}"))
    line = refused(capsys, inputs, out, moving)
    assert f"--moving {moving}: cannot be read as an image" in line


def test_whole_gzip_check_costs_one_streaming_pass(tmp_path):
    """Whole inputs still read; the check adds one streaming decompression (reported, loosely bounded)."""
    rng = np.random.default_rng(0)
    image = sitk.GetImageFromArray((rng.normal(size=(80, 160, 160)) * 50).astype(np.int16))  # ~4 MB as .nii.gz
    path = write(image, tmp_path / "big.nii.gz")
    start = time.perf_counter()
    with gzip.open(path, "rb") as stream:
        while stream.read(1 << 20):
            pass
    check = time.perf_counter() - start
    start = time.perf_counter()
    read_image(path)
    total = time.perf_counter() - start
    print(f"{path.stat().st_size / 1e6:.1f} MB .nii.gz: gzip pass {check:.3f} s, read_image {total:.3f} s")
    assert check < max(1.0, total)


# --- an older uncompressed file beside a compressed one ---------------------------------------------------------------


def test_nii_gz_with_an_older_nii_beside_it_is_refused(capsys, folders):
    inputs, out = folders
    older = write(blobs(9.0), inputs / "moving.nii", compress=False)
    moving = write(blobs(2.0), inputs / "moving.nii.gz")
    line = refused(capsys, inputs, out, moving)
    assert f"--moving {moving}: has {older} beside it, which ITK's NIfTI reader would read instead" in line
    assert "move moving.nii or moving.nii.gz to another folder" in line


def test_hdr_gz_with_an_older_hdr_img_beside_it_is_refused(capsys, folders):
    inputs, out = folders
    write(blobs(9.0), inputs / "moving.hdr", compress=False)
    moving = write(blobs(2.0), inputs / "moving.hdr.gz")
    line = refused(capsys, inputs, out, moving)
    assert f"--moving {moving}: has {inputs / 'moving.hdr'}, {inputs / 'moving.img'} beside it" in line
    assert "move moving.hdr and moving.img or moving.hdr.gz to another folder" in line


def test_uncompressed_input_with_a_compressed_sibling_still_reads(folders):
    """ITK reads x.nii itself when asked for it, whatever x.nii.gz holds: no ambiguity, no refusal."""
    inputs, _ = folders
    write(blobs(9.0), inputs / "moving.nii.gz")
    path = write(blobs(2.0), inputs / "moving.nii", compress=False)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(read_image(path)), sitk.GetArrayFromImage(blobs(2.0)))


# --- S2 #8: a sheared direction matrix --------------------------------------------------------------------------------

SHEARED = (1.0, 0.3, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


@pytest.mark.parametrize("suffix", [".mha", ".nrrd"])
def test_sheared_direction_is_refused(capsys, folders, suffix):
    inputs, out = folders
    moving = write(blobs(2.0, direction=SHEARED), inputs / f"moving{suffix}")
    line = refused(capsys, inputs, out, moving)
    assert f"--moving {moving}: has a non-orthonormal direction matrix" in line
    assert "resample it onto an orthonormal grid" in line


def test_sheared_fixed_is_refused(capsys, folders):
    inputs, out = folders
    fixed = write(blobs(direction=SHEARED), inputs / "fixed.mha")
    moving = write(blobs(2.0), inputs / "moving.nii.gz")
    line = refused(capsys, inputs, out, moving, fixed=fixed)
    assert f"--fixed {fixed}: has a non-orthonormal direction matrix" in line


def test_oblique_float32_nifti_direction_still_reads(tmp_path):
    """A rotation stored in NIfTI's float32 quaternion comes back orthonormal only to ~1e-7: it must pass."""
    angle = 0.37
    c, s = np.cos(angle), np.sin(angle)
    rotation = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ np.array([[1, 0, 0], [0, np.cos(0.2), -np.sin(0.2)],
                                                                         [0, np.sin(0.2), np.cos(0.2)]])
    path = write(blobs(direction=tuple(rotation.ravel())), tmp_path / "oblique.nii.gz")
    read = read_image(path)
    np.testing.assert_allclose(read.GetDirection(), rotation.ravel(), atol=1e-5)


def test_whole_inputs_register(tmp_path, folders):
    inputs, out = folders
    moving = write(blobs(2.0), inputs / "moving.hdr.gz")
    rc = main(["register", "--fixed", str(inputs / "fixed.nii.gz"), "--moving", str(moving),
               "--warped", str(out / "warped.nii.gz"), *FAST])
    assert rc == 0
    assert (out / "warped.nii.gz").is_file()


# ---------------------------------------------------------------------------------------------------------------------
# S4: the real reason, and the right hint (a singular orientation; not enough memory)
# ---------------------------------------------------------------------------------------------------------------------


def _nifti_with_sform(path: Path, rows) -> Path:
    """A NIfTI-1 file whose orientation is only its sform (qform_code 0, sform_code 1) with these rows."""
    import struct

    write(blobs(), path, compress=False)
    header = bytearray(path.read_bytes())
    struct.pack_into("<hh", header, 252, 0, 1)  # qform_code, sform_code
    for offset, row in zip((280, 296, 312), rows):
        struct.pack_into("<4f", header, offset, *row)
    path.write_bytes(bytes(header))
    return path


@pytest.mark.parametrize("rows", [[(0, 0, 0, 0)] * 3, [(1, 0, 0, 0), (1, 0, 0, 0), (0, 0, 1, 0)]],
                         ids=["all-zero", "two-equal-axes"])
def test_a_singular_orientation_says_so_and_does_not_blame_the_format(capsys, folders, rows):
    inputs, out = folders
    moving = _nifti_with_sform(inputs / "singular.nii", rows)
    line = refused(capsys, inputs, out, moving)
    assert "has an orientation in its header that is not a rotation: its direction matrix is singular" in line
    assert "ITK only supports orthonormal direction cosines" in line  # ITK's own reason, whole
    assert "fix the orientation in the header" in line and "PNG/JPEG" not in line


_UNDER_A_MEMORY_LIMIT = """
import resource, sys
import SimpleITK as sitk
from metareg.core.errors import MetaRegError
from metareg.core.imageio import read_image, write_image
image = sitk.Image([200, 200, 200], sitk.sitkFloat32) + 1.0 if sys.argv[1] == "write" else None
in_use = int([l for l in open("/proc/self/status") if l.startswith("VmSize")][0].split()[1]) * 1024
resource.setrlimit(resource.RLIMIT_AS, (in_use + 20 * 2**20, resource.RLIM_INFINITY))
try:
    read_image(sys.argv[2], "--fixed") if sys.argv[1] == "read" else write_image(image, sys.argv[2], "--warped")
except MetaRegError as error:
    print(error)
"""


@pytest.mark.parametrize("operation", ["read", "write"])
def test_out_of_memory_is_reported_as_memory_not_as_a_format(tmp_path, operation):
    """A real allocation failure (an address-space limit 20 MB above what the process uses) while reading or
    writing a 32-100 MB image: the message says memory and what to do, and no output appears."""
    import subprocess
    import sys

    big = tmp_path / "big.nii"
    if operation == "read":
        sitk.WriteImage(sitk.Image([300, 300, 300], sitk.sitkFloat32) + 1.0, str(big))
    target = big if operation == "read" else tmp_path / "warped.nii.gz"
    before = hashes(tmp_path)
    done = subprocess.run([sys.executable, "-c", _UNDER_A_MEMORY_LIMIT, operation, str(target)], capture_output=True,
                          text=True, encoding="utf-8", errors="replace", timeout=120)
    message = done.stdout.strip()
    assert "memory" in message and "free memory (close other programs), or crop or downsample" in message, done
    if operation == "read":  # ITK's NIfTI reader says only "nifti_image_load failed": the sizes say why
        assert "its voxels take 0.10 GB and" in message or "does not fit in the memory available" in message
    assert "format" not in message and "PNG/JPEG" not in message
    assert hashes(tmp_path) == before  # the input unchanged; no output, no scratch folder


_REGISTER_UNDER_A_MEMORY_LIMIT = """
import resource, sys
import torch
import metareg.core.memory
from metareg.app.cli import main
torch.set_num_threads(1)
metareg.core.memory.available_memory_bytes = lambda: 1 << 40  # the estimate misses it (another program took the memory)
in_use = int([l for l in open("/proc/self/status") if l.startswith("VmSize")][0].split()[1]) * 1024
resource.setrlimit(resource.RLIMIT_AS, (in_use + 300 * 2**20, resource.RLIM_INFINITY))
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_out_of_memory_while_registering_is_one_line(tmp_path):
    """torch cannot allocate the pyramid of a 160^3 pair under an address-space limit, the up-front estimate having
    missed it (metareg.core.memory refuses such a pair before the work otherwise: test_clinical_size.py): one line,
    exit 2, no output."""
    import subprocess
    import sys

    rng = np.random.default_rng(0)
    for name in ("fixed", "moving"):
        sitk.WriteImage(sitk.GetImageFromArray(rng.random((160, 160, 160)).astype(np.float32)),
                        str(tmp_path / f"{name}.nii.gz"))
    out = tmp_path / "out"
    out.mkdir()
    before = hashes(tmp_path)
    done = subprocess.run([sys.executable, "-c", _REGISTER_UNDER_A_MEMORY_LIMIT, "register",
                           "--fixed", str(tmp_path / "fixed.nii.gz"), "--moving", str(tmp_path / "moving.nii.gz"),
                           "--iterations", "2,2,2", "--warped", str(out / "warped.nii.gz"), "--quiet"],
                          capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=300)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert lines[0].startswith("metareg register: error: not enough memory for this register (")
    assert "no outputs were written; free memory" in lines[0]
    assert hashes(tmp_path) == before
