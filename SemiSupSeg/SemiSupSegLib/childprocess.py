"""Child processes that speak the progress protocol: start them, read their events, stop the whole tree.

Both panels run long work (training, a background segmentation, the estimate and the comparison) in a
child process: ``[python, "-m", "SemiSupSegLib.cli", ...]`` with ``--progress json``, which prints one
JSON object per line (``docs/PROGRESS_PROTOCOL.md``). This module is the one home for

* **reading** those lines (:class:`ProtocolParser`, :func:`parse_line`): partial lines and non-JSON
  noise are tolerated, a protocol version other than :data:`PROTOCOL_MAJOR` is refused
  (:class:`ProtocolError`) with one version check (:func:`protocol_major`);
* **stopping** the tree (:func:`terminate_tree`: SIGTERM to the process group, SIGKILL after a grace
  period; :func:`kill_tree`: SIGKILL at once; ``taskkill /T`` on Windows), for a child started with
  :func:`popen_options` (its own session: ``PythonSlicer`` is a launcher that starts the real
  interpreter as a child);
* **running** one (:class:`ChildProcess`): reader threads, polled without blocking from a ``QTimer``.

It imports neither Slicer nor torch.
"""

from __future__ import annotations

import codecs
import collections
import contextlib
import json
import math
import os
import queue
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence

from .errors import InputError

PROTOCOL_MAJOR = 1
DEFAULT_STOP_GRACE = 60.0  # seconds for a stopped run to finish its step and write its checkpoint
TERMINAL_EVENTS = ("finished", "cancelled", "error")


# ============================================================================ the protocol reader
class ProtocolError(InputError):
    """The child speaks a protocol version this reader does not know."""


def protocol_major(version: object) -> int | None:
    """The major version of a protocol value (``1``, ``1.2``, ``"1.2"``), or None when it is none.

    Args:
        version: the ``protocol`` value of an event, any JSON value.

    Returns:
        The major version, or None for a value that names none (text, NaN, a list...).
    """
    if isinstance(version, bool):
        return None
    if isinstance(version, int):
        return version
    if isinstance(version, float) and math.isfinite(version):
        return int(version)
    if isinstance(version, str):
        head = version.split(".")[0].strip()
        return int(head) if head.isdigit() else None
    return None


def parse_line(line: str | bytes) -> dict | None:
    """One protocol event from one line of a child's stdout.

    Args:
        line: the line (text or UTF-8 bytes, with or without its newline or a byte-order mark).

    Returns:
        The event (an object with ``protocol`` and a text ``event``), or None for any other line
        (warnings, blank lines, broken JSON, objects that are not events).

    Raises:
        ProtocolError: the event's protocol major version is not :data:`PROTOCOL_MAJOR`.
    """
    if isinstance(line, bytes):
        line = line.decode("utf-8", errors="replace")
    text = line.strip().lstrip("\ufeff")
    if not text.startswith("{"):
        return None
    try:
        record = json.loads(text)
    except json.JSONDecodeError:
        return None
    if not (isinstance(record, dict) and "protocol" in record and isinstance(record.get("event"), str)):
        return None
    if protocol_major(record["protocol"]) != PROTOCOL_MAJOR:
        raise ProtocolError(
            f"the engine reports with progress protocol {record['protocol']!r}; this panel reads "
            f"protocol {PROTOCOL_MAJOR}: update the SemiSupSeg extension so both match"
        )
    return record


