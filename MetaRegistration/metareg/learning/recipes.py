"""Training recipes, each writing a model and its card:

* :func:`pretrain` — unsupervised training over the pairs of all source tasks as one pool (seed 000's first stage).
* :func:`finetune` — the same loop from a parent model on target-domain pairs.
* :func:`metatrain` — Reptile. Each meta-step draws ``tasks_per_step`` tasks, adapts a copy of the weights to each
  with ``inner_steps`` Adam steps, and moves the weights toward the mean of the adapted ones: the outer optimiser gets
  ``θ − mean θᵢ`` as its gradient (Adam, seed 000), or ``θ ← θ − β_t (θ − mean θᵢ)`` with a linearly decaying meta
  step ``β_t`` (SGD, seed 002). At task level a task is a domain and every inner step draws a pair of it; at pair level
  (seed 002) a task is one pair, augmented afresh by a random affine at every inner step, so the weights become good
  *after* a few test-time steps.

Checkpoints and the loss log: :mod:`metareg.learning.runlog`; the loops: :mod:`metareg.learning.loops`."""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from metareg.core.card import AdaptationDefaults, ModelCard
from metareg.core.errors import InputError
from metareg.core.losses import LossConfig
from metareg.core.modelio import load_model, save_model
from metareg.core.networks import RegistrationNetwork, count_parameters
from metareg.learning.config import ReptileConfig, TrainConfig
from metareg.learning.distributed import Processes, start_processes
from metareg.learning.loops import (
    reptile_loop,
    train_loop,
)
from metareg.learning.runlog import (
    RunFiles,
    curve_for_card,
)
from metareg.learning.tasks import Task, TaskData


def _task_summary(tasks: list[Task]) -> list[dict]:
    return [{"name": t.name, "pairs": len(t.pairs), "role": t.role, "domain": t.info.get("domain")} for t in tasks]


def _write_model(network: RegistrationNetwork, card: ModelCard, files: RunFiles, processes: Processes,
                 training: dict, purpose: str, adaptation_rate: float) -> None:
    if not processes.main:
        return
    save_model(network.cpu(), files.out, card.replace(purpose=purpose, training=training, metrics={},
                                                      adaptation=AdaptationDefaults(adaptation_rate)))


def _init_network(card: ModelCard | None, parent: str | None,
                  seed: int) -> tuple[RegistrationNetwork, ModelCard, dict | None]:
    """The network to train and the card it is trained for: the parent's network and card (its settings, refinement
    included, carry over; its provenance and metrics do not), or a fresh network for ``card``."""
    if parent:
        loaded = load_model(parent)
        parent_info = {"name": loaded.name, "file": str(loaded.weights_path), "sha256": loaded.card.sha256,
                       "stage": loaded.card.training.get("stage")}
        card = loaded.card.replace(name="", sha256="", training={"parent": parent_info}, metrics={})
        return loaded.network, card, parent_info
    if card is None:
        raise InputError("card", "a fresh network needs a card (architecture, grid, ...) or a parent model")
    torch.manual_seed(seed)
    return RegistrationNetwork.from_config(card.architecture), card, None


