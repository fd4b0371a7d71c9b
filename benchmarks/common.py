"""What every benchmark shares: the machine record, held-out pairs with landmarks, measured runs, result files.

Each benchmark script writes ``benchmarks/results/<stem>.csv`` (one row per method or setting), ``<stem>.md`` (the
table with the command, machine, threads and date that produced it) and ``<stem>.json`` (the same plus per-pair
rows), and optionally ``<stem>.png`` plots.

Wall seconds are ``time.perf_counter`` around the method alone (no file I/O of inputs). Peak memory is the peak
resident set size of a fresh process that ran only that method (:func:`run_measured`): the interpreter with torch
and SimpleITK loaded is part of it, as it is for a user's process.
"""

from __future__ import annotations

import csv
import json
import math
import multiprocessing
import os
import platform
import resource
import shlex
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def set_threads(threads: int) -> None:
    """Use ``threads`` CPU threads in this process and in the tools it starts (OpenMP, ITK, elastix via argument)."""
    import torch

    for name in ("OMP_NUM_THREADS", "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = str(threads)
    torch.set_num_threads(threads)
    try:
        import SimpleITK as sitk

        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    except Exception:  # noqa: BLE001 - SimpleITK is a dependency; this only guards odd builds
        pass


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(threads: int, argv: list[str] | None = None) -> dict:
    """The record that goes with every result: command, machine, threads, versions, date (UTC)."""
    import torch

    args = sys.argv if argv is None else [sys.argv[0], *argv]
    return {
        "command": "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(args[0]), *args[1:]]),
        "machine": f"{cpu_model()}, {os.cpu_count()} cores, {platform.system()} {platform.machine()}",
        "threads": threads,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


# ---------------------------------------------------------------------------------------------------------------------
# Held-out pairs
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class LandmarkPair:
    """One evaluation pair: images (SimpleITK) and matched landmarks (LPS mm, ``(N, dim)``: fixed ``p``, moving ``q``)."""

    index: int
    fixed: Any
    moving: Any
    fixed_points: np.ndarray
    moving_points: np.ndarray
    fixed_labels: Any = None
    moving_labels: Any = None

    @property
    def tre_before_mm(self) -> float:
        from metareg.core import metrics

        return float(metrics.landmark_distances_mm(self.fixed_points, self.moving_points).mean())

    def tre_mm(self, field) -> np.ndarray:
        """Per-landmark TRE (mm) of a displacement field (fixed grid, LPS mm, fixed point ↦ moving point)."""
        from metareg.core import metrics
        from metareg.core.geometry import map_points

        return metrics.landmark_distances_mm(map_points(field, self.fixed_points), self.moving_points)


def landmark_pairs(task_name: str, limit: int | None = None, data_dir: str | None = None) -> list[LandmarkPair]:
    """The pairs of a task built by ``metareg data fetch`` that has landmarks (first ``limit`` only if given)."""
    from metareg.core.landmarks import match_landmarks, read_landmarks
    from metareg.learning.tasks import default_data_dir, load_task

    task = load_task(task_name, Path(data_dir) if data_dir else default_data_dir())
    pairs = task.pairs[:limit] if limit else task.pairs
    out = []
    for index, pair in enumerate(pairs):
        if pair.fixed_landmarks is None or pair.moving_landmarks is None:
            raise SystemExit(f"task {task_name}: pair {index} has no landmarks; choose a task with landmarks")
        fixed, moving = pair.images()
        _, p, q = match_landmarks(read_landmarks(pair.fixed_landmarks), read_landmarks(pair.moving_landmarks))
        dim = fixed.GetDimension()
        out.append(LandmarkPair(index, fixed, moving, p[:, :dim], q[:, :dim]))
    return out


# ---------------------------------------------------------------------------------------------------------------------
# Measured runs in a fresh process
# ---------------------------------------------------------------------------------------------------------------------


def _peak_rss_mb() -> float:
    """Peak RSS (MiB) of this process and of the largest child it waited for (Linux reports KiB)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux keeps ru_maxrss across fork + exec, so a spawned child's ru_maxrss starts at its parent's RSS; VmHWM is
    # the peak of this process's own memory since its exec.
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                own = int(line.split()[1])
                break
    except (OSError, ValueError, IndexError):
        pass
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) / 1024.0


def _child(queue, func, threads, args, kwargs):
    try:
        set_threads(threads)
        result = func(*args, **kwargs)
        queue.put(("ok", result, _peak_rss_mb()))
    except BaseException as error:  # noqa: BLE001 - reported to the parent, which raises
        queue.put(("error", f"{type(error).__name__}: {error}", _peak_rss_mb()))


def run_measured(func: Callable, *args, threads: int = 1, **kwargs) -> tuple[Any, float]:
    """``func(*args, **kwargs)`` in a fresh (spawned) process with ``threads`` threads: ``(its result, peak MiB)``.

    ``func`` must be a module-level function and its arguments and result picklable (pass file paths and return
    numbers or numpy arrays). The function should time itself; process start-up is not part of any timing.
    """
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_child, args=(queue, func, threads, args, kwargs))
    process.start()
    status, result, peak = queue.get()
    process.join()
    if status != "ok":
        raise RuntimeError(f"{getattr(func, '__name__', func)} failed: {result}")
    return result, peak


# ---------------------------------------------------------------------------------------------------------------------
# Result files
# ---------------------------------------------------------------------------------------------------------------------


def mean_sd(values) -> str:
    """``"mean ± sd"`` with two decimals (``"—"`` when nothing was measured)."""
    values = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not values:
        return "—"
    return f"{np.mean(values):.2f} ± {np.std(values):.2f}"


def _cell(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        if math.isnan(value):
            return "—"
        return f"{value:.3g}" if abs(value) < 0.01 and value != 0 else f"{value:.2f}"
    return str(value)


def write_results(stem: str, title: str, rows: list[dict], env: dict, notes: list[str] | None = None,
                  extra: dict | None = None, out_dir: Path = RESULTS) -> dict[str, Path]:
    """Write ``<stem>.csv``, ``<stem>.md`` and ``<stem>.json`` under ``out_dir``; returns their paths.

    ``rows`` are flat dicts with the same keys (the table's columns, in order of the first row). ``notes`` are
    sentences printed under the table (protocol, what the numbers mean). ``extra`` goes into the JSON only.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    if not rows:
        raise ValueError(f"{stem}: no rows to write")
    columns = list(rows[0])
    paths = {"csv": out_dir / f"{stem}.csv", "md": out_dir / f"{stem}.md", "json": out_dir / f"{stem}.json"}
    with open(paths["csv"], "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: row.get(k) for k in columns})
    lines = [f"# {title}", "", f"- command: `{env['command']}`", f"- machine: {env['machine']}",
             f"- threads: {env['threads']} (every method)", f"- python {env['python']}, torch {env['torch']}",
             f"- date: {env['date']}", "", "| " + " | ".join(columns) + " |",
             "| " + " | ".join("---" for _ in columns) + " |"]
    lines += ["| " + " | ".join(_cell(row.get(k)) for k in columns) + " |" for row in rows]
    if notes:
        lines += [""] + [f"- {note}" for note in notes]
    paths["md"].write_text("\n".join(lines) + "\n")
    paths["json"].write_text(json.dumps({"title": title, "environment": env, "rows": rows, "notes": notes or [],
                                         **(extra or {})}, indent=2, default=float) + "\n")
    return paths


__all__ = ["RESULTS", "LandmarkPair", "environment", "landmark_pairs", "mean_sd", "run_measured", "set_threads",
           "write_results"]
