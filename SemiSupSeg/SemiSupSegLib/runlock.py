"""An exclusive lock on a training output folder, so two runs never write the same folder.

Two Slicer panels, a panel and a terminal, or a Slicer restart while a training is still running
must not corrupt a run. A run holds ``OUT/.training/lock`` for its whole life:

* the file is created with ``O_CREAT | O_EXCL`` (atomic on local file systems) and holds the
  holder's pid, host name and start time as JSON;
* where ``fcntl.flock`` exists (Linux, macOS) the holder also keeps an exclusive ``flock`` on it.
  The kernel drops that lock when the holder dies, however it dies, so a left-over file whose
  ``flock`` can be taken is stale even if its pid has been reused by another process;
* without ``flock`` (Windows, or a file system that refuses it) a file is stale when it names
  this host and a pid that is no longer running.

For short updates of a shared file (a pool's ``dataset.json``, read, changed and written back by two
panels at once) :func:`file_lock` holds an exclusive lock on a side file for the few milliseconds the
update takes: ``flock`` on POSIX, ``msvcrt.locking`` on its first byte on Windows; the kernel drops it
when the holder dies, so it is never stale.

A stale file is removed (only after checking, under its ``flock``, that the path still names that
very file, so two processes cleaning up at once cannot remove each other's fresh lock) and the
lock is taken again. A live lock raises :class:`InputError` naming the holder:
``another training is writing to OUT (pid N on HOST since T)``.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from .errors import InputError

try:  # POSIX only
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]
try:  # Windows only
    import msvcrt
except ImportError:
    msvcrt = None  # type: ignore[assignment]

LOCK_NAME = "lock"
# A lock file without readable content is the few microseconds between its creation and the
# holder writing it, or the remains of a holder that died right then: stale once this old.
_UNREADABLE_GRACE_SECONDS = 10.0
_ATTEMPTS = 5

__all__ = ["RunLock", "lock_path", "read_lock", "pid_alive", "is_locked", "break_lock", "file_lock"]


def lock_path(out: str | os.PathLike) -> Path:
    return Path(out) / ".training" / LOCK_NAME


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine (never sends it a signal that acts)."""
    if pid <= 0:
        return False
    if os.name == "nt":  # pragma: no cover - Windows: os.kill(pid, 0) would terminate the process
        import ctypes

        process_query_limited_information = 0x1000
        still_active = 259
        kernel32 = ctypes.windll.kernel32
        handle = kernel32.OpenProcess(process_query_limited_information, False, pid)
        if not handle:
            return False
        try:
            code = ctypes.c_ulong()
            if not kernel32.GetExitCodeProcess(handle, ctypes.byref(code)):
                return True
            return code.value == still_active
        finally:
            kernel32.CloseHandle(handle)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists but belongs to someone else
    except OSError:
        return False
    return True


def read_lock(out: str | os.PathLike) -> dict | None:
    """The holder described by ``OUT/.training/lock`` (``pid``, ``host``, ``started``), or None.

    Returns ``{}`` for a lock file without readable content. It does not tell whether the holder
    still runs; :func:`is_locked` does.
    """
    path = lock_path(out)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError:
        return {}
    return _parse(text)


def _parse(text: str) -> dict:
    try:
        info = json.loads(text)
    except json.JSONDecodeError:
        return {}
    return info if isinstance(info, dict) and isinstance(info.get("pid"), int) else {}


def _try_flock(fd: int) -> bool | None:
    """True if an exclusive flock was taken on ``fd``; False if someone holds it; None if unsupported."""
    if fcntl is None:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except OSError:  # e.g. ENOLCK on some network file systems
        return None


def _stale_without_flock(info: dict, age: float) -> bool:
    if not info:
        return age > _UNREADABLE_GRACE_SECONDS
    if info.get("host") != socket.gethostname():
        return False  # cannot tell whether a process on another machine runs: keep the lock
    return not pid_alive(int(info["pid"]))


def _describe(out: Path, info: dict) -> str:
    if not info:
        return f"another training is writing to {out} (lock file {lock_path(out)})"
    host = info.get("host") or "?"
    where = "" if host == socket.gethostname() else f" on {host}"
    return f"another training is writing to {out} (pid {info['pid']}{where} since {info.get('started', '?')})"


