"""Builders: each writes one task set from its sources (:class:`TaskSpec` says which sources, and how they pair) with
:class:`TaskWriter`, in the layout :mod:`metareg.app.datasets` describes."""

from __future__ import annotations

import csv
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import SimpleITK as sitk

from metareg.app.datasets.archives import (
    ARCHIVES,
    FUNDUS,
    ITK_PD,
    ITK_PD_RAW,
    MNI2009C_AFIDS,
    MNI2009C_T1,
    MNI2009C_T2,
    Archive,
    DataError,
    Fetcher,
    Log,
    Member,
    quiet,
)
from metareg.app.datasets.imaging import (
    BOX_SPACING_MM,
    MIN_SLICE_FOREGROUND,
    SLICE_SIZE,
    WarpSettings,
    adjacent_pairs,
    background_and_threshold,
    cast_like,
    head_box,
    slice_stack,
    smoothed_to,
    synthetic_warp,
)
from metareg.app.datasets.readers import (
    _resample_2d,
    afids,
    cine_frames,
    high_gradient_points,
)
from metareg.core.landmarks import Landmarks, write_landmarks
from metareg.learning.tasks import PAIR_COLUMNS

BUILDER_VERSION = 1  # bump when a builder changes what it writes; tasks built by another version are rebuilt
ROLES = ("source", "target")
PAIRINGS = ("adjacent-slices", "atlas", "cine-frames", "synthetic-warp", "explicit")





