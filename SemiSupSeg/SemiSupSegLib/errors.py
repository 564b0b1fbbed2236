"""Errors the engine raises on bad input, and the check of a user's number that names it.

The CLI and the Slicer panels show the messages as they are.
"""

import math


class SemiSupSegError(Exception):
    """Base class: a problem the user can act on, with a message that names it."""


class InputError(SemiSupSegError):
    """An image, label or point that cannot be used (missing, corrupt, wrong dimension, NaN...)."""


class DatasetError(SemiSupSegError):
    """A ``dataset.json`` or one of its cases is invalid. ``problems`` lists every problem found."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = list(problems or [message])


class ModelError(SemiSupSegError):
    """A model folder is missing, incomplete or corrupt."""


class TrainingCancelled(SemiSupSegError):
    """Training stopped on request (SIGINT/SIGTERM); the last checkpoint is usable."""


class TrainingDiverged(SemiSupSegError):
    """A loss became NaN or infinite; the last checkpoint (if any) is still usable."""


def _range_text(kind: type, low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    noun = "an integer" if kind is int else "a number"
    shown = (lambda v: str(int(v))) if kind is int else (lambda v: f"{v:g}")  # 2147483647, not 2.14748e+09
    if low is not None and high is not None:
        return f"{noun} in {'(' if low_open else '['}{shown(low)}, {shown(high)}{')' if high_open else ']'}"
    if low is not None:
        return f"{noun} {'>' if low_open else '>='} {shown(low)}"
    return noun


def checked_number(
    what: str,
    value: object,
    kind: type = float,
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> int | float:
    """A number given by the user as ``kind`` (int or float), finite and within ``[low, high]``.

    Every numeric method option and command-line value is checked here, so each bad value (text, NaN,
    a fraction for an integer, a value out of range) gives one message that names it.

    Args:
        what: what the value is, for the message (``"method option lr"``); may be empty.
        value: the value as given (a JSON number, or text such as ``"1e-3"``).
        kind: ``int`` or ``float``.
        low, high: inclusive bounds (``None``: unbounded); ``low_open``/``high_open`` make them exclusive.

    Returns:
        The value converted to ``kind``.
    """
    wanted = _range_text(kind, low, high, low_open, high_open)
    problem = InputError(f"{what} must be {wanted}, got {value!r}".strip())
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise problem
    try:
        number = float(value)
    except (ValueError, OverflowError):  # OverflowError: an integer beyond a float (JSON 1e400 as digits)
        raise problem from None
    if not math.isfinite(number) or (kind is int and not number.is_integer()):
        raise problem
    below = low is not None and (number <= low if low_open else number < low)
    above = high is not None and (number >= high if high_open else number > high)
    if below or above:
        raise problem
    return int(number) if kind is int else number