class RunLock:
    """``with RunLock(out): ...`` holds the lock on ``out``; :meth:`acquire`/:meth:`release` too."""

    def __init__(self, out: str | os.PathLike) -> None:
        self.out = Path(out)
        self.path = lock_path(out)
        self._fd: int | None = None
        self._created_dirs: list[Path] = []

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    # --- acquiring ------------------------------------------------------------------------------
    def acquire(self) -> None:
        if self._fd is not None:
            raise RuntimeError(f"lock {self.path} is already held by this object")
        self._make_dirs()
        for _ in range(_ATTEMPTS):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._clear_if_stale()  # raises InputError when the holder is alive
                continue
            self._fd = fd
            _try_flock(fd)  # before writing: readable content implies the flock is held (if supported)
            record = {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "started": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
            }
            os.write(fd, json.dumps(record).encode("utf-8"))
            os.fsync(fd)
            return
        raise InputError(f"could not lock {self.out}: the lock file {self.path} keeps changing")

    def _make_dirs(self) -> None:
        missing = []
        for folder in (self.path.parent, *self.path.parent.parents):
            if folder.exists():
                break
            missing.append(folder)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._created_dirs = missing  # innermost first

    def _clear_if_stale(self) -> None:
        """Remove the existing lock file if its holder is gone; raise InputError if it is alive."""
        try:
            fd = os.open(self.path, os.O_RDWR)
        except FileNotFoundError:
            return  # released meanwhile: try again
        try:
            got = _try_flock(fd)
            info = _parse(_read_fd(fd))
            age = time.time() - os.fstat(fd).st_mtime
            if got is False:
                raise InputError(_describe(self.out, info))
            if got:
                stale = bool(info) or age > _UNREADABLE_GRACE_SECONDS
            else:
                stale = _stale_without_flock(info, age)
            if not stale:
                raise InputError(_describe(self.out, info))
            if not _same_file(fd, self.path):
                return  # someone else replaced it meanwhile: look again
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
        finally:
            os.close(fd)  # drops our flock on the stale file

    # --- releasing --------------------------------------------------------------------------------
    def release(self) -> None:
        """Remove the lock file (if it is still ours) and folders the lock created that stay empty."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            if _same_file(fd, self.path):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path)
        finally:
            os.close(fd)
        for folder in [self.path.parent, *self._created_dirs]:
            with contextlib.suppress(OSError):
                folder.rmdir()  # only succeeds when empty
        self._created_dirs = []


def _read_fd(fd: int) -> str:
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    return b"".join(chunks).decode("utf-8", errors="replace")


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


def is_locked(out: str | os.PathLike) -> dict | None:
    """The live holder of ``out``'s lock (``{}`` if unreadable), or None when it is free or stale."""
    path = lock_path(out)
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return None
    except OSError:
        return read_lock(out)
    try:
        got = _try_flock(fd)
        info = _parse(_read_fd(fd))
        age = time.time() - os.fstat(fd).st_mtime
        if got is False:
            return info
        if got:
            return None if (info or age > _UNREADABLE_GRACE_SECONDS) else info
        return None if _stale_without_flock(info, age) else info
    finally:
        os.close(fd)


def break_lock(out: str | os.PathLike) -> bool:
    """Remove ``out``'s lock file whatever its state (for a lock left on another machine)."""
    try:
        os.unlink(lock_path(out))
        return True
    except FileNotFoundError:
        return False


def _lock_fd(fd: int) -> bool:
    """Try once to lock ``fd`` exclusively: True when taken (or when no locking exists), False if held."""
    if fcntl is not None:
        return bool(_try_flock(fd) is not False)
    if msvcrt is not None:  # pragma: no cover - Windows
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False
    return True  # pragma: no cover - no locking primitive: updates are not serialised


def _unlock_fd(fd: int) -> None:
    if fcntl is not None:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
    elif msvcrt is not None:  # pragma: no cover - Windows
        with contextlib.suppress(OSError):
            os.lseek(fd, 0, os.SEEK_SET)
            msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)


@contextlib.contextmanager
def file_lock(path: str | os.PathLike, timeout: float = 10.0) -> Iterator[None]:
    """Hold an exclusive lock on the side file ``path`` while updating a shared file.

    The lock file exists only while held: the holder removes it before unlocking, and a waiter that
    then gets the lock on the removed file sees that the path no longer names it and starts again. A
    file system without locks (some network shares) is not serialised: the update happens unlocked.

    Args:
        path: the lock file, e.g. ``POOL/.dataset.json.lock``.
        timeout: seconds to wait for another holder before giving up.

    Raises:
        InputError: the lock stayed held for ``timeout`` seconds, or the lock file cannot be created.
    """
    path = Path(path)
    deadline = time.monotonic() + timeout
    fd = _open_locked(path, deadline, timeout)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)  # while still holding it: a waiter on this file will look again
        _unlock_fd(fd)
        os.close(fd)


def _open_locked(path: Path, deadline: float, timeout: float) -> int:
    """A descriptor of ``path`` (created if absent) holding its lock, the path still naming that file."""
    while True:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
        except OSError as err:
            raise InputError(f"cannot create the lock file {path}: {err.strerror or err}") from None
        while not _lock_fd(fd):
            if time.monotonic() > deadline:
                os.close(fd)
                raise InputError(f"{path} stayed locked by another process for {timeout:g} s; try again")
            time.sleep(0.005)
        if _same_file(fd, path):
            return fd
        _unlock_fd(fd)  # the holder removed it meanwhile: lock the new file instead
        os.close(fd)
