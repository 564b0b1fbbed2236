"""Does "suggest the next case" beat random picks? (issue 19)

The product's loop: a model trained elsewhere meets a new scanner; the clinic has labelled a few cases
and a pool of unlabelled ones, and ``semisupseg suggest`` (:func:`SemiSupSegLib.suggest.suggest`: the
pool ranked by the mean Monte-Carlo predictive entropy over the coarse-to-fine region, see that
module's docstring) says which to label next. Here the pool's labels exist but are hidden from the
ranking; only the picked cases' labels are revealed to training.

1. Data: one phantom set of ``--profile`` (default ``random``, domain-randomised) and ``--kind``, written
   once from ``--data-seed``: ``--start-labeled`` + ``--pool`` training cases (the first are the start
   labels, the rest the pool) and ``--test-cases`` held-out test cases.
2. The ranking model ranks the pool once (``--mc-samples`` passes, ``--rank-seed``): by default the
   starting model ``--init`` itself (``benchmarks/models/phantom-catheter-default``, trained on
   default-profile catheters only); with ``--rank-with start-only``, the ``start-only`` arm's model of
   the first seed (``--init`` fine-tuned on the start labels).
3. Arms, each fine-tuning ``--init`` (method supervised, no validation split) with the same steps,
   batch, learning rate, precision and training seeds ``--seeds``:

   - ``init``: the starting model as it is (no training; one evaluation, the first seed);
   - ``start-only``: the start labels only (the reference without new labels);
   - ``random``: the start labels + ``--k`` pool cases drawn by ``numpy.random.default_rng(seed)``
     (a different draw per training seed);
   - ``suggested``: the start labels + the top ``--k`` of the ranking;
   - ``least-doubted``: the start labels + the bottom ``--k`` of the ranking (does the score point the
     right way?).
4. Every model is evaluated on the test cases with the product's main path (coarse-to-fine region from
   the true centre: ``ssl_domain_shift.evaluate``).

Raw results go to ``--json`` (default ``<out>/active_learning.json``) as ``{"setting", "ranking":
[{"case", "score", "uncertain_fraction"}], "picks": {arm: {seed: [case]}}, "rows": [{"arm", "seed",
"case", "dice"}], "runs": [...]}`` (Dice as a fraction), rewritten after every finished run. The ranking
is cached in ``<out>/ranking.json`` and each run's ``result.json`` under ``<out>/runs/<arm>/seed<s>/``; a
second invocation with the same ``--out`` trains only what is missing (a cached run whose picks differ
from this invocation's is refused: use a new ``--out``). ``--jobs N`` runs N trainings at once in spawned
processes (on a GPU machine; on a 2-core CPU keep 1). ``--tabulate JSON`` renders the table, the paired
tests and the figure without training; ``--write DOC`` replaces the ``[active_learning]`` block of DOC;
``--figure PNG`` draws the bar chart.

The paired tests (``ssl_domain_shift.paired_test``: mean difference in Dice points, Wilcoxon signed-rank
p, paired t-test p) compare ``suggested`` with ``random`` (issue 19's goal: at least 3 points better),
``least-doubted`` with ``random`` and both picked arms with ``start-only``, over the (seed, case) pairs.

CPU smoke run (minutes): ``OMP_NUM_THREADS=1 python benchmarks/active_learning.py --out /tmp/al --size 48
--pool 4 --k 1 --steps 3 --seeds 0,1 --test-cases 2``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

PACKAGE = Path(__file__).resolve().parents[1] / "SemiSupSeg"
if str(PACKAGE) not in sys.path:
    sys.path.insert(0, str(PACKAGE))

from _report import (  # noqa: E402
    ReportError,
    check_block,
    command_line,
    display_path,
    fail,
    markdown_table,
    provenance,
    read_json,
    write_block,
    write_json,
)
from ssl_domain_shift import (  # noqa: E402
    DEFAULT_INIT,
    evaluate,
    fine_tune,
    finished_runs,
    paired,
    paired_test,
)

SCRIPT = "benchmarks/active_learning.py"
BLOCK = "active_learning"
ARMS = ("init", "start-only", "random", "suggested", "least-doubted")
PICKING_ARMS = ("random", "suggested", "least-doubted")
COMPARISONS = (
    ("suggested", "random"),
    ("least-doubted", "random"),
    ("suggested", "start-only"),
    ("random", "start-only"),
)
"""(arm, reference) pairs of the paired tests, the question first."""
GOAL_POINTS = 3.0  # issue 19: suggested at least 3 Dice points above random


class CacheMismatch(ReportError):
    """A cached run or ranking belongs to another setting (other picks or another ranking model)."""


# ------------------------------------------------------------------------------------------- data


def case_entry(case, with_label: bool = True) -> dict:
    """A dataset.json entry with absolute paths (the label left out for the ranking's pool)."""
    entry = {"image": str(case.image)}
    if with_label and case.label is not None:
        entry["label"] = str(case.label)
    if case.center is not None:
        entry["center"] = [float(c) for c in case.center]
    return entry


def make_data(args) -> dict[str, list[dict]]:
    """Write the phantom set (once) and split it: ``start`` and ``pool`` (training), ``test``.

    Returns:
        Section -> entries with absolute paths and labels.
    """
    from SemiSupSegLib.dataset import load_dataset
    from SemiSupSegLib.phantom import write_phantom_dataset

    folder = args.out / "data"
    if not (folder / "dataset.json").is_file():
        write_phantom_dataset(
            folder,
            cases=args.start_labeled + args.pool,
            test=args.test_cases,
            seed=args.data_seed,
            kind=args.kind,
            size=args.size,
            profile=args.profile,
            workers=args.workers,
        )
    ds = load_dataset(folder / "dataset.json")
    training = [case_entry(c) for c in ds.training]
    made = ds.raw.get("generator", {})
    wanted = (args.start_labeled + args.pool, args.test_cases, args.data_seed, args.kind, args.profile)
    found = (
        len(training),
        len(ds.test),
        made.get("seed"),
        made.get("kind"),
        made.get("profile", {}).get("name"),
    )
    if found != wanted or list(made.get("size", [])) != [args.size] * 3:
        raise CacheMismatch(
            f"{folder}: written with other --start-labeled/--pool/--test-cases/--data-seed/--kind/--profile/"
            "--size; use a new --out"
        )
    return {
        "start": training[: args.start_labeled],
        "pool": training[args.start_labeled :],
        "test": [case_entry(c) for c in ds.test],
    }


def case_name(entry: dict) -> str:
    """The case's name: its image's file name without extension (as the dataset and ``evaluate`` name it)."""
    return Path(entry["image"]).name.split(".")[0]


def write_dataset(
    path: Path, name: str, training: list[dict], unlabeled: list[dict], test: list[dict]
) -> Path:
    """Write ``path/dataset.json`` with these sections; return its path."""
    data = {
        "name": name,
        "labels": {"0": "background", "1": "instrument"},
        "modality": {"0": "US"},
        "training": training,
        "unlabeled": unlabeled,
        "test": test,
    }
    path.mkdir(parents=True, exist_ok=True)
    (path / "dataset.json").write_text(json.dumps(data, indent=1))
    return path / "dataset.json"


# ---------------------------------------------------------------------------------------- picking


def rank_pool(args, cases: dict[str, list[dict]], model_dir: str) -> list[dict]:
    """The pool ranked by ``model_dir``'s doubt (``suggest.suggest``), labels hidden; cached.

    Returns:
        ``[{"case", "score", "uncertain_fraction"}]``, most doubted first.
    """
    cache = args.out / "ranking.json"
    key = {"model": str(model_dir), "mc_samples": args.mc_samples, "seed": args.rank_seed}
    if cache.is_file():
        cached = json.loads(cache.read_text())
        if cached["key"] != key:
            raise CacheMismatch(f"{cache}: ranked with {cached['key']}, not {key}; use a new --out")
        return cached["ranking"]
    import torch

    from SemiSupSegLib.dataset import load_dataset
    from SemiSupSegLib.model_store import load_model
    from SemiSupSegLib.suggest import suggest
    from SemiSupSegLib.training import resolve_device

    torch.set_num_threads(args.threads)
    hidden = [{k: v for k, v in e.items() if k != "label"} for e in cases["pool"]]
    pool = load_dataset(write_dataset(args.out / "pool", "active-learning-pool", [], hidden, []))
    model = load_model(model_dir, device=resolve_device(args.device))

    def progress(done: int, total: int, name: str) -> None:
        print(f"ranking [{done}/{total}] {name}", flush=True)

    ranking = [
        {"case": s.case, "score": s.score, "uncertain_fraction": s.uncertain_fraction}
        for s in suggest(
            model,
            pool,
            mc_samples=args.mc_samples,
            precision=args.precision,
            seed=args.rank_seed,
            progress=progress,
        )
    ]
    write_json(cache, {"key": key, "ranking": ranking})
    return ranking


def picks_for(arm: str, seed: int, ranking: Sequence[str], pool: Sequence[str], k: int) -> list[str]:
    """The pool cases whose labels ``arm`` gets with training seed ``seed``.

    Args:
        arm: one of ``ARMS``.
        seed: the training seed (the random arm's draw).
        ranking: the pool's case names, most doubted first.
        pool: the pool's case names in file order.
        k: cases to pick.

    Returns:
        The picked case names (none for ``init`` and ``start-only``).
    """
    if arm == "suggested":
        return list(ranking[:k])
    if arm == "least-doubted":
        return list(ranking[len(ranking) - k :])
    if arm == "random":
        drawn = np.random.default_rng(seed).choice(len(pool), size=k, replace=False)
        return [pool[i] for i in sorted(drawn)]
    return []


# ------------------------------------------------------------------------------------------- runs


def run_one(spec: dict) -> dict:
    """Fine-tune (unless ``init``) and evaluate one (arm, seed); cached in its folder.

    Runs in a worker process: everything it needs is in ``spec`` (JSON values).
    """
    result = cached_result(spec)
    if result is not None:
        return result
    run_dir = Path(spec["run_dir"])
    import torch

    torch.set_num_threads(spec["threads"])
    t0 = time.monotonic()
    model = spec["init"]
    if spec["arm"] != "init":
        name = f"active-learning-{spec['arm']}-seed{spec['seed']}"
        data = write_dataset(run_dir, name, spec["training"], [], spec["test"])
        model = fine_tune(spec, "supervised", data, run_dir / "model")
    train_seconds = time.monotonic() - t0
    result = {
        "arm": spec["arm"],
        "seed": spec["seed"],
        "picks": spec["picks"],
        "train_seconds": round(train_seconds, 1),
        "cases": evaluate(model, spec["test"], spec["device"]),
    }
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "result.json").write_text(json.dumps(result, indent=1))
    return result


