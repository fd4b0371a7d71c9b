"""Reading and writing images, through SimpleITK only.

Images keep their physical geometry: spacing (mm), origin (LPS mm) and direction (LPS). Reading checks that an image
can be registered at all (2D or 3D, at least 2 voxels along every axis, finite, not constant, an orthonormal direction)
and that ITK reads what the user named (a whole file, not one cut short that ITK would zero-fill; not an older
uncompressed file of the same NIfTI family), and says what to do when it cannot. Writing never leaves a partial file
behind.
"""

from __future__ import annotations

import gzip
import os
import re
import shutil
import stat
import struct
import sys
import tempfile
import time
import warnings
import zlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from metareg.core.errors import InputError, OutputError

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
        InputError: the path is missing or unreadable; the file is cut short (a broken gzip stream, or less data than
            the NIfTI header describes); a compressed NIfTI name has an uncompressed file of its family beside it,
            which ITK would read instead (``x.nii`` beside ``x.nii.gz``); or the image is not a usable 2D/3D scalar
            image on an orthonormal grid.
    """
    path = Path(path)
    input_name = f"{name} {path}"
    if not path.exists():
        raise InputError(input_name, "does not exist", "check the path")
    if not path.is_dir():
        _check_not_shadowed(path, input_name)
        _check_whole(path, input_name)
    try:
        image = _read_dicom_series(path, input_name) if path.is_dir() else sitk.ReadImage(str(path))
    except (RuntimeError, MemoryError) as error:
        raise InputError(input_name, *_read_failure(error, None if path.is_dir() else path)) from error
    if image.GetDimension() not in (2, 3):
        raise InputError(input_name, f"is {image.GetDimension()}D", "give a 2D or 3D image")
    return check_image(_scalar(image, input_name), input_name)


def write_image(image: sitk.Image, path: str | Path, name: str = "output", compress: bool = True) -> None:
    """Write an image (compressed where the format allows, unless ``compress`` is False); the format follows the suffix
    (``.nii.gz``, ``.nrrd``, ...).

    The file appears complete or not at all: it is written beside ``path``, read back and compared with ``image``
    (:func:`_check_written`), and only then moved into place.

    Raises:
        OutputError: the parent folder is missing or not writable, SimpleITK cannot write this image there, or the
            file written does not read back as the image (a full disk or a file-size limit).
    """
    with atomic_output(path, name) as temporary:
        with _native_stderr() as printed:
            try:
                sitk.WriteImage(image, str(temporary), useCompression=bool(compress))
            except (RuntimeError, MemoryError) as error:
                message = _sitk_message(error)
                if is_out_of_memory(error):
                    raise OutputError(f"{name} {path}: there is not enough memory to write this "
                                      f"{image.GetDimension()}D image of {image.GetSize()} voxels ({message}); "
                                      f"nothing was replaced; {MEMORY_HINT}") from error
                full = any(reason in str(error) for reason in ("No space left", "File too large", "quota"))
                raise OutputError(
                    f"{name} {path}: SimpleITK cannot write this {image.GetDimension()}D "
                    f"{image.GetPixelIDTypeAsString()} image there ({message}) "
                    f"({WRITE_FAILED_HINT if full else 'use a format that holds it, e.g. .nii.gz, .nrrd or .mha'})"
                ) from error
        try:
            _check_written(image, temporary, f"{name} {path}", printed)
        except MemoryError as error:
            raise OutputError(f"{name} {path}: there is not enough memory to read the written file back and check "
                              f"it; nothing was replaced; {MEMORY_HINT}") from error


#: What an output that did not reach the disk whole says to do.
WRITE_FAILED_HINT = "nothing was replaced; is the disk full or a file-size limit reached? free space or write elsewhere"


def _check_written(image: sitk.Image, written_path: Path, label: str, printed: list[str]) -> None:
    """Read the file just written back and compare it with ``image``: size, values per voxel, and every voxel (the
    header only for lossy JPEG). Raise OutputError when they differ.

    ITK's NIfTI writer reports a full disk or a file-size limit only on stderr ("NWAD: wrote only 0 of N bytes") and
    leaves a truncated file that still reads as an image, zero-filled where the data stopped; this finds it. Cost: one
    read of the file and a comparison, with a second copy of the image in memory meanwhile; for .nii.gz a third to a
    half of the write's time (measured: 0.45 s after a 1.6 s write of 256^3 float32, 5.6 s after 10.6 s at
    512x512x400).
    """
    said = " ".join(line.strip() for line in "".join(printed).splitlines() if line.strip())
    problem = ""
    try:
        back = sitk.ReadImage(str(written_path))
    except RuntimeError as error:
        if is_out_of_memory(error):  # the check itself ran out of memory: say memory, not a short file
            raise MemoryError(_sitk_message(error)) from error
        problem = said or f"cannot be read back: {_sitk_message(error)}"
    else:
        shape = (back.GetSize(), back.GetNumberOfComponentsPerPixel())
        if shape != (image.GetSize(), image.GetNumberOfComponentsPerPixel()):
            problem = f"reads back as size {shape[0]} with {shape[1]} values per voxel"
        elif not written_path.name.lower().endswith((".jpg", ".jpeg")):
            ours, theirs = sitk.GetArrayViewFromImage(image), sitk.GetArrayViewFromImage(back)
            floating = np.issubdtype(ours.dtype, np.floating) and np.issubdtype(theirs.dtype, np.floating)
            if not np.array_equal(ours, theirs, equal_nan=floating):
                problem = said or "its voxels read back different"
        del back
    if problem:
        raise OutputError(f"{label}: the file written is not the whole image ({problem}); {WRITE_FAILED_HINT}")
    if said:  # ITK's own messages of a write that succeeded reach stderr as before
        os.write(2, "".join(printed).encode())


@contextmanager
def _native_stderr() -> Iterator[list[str]]:
    """Collect what native code (ITK's NIfTI writer) prints on file descriptor 2 while the block runs."""
    printed: list[str] = []
    try:
        saved = os.dup(2)
        sink = tempfile.TemporaryFile()
    except OSError:
        yield printed
        return
    with sink:
        if sys.stderr is not None:
            sys.stderr.flush()
        os.dup2(sink.fileno(), 2)
        try:
            yield printed
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            printed.append(sink.read().decode(errors="replace"))


#: The NIfTI names of one stem are one family: x.hdr is written with x.img, and ITK's NIfTI reader, asked for
#: x.nii.gz, reads x.nii instead when it exists (x.hdr.gz: x.hdr and x.img).
_NIFTI = (".nii", ".nii.gz", ".hdr", ".img", ".hdr.gz", ".img.gz")

#: Formats stored as more than one file: the named file's suffix -> the suffixes of the files written (and read)
#: beside it, with the same stem.
COMPANION_SUFFIXES = {
    **{suffix: tuple(other for other in _NIFTI if other != suffix) for suffix in _NIFTI},
    ".mhd": (".raw", ".zraw"),  # MetaImage, detached data (.zraw when compressed)
    ".nhdr": (".raw", ".raw.gz"),  # NRRD, detached data
    ".safetensors": (".json", ".loss.csv", ".loss.png"),  # a model: its card; and the log of the run that trains it
}


def output_files(path: str | Path) -> list[Path]:
    """The files that writing ``path`` may create or replace, and that reading it may read: ``path`` and its format's
    companions (``x.nii.gz``: the other NIfTI names ``x.nii``, ``x.hdr``, ``x.img``...; ``x.mhd``: ``x.raw``/``x.zraw``;
    ``x.nhdr``: ``x.raw``/``x.raw.gz``; a model: its card and training log)."""
    path = Path(path)
    for suffix, companions in COMPANION_SUFFIXES.items():
        if path.name.endswith(suffix) and path.name != suffix:
            stem = path.name[: -len(suffix)]
            return [path, *(path.with_name(stem + companion) for companion in companions)]
    return [path]


def check_output_path(path: str | Path, name: str, inputs: Iterable[tuple[str, str | Path | None]] = ()) -> Path:
    """``path`` as a Path if it may be written as the output ``name`` (e.g. ``"--warped"``); OutputError otherwise.

    Refused: a folder; a folder that does not exist; any file it writes (:func:`output_files`) that exists but is not a
    regular file (a device, FIFO or socket would be replaced by a file: as root, ``--report /dev/full`` would replace
    the device); any file it writes that is a file of one of ``inputs`` (``(name, path)`` pairs; their companions
    count): the same path, or the same file through a symbolic or hard link.
    """
    target = Path(path)
    limit = _name_max(target.parent) - len(".") - len(".tmp")  # a file is written through ".<name>.tmp" or a folder
    for file in output_files(target):
        length = len(os.fsencode(file.name))
        if length > limit:
            raise OutputError(f"{name} {target}: its file name{'' if file == target else f' {file.name}'} is {length} "
                              f"bytes long; at most {limit} can be written on this file system (give a shorter name)")
    if target.is_dir():
        raise OutputError(f"{name} {target}: is a folder (give a file name)")
    if not target.parent.is_dir():
        raise OutputError(f"{name} {target}: folder {target.parent} does not exist (create it first)")
    for file in output_files(target):
        kind = _not_a_regular_file(file)
        if kind:
            what = "" if file == target else f"its file {file} "
            raise OutputError(f"{name} {target}: {what}is {kind}, not a regular file (give a file name; devices, "
                              "pipes, sockets and folders are never written over)")
    shared = shared_file(target, inputs)
    if shared:
        file, other, other_path, other_file = shared
        what = "is the same file as" if (file, other_file) == (target, other_path) else f"{file.name} is a file of"
        raise OutputError(f"{name} {target}: {what} the input {other} {other_path} "
                          "(give the output another file name; inputs are never written over)")
    return target


def shared_file(path: str | Path, others: Iterable[tuple[str, str | Path | None]]):
    """``(file, other_name, other_path, other_file)`` for the first file that writing ``path`` may write (``path``
    itself first) and that is also a file of one of ``others`` (``(name, path)`` pairs, companions included, see
    :func:`output_files`): the same path once resolved, or the same file (device and inode: a hard or symbolic link).
    None if there is none.
    """
    theirs = [(name, Path(other), file, _identity(file)) for name, other in others if other is not None
              for file in output_files(other)]
    for file in output_files(path):
        keys = _identity(file)
        for name, other, other_file, other_keys in theirs:
            if keys & other_keys:
                return file, name, other, other_file
    return None


def _identity(file: Path) -> set:
    """What makes two names one file: the absolute path with symbolic links resolved, and (device, inode) if it
    exists."""
    keys: set = {os.path.realpath(file)}
    try:
        info = os.stat(file)
    except (OSError, ValueError):
        return keys
    keys.add((info.st_dev, info.st_ino))
    return keys


def _not_a_regular_file(file: Path) -> str:
    """What ``file`` is if it exists and is not a regular file (``"a FIFO"``, ...); "" otherwise."""
    try:
        mode = os.stat(file).st_mode
    except (OSError, ValueError):
        return ""
    for test, kind in ((stat.S_ISREG, ""), (stat.S_ISDIR, "a folder"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return kind
    return "a special file"


#: When this process started: scratch folders of dead runs older than this are removed (:func:`scratch_folder`).
_STARTED = time.time()
_SCRATCH = re.compile(r"^\..+\.metareg-(\d+)-[a-z0-9_]{8}\.partial$")


def scratch_folder(target: Path, name: str) -> Path:
    """A new hidden folder beside ``target`` to write it through: ``.<file>.metareg-<pid>-<random>.partial``, so that
    one left by a killed run says what it is. Such folders of runs that have ended (their process is gone) and that
    are older than this run are removed first.

    Raises:
        OutputError: the folder cannot be created.
    """
    folder = target.parent
    _remove_stale_scratch(folder)
    try:
        return Path(tempfile.mkdtemp(prefix=f".{_shortened(target.name)}.metareg-{os.getpid()}-", suffix=".partial",
                                     dir=folder))
    except OSError as error:
        raise OutputError(f"{name} {target}: cannot write in {folder} ({error.strerror or error})") from error


def _shortened(file_name: str, limit: int = 100) -> str:
    """``file_name`` cut to at most ``limit`` bytes (whole characters), for the name of a scratch folder beside it."""
    while len(os.fsencode(file_name)) > limit:
        file_name = file_name[:-1]
    return file_name


def _name_max(folder: Path) -> int:
    """The longest file name (bytes) the file system of ``folder`` allows (255 when it cannot be asked)."""
    try:
        return int(os.pathconf(folder if folder.is_dir() else ".", "PC_NAME_MAX"))
    except (OSError, ValueError, AttributeError):
        return 255


def _remove_stale_scratch(folder: Path) -> None:
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    for entry in entries:
        match = _SCRATCH.match(entry.name)
        try:
            stale = (match is not None and entry.is_dir(follow_symlinks=False)
                     and entry.stat(follow_symlinks=False).st_mtime < _STARTED and not process_running(int(match[1])))
        except OSError:
            continue
        if stale:
            shutil.rmtree(entry.path, ignore_errors=True)


def process_running(pid: int) -> bool:
    """Whether process ``pid`` exists (True when that cannot be told, as on Windows)."""
    if os.name == "nt":  # os.kill(pid, 0) would end the process there: never guess
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # it exists, but belongs to someone else
        return True
    return True


@contextmanager
def atomic_output(path: str | Path, name: str) -> Iterator[Path]:
    """Give a temporary path to write ``path`` through; move the result into place only if the block succeeds.

    The temporary path has the same file name as ``path``, in a hidden folder beside it (:func:`scratch_folder`), so
    writers that pick a format by suffix (``.nii.gz``) or add companion files (``.mhd`` + ``.zraw``) behave as for
    ``path``, and the final move is a rename within one file system. When the block raises, nothing is left behind.

    Raises:
        OutputError: ``path`` may not be written (:func:`check_output_path`), its folder is not writable, the writer
            made files other than :func:`output_files` says, or the move fails.
    """
    target = check_output_path(path, name)
    folder = target.parent
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"{name} {target}: folder {folder} is not writable (choose another folder)")
    scratch = scratch_folder(target, name)
    try:
        temporary = scratch / target.name
        yield temporary
        if not temporary.is_file():
            raise OutputError(f"{name} {target}: nothing was written")
        written = sorted(scratch.iterdir(), key=lambda file: file.name == target.name)  # the named file last
        unknown = {file.name for file in written} - {file.name for file in output_files(target)}
        if unknown:
            raise OutputError(f"{name} {target}: the writer also made {', '.join(sorted(unknown))}, which metareg "
                              "does not expect (use another format, e.g. .nii.gz)")
        for file in written:
            os.replace(file, folder / file.name)
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


#: How far from orthonormal a direction matrix may be (largest entry of |D^T D - I|). NIfTI's qform/sform, stored as
#: float32, stays within about 1e-6; a shear or scale that matters is far above this.
ORTHONORMAL_TOLERANCE = 1e-4

#: The uncompressed names that ITK's NIfTI reader reads instead of a compressed one when they exist beside it.
_SHADOWING = {".nii.gz": (".nii",), ".hdr.gz": (".hdr", ".img"), ".img.gz": (".hdr", ".img")}

_GZIP_CHUNK = 1 << 20


def _check_not_shadowed(path: Path, input_name: str) -> None:
    """Refuse a compressed NIfTI input (``x.nii.gz``, ``x.hdr.gz``) with an uncompressed file of its family beside it
    (``x.nii``; ``x.hdr``/``x.img``): ITK's NIfTI reader would silently read that one instead."""
    name = path.name.lower()
    for suffix, shadows in _SHADOWING.items():
        if name.endswith(suffix) and len(name) > len(suffix):
            stem = path.name[: -len(suffix)]
            wanted = {stem + shadow for shadow in shadows}
            present = [file for file in output_files(path)[1:] if file.name in wanted and file.exists()]
            if present:
                raise InputError(input_name, f"has {', '.join(str(file) for file in present)} beside it, which ITK's "
                                 "NIfTI reader would read instead",
                                 f"move {' and '.join(file.name for file in present)} or {path.name} to another folder")
            return


def _nifti_files(path: Path) -> tuple[Path, Path] | None:
    """(header file, data file) of a NIfTI/Analyze input, or None for another format."""
    name = path.name.lower()
    for suffix in (".nii.gz", ".nii", ".hdr.gz", ".hdr", ".img.gz", ".img"):
        if name.endswith(suffix) and len(name) > len(suffix):
            stem, gz = path.name[: -len(suffix)], ".gz" if suffix.endswith(".gz") else ""
            if suffix.startswith(".nii"):
                return path, path
            header, data = path.with_name(f"{stem}.hdr{gz}"), path.with_name(f"{stem}.img{gz}")
            if not data.exists():  # ITK also pairs x.hdr with x.img.gz and x.hdr.gz with x.img
                other = path.with_name(f"{stem}.img{'' if gz else '.gz'}")
                data = other if other.exists() else data
            return header, data
    return None


def _nifti_data_end(header: bytes) -> int | None:
    """vox_offset + the voxel data's bytes, from a NIfTI-1/Analyze (348 bytes) or NIfTI-2 (540) header; None if
    ``header`` is not one."""
    for order in "<>":
        if len(header) >= 348 and struct.unpack(order + "i", header[:4])[0] == 348:
            dims = struct.unpack(order + "8h", header[40:56])
            bitpix = struct.unpack(order + "h", header[72:74])[0]
            offset = struct.unpack(order + "f", header[108:112])[0]
            break
        if len(header) >= 540 and struct.unpack(order + "i", header[:4])[0] == 540:
            bitpix = struct.unpack(order + "h", header[14:16])[0]
            dims = struct.unpack(order + "8q", header[16:80])
            offset = struct.unpack(order + "q", header[168:176])[0]
            break
    else:
        return None
    count = dims[0]
    if not 1 <= count <= 7 or bitpix <= 0 or bitpix % 8 or not np.isfinite(offset) or offset < 0:
        return None  # not something we can size; ITK's own checks apply
    voxels = 1
    for n in dims[1 : count + 1]:
        if n <= 0:
            return None
        voxels *= int(n)
    return int(offset) + voxels * (bitpix // 8)


def _stored_size(file: Path, path: Path, input_name: str) -> int:
    """The bytes ``file`` holds, decompressed in one streaming pass if it is gzip (which also checks its CRC and
    length); InputError if the gzip stream is cut short or corrupt."""
    if not file.name.lower().endswith(".gz"):
        return file.stat().st_size
    try:
        with open(file, "rb") as raw:
            if raw.read(2) != b"\x1f\x8b":  # not gzip at all: ITK says what it is not
                return file.stat().st_size
    except OSError as error:
        raise InputError(input_name, f"cannot be read ({error.strerror or error})", "check the file") from error
    total = 0
    try:  # about 0.1 s for a 10 MB .nii.gz; the whole stream is read so that its CRC and length are checked
        with gzip.open(file, "rb") as stream:
            while chunk := stream.read(_GZIP_CHUNK):
                total += len(chunk)
    except (EOFError, gzip.BadGzipFile, zlib.error) as error:
        what = "" if file == path else f"its file {file} "
        raise InputError(input_name, f"{what}is truncated or corrupt: its gzip stream is not whole ({error})",
                         "copy it again from its source; a partial download or copy would be "
                         "read with zeros where the data stops") from error
    except OSError as error:
        raise InputError(input_name, f"cannot be read ({error.strerror or error})", "check the file") from error
    return total


def _head(file: Path) -> bytes:
    """The first 540 bytes of ``file`` (decompressed if it is gzip); b"" if they cannot be read."""
    try:
        with open(file, "rb") as raw:
            gzipped = raw.read(2) == b"\x1f\x8b"
        with (gzip.open if gzipped else open)(file, "rb") as stream:
            return stream.read(540)
    except (OSError, EOFError, zlib.error):
        return b""


def _check_whole(path: Path, input_name: str) -> None:
    """Refuse an input file whose data is cut short, which ITK's NIfTI reader fills with zeros: a gzip stream that
    breaks off (any ``.gz`` input, and a NIfTI pair's data file), or a NIfTI file smaller than vox_offset + the bytes
    its header's size and type imply. Cost: one streaming decompression of a .gz file (about 0.1 s for 10 MB)."""
    nifti = _nifti_files(path)
    files = [path] if nifti is None else list(dict.fromkeys(nifti))
    sizes = {file: _stored_size(file, path, input_name) for file in files if file.is_file()}
    if nifti is None:
        return
    header, data = nifti
    end = _nifti_data_end(_head(header)) if header in sizes else None
    if end is None or data not in sizes:
        return
    if sizes[data] < end:
        what = "" if data == path else f"its data file {data} "
        raise InputError(input_name, f"{what}is truncated: it holds {sizes[data]} bytes, its header describes "
                         f"{end}", "copy it again from its source; a partial download or copy would be read with "
                         "zeros where the data stops")


def _check_orthonormal(image: sitk.Image, input_name: str) -> None:
    dim = image.GetDimension()
    direction = np.array(image.GetDirection(), dtype=float).reshape(dim, dim)
    error = float(np.abs(direction.T @ direction - np.eye(dim)).max())
    if not error <= ORTHONORMAL_TOLERANCE:
        raise InputError(input_name, f"has a non-orthonormal direction matrix {np.round(direction, 4).tolist()} "
                         f"(sheared or scaled axes: |D^T D - I| = {error:.2g})",
                         "resample it onto an orthonormal grid, e.g. with sitk.Resample onto the nearest rotation")


def check_image(image: sitk.Image, input_name: str, min_size: int = 2) -> sitk.Image:
    """Refuse an image that cannot be registered: not a SimpleITK image, not 2D or 3D, not scalar, a non-orthonormal
    direction, a 3D single slice, an axis shorter than ``min_size`` voxels, NaN/inf voxels, or constant. Returns it.

    ``input_name`` names the image in errors (a parameter such as ``"fixed"``, or an option and a path).
    """
    if not isinstance(image, sitk.Image):
        raise InputError(input_name, f"must be a SimpleITK image, got {type(image).__name__}",
                         "read it with metareg.read_image")
    if image.GetDimension() not in (2, 3):
        raise InputError(input_name, f"is {image.GetDimension()}D", "give a 2D or 3D image")
    components = image.GetNumberOfComponentsPerPixel()
    if components != 1:
        raise InputError(input_name, f"has {components} values per voxel", "give a scalar (grey-value) image")
    _check_orthonormal(image, input_name)
    size = image.GetSize()
    if len(size) == 3 and min(size) == 1 and sorted(size)[1] > 1:
        raise InputError(
            input_name, f"is a single slice (size {size})", "pass it as a 2D image, e.g. extracted with sitk.Extract"
        )
    if min(size) < min_size:
        raise InputError(input_name, f"has size {size}, too small to register",
                         f"every axis needs at least {min_size} voxels")
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


#: What an image that does not fit in memory says to do.
MEMORY_HINT = "free memory (close other programs), or crop or downsample the image first"


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is an allocation failure (Python's, ITK's, or torch's on CPU or GPU)."""
    text = str(error)
    return isinstance(error, MemoryError) or any(sign in text for sign in ("allocate", "bad_alloc", "out of memory"))


def _read_failure(error: BaseException, path: Path | None = None) -> tuple[str, str]:
    """The problem and the hint for an image SimpleITK failed to read: out of memory (said so, or a reader that fails
    without saying why on an image whose header reads and whose voxels would not fit: ITK's NIfTI reader then says
    only "nifti_image_load failed"), an orientation ITK refuses (a singular or sheared direction in the header), or a
    format or file it cannot read."""
    message = _sitk_message(error)
    if is_out_of_memory(error):
        return f"does not fit in the memory available ({message})", MEMORY_HINT
    needed = _voxel_bytes(path) if path is not None else None
    if needed is not None:
        from metareg.core.memory import available_memory_bytes

        available = available_memory_bytes()
        if available is not None and needed > available / 2:
            return (f"could not be read ({message}); its voxels take {needed / 2**30:.2f} GB and "
                    f"{available / 2**30:.2f} GB of memory are available", MEMORY_HINT)
    if "orthonormal" in str(error) or "direction cosines" in str(error):
        return (f"has an orientation in its header that is not a rotation: its direction matrix is singular or "
                f"sheared ({message})",
                "fix the orientation in the header (NIfTI: qform/sform), e.g. re-export it from its source")
    return f"cannot be read as an image ({message})", f"give {READABLE}"


def _voxel_bytes(path: Path) -> int | None:
    """Bytes of an image file's voxels, from its header alone (None when the header does not read)."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
        pixel = sitk.Image([1] * reader.GetDimension(), reader.GetPixelID(), reader.GetNumberOfComponents())
    except RuntimeError:
        return None
    voxels = 1
    for n in reader.GetSize():
        voxels *= n
    return voxels * pixel.GetSizeOfPixelComponent() * reader.GetNumberOfComponents()


def _sitk_message(error: BaseException) -> str:
    """A SimpleITK exception's message without its preamble (the throwing function, the C++ source file and line):
    every line that says why, joined."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    reasons = [line.removeprefix("sitk::ERROR:").strip() for line in lines
               if not line.startswith("Exception thrown in") and not re.search(r"\.(cxx|hxx|h|cpp):\d+:?$", line)]
    reasons = [reason for reason in reasons if reason]
    return " ".join(reasons) if reasons else (lines[-1] if lines else type(error).__name__)
