"""The files of a training run beside its output model: the checkpoint (``<out>.ckpt/last.pt``: weights, optimiser
state, step, settings; written to a temporary file and renamed, so a run killed at any moment keeps the last complete
one), the loss log (``<out>.loss.csv``, continued where the checkpoint was taken on resume) and its plot; and the
rules for resuming a run."""

from __future__ import annotations

import csv
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

from metareg.core.card import ModelCard
from metareg.core.errors import InputError
from metareg.core.imageio import process_running

CHECKPOINT_NAME = "last.pt"
LOG_COLUMNS = ("step", "loss", "similarity", "regulariser", "field_mse_vox2", "learning_rate", "seconds")





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


def curve_for_card(curve: list[float], points: int = 200) -> list[float]:
    if len(curve) <= points:
        return [round(v, 6) for v in curve]
    edges = np.linspace(0, len(curve), points + 1).astype(int)
    return [round(float(np.mean(curve[a:b])), 6) for a, b in zip(edges[:-1], edges[1:])]


RESUMABLE_CHANGES = ("steps", "checkpoint_every")


def _comparable(config_json: dict) -> dict:
    """The settings a resumed run must share with the checkpoint's run: all but the total steps and the checkpoint
    interval (so a run can be extended or cut short: ``--steps`` is where it ends, wherever it was)."""
    return {key: ({k: v for k, v in value.items() if k not in RESUMABLE_CHANGES} if isinstance(value, dict) else value)
            for key, value in config_json.items()}


def run_settings(card: ModelCard, **settings) -> dict:
    """What a checkpoint records of its run, and a resumed run must match: the card's settings, the parent model's
    sha256 (None for a fresh network) and the loop's own settings."""
    parent = (card.training.get("parent") or {}).get("sha256")
    return json.loads(json.dumps({"spec": card.settings(), "parent_sha256": parent, **settings}))


def resume_state(files: RunFiles, config_json: dict) -> dict:
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
