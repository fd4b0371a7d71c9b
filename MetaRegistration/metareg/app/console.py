"""The ``metareg`` console command: :func:`metareg.app.cli.main`, with Ctrl-C while the engine loads handled.

Loading the engine (torch, SimpleITK) takes a second or more. A KeyboardInterrupt raised inside it would print a
traceback, or, inside torch's native start-up code, abort the process (measured: SIGABRT, "terminate called after
throwing an instance of 'pybind11::error_already_set'"). So while the engine loads, Ctrl-C is only noted; once it has
loaded, the command ends with one line and status 130, having done nothing.
"""

from __future__ import annotations

import signal
import sys

INTERRUPTED_AT_START = "metareg: interrupted while starting; nothing was done"


def main() -> int:
    interrupted: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: interrupted.append(signum))
    try:
        from metareg.app.cli import main as cli_main
    finally:
        signal.signal(signal.SIGINT, previous)
    if interrupted:
        print(INTERRUPTED_AT_START, file=sys.stderr)
        return 130
    return cli_main()
