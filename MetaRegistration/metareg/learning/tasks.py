"""Tasks for training: named sets of image pairs from one domain, and the tensors a network trains on.

A task folder (as ``metareg data fetch`` builds them, see DATA.md) holds ``task.json`` and ``pairs.csv`` with the
columns ``fixed,moving[,fixed_landmarks,moving_landmarks,fixed_labels,moving_labels]`` (paths relative to the
folder). A single pair CSV is a task too. In memory, pairs can also be built from images directly: all-to-one
(atlas), adjacent slices of a volume (seed 000), consecutive frames of a cine.

:class:`TaskData` prepares each pair once, exactly as registration will (:func:`metareg.core.preprocess.prepare_pair`:
model grid placed on the fixed image, intensities normalised as the card says), and keeps the tensors in memory.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import SimpleITK as sitk
import torch

from metareg.core.card import GridSpec, Normalisation
from metareg.core.errors import InputError
from metareg.core.imageio import read_image
from metareg.core.preprocess import prepare_pair

PAIR_COLUMNS = ("fixed", "moving", "fixed_landmarks", "moving_landmarks", "fixed_labels", "moving_labels")


@dataclass
class Pair:
    """One fixed/moving pair: file paths or in-memory images (``fixed_image``/``moving_image`` win when set)."""

    fixed: str | None = None
    moving: str | None = None
    fixed_landmarks: str | None = None
    moving_landmarks: str | None = None
    fixed_labels: str | None = None
    moving_labels: str | None = None
    fixed_image: sitk.Image | None = field(default=None, repr=False)
    moving_image: sitk.Image | None = field(default=None, repr=False)

    def images(self) -> tuple[sitk.Image, sitk.Image]:
        assert (self.fixed_image is not None or self.fixed is not None) and \
            (self.moving_image is not None or self.moving is not None), "a pair needs its images or their paths"
        fixed = self.fixed_image if self.fixed_image is not None else read_image(str(self.fixed), "pair fixed")
        moving = self.moving_image if self.moving_image is not None else read_image(str(self.moving), "pair moving")
        return fixed, moving


@dataclass
class Task:
    """A named set of pairs from one domain."""

    name: str
    pairs: list[Pair]
    dimension: int | None = None
    role: str = "source"
    info: dict = field(default_factory=dict)


@dataclass
class PairRow:
    """One data row of a pairs CSV: its line number, and the pair or why the row cannot be used."""

    line: int
    pair: Pair | None
    problem: str | None = None


def read_pair_rows(path: str | Path, name: str = "--pairs") -> list[PairRow]:
    """Every data row of a pairs CSV (at least ``fixed,moving`` and optionally the other :data:`PAIR_COLUMNS`;
    relative paths are relative to the CSV's folder, empty cells are None, lines starting with ``#`` are comments).

    A row that cannot be used (not UTF-8, more cells than the header, no fixed or moving path) is returned with its
    problem instead of a pair, so a batch can report it and go on. Raises InputError only for the file as a whole:
    missing, unreadable, or without a ``fixed,moving`` header.
    """
    path = Path(path)
    label = f"{name} {path}"
    if not path.is_file():
        raise InputError(label, "does not exist", "give a CSV with columns fixed,moving")
    try:
        lines = path.read_bytes().splitlines()
    except OSError as error:
        raise InputError(label, f"cannot be read ({error.strerror or error})") from None
    numbered = [(number, line) for number, line in enumerate(lines, start=1)
                if line.strip() and not line.lstrip().startswith(b"#")]
    header: list[str] | None = None
    if numbered:
        try:
            header = [cell.strip() for cell in next(csv.reader([numbered[0][1].decode("utf-8-sig")]))]
        except UnicodeDecodeError:
            header = None
    if not header or "fixed" not in header or "moving" not in header:
        raise InputError(label, "needs a header line with at least the columns fixed,moving (UTF-8 CSV)")
    unknown = [column for column in header if column not in PAIR_COLUMNS]
    if unknown:
        raise InputError(label, f"has unknown columns {', '.join(unknown)}", f"known: {', '.join(PAIR_COLUMNS)}")

    def resolve(value: str | None) -> str | None:
        if not value or not value.strip():
            return None
        candidate = Path(value.strip())
        return str(candidate if candidate.is_absolute() else path.parent / candidate)

    rows = []
    for number, raw in numbered[1:]:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            rows.append(PairRow(number, None, f"line {number} is not UTF-8 text (byte {raw[error.start]:#04x} at "
                                              f"column {error.start + 1}); save the CSV as UTF-8"))
            continue
        cells = next(csv.reader([text]))
        if len(cells) > len(header):
            rows.append(PairRow(number, None, f"line {number} has {len(cells)} cells, the header {len(header)}"))
            continue
        values = dict(zip(header, cells))
        paths = {column: resolve(values.get(column)) for column in PAIR_COLUMNS}
        pair = Pair(fixed=paths["fixed"], moving=paths["moving"], fixed_landmarks=paths["fixed_landmarks"],
                    moving_landmarks=paths["moving_landmarks"], fixed_labels=paths["fixed_labels"],
                    moving_labels=paths["moving_labels"])
        missing = [column for column in ("fixed", "moving") if getattr(pair, column) is None]
        if missing:
            rows.append(PairRow(number, None, f"line {number} has no {' or '.join(missing)} path"))
            continue
        rows.append(PairRow(number, pair))
    return rows


def read_pairs_csv(path: str | Path, name: str = "--pairs") -> list[Pair]:
    """The pairs of a CSV (:func:`read_pair_rows`), all of whose rows must be usable (training needs every pair)."""
    rows = read_pair_rows(path, name)
    for row in rows:
        if row.problem is not None:
            raise InputError(f"{name} {path}", row.problem)
    return [row.pair for row in rows if row.pair is not None]


def load_task(spec: str | Path, data_dir: str | Path | None = None) -> Task:
    """A task from a task folder, a task name in ``<data_dir>/tasks``, or a pair CSV."""
    path = Path(spec)
    if path.suffix == ".csv":
        return Task(name=path.stem, pairs=read_pairs_csv(path))
    if not path.is_dir() and data_dir is not None:
        path = Path(data_dir) / "tasks" / str(spec)
    if not (path / "pairs.csv").is_file():
        hint = "run `metareg data fetch` first, or give a task folder or a pairs CSV"
        raise InputError(f"task {spec}", f"no pairs.csv found (looked in {path})", hint)
    info = json.loads((path / "task.json").read_text()) if (path / "task.json").is_file() else {}
    return Task(name=info.get("name", path.name), pairs=read_pairs_csv(path / "pairs.csv", f"task {spec}"),
                dimension=info.get("dimension"), role=info.get("role", "source"), info=info)


def default_data_dir() -> Path:
    """Where ``metareg data fetch`` builds the tasks and the learning commands look for them: ``$METAREG_DATA_DIR``
    (``~`` expanded) when it is set and not empty, else ``~/.cache/metareg/data``. The one definition."""
    import os

    env = os.environ.get("METAREG_DATA_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "metareg" / "data"


# ---------------------------------------------------------------------------------------------------------------------
# Pair builders for images in memory
# ---------------------------------------------------------------------------------------------------------------------


def atlas_pairs(images: Sequence[sitk.Image], atlas: sitk.Image) -> list[Pair]:
    """All-to-one: the atlas is the fixed image of every pair."""
    return [Pair(fixed_image=atlas, moving_image=image) for image in images]


def volume_slice(volume: sitk.Image, index: int, axis: int = 2) -> sitk.Image:
    """The 2D slice ``index`` along ITK index ``axis`` of a 3D volume, with its in-plane spacing and origin.

    Its 2D direction is the in-plane block of the volume's direction, made orthonormal (the nearest rotation or
    reflection, by polar decomposition): for an oblique volume the block alone is not a valid 2D direction.
    """
    size = list(volume.GetSize())
    size[axis] = 0
    start = [0, 0, 0]
    start[axis] = index
    plane = sitk.Extract(volume, size, start, sitk.ExtractImageFilter.DIRECTIONCOLLAPSETOGUESS)
    keep = [a for a in range(3) if a != axis]
    block = np.asarray(volume.GetDirection()).reshape(3, 3)[np.ix_(keep, keep)]
    u, _, vt = np.linalg.svd(block)
    plane.SetDirection(tuple((u @ vt).ravel()))
    return plane


def adjacent_slice_pairs(volume: sitk.Image, axis: int = 2, step: int = 1, min_foreground: float = 0.1) -> list[Pair]:
    """Seed 000's pairs: slice k (fixed) and slice k + step (moving) of a 3D volume along index ``axis``.

    Slices with less than ``min_foreground`` of their voxels above the volume's 10th percentile are skipped.
    Each moving slice is given the fixed slice's geometry (they are neighbours, to be registered in-plane).
    """
    if volume.GetDimension() != 3:
        raise InputError("volume", f"is {volume.GetDimension()}-D; adjacent slices need a 3-D volume")
    threshold = float(np.percentile(sitk.GetArrayViewFromImage(volume), 10))
    pairs = []
    for k in range(0, volume.GetSize()[axis] - step):
        fixed = volume_slice(volume, k, axis)
        moving = volume_slice(volume, k + step, axis)
        moving.CopyInformation(fixed)
        if float((sitk.GetArrayViewFromImage(fixed) > threshold).mean()) < min_foreground:
            continue
        pairs.append(Pair(fixed_image=fixed, moving_image=moving))
    return pairs


# ---------------------------------------------------------------------------------------------------------------------
# Tensors for training
# ---------------------------------------------------------------------------------------------------------------------


class TaskData:
    """A task's pairs prepared on the model grid, cached: ``tensors(i) -> (fixed_t, moving_t)``, each ``(1, 1, *S)``.

    Every pair is resampled onto a grid of the card's ``grid`` placed on its fixed image, so all tensors of a task
    have the same shape (its ``size`` is required for batching). With ``affine=True`` the moving image
    is first pre-aligned to the fixed one (:func:`metareg.core.prealign.affine_prealign`, once per pair), as
    :func:`metareg.core.registration.register` does for a model whose card says ``"prealign": "affine"``.
    """

    def __init__(self, task: Task, grid_spec: GridSpec, normalisation: Normalisation, affine: bool = False):
        if grid_spec is None or grid_spec.size is None:
            raise InputError(f"task {task.name}", "training needs a model grid size (e.g. --grid 128,128)")
        if not task.pairs:
            raise InputError(f"task {task.name}", "has no pairs")
        self.task = task
        self.grid_spec = grid_spec
        self.normalisation = normalisation
        self.affine = affine
        self._cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def __len__(self) -> int:
        return len(self.task.pairs)

    def tensors(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if index not in self._cache:
            fixed, moving = self.task.pairs[index].images()
            expected = len(self.grid_spec.size or ())
            if fixed.GetDimension() != expected or moving.GetDimension() != expected:
                raise InputError(f"task {self.task.name} pair {index}",
                                 f"has {fixed.GetDimension()}-D images but the model grid is {expected}-D")
            prealign = None
            if self.affine:
                from metareg.core.prealign import affine_prealign

                prealign = affine_prealign(fixed, moving)
            _, fixed_t, moving_t = prepare_pair(fixed, moving, self.grid_spec, self.normalisation, prealign)
            self._cache[index] = (fixed_t, moving_t)
        return self._cache[index]
