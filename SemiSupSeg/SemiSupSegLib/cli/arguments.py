"""Argument types and help helpers shared by every command: one line per bad value, naming it."""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Callable
from typing import NoReturn

from ..errors import InputError, checked_number


# --- argument helpers ---------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    """argparse whose errors reach :func:`main` as one line (exit status 2), not usage text and an exit.

    A sub-command's parser may be given ``populate``: a function adding its arguments, called the first
    time that parser is used (parsed or asked for help). ``train``'s choices and defaults come from
    the methods, networks and MONAI transforms, whose import takes seconds that ``semisupseg --help``
    and every other command's bad argument need not wait for.
    """

    def __init__(self, *args, populate: Callable[[argparse.ArgumentParser], None] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self._populate = populate

    def populated(self) -> _Parser:
        """This parser with its arguments added (``populate`` runs once)."""
        populate, self._populate = self._populate, None
        if populate is not None:
            populate(self)
        return self

    def parse_known_args(self, args=None, namespace=None):
        return super(_Parser, self.populated()).parse_known_args(args, namespace)

    def format_usage(self) -> str:
        return super(_Parser, self.populated()).format_usage()

    def format_help(self) -> str:
        return super(_Parser, self.populated()).format_help()

    def error(self, message: str) -> NoReturn:
        command = self.prog.partition(" ")[2]
        raise InputError(f"{command + ': ' if command else ''}{message} (see '{self.prog} --help')")


def _number(kind: type, low: float | None = None, high: float | None = None, **open_bounds: bool):
    """An argparse ``type``: a number checked by :func:`checked_number` (argparse names the flag)."""

    def parse(text: str) -> int | float:
        try:
            return checked_number("", text, kind, low, high, **open_bounds)
        except InputError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


MAX_INT = 2**31 - 1
"""The largest integer a flag takes: beyond it a count or a seed overflows C integers in numpy and torch
(``--steps 1e20``, ``--seed 1e30`` gave tracebacks)."""


_COUNT = _number(int, 1, MAX_INT)  # steps, batch, sizes, intervals, samples


_AMOUNT = _number(int, 0, MAX_INT)  # numbers of cases, seeds, voxels of translation


_POSITIVE = _number(float, 0.0, low_open=True)  # learning rates, widths, spacings


_PROBABILITY = _number(float, 0.0, 1.0)


_THRESHOLD = _number(float, 0.0, 1.0, high_open=True)  # "probability > 1" never holds: an empty label


def _triple(kind: type, order: str, positive: bool = False):
    """An argparse ``type``: 3 numbers ``a,b,c`` in ``order`` (one integer stands for all 3)."""
    noun = ("positive " if positive else "") + ("integers" if kind is int else "numbers")

    def parse(text: str) -> tuple:
        parts = [p for p in text.replace(";", ",").split(",") if p.strip()]
        if len(parts) == 1 and kind is int:
            parts = parts * 3
        if len(parts) != 3:
            raise argparse.ArgumentTypeError(f"needs 3 values ({order}); got {text!r}")
        low, high = (0 if positive else None), (MAX_INT if kind is int else None)
        try:
            return tuple(checked_number("", p, kind, low, high, low_open=True) for p in parts)
        except InputError:
            raise argparse.ArgumentTypeError(f"must be 3 {noun} ({order}); got {text!r}") from None

    return parse


_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


def _device(text: str) -> str:
    """An argparse ``type``: a device :func:`~SemiSupSegLib.training.resolve_device` understands."""
    if not _DEVICE.fullmatch(text):
        raise argparse.ArgumentTypeError(f"must be auto, cpu, cuda or cuda:N; got {text!r}")
    return text


def _image_output(text: str) -> str:
    """An argparse ``type``: a path to write an image to, refused before any work if its format is unknown."""
    from ..imageio import SUPPORTED_EXTENSIONS, image_extension

    if not image_extension(text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is no image file; end it with {', '.join(SUPPORTED_EXTENSIONS)}"
        )
    return text


def _profile_name(text: str) -> str:
    """An argparse ``type``: a phantom profile name (the list is read from the phantom module on use)."""
    from ..phantom import check_profile

    try:
        return check_profile(text)
    except InputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _method_option(text: str) -> tuple[str, object]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"method option must be KEY=VALUE; got {text!r}")
    key, value = text.split("=", 1)
    try:
        return key.replace("-", "_"), json.loads(value)
    except json.JSONDecodeError:
        return key.replace("-", "_"), value


def _scales(text: str) -> tuple[int, ...]:
    try:
        values = tuple(checked_number("", p, int, 1) for p in text.replace(";", ",").split(",") if p.strip())
    except InputError:
        raise argparse.ArgumentTypeError(f"must be positive integers like 9,3,1; got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("needs at least one step size")
    return values


def _shown(value: object) -> str:
    """A config value as the command line writes it (tuples as ``1,2,3``)."""
    if isinstance(value, (tuple, list)):
        return ",".join(_shown(v) for v in value)
    if isinstance(value, bool):
        return "on" if value else "off"
    return json.dumps(value) if isinstance(value, dict) else str(value)


def _default(config_cls: type, field: str) -> str:
    """``default X`` for a help text, read from the config dataclass (the one home of the defaults)."""
    return f"default {_shown(getattr(config_cls, field))}"
