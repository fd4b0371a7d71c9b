"""Engine work in a child process, polled from the main thread (no MRML, no qt).

Why a process: desktop Slicer's main thread holds Python's GIL while Qt's event loop idles (PythonQt's thread support
is off, and neither CTK nor Slicer turns it on), so an engine *thread* would run only while main-thread Python runs
and would crawl. A child process computes at full speed whatever the main thread does.

An :class:`EngineJob` owns a private temporary folder. Its subclass writes the inputs there (images, landmarks,
labels) with the settings as ``job.json``; the job starts ``python -m metareg.app.worker --watch-stdin FOLDER``
(Slicer's own Python, ``PythonSlicer``, in Slicer; ``sys.executable`` elsewhere), with the bundled engine first on its
path, and reads the worker's JSON lines (progress, log lines, the result) without blocking the caller. When the process
has ended, :meth:`EngineJob.poll` hands the folder to the subclass to read the outputs back, then removes it; a
cancelled, crashed or killed worker becomes :attr:`EngineJob.cancelled` or :attr:`EngineJob.error` with a clear message,
and the folder is removed all the same.

No worker outlives its job: :meth:`EngineJob.cancel` terminates it and kills it after
:data:`KILL_AFTER_SECONDS`; the worker also exits by itself when its standard input closes (the parent ended or
crashed); and :func:`stop_all` (called at interpreter exit and by the module on scene close and cleanup) ends every
job still running.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from pathlib import Path

LOG = logging.getLogger("MetaRegistration")

#: After a cancel, the worker gets this long to end on SIGTERM before it is killed (seconds).
KILL_AFTER_SECONDS = 1.0
#: How much of the worker's standard error a failure message shows (characters, the end of it).
STDERR_TAIL_CHARS = 4000
#: The file in a job folder that names the process owning it (so a later run can remove folders of dead owners).
OWNER_FILE = "owner.pid"

_RUNNING: "weakref.WeakSet[EngineJob]" = weakref.WeakSet()

#: How the worker starts: the bundled engine's folder first on ``sys.path`` (whatever PYTHONPATH or Slicer's launcher
#: put before it), then ``python -m metareg.app.worker --watch-stdin FOLDER``.
WORKER_BOOTSTRAP = ("import runpy, sys; sys.path.insert(0, sys.argv.pop(1)); "
                    "runpy.run_module('metareg.app.worker', run_name='__main__', alter_sys=True)")


class EngineError(RuntimeError):
    """The engine failed: ``str(error)`` is the message for the user; :attr:`details` has what the worker said."""

    def __init__(self, message: str, details: str = "", kind: str = ""):
        super().__init__(message)
        self.details = details
        self.kind = kind


def engine_folder() -> Path:
    """The folder that holds the bundled ``metareg`` package (beside this module's folder)."""
    return Path(__file__).resolve().parent.parent


def engine_python() -> list[str]:
    """The command that starts the engine's Python: Slicer's ``PythonSlicer`` inside desktop Slicer (it sets up
    Slicer's Python environment), ``sys.executable`` elsewhere (slicer-core, tests, scripts).

    ``$METAREG_ENGINE_PYTHON`` overrides both.
    """
    override = os.environ.get("METAREG_ENGINE_PYTHON")
    if override:
        return [override]
    home = _slicer_home()
    if home is not None:
        for name in ("PythonSlicer.exe", "PythonSlicer") if os.name == "nt" else ("PythonSlicer",):
            candidate = Path(home) / "bin" / name
            if candidate.is_file():
                return [str(candidate)]
        found = shutil.which("PythonSlicer")
        if found:
            return [found]
        raise EngineError(f"cannot find Slicer's Python launcher PythonSlicer in {Path(home) / 'bin'}; "
                          "reinstall Slicer")
    return [sys.executable]


def _slicer_home() -> str | None:
    """Desktop Slicer's install folder, or None outside the Slicer application (slicer-core has no ``slicer.app``)."""
    slicer = sys.modules.get("slicer")
    app = getattr(slicer, "app", None) if slicer is not None else None
    home = getattr(app, "slicerHome", None) if app is not None else None
    return str(home) if home else None


def _engine_environment() -> dict:
    """The worker's environment: Slicer's start-up environment inside Slicer (as ``slicer.util.launchConsoleProcess``
    uses), else this one; the bundled engine's folder first on ``PYTHONPATH``, so an installed ``metareg`` can never
    shadow the engine this module ships."""
    environment = None
    if _slicer_home() is not None:
        try:
            import slicer.util

            environment = dict(slicer.util.startupEnvironment())
        except Exception:  # noqa: BLE001 - fall back to this process's environment
            environment = None
    environment = dict(os.environ if environment is None else environment)
    path = environment.get("PYTHONPATH")
    environment["PYTHONPATH"] = str(engine_folder()) + (os.pathsep + path if path else "")
    environment["PYTHONUNBUFFERED"] = "1"
    return environment


class EngineJob:
    """One run of the engine's worker. Subclasses write the inputs (:meth:`_write_inputs`, into :attr:`folder`) and
    read the outputs (:meth:`_read_outputs`).

    Poll it from the main thread: :meth:`poll` (or :attr:`done`) reads what the worker said so far, never blocks, and
    finishes the job once the worker has ended; :attr:`progress` is (fraction, message). After the end exactly one of
    these holds: :attr:`cancelled`; :attr:`error` (an :class:`EngineError`, with ``error.details``); or success (the
    subclass's outputs were read back). The temporary folder is gone by then.
    """

    command = ""  # the worker's sub-command (register, finetune)
    folder_prefix = "MetaRegistration-"

    def __init__(self) -> None:
        self.error: EngineError | None = None
        self.error_details = ""
        self.cancelled = False
        self.started = time.perf_counter()
        self.ended: float | None = None
        self.engine: dict = {}
        self.log_lines: list[str] = []
        self.result_event: dict | None = None
        self.process: subprocess.Popen | None = None
        self.folder: Path | None = None
        self._progress = (0.0, "starting the engine")
        self._lines: "queue.Queue[str | None]" = queue.Queue()
        self._cancel_requested: float | None = None
        self._finished = False
        self._output_ended = False  # the reader thread has seen the end of the worker's output
        self._stderr = None

    # --- life cycle -------------------------------------------------------------------------------------------------

    def start(self):
        """Write the inputs and start the worker (main thread). Raises what :meth:`_write_inputs` raises; nothing is
        left behind then."""
        remove_stale_folders()
        self.folder = Path(tempfile.mkdtemp(prefix=self.folder_prefix))
        try:
            (self.folder / OWNER_FILE).write_text(str(os.getpid()), encoding="utf-8")
            options = self._write_inputs(self.folder)
            (self.folder / "job.json").write_text(json.dumps({"command": self.command, "options": options}, indent=1),
                                                  encoding="utf-8")
            self._stderr = open(self.folder / "stderr.log", "wb")  # noqa: SIM115 - closed in _finish
            creation = {}
            if os.name == "nt":  # no console window, and a group of its own so the worker gets no Ctrl+C of Slicer's
                creation["creationflags"] = (getattr(subprocess, "CREATE_NO_WINDOW", 0)
                                             | getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0))
            else:
                creation["start_new_session"] = True  # Ctrl+C in Slicer's terminal goes to Slicer only
            self.process = subprocess.Popen(
                engine_python() + ["-c", WORKER_BOOTSTRAP, str(engine_folder()), "--watch-stdin", str(self.folder)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, cwd=str(self.folder),
                env=_engine_environment(), **creation)
        except BaseException:
            self._remove_folder()
            raise
        _RUNNING.add(self)
        threading.Thread(target=self._read_stdout, args=(self.process.stdout,), name="MetaRegistration engine output",
                         daemon=True).start()
        return self

    def _read_stdout(self, stream) -> None:
        """Reader thread: the worker's lines into a queue (it blocks in read, which releases the GIL)."""
        try:
            for raw in iter(stream.readline, b""):
                self._lines.put(raw.decode("utf-8", "replace").rstrip("\r\n"))
        except (OSError, ValueError):
            pass
        finally:
            self._lines.put(None)

    @property
    def progress(self) -> tuple[float, str]:
        """(fraction of the whole run in [0, 1], message), as of the last :meth:`poll`."""
        self.poll()
        return self._progress

    @property
    def done(self) -> bool:
        """True once the job has ended and been finished (outputs read back or the failure recorded)."""
        return self.poll()

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def poll(self) -> bool:
        """Read the worker's new lines, escalate a cancel to a kill when due, and finish the job once the worker has
        ended (main thread; never blocks). Returns True when the job is over."""
        if self._finished:
            return True
        self._drain()
        if self._cancel_requested is not None and self.process.poll() is None \
                and time.perf_counter() - self._cancel_requested >= KILL_AFTER_SECONDS:
            self._kill()
        if self.process.poll() is None:
            return False
        self._finish()
        return True

    def wait(self, timeout: float | None = None, interval: float = 0.02) -> bool:
        """Poll until the job ends (or ``timeout`` seconds pass); True when it has ended. For scripts and tests."""
        deadline = None if timeout is None else time.perf_counter() + timeout
        while not self.poll():
            if deadline is not None and time.perf_counter() >= deadline:
                return False
            time.sleep(interval)
        return True

    def cancel(self) -> None:
        """Stop the worker: terminate it now, kill it if it has not ended after :data:`KILL_AFTER_SECONDS` (that
        happens in :meth:`poll`). The job then ends with :attr:`cancelled` True and no outputs."""
        if self._finished or self._cancel_requested is not None:
            return
        self._cancel_requested = time.perf_counter()
        self._progress = (self._progress[0], "cancelling")
        if self.process is not None and self.process.poll() is None:
            try:
                self.process.terminate()
            except OSError:
                pass

    def stop(self, timeout: float = 2.0) -> None:
        """Cancel and wait (at most ``timeout`` seconds, then kill): for scene close, module cleanup and exit."""
        self.cancel()
        try:
            self.process.wait(min(timeout, KILL_AFTER_SECONDS))
        except subprocess.TimeoutExpired:
            self._kill()
            self.process.wait(timeout)
        self.poll()

    def _kill(self) -> None:
        try:
            self.process.kill()
        except OSError:
            pass

    # --- the worker's lines -----------------------------------------------------------------------------------------

    def _drain(self) -> None:
        while True:
            try:
                line = self._lines.get_nowait()
            except queue.Empty:
                return
            if line is None:
                self._output_ended = True
                return
            self._handle_line(line)

    def _handle_line(self, line: str) -> None:
        try:
            event = json.loads(line)
            kind = event["event"]
        except (ValueError, TypeError, KeyError):
            if line.strip():
                self.log_lines.append(line)
            return
        if kind == "progress":
            self._progress = (float(event.get("fraction", 0.0)), str(event.get("message", "")))
        elif kind == "start":
            self.engine = event.get("engine") or {}
            LOG.info("MetaRegistration: engine %s from %s (Python %s, process %s)", self.engine.get("version"),
                     self.engine.get("path"), self.engine.get("python"), event.get("pid"))
        elif kind == "log":
            message = f"{event.get('level', 'info')}: {event.get('message', '')}"
            self.log_lines.append(message)
            LOG.warning("MetaRegistration engine: %s", message)
        elif kind == "result":
            self.result_event = event
        elif kind == "error":
            self.error = EngineError(str(event.get("message", "the engine failed")), str(event.get("details", "")),
                                     str(event.get("kind", "")))

    # --- the end ----------------------------------------------------------------------------------------------------

    def _finish(self) -> None:
        """The worker has ended: read the rest of its output, then the outputs (success) or the failure."""
        self._finished = True
        self.ended = time.perf_counter()
        _RUNNING.discard(self)
        deadline = time.perf_counter() + 2.0
        while not self._output_ended and time.perf_counter() < deadline:  # the reader puts None after the last line
            try:
                line = self._lines.get(timeout=max(deadline - time.perf_counter(), 0.001))
            except queue.Empty:
                break
            if line is None:
                self._output_ended = True
                break
            self._handle_line(line)
        for stream in (self.process.stdin, self.process.stdout, self._stderr):
            try:
                if stream is not None:
                    stream.close()
            except OSError:
                pass
        stderr = self._stderr_tail()
        code = self.process.returncode
        try:
            self._validate_engine()
            if self._cancel_requested is not None:
                self.cancelled = True
                self._progress = (self._progress[0], "cancelled")
            elif self.error is not None:
                if stderr and not self.error.details:
                    self.error.details = stderr
            elif code != 0 or self.result_event is None:
                raise EngineError(_crash_message(code), stderr or "\n".join(self.log_lines[-50:]))
            else:
                self._read_outputs(self.folder, self.result_event)
                self._progress = (1.0, "done")
        except EngineError as error:
            self.error = error
        except Exception as error:  # noqa: BLE001 - a broken output file: reported, never half-applied
            import traceback

            self.error = EngineError(f"the engine's outputs could not be read back: {error}", traceback.format_exc())
        finally:
            self._remove_folder()
        if self.error is not None:
            self.error_details = self.error.details
            self._progress = (self._progress[0], "failed")

    def _validate_engine(self) -> None:
        """The worker must have run the engine bundled with this module, not another installed ``metareg``."""
        path = self.engine.get("path")
        if path and Path(path).resolve() != (engine_folder() / "metareg").resolve():
            raise EngineError(f"the engine process ran another metareg ({path}) than the one of this module "
                              f"({engine_folder() / 'metareg'}); uninstall the other one from Slicer's Python "
                              "(pip uninstall metareg)")

    def _stderr_tail(self) -> str:
        try:
            text = (self.folder / "stderr.log").read_bytes().decode("utf-8", "replace")
        except OSError:
            return ""
        return text[-STDERR_TAIL_CHARS:].strip()

    def _remove_folder(self) -> None:
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)

    # --- for subclasses ---------------------------------------------------------------------------------------------

    def _write_inputs(self, folder: Path) -> dict:
        """Write the inputs into ``folder``; return the worker command's options (see :mod:`metareg.app.worker`)."""
        raise NotImplementedError

    def _read_outputs(self, folder: Path, result: dict) -> None:
        """Read the outputs back from ``folder`` (main thread; the worker succeeded). ``result``: its result event."""
        raise NotImplementedError


