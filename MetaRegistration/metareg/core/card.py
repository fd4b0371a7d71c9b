"""The model card: what a trained network is and how it is used, as one typed, validated object.

A card is stored as JSON beside its weights (``NAME.safetensors`` + ``NAME.json``, :mod:`metareg.core.modelio`). Its
fields, in file order:

``format_version``  :data:`CARD_FORMAT_VERSION`
``name``, ``purpose``, ``domain``   text for users
``architecture``    the network config (:meth:`metareg.core.networks.RegistrationNetwork.to_config`)
``grid``            :class:`GridSpec`: the canonical model grid placed on the fixed image
``normalisation``   :class:`Normalisation`: intensity preprocessing (:mod:`metareg.core.preprocess`)
``loss``            :class:`metareg.core.losses.LossConfig`: the training loss, also used for adaptation and refinement
``prealign``        ``"none"`` or ``"affine"``: what every pair gets before the network
``adaptation``      :class:`AdaptationDefaults`: test-time adaptation's defaults
``refinement``      :class:`RefinementDefaults`: the refinement the card asks for after the network
``training``        provenance: data, steps, parent model, loss curve (free-form JSON)
``metrics``         measured results, each with the command that measured them (free-form JSON)
``sha256``          hex digest of the ``.safetensors`` file

Every field is checked when a card is read (:meth:`ModelCard.from_dict`): types, ranges, known keys only, so a
misspelt or out-of-range entry is refused with the card and the field named, never silently replaced. The fields
that change what a registration does (:data:`SETTINGS_FIELDS`) are also authenticated: their digest
(:meth:`ModelCard.settings_digest`) is stored in the weights file's metadata when the model is saved, and a card whose
settings were edited afterwards no longer matches it (:func:`metareg.core.modelio.load_model`). ``name``, ``purpose``,
``domain``, ``training`` and ``metrics`` are descriptions; benchmarks update ``metrics`` in place.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from metareg.core.checks import check_bool, check_choice, check_float, check_int
from metareg.core.errors import ModelError, ParameterError
from metareg.core.losses import LossConfig

CARD_FORMAT_VERSION = 1
PREALIGN_CHOICES = ("none", "affine")
#: The card fields that decide what a registration with the model does; their digest is kept in the weights file.
SETTINGS_FIELDS = ("format_version", "architecture", "grid", "normalisation", "loss", "prealign", "adaptation",
                   "refinement")
#: Model grids: per axis, voxels; and in all.
GRID_AXIS_RANGE = (4, 4096)
MAX_GRID_VOXELS = 256**3
#: Network widths a card may ask for (per layer), and the most layers per channel list.
MAX_CHANNELS, MAX_LAYERS = 1024, 16
#: Most refinement steps a card may ask for by default (the zoo asks for 30 and 200).
MAX_REFINE_STEPS = 10_000
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class GridSpec:
    """The model grid, in ITK index order (x, y[, z]); see :func:`metareg.core.geometry.model_grid_on_fixed`.

    Attributes:
        size: voxels per axis, or None (derived from the fixed image).
        spacing: mm per axis, or None (derived from the fixed image).
    """

    size: tuple[int, ...] | None = None
    spacing: tuple[float, ...] | None = None

    def __post_init__(self):
        if self.size is not None:
            size = _sequence(self.size, "grid.size")
            size = tuple(check_int(n, "grid.size", *GRID_AXIS_RANGE) for n in size)
            total = 1
            for n in size:
                total *= n
            if total > MAX_GRID_VOXELS:
                raise ParameterError("grid.size", f"has {total} voxels, more than {MAX_GRID_VOXELS}")
            object.__setattr__(self, "size", size)
        if self.spacing is not None:
            spacing = _sequence(self.spacing, "grid.spacing")
            object.__setattr__(self, "spacing", tuple(check_float(s, "grid.spacing", maximum=1000.0, positive=True)
                                                      for s in spacing))
        if self.size is not None and self.spacing is not None and len(self.size) != len(self.spacing):
            raise ParameterError("grid.spacing", f"has {len(self.spacing)} axes but grid.size has {len(self.size)}")

    @property
    def dim(self) -> int | None:
        axes = self.size if self.size is not None else self.spacing
        return None if axes is None else len(axes)

    def to_dict(self) -> dict:
        return {"size": None if self.size is None else list(self.size),
                "spacing": None if self.spacing is None else list(self.spacing)}


@dataclass(frozen=True)
class Normalisation:
    """Intensity normalisation: the ``low``-th to ``high``-th percentiles of the original image mapped to [0, 1] and
    clipped, then optionally histogram equalisation (:func:`metareg.core.preprocess.image_tensor`)."""

    method: str = "percentile"
    low: float = 1.0
    high: float = 99.0
    histogram_equalisation: bool = False

    def __post_init__(self):
        check_choice(self.method, "normalisation.method", ("percentile",))
        low = check_float(self.low, "normalisation.low", 0.0, 100.0)
        high = check_float(self.high, "normalisation.high", 0.0, 100.0)
        if not low < high:
            raise ParameterError("normalisation.high", f"must be above normalisation.low ({low:g}), got {high:g}")
        object.__setattr__(self, "low", low)
        object.__setattr__(self, "high", high)
        check_bool(self.histogram_equalisation, "normalisation.histogram_equalisation")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class AdaptationDefaults:
    """Test-time adaptation's defaults: the Adam step size (the training run's by default)."""

    learning_rate: float = 1e-4

    def __post_init__(self):
        object.__setattr__(self, "learning_rate", check_float(self.learning_rate, "adaptation.learning_rate",
                                                              maximum=1.0, positive=True))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class RefinementDefaults:
    """The refinement a card asks for after the network (:func:`metareg.core.registration.refinement_config`).

    Attributes:
        steps: iterative steps on the network's field by default (0: the network's field as is).
        regulariser_weight: the refinement's regulariser weight, None for the card's loss weight.
    """

    steps: int = 0
    regulariser_weight: float | None = None

    def __post_init__(self):
        check_int(self.steps, "refinement.steps", 0, MAX_REFINE_STEPS)
        if self.regulariser_weight is not None:
            object.__setattr__(self, "regulariser_weight",
                               check_float(self.regulariser_weight, "refinement.regulariser_weight", 0.0, 1e4))

    def to_dict(self) -> dict:
        return {"steps": self.steps} | ({} if self.regulariser_weight is None
                                        else {"regulariser_weight": self.regulariser_weight})


@dataclass(frozen=True)
class ModelCard:
    """A model's card; see the module docstring for the fields. Built and checked by :meth:`from_dict`."""

    architecture: dict
    grid: GridSpec = field(default_factory=GridSpec)
    normalisation: Normalisation = field(default_factory=Normalisation)
    loss: LossConfig = field(default_factory=LossConfig)
    prealign: str = "none"
    adaptation: AdaptationDefaults = field(default_factory=AdaptationDefaults)
    refinement: RefinementDefaults = field(default_factory=RefinementDefaults)
    name: str = ""
    purpose: str = ""
    domain: str = ""
    training: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    sha256: str = ""
    format_version: int = CARD_FORMAT_VERSION

    def __post_init__(self):
        check_int(self.format_version, "format_version", CARD_FORMAT_VERSION, CARD_FORMAT_VERSION)
        object.__setattr__(self, "architecture", _check_architecture(self.architecture))
        for name, kind in (("grid", GridSpec), ("normalisation", Normalisation), ("loss", LossConfig),
                           ("adaptation", AdaptationDefaults), ("refinement", RefinementDefaults)):
            if not isinstance(getattr(self, name), kind):
                raise ParameterError(name, f"must be a {kind.__name__}, got {type(getattr(self, name)).__name__}")
        check_choice(self.prealign, "prealign", PREALIGN_CHOICES)
        if self.grid.dim is not None and self.grid.dim != self.dim:
            raise ParameterError("grid", f"has {self.grid.dim} axes but the network is {self.dim}-D")
        for name in ("name", "purpose", "domain"):
            if not isinstance(getattr(self, name), str):
                raise ParameterError(name, f"must be text, got {getattr(self, name)!r}")
        for name in ("training", "metrics"):
            if not isinstance(getattr(self, name), dict):
                raise ParameterError(name, f"must be a JSON object, got {type(getattr(self, name)).__name__}")
        if self.sha256 and not (isinstance(self.sha256, str) and _SHA256.fullmatch(self.sha256)):
            raise ParameterError("sha256", f"must be 64 lowercase hex digits, got {self.sha256!r}")

    @property
    def dim(self) -> int:
        """The network's (and the images') dimension, 2 or 3."""
        return int(self.architecture["dim"])

    @property
    def affine(self) -> bool:
        """Whether the model was trained on affinely pre-aligned pairs, so registration pre-aligns by default."""
        return self.prealign == "affine"

    def replace(self, **changes: Any) -> "ModelCard":
        """A copy with ``changes`` (checked again)."""
        return dataclasses.replace(self, **changes)

    def settings(self) -> dict:
        """The fields that decide what a registration with this model does (:data:`SETTINGS_FIELDS`), as JSON."""
        data = self.to_dict()
        return {name: data[name] for name in SETTINGS_FIELDS}

    def settings_digest(self) -> str:
        """sha256 of :meth:`settings` in a canonical JSON form (sorted keys, no spaces)."""
        text = json.dumps(self.settings(), sort_keys=True, separators=(",", ":"), allow_nan=False)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def to_dict(self) -> dict:
        """The card as JSON-ready values, in file order."""
        return {
            "format_version": self.format_version, "name": self.name, "purpose": self.purpose, "domain": self.domain,
            "architecture": dict(self.architecture), "grid": self.grid.to_dict(),
            "normalisation": self.normalisation.to_dict(), "loss": self.loss.to_dict(), "prealign": self.prealign,
            "adaptation": self.adaptation.to_dict(), "refinement": self.refinement.to_dict(),
            "training": self.training, "metrics": self.metrics, "sha256": self.sha256,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "model card") -> "ModelCard":
        """Check and build a card from its JSON; a ModelError naming ``source`` and the field otherwise.

        Absent sections take their defaults (``prealign`` ``"none"``, no refinement); unknown keys are refused.
        """
        try:
            if not isinstance(data, Mapping):
                raise ParameterError("card", f"must be a JSON object, got {type(data).__name__}")
            unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)})
            if unknown:
                raise ParameterError(unknown[0], "is not a card field (misspelt?)")
            if "architecture" not in data:
                raise ParameterError("architecture", "is missing")
            values: dict[str, Any] = {}
            for name, kind in (("grid", GridSpec), ("normalisation", Normalisation), ("loss", LossConfig),
                               ("adaptation", AdaptationDefaults), ("refinement", RefinementDefaults)):
                section = data.get(name)
                if section is None:
                    continue
                if not isinstance(section, Mapping):
                    raise ParameterError(name, f"must be a JSON object, got {section!r}")
                known = {f.name for f in dataclasses.fields(kind)}
                extra = sorted(set(section) - known)
                if extra:
                    raise ParameterError(f"{name}.{extra[0]}",
                                         f"is not a {name} setting (known: {', '.join(sorted(known))})")
                values[name] = kind(**section)
            for name in ("architecture", "name", "purpose", "domain", "training", "metrics", "sha256",
                         "format_version"):
                if name in data:
                    values[name] = data[name]
            if data.get("prealign") is not None:
                values["prealign"] = data["prealign"]
            for name in ("training", "metrics"):
                if values.get(name) is None:
                    values.pop(name, None)
            return cls(**values)
        except ParameterError as error:
            field_name = error.input_name.replace("LossConfig.", "loss.")
            raise ModelError(f"{source}: {field_name}: {error.problem}"
                             " (restore the card from where the model came from, or retrain the model)") from None


