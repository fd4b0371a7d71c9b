"""Model files: ``NAME.safetensors`` (weights) + ``NAME.json`` (the card, :class:`metareg.core.card.ModelCard`), loaded
without unpickling.

Two digests tie the pair together: the card's ``sha256`` is that of the weights file, and the weights file's metadata
holds the digest of the card's settings (:meth:`metareg.core.card.ModelCard.settings_digest`, key
:data:`SETTINGS_DIGEST_KEY`). So neither file can be edited or swapped alone: changed weights fail the first check, an
edited grid, loss or refinement the second. The zoo's ``index.json`` also records each model's weights sha256.

The zoo is a folder with ``index.json`` (``{"models": [{"name", "file", "sha256", ...}]}``) beside the model files:
``models/`` of this repository, or the folder named by the environment variable ``METAREG_MODEL_DIR``.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from metareg.core.card import SETTINGS_FIELDS, ModelCard
from metareg.core.errors import ModelError, OutputError
from metareg.core.networks import RegistrationNetwork

#: Key of the card settings' digest in the weights file's safetensors metadata.
SETTINGS_DIGEST_KEY = "metareg_card_settings_sha256"


def default_zoo_dir() -> Path:
    """``$METAREG_MODEL_DIR`` if set, else the ``models/`` folder of the installed extension or of the repository.

    Installed in Slicer, ``models/`` sits beside the ``metareg`` package; in the repository it is at the top level.
    """
    env = os.environ.get("METAREG_MODEL_DIR")
    if env:
        return Path(env)
    package = Path(__file__).resolve().parents[1]  # the metareg package (this file is metareg/core/modelio.py)
    beside = package.parent / "models"
    return beside if beside.is_dir() else package.parents[1] / "models"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class LoadedModel:
    """A network rebuilt from its file, with its card and where it came from."""

    network: RegistrationNetwork
    card: ModelCard
    weights_path: Path

    @property
    def name(self) -> str:
        return self.card.name or self.weights_path.stem


def save_model(network: RegistrationNetwork, weights_path: str | Path, card: ModelCard | dict[str, Any]) -> Path:
    """Write ``weights_path`` (.safetensors) and its card (same stem, .json); returns the card path.

    ``card``: a :class:`ModelCard`, or its fields as a dict (checked as a card). Its ``architecture`` and ``name`` are
    set from the network and the file name, its ``sha256`` from the written weights, whose metadata keep the digest
    of the card's settings. Both files are written to temporary names first and renamed, so a failure leaves no
    partial model.
    """
    weights_path = Path(weights_path)
    if weights_path.suffix != ".safetensors":
        raise OutputError(f"model file {weights_path}: must end in .safetensors")
    if not weights_path.parent.is_dir() or not os.access(weights_path.parent, os.W_OK):
        raise OutputError(f"model file {weights_path}: folder {weights_path.parent} does not exist or is not writable")
    fields = card.to_dict() if isinstance(card, ModelCard) else dict(card)
    fields.update(name=weights_path.stem, architecture=network.to_config(), sha256="")
    card = ModelCard.from_dict(fields, f"the card of {weights_path}")
    card_path = weights_path.with_suffix(".json")
    tmp_weights = weights_path.with_name(f".{weights_path.name}.tmp")
    tmp_card = card_path.with_name(f".{card_path.name}.tmp")
    try:
        state = {k: v.detach().cpu().contiguous() for k, v in network.state_dict().items()}
        save_file(state, str(tmp_weights), metadata={"format": "pt", SETTINGS_DIGEST_KEY: card.settings_digest()})
        card = card.replace(sha256=sha256_of(tmp_weights))
        tmp_card.write_text(json.dumps(card.to_dict(), indent=2) + "\n")
        umask = os.umask(0)
        os.umask(umask)
        for tmp in (tmp_weights, tmp_card):  # safetensors writes owner-only files; give the usual permissions
            os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp_weights, weights_path)
        os.replace(tmp_card, card_path)
    finally:
        for tmp in (tmp_weights, tmp_card):
            tmp.unlink(missing_ok=True)
    return card_path


def read_card(card_path: Path) -> ModelCard:
    """A model card (JSON), every field checked (:meth:`ModelCard.from_dict`); a clear ModelError otherwise."""
    try:
        data = json.loads(card_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"model card {card_path} is missing (every .safetensors file needs its .json card)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ModelError(f"model card {card_path} is not valid JSON: {error}") from None
    except OSError as error:
        raise ModelError(f"model card {card_path} cannot be read: {error.strerror or error}") from None
    card = ModelCard.from_dict(data, f"model card {card_path}")
    if not card.sha256:
        raise ModelError(f"model card {card_path} has no 'sha256' entry (the digest of its weights)")
    return card


def weights_settings_digest(weights_path: Path) -> str | None:
    """The card settings' digest kept in a weights file's metadata (None when it has none)."""
    try:
        with safe_open(str(weights_path), framework="pt") as handle:
            return (handle.metadata() or {}).get(SETTINGS_DIGEST_KEY)
    except (SafetensorError, OSError, ValueError) as error:
        raise ModelError(f"model weights {weights_path} cannot be read as safetensors: {error}") from None


def read_index(zoo_dir: Path | None = None) -> list[dict[str, Any]]:
    """The entries of the zoo's ``index.json`` (empty when the zoo has no index yet)."""
    index_path = (zoo_dir or default_zoo_dir()) / "index.json"
    if not index_path.exists():
        return []
    try:
        return list(json.loads(index_path.read_text())["models"])
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise ModelError(f"model index {index_path} is malformed: {error}") from None


