"""Adapt a model to my images: fine-tune a zoo or file model on volumes of the scene (or a pairs CSV) in the
engine's child process, and save the new model with its card into the user's model folder.

Same three steps as a registration (:mod:`.logic`):

1. :func:`prepare_finetune` (main thread) reads the chosen volume nodes into SimpleITK images (copies) and checks the
   settings.
2. :class:`FinetuneJob` writes the volumes and a pairs CSV (every chosen volume registered to the fixed volume: atlas
   pairs) to its private temporary folder, or names the user's pairs CSV, and runs ``metareg finetune`` there in the
   engine's worker process (:mod:`.jobs`). The new model is trained inside that folder; on success it is moved into
   the model folder, so a cancelled or failed run leaves no model file behind.
3. The caller reads :attr:`FinetuneJob.model_path` (through :meth:`.logic.MetaRegistrationLogic.finish_finetune`).

Fine-tuning never changes the scene and reads only copies of it, so it may go on across a scene close. Nothing here
uses qt, ctk or ``slicer.app``.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import convert
from .jobs import EngineJob

LOG = logging.getLogger("MetaRegistration")


def default_user_model_dir() -> Path:
    """``$METAREG_USER_MODEL_DIR`` if set, else ``~/MetaRegistration/models`` (where adapted models are saved)."""
    env = os.environ.get("METAREG_USER_MODEL_DIR")
    return Path(env).expanduser() if env else Path.home() / "MetaRegistration" / "models"


def user_models(model_dir: str | Path | None = None) -> list:
    """The models of the user's model folder (2D and 3D): (weights path, :class:`metareg.core.card.ModelCard`) for every
    ``.safetensors`` whose ``.json`` card reads and checks, sorted by name. A missing folder has none."""
    from metareg.core.errors import ModelError
    from metareg.core.modelio import read_card

    folder = Path(model_dir) if model_dir else default_user_model_dir()
    found = []
    if not folder.is_dir():
        return found
    for weights in sorted(folder.glob("*.safetensors")):
        try:
            found.append((weights, read_card(weights.with_suffix(".json"))))
        except ModelError:
            continue
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
    """What to train on (images copied out of the scene, or a pairs CSV) and where the model goes."""

    out: Path
    parent: str
    description: str
    task_name: str
    fixed_image: object | None = None
    moving_images: list = field(default_factory=list)
    pairs_csv: Path | None = None


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.") or "model"


def prepare_finetune(inputs: FinetuneInputs, settings: FinetuneSettings) -> PreparedFinetune:
    """Read the volumes and check the settings (main thread). Creates the model folder when missing.

    Raises:
        convert.NodeInputError: the inputs or settings cannot be used (the message says what to do).
    """
    from metareg.core.errors import MetaRegError
    from metareg.core.modelio import resolve_model

    if not settings.parent or settings.parent == "iterative":
        raise convert.NodeInputError("select a network model to adapt (the iterative method has nothing to train)")
    if int(settings.steps) < 1:
        raise convert.NodeInputError("fine-tuning needs at least one step")
    try:
        parent_path, _ = resolve_model(str(settings.parent))
    except MetaRegError as error:
        raise convert.NodeInputError(str(error)) from None
    fixed = None
    images: list = []
    pairs_csv = None
    if inputs.pairs_csv:
        pairs_csv = Path(inputs.pairs_csv).expanduser().resolve()
        count = _count_pairs(pairs_csv)
        task_name = _safe_name(pairs_csv.stem)
        description = f"{count} pairs of {inputs.pairs_csv}"
    else:
        if inputs.fixed_volume is None:
            raise convert.NodeInputError("select the fixed volume: every chosen volume is registered to it")
        moving = [node for node in inputs.moving_volumes if node is not None and node is not inputs.fixed_volume]
        if not moving:
            raise convert.NodeInputError("choose at least one volume other than the fixed volume to adapt the model "
                                         "to (or give a pairs CSV)")
        fixed = convert.volume_to_image(inputs.fixed_volume, "fixed volume")
        images = [convert.volume_to_image(node, f"volume '{node.GetName()}'") for node in moving]
        task_name = _safe_name(f"scene-to-{inputs.fixed_volume.GetName()}")
        description = f"{len(moving)} volume(s) registered to '{inputs.fixed_volume.GetName()}'"
    folder = Path(settings.model_dir).expanduser() if settings.model_dir else default_user_model_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise convert.NodeInputError(f"cannot create the model folder {folder}: {error}; "
                                     "choose another folder") from None
    if not os.access(folder, os.W_OK):
        raise convert.NodeInputError(f"the model folder {folder} is not writable; choose another folder")
    stem = _safe_name(settings.name or f"{parent_path.stem}-adapted-{time.strftime('%Y%m%d-%H%M%S')}")
    out = folder / f"{stem}.safetensors"
    counter = 2
    while out.exists() or out.with_suffix(".json").exists():
        out = folder / f"{stem}-{counter}.safetensors"
        counter += 1
    return PreparedFinetune(out=out, parent=str(settings.parent), description=description, task_name=task_name,
                            fixed_image=fixed, moving_images=images, pairs_csv=pairs_csv)


def _count_pairs(path: Path) -> int:
    """The number of pairs of a pairs CSV (header ``fixed,moving``, ``#`` comments), checked without the engine."""
    import csv

    if not path.is_file():
        raise convert.NodeInputError(f"pairs CSV {path}: does not exist; give a CSV with columns fixed,moving")
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(line for line in handle if not line.startswith("#")))
    except (OSError, UnicodeDecodeError) as error:
        raise convert.NodeInputError(f"pairs CSV {path}: cannot be read ({error}); give a CSV with columns "
                                     "fixed,moving") from None
    if not rows or "fixed" not in rows[0] or "moving" not in rows[0]:
        raise convert.NodeInputError(f"pairs CSV {path}: needs a header with at least the columns fixed,moving")
    return len(rows)


