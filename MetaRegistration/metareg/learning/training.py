"""Learning: pretraining, Reptile meta-training (task level and pair level), fine-tuning.

* :func:`pretrain` — unsupervised training over the pairs of all source tasks as one pool (seed 000's first stage).
  Also fine-tuning (:func:`finetune`): the same loop from a parent model on target-domain pairs.
* :func:`metatrain` — Reptile. Each meta-step draws ``tasks_per_step`` tasks, adapts a copy of the weights to each
  with ``inner_steps`` Adam steps, and moves the weights toward the mean of the adapted ones: the outer optimiser gets
  ``θ − mean θᵢ`` as its gradient (Adam, seed 000), or ``θ ← θ − β_t (θ − mean θᵢ)`` with a linearly decaying meta
  step ``β_t`` (SGD, seed 002). At task level a task is a domain and every inner step draws a pair of it; at pair level
  (seed 002) a task is one pair, augmented afresh by a random affine at every inner step, so the weights become good
  *after* a few test-time steps.

Randomness is counter-based: every draw (which pair, which augmentation) comes from a generator seeded by
``(seed, step, slot, inner step)``. A run is therefore reproducible, a checkpoint's step number is its whole random
state, and a draw does not depend on which process makes it: under ``torchrun`` the slots of a step are split across
ranks (DistributedDataParallel averages the gradients for pretraining; the adapted Reptile weights are summed with an
all-reduce), and the result equals a single-process run on the same seed.

Checkpoints (``<out>.ckpt/last.pt``: weights, optimiser state, step, config) are written to a temporary file and
renamed, so a run killed at any moment keeps the last complete checkpoint; ``resume=True`` continues from it and the
loss log (``<out>.loss.csv``) continues where the checkpoint was taken.
"""

from __future__ import annotations

import copy
import csv
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist

from metareg.learning.augment import AugmentConfig, augment, random_displacement
from metareg.core.card import AdaptationDefaults, ModelCard
from metareg.core.checks import check_choice, check_float, check_int
from metareg.core.device import resolve_device
from metareg.core.errors import Cancelled, InputError, ParameterError
from metareg.core.geometry import warp_tensor
from metareg.core.imageio import process_running
from metareg.core.losses import LossConfig, registration_loss
from metareg.core.modelio import load_model, save_model
from metareg.core.networks import RegistrationNetwork, build_network, count_parameters
from metareg.core.progress import progress_bar
from metareg.learning.tasks import Task, TaskData

CHECKPOINT_NAME = "last.pt"
#: Most optimisation (or meta-) steps a training config accepts.
MAX_TRAINING_STEPS = 10_000_000
LOG_COLUMNS = ("step", "loss", "similarity", "regulariser", "field_mse_vox2", "learning_rate", "seconds")


# ---------------------------------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class TrainConfig:
    """Gradient training (pretraining and fine-tuning).

    Attributes:
        steps: optimiser steps. batch_size: pairs per step (over all processes). learning_rate: Adam step size.
        augment: augmentation of fixed and moving (independently). seed: the run's seed.
        checkpoint_every: steps between checkpoints (0: only at the end).
        field_supervision: weight of a supervised term on synthetic pairs (0: off, purely unsupervised). When on,
            every other sample is a synthetic pair whose answer is known: the pair's augmented moving image and, as
            fixed, that image warped by a random displacement ``d`` drawn from ``augment`` (so the correct output
            is ``d`` itself); the loss adds ``field_supervision * mean |prediction - d|²`` (voxels²) to the
            unsupervised loss. Measured here: in short runs (2D, 600 steps) it did not make a small network learn
            faster (the field error stayed flat), so the zoo recipes do not use it.
    """

    steps: int = 1000
    batch_size: int = 4
    learning_rate: float = 1e-3
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    seed: int = 0
    checkpoint_every: int = 100
    field_supervision: float = 0.0

    def __post_init__(self):
        check_int(self.steps, "TrainConfig.steps", 1, MAX_TRAINING_STEPS)
        check_int(self.batch_size, "TrainConfig.batch_size", 1, 1024)
        check_float(self.learning_rate, "TrainConfig.learning_rate", maximum=1.0, positive=True)
        check_int(self.seed, "TrainConfig.seed", 0)
        check_int(self.checkpoint_every, "TrainConfig.checkpoint_every", 0)
        check_float(self.field_supervision, "TrainConfig.field_supervision", 0.0, 1e4)
        if not isinstance(self.augment, AugmentConfig):
            raise ParameterError("TrainConfig.augment", f"must be an AugmentConfig, got {type(self.augment).__name__}")


