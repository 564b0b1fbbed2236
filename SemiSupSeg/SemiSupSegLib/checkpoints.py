"""What every trainer (segmentation, locator) shares about a run folder.

A run writes into ``OUT/.training/``: ``checkpoint.pt`` (plain tensors and strings, written
atomically, read with ``weights_only=True``) and the lock (:mod:`SemiSupSegLib.runlock`). On
SIGINT/SIGTERM a trainer finishes its step, writes a checkpoint and stops.

A checkpoint may hold the state of every random stream (:func:`capture_random_state`), so that a run
resumed from it continues exactly where it stopped: tensors for torch's generators, one JSON string
for the rest (numpy, Python ``random`` and the trainer's own generators).
"""

from __future__ import annotations

import contextlib
import json
import random
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch

from .atomic import atomic_torch_save
from .errors import InputError, ModelError
from .progress import Reporter
from .run_data import checkpoint_path as checkpoint_path  # its home: torch-free, read by the panels too

ConfigT = TypeVar("ConfigT")


def write_checkpoint(path: Path, state: dict, reporter: Reporter) -> None:
    """Save atomically (a crash never leaves half a checkpoint) and emit a ``checkpoint`` event.

    A failed write (full disk, no permission) raises :class:`~SemiSupSegLib.atomic.WriteError` and
    leaves the previous checkpoint as it was.
    """
    atomic_torch_save(path, state)
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


def numpy_state_to_json(generator: np.random.RandomState | None = None) -> dict:
    """The state of a numpy ``RandomState`` as plain JSON values (the 624-word key as a list).

    Args:
        generator: the ``RandomState`` (MONAI's transforms keep one in ``.R``); None: numpy's global one.

    Returns:
        ``RandomState.get_state(legacy=False)`` with the key array as a list of ints.
    """
    state = generator.get_state(legacy=False) if generator is not None else np.random.get_state(legacy=False)
    return {**state, "state": {"key": state["state"]["key"].tolist(), "pos": int(state["state"]["pos"])}}


def numpy_state_from_json(state: dict, generator: np.random.RandomState | None = None) -> None:
    """Set a numpy ``RandomState`` to a state from :func:`numpy_state_to_json`.

    Args:
        state: the JSON values.
        generator: the ``RandomState`` to set; None: numpy's global one.
    """
    (generator.set_state if generator is not None else np.random.set_state)(state)


def capture_random_state(extra: dict | None = None) -> dict:
    """Every global random stream (torch CPU and CUDA, numpy, Python) plus ``extra`` JSON-able states.

    Args:
        extra: the trainer's own generators (e.g. the patch sampler's), as JSON values.

    Returns:
        ``{"torch": ByteTensor, "cuda": [ByteTensor, ...], "json": str}``, loadable with
        ``weights_only=True``.
    """
    version, internal, gauss = random.getstate()
    python = [version, list(internal), gauss]
    plain = {"numpy": numpy_state_to_json(), "python": python, "extra": extra or {}}
    return {
        "torch": torch.get_rng_state(),
        # CUDA's generators are only touched once CUDA is in use; before that they still hold their seed.
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
        "json": json.dumps(plain),
    }


def restore_random_state(state: dict) -> dict:
    """Put the global random streams back as :func:`capture_random_state` found them.

    Args:
        state: what :func:`capture_random_state` returned (tensors may have been mapped to a GPU).

    Returns:
        The ``extra`` states, for the trainer to give back to its own generators.
    """
    plain = json.loads(state["json"])
    torch.set_rng_state(state["torch"].cpu())
    cuda = [s.cpu() for s in state.get("cuda", [])]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    numpy_state_from_json(plain["numpy"])
    version, internal, gauss = plain["python"]
    random.setstate((version, tuple(internal), gauss))
    return plain["extra"]


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
