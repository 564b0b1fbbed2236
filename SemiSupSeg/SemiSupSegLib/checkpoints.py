"""What every trainer (segmentation, locator) shares about a run folder.

A run writes into ``OUT/.training/``: ``checkpoint.pt`` (plain tensors and strings, written
atomically, read with ``weights_only=True``) and the lock (:mod:`SemiSupSegLib.runlock`). On
SIGINT/SIGTERM a trainer finishes its step, writes a checkpoint and stops.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import torch

from .atomic import atomic_path
from .errors import InputError, ModelError
from .progress import Reporter

CHECKPOINT = "checkpoint.pt"
ConfigT = TypeVar("ConfigT")


def checkpoint_path(out: str | Path) -> Path:
    return Path(out) / ".training" / CHECKPOINT


def write_checkpoint(path: Path, state: dict, reporter: Reporter) -> None:
    """Save atomically (a crash never leaves half a checkpoint) and emit a ``checkpoint`` event."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    reporter.emit("checkpoint", step=state["step"], path=str(path))


def read_checkpoint(path: Path, device: str | torch.device = "cpu") -> dict:
    """A checkpoint's state (``weights_only=True``); clear errors when missing or damaged."""
    if not path.is_file():
        raise InputError(f"cannot resume: no checkpoint at {path}")
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a damaged file
        raise ModelError(f"checkpoint {path} is corrupt: {type(exc).__name__}") from None
    if not isinstance(state, dict) or "step" not in state or "config" not in state:
        raise ModelError(f"checkpoint {path} is corrupt: not a SemiSupSeg checkpoint")
    return state


def stored_config(out: str | Path, from_json: Callable[[str], ConfigT]) -> ConfigT:
    """The configuration of an interrupted run in ``out``, parsed by ``from_json`` (for ``--resume``)."""
    path = checkpoint_path(out)
    try:
        return from_json(read_checkpoint(path)["config"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"checkpoint {path} is corrupt: {exc}") from None


@contextlib.contextmanager
def stop_on_signals(request_stop: Callable[[], None]) -> Iterator[None]:
    """While inside, SIGINT/SIGTERM call ``request_stop`` instead of killing the process.

    Only the main thread can install handlers; elsewhere (a Slicer worker thread) this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in previous:
        signal.signal(s, lambda signum, frame: request_stop())
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