def resolve_model(name_or_path: str, zoo_dir: Path | None = None) -> tuple[Path, str | None]:
    """The weights path of a model given as a file (``.safetensors`` or its ``.json`` card) or a zoo name.

    Returns the path and the sha256 the zoo index expects (None for a plain file).
    """
    candidate = Path(name_or_path)
    if candidate.suffix in (".safetensors", ".json"):
        if not candidate.exists():
            raise ModelError(f"model file {candidate} does not exist")
        return candidate.with_suffix(".safetensors"), None
    zoo_dir = zoo_dir or default_zoo_dir()
    entries = read_index(zoo_dir)
    for entry in entries:
        if entry.get("name") == name_or_path:
            return zoo_dir / entry["file"], entry.get("sha256")
    known = ", ".join(sorted(e.get("name", "?") for e in entries)) or "none yet"
    raise ModelError(
        f"unknown model {name_or_path!r}: not a .safetensors/.json file and not in the zoo {zoo_dir} "
        f"(known models: {known}; `metareg models` lists them)"
    )


def load_model(name_or_path: str | Path, zoo_dir: Path | None = None,
               device: str | torch.device = "cpu") -> LoadedModel:
    """Load a model by zoo name or file path; checks the sha256 and rebuilds the network from its card.

    Raises:
        ModelError: unknown name, missing file or card, a card field of the wrong type or out of range, sha256
            mismatch (tampered or corrupted weights), card settings other than those the weights were saved with
            (edited card), weights that do not fit the card's architecture.
    """
    weights_path, index_sha = resolve_model(str(name_or_path), zoo_dir)
    if not weights_path.exists():
        raise ModelError(f"model weights {weights_path} are missing")
    card_path = weights_path.with_suffix(".json")
    card = read_card(card_path)
    actual = sha256_of(weights_path)
    for source, expected in (("its card", card.sha256), ("the zoo index", index_sha)):
        if expected is not None and expected != actual:
            raise ModelError(
                f"model weights {weights_path} do not match the sha256 in {source} "
                f"(expected {expected[:12]}…, file has {actual[:12]}…): the file is corrupted or was modified; "
                "restore it from the repository or retrain it"
            )
    digest = weights_settings_digest(weights_path)
    if digest is None:
        raise ModelError(f"model weights {weights_path} carry no digest of their card's settings (saved by an earlier "
                         "metareg): retrain the model, or restore it from the repository")
    if digest != card.settings_digest():
        raise ModelError(f"model card {card_path}: its settings ({', '.join(SETTINGS_FIELDS[1:])}) are not those the "
                         "weights were saved with: the card was edited or belongs to another model; restore it from "
                         "where the model came from")
    try:
        network = RegistrationNetwork.from_config(card.architecture)
    except (ValueError, KeyError, TypeError) as error:
        raise ModelError(f"model card {card_path}: bad architecture: {error}") from None
    try:
        state = load_file(str(weights_path), device="cpu")
    except (SafetensorError, OSError, ValueError) as error:
        raise ModelError(f"model weights {weights_path} cannot be read as safetensors: {error}") from None
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise ModelError(f"model weights {weights_path} do not fit the card's architecture: {error}") from None
    network.eval()
    return LoadedModel(network=network.to(device), card=card, weights_path=weights_path)
