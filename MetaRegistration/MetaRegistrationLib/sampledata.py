"""Loading the sample data into a scene through MRML storage nodes (works in desktop Slicer and in slicer-core)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import slicer

#: The module folder (the one holding MetaRegistration.py): the source folder of a checkout added to Slicer's
#: module paths, or ``qt-scripted-modules/`` of a build tree or an installed extension.
MODULE_DIR = Path(__file__).resolve().parent.parent


def resource_path(*parts: str) -> Path:
    """A file or folder of the module's own resources (``Icons/``, ``UI/``): ``<module dir>/Resources/...``, the folder
    Slicer reads the module's icon from and ``ScriptedLoadableModule.resourcePath`` points to, in a checkout, a build
    tree and an installed extension alike."""
    path = MODULE_DIR.joinpath("Resources", *parts)
    if not path.exists():
        raise FileNotFoundError(f"no {path}")
    return path


def sample_data_dir() -> Path:
    """``Resources/SampleData``: beside the module in a build tree or an installed extension (the module's
    CMakeLists.txt copies it there), at the repository's top in a checkout (Additional module paths)."""
    for candidate in (MODULE_DIR / "Resources" / "SampleData", MODULE_DIR.parent / "Resources" / "SampleData"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"no Resources/SampleData beside {MODULE_DIR} or {MODULE_DIR.parent}")


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