@dataclass
class ReptileConfig:
    """Reptile meta-training (seed 000 task level: b = 3, k = 10; seed 002 pair level: k = 10, β 0.5 → 1e-5).

    Attributes:
        level: ``"task"`` (a task is a domain) or ``"pair"`` (a task is one pair, augmented at every inner step).
        steps: meta-steps. tasks_per_step: b. inner_steps: k. inner_learning_rate: Adam step size of the inner loop.
        inner_batch_size: pairs per inner step (task level).
        outer: ``"adam"`` (the meta-gradient ``θ − mean θᵢ`` fed to Adam with ``outer_learning_rate``) or ``"sgd"``
            (``θ ← θ − β_t (θ − mean θᵢ)``, β falling linearly from ``meta_step_start`` to ``meta_step_end``).
        augment: inner-loop augmentation (pair level needs it; seed 002 used random affines).
    """

    level: str = "task"
    steps: int = 500
    tasks_per_step: int = 3
    inner_steps: int = 10
    inner_learning_rate: float = 1e-3
    inner_batch_size: int = 1
    outer: str = "adam"
    outer_learning_rate: float = 1e-3
    meta_step_start: float = 0.5
    meta_step_end: float = 1e-5
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    seed: int = 0
    checkpoint_every: int = 50

    def __post_init__(self):
        check_choice(self.level, "ReptileConfig.level", ("task", "pair"))
        check_choice(self.outer, "ReptileConfig.outer", ("adam", "sgd"))
        check_int(self.steps, "ReptileConfig.steps", 1, MAX_TRAINING_STEPS)
        check_int(self.tasks_per_step, "ReptileConfig.tasks_per_step", 1, 1024)
        check_int(self.inner_steps, "ReptileConfig.inner_steps", 1, 10_000)
        check_int(self.inner_batch_size, "ReptileConfig.inner_batch_size", 1, 1024)
        for name in ("inner_learning_rate", "outer_learning_rate"):
            check_float(getattr(self, name), f"ReptileConfig.{name}", maximum=1.0, positive=True)
        for name in ("meta_step_start", "meta_step_end"):
            check_float(getattr(self, name), f"ReptileConfig.{name}", 0.0, 1.0)
        check_int(self.seed, "ReptileConfig.seed", 0)
        check_int(self.checkpoint_every, "ReptileConfig.checkpoint_every", 0)
        if not isinstance(self.augment, AugmentConfig):
            raise ParameterError("ReptileConfig.augment", f"must be an AugmentConfig, got {type(self.augment).__name__}")

    def meta_step_size(self, step: int) -> float:
        """β at meta-step ``step`` (SGD outer update): linear from ``meta_step_start`` to ``meta_step_end``."""
        fraction = step / max(self.steps - 1, 1)
        return self.meta_step_start + (self.meta_step_end - self.meta_step_start) * fraction


# ---------------------------------------------------------------------------------------------------------------------
# Processes, randomness, sampling
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class Processes:
    """This process's place among the training processes (``torchrun`` sets RANK and WORLD_SIZE)."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def mine(self, slots: int) -> list[int]:
        """The slots of a step this process computes (round robin)."""
        return list(range(self.rank, slots, self.world_size))


def start_processes(device: str = "auto") -> Processes:
    """Join the process group when started by ``torchrun`` (gloo on CPU, NCCL on CUDA); else a single process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    torch_device = resolve_device(device)
    if world_size > 1:
        if torch_device.type == "cuda":
            torch_device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(torch_device)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if torch_device.type == "cuda" else "gloo")
    return Processes(rank=rank, world_size=world_size, device=torch_device)


