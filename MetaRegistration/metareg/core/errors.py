"""Errors a user can act on.

Every error raised for bad input names the input (a file path, a command-line option, a landmark label) and says what
to do. The CLI turns a :class:`MetaRegError` into a one-line message and a non-zero exit code, without a traceback.
"""

from __future__ import annotations


class MetaRegError(Exception):
    """Base class of all errors the engine raises on purpose."""


class InputError(MetaRegError):
    """An input (file, image, landmark set, option) is missing, unreadable or unusable.

    Args:
        input_name: what the user gave, as they would recognise it (e.g. ``"--fixed /data/f.nii.gz"``).
        problem: what is wrong with it.
        hint: what to do about it (optional).
    """

    def __init__(self, input_name: str, problem: str, hint: str = ""):
        self.input_name = input_name
        self.problem = problem
        self.hint = hint
        message = f"{input_name}: {problem}"
        if hint:
            message += f" ({hint})"
        super().__init__(message)


class ModelError(MetaRegError):
    """A model file or card is missing, tampered with (sha256 mismatch) or inconsistent."""


class OutputError(MetaRegError):
    """An output path cannot be written."""


class Cancelled(MetaRegError):
    """The user cancelled the run; nothing was written."""


class ParameterError(InputError, ValueError):
    """A Python parameter of the library has a value it cannot use (negative, NaN, infinite, out of range, wrong type).

    ``input_name`` is the parameter as a Python caller writes it (``"adapt_learning_rate"``,
    ``"LossConfig.regulariser_weight"``); the CLI names the matching command-line option instead
    (:data:`metareg.app.cli.PARAMETER_OPTIONS`), and a model card its field.
    """


class RegistrationWarning(UserWarning):
    """Something about the inputs that makes the result doubtful but not impossible (images that do not overlap,
    landmarks outside their image). The run goes on; the report lists the warnings; the CLI prints each on one line."""
