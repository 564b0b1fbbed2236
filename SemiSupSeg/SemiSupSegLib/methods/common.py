"""Helpers shared by the semi-supervised methods: options, EMA teachers, Monte-Carlo predictions.

The Monte-Carlo passes reuse :func:`SemiSupSegLib.inference.mc_probabilities` (dropout active, BatchNorm
in eval mode using the network's running statistics, input noise ``clamp(N(0, 0.1^2), -0.2, 0.2)``, all
``T`` passes as one batched forward under ``no_grad``) so that training and inference estimate uncertainty
the same way. BatchNorm in eval mode is what makes the batched passes independent of each other (batch
statistics would mix the ``T`` copies), so the batched forward equals ``T`` separate passes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator

import torch
from torch import nn

from ..errors import InputError, checked_number
from ..inference import entropy, mc_inputs, mc_probabilities, resolve_precision

__all__ = [
    "OptionParser",
    "as_bool",
    "check_options",
    "choice_option",
    "ema_decay",
    "frozen",
    "input_noise",
    "mc_prediction",
    "number_option",
    "paper_ramp_steps",
    "update_ema",
]

# Large enough that inference's memory guard never splits the training Monte-Carlo passes.
_ONE_FORWARD_BUDGET = 1 << 50


def check_options(method: str, options: dict, allowed: Iterable[str] = ()) -> None:
    """Raise :class:`InputError` for options ``method`` does not know (a typo must not pass silently)."""
    allowed = sorted(allowed)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        known = f"its options are {', '.join(allowed)}" if allowed else "it has no options"
        raise InputError(f"method {method!r} has no option(s) {', '.join(unknown)}; {known}")


OptionParser = Callable[[str, object], object]
"""Parses one method option: ``parser(name, value)`` returns the converted value or raises InputError."""


def as_bool(name: str, value: object) -> bool:
    """A boolean method option (JSON ``true``/``false``, or the strings ``"true"``/``"false"``)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
        return value.lower() in ("true", "1")
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise InputError(f"method option {name} must be true or false, got {value!r}")


def number_option(
    kind: type = float,
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
    optional: bool = False,
) -> OptionParser:
    """An :data:`OptionParser` of a number (see :func:`~SemiSupSegLib.errors.checked_number` for the
    arguments); ``optional`` lets ``None`` (the method's default) pass."""

    def parse(name: str, value: object) -> int | float | None:
        if optional and value is None:
            return None
        what = f"method option {name}"
        return checked_number(what, value, kind, low, high, low_open=low_open, high_open=high_open)

    return parse


def choice_option(*choices: str) -> OptionParser:
    """An :data:`OptionParser` accepting one of ``choices`` (text)."""

    def parse(name: str, value: object) -> str:
        if value not in choices:
            raise InputError(f"method option {name} must be one of {', '.join(choices)}, got {value!r}")
        return str(value)

    return parse


def paper_ramp_steps(total_steps: int, paper_ramp: int = 4000, paper_total: int = 10000) -> int:
    """The paper's ramp length (4k of 10k steps), scaled down proportionally for shorter runs."""
    return max(1, int(round(paper_ramp * min(1.0, total_steps / paper_total))))


def ema_decay(step: int, max_decay: float = 0.99) -> float:
    """EMA decay with warm-up ``min(1 - 1/(t + 1), max_decay)``; 0 at t = 0 (the teacher copies)."""
    return min(1.0 - 1.0 / (step + 1.0), float(max_decay))


@torch.no_grad()
def update_ema(teacher: nn.Module, student: nn.Module, decay: float) -> None:
    """teacher <- decay * teacher + (1 - decay) * student, on parameters only.

    BatchNorm buffers are not averaged: they follow the teacher's own (train-mode) forward passes.
    """
    for p_t, p_s in zip(teacher.parameters(), student.parameters(), strict=True):
        p_t.mul_(decay).add_(p_s.detach(), alpha=1.0 - decay)


def input_noise(x: torch.Tensor) -> torch.Tensor:
    """``x + clamp(N(0, 0.1^2), -0.2, 0.2)``, the same noise as the Monte-Carlo passes."""
    return mc_inputs(x, 1, None)


def mc_prediction(
    net: nn.Module, x: torch.Tensor, samples: int, precision: str = "fp32"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean Monte-Carlo softmax P^ ``[B, K, ...]`` and its entropy U^ ``[B, ...]``, without gradient.

    ``samples`` noisy dropout passes of ``net`` run as one batched forward of ``samples * B`` patches under
    ``no_grad``; the network's train/eval flags are restored afterwards. ``precision`` ("fp32", "bf16",
    "auto" = bf16 where the device computes it natively) applies to these passes only: they produce
    no-gradient targets, and bf16 makes them about 1.6x cheaper on this project's CPUs.
    """
    precision = resolve_precision(precision, x.device)
    probs = mc_probabilities(
        [net], x, samples, precision=precision, channels_last=False, memory_budget=_ONE_FORWARD_BUDGET
    )
    return probs, entropy(probs)


@contextlib.contextmanager
def frozen(*modules: nn.Module | None) -> Iterator[None]:
    """Forward passes inside see the parameters of ``modules`` as constants (no gradient reaches them)."""
    params = [p for m in modules if m is not None for p in m.parameters()]
    flags = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in zip(params, flags, strict=True):
            p.requires_grad_(flag)