def cached_result(spec: dict) -> dict | None:
    """The run's cached ``result.json``, None if there is none; CacheMismatch if it has other picks."""
    cached = Path(spec["run_dir"]) / "result.json"
    if not cached.is_file():
        return None
    result = json.loads(cached.read_text())
    if result["picks"] != spec["picks"]:
        raise CacheMismatch(
            f"{cached}: trained on picks {result['picks']}, not {spec['picks']}; use a new --out"
        )
    return result


def run_spec(args, cases: dict[str, list[dict]], arm: str, seed: int, picks: list[str]) -> dict:
    """The spec of one (arm, seed): its folder, its training cases (start labels + picks), the settings."""
    folder = args.out / "runs" / arm / f"seed{seed}"
    by_name = {case_name(e): e for e in cases["pool"]}
    return {
        "arm": arm,
        "seed": seed,
        "picks": picks,
        "run_dir": str(folder),
        "training": cases["start"] + [by_name[name] for name in picks],
        "test": cases["test"],
        "init": args.init,
        "steps": args.steps,
        "batch": args.batch,
        "lr": args.lr,
        "device": args.device,
        "precision": args.precision,
        "threads": args.threads,
    }


def run_specs(args, cases: dict[str, list[dict]], ranking: list[dict]) -> list[dict]:
    """Every (arm, seed) to run, seed by seed, arms in ``ARMS`` order (references first), so that a
    stopped run leaves whole seeds."""
    ranked = [r["case"] for r in ranking]
    pool = [case_name(e) for e in cases["pool"]]
    specs = []
    for seed in args.seeds:
        for arm in (a for a in ARMS if a in args.arms):
            if arm == "init" and seed != args.seeds[0]:
                continue
            specs.append(run_spec(args, cases, arm, seed, picks_for(arm, seed, ranked, pool, args.k)))
    return specs


