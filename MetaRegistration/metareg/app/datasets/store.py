"""The task store under one root folder: which tasks are built, building them (``metareg data fetch``), the index,
and the listing (``metareg data list``)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Iterable, Sequence

from metareg.app.datasets.archives import Archive, DataError, Fetcher, Log, quiet
from metareg.app.datasets.builders import BUILDER_VERSION, TaskSpec, TaskWriter
from metareg.app.datasets.catalogue import TASKS
from metareg.core.imageio import atomic_output


def task_is_built(folder: Path) -> bool:
    """True when ``folder`` holds a complete task (task.json written last) made by this builder version."""
    try:
        info = json.loads((folder / "task.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    return info.get("builder_version") == BUILDER_VERSION and (folder / "pairs.csv").is_file()


def build_task(spec: TaskSpec, root: Path, fetcher: Fetcher, log: Log = quiet) -> dict:
    """Build one task into ``root/tasks/<name>`` (through a hidden partial folder, replacing an older one)."""
    tasks = root / "tasks"
    tasks.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{spec.name}.", suffix=".partial", dir=tasks))
    try:
        writer = TaskWriter(partial, spec, fetcher.archives, log)
        spec.build(spec, fetcher, writer)
        info = writer.finish()
        final = tasks / spec.name
        if final.exists():
            shutil.rmtree(final)
        os.replace(partial, final)
        return info
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def write_index(root: Path, specs: dict[str, TaskSpec] | None = None) -> dict:
    """Write ``root/tasks/index.json`` from every built task (in :data:`TASKS` order, then by name)."""
    order = list((TASKS if specs is None else specs).keys())
    tasks = root / "tasks"
    entries = []
    for info in list_tasks(root):
        entries.append({key: info.get(key) for key in ("name", "dimension", "role", "domain", "n_pairs")})
    entries.sort(key=lambda e: (order.index(e["name"]) if e["name"] in order else len(order), e["name"]))
    index = {"tasks": entries}
    tasks.mkdir(parents=True, exist_ok=True)
    with atomic_output(tasks / "index.json", "task index") as temporary:
        temporary.write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    return index


def list_tasks(root: Path) -> list[dict]:
    """The task.json of every complete task under ``root/tasks``: those of :data:`TASKS` in its order, then others
    by name."""
    folder = root / "tasks"
    if not folder.is_dir():
        return []
    found = []
    for task in sorted(folder.iterdir()):
        if task.is_dir() and not task.name.startswith(".") and (task / "task.json").is_file():
            try:
                found.append(json.loads((task / "task.json").read_text(encoding="utf-8")))
            except json.JSONDecodeError:
                continue
    order = list(TASKS)
    found.sort(key=lambda info: (order.index(info.get("name")) if info.get("name") in order else len(order),
                                 str(info.get("name"))))
    return found


def resolve_task_names(names: Iterable[str] | None, specs: dict[str, TaskSpec] | None = None) -> list[str]:
    specs = TASKS if specs is None else specs
    if not names:
        return list(specs)
    unknown = [n for n in names if n not in specs]
    if unknown:
        raise DataError(f"--tasks: unknown task(s) {', '.join(unknown)} (known: {', '.join(specs)})")
    return list(dict.fromkeys(names))


def fetch(root: Path, names: Iterable[str] | None = None, force: bool = False, log: Log = quiet,
          specs: dict[str, TaskSpec] | None = None, archives: dict[str, Archive] | None = None) -> list[dict]:
    """Download what is missing and build the named tasks (all by default) under ``root``; returns one status row
    per task: name, status ("built"/"present"), seconds. Built tasks are skipped unless ``force``."""
    specs = TASKS if specs is None else specs
    wanted = resolve_task_names(names, specs)
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    scratch = Path(tempfile.mkdtemp(prefix=".scratch.", dir=root))
    try:
        fetcher = Fetcher(root / "downloads", scratch, archives, log)
        for number, name in enumerate(wanted, start=1):
            spec = specs[name]
            folder = root / "tasks" / name
            if not force and task_is_built(folder):
                rows.append({"name": name, "status": "present", "seconds": 0.0})
                continue
            log(f"[{number}/{len(wanted)}] building {name} ...")
            start = time.monotonic()
            build_task(spec, root, fetcher, log)
            seconds = time.monotonic() - start
            log(f"[{number}/{len(wanted)}] {name} done in {seconds:.0f} s")
            rows.append({"name": name, "status": "built", "seconds": seconds})
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        write_index(root, specs)
    return rows


def folder_size_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else 0


def format_table(infos: Sequence[dict], status: dict[str, str] | None = None) -> str:
    """A plain-text table of tasks: name, dim, role, domain, images, pairs, size (px/voxels), spacing (mm)."""
    def short(value) -> str:
        if isinstance(value, list) and value and isinstance(value[0], list):
            return "varies"
        if isinstance(value, list):
            return "x".join(f"{v:g}" for v in value)
        return str(value)

    header = ["task", "dim", "role", "domain", "images", "pairs", "size", "spacing_mm"]
    if status is not None:
        header.append("status")
    rows = []
    for info in infos:
        row = [info["name"], f"{info['dimension']}D", info["role"], info["domain"], str(info["n_images"]),
               str(info["n_pairs"]), short(info["size"]), short(info["spacing_mm"])]
        if status is not None:
            row.append(status.get(info["name"], ""))
        rows.append(row)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
