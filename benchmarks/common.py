"""What every benchmark shares: its command line, the machine record, held-out pairs with landmarks, the measures of a
field, summaries over pairs, measured runs, result files.

Every benchmark is a module of the ``benchmarks`` package, run from the repository root as
``python -m benchmarks.NAME`` (``--help`` says what it measures). Each writes ``benchmarks/results/<stem>.csv`` (one
row per method or setting), ``<stem>.md`` (the table with the command, machine, threads and date that produced it)
and ``<stem>.json`` (the same plus per-pair rows), and optionally ``<stem>.png`` plots.

Wall seconds are ``time.perf_counter`` around the method alone (no file I/O of inputs). Peak memory is the peak
resident set size of a fresh process that ran only that method (:func:`run_measured`): the interpreter with torch
and SimpleITK loaded is part of it, as it is for a user's process.
"""

from __future__ import annotations

import argparse
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
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


# ---------------------------------------------------------------------------------------------------------------------
# The command line and the machine
# ---------------------------------------------------------------------------------------------------------------------


def _thread_count(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: at least 1 thread")
    return value


def _running_module() -> str | None:
    """The name of the module run with ``python -m`` (``benchmarks.NAME``); None when a script file runs."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return spec.name if spec is not None and spec.name else None


def benchmark_parser(doc: str, *, threads: int = 1, threads_help: str | None = None, quick: str | None = None,
                     out_dir: str | None = None, out_dir_default: Path | None = RESULTS) -> argparse.ArgumentParser:
    """The argument parser every benchmark starts from: its docstring as the description, ``--threads``, and
    optionally ``--quick`` and ``--out-dir``.

    Args:
        doc: the benchmark's module docstring (printed as it is by ``--help``).
        threads: the default of ``--threads`` (CPU threads of every method; at least 1).
        threads_help: the help of ``--threads`` (default: "CPU threads (default N)").
        quick: the help of ``--quick`` (the benchmark's smoke mode); no ``--quick`` when None.
        out_dir: the help of ``--out-dir`` (a folder, :class:`pathlib.Path`); no ``--out-dir`` when None.
        out_dir_default: the default of ``--out-dir``.
    """
    module = _running_module()
    prog = f"python -m {module}" if module and module.startswith("benchmarks.") else None
    parser = argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    if quick is not None:
        parser.add_argument("--quick", action="store_true", help=quick)
    parser.add_argument("--threads", type=_thread_count, default=threads,
                        help=threads_help or f"CPU threads (default {threads})")
    if out_dir is not None:
        parser.add_argument("--out-dir", type=Path, default=out_dir_default, help=out_dir)
    return parser


def command_line(argv: Sequence[str] | None = None) -> str:
    """The command that is running, as a user would type it from the repository root: ``python -m benchmarks.NAME
    ARGS`` for a module run with ``-m``, else ``python SCRIPT ARGS`` (``argv``: the arguments, default
    ``sys.argv[1:]``)."""
    module = _running_module()
    head = ["-m", module] if module else [os.path.relpath(sys.argv[0])]
    args = sys.argv[1:] if argv is None else list(argv)
    return "python " + " ".join(shlex.quote(a) for a in [*head, *args])


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

    return {
        "command": command_line(argv),
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


def landmark_pairs(task, limit: int | None = None, data_dir: str | None = None) -> list[LandmarkPair]:
    """The pairs of a task that has landmarks (first ``limit`` only if given).

    ``task``: a task name (built by ``metareg data fetch`` under ``data_dir``, default its default folder), a task
    folder or pairs CSV, or a :class:`metareg.learning.tasks.Task` already loaded.
    """
    from metareg.core.landmarks import match_landmarks, read_landmarks
    from metareg.learning.tasks import default_data_dir, load_task

    if isinstance(task, (str, Path)):
        task = load_task(str(task), Path(data_dir) if data_dir else default_data_dir())
    pairs = task.pairs[:limit] if limit else task.pairs
    out = []
    for index, pair in enumerate(pairs):
        if pair.fixed_landmarks is None or pair.moving_landmarks is None:
            raise SystemExit(f"task {task.name}: pair {index} has no landmarks; choose a task with landmarks")
        fixed, moving = pair.images()
        _, p, q = match_landmarks(read_landmarks(pair.fixed_landmarks), read_landmarks(pair.moving_landmarks))
        dim = fixed.GetDimension()
        out.append(LandmarkPair(index, fixed, moving, p[:, :dim], q[:, :dim]))
    return out


def evaluate_field(pair: LandmarkPair, field) -> dict:
    """How well ``field`` registers ``pair``: TRE before and after (mm), NCC before and after, folding fraction.

    ``field``: a displacement field on the fixed image's grid (LPS mm, fixed point ↦ moving point), as
    :func:`metareg.core.registration.register` and every peer of :mod:`benchmarks.peers` return it.

    - ``tre_before_mm``, ``tre_after_mm``, ``tre_after_max_mm``: mean over the landmarks of |p − q| and of
      |φ(p) − q| (φ: ``x ↦ x + field(x)``), and the largest |φ(p) − q|;
    - ``ncc_before``, ``ncc_after``: global NCC of the fixed image and the moving image, resampled as it is and
      warped through the field, over the fixed-grid region that sees the inside of the moving image both ways
      (:func:`metareg.core.registration.overlap_mask`, as ``register`` reports it); NaN when there is no such
      region;
    - ``folding_fraction``: fraction of fixed-grid voxels whose Jacobian determinant is ≤ 0.
    """
    import SimpleITK as sitk

    from metareg.core import metrics
    from metareg.core.geometry import Grid, resample_onto, warp_image
    from metareg.core.registration import overlap_mask

    fixed_array = sitk.GetArrayFromImage(pair.fixed).astype(np.float64)
    region = overlap_mask(pair.moving, field)
    # copies, not views: a view of a temporary image would outlive the image's memory
    before = sitk.GetArrayFromImage(resample_onto(pair.moving, Grid.from_image(pair.fixed)))
    after = sitk.GetArrayFromImage(warp_image(pair.moving, field))
    tre = pair.tre_mm(field)
    seen = region.any()
    return {"tre_before_mm": pair.tre_before_mm, "tre_after_mm": float(tre.mean()),
            "tre_after_max_mm": float(tre.max()),
            "ncc_before": metrics.ncc(fixed_array, before, region) if seen else float("nan"),
            "ncc_after": metrics.ncc(fixed_array, after, region) if seen else float("nan"),
            "folding_fraction": metrics.folding_fraction(metrics.jacobian_determinant(field))}


# ---------------------------------------------------------------------------------------------------------------------
# Summaries over pairs
# ---------------------------------------------------------------------------------------------------------------------

#: The numbers of a row of :func:`evaluate_field` and its ``seconds``: what :func:`summarise` summarises by default.
SUMMARY_KEYS = ("tre_before_mm", "tre_after_mm", "ncc_before", "ncc_after", "folding_fraction", "seconds")


def _measured(values: Iterable) -> list[float]:
    """The values that are numbers (None and NaN left out: not measured)."""
    values = [float(v) for v in values if v is not None]
    return [v for v in values if not math.isnan(v)]


def mean_and_sd(values: Iterable) -> dict:
    """``{"mean", "sd"}`` (sd with ddof 0) of the measured values (None and NaN left out); NaN when there are none."""
    values = _measured(values)
    if not values:
        return {"mean": float("nan"), "sd": float("nan")}
    return {"mean": float(np.mean(values)), "sd": float(np.std(values))}


def summarise(rows: Sequence[Mapping], keys: Sequence[str] = SUMMARY_KEYS) -> dict:
    """Per-pair rows summarised: ``{key: {"mean", "sd"} for each of keys, "pairs": len(rows)}`` (:func:`mean_and_sd`:
    values that were not measured, None or NaN, are left out)."""
    return {**{key: mean_and_sd(row.get(key) for row in rows) for key in keys}, "pairs": len(rows)}


def method_row(name: str, rows: Sequence[Mapping]) -> dict:
    """One method's line of a results table from its per-pair rows (:func:`evaluate_field` and ``seconds``): pairs,
    TRE and NCC before and after (mean ± sd), folding % (mean) and seconds a pair (mean)."""
    summary = summarise(rows)
    seconds = summary["seconds"]["mean"]
    return {
        "method": name, "pairs": len(rows),
        "TRE before mm": mean_sd(summary["tre_before_mm"]),
        "TRE after mm (mean ± sd)": mean_sd(summary["tre_after_mm"]),
        "NCC before": mean_sd(summary["ncc_before"]),
        "NCC after (mean ± sd)": mean_sd(summary["ncc_after"]),
        "folding %": f"{100 * summary['folding_fraction']['mean']:.3f}",
        "s/pair": round(seconds, 2) if seconds >= 0.1 else round(seconds, 3),
    }


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
    """``"mean ± sd"`` with two decimals (``"—"`` when nothing was measured) of values, or of a :func:`mean_and_sd`."""
    stats = values if isinstance(values, Mapping) else mean_and_sd(values)
    if math.isnan(stats["mean"]):
        return "—"
    return f"{stats['mean']:.2f} ± {stats['sd']:.2f}"


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file beside it and a rename: a reader sees the old file or the
    new one, never a part (an interrupted run leaves the old one)."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        temporary.write_text(text)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


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


__all__ = ["RESULTS", "SUMMARY_KEYS", "LandmarkPair", "benchmark_parser", "command_line", "environment",
           "evaluate_field", "landmark_pairs", "mean_and_sd", "mean_sd", "method_row", "run_measured", "set_threads",
           "summarise", "write_atomic", "write_results"]
