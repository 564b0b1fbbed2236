"""Atomic file writes: write a temporary file next to the target, then rename it over.

A crash or a full disk therefore never leaves a half-written file in place of a good one. A write that
fails (full disk, no permission, read-only folder) raises :class:`WriteError` naming the file; the
previous version of the file, if any, is left as it was.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from .errors import SemiSupSegError


class WriteError(SemiSupSegError):
    """A file could not be written (full disk, no permission...); its previous version is intact."""


def write_failed(target: str | os.PathLike, err: BaseException) -> WriteError:
    """The :class:`WriteError` for a failed write of ``target``, with the system's one-line reason.

    Args:
        target: the file that was being written.
        err: what the writer raised (an ``OSError``, or torch's ``RuntimeError`` on a full disk).

    Returns:
        The error to raise, e.g. ``cannot write 'm/weights.pt': No space left on device; ...``.
    """
    reason = getattr(err, "strerror", None) or str(err).strip().splitlines()[-1:] or [type(err).__name__]
    reason = reason if isinstance(reason, str) else reason[0]
    return WriteError(f"cannot write '{target}': {reason[:200]}; its previous version, if any, is unchanged")


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the target's folder with the same suffixes; rename it on success.

    The suffixes are kept (``.nii.gz``, ``.nrrd``...) so that writers that pick a format from the
    file name, such as SimpleITK, still do the right thing. An ``OSError`` while creating, writing or
    renaming the file becomes a :class:`WriteError`; the target is then untouched.
    """
    target = Path(target)
    suffix = "".join(target.suffixes) if target.suffixes else ""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=f".tmp{suffix}", dir=target.parent)
        os.close(fd)
    except OSError as err:
        raise write_failed(target, err) from None
    tmp = Path(tmp_name)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual permissions
        yield tmp
        os.replace(tmp, target)
    except OSError as err:
        raise write_failed(target, err) from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(target: str | os.PathLike, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_json(target: str | os.PathLike, data: object) -> None:
    atomic_write_text(target, json.dumps(data, indent=2, sort_keys=False) + "\n")


def atomic_torch_save(
    target: str | os.PathLike, state: object, before_rename: Callable[[], None] | None = None
) -> None:
    """``torch.save(state)`` to ``target`` atomically; a failed write is a :class:`WriteError`.

    Torch reports a full disk as a ``RuntimeError`` ("file write failed"), not an ``OSError``.

    Args:
        target: the file to write (``weights.pt``, ``checkpoint.pt``).
        state: tensors, numbers and strings only, so that it loads with ``weights_only=True``.
        before_rename: called once the file is written but before it replaces ``target`` (a model
            writes its ``model.json`` here), so that a failure there leaves the old ``target`` too.
    """
    import torch

    with atomic_path(target) as tmp:
        try:
            torch.save(state, tmp)
        except RuntimeError as err:
            raise write_failed(target, err) from None
        if before_rename is not None:
            before_rename()


def _same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one file: equal once resolved (links, ``..``), or one inode (hard links).
    A symbolic link loop resolves nowhere (``Path.resolve`` raises): it is compared as written."""
    try:
        if a.resolve() == b.resolve():
            return True
    except (OSError, RuntimeError):  # RuntimeError: a symbolic link loop (Python < 3.13)
        return os.path.abspath(a) == os.path.abspath(b)
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _check_writable_place(what: str, path: Path) -> None:
    """An output that is not a folder, under no file (``--json results/x.json`` where ``results`` is a file
    failed only after all the work)."""
    from .errors import InputError

    if path.is_dir():
        raise InputError(f"{what} '{path}' is a folder; give a file name")
    blocking = next((parent for parent in path.parents if parent.exists()), None)
    if blocking is not None and not blocking.is_dir():
        raise InputError(f"{what} '{path}' cannot be written: '{blocking}' is a file, not a folder")


def check_outputs_spare_inputs(
    outputs: dict[str, str | os.PathLike], inputs: dict[str, str | os.PathLike]
) -> None:
    """Refuse, before any work, outputs that would overwrite an input or each other, or that cannot be
    written because a file stands where their folder should be (or they are a folder).

    Args:
        outputs: what each output is (``"--output"``) -> the file to be written.
        inputs: what each input is (``"--input"``, ``"case 'a' image"``) -> the file read.

    Raises:
        InputError: naming the output and the input (or the other output) it would overwrite.
    """
    from .errors import InputError

    seen: list[tuple[str, Path]] = []
    for what, path in outputs.items():
        path = Path(path).expanduser()
        _check_writable_place(what, path)
        for source, read in inputs.items():
            if _same_file(path, Path(read).expanduser()):
                raise InputError(f"{what} '{path}' is the {source}; writing it would destroy the input")
        for other, written in seen:
            if _same_file(path, written):
                raise InputError(f"{what} and {other} both name '{path}'; give each output its own file")
        seen.append((what, path))