class TaskWriter:
    """Writes one task folder: images, landmarks, labels, pairs.csv and (last) task.json."""

    def __init__(self, folder: Path, spec: "TaskSpec", archives: dict[str, Archive] | None = None,
                 log: Log = quiet):
        self.folder = folder
        self.spec = spec
        self.archives = ARCHIVES if archives is None else archives
        self.log = log
        self.pairs: list[dict[str, str]] = []
        self.images: dict[str, str] = {}
        self.sizes: set[tuple[int, ...]] = set()
        self.spacings: set[tuple[float, ...]] = set()
        self.extra: dict = {}
        for sub in ("images", "landmarks", "labels"):
            (folder / sub).mkdir(parents=True, exist_ok=True)

    def image(self, name: str, image: sitk.Image) -> str:
        """Write ``images/<name>.nii.gz`` (once per name) and return its path relative to the task folder."""
        if name in self.images:
            return self.images[name]
        if image.GetDimension() != self.spec.dimension:
            raise DataError(f"task {self.spec.name}: image {name} is {image.GetDimension()}D, the task is "
                            f"{self.spec.dimension}D")
        relative = f"images/{name}.nii.gz"
        sitk.WriteImage(image, str(self.folder / relative), useCompression=True)
        self.images[name] = relative
        self.sizes.add(tuple(int(s) for s in image.GetSize()))
        self.spacings.add(tuple(round(float(s), 6) for s in image.GetSpacing()))
        return relative

    def landmarks(self, name: str, landmarks: Landmarks) -> str:
        relative = f"landmarks/{name}.mrk.json"
        write_landmarks(landmarks, self.folder / relative)
        return relative

    def labels(self, name: str, image: sitk.Image) -> str:
        relative = f"labels/{name}.nii.gz"
        sitk.WriteImage(image, str(self.folder / relative), useCompression=True)
        return relative

    def pair(self, fixed: str, moving: str, fixed_landmarks: str = "", moving_landmarks: str = "",
             fixed_labels: str = "", moving_labels: str = "") -> None:
        self.pairs.append(dict(zip(PAIR_COLUMNS, (fixed, moving, fixed_landmarks, moving_landmarks, fixed_labels,
                                                  moving_labels))))

    def finish(self) -> dict:
        """Write pairs.csv and task.json; returns the task.json content."""
        if not self.pairs:
            raise DataError(f"task {self.spec.name}: no pairs were made")
        for sub in ("landmarks", "labels"):
            if not any((self.folder / sub).iterdir()):
                (self.folder / sub).rmdir()
        with open(self.folder / "pairs.csv", "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=PAIR_COLUMNS, lineterminator="\n")
            writer.writeheader()
            writer.writerows(self.pairs)
        info = self.spec.describe(self.archives)
        info.update(
            n_images=len(self.images),
            n_pairs=len(self.pairs),
            size=list(next(iter(self.sizes))) if len(self.sizes) == 1 else sorted(list(s) for s in self.sizes),
            spacing_mm=list(next(iter(self.spacings))) if len(self.spacings) == 1
            else sorted(list(s) for s in self.spacings),
            **self.extra,
        )
        (self.folder / "task.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        return info





@dataclass(frozen=True)
class SliceVolume:
    """A 3D volume cut into 2D slices: ``planes`` is ((plane, gap_mm), ...)."""

    name: str
    member: Member
    planes: tuple[tuple[str, float], ...]
    reader: Callable[[Path], sitk.Image] | None = None


@dataclass(frozen=True)
class TaskSpec:
    """What a task is (task.json's descriptive fields) and how it is built from its members."""

    name: str
    dimension: int
    domain: str
    modality: str
    role: str
    pairing: str
    notes: str
    members: tuple[Member, ...]
    build: Callable[["TaskSpec", Fetcher, TaskWriter], None]
    params: dict = field(default_factory=dict, hash=False, compare=False)

    def describe(self, archives: dict[str, Archive] | None = None) -> dict:
        archives = ARCHIVES if archives is None else archives
        sources = []
        for member in self.members:
            archive = archives[member.archive]
            sources.append({"package": archive.package, "version": archive.version, "path_inside": member.path,
                            "licence": archive.licence, "registry": archive.registry, "archive": archive.file,
                            "sha256": archive.sha256})
        return {"name": self.name, "dimension": self.dimension, "domain": self.domain, "modality": self.modality,
                "role": self.role, "pairing": self.pairing, "sources": sources, "notes": self.notes,
                "builder_version": BUILDER_VERSION}


def _read(fetcher: Fetcher, volume: SliceVolume) -> sitk.Image:
    path = fetcher.path(volume.member)
    return volume.reader(path) if volume.reader else sitk.ReadImage(str(path))


def build_slices(spec: TaskSpec, fetcher: Fetcher, writer: TaskWriter) -> None:
    """Adjacent-slice pairs (k, k+1) of every volume and plane in ``spec.params["volumes"]``; near-empty slices out."""
    spacing = spec.params["spacing_mm"]
    for volume in spec.params["volumes"]:
        image = _read(fetcher, volume)
        if image.GetNumberOfComponentsPerPixel() != 1:
            raise DataError(f"{volume.member.path}: expected a scalar volume")
        for plane, gap in volume.planes:
            slices, body_fraction = slice_stack(image, plane, spacing, gap)
            kept = [fraction >= MIN_SLICE_FOREGROUND for fraction in body_fraction]
            pairs = adjacent_pairs(kept)
            for k, j in pairs:
                names = [f"{volume.name}_{plane[:3]}_{i:03d}" for i in (k, j)]
                paths = [writer.image(n, cast_like(slices[i], image.GetPixelID())) for n, i in zip(names, (k, j))]
                writer.pair(*paths)
            writer.log(f"  {volume.name} {plane} every {gap:g} mm: {sum(kept)}/{len(slices)} slices kept, "
                       f"{len(pairs)} pairs")
    for extra in spec.params.get("extra", ()):
        extra(spec, fetcher, writer)


def _itk_pd_pairs(spec: TaskSpec, fetcher: Fetcher, writer: TaskWriter) -> None:
    """ITK's BrainWeb proton-density slice and its known-motion copies (explicit pairs, no landmarks).

    BrainWeb's grid is 1 mm, so the PNGs are given 1 mm pixels. The B-spline-deformed copy is left out: it is the
    2D pair of Resources/SampleData.
    """
    spacing = spec.params["spacing_mm"]

    def load(member: Member) -> sitk.Image:
        image = sitk.ReadImage(str(fetcher.path(member)))
        if image.GetNumberOfComponentsPerPixel() > 1:
            image = sitk.VectorIndexSelectionCast(image, 0)
        image = sitk.Cast(image, sitk.sitkFloat32)
        image.SetSpacing([1.0] * image.GetDimension())
        return image

    def slice_2d(image: sitk.Image) -> sitk.Image:
        return cast_like(_resample_2d(image, spacing, SLICE_SIZE), sitk.sitkUInt8)

    fixed = writer.image("itk_pd", slice_2d(load(ITK_PD["fixed"])))
    for name in ("shifted", "rotated", "rotated_shifted", "rotated_shifted_scaled"):
        writer.pair(fixed, writer.image(f"itk_pd_{name}", slice_2d(load(ITK_PD[name]))))
    fetcher.path(ITK_PD_RAW)  # the .mha's pixel data file, extracted beside it
    stack = load(ITK_PD["three_slices"])
    names = []
    for k in range(stack.GetSize()[2]):
        names.append(writer.image(f"itk_pd3_{k}", slice_2d(stack[:, :, k])))
    for k in range(len(names) - 1):
        writer.pair(names[k], names[k + 1])
    writer.log("  ITK proton-density slices: 4 known-motion pairs, 2 adjacent-slice pairs")


def build_cine(spec: TaskSpec, fetcher: Fetcher, writer: TaskWriter) -> None:
    """Consecutive-frame pairs (k, k+1) of every cine in ``spec.params["cines"]`` ((name, member), ...)."""
    spacing = spec.params["spacing_mm"]
    regions = {}
    for name, member in spec.params["cines"]:
        frames, info = cine_frames(fetcher.path(member), spacing)
        regions[name] = info["region"]
        _, threshold = background_and_threshold(np.stack([sitk.GetArrayViewFromImage(f) for f in frames]))
        kept = [float(np.mean(sitk.GetArrayViewFromImage(f) > threshold)) >= 0.05 for f in frames]
        paths = [writer.image(f"{name}_{k:03d}", cast_like(f, sitk.sitkUInt8)) if kept[k] else ""
                 for k, f in enumerate(frames)]
        for k, j in adjacent_pairs(kept):
            writer.pair(paths[k], paths[j])
        writer.log(f"  {name}: {len(frames)} frames, {len(adjacent_pairs(kept))} pairs")
    writer.extra["ultrasound_regions"] = regions


def build_fundus(spec: TaskSpec, fetcher: Fetcher, writer: TaskWriter) -> None:
    """Tiles of the fundus photograph, each warped by known random mappings; landmarks at strong gradients.

    The green channel (best vessel contrast) is halved in resolution (anti-aliased); a pixel of the result is 1.0
    "mm" by convention (the photograph's physical scale is unknown). Non-overlapping 160-pixel tiles mostly inside
    the fundus disc are split in a checkerboard between the finetune and the test task, so the two never share
    image content. Each tile is the fixed image of ``seeds_per_tile`` pairs; a moving image is the whole photograph
    sampled through ``T`` on the tile's grid (:func:`synthetic_warp`), and the tile's 20 landmarks are mapped exactly.
    """
    photo = sitk.ReadImage(str(fetcher.path(FUNDUS)))
    rgb = sitk.GetArrayFromImage(photo).astype(np.float32)
    green = sitk.GetImageFromArray(rgb[..., 1])
    disc = sitk.GetImageFromArray((rgb.max(axis=-1) > 25).astype(np.float32))
    half = [n // 2 for n in green.GetSize()]
    for image in (green, disc):
        image.SetSpacing((0.5, 0.5))  # so that the halved image has 1.0 pixels
    green = sitk.Resample(smoothed_to(green, (1.0, 1.0)), half, sitk.Transform(), sitk.sitkLinear, (0.25, 0.25),
                          (1.0, 1.0), (1.0, 0.0, 0.0, 1.0), 0.0, sitk.sitkFloat32)
    disc_mask = sitk.GetArrayFromImage(sitk.Resample(disc, green, sitk.Transform(), sitk.sitkNearestNeighbor)) > 0.5
    tile = SLICE_SIZE[0]
    n_tiles = half[0] // tile
    offset = [(n - n_tiles * tile) // 2 for n in half]
    want_parity = 0 if spec.params["split"] == "finetune" else 1
    settings = WarpSettings(max_displacement_mm=(3.0, 6.0), control_spacing_mm=40.0, max_rotation_deg=6.0,
                            max_shift_mm=5.0, gamma=(0.85, 1.15), noise_sd=0.01)
    truths = {}
    for ty in range(n_tiles):
        for tx in range(n_tiles):
            x0, y0 = offset[0] + tx * tile, offset[1] + ty * tile
            inside = disc_mask[y0: y0 + tile, x0: x0 + tile]
            if inside.mean() < 0.8 or (tx + ty) % 2 != want_parity:
                continue
            fixed = sitk.RegionOfInterest(green, [tile, tile], [x0, y0])
            points = high_gradient_points(fixed, 20, 12.0, 14, mask=inside)
            name = f"tile_{ty}{tx}"
            fixed_path = writer.image(name, cast_like(fixed, sitk.sitkUInt8))
            labels = tuple(f"P{i + 1:02d}" for i in range(len(points)))
            fixed_marks = writer.landmarks(name, Landmarks(labels, np.column_stack([points, np.zeros(len(points))])))
            for s in range(spec.params["seeds_per_tile"]):
                seed = spec.params["seed_base"] + 100 * (ty * n_tiles + tx) + s
                pair = synthetic_warp(green, fixed, seed, settings, fixed_points=points, full_scale=255.0)
                moving_name = f"{name}_warp{seed}"
                moving_path = writer.image(moving_name, cast_like(pair.moving, sitk.sitkUInt8))
                moving_points = np.column_stack([pair.moving_points, np.zeros(len(points))])
                moving_marks = writer.landmarks(moving_name, Landmarks(labels, moving_points))
                writer.pair(fixed_path, moving_path, fixed_marks, moving_marks)
                truths[moving_name] = pair.truth
    writer.extra["pixel_size_known"] = False
    (writer.folder / "truth.json").write_text(json.dumps(truths, indent=1) + "\n", encoding="utf-8")
    writer.log(f"  {len(writer.pairs)} synthetic-warp pairs with {20} landmarks each")


def build_brain_3d(spec: TaskSpec, fetcher: Fetcher, writer: TaskWriter) -> None:
    """Every ordered pair of different head volumes, each on the common 2 mm box (inter-subject/template pairs)."""
    paths = []
    for volume in spec.params["volumes"]:
        image = _read(fetcher, volume)
        paths.append(writer.image(volume.name, cast_like(head_box(image), image.GetPixelID())))
        writer.log(f"  {volume.name}: {image.GetSize()} at {np.round(image.GetSpacing(), 3).tolist()} mm -> box")
    for fixed in paths:
        for moving in paths:
            if fixed != moving:
                writer.pair(fixed, moving)


def build_brain_warps(spec: TaskSpec, fetcher: Fetcher, writer: TaskWriter) -> None:
    """The MNI 2009c T1 (fixed, with its 32 AFIDs) against moving images of the T1 or T2 template through known
    random mappings (``spec.params``: contrast "T1w"/"T2w", seeds)."""
    t1 = sitk.ReadImage(str(fetcher.path(MNI2009C_T1)))
    fixed = cast_like(head_box(t1), t1.GetPixelID())
    marks = afids(fetcher.path(MNI2009C_AFIDS))
    fixed_path = writer.image("mni2009c_T1w", fixed)
    fixed_marks = writer.landmarks("mni2009c_T1w", marks)
    contrast = spec.params["contrast"]
    template = t1 if contrast == "T1w" else sitk.ReadImage(str(fetcher.path(MNI2009C_T2)))
    template = smoothed_to(template, [BOX_SPACING_MM] * 3)
    truths = {}
    start = time.monotonic()
    for n, seed in enumerate(spec.params["seeds"], start=1):
        pair = synthetic_warp(template, fixed, seed, WarpSettings(), fixed_points=marks.points_lps, full_scale=10000.0)
        name = f"mni2009c_{contrast}_warp{seed}"
        moving_path = writer.image(name, cast_like(pair.moving, sitk.sitkInt16))
        moving_marks = writer.landmarks(name, Landmarks(marks.labels, pair.moving_points))
        writer.pair(fixed_path, moving_path, fixed_marks, moving_marks)
        truths[name] = pair.truth
        writer.log(f"  warp {n}/{len(spec.params['seeds'])} (seed {seed}): identity TRE "
                   f"{pair.truth['identity_tre_mm']['mean']:.2f} mm mean, {time.monotonic() - start:.0f} s")
    (writer.folder / "truth.json").write_text(json.dumps(truths, indent=1) + "\n", encoding="utf-8")
