"""Progress bars on stderr: tqdm's where it is installed, otherwise a plain line now and then.

tqdm is optional (3D Slicer's Python does not ship it): registering and training must run without it.
"""

from __future__ import annotations

import sys
import time
from typing import Iterable, Iterator

PLAIN_INTERVAL = 30.0
"""Seconds between two lines of the plain fallback (at least; it never prints more often than this)."""


class PlainProgress:
    """The part of tqdm's interface the engine uses, printing ``desc: n/total postfix`` every ``interval`` seconds.

    Short runs print nothing; a run that printed a line ends with a last one on :meth:`close` (when ``leave``).
    """

    def __init__(self, iterable: Iterable | None = None, total: float | None = None, initial: float = 0,
                 desc: str = "", disable: bool = False, leave: bool = True, interval: float = PLAIN_INTERVAL,
                 file=None):
        self.iterable = iterable
        if total is None and iterable is not None:
            try:
                total = len(iterable)  # type: ignore[arg-type]
            except TypeError:
                total = None
        self.total = total
        self.n = initial
        self.desc = desc
        self.disable = disable
        self.leave = leave
        self.interval = interval
        self.file = file
        self.postfix = ""
        self.started = time.perf_counter()
        self.last_print = self.started
        self.printed = False
        self.closed = False

    def __iter__(self) -> Iterator:
        for item in self.iterable if self.iterable is not None else ():
            yield item
            self.update(1)
        self.close()  # as tqdm does at the end of the iterable

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def update(self, n: float = 1) -> None:
        self.n += n
        if self.disable:
            return
        now = time.perf_counter()
        if now - self.last_print >= self.interval:
            self._print(now)

    def set_postfix(self, ordered_dict: dict | None = None, refresh: bool = True, **kwargs) -> None:
        items = {**(ordered_dict or {}), **kwargs}
        self.postfix = ", ".join(f"{key}={value}" for key, value in items.items())

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.postfix = str(s)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if not self.disable and self.leave and self.printed:
            self._print(time.perf_counter())

    def _print(self, now: float) -> None:
        self.last_print = now
        self.printed = True
        count = f"{self.n:g}/{self.total:g}" if self.total else f"{self.n:g}"
        line = f"{self.desc}: {count} [{now - self.started:.0f} s]" + (f" {self.postfix}" if self.postfix else "")
        stream = self.file if self.file is not None else sys.stderr
        if stream is None:  # no stderr (a GUI process): say nothing
            return
        try:
            print(line, file=stream, flush=True)
        except (OSError, ValueError):  # a closed or broken stream: say nothing
            pass


def progress_bar(iterable: Iterable | None = None, *, total: float | None = None, initial: float = 0, desc: str = "",
                 disable: bool = False, leave: bool = True, mininterval: float = 0.1, **tqdm_options):
    """A tqdm bar on stderr, or a :class:`PlainProgress` when tqdm cannot be imported.

    ``tqdm_options`` (``bar_format`` …) go to tqdm only. The fallback prints at most every
    ``max(mininterval, PLAIN_INTERVAL)`` seconds.
    """
    try:
        from tqdm import tqdm
    except ImportError:
        return PlainProgress(iterable, total=total, initial=initial, desc=desc, disable=disable, leave=leave,
                             interval=max(mininterval, PLAIN_INTERVAL))
    return tqdm(iterable, total=total, initial=initial, desc=desc, disable=disable, leave=leave, file=sys.stderr,
                mininterval=mininterval, **tqdm_options)


class ProgressBar:
    """A progress bar fed with (fraction, message) callbacks; silent when ``enabled`` is False.

    tqdm's where it is installed, else a plain line on stderr now and then (:func:`progress_bar`).
    """

    def __init__(self, enabled: bool, description: str = "registering"):
        self.bar = None
        if enabled:
            interactive = sys.stderr is not None and sys.stderr.isatty()
            self.bar = progress_bar(total=1000, desc=description, leave=False,
                                    mininterval=0.1 if interactive else 10.0,
                                    bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}<{remaining} {postfix}")

    def __call__(self, fraction: float, message: str) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(message, refresh=False)
            self.bar.update(int(1000 * fraction) - self.bar.n)  # redraws at most every mininterval

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
