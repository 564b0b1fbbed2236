"""Helpers shared by the semi-supervised methods: options, EMA teachers, Monte-Carlo predictions.

The training Monte-Carlo passes (UA-MT's teacher, the Dual-UNet's P^) run with dropout active, input noise
``clamp(N(0, 0.1^2), -0.2, 0.2)`` and all ``T`` passes as one batched forward under ``no_grad``
(METHODS.md, "Notation"). BatchNorm has two modes (option ``mc_batchnorm`` of both methods):

- ``"batch"`` (default, METHODS.md "000", as the authors' and UA-MT's code): every pass normalises with
  the batch statistics of its own ``B`` patches, like the training forward that gives y^, and the running
  statistics (``running_mean``, ``running_var``, ``num_batches_tracked``) are neither read nor updated.
  The batched forward equals ``T`` separate train-mode passes because the statistics are taken per pass
  (:func:`grouped_batch_norm`), not over all ``T * B`` patches.
- ``"running"`` (before issue 13): BatchNorm in eval mode on the running statistics, through
  :func:`SemiSupSegLib.inference.mc_probabilities`, as at inference. Measured to bias P^ against y^
  (docs/BENCHMARKS.md, mc-bias).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError, checked_number
from ..inference import _autocast, entropy, mc_inputs, mc_probabilities, resolve_precision

__all__ = [
    "MC_BATCHNORM",
    "OptionParser",
    "as_bool",
    "check_options",
    "choice_option",
    "ema_decay",
    "eval_mode",
    "frozen",
    "grouped_batch_norm",
    "input_noise",
    "load_stored",
    "mc_prediction",
    "number_option",
    "paper_ramp_steps",
    "update_ema",
]

# Large enough that inference's memory guard never splits the training Monte-Carlo passes.
_ONE_FORWARD_BUDGET = 1 << 50

MC_BATCHNORM = ("batch", "running")
"""BatchNorm in the training Monte-Carlo passes: the passes' own batch statistics, or the running ones."""


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


def frozen_copy(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` whose parameters take no gradient: an EMA teacher, a mask source."""
    copy_ = copy.deepcopy(module)
    copy_.requires_grad_(False)
    return copy_


def load_stored(networks: dict[str, dict[str, torch.Tensor]], preferred: str, *modules: nn.Module) -> bool:
    """Fine-tuning (``Method.init_from``): load the stored network ``preferred`` (else the stored model's
    first) into every one of ``modules``, e.g. a student and its EMA teacher; False when nothing is stored."""
    if not networks:
        return False
    state = networks.get(preferred) or next(iter(networks.values()))
    for module in modules:
        module.load_state_dict(state)
    return True


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
    net: nn.Module, x: torch.Tensor, samples: int, precision: str = "fp32", batchnorm: str = "batch"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean Monte-Carlo softmax P^ ``[B, K, ...]`` and its entropy U^ ``[B, ...]``, without gradient.

    Args:
        net: the network; its train/eval flags and BatchNorm buffers are as before afterwards.
        x: the patches ``[B, C, Z, Y, X]``.
        samples: ``T``, the number of noisy dropout passes, run as one batched forward of ``T * B`` patches
            under ``no_grad``.
        precision: "fp32", "bf16" or "auto" (bf16 where the device computes it natively), for these passes
            only: they produce no-gradient targets, and bf16 makes them about 1.6x cheaper on this
            project's CPUs.
        batchnorm: "batch" (each pass on its own batch statistics, running statistics untouched) or
            "running" (eval-mode BatchNorm); see the module docstring.

    Returns:
        ``(P^, U^)``, float32.
    """
    if batchnorm not in MC_BATCHNORM:
        raise InputError(f"mc_batchnorm must be one of {', '.join(MC_BATCHNORM)}, got {batchnorm!r}")
    precision = resolve_precision(precision, x.device)
    if batchnorm == "running":
        probs = mc_probabilities(
            [net], x, samples, precision=precision, channels_last=False, memory_budget=_ONE_FORWARD_BUDGET
        )
    else:
        probs = _mc_batch_statistics(net, x, int(samples), precision)
    return probs, entropy(probs)


def _mc_batch_statistics(net: nn.Module, x: torch.Tensor, samples: int, precision: str) -> torch.Tensor:
    """Mean softmax of ``samples`` passes in train mode, BatchNorm on each pass's own batch statistics."""
    if samples < 1:
        raise InputError(f"Monte-Carlo samples must be >= 1, got {samples}")
    inputs = mc_inputs(x, samples, None)
    autocast = _autocast(precision, x.device)
    with torch.no_grad(), _train_mode_without_running_statistics(net, samples), autocast:
        logits = net(inputs)
    probs = torch.softmax(logits.float(), dim=1)
    return probs.reshape(samples, x.shape[0], *probs.shape[1:]).mean(dim=0)


def grouped_batch_norm(bn: nn.modules.batchnorm._BatchNorm, x: torch.Tensor, groups: int) -> torch.Tensor:
    """``bn`` in train mode on each of ``groups`` consecutive sub-batches of ``x`` separately, without
    reading or updating its running statistics.

    Args:
        bn: a BatchNorm module (its affine weight and bias and ``eps`` are used).
        x: ``[groups * B, C, ...]``, sub-batch ``g`` being rows ``g * B`` to ``(g + 1) * B - 1``.
        groups: the number of sub-batches (the Monte-Carlo passes).

    Returns:
        ``x`` normalised per sub-batch and channel, as ``groups`` separate train-mode calls would.
    """
    n, c, *spatial = x.shape
    b = n // groups
    # channel (g, c) of [B, groups * C, ...] holds sub-batch g's channel c: one fused call, exact stats.
    per_group = x.reshape(groups, b, c, *spatial).transpose(0, 1).reshape(b, groups * c, *spatial)
    weight = None if bn.weight is None else bn.weight.repeat(groups)
    bias = None if bn.bias is None else bn.bias.repeat(groups)
    out = F.batch_norm(per_group, None, None, weight, bias, training=True, eps=bn.eps)
    return out.reshape(b, groups, c, *spatial).transpose(0, 1).reshape(n, c, *spatial)


@contextlib.contextmanager
def _train_mode_without_running_statistics(net: nn.Module, groups: int) -> Iterator[None]:
    """``net`` in train mode (dropout active) whose BatchNorm layers run :func:`grouped_batch_norm`; the
    modules' train flags are restored afterwards."""
    saved = [(m, m.training) for m in net.modules()]
    norms = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    try:
        net.train()
        for bn in norms:
            bn.forward = lambda x, bn=bn: grouped_batch_norm(bn, x, groups)
        yield
    finally:
        for bn in norms:
            bn.__dict__.pop("forward", None)
        for module, training in saved:
            module.training = training


@contextlib.contextmanager
def eval_mode(*modules: nn.Module) -> Iterator[None]:
    """``modules`` in eval mode inside (BatchNorm on running statistics, no dropout); flags restored after."""
    saved = [(m, m.training) for module in modules for m in module.modules()]
    try:
        for module in modules:
            module.eval()
        yield
    finally:
        for m, training in saved:
            m.training = training


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
