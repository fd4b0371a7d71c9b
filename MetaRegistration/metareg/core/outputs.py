"""Writing a command's output files: all checked before any work, then written as one set (all or nothing), each
file atomically; JSON reports with non-finite numbers as null, and ITK transform files read back to check them.

The command line (:mod:`metareg.app.cli`) and the demo write through :class:`Outputs`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Sequence

import SimpleITK as sitk

from metareg.core.errors import OutputError
from metareg.core.imageio import (
    WRITE_FAILED_HINT,
    atomic_output,
    check_output_path,
    output_files,
    scratch_folder,
    shared_file,
)
from metareg.core.report import json_safe


class Outputs:
    """The files a command will write: checked up front, then written; if one fails, the ones written are removed.

    ``inputs``: ``(option, path)`` of every file the command reads; no output may be one of them (or a companion file
    of one, or the same file through a link): :func:`metareg.core.imageio.check_output_path`.
    """

    def __init__(self, inputs: Sequence[tuple[str, str | Path | None]] = ()) -> None:
        self.inputs = list(inputs)
        self.planned: list[tuple[str, Path, Callable[[Path], None]]] = []

    def add(self, option: str, path: str | None, writer: Callable[[Path], None]) -> None:
        if path is None:
            return
        target = check_output_path(path, option, self.inputs)
        shared = shared_file(target, [(other, planned) for other, planned, _ in self.planned])
        if shared:
            file, other, other_path, other_file = shared
            if (file, other_file) == (target, other_path):
                raise OutputError(f"{option} {target}: is also given as {other} (give each output its own file)")
            raise OutputError(f"{option} {target}: {file.name} is also a file of {other} {other_path} (a format's "
                              "companion files; give each output its own file name)")
        self.planned.append((option, target, writer))

    def check(self) -> None:
        """Fail now, before the work, if any output folder cannot be written. Existing files are not touched."""
        for option, target, _ in self.planned:
            folder = target.parent
            if not os.access(folder, os.W_OK | os.X_OK):
                raise OutputError(f"{option} {target}: folder {folder} is not writable (choose another folder)")
            scratch_folder(target, option).rmdir()

    def write(self) -> None:
        """Write every planned output; if one fails (or the run is interrupted), remove what was written and put back
        every file it replaced, companion files included (the ``.zraw`` of a ``.mhd``).

        The set is written as one unit: another ``metareg`` run writing any of the same files waits until this one
        has written all of its own (:func:`_output_locks`), so two runs never leave a mixed set.
        """
        with _output_locks([target for _, target, _ in self.planned]):
            self._write()

    def _write(self) -> None:
        kept: list[tuple[Path, Path]] = []  # (file that existed, hidden hard link to its old content)
        created: list[Path] = []  # files that did not exist
        try:
            for option, target, writer in self.planned:
                new = []
                for file in output_files(target):
                    if os.path.lexists(file):
                        kept.append((file, _keep(file, option)))
                    else:
                        new.append(file)
                try:
                    writer(target)
                finally:
                    created += [file for file in new if os.path.lexists(file)]
        except BaseException:
            for file in created:
                with contextlib.suppress(OSError):
                    file.unlink()
            for file, old in kept:
                with contextlib.suppress(OSError):
                    os.replace(old, file)
            raise
        finally:
            for _, old in kept:
                shutil.rmtree(old.parent, ignore_errors=True)


@contextlib.contextmanager
def _output_locks(targets: Sequence[Path]):
    """Hold an exclusive lock for each output path (in the system's temporary folder, keyed by the resolved path, so
    nothing is added beside the outputs) while a set is written; taken in one order, so two runs cannot deadlock.
    POSIX only (``fcntl``); elsewhere the set is written unlocked."""
    try:
        import fcntl
    except ImportError:  # Windows
        yield
        return
    import hashlib

    folder = Path(tempfile.gettempdir()) / "metareg-output-locks"
    folder.mkdir(mode=0o1777, exist_ok=True)
    keys = sorted({hashlib.sha256(str(Path(target).resolve()).encode()).hexdigest()[:32] for target in targets})
    handles = []
    try:
        for key in keys:
            handle = open(folder / f"{key}.lock", "a+b")  # noqa: SIM115 - closed below
            handles.append(handle)
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        yield
    finally:
        for handle in reversed(handles):
            with contextlib.suppress(OSError):
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
            handle.close()


def _keep(file: Path, option: str) -> Path:
    """A hidden hard link (or copy) of ``file`` beside it, to restore it if a later output fails."""
    folder = scratch_folder(file, option)
    kept = folder / file.name
    try:
        try:
            os.link(file, kept, follow_symlinks=False)
        except OSError:
            shutil.copy2(file, kept, follow_symlinks=False)
    except OSError as error:
        shutil.rmtree(folder, ignore_errors=True)
        raise OutputError(f"{option} {file}: cannot write in {file.parent} ({error.strerror or error})") from error
    return kept


def write_json(data: dict, path: Path, option: str) -> None:
    with atomic_output(path, option) as temporary:
        temporary.write_text(json.dumps(json_safe(data), indent=2) + "\n")


def check_transform_name(path: str | Path, option: str) -> None:
    if not Path(path).name.endswith((".h5", ".hdf5", ".tfm", ".txt")):
        raise OutputError(f"{option} {path}: give an ITK transform file name ending in .h5 (or .tfm)")


def write_transform(field: sitk.Image, path: Path, option: str) -> None:
    from metareg.core.geometry import field_to_transform

    check_transform_name(path, option)
    with atomic_output(path, option) as temporary:
        transform = field_to_transform(field)
        sitk.WriteTransform(transform, str(temporary))
        # ITK's text writer (.tfm) ignores a full disk: read the file back and count its parameters
        expected = (transform.GetNumberOfParameters(), transform.GetNumberOfFixedParameters())
        del transform  # a copy of the field: not kept while the file is read back
        try:
            written = sitk.ReadTransform(str(temporary))
            counts = (written.GetNumberOfParameters(), written.GetNumberOfFixedParameters())
        except RuntimeError:
            counts = (0, 0)
        if counts != expected:
            raise OutputError(f"{option} {path}: the file written is not the whole transform (it reads back with "
                              f"{counts[0]} of {expected[0]} parameters); {WRITE_FAILED_HINT}")
