"""A unit of engine work running in a background thread, polled from the main thread (no MRML, no qt).

Subclasses implement :meth:`BackgroundJob._compute`; the base runs it in a thread, keeps its progress, lets the caller
cancel it (the engine polls ``should_stop`` every optimisation step) and records how it ended: :attr:`cancelled`,
or :attr:`error` with :attr:`error_details`, or success.
"""

from __future__ import annotations

import threading
import time
import traceback
from typing import Callable


class BackgroundJob:
    """Work in a background thread: :attr:`progress` and :attr:`done` from any thread, :meth:`cancel`, :meth:`wait`."""

    thread_name = "MetaRegistration"

    def __init__(self) -> None:
        self.error: BaseException | None = None
        self.error_details = ""
        self.cancelled = False
        self.started = time.perf_counter()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._progress = (0.0, "starting")
        self._thread = threading.Thread(target=self._work, name=self.thread_name, daemon=True)

    def start(self):
        self._thread.start()
        return self

    @property
    def progress(self) -> tuple[float, str]:
        """(fraction of the whole run in [0, 1], message)."""
        with self._lock:
            return self._progress

    @property
    def done(self) -> bool:
        return not self._thread.is_alive()

    def cancel(self) -> None:
        """Ask the engine to stop; the job then ends with :attr:`cancelled` True and no result."""
        self._stop.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the job ends (or ``timeout`` seconds pass); True when it has ended."""
        self._thread.join(timeout)
        return self.done

    def _report(self, fraction: float, message: str) -> None:
        with self._lock:
            self._progress = (float(fraction), message)

    def _compute(self, report: Callable[[float, str], None], should_stop: Callable[[], bool]) -> None:
        raise NotImplementedError

    def _work(self) -> None:
        from metareg.errors import Cancelled

        try:
            self._compute(self._report, self._stop.is_set)
        except Cancelled:
            self.cancelled = True
            self._report(self.progress[0], "cancelled")
        except BaseException as error:  # reported to the user by the Logic; the thread must not die silently
            self.error = error
            self.error_details = traceback.format_exc()
            self._report(self.progress[0], "failed")