class ProtocolParser:
    """Turns chunks of a child's stdout into protocol events.

    :meth:`feed` accepts any chunk (a partial line is kept until its end arrives) and returns the
    complete events (:func:`parse_line`); lines that are not protocol events are kept in
    :attr:`noise` (the last 200).
    """

    def __init__(self, noise_lines: int = 200) -> None:
        self._buffer = ""
        self.noise: collections.deque[str] = collections.deque(maxlen=noise_lines)

    def feed(self, chunk: str) -> list[dict]:
        """The events completed by ``chunk``."""
        self._buffer += chunk
        *lines, self._buffer = self._buffer.split("\n")
        return self._parse_lines(lines)

    def close(self) -> list[dict]:
        """Parse what is left (a last line without a newline)."""
        rest, self._buffer = self._buffer, ""
        return self._parse_lines([rest])

    def _parse_lines(self, lines: list[str]) -> list[dict]:
        events = []
        for line in lines:
            event = self.parse_line(line)
            if event is not None:
                events.append(event)
        return events

    def parse_line(self, line: str) -> dict | None:
        """:func:`parse_line`, keeping a non-blank line that is no event in :attr:`noise`."""
        event = parse_line(line)
        text = line.strip().lstrip("\ufeff")
        if event is None and text:
            self.noise.append(text)
        return event


# ============================================================================ stopping a tree
def popen_options() -> dict:
    """``subprocess.Popen`` keyword arguments that let :func:`terminate_tree` end the whole tree:
    a new session on POSIX, a new process group and no console window on Windows."""
    if os.name == "nt":  # pragma: no cover - Windows
        flags = getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0)
        flags |= getattr(subprocess, "CREATE_NO_WINDOW", 0)
        return {"creationflags": flags}
    return {"start_new_session": True}


def group_alive(pgid: int) -> bool:
    """True while any process of the group ``pgid`` exists (POSIX)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def signal_tree(pid: int, force: bool = False) -> None:
    """Ask (SIGTERM) or force (SIGKILL) the process group led by ``pid`` to end.

    On Windows ``taskkill /T`` ends the tree (console processes ignore a polite request, so a
    stop there is always forced: the last periodic checkpoint is the one to resume from).
    """
    if os.name == "nt":  # pragma: no cover - Windows
        subprocess.run(
            ["taskkill", "/T", "/F", "/PID", str(pid)],
            capture_output=True,
            check=False,
            creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0),
        )
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL if force else signal.SIGTERM)


def _ended(proc: subprocess.Popen) -> bool:
    return proc.poll() is not None and (os.name == "nt" or not group_alive(proc.pid))


def terminate_tree(proc: subprocess.Popen, grace: float = DEFAULT_STOP_GRACE) -> int | None:
    """Stop ``proc`` (started with :func:`popen_options`, leader of its group) and all it started.

    Args:
        proc: the child.
        grace: seconds between SIGTERM (a training finishes its step and writes a checkpoint) and
            SIGKILL of whatever is left of the group; 0 kills at once.

    Returns:
        The leader's exit status (None for a process that could not be reaped).
    """
    if grace > 0:
        signal_tree(proc.pid)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if _ended(proc):
                return proc.returncode
            time.sleep(0.05)
    signal_tree(proc.pid, force=True)
    try:
        return proc.wait(timeout=10)
    except subprocess.TimeoutExpired:  # pragma: no cover - an unkillable process
        return None


def kill_tree(proc: subprocess.Popen) -> int | None:
    """SIGKILL ``proc``'s whole tree now (a cancelled segmentation has nothing to save)."""
    return terminate_tree(proc, grace=0)


