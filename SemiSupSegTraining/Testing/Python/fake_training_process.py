"""A test double of the training child process for the panel's self-test (never used in production).

It replays protocol events as ``semisupseg train --progress json`` would, a few per poll, through the
same interface as :class:`SemiSupSegLib.childprocess.ChildProcess`.
"""


class FakeTrainingProcess:
    """Replays protocol events like a training child would, a few per poll (for the self-test).

    ``request_stop`` makes the next poll report ``cancelled`` at the last step sent, exit 130.
    """

    def __init__(self, args, env, events, perPoll=2, returncode=0) -> None:
        self.args = list(args)
        self.env = dict(env)
        self._events = [dict(e, protocol=1) for e in events]
        self.perPoll = perPoll
        self._returncode = returncode
        self._stopRequested = False
        self._done = False
        self.started = False
        self.stderr_tail = []
        self.lastStep = 0

    def start(self):
        self.started = True
        return self

    def poll(self):
        if self._done:
            return []
        if self._stopRequested:
            self._done, self._returncode = True, 130
            self._events = []
            return [{"protocol": 1, "event": "cancelled", "step": self.lastStep, "message": "stopped"}]
        batch, self._events = self._events[: self.perPoll], self._events[self.perPoll :]
        for e in batch:
            self.lastStep = int(e.get("step", self.lastStep) or self.lastStep)
        if not self._events:
            self._done = True
        return batch

    @property
    def running(self) -> bool:
        return not self._done

    @property
    def returncode(self):
        return None if not self._done else self._returncode

    def request_stop(self, grace=60.0) -> None:
        self._stopRequested = True


def fakeTrainingEvents(out: str, steps: int = 5) -> list:
    events = [{"event": "preparing", "case": "case_000", "index": 1, "total": 1}]
    events.append(
        {
            "event": "started",
            "task": "training",
            "step": 0,
            "total": steps,
            "summary": {"method": "dual-unet"},
        }
    )
    for step in range(1, steps + 1):
        loss = 1.0 / step
        events.append(
            {
                "event": "progress",
                "step": step,
                "total": steps,
                "losses": {"loss": loss, "sup": loss / 2},
                "seconds_per_step": 0.5,
                "eta_seconds": 0.5 * (steps - step),
            }
        )
    events.append(
        {"event": "validation", "step": steps, "total": steps, "metrics": {"dice": 0.5, "hd95_mm": 4.0}}
    )
    events.append(
        {
            "event": "finished",
            "step": steps,
            "total": steps,
            "model": out,
            "metrics": {"dice": 0.5},
            "message": "ok",
        }
    )
    return events
