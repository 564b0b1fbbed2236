"""What the training panel shows about one run, fed by the child's protocol events (torch-free):
step, total, ETA, current losses, the loss and validation histories, the checkpoint, the result.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from .childprocess import TERMINAL_EVENTS


@dataclass
class RunState:
    """What the panel shows about one run; :meth:`update` applies each protocol event."""

    task: str = ""
    status: str = "idle"  # idle starting preparing running stopping finished cancelled error
    step: int = 0
    total: int = 0
    start_step: int = 0
    seconds_per_step: float | None = None
    eta_seconds: float | None = None
    losses: dict = field(default_factory=dict)
    loss_history: list = field(default_factory=list)  # [(step, {name: value})]
    validation_history: list = field(default_factory=list)  # [(step, {metric: value})]
    summary: dict = field(default_factory=dict)
    preparing: tuple = ()  # (case, index, total)
    checkpoint: str | None = None
    checkpoint_step: int | None = None
    model: str | None = None
    metrics: dict = field(default_factory=dict)
    result: dict | None = None
    message: str = ""
    returncode: int | None = None

    def begin(self, task: str, keep_history: bool = False) -> None:
        """A new process starts (``keep_history`` when it resumes the same run)."""
        losses, validations = (self.loss_history, self.validation_history) if keep_history else ([], [])
        checkpoint = (self.checkpoint, self.checkpoint_step) if keep_history else (None, None)
        self.__init__(task=task, status="starting", loss_history=losses, validation_history=validations)
        self.checkpoint, self.checkpoint_step = checkpoint

    @property
    def done(self) -> bool:
        return self.status in TERMINAL_EVENTS

    @property
    def active(self) -> bool:
        return self.status in ("starting", "preparing", "running", "stopping")

    @property
    def fraction(self) -> float:
        return min(1.0, max(0.0, self.step / self.total)) if self.total else 0.0

    def update(self, event: dict) -> None:
        kind = event.get("event")
        handler = getattr(self, f"_on_{kind}", None)
        if handler is not None:
            handler(event)

    def _on_preparing(self, e: dict) -> None:
        self.status = "preparing" if self.status != "stopping" else self.status
        self.preparing = (str(e.get("case", "")), int(e.get("index") or 0), int(e.get("total") or 0))

    def _on_started(self, e: dict) -> None:
        if self.status != "stopping":
            self.status = "running"
        self.task = str(e.get("task") or self.task)
        self.step = self.start_step = int(e.get("step") or 0)
        self.total = int(e.get("total") or 0)
        self.summary = dict(e.get("summary") or {})
        # A resumed run restarts the histories at its first step.
        self.loss_history = [h for h in self.loss_history if h[0] <= self.start_step]
        self.validation_history = [h for h in self.validation_history if h[0] <= self.start_step]

    def _on_progress(self, e: dict) -> None:
        if self.status != "stopping":
            self.status = "running"
        self.step = int(e.get("step") or self.step)
        self.total = int(e.get("total") or self.total)
        self.seconds_per_step = e.get("seconds_per_step")
        self.eta_seconds = e.get("eta_seconds")
        losses = dict(e.get("losses") or {})
        self.losses = losses
        if losses:
            self.loss_history.append((self.step, losses))

    def _on_validation(self, e: dict) -> None:
        metrics = dict(e.get("metrics") or {})
        self.validation_history.append((int(e.get("step") or self.step), metrics))

    def _on_checkpoint(self, e: dict) -> None:
        self.checkpoint = e.get("path")
        self.checkpoint_step = int(e.get("step") or 0)

    def _on_finished(self, e: dict) -> None:
        self.status = "finished"
        self.step = int(e.get("step") or self.total or self.step)
        self.total = int(e.get("total") or self.total)
        self.eta_seconds = 0.0
        self.model = e.get("model")
        self.metrics = dict(e.get("metrics") or {})
        self.result = e.get("result")
        self.message = str(e.get("message") or "finished")

    def _on_cancelled(self, e: dict) -> None:
        self.status = "cancelled"
        self.step = int(e.get("step") or self.step)
        self.checkpoint_step = self.step
        self.message = str(e.get("message") or "stopped")

    def _on_error(self, e: dict) -> None:
        self.status = "error"
        self.message = str(e.get("message") or "the process reported an error")

    def stopping(self) -> None:
        if self.active:
            self.status = "stopping"

    def process_ended(self, returncode: int | None, log_tail: Sequence[str] = ()) -> None:
        """The child exited: without a final event, say why (its exit status and last output)."""
        self.returncode = returncode
        if self.done:
            return
        if self.status == "stopping":
            self.status = "cancelled"
            step = self.checkpoint_step
            where = f"; the checkpoint of step {step} is usable" if step else ""
            self.message = f"stopped (the process was ended){where}"
            return
        self.status = "error"
        tail = "\n".join(list(log_tail)[-8:])
        self.message = f"the process ended with status {returncode} without finishing" + (
            f":\n{tail}" if tail else ""
        )

    # --- what the panel shows -------------------------------------------------------------------
    def eta_text(self) -> str:
        return format_seconds(self.eta_seconds) if self.eta_seconds is not None else "--:--"

    def losses_text(self, digits: int = 4) -> str:
        return "  ".join(f"{k} {_fmt(v, digits)}" for k, v in self.losses.items())

    def status_text(self) -> str:
        if self.status == "preparing" and self.preparing:
            case, index, total = self.preparing
            return f"preparing case {index}/{total} ({case})"
        if self.status in ("running", "stopping"):
            speed = f", {self.seconds_per_step:.2f} s/step" if self.seconds_per_step else ""
            text = f"step {self.step}/{self.total}{speed}, ETA {self.eta_text()}{self._where()}"
            return text + (" - stopping, writing a checkpoint" if self.status == "stopping" else "")
        if self.status in TERMINAL_EVENTS:
            return self.message
        return self.status

    def _where(self) -> str:
        """`` on cuda:0`` (`` on cpu x 2 processes``): the device the run chose (Auto included, issue 18)."""
        device = self.summary.get("device")
        if not device:
            return ""
        world = int(self.summary.get("world_size") or 1)
        return f" on {device}" + (f" x {world} processes" if world > 1 else "")

    def loss_key(self) -> str | None:
        """``loss``, or with several optimiser stages the first stage's (``segmenters/loss``)."""
        for _, losses in self.loss_history:
            if "loss" in losses:
                return "loss"
            staged = [k for k in losses if k.endswith("/loss")]
            if staged:
                return staged[0]
        return None

    def loss_series(self, key: str | None = None) -> tuple[list[int], list[float]]:
        return _series(self.loss_history, key or self.loss_key())

    def validation_key(self) -> str | None:
        for _, metrics in self.validation_history:
            for key in ("dice", "median_vox", "mean_mm"):
                if key in metrics:
                    return key
        return None

    def validation_series(self, key: str | None = None) -> tuple[list[int], list[float]]:
        return _series(self.validation_history, key or self.validation_key())


def _series(history: list, key: str | None) -> tuple[list[int], list[float]]:
    """The steps and numeric values of ``key`` in a ``[(step, {name: value})]`` history."""
    if key is None:
        return [], []
    pairs = [(s, v[key]) for s, v in history if isinstance(v.get(key), (int, float))]
    return [p[0] for p in pairs], [float(p[1]) for p in pairs]


def _fmt(value, digits: int) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) else str(value)


def format_seconds(seconds: float | None) -> str:
    seconds = max(0, int(seconds or 0))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60:02d}:{rest % 60:02d}"