def ranking_model(args, cases: dict[str, list[dict]]) -> str:
    """The model that ranks the pool: ``--init``, or the first seed's ``start-only`` model (trained now
    if not cached)."""
    if args.rank_with == "init":
        return args.init
    spec = run_spec(args, cases, "start-only", args.seeds[0], [])
    print(f"training the ranking model (start-only, seed {args.seeds[0]})", flush=True)
    run_one(spec)
    return str(Path(spec["run_dir"]) / "model")


def run_all(args) -> dict:
    """Make the data, rank the pool, run every spec not cached (``--jobs`` at once); the raw results,
    rewritten after each run."""
    cases = make_data(args)
    print(
        f"data: {len(cases['start'])} start, {len(cases['pool'])} pool, {len(cases['test'])} test", flush=True
    )
    ranking = rank_pool(args, cases, ranking_model(args, cases))
    specs = run_specs(args, cases, ranking)
    for spec in specs:  # every cache is checked before anything is trained or rewritten
        cached_result(spec)
    setting = setting_record(args, cases)
    picks = picks_record(specs)
    results: list[dict] = []
    print(f"{len(specs)} runs ({args.jobs} at a time)", flush=True)
    for result in finished_runs(run_one, specs, args.jobs):
        results.append(result)
        mean = np.mean([c["dice"] for c in result["cases"]])
        print(
            f"[{len(results)}/{len(specs)}] {result['arm']} seed {result['seed']} picks "
            f"{result['picks']}: Dice {mean:.3f} ({result['train_seconds']:.0f} s)",
            flush=True,
        )
        write_json(args.json, raw_results(setting, ranking, picks, results))
    return raw_results(setting, ranking, picks, results)


