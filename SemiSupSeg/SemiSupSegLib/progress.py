"""Progress reporting for long work: a human progress bar, or one JSON object per line.

The JSON-lines protocol (documented in ``docs/PROGRESS_PROTOCOL.md``) is what the Slicer
training panel reads from the training process. Every line is one object with
``"protocol": 1`` and an ``"event"`` among: started, progress, validation, checkpoint,
finished, cancelled, error.
"""

from __future__ import annotations

import json
import math
import sys
import time
from typing import IO, Any

PROTOCOL_VERSION = 1


def _clean(value: Any) -> Any:
    """JSON-safe values: floats rounded, NaN/inf as null, tensors as floats."""
    if hasattr(value, "item") and callable(value.item):
        value = value.item()
    if isinstance(value, float):
        return round(value, 6) if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


class Reporter:
    """Base reporter: a no-op. ``emit`` receives every event."""

    def __init__(self) -> None:
        self.start_time = time.monotonic()

    def emit(self, event: str, **fields: Any) -> None:
        pass

    def elapsed(self) -> float:
        return time.monotonic() - self.start_time


class JsonLinesReporter(Reporter):
    """One JSON object per line, flushed at once (stdout by default)."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        super().__init__()
        self.stream = stream or sys.stdout

    def emit(self, event: str, **fields: Any) -> None:
        record = {"protocol": PROTOCOL_VERSION, "event": event, "time": round(self.elapsed(), 3)}
        record.update(_clean(fields))
        self.stream.write(json.dumps(record) + "\n")
        self.stream.flush()


class HumanReporter(Reporter):
    """A one-line progress bar with losses and ETA on stderr, plus a line per notable event."""

    def __init__(self, stream: IO[str] | None = None, width: int = 28) -> None:
        super().__init__()
        self.stream = stream or sys.stderr
        self.width = width
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self._last_draw = 0.0

    def emit(self, event: str, **fields: Any) -> None:
        if event == "progress":
            self._bar(fields)
        elif event == "started":
            self._line(f"{fields.get('task', 'training')} started: {fields.get('summary', '')}")
        elif event == "validation":
            metrics = ", ".join(f"{k} {v:.4f}" for k, v in fields.get("metrics", {}).items())
            self._line(f"step {fields.get('step')}: validation {metrics}")
        elif event in ("finished", "cancelled", "error"):
            self._line(f"{event}: {fields.get('message', '')}")

    def _bar(self, fields: dict) -> None:
        step, total = fields.get("step", 0), max(1, fields.get("total", 1))
        now = time.monotonic()
        if self.tty is False and step not in (1, total) and now - self._last_draw < 10:
            return  # in a log file, one line every 10 s is enough
        self._last_draw = now
        filled = int(self.width * step / total)
        losses = " ".join(f"{k} {v:.4f}" for k, v in fields.get("losses", {}).items())
        eta = fields.get("eta_seconds")
        eta_text = f" ETA {_format_seconds(eta)}" if eta is not None else ""
        text = f"[{'#' * filled}{'.' * (self.width - filled)}] {step}/{total} {losses}{eta_text}"
        self.stream.write(("\r" + text) if self.tty else text + "\n")
        self.stream.flush()

    def _line(self, text: str) -> None:
        self.stream.write(("\n" if self.tty else "") + text + "\n")
        self.stream.flush()


def _format_seconds(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def make_reporter(kind: str) -> Reporter:
    if kind == "json":
        return JsonLinesReporter()
    if kind == "human":
        return HumanReporter()
    if kind == "none":
        return Reporter()
    raise ValueError(f"unknown progress kind {kind!r}; use human, json or none")
