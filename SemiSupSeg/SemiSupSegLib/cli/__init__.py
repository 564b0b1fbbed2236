"""The ``semisupseg`` command line: everything the Slicer panels do, headless.

Run ``semisupseg COMMAND --help`` for each command's options. Errors on bad input are printed
as one line naming the problem, with exit status 2; a cancelled training exits with 130.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Sequence

from .. import __version__
from ..errors import SemiSupSegError, TrainingCancelled
from .arguments import _Parser
from .catalogue import _add_catalogue
from .demo import DEMO_LOCATOR, DEMO_MODEL, _add_demo
from .evaluate import _add_evaluate
from .locator import _add_locate, _add_locator_from_model, _add_train_locator
from .phantom import _add_phantom
from .segment import _add_segment
from .suggest import _add_new_labels, _add_suggest
from .train import _add_train

__all__ = ["DEMO_LOCATOR", "DEMO_MODEL", "build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="semisupseg", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"semisupseg {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (
        _add_phantom,
        _add_train,
        _add_train_locator,
        _add_locator_from_model,
        _add_locate,
        _add_segment,
        _add_evaluate,
        _add_suggest,
        _add_new_labels,
        _add_demo,
        _add_catalogue,
    ):
        add(sub)
    return parser


_NUMBER_LIST = re.compile(r"^-?\d*\.?\d+(e[-+]?\d+)?([,;]\s*-?\d*\.?\d+(e[-+]?\d+)?)*$", re.I)


def _glue_negative_values(argv: Sequence[str]) -> list[str]:
    """Let ``--center -6.5,-0.6,1.1`` work: argparse would take the value for an option."""
    out: list[str] = []
    for token in argv:
        if (
            out
            and out[-1] in ("--center", "--target-spacing")
            and token.startswith("-")
            and _NUMBER_LIST.match(token)
        ):
            out[-1] = f"{out[-1]}={token}"
        else:
            out.append(token)
    return out


def _asks_json_progress(argv: Sequence[str]) -> bool:
    """Whether the command line asks for ``--progress json``: read by hand when parsing it failed."""
    return any(
        token == "--progress=json" or (token == "--progress" and following == "json")
        for token, following in zip(argv, [*argv[1:], ""], strict=True)
    )


def _is_main_process() -> bool:
    """Whether this is rank 0 of a training job (or no job): the one that reports what every rank saw."""
    if not {"WORLD_SIZE", "RANK", "LOCAL_RANK"} & set(os.environ):  # no job; the import below loads torch
        return True
    from ..distributed import Distributed

    try:
        return Distributed.from_environment().is_main
    except SemiSupSegError:
        return True


def _report_error(
    message: str, args: argparse.Namespace | None, argv: Sequence[str], every_rank: bool = False
) -> None:
    """One line naming the problem: an ``error`` event on stdout with ``--progress json``, else on stderr.

    In a job of several processes every rank reads the same input and meets the same problem, so only
    rank 0 reports it, unless ``every_rank`` (a problem of one process's own, like its memory).
    """
    from ..progress import JsonLinesReporter

    if not (every_rank or _is_main_process()):
        return
    if args is not None and getattr(args, "progress", None) == "json":
        args.reporter.emit("error", message=message)
    elif args is None and _asks_json_progress(argv):
        JsonLinesReporter().emit("error", message=message)
    else:
        print(f"semisupseg: error: {message}", file=sys.stderr)


def _out_of_memory_message(exc: BaseException, args: argparse.Namespace | None) -> str:
    """One line for a command that ran out of memory: almost always a size given by the user (``phantom
    --size 1000000000``, ``train --patch 4000 --batch 1e8``) or an image's damaged header."""
    command = getattr(args, "command", None) or "the command"
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    reason = (lines[-1] if lines else type(exc).__name__)[:160]
    return (
        f"out of memory in '{command}' ({reason}); check the sizes given (image size, patch, batch, width, "
        "cases) and the images' spacing"
    )


def _os_error_message(exc: OSError) -> str:
    """One line for a refused file operation, naming the path (``train --out`` onto an existing file:
    ``cannot use '.../dataset.json/.training': Not a directory``)."""
    if exc.filename is None:
        return f"{type(exc).__name__}: {exc.strerror or exc}"
    other = f" (with '{exc.filename2}')" if exc.filename2 is not None else ""
    return f"cannot use '{exc.filename}'{other}: {exc.strerror or type(exc).__name__}"


def _silence_stdout() -> None:
    """Point stdout at the null device, so the interpreter's last flush at exit does not fail again."""
    try:
        descriptor = sys.stdout.fileno()
        os.dup2(os.open(os.devnull, os.O_WRONLY), descriptor)
    except (OSError, ValueError, AttributeError):  # no descriptor (a replaced stdout): nothing is flushed
        pass


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit status (0, 2 on bad input, 130 when cancelled).

    Every bad input, from the command line to the data, is reported once, as one line that names it
    (with ``--progress json``, as the protocol's ``error`` event on stdout) and gives status 2; so is
    running out of memory, which absurd sizes cause.
    """
    from ..progress import make_reporter

    argv = list(sys.argv[1:] if argv is None else argv)
    args = None
    try:
        args = build_parser().parse_args(_glue_negative_values(argv))
        args.argv = argv  # a command that starts processes of itself (train --nproc) hands them on
        if hasattr(args, "progress"):
            args.reporter = make_reporter(args.progress)
        return args.func(args)
    except TrainingCancelled as exc:
        if _is_main_process():
            print(f"semisupseg: {exc}", file=sys.stderr)
        return 130
    except SemiSupSegError as exc:
        _report_error(str(exc), args, argv)
        return 2
    except KeyboardInterrupt:
        print("semisupseg: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader closed our stdout (``| head``): end quietly, as shell tools do
        _silence_stdout()
        return 141  # 128 + SIGPIPE
    except OSError as exc:  # a path given that the system refuses: a file where a folder must be, no right
        _report_error(_os_error_message(exc), args, argv)
        return 2
    except Exception as exc:
        from ..slicer_bridge import is_out_of_memory

        if is_out_of_memory(exc):
            _report_error(_out_of_memory_message(exc, args), args, argv, every_rank=True)
            return 2
        if getattr(args, "progress", None) == "json":  # a bug: the reader still learns that the run ended
            args.reporter.emit("error", message=f"internal error, {type(exc).__name__}: {exc}")
        raise
