"""Value checks shared by the library's configs, the model card and :func:`metareg.core.registration.register`.

Each check returns the value (as ``int``/``float``) or raises :class:`metareg.core.errors.ParameterError` naming the
parameter. ``bool`` is never taken for a number, and floats are never taken for integers (``1e9`` is not a step count).
"""

from __future__ import annotations

import math
from typing import Any

from metareg.core.errors import ParameterError


def _describe(value: Any) -> str:
    return repr(value) if not isinstance(value, str) else f"the text {value!r}"


def check_int(value: Any, name: str, minimum: int | None = None, maximum: int | None = None) -> int:
    """``value`` as an ``int`` in ``[minimum, maximum]``; a ParameterError naming ``name`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ParameterError(name, f"must be a whole number, got {_describe(value)}")
    if minimum is not None and value < minimum:
        raise ParameterError(name, f"must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ParameterError(name, f"must be <= {maximum}, got {value}")
    return int(value)


def check_float(value: Any, name: str, minimum: float | None = None, maximum: float | None = None,
                positive: bool = False) -> float:
    """``value`` as a finite ``float`` in ``[minimum, maximum]`` (and ``> 0`` with ``positive``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ParameterError(name, f"must be a number, got {_describe(value)}")
    number = float(value)
    if not math.isfinite(number):
        raise ParameterError(name, f"must be a finite number, got {number}")
    if positive and number <= 0:
        raise ParameterError(name, f"must be > 0, got {number:g}")
    if minimum is not None and number < minimum:
        raise ParameterError(name, f"must be >= {minimum:g}, got {number:g}")
    if maximum is not None and number > maximum:
        raise ParameterError(name, f"must be <= {maximum:g}, got {number:g}")
    return number


def check_choice(value: Any, name: str, choices) -> str:
    """``value`` if it is one of ``choices`` (strings)."""
    if not isinstance(value, str) or value not in choices:
        raise ParameterError(name, f"must be one of {', '.join(sorted(choices))}, got {_describe(value)}")
    return value


def check_bool(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise ParameterError(name, f"must be true or false, got {_describe(value)}")
    return value