def picks_record(specs: list[dict]) -> dict[str, dict[str, list[str]]]:
    """Arm -> seed (as a JSON key) -> picked cases."""
    out: dict[str, dict[str, list[str]]] = {}
    for s in specs:
        out.setdefault(s["arm"], {})[str(s["seed"])] = s["picks"]
    return out


def setting_record(args, cases: dict[str, list[dict]]) -> dict:
    import torch

    from SemiSupSegLib.inference import resolve_precision
    from SemiSupSegLib.model_store import resolve_model
    from SemiSupSegLib.training import resolve_device

    init = resolve_model(args.init)
    device = resolve_device(args.device)
    return {
        "init": str(args.init),
        "init_description": json.loads((init / "model.json").read_text()).get("description", ""),
        "rank_with": args.rank_with,
        "mc_samples": args.mc_samples,
        "rank_seed": args.rank_seed,
        "profile": args.profile,
        "kind": args.kind,
        "size": args.size,
        "start_labeled": [case_name(e) for e in cases["start"]],
        "pool": [case_name(e) for e in cases["pool"]],
        "test": [case_name(e) for e in cases["test"]],
        "k": args.k,
        "arms": args.arms,
        "steps": args.steps,
        "batch": args.batch,
        "lr": args.lr,
        "precision": resolve_precision(args.precision, device),
        "device": str(device),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "cpus": os.cpu_count(),
        "seeds": args.seeds,
        "data_seed": args.data_seed,
        "jobs": args.jobs,
        "date": time.strftime("%Y-%m-%d"),
        "command": command_line(),
    }


def raw_results(setting: dict, ranking: list[dict], picks: dict, results: list[dict]) -> dict:
    rows = [
        {"arm": r["arm"], "seed": r["seed"], "case": c["case"], "dice": c["dice"]}
        for r in sorted(results, key=lambda r: (ARMS.index(r["arm"]), r["seed"]))
        for c in r["cases"]
    ]
    runs = [{k: v for k, v in r.items() if k != "cases"} for r in results]
    return {"setting": setting, "ranking": ranking, "picks": picks, "rows": rows, "runs": runs}


# ------------------------------------------------------------------------------------------ report


def per_arm(rows: list[dict]) -> dict[str, dict[tuple[int, str], float]]:
    """Arm -> {(seed, case): Dice}."""
    out: dict[str, dict[tuple[int, str], float]] = {}
    for r in rows:
        out.setdefault(r["arm"], {})[(int(r["seed"]), r["case"])] = float(r["dice"])
    return out


def seed_means(values: dict[tuple[int, str], float]) -> list[float]:
    """The mean Dice over the test cases, per seed (seeds in order)."""
    return [
        float(np.mean([d for (s, _), d in values.items() if s == seed]))
        for seed in sorted({s for s, _ in values})
    ]


def summary(data: dict) -> tuple[list[dict], list[dict]]:
    """Per arm: mean and std of the per-seed means; the paired tests of ``COMPARISONS`` present."""
    values = per_arm(data["rows"])
    table = []
    for arm in (a for a in ARMS if a in values):
        means = seed_means(values[arm])
        table.append(
            {
                "arm": arm,
                "mean": float(np.mean(means)),
                "seed_std": float(np.std(means)),
                "seeds": len(means),
                "n": len(values[arm]),
            }
        )
    tests = [
        {"arm": a, "reference": b, **paired_test(*paired(values[a], values[b]))}
        for a, b in COMPARISONS
        if a in values and b in values
    ]
    return table, tests


