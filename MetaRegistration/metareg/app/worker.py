"""The engine as a child process of a GUI: ``python -m metareg.app.worker [--watch-stdin] JOB_FOLDER``.

A GUI (the 3D Slicer module) must not run the engine in a thread of its own Python: desktop Slicer's main thread
holds the GIL while Qt idles, so such a thread would crawl. It runs the engine in this worker instead, which is the
``metareg`` command line itself, in a JSON-lines mode:

- ``JOB_FOLDER/job.json`` holds the command and its settings::

      {"command": "register", "options": {"fixed": "fixed.nrrd", "moving": "moving.nrrd", "model": "brain-mr-3d",
                                          "adapt_steps": 5, "affine": true, "warped": "out/warped.nrrd", ...}}

  ``command`` is a ``metareg`` sub-command (``register`` or ``finetune``); each option is that command's long option
  with ``_`` for ``-`` (``adapt_steps`` is ``--adapt-steps``). ``true`` gives a flag, ``false`` its ``--no-`` form
  where the option has one (else nothing), a list repeats the option, ``null`` leaves it out. Relative paths are
  relative to ``JOB_FOLDER``, where the inputs were written and the outputs are written.
- Standard output carries one JSON object per line (:class:`JsonLines`): ``{"event": "start", "engine": {...}}``,
  ``{"event": "progress", "fraction": 0.4, "message": "..."}``, ``{"event": "log", "level": "warning",
  "message": "..."}``, then ``{"event": "result", "report": {...}}`` or ``{"event": "error", "message": "...",
  "details": "..."}``. Exit status 0 on success, 2 for an error the user can act on, 1 for anything else.
- With ``--watch-stdin``, the worker exits at once when its standard input (a pipe from the GUI) reaches its end:
  the GUI closed it, or died. So a worker never outlives the application that started it.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import traceback
from pathlib import Path
from typing import IO, Sequence

from metareg import __version__

#: Exit status of a worker whose parent went away (standard input closed).
ORPHANED_EXIT_STATUS = 3


def engine_identity() -> dict:
    """The version and folder of the ``metareg`` package this process runs (a GUI checks it is its own engine; this
    file is ``metareg/app/worker.py``)."""
    return {"version": __version__, "path": str(Path(__file__).resolve().parents[1]), "python": sys.version.split()[0],
            "executable": sys.executable}


class JsonLines:
    """Writes the worker's events, one JSON object per line, flushed at once (thread-safe).

    Also usable as a ``progress(fraction, message)`` callback of the engine.
    """

    def __init__(self, stream: IO[str] | None = None):
        self.stream = stream or sys.stdout
        self._lock = threading.Lock()
        self._last = (-1.0, "")

    def emit(self, event: str, **fields) -> None:
        line = json.dumps({"event": event, **fields}, allow_nan=False, default=_json_default)
        with self._lock:
            self.stream.write(line + "\n")
            self.stream.flush()

    def __call__(self, fraction: float, message: str) -> None:
        # the engine reports very often; a GUI needs a line only when the percent or the message changes
        fraction = round(min(max(float(fraction), 0.0), 1.0), 3)
        if (fraction, message) != self._last:
            self._last = (fraction, message)
            self.emit("progress", fraction=fraction, message=message)


def _json_default(value):
    import math

    import numpy as np

    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value) if math.isfinite(float(value)) else None
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def job_argv(job: dict) -> list[str]:
    """The ``metareg`` command line of a job description (see the module docstring)."""
    command = job.get("command")
    if command not in ("register", "finetune"):
        raise ValueError(f"job.json: unknown command {command!r} (register or finetune)")
    argv = [command]
    for name, value in (job.get("options") or {}).items():
        flag = "--" + name.replace("_", "-")
        if value is None:
            continue
        if value is True:
            argv.append(flag)
        elif value is False:
            if name in NEGATABLE_OPTIONS:
                argv.append("--no-" + name.replace("_", "-"))
        elif isinstance(value, (list, tuple)):
            for item in value:
                argv += [flag, str(item)]
        else:
            argv += [flag, str(value)]
    return argv


#: Options with a ``--no-`` form (argparse.BooleanOptionalAction), so that ``false`` can be said explicitly.
NEGATABLE_OPTIONS = frozenset({"affine"})


def _exit_when_parent_goes(stdin: IO) -> None:
    """Block on standard input in a daemon thread; its end means the parent is gone: exit now."""

    def watch() -> None:
        try:
            while stdin.read(4096):
                pass
        except (OSError, ValueError):
            pass
        os._exit(ORPHANED_EXIT_STATUS)

    threading.Thread(target=watch, name="metareg parent watch", daemon=True).start()


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    watch = "--watch-stdin" in args
    args = [arg for arg in args if arg != "--watch-stdin"]
    if len(args) != 1:
        print("usage: python -m metareg.app.worker [--watch-stdin] JOB_FOLDER", file=sys.stderr)
        return 2
    folder = Path(args[0])
    events = JsonLines()
    if watch and sys.stdin is not None:
        _exit_when_parent_goes(sys.stdin)
    events.emit("start", engine=engine_identity(), pid=os.getpid())
    try:
        job = json.loads((folder / "job.json").read_text(encoding="utf-8"))
        command_line = job_argv(job)
    except (OSError, ValueError) as error:
        events.emit("error", message=f"the job folder {folder} has no usable job.json ({error})", details="")
        return 2
    os.chdir(folder)
    from metareg.app.cli import main as cli_main

    try:
        return cli_main(command_line, events=events)
    except SystemExit as exit_:  # argparse: a bad option (a bug of the GUI, or an engine of another version)
        code = exit_.code if isinstance(exit_.code, int) else 2
        if code:
            events.emit("error", message=f"the engine refused the job's options: {' '.join(command_line)}",
                        details="")
        return code
    except BaseException as error:  # noqa: BLE001 - everything reaches the GUI as one event
        events.emit("error", message=f"{type(error).__name__}: {error}", details=traceback.format_exc())
        return 1


if __name__ == "__main__":
    sys.exit(main())