class FinetuneJob(EngineJob):
    """One fine-tuning in the engine's child process (never touches the scene).

    Poll :attr:`progress` and :attr:`done`; :meth:`cancel` ends the process, and then no model file is written. On
    success :attr:`model_path` is the new ``.safetensors`` (its card beside it) and :attr:`loss_curve` the loss per
    step.
    """

    command = "finetune"
    folder_prefix = "MetaRegistration-finetune-"

    def __init__(self, prepared: PreparedFinetune, settings: FinetuneSettings):
        super().__init__()
        self.prepared = prepared
        self.settings = settings
        self.model_path: Path | None = None
        self.loss_curve: list[float] = []

    def _write_inputs(self, folder):
        import SimpleITK as sitk

        prepared = self.prepared
        if prepared.pairs_csv is not None:
            tasks = str(prepared.pairs_csv)
        else:
            sitk.WriteImage(prepared.fixed_image, str(folder / "fixed.mha"), useCompression=False)
            rows = ["fixed,moving"]
            for index, image in enumerate(prepared.moving_images):
                sitk.WriteImage(image, str(folder / f"moving-{index:03d}.mha"), useCompression=False)
                rows.append(f"fixed.mha,moving-{index:03d}.mha")
            tasks = f"{prepared.task_name}.csv"
            (folder / tasks).write_text("\n".join(rows) + "\n", encoding="utf-8")
        (folder / "model").mkdir()
        return {"model": prepared.parent, "tasks": tasks, "out": f"model/{prepared.out.name}",
                "steps": int(self.settings.steps), "batch_size": int(self.settings.batch_size),
                "lr": float(self.settings.learning_rate), "seed": int(self.settings.seed),
                "device": self.settings.device, "checkpoint_every": 0,
                "record_command": f"3D Slicer MetaRegistration: adapt the model to {prepared.description}"}

    def _read_outputs(self, folder, result):
        """Move the new model and its card (then the loss log the card names) into the model folder: weights first,
        so the card never points at missing weights. A file that exists there by now is never overwritten."""
        out = self.prepared.out
        trained = folder / "model"
        if not (trained / out.name).is_file() or not (trained / f"{out.stem}.json").is_file():
            raise RuntimeError(f"the engine wrote no model {out.name}")
        moved = []
        try:
            for suffix in (".safetensors", ".json", ".loss.csv", ".loss.png"):
                source = trained / f"{out.stem}{suffix}"
                if not source.exists():
                    continue
                target = out.parent / source.name
                if target.exists():
                    raise RuntimeError(f"{target} appeared while the model was trained; nothing was overwritten")
                partial = out.parent / f".{source.name}.partial"
                shutil.copyfile(source, partial)
                os.replace(partial, target)
                moved.append(target)
        except BaseException:
            for target in moved:
                target.unlink(missing_ok=True)
            raise
        self.loss_curve = [float(value) for value in result.get("loss_curve") or []]
        self.model_path = out