def _sequence(value: Any, name: str) -> tuple:
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__"):
        raise ParameterError(name, f"must be a list, got {value!r}")
    return tuple(value)


def _check_architecture(architecture: Any) -> dict:
    """The network config's generic entries (family, dim, widths, integration); the family checks the rest when the
    network is built."""
    from metareg.core.networks import FAMILIES

    if not isinstance(architecture, Mapping):
        raise ParameterError("architecture", f"must be a JSON object, got {architecture!r}")
    family = check_choice(architecture.get("family"), "architecture.family", FAMILIES)
    check_int(architecture.get("dim"), "architecture.dim", 2, 3)
    known = {"family"} | FAMILIES[family].parameter_names()
    for key, value in architecture.items():
        if key not in known:
            raise ParameterError(f"architecture.{key}", f"is not a setting of the {family} family "
                                 f"(known: {', '.join(sorted(known))})")
        if key.endswith("channels"):
            widths = _sequence(value, f"architecture.{key}")
            if not 1 <= len(widths) <= MAX_LAYERS:
                raise ParameterError(f"architecture.{key}", f"needs 1 to {MAX_LAYERS} entries, got {len(widths)}")
            for width in widths:
                check_int(width, f"architecture.{key}", 1, MAX_CHANNELS)
    if "diffeomorphic" in architecture:
        check_bool(architecture["diffeomorphic"], "architecture.diffeomorphic")
    if "integration_steps" in architecture:
        check_int(architecture["integration_steps"], "architecture.integration_steps", 0, 20)
    return {key: (list(value) if isinstance(value, tuple) else value) for key, value in architecture.items()}