def generator(seed: int, *counters: int) -> torch.Generator:
    """A torch generator seeded by ``(seed, *counters)`` (independent streams for every draw)."""
    state = np.random.SeedSequence([int(seed) % 2**32, *[int(c) for c in counters]]).generate_state(2)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def _randint(gen: torch.Generator, high: int) -> int:
    return int(torch.randint(high, (1,), generator=gen))


def draw_sample(data: TaskData, index: int, config: AugmentConfig, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
    """Pair ``index`` of a task, fixed and moving each augmented independently with ``gen``."""
    fixed, moving = data.tensors(index)
    return augment(fixed, config, gen), augment(moving, config, gen)


def draw_synthetic_sample(data: TaskData, index: int, config: AugmentConfig,
                          gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A synthetic pair with a known answer: ``(fixed, moving, d)``, all on the model grid.

    ``moving`` is pair ``index``'s moving image, augmented; ``fixed = warp_tensor(moving, d)`` with ``d`` a random
    displacement (voxels, ``(1, dim, *spatial)``) drawn from ``config``. Since ``warp_tensor(moving, d)`` equals
    ``fixed``, the network's correct output for ``(moving, fixed)`` is ``d``.
    """
    if not config.active:
        raise InputError("--field-supervision", "needs augmentation (--augment-rotation/-shift/-deformation) to draw "
                         "the synthetic displacements from")
    _, moving = data.tensors(index)
    moving = augment(moving, config, gen)
    known = random_displacement(tuple(moving.shape[2:]), config, gen).to(moving.dtype)
    return warp_tensor(moving, known, padding_mode="zeros"), moving, known


class PairPool:
    """The pairs of several tasks as one pool (pretraining, fine-tuning, pair-level Reptile)."""

    def __init__(self, datas: list[TaskData]):
        self.entries = [(t, i) for t, data in enumerate(datas) for i in range(len(data))]
        self.datas = datas
        if not self.entries:
            raise InputError("--tasks", "the tasks hold no pairs")

    def draw(self, gen: torch.Generator) -> tuple[TaskData, int]:
        task, index = self.entries[_randint(gen, len(self.entries))]
        return self.datas[task], index


# ---------------------------------------------------------------------------------------------------------------------
# Logging and checkpoints
# ---------------------------------------------------------------------------------------------------------------------


class RunFiles:
    """The files of a training run next to its output model: ``<stem>.ckpt/last.pt`` and ``<stem>.loss.csv``."""

    def __init__(self, out: Path):
        if out.suffix != ".safetensors":
            raise InputError(f"--out {out}", "must end in .safetensors")
        if not out.parent.is_dir():
            raise InputError(f"--out {out}", f"folder {out.parent} does not exist", "create it first")
        self.out = out
        self.checkpoint_dir = out.with_name(out.stem + ".ckpt")
        self.checkpoint = self.checkpoint_dir / CHECKPOINT_NAME
        self.log = out.with_name(out.stem + ".loss.csv")
        self.plot = out.with_name(out.stem + ".loss.png")


def save_checkpoint(path: Path, state: dict) -> None:
    """Write ``state`` to ``path`` atomically (temporary file in the same folder, fsync, rename).

    A failed write removes its temporary file; temporary files of killed processes (their pid is in the name and no
    longer runs) are removed by the next write."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):  # left by a process killed while writing (SIGKILL)
        pid = stale.name.removeprefix(f".{path.name}.").removesuffix(".tmp")
        if pid.isdigit() and int(pid) != os.getpid() and not process_running(int(pid)):
            stale.unlink(missing_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)

    return True


def load_checkpoint(path: Path) -> dict:
    """Read a checkpoint without unpickling arbitrary objects (``weights_only``)."""
    return torch.load(path, map_location="cpu", weights_only=True)


class LossLog:
    """Per-step losses: a CSV (flushed every row), TensorBoard when installed, and a PNG of the curves at the end."""

    def __init__(self, files: RunFiles, resume_step: int | None, enabled: bool):
        self.enabled = enabled
        self.path = files.log
        self.rows: list[dict] = []
        if not enabled:
            return
        if resume_step is not None and self.path.exists():
            with open(self.path, newline="") as handle:
                self.rows = [row for row in csv.DictReader(handle) if int(row["step"]) < resume_step]
        temporary = self.path.with_name(f".{self.path.name}.tmp")
        with open(temporary, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=LOG_COLUMNS)
            writer.writeheader()
            writer.writerows(self.rows)
        os.replace(temporary, self.path)
        self.handle = open(self.path, "a", newline="")
        self.writer = csv.DictWriter(self.handle, fieldnames=LOG_COLUMNS)
        self.tensorboard = None
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tensorboard = SummaryWriter(str(files.out.with_name(files.out.stem + ".tensorboard")))
        except Exception:  # TensorBoard is optional
            self.tensorboard = None

    def add(self, step: int, loss: float, parts: dict, learning_rate: float, seconds: float) -> None:
        if not self.enabled:
            return
        row = {"step": step, "loss": f"{loss:.6g}", "similarity": f"{parts.get('similarity', float('nan')):.6g}",
               "regulariser": f"{parts.get('regulariser', float('nan')):.6g}",
               "field_mse_vox2": f"{parts['field_mse_vox2']:.6g}" if "field_mse_vox2" in parts else "",
               "learning_rate": f"{learning_rate:.6g}",
               "seconds": f"{seconds:.3f}"}
        self.rows.append(row)
        self.writer.writerow(row)
        self.handle.flush()
        if self.tensorboard is not None:
            self.tensorboard.add_scalar("loss", loss, step)

    def curve(self) -> list[float]:
        return [float(row["loss"]) for row in self.rows]

    def close(self, plot_path: Path, title: str) -> None:
        if not self.enabled:
            return
        self.handle.close()
        if self.tensorboard is not None:
            self.tensorboard.close()
        plot_loss_curves(self.rows, plot_path, title)


def plot_loss_curves(rows: list[dict], path: Path, title: str) -> bool:
    """PNG of loss, similarity and regulariser against the step; False (and one line on stderr) without matplotlib.

    Drawn on a :class:`matplotlib.figure.Figure` with its own Agg canvas: pyplot and matplotlib's backend are left
    alone (inside 3D Slicer's process that backend belongs to every other module too).
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        print(f"matplotlib is not installed: no loss plot {path} (the loss log is the .loss.csv beside it)",
              file=sys.stderr)
        return False

    steps = [int(r["step"]) for r in rows]
    fig = Figure(figsize=(13, 3.6))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3)
    for ax, key in zip(axes, ("loss", "similarity", "regulariser")):
        values = [float(r[key]) for r in rows]
        ax.plot(steps, values, lw=0.8, alpha=0.5)
        if len(values) >= 20:
            window = max(len(values) // 50, 5)
            smooth = np.convolve(values, np.ones(window) / window, mode="valid")
            ax.plot(steps[window - 1:], smooth, lw=1.6)
        ax.set_title(key)
        ax.set_xlabel("step")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(str(path), dpi=90)
    return True


def _curve_for_card(curve: list[float], points: int = 200) -> list[float]:
    if len(curve) <= points:
        return [round(v, 6) for v in curve]
    edges = np.linspace(0, len(curve), points + 1).astype(int)
    return [round(float(np.mean(curve[a:b])), 6) for a, b in zip(edges[:-1], edges[1:])]


# ---------------------------------------------------------------------------------------------------------------------
# The loops
# ---------------------------------------------------------------------------------------------------------------------


def _batch_loss(network: torch.nn.Module, samples: list[tuple[torch.Tensor, ...]], loss: LossConfig,
                device: torch.device, total: int, field_supervision: float = 0.0) -> tuple[torch.Tensor, dict]:
    """Loss of a batch of samples, scaled by ``len(samples) / total`` (this process's share).

    A sample is ``(fixed, moving)`` or, from :func:`draw_synthetic_sample`, ``(fixed, moving, known displacement)``;
    the known displacements add ``field_supervision * mean squared error`` (voxels²) over those samples.
    """
    fixed = torch.cat([s[0] for s in samples]).to(device)
    moving = torch.cat([s[1] for s in samples]).to(device)
    disp = network(moving, fixed)
    value, parts = registration_loss(loss, fixed, warp_tensor(moving, disp), disp)
    supervised = [i for i, s in enumerate(samples) if len(s) == 3]
    if supervised and field_supervision > 0:
        known = torch.cat([samples[i][2] for i in supervised]).to(device)
        error = ((disp[supervised] - known) ** 2).mean()
        value = value + field_supervision * error
        parts = {**parts, "field_mse_vox2": float(error.detach())}
    return value * (len(samples) / total), parts


def _progress(processes: Processes, total: int, start: int, description: str):
    interactive = sys.stderr is not None and sys.stderr.isatty()
    return progress_bar(total=total, initial=start, desc=description, disable=not processes.main,
                        mininterval=0.5 if interactive else 30.0)


RESUMABLE_CHANGES = ("steps", "checkpoint_every")


def _comparable(config_json: dict) -> dict:
    """The settings a resumed run must share with the checkpoint's run: all but the total steps and the checkpoint
    interval (so a run can be extended or cut short: ``--steps`` is where it ends, wherever it was)."""
    return {key: ({k: v for k, v in value.items() if k not in RESUMABLE_CHANGES} if isinstance(value, dict) else value)
            for key, value in config_json.items()}


def _run_settings(card: ModelCard, **settings) -> dict:
    """What a checkpoint records of its run, and a resumed run must match: the card's settings, the parent model's
    sha256 (None for a fresh network) and the loop's own settings."""
    parent = (card.training.get("parent") or {}).get("sha256")
    return json.loads(json.dumps({"spec": card.settings(), "parent_sha256": parent, **settings}))


def _resume_state(files: RunFiles, config_json: dict) -> dict:
    """The checkpoint a ``--resume`` run continues: it must exist, be a checkpoint of ours, and come from a run with
    the same settings and the same parent model."""
    option = f"--resume {files.checkpoint}"
    if not files.checkpoint.is_file():
        raise InputError(option, "there is no checkpoint to resume (no run with this --out was interrupted)",
                         "start without --resume")
    try:
        checkpoint = load_checkpoint(files.checkpoint)
        saved = json.loads(checkpoint["config"])
        checkpoint["step"] = int(checkpoint["step"])
        if not isinstance(checkpoint["network"], dict):
            raise TypeError("its network entry is not a state dict")
    except Exception as error:  # torch's unpickler raises many kinds for an empty, cut or foreign file
        raise InputError(option, f"is not a readable training checkpoint ({type(error).__name__}: "
                         f"{str(error).splitlines()[0][:200] if str(error) else 'empty or cut short'})",
                         f"delete {files.checkpoint_dir} and start without --resume") from None
    if saved.get("parent_sha256") != config_json.get("parent_sha256"):
        raise InputError(option, "continues a run from another parent model "
                         f"(sha256 {str(saved.get('parent_sha256'))[:12]}…, this run's is "
                         f"{str(config_json.get('parent_sha256'))[:12]}…)",
                         "resume with the parent the run started from, or start afresh without --resume")
    if _comparable(saved) != _comparable(config_json):
        raise InputError(option, "was written by a run with other settings",
                         "resume with the same options, or start afresh without --resume")
    return checkpoint


def train_loop(
    network: RegistrationNetwork,
    card: ModelCard,
    datas: list[TaskData],
    config: TrainConfig,
    files: RunFiles,
    processes: Processes,
    resume: bool = False,
    description: str = "training",
    stop_after: int | None = None,
    progress: Callable[[float, str], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> list[float]:
    """Adam on the pooled pairs; returns the loss curve (all steps, including those before a resume).

    ``progress(fraction, message)`` is called after every step; ``should_stop()`` is polled before every step and
    raises :class:`metareg.core.errors.Cancelled` (the last checkpoint stays; no model is written).
    """
    if config.batch_size % processes.world_size:
        raise InputError("--batch-size", f"{config.batch_size} is not divisible by the {processes.world_size} processes")
    network.to(processes.device).train()
    model = network
    if processes.distributed:
        model = torch.nn.parallel.DistributedDataParallel(network)
    optimiser = torch.optim.Adam(network.parameters(), lr=config.learning_rate)
    config_json = _run_settings(card, train=asdict(config), kind=description)
    start = 0
    if resume:
        checkpoint = _resume_state(files, config_json)
        network.load_state_dict(checkpoint["network"])
        optimiser.load_state_dict(checkpoint["optimiser"])
        start = int(checkpoint["step"])
    log = LossLog(files, start if resume else None, processes.main)
    pool = PairPool(datas)
    bar = _progress(processes, config.steps, start, description)
    last = time.perf_counter()
    for step in range(start, config.steps):
        if stop_after is not None and step >= stop_after:
            break
        if should_stop is not None and should_stop():
            bar.close()
            log.close(files.plot, description)
            raise Cancelled(f"{description} cancelled at step {step}")
        samples = []
        for slot in processes.mine(config.batch_size):
            gen = generator(config.seed, step, slot)
            data, index = pool.draw(gen)
            if config.field_supervision > 0 and (step + slot) % 2 == 0:
                samples.append(draw_synthetic_sample(data, index, config.augment, gen))
            else:
                samples.append(draw_sample(data, index, config.augment, gen))
        optimiser.zero_grad(set_to_none=True)
        value, parts = _batch_loss(model, samples, card.loss, processes.device, config.batch_size // processes.world_size,
                                   config.field_supervision)
        value.backward()
        optimiser.step()
        loss = float(value.detach())
        if processes.distributed:
            reduced = torch.tensor([loss], device=processes.device)
            dist.all_reduce(reduced)
            loss = float(reduced) / processes.world_size
        now = time.perf_counter()
        log.add(step, loss, parts, config.learning_rate, now - last)
        last = now
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
        done = step + 1
        if progress is not None:
            progress(done / config.steps, f"{description} step {done}/{config.steps}, loss {loss:.4f}")
        if processes.main and config.checkpoint_every and (done % config.checkpoint_every == 0 or done == config.steps):
            save_checkpoint(files.checkpoint, {"step": done, "network": network.state_dict(),
                                               "optimiser": optimiser.state_dict(), "config": json.dumps(config_json)})
    bar.close()
    log.close(files.plot, description)
    return log.curve()


def reptile_update(
    network: torch.nn.Module,
    adapted_mean: dict[str, torch.Tensor],
    config: ReptileConfig,
    step: int,
    optimiser: torch.optim.Optimizer | None,
) -> float:
    """Move the weights toward the mean of the adapted weights; returns the step size used.

    ``adam``: the meta-gradient ``θ − mean θᵢ`` is handed to ``optimiser``. ``sgd``: ``θ ← θ − β (θ − mean θᵢ)``.
    """
    with torch.no_grad():
        if config.outer == "sgd":
            beta = config.meta_step_size(step)
            for name, parameter in network.named_parameters():
                parameter.sub_(beta * (parameter - adapted_mean[name]))
            return beta
        for name, parameter in network.named_parameters():
            parameter.grad = (parameter - adapted_mean[name]).detach().clone()
    optimiser.step()
    return config.outer_learning_rate


def adapt_to_task(
    network: RegistrationNetwork,
    draw: Callable[[int], list[tuple[torch.Tensor, torch.Tensor]]],
    config: ReptileConfig,
    loss: LossConfig,
    device: torch.device,
) -> tuple[dict[str, torch.Tensor], list[float]]:
    """The inner loop: ``inner_steps`` Adam steps on a copy of ``network``; ``draw(s)`` gives inner step s's samples."""
    adapted = copy.deepcopy(network)
    adapted.train()
    optimiser = torch.optim.Adam(adapted.parameters(), lr=config.inner_learning_rate)
    losses = []
    for inner in range(config.inner_steps):
        samples = draw(inner)
        optimiser.zero_grad(set_to_none=True)
        value, _ = _batch_loss(adapted, samples, loss, device, len(samples))
        value.backward()
        optimiser.step()
        losses.append(float(value.detach()))
    return {name: p.detach() for name, p in adapted.named_parameters()}, losses


def reptile_loop(
    network: RegistrationNetwork,
    card: ModelCard,
    datas: list[TaskData],
    config: ReptileConfig,
    files: RunFiles,
    processes: Processes,
    resume: bool = False,
    stop_after: int | None = None,
) -> list[float]:
    """Reptile meta-training (see the module docstring); returns the curve of mean inner-loop losses."""
    network.to(processes.device).train()
    optimiser = torch.optim.Adam(network.parameters(), lr=config.outer_learning_rate) if config.outer == "adam" else None
    config_json = _run_settings(card, reptile=asdict(config))
    start = 0
    if resume:
        checkpoint = _resume_state(files, config_json)
        network.load_state_dict(checkpoint["network"])
        if optimiser is not None:
            optimiser.load_state_dict(checkpoint["optimiser"])
        start = int(checkpoint["step"])
    log = LossLog(files, start if resume else None, processes.main)
    pool = PairPool(datas)
    bar = _progress(processes, config.steps, start, f"Reptile ({config.level} level)")
    last = time.perf_counter()
    names = [name for name, _ in network.named_parameters()]
    for step in range(start, config.steps):
        if stop_after is not None and step >= stop_after:
            break
        total = {name: torch.zeros_like(p) for name, p in network.named_parameters()}
        inner_losses = torch.zeros(2, device=processes.device)  # (sum of final inner losses, count)
        for slot in processes.mine(config.tasks_per_step):
            task_gen = generator(config.seed, step, slot)
            if config.level == "task":
                data = datas[_randint(task_gen, len(datas))]

                def draw(inner, data=data, slot=slot):
                    gens = [generator(config.seed, step, slot, inner, j) for j in range(config.inner_batch_size)]
                    return [draw_sample(data, _randint(g, len(data)), config.augment, g) for g in gens]
            else:
                data, index = pool.draw(task_gen)

                def draw(inner, data=data, index=index, slot=slot):
                    return [draw_sample(data, index, config.augment, generator(config.seed, step, slot, inner))]

            adapted, losses = adapt_to_task(network, draw, config, card.loss, processes.device)
            for name in names:
                total[name] += adapted[name]
            inner_losses += torch.tensor([losses[-1], 1.0], device=processes.device)
        if processes.distributed:
            flat = torch.cat([total[name].flatten() for name in names])
            dist.all_reduce(flat)
            dist.all_reduce(inner_losses)
            offset = 0
            for name in names:
                count = total[name].numel()
                total[name] = flat[offset: offset + count].view_as(total[name])
                offset += count
        mean = {name: total[name] / config.tasks_per_step for name in names}
        rate = reptile_update(network, mean, config, step, optimiser)
        loss = float(inner_losses[0] / inner_losses[1])
        now = time.perf_counter()
        log.add(step, loss, {}, rate, now - last)
        last = now
        bar.update(1)
        bar.set_postfix(inner_loss=f"{loss:.4f}", refresh=False)
        done = step + 1
        if processes.main and config.checkpoint_every and (done % config.checkpoint_every == 0 or done == config.steps):
            save_checkpoint(files.checkpoint, {
                "step": done, "network": network.state_dict(),
                "optimiser": optimiser.state_dict() if optimiser is not None else {},
                "config": json.dumps(config_json)})
    bar.close()
    log.close(files.plot, f"Reptile ({config.level} level): final inner-loop loss per meta-step")
    return log.curve()


# ---------------------------------------------------------------------------------------------------------------------
# Commands: build, run, write the model and its card
# ---------------------------------------------------------------------------------------------------------------------


def _task_summary(tasks: list[Task]) -> list[dict]:
    return [{"name": t.name, "pairs": len(t.pairs), "role": t.role, "domain": t.info.get("domain")} for t in tasks]


def _write_model(network: RegistrationNetwork, card: ModelCard, files: RunFiles, processes: Processes,
                 training: dict, purpose: str, adaptation_rate: float) -> None:
    if not processes.main:
        return
    save_model(network.cpu(), files.out, card.replace(purpose=purpose, training=training, metrics={},
                                                      adaptation=AdaptationDefaults(adaptation_rate)))


def _init_network(card: ModelCard | None, parent: str | None, seed: int) -> tuple[RegistrationNetwork, ModelCard, dict | None]:
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
    return build_network(card.architecture), card, None


def pretrain(tasks: list[Task], card: ModelCard | None, config: TrainConfig, out: Path, device: str = "auto",
             resume: bool = False, parent: str | None = None, stage: str = "pretrain", command: str = "",
             purpose: str = "", stop_after: int | None = None, progress=None, should_stop=None,
             loss: LossConfig | None = None, datas: list[TaskData] | None = None) -> list[float]:
    """Train (or, with ``parent``, fine-tune) a network on the pooled pairs of ``tasks``; writes ``out`` + card.

    ``loss`` replaces the parent's loss when fine-tuning (e.g. mutual information for a multimodal variant); the new
    card records the loss it was trained with, which test-time adaptation then uses. ``datas``: the tasks' pairs
    already prepared (:class:`metareg.learning.tasks.TaskData` with this card's grid, normalisation and pre-alignment), to
    share them between several networks trained on the same pairs; built here when None.
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
        "field_supervision": config.field_supervision, "seed": config.seed, "processes": processes.world_size, "device": processes.device.type,
        "parameters": count_parameters(network), "seconds_this_run": round(time.perf_counter() - started, 1),
        "final_loss": float(np.mean(curve[-20:])) if curve else None, "loss_curve": _curve_for_card(curve),
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
              stop_after: int | None = None) -> list[float]:
    """Reptile meta-training from ``parent`` (or a fresh network); writes ``out`` + card."""
    processes = start_processes(device)
    files = RunFiles(out)
    network, card, parent_info = _init_network(card, parent, config.seed)
    datas = [TaskData(task, card.grid, card.normalisation, affine=card.affine) for task in tasks]
    if config.level == "task" and len(datas) < 2:
        raise InputError("--tasks", "task-level Reptile needs at least two tasks (domains)")
    started = time.perf_counter()
    curve = reptile_loop(network, card, datas, config, files, processes, resume, stop_after)
    if stop_after is not None and stop_after < config.steps:
        return curve
    training = {
        "stage": f"metatrain-{config.level}", "parent": parent_info, "tasks": _task_summary(tasks),
        "reptile": asdict(config), "processes": processes.world_size, "device": processes.device.type,
        "parameters": count_parameters(network), "seconds_this_run": round(time.perf_counter() - started, 1),
        "final_inner_loss": float(np.mean(curve[-20:])) if curve else None, "loss_curve": _curve_for_card(curve),
        "loss_log": files.log.name, "command": command,
    }
    purpose = (f"Reptile ({config.level} level) on {', '.join(t.name for t in tasks)}: an initialisation that adapts "
               f"in {config.inner_steps} steps")
    _write_model(network, card, files, processes, training, purpose, config.inner_learning_rate)
    return curve


__all__ = ["TrainConfig", "ReptileConfig", "pretrain", "finetune", "metatrain", "reptile_update",
           "adapt_to_task", "generator", "save_checkpoint", "load_checkpoint"]