def _crash_message(code: int | None) -> str:
    """What a worker's unexpected end means, for the user."""
    if code is not None and code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        why = {"SIGKILL": " — most often the system ran out of memory (try a smaller image, or the CPU for a GPU "
                          "model that does not fit)",
               "SIGSEGV": " — a crash inside a native library (torch, ITK, or the GPU driver)",
               "SIGABRT": " — a native library aborted (often a GPU/CUDA error)"}.get(name, "")
        return f"the engine process was stopped by {name}{why}; nothing was added to the scene"
    if code == 0:
        return "the engine process ended without a result; nothing was added to the scene"
    return (f"the engine process ended with exit status {code} (see the details for its last messages); nothing "
            "was added to the scene")


def _process_alive(pid: int) -> bool:
    if os.name == "nt":  # os.kill would end the process there; a day-old folder counts as stale instead
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def remove_stale_folders(max_age_seconds: float = 24 * 3600.0) -> list[Path]:
    """Remove the job folders of applications that ended without cleaning up (crashed, killed): those whose owner
    process is gone, or older than ``max_age_seconds``. Called whenever a job starts; returns what it removed."""
    removed = []
    for folder in Path(tempfile.gettempdir()).glob("MetaRegistration-*"):
        try:
            if not folder.is_dir():
                continue
            owner = folder / OWNER_FILE
            pid = int(owner.read_text(encoding="utf-8")) if owner.is_file() else None
            old = time.time() - folder.stat().st_mtime > max_age_seconds
            if (pid is not None and pid != os.getpid() and not _process_alive(pid)) or old:
                shutil.rmtree(folder, ignore_errors=True)
                removed.append(folder)
        except (OSError, ValueError):
            continue
    return removed


def running_jobs() -> list[EngineJob]:
    """The jobs whose worker is still running."""
    return [job for job in list(_RUNNING) if not job._finished]


def stop_all(timeout: float = 2.0) -> None:
    """End every running job (cancelled, worker gone, temporary folder removed): module cleanup, exit."""
    for job in running_jobs():
        try:
            job.stop(timeout)
        except Exception:  # noqa: BLE001 - at exit, go on with the others
            LOG.exception("MetaRegistration: could not stop an engine process")


atexit.register(stop_all)