def pretrain(tasks: list[Task], card: ModelCard | None, config: TrainConfig, out: Path, device: str = "auto",
             resume: bool = False, parent: str | None = None, stage: str = "pretrain", command: str = "",
             purpose: str = "", stop_after: int | None = None, progress=None, should_stop=None,
             loss: LossConfig | None = None, datas: list[TaskData] | None = None) -> list[float]:
    """Train (or, with ``parent``, fine-tune) a network on the pooled pairs of ``tasks``; writes ``out`` + card.

    ``loss`` replaces the parent's loss when fine-tuning (e.g. mutual information for a multimodal variant); the new
    card records the loss it was trained with, which test-time adaptation then uses. ``datas``: the tasks' pairs
    already prepared (:class:`metareg.learning.tasks.TaskData` with this card's grid, normalisation and pre-alignment),
    to share them between several networks trained on the same pairs; built here when None.
    """
    processes = start_processes(device)
    files = RunFiles(out)
    network, card, parent_info = _init_network(card, parent, config.seed)
    if loss is not None:
        card = card.replace(loss=loss)
    if datas is None:
        datas = [TaskData(task, card.grid, card.normalisation, affine=card.affine) for task in tasks]
    started = time.perf_counter()
    curve = train_loop(network, card, datas, config, files, processes, resume, stage, stop_after, progress, should_stop)
    if stop_after is not None and stop_after < config.steps:
        return curve
    training = {
        "stage": stage, "parent": parent_info, "tasks": _task_summary(tasks), "steps": config.steps,
        "batch_size": config.batch_size, "learning_rate": config.learning_rate, "augment": config.augment.to_dict(),
        "field_supervision": config.field_supervision, "seed": config.seed, "processes": processes.world_size,
        "device": processes.device.type,
        "parameters": count_parameters(network), "seconds_this_run": round(time.perf_counter() - started, 1),
        "final_loss": float(np.mean(curve[-20:])) if curve else None, "loss_curve": curve_for_card(curve),
        "loss_log": files.log.name, "command": command,
    }
    _write_model(network, card, files, processes, training, purpose or f"{stage} on {', '.join(t.name for t in tasks)}",
                 config.learning_rate)
    return curve


def finetune(parent: str, tasks: list[Task], config: TrainConfig, out: Path, device: str = "auto",
             resume: bool = False, command: str = "", progress=None, should_stop=None,
             stop_after: int | None = None, loss: LossConfig | None = None) -> list[float]:
    """Adapt ``parent`` to a small target-domain set; a new model file whose card names the parent.

    ``loss``: train with this loss instead of the parent's (e.g. ``LossConfig(similarity="mi")`` for T1 → T2).

    ``progress``/``should_stop`` as in :func:`train_loop` (a GUI can show and cancel it). ``stop_after`` ends this
    call after that many steps (counted from step 0) without writing the model, as in :func:`pretrain`; with
    ``resume=True`` a later call continues from the last checkpoint, so a run can be taken in segments.
    """
    return pretrain(tasks, None, config, out, device, resume, parent=parent, stage="finetune", command=command,
                    purpose=f"fine-tuned from {Path(parent).stem} on {', '.join(t.name for t in tasks)}",
                    stop_after=stop_after, progress=progress, should_stop=should_stop, loss=loss)


def metatrain(tasks: list[Task], card: ModelCard | None, config: ReptileConfig, out: Path, device: str = "auto",
              resume: bool = False, parent: str | None = None, command: str = "",
              stop_after: int | None = None, progress=None, should_stop=None) -> list[float]:
    """Reptile meta-training from ``parent`` (or a fresh network); writes ``out`` + card. ``progress`` and
    ``should_stop`` as in :func:`metareg.learning.loops.train_loop`."""
    processes = start_processes(device)
    files = RunFiles(out)
    network, card, parent_info = _init_network(card, parent, config.seed)
    datas = [TaskData(task, card.grid, card.normalisation, affine=card.affine) for task in tasks]
    if config.level == "task" and len(datas) < 2:
        raise InputError("--tasks", "task-level Reptile needs at least two tasks (domains)")
    started = time.perf_counter()
    curve = reptile_loop(network, card, datas, config, files, processes, resume, stop_after, progress, should_stop)
    if stop_after is not None and stop_after < config.steps:
        return curve
    training = {
        "stage": f"metatrain-{config.level}", "parent": parent_info, "tasks": _task_summary(tasks),
        "reptile": asdict(config), "processes": processes.world_size, "device": processes.device.type,
        "parameters": count_parameters(network), "seconds_this_run": round(time.perf_counter() - started, 1),
        "final_inner_loss": float(np.mean(curve[-20:])) if curve else None, "loss_curve": curve_for_card(curve),
        "loss_log": files.log.name, "command": command,
    }
    purpose = (f"Reptile ({config.level} level) on {', '.join(t.name for t in tasks)}: an initialisation that adapts "
               f"in {config.inner_steps} steps")
    _write_model(network, card, files, processes, training, purpose, config.inner_learning_rate)
    return curve