def picks_text(data: dict, arm: str) -> str:
    """The arm's picks, ``seed: cases`` per seed, or one list when every seed picked the same."""
    by_seed = data.get("picks", {}).get(arm, {})
    distinct = {tuple(v) for v in by_seed.values()}
    if not by_seed or distinct == {()}:
        return "none"
    if len(distinct) == 1:
        return ", ".join(next(iter(distinct)))
    return "; ".join(f"{s}: {', '.join(v)}" for s, v in sorted(by_seed.items()))


def markdown(data: dict) -> str:
    s = data["setting"]
    table, tests = summary(data)
    ranking = ", ".join(f"{r['case']} {r['score']:.3f}" for r in data["ranking"])
    lines = [
        f"Start model: `{Path(s['init']).name}`; profile `{s['profile']}`, {s['kind']} {s['size']}^3: "
        f"{len(s['start_labeled'])} start labels, pool of {len(s['pool'])}, {len(s['test'])} held-out test "
        f"cases (region from the true centre); k = {s['k']} picked per arm. Every trained arm fine-tunes the "
        f"start model: {s['steps']} steps, batch {s['batch']}, lr {s['lr']}, {s['precision']}, seeds "
        f"{s['seeds']}, device {s['cuda'] or s['device']}, {s['date']}.",
        "",
        f"Ranking (model: {s['rank_with']}, {s['mc_samples']} MC passes, mean entropy in nats, most doubted "
        f"first): {ranking}.",
        "",
    ]
    header = ["arm", "picked cases", "Dice % (mean ± std of the seed means)", "seeds", "n"]
    body = [
        [
            t["arm"],
            picks_text(data, t["arm"]),
            f"{100 * t['mean']:.1f} ± {100 * t['seed_std']:.1f}",
            t["seeds"],
            t["n"],
        ]
        for t in table
    ]
    lines += markdown_table(header, body)
    if tests:
        header = ["arm", "vs", "difference (points)", "Wilcoxon p", "t-test p", "pairs (seed × case)"]
        body = [
            [
                t["arm"],
                t["reference"],
                f"{t['mean_diff_points']:+.1f}",
                f"{t.get('wilcoxon_p', float('nan')):.3g}",
                f"{t.get('ttest_p', float('nan')):.3g}",
                t["n"],
            ]
            for t in tests
        ]
        lines += ["", *markdown_table(header, body)]
    goal = next((t for t in tests if (t["arm"], t["reference"]) == ("suggested", "random")), None)
    if goal is not None:
        met = "met" if goal["mean_diff_points"] >= GOAL_POINTS else "not met"
        lines += ["", f"Goal (suggested ≥ {GOAL_POINTS:g} Dice points above random): {met}."]
    return "\n".join(lines)


def draw_figure(data: dict, path: Path) -> None:
    """Bars: mean Dice per arm; error bars: std of the per-seed means; dots: the seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table, _ = summary(data)
    values = per_arm(data["rows"])
    colours = {"suggested": "tab:blue", "least-doubted": "tab:red", "random": "tab:orange"}
    fig, ax = plt.subplots(figsize=(1.4 * len(table) + 2, 4))
    x = np.arange(len(table))
    ax.bar(
        x,
        [100 * t["mean"] for t in table],
        yerr=[100 * t["seed_std"] for t in table],
        color=[colours.get(t["arm"], "tab:grey") for t in table],
        capsize=4,
    )
    for i, t in enumerate(table):
        means = [100 * m for m in seed_means(values[t["arm"]])]
        ax.plot([i] * len(means), means, "k.", ms=4)
    ax.set_xticks(x, [t["arm"] for t in table], rotation=20, ha="right")
    ax.set_ylabel("Dice % on held-out cases")
    ax.set_ylim(0, 100)
    s = data["setting"]
    ax.set_title(f"Labelling {s['k']} more of {len(s['pool'])} pool cases ({s['profile']} profile)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ------------------------------------------------------------------------------------------- main


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line and exit status 2 (``_report.fail``)."""

    def error(self, message: str):
        raise fail(message)


