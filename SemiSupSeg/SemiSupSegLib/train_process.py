"""The training panel's engine side (no Slicer; torch only inside the functions that need it), and the
child-process entry ``python -m SemiSupSegLib.train_process estimate|compare ...`` (see :func:`main`).

One concept per module; this module gathers the names the panel uses:

* :mod:`.train_commands`: the child commands (``semisupseg train``, ``train-locator``, the tools) and
  their environment;
* :mod:`.childprocess`: the child itself, its protocol reader and the tree kill;
* :mod:`.run_state`: what the panel shows about a run (:class:`RunState`);
* :mod:`.run_data`: the run's data (:func:`build_run_dataset`, :func:`summarize_data`) and folders;
* :mod:`.step_estimate`: the time per step (:func:`estimate_seconds_per_step`);
* :mod:`.model_compare`: the new model against the current one (:func:`compare_models`);
* :mod:`.model_index`: the default model (:func:`~.model_index.set_default_model`).

Long work (the estimate, the comparison) runs as a child speaking the progress protocol, so Slicer's
GUI never waits on torch.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .errors import SemiSupSegError
from .model_compare import (
    COMPARED_METRICS,
    compare_models,
    comparison_cases,
    comparison_table,
    comparison_text,
)
from .run_data import (
    RUN_DATASET,
    DataSummary,
    build_run_dataset,
    checkpoint_path,
    default_pool,
    locators_folder,
    models_folder,
    new_run_folder,
    resumable_runs,
    run_dataset_path,
    scan_image_folder,
    scan_models,
    summarize_data,
)
from .run_state import RunState, format_seconds
from .step_estimate import estimate_seconds_per_step, estimate_text
from .train_commands import (
    ENGINE_DIR,
    TrainRequest,
    child_environment,
    cli_command,
    locator_command,
    python_command,
    resume_command,
    tool_command,
    training_command,
)

__all__ = [
    "COMPARED_METRICS",
    "ENGINE_DIR",
    "RUN_DATASET",
    "DataSummary",
    "RunState",
    "TrainRequest",
    "build_run_dataset",
    "checkpoint_path",
    "child_environment",
    "cli_command",
    "compare_models",
    "comparison_cases",
    "comparison_table",
    "comparison_text",
    "default_pool",
    "estimate_seconds_per_step",
    "estimate_text",
    "format_seconds",
    "locator_command",
    "locators_folder",
    "main",
    "models_folder",
    "new_run_folder",
    "python_command",
    "resume_command",
    "resumable_runs",
    "run_dataset_path",
    "scan_image_folder",
    "scan_models",
    "summarize_data",
    "tool_command",
    "training_command",
]


# ============================================================================ the child-process entry


def _parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m SemiSupSegLib.train_process", description="helpers of the training panel"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    est = sub.add_parser("estimate", help="seconds per training step, measured on a short dry run")
    est.add_argument("--method", default=None, help="default: semisupseg train's")
    est.add_argument("--patch", default=None)
    est.add_argument("--batch", type=int, default=None)
    est.add_argument("--width", type=float, default=None)
    est.add_argument("--device", default="auto")
    est.add_argument("--steps", type=int, default=3)
    cmp_ = sub.add_parser("compare", help="the new and the current model on the validation cases")
    cmp_.add_argument("--new", required=True)
    cmp_.add_argument("--current", default=None)
    cmp_.add_argument("--data", default=None)
    cmp_.add_argument("--device", default="auto")
    return parser.parse_args(list(argv))


def _patch_text(text: str | None) -> list[int] | None:
    """``"48,48,48"`` (or ``"48"``) -> the patch size; None stays None (the training default)."""
    return None if text is None else [int(p) for p in str(text).replace(";", ",").split(",") if p.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    """``estimate`` and ``compare`` as child processes: protocol lines with task "estimate" or
    "comparison"; ``finished`` carries the ``result``; a bad input gives ``error`` and status 2."""
    from .progress import JsonLinesReporter

    args = _parse_args(sys.argv[1:] if argv is None else argv)
    reporter = JsonLinesReporter()
    task = "estimate" if args.command == "estimate" else "comparison"
    try:
        if args.command == "estimate":
            reporter.emit("started", task=task, step=0, total=1, summary=vars(args))
            result = estimate_seconds_per_step(
                args.method, _patch_text(args.patch), args.batch, args.width, args.device, args.steps
            )
            message = f"{result['seconds_per_step']:.2f} s per step on {result['device']}"
        else:
            reporter.emit("started", task=task, step=0, total=0, summary=vars(args))

            def on_case(i: int, n: int, name: str) -> None:
                reporter.emit("progress", step=i, total=n, losses={}, case=name)

            result = compare_models(args.new, args.current, args.data, args.device, on_case=on_case)
            message = f"compared on {len(result['rows'])} {result['cases_from']} case(s)"
    except (SemiSupSegError, ValueError, OSError) as exc:
        reporter.emit("error", message=str(exc))
        print(f"semisupseg: error: {exc}", file=sys.stderr)
        return 2
    reporter.emit("finished", step=1, total=1, result=result, message=message)
    return 0


if __name__ == "__main__":
    sys.exit(main())
