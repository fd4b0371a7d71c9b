"""Adapt a model to my images: fine-tune a zoo or file model on volumes of the scene (or a pairs CSV) in a background
thread, and save the new model with its card into the user's model folder.

Same three steps as a registration (:mod:`.logic`):

1. :func:`prepare_finetune` (main thread) reads the chosen volume nodes into SimpleITK images (copies) and builds the
   training task: every chosen volume registered to the fixed volume (atlas pairs), or the pairs of a CSV file.
2. :class:`FinetuneJob` (worker thread) runs :func:`metareg.training.finetune` with progress and a stop flag. It
   trains into a hidden temporary folder inside the model folder and moves the finished model and its card into the
   folder only on success, so a cancelled or failed run leaves no model file behind.
3. The caller reads :attr:`FinetuneJob.model_path` (through :meth:`.logic.MetaRegistrationLogic.finish_finetune`).

Fine-tuning never changes the scene: it only reads the volumes. Nothing here uses qt, ctk or ``slicer.app``.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import convert
from .jobs import BackgroundJob

LOG = logging.getLogger("MetaRegistration")


def default_user_model_dir() -> Path:
    """``$METAREG_USER_MODEL_DIR`` if set, else ``~/MetaRegistration/models`` (where adapted models are saved)."""
    env = os.environ.get("METAREG_USER_MODEL_DIR")
    return Path(env).expanduser() if env else Path.home() / "MetaRegistration" / "models"


def user_models(model_dir: str | Path | None = None) -> list[tuple[Path, dict]]:
    """The 3D models of the user's model folder: (weights path, card) for every ``.safetensors`` with a readable
    ``.json`` card, sorted by name. A missing folder has none."""
    import json

    folder = Path(model_dir) if model_dir else default_user_model_dir()
    found = []
    if not folder.is_dir():
        return found
    for weights in sorted(folder.glob("*.safetensors")):
        try:
            card = json.loads(weights.with_suffix(".json").read_text())
        except (OSError, ValueError):
            continue
        if int((card.get("architecture") or {}).get("dim", 3)) == 3:
            found.append((weights, card))
    return found


@dataclass
class FinetuneInputs:
    """What to fine-tune on: volumes registered to ``fixed_volume`` (atlas pairs), or a pairs CSV
    (columns ``fixed,moving``; paths relative to the CSV) when ``pairs_csv`` is given."""

    fixed_volume: object | None = None
    moving_volumes: list = field(default_factory=list)
    pairs_csv: str | Path | None = None


@dataclass
class FinetuneSettings:
    """How to fine-tune.

    Attributes:
        parent: the model to adapt: a zoo name or a ``.safetensors`` path.
        steps: optimiser steps. batch_size: pairs per step. learning_rate: Adam step size.
        device: ``auto``, ``cpu``, ``cuda`` or ``mps``.
        model_dir: where the new model is saved (None: :func:`default_user_model_dir`); created when missing.
        name: the new model's name (file stem); None: ``<parent>-adapted-<date-time>``.
        seed: the run's seed.
    """

    parent: str = ""
    steps: int = 100
    batch_size: int = 1
    learning_rate: float = 1e-4
    device: str = "auto"
    model_dir: str | Path | None = None
    name: str | None = None
    seed: int = 0


@dataclass
class PreparedFinetune:
    """The training task (images copied out of the scene) and where the model goes."""

    task: object
    out: Path
    parent: str
    description: str


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.") or "model"


def prepare_finetune(inputs: FinetuneInputs, settings: FinetuneSettings) -> PreparedFinetune:
    """Read the volumes and check the settings (main thread). Creates the model folder when missing.

    Raises:
        convert.NodeInputError: the inputs or settings cannot be used (the message says what to do).
    """
    from metareg.errors import MetaRegError
    from metareg.modelio import resolve_model
    from metareg.tasks import Task, atlas_pairs, read_pairs_csv

    if not settings.parent or settings.parent == "iterative":
        raise convert.NodeInputError("select a network model to adapt (the iterative method has nothing to train)")
    if int(settings.steps) < 1:
        raise convert.NodeInputError("fine-tuning needs at least one step")
    try:
        parent_path, _ = resolve_model(str(settings.parent))
    except MetaRegError as error:
        raise convert.NodeInputError(str(error)) from None
    if inputs.pairs_csv:
        try:
            pairs = read_pairs_csv(inputs.pairs_csv, "pairs CSV")
        except MetaRegError as error:
            raise convert.NodeInputError(str(error)) from None
        task = Task(name=_safe_name(Path(inputs.pairs_csv).stem), pairs=pairs, dimension=3, role="target")
        description = f"{len(pairs)} pairs of {inputs.pairs_csv}"
    else:
        if inputs.fixed_volume is None:
            raise convert.NodeInputError("select the fixed volume: every chosen volume is registered to it")
        moving = [node for node in inputs.moving_volumes if node is not None and node is not inputs.fixed_volume]
        if not moving:
            raise convert.NodeInputError("choose at least one volume other than the fixed volume to adapt the model "
                                         "to (or give a pairs CSV)")
        fixed = convert.volume_to_image(inputs.fixed_volume, "fixed volume")
        images = [convert.volume_to_image(node, f"volume '{node.GetName()}'") for node in moving]
        task = Task(name=_safe_name(f"scene-to-{inputs.fixed_volume.GetName()}"), pairs=atlas_pairs(images, fixed),
                    dimension=3, role="target")
        description = f"{len(moving)} volume(s) registered to '{inputs.fixed_volume.GetName()}'"
    folder = Path(settings.model_dir).expanduser() if settings.model_dir else default_user_model_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise convert.NodeInputError(f"cannot create the model folder {folder}: {error}; choose another folder") from None
    if not os.access(folder, os.W_OK):
        raise convert.NodeInputError(f"the model folder {folder} is not writable; choose another folder")
    stem = _safe_name(settings.name or f"{parent_path.stem}-adapted-{time.strftime('%Y%m%d-%H%M%S')}")
    out = folder / f"{stem}.safetensors"
    counter = 2
    while out.exists() or out.with_suffix(".json").exists():
        out = folder / f"{stem}-{counter}.safetensors"
        counter += 1
    return PreparedFinetune(task=task, out=out, parent=str(settings.parent), description=description)


class FinetuneJob(BackgroundJob):
    """One fine-tuning running in a background thread (never touches the scene).

    Read :attr:`progress` and :attr:`done` from any thread; :meth:`cancel` stops it before the next step, and then no
    model file is written. On success :attr:`model_path` is the new ``.safetensors`` (its card beside it).
    """

    thread_name = "MetaRegistration fine-tuning"

    def __init__(self, prepared: PreparedFinetune, settings: FinetuneSettings):
        self.prepared = prepared
        self.settings = settings
        self.model_path: Path | None = None
        self.loss_curve: list[float] = []
        super().__init__()

    def _compute(self, report, should_stop) -> None:
        from metareg.errors import Cancelled
        from metareg.training import TrainConfig, finetune

        out = self.prepared.out
        work = Path(tempfile.mkdtemp(prefix=f".{out.stem}.", suffix=".training", dir=out.parent))
        try:
            config = TrainConfig(steps=int(self.settings.steps), batch_size=int(self.settings.batch_size),
                                 learning_rate=float(self.settings.learning_rate), seed=int(self.settings.seed),
                                 checkpoint_every=0)
            report(0.0, "preparing the pairs")
            trained = work / out.name
            self.loss_curve = finetune(
                self.prepared.parent, [self.prepared.task], config, trained, device=self.settings.device,
                command=f"3D Slicer MetaRegistration: adapt the model to {self.prepared.description}",
                progress=report, should_stop=should_stop)
            if should_stop():
                raise Cancelled("fine-tuning cancelled")
            # the model and its card, then the loss log the card names; weights first so the card never points at
            # missing weights
            for suffix in (".safetensors", ".json", ".loss.csv", ".loss.png"):
                source = work / f"{out.stem}{suffix}"
                if source.exists():
                    os.replace(source, out.parent / source.name)
            self.model_path = out
            report(1.0, f"saved {out.name}")
        finally:
            shutil.rmtree(work, ignore_errors=True)