def int_list(text: str) -> list[int]:
    """``"0,1,2"`` -> ``[0, 1, 2]``; an ArgumentTypeError (one line) for anything else or a repeated value."""
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"a value is repeated in {text!r}")
    return values


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("active_learning"))
    p.add_argument("--json", type=Path, help="raw results (default: <out>/active_learning.json)")
    p.add_argument("--init", default=str(DEFAULT_INIT), help="the starting model (default: %(default)s)")
    p.add_argument(
        "--rank-with",
        choices=("init", "start-only"),
        default="init",
        help="the model that ranks the pool: --init, or --init fine-tuned on the start labels",
    )
    p.add_argument("--mc-samples", type=int, default=8, help="Monte-Carlo passes of the ranking")
    p.add_argument("--rank-seed", type=int, default=0)
    p.add_argument("--profile", default="random")
    p.add_argument("--kind", default="catheter")
    p.add_argument("--size", type=int, default=96)
    p.add_argument("--start-labeled", type=int, default=2)
    p.add_argument("--pool", type=int, default=12)
    p.add_argument("--test-cases", type=int, default=6)
    p.add_argument("--k", type=int, default=2, help="pool cases labelled per arm")
    p.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated, from: {', '.join(ARMS)}")
    p.add_argument("--seeds", type=int_list, default=[0, 1, 2], help="training seeds (default 0,1,2)")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--lr", type=float, default=1e-4, help="every arm's (the supervised method's default)")
    p.add_argument(
        "--precision",
        default="auto",
        choices=("auto", "fp32", "bf16"),
        help="auto: bf16 on a GPU that has it, else fp32",
    )
    p.add_argument("--device", default="auto")
    p.add_argument("--jobs", type=int, default=1, help="trainings at once (spawned processes)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per training")
    p.add_argument(
        "--workers", type=int, default=max(1, min(8, os.cpu_count() or 1)), help="phantom rendering"
    )
    p.add_argument("--data-seed", type=int, default=19)
    p.add_argument("--tabulate", type=Path, metavar="JSON", help="train nothing: render this JSON")
    p.add_argument("--write", type=Path, help=f"markdown file whose [{BLOCK}] block is replaced")
    p.add_argument("--figure", type=Path, help="PNG bar chart with error bars")
    args = p.parse_args(argv)
    args.json = args.tabulate or args.json or args.out / "active_learning.json"
    args.arms = [a for a in args.arms.split(",") if a]
    problem = argument_problem(args)
    if problem:
        p.error(problem)
    return args


def argument_problem(args: argparse.Namespace) -> str | None:
    """The first bad argument, as one line, or None."""
    unknown = [a for a in args.arms if a not in ARMS]
    checks = [
        (bool(unknown), f"--arms: unknown {unknown}; known: {', '.join(ARMS)}"),
        (not args.arms, "--arms: name at least one arm"),
        (args.start_labeled < 1, "--start-labeled must be at least 1 (the start-only arm trains on them)"),
        (args.pool < 1, "--pool must be at least 1"),
        (not 1 <= args.k <= args.pool, f"--k must be from 1 to --pool ({args.pool}), got {args.k}"),
        (args.test_cases < 1, "--test-cases must be at least 1"),
        (args.steps < 1 or args.batch < 1, "--steps and --batch must be at least 1"),
        (not args.lr > 0, "--lr must be positive"),
        (args.mc_samples < 2, "--mc-samples must be at least 2 (the entropy of the mean of the passes)"),
        (args.jobs < 1 or args.threads < 1 or args.workers < 1, "--jobs, --threads, --workers must be >= 1"),
    ]
    return next((message for bad, message in checks if bad), None)


def main(argv: list[str] | None = None) -> int:
    from SemiSupSegLib.errors import SemiSupSegError

    args = parse_args(argv)
    try:
        if args.write:
            check_block(args.write, SCRIPT, BLOCK)
        if args.tabulate:
            data = read_json(args.tabulate)
        else:
            from SemiSupSegLib.model_store import resolve_model

            resolve_model(args.init)  # a wrong --init fails now, before the data is written
            args.out.mkdir(parents=True, exist_ok=True)
            data = run_all(args)
        text = markdown(data)
        print(text)
        if args.figure:
            draw_figure(data, args.figure)
            print(f"wrote {args.figure}")
        if args.write:
            tabulate = f"python {SCRIPT} --tabulate {display_path(args.json)} --write {args.write}"
            if args.figure:
                tabulate += f" --figure {display_path(args.figure)}"
            body = [*text.split("\n"), "", provenance([args.json], data["setting"].get("command"), tabulate)]
            write_block(args.write, SCRIPT, BLOCK, body)
            print(f"replaced the [{BLOCK}] block of {args.write}")
    except KeyError as error:
        raise fail(f"{args.json}: not raw results of {SCRIPT} (no {error})") from None
    except (ReportError, SemiSupSegError, OSError) as error:
        raise fail(str(error).splitlines()[0]) from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
