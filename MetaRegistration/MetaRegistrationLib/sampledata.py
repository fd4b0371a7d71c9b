"""Loading the sample data into a scene through MRML storage nodes (works in desktop Slicer and in slicer-core)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import slicer


def resource_path(*parts: str) -> Path:
    """A file or folder of ``Resources/``: beside the module when built or installed in Slicer, at the repository's
    top when Slicer runs the module from a checkout (Additional module paths)."""
    here = Path(__file__).resolve().parent.parent  # the module folder
    for candidate in (here.joinpath("Resources", *parts), here.parent.joinpath("Resources", *parts)):
        if candidate.exists():
            return candidate
    raise FileNotFoundError(f"no Resources/{'/'.join(parts)} beside {here} or {here.parent}")


def sample_data_dir() -> Path:
    """``Resources/SampleData``."""
    return resource_path("SampleData")


def load_volume(scene, path: str | Path, name: str | None = None):
    """Read an image file (NIfTI, NRRD, ...) into a new scalar volume node."""
    path = Path(path)
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name or path.name.split(".")[0])
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    storage.SetSingleFile(True)
    if not storage.ReadData(node):
        scene.RemoveNode(node)
        raise OSError(f"cannot read the volume {path}")
    node.CreateDefaultDisplayNodes()
    return node


def load_markups(scene, path: str | Path, name: str | None = None):
    """Read a Slicer Markups JSON file into a new point list node."""
    path = Path(path)
    node = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", name or path.name.split(".")[0])
    storage = slicer.vtkMRMLMarkupsJsonStorageNode()
    storage.SetFileName(str(path))
    if not storage.ReadData(node):
        scene.RemoveNode(node)
        raise OSError(f"cannot read the markups {path}")
    node.CreateDefaultDisplayNodes()
    return node


@dataclass
class Brain3D:
    """The brain3d sample pair in a scene."""

    fixed_volume: object
    moving_volume: object
    fixed_landmarks: object
    moving_landmarks: object


def load_brain3d(scene, data_dir: Path | None = None) -> Brain3D:
    """Load the brain3d fixed/moving T1 volumes and their 32 matching landmarks."""
    data_dir = Path(data_dir or sample_data_dir())
    return Brain3D(
        load_volume(scene, data_dir / "brain3d_fixed_T1.nii.gz", "brain3d fixed T1"),
        load_volume(scene, data_dir / "brain3d_moving_T1.nii.gz", "brain3d moving T1"),
        load_markups(scene, data_dir / "brain3d_fixed_landmarks.mrk.json", "fixed landmarks"),
        load_markups(scene, data_dir / "brain3d_moving_landmarks.mrk.json", "moving landmarks"),
    )
