"""MetaRegistration engine: registration networks, losses, the iterative method, exact geometry, I/O and the CLI.

The public API (what a researcher uses; each name is imported on first use, so ``import metareg`` stays cheap)::

    import metareg

    fixed = metareg.read_image("fixed.nii.gz")
    moving = metareg.read_image("moving.nii.gz")
    model = metareg.load_model("brain-mr-3d-reptile")
    result = metareg.register(fixed, moving, metareg.NetworkMethod(model, adapt_steps=5))
    print(result.report.summary_line())
    metareg.write_image(result.warped, "warped.nii.gz")

The packages show the layers: :mod:`metareg.core` is the registration library, :mod:`metareg.learning` trains
networks on it, and :mod:`metareg.app` is the command line (``metareg --help``), the demo and the GUI's worker. The
engine never imports Slicer, VTK or Qt.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: Public name → the module that defines it (``None``: the name is that module itself).
_EXPORTS = {
    "register": "metareg.core.registration",
    "NetworkMethod": "metareg.core.registration",
    "RegistrationResult": "metareg.core.registration",
    "RegistrationReport": "metareg.core.report",
    "IterativeConfig": "metareg.core.iterative",
    "LossConfig": "metareg.core.losses",
    "ModelCard": "metareg.core.card",
    "LoadedModel": "metareg.core.modelio",
    "load_model": "metareg.core.modelio",
    "save_model": "metareg.core.modelio",
    "RegistrationNetwork": "metareg.core.networks",
    "Grid": "metareg.core.geometry",
    "read_image": "metareg.core.imageio",
    "write_image": "metareg.core.imageio",
    "Landmarks": "metareg.core.landmarks",
    "read_landmarks": "metareg.core.landmarks",
    "write_landmarks": "metareg.core.landmarks",
    "MetaRegError": "metareg.core.errors",
    "InputError": "metareg.core.errors",
    "ModelError": "metareg.core.errors",
    "Cancelled": "metareg.core.errors",
    "metrics": None,
}
_MODULES = {"metrics": "metareg.core.metrics"}

__all__ = [
    "__version__",
    "register",
    "NetworkMethod",
    "RegistrationResult",
    "RegistrationReport",
    "IterativeConfig",
    "LossConfig",
    "ModelCard",
    "LoadedModel",
    "load_model",
    "save_model",
    "RegistrationNetwork",
    "Grid",
    "read_image",
    "write_image",
    "Landmarks",
    "read_landmarks",
    "write_landmarks",
    "MetaRegError",
    "InputError",
    "ModelError",
    "Cancelled",
    "metrics",
]


def __getattr__(name: str) -> Any:
    """Import a public name on first use (PEP 562): the command line starts without loading torch."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'metareg' has no attribute {name!r}")
    module = _EXPORTS[name]
    if module is None:
        value = importlib.import_module(_MODULES[name])
    else:
        value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:  # what type checkers and editors see
    from metareg.core import metrics
    from metareg.core.card import ModelCard
    from metareg.core.errors import Cancelled, InputError, MetaRegError, ModelError
    from metareg.core.geometry import Grid
    from metareg.core.imageio import read_image, write_image
    from metareg.core.iterative import IterativeConfig
    from metareg.core.landmarks import Landmarks, read_landmarks, write_landmarks
    from metareg.core.losses import LossConfig
    from metareg.core.modelio import LoadedModel, load_model, save_model
    from metareg.core.networks import RegistrationNetwork
    from metareg.core.registration import NetworkMethod, RegistrationResult, register
    from metareg.core.report import RegistrationReport