# ============================================================================ running one
class ChildProcess:
    """A child process speaking the progress protocol, read by threads, polled without blocking.

    ``poll()`` returns the protocol events that arrived since the last call (a version it does not
    know becomes an ``error`` event and stops the child); ``running`` stays True until the child has
    exited *and* its output is closed (a launcher such as PythonSlicer may exit before the
    interpreter it started). ``request_stop()`` asks the whole tree to stop and returns at once;
    ``poll()`` kills the tree when the grace period is over. The Slicer panels call ``poll()`` from
    a ``QTimer``; the training panel's self-test injects a fake object with the same methods.

    Args:
        args: the command, a list of strings (never a shell string).
        env: its environment (default: this process's).
        cwd: its working folder.
        log: receives each stderr line and each stdout line that is not an event.
    """

    def __init__(
        self,
        args: Sequence[str],
        env: dict | None = None,
        cwd: str | os.PathLike | None = None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        if isinstance(args, (str, bytes)) or not all(isinstance(a, str) for a in args):
            raise TypeError("the command must be a list of strings (never a shell string)")
        self.args = list(args)
        self.env = env
        self.cwd = cwd
        self.log = log
        self.proc: subprocess.Popen | None = None
        self.parser = ProtocolParser()
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=200)
        self._queue: queue.Queue = queue.Queue()
        self._readers: list[threading.Thread] = []
        self._stop_deadline: float | None = None
        self._killed = False

    # --- life cycle -------------------------------------------------------------------------------
    def start(self) -> ChildProcess:
        """Start the child and its two reader threads; returns self."""
        self.proc = subprocess.Popen(
            self.args,
            env=self.env,
            cwd=self.cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            shell=False,
            **popen_options(),
        )
        for name, pipe in (("stdout", self.proc.stdout), ("stderr", self.proc.stderr)):
            thread = threading.Thread(target=self._read, args=(name, pipe), daemon=True)
            thread.start()
            self._readers.append(thread)
        return self

    def _read(self, name: str, pipe) -> None:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        try:
            while True:
                chunk = pipe.read1(65536) if hasattr(pipe, "read1") else pipe.read(65536)
                if not chunk:
                    break
                self._queue.put((name, decoder.decode(chunk)))
            self._queue.put((name, decoder.decode(b"", final=True)))
        finally:
            with contextlib.suppress(OSError):
                pipe.close()

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def running(self) -> bool:
        if self.proc is None:
            return False
        return self.proc.poll() is None or any(t.is_alive() for t in self._readers) or not self._queue.empty()

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def poll(self) -> list[dict]:
        """New protocol events (never blocks); also escalates a stop whose grace period is over."""
        events: list[dict] = []
        stderr_text = ""
        while True:
            try:
                name, text = self._queue.get_nowait()
            except queue.Empty:
                break
            if name == "stdout":
                events += self._feed(text)
            else:
                stderr_text += text
        if stderr_text:
            for line in stderr_text.replace("\r", "\n").splitlines():
                if line.strip():
                    self.stderr_tail.append(line)
                    if self.log:
                        self.log(line)
        if self.proc is not None and not self.running:
            events += self._feed(None)
        self._escalate()
        return events

    def _feed(self, text: str | None) -> list[dict]:
        try:
            events = self.parser.feed(text) if text is not None else self.parser.close()
        except ProtocolError as exc:
            self.request_stop(grace=5.0)
            return [{"protocol": PROTOCOL_MAJOR, "event": "error", "message": str(exc)}]
        if self.log:
            while self.parser.noise:
                self.log(self.parser.noise.popleft())
        return events

    def _escalate(self) -> None:
        if self._stop_deadline is None or self.proc is None or self._killed:
            return
        if _ended(self.proc):
            return
        if time.monotonic() >= self._stop_deadline:
            signal_tree(self.proc.pid, force=True)
            self._killed = True

    def request_stop(self, grace: float = DEFAULT_STOP_GRACE) -> None:
        """SIGTERM to the whole tree now; SIGKILL from :meth:`poll` once ``grace`` seconds passed."""
        if self.proc is None or self._stop_deadline is not None:
            return
        self._stop_deadline = time.monotonic() + grace
        signal_tree(self.proc.pid)

    def stop(self, grace: float = DEFAULT_STOP_GRACE) -> int | None:
        """Stop the tree and wait for it (blocking; for scripts, tests, cleanup and a cancel)."""
        if self.proc is None:
            return None
        code = terminate_tree(self.proc, grace)
        self._killed = True
        self.join(timeout=10)
        return code

    def join(self, timeout: float | None = None) -> None:
        """Wait for the reader threads (all output read)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._readers:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))

    def wait_events(self, until: Callable[[dict], bool] | None = None, timeout: float = 300) -> list[dict]:
        """Blocking helper: poll until ``until(event)`` is true or the process ends."""
        events: list[dict] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            new = self.poll()
            events += new
            if until is not None and any(until(e) for e in new):
                return events
            if not self.running:
                return events + self.poll()
            time.sleep(0.05)
        raise TimeoutError(f"no end after {timeout} s: {self.args}")
