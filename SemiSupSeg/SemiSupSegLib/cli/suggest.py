"""``semisupseg suggest``: which unlabelled case to label next (the score: :mod:`SemiSupSegLib.suggest`);
``semisupseg new-labels``: which labelled cases a model has not learnt from (when to retrain)."""

from __future__ import annotations

import argparse
import json
import time

from .arguments import _AMOUNT, _COUNT, _device


def _case_progress(reporter):
    """``progress(done, total, case)`` sending the protocol's ``progress`` events with an ETA."""
    started = time.monotonic()

    def progress(done: int, total: int, case: str) -> None:
        per_case = (time.monotonic() - started) / done
        reporter.emit(
            "progress",
            step=done,
            total=total,
            case=case,
            seconds_per_step=per_case,
            eta_seconds=per_case * (total - done),
        )

    return progress


def cmd_suggest(args: argparse.Namespace) -> int:
    """``semisupseg suggest``: prints the ranking, best first (``--json``: a list of objects with
    ``case``, ``image``, ``score``, ``region``, ``center``, ``uncertain_fraction``, ``measure``,
    ``doubt_share``).

    With ``--progress json`` stdout carries the protocol instead: ``started`` (task ``"suggestion"``),
    one ``progress`` per case (``step``, ``total``, ``case``, ``eta_seconds``) and ``finished`` whose
    ``result`` is ``{"ranking": [...]}`` (the same objects).
    """
    from ..dataset import load_dataset
    from ..model_store import load_model
    from ..suggest import measure_for, suggest, suggestion_lines, unlabeled_cases
    from ..training import resolve_device

    reporter = args.reporter
    dataset = load_dataset(args.data, check_images=False)
    cases = unlabeled_cases(dataset)
    device = resolve_device(args.device)
    model = load_model(args.model, device)
    summary = {"model": str(model.path), "data": str(args.data), "device": str(device)}
    summary["measure"] = measure_for(model)
    reporter.emit("started", task="suggestion", step=0, total=len(cases), summary=summary)
    ranking = suggest(
        model,
        dataset,
        top=args.top,
        mc_samples=args.mc_samples,
        precision=args.precision,
        seed=args.seed,
        progress=_case_progress(reporter),
    )
    objects = [s.as_dict() for s in ranking]
    message = f"ranked {len(cases)} unlabelled case(s); first: {ranking[0].case}"
    reporter.emit("finished", step=len(cases), total=len(cases), result={"ranking": objects}, message=message)
    if args.progress == "json":
        return 0
    print(json.dumps(objects, indent=2) if args.json else "\n".join(suggestion_lines(ranking)))
    return 0


def _add_suggest(sub) -> None:
    p = sub.add_parser(
        "suggest", help="rank the unlabelled cases by the model's doubt: which one to label next"
    )
    p.add_argument("--model", required=True, help="model folder or name")
    p.add_argument("--data", required=True, help="dataset.json whose 'unlabeled' cases are ranked")
    p.add_argument("--top", type=_COUNT, help="print only the first K cases (default: all)")
    p.add_argument("--json", action="store_true", help="print a JSON list, best first")
    p.add_argument("--mc-samples", type=_COUNT, default=8, help="Monte-Carlo passes per case (8)")
    p.add_argument("--seed", type=_AMOUNT, default=0, help="seed of the Monte-Carlo passes (0)")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto")
    p.add_argument("--device", type=_device, default="auto")
    p.add_argument(
        "--progress",
        choices=("human", "json", "none"),
        default="human",
        help="human: a bar on stderr; json: protocol events on stdout, the ranking in 'finished'",
    )
    p.set_defaults(func=cmd_suggest)


def cmd_new_labels(args: argparse.Namespace) -> int:
    """``semisupseg new-labels``: the pool's labelled cases the model has not learnt from.

    The same rule as the training panel's *Retrain automatically*
    (:mod:`SemiSupSegMRML.auto_retrain`): by case name, against the training and validation cases of
    the model's ``model.json``. Prints them (``--json``: ``{"model", "data", "new", "count"}``). With
    ``--every N`` the status says whether a retraining is due: 0 when at least N are new, 1 when not.
    """
    from ..model_index import read_model_json
    from ..model_store import resolve_model
    from ..run_data import new_labelled_cases, trained_case_names

    folder = resolve_model(args.model)
    read_model_json(folder)  # a folder that is no model is refused, not read as "knows nothing"
    new = new_labelled_cases(args.data, trained_case_names(folder))
    if args.json:
        print(json.dumps({"model": str(folder), "data": str(args.data), "new": new, "count": len(new)}))
    else:
        names = f": {', '.join(new)}" if new else ""
        print(f"{len(new)} labelled case(s) in {args.data} that {folder.name} has not learnt from{names}")
    return 0 if args.every is None or len(new) >= args.every else 1


def _add_new_labels(sub) -> None:
    p = sub.add_parser(
        "new-labels", help="the pool's labelled cases a model has not learnt from (is a retraining due?)"
    )
    p.add_argument("--model", required=True, help="model folder or name")
    p.add_argument("--data", required=True, help="the labelled pool's dataset.json")
    p.add_argument("--every", type=_COUNT, help="status 0 when at least N cases are new, 1 when fewer")
    p.add_argument("--json", action="store_true", help='print {"model", "data", "new", "count"}')
    p.set_defaults(func=cmd_new_labels)
