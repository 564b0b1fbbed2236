"""The new-scanner benchmark (issue 13): does fine-tuning on a new scanner's unlabelled scans beat supervised?

The product's use: a clinic has a model trained on scanner A and collects scans from scanner B. Here A
and B are phantom profiles (docs/PHANTOM_PROFILES.md), by default ``default`` and ``cluttered``:

1. The starting model (``--init``, default ``benchmarks/models/phantom-catheter-default``: the demo model
   shipped until 2026-12-01, trained on 20 default-profile catheters only) was trained supervised on
   profile A. ``--source-labeled`` more A cases (new seeds) form the A labels the rows may reuse.
2. Every trained row fine-tunes from it (``--init``) with the same steps, batch, patch, learning rate,
   precision and seeds, on ``b`` labelled B cases (each of ``--target-labeled``), and the SSL rows also
   on ``--unlabeled`` unlabelled B scans:

   - ``source-only``: the starting model as it is (no training; one evaluation, seed 0);
   - ``supervised-B``: the B labels only (only when b > 0);
   - ``supervised-A+B``: the A and B labels (only when b > 0: with b = 0 it would be source training);
   - ``mean-teacher``, ``ua-mt``, ``dual-unet``, ``embedding-matching``, ``coranet``, ``crln``,
     ``voxel-adversarial``: the A and B labels plus the
     unlabelled B scans, each method with its paper defaults (METHODS.md) except the learning rate.
3. Every run is evaluated on ``--test-cases`` held-out B cases with the product's main path: the
   coarse-to-fine region from the true centre point.

Raw per-case results go to ``--json`` (default ``<out>/ssl_domain_shift.json``) as
``{"setting": {...}, "rows": [{"row", "method", "seed", "case", "dice", "b_labeled"}], "runs": [...]}``
(Dice as a fraction; ``row`` names the B-label setting too, e.g. ``"B2 dual-unet"``), rewritten after every
finished run, so an interrupted benchmark keeps what it measured. Each run also caches its
``result.json`` under ``<out>/runs/``; a second invocation with the same ``--out`` trains only what is
missing. ``--jobs N`` runs N trainings at once in spawned processes (on a GPU machine; on a 2-core CPU
keep 1). ``--tabulate JSON`` renders the table, the paired test and the figure without training;
``--write DOC`` replaces the ``[ssl_domain_shift]`` block of DOC; ``--figure PNG`` draws the bar chart.

The paired test compares, per B-label setting, the best semi-supervised row with the best supervised
row (``source-only`` included) over the (seed, case) pairs both have (a row with one seed is paired
with every seed of the other): the mean difference, the Wilcoxon signed-rank p and the paired t-test p.

CPU smoke run (minutes): ``OMP_NUM_THREADS=1 python benchmarks/ssl_domain_shift.py --out /tmp/sds
--size 48 --steps 4 --seeds 0 --unlabeled 2 --test-cases 2 --source-labeled 1 --target-labeled 1``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import multiprocessing
import os
import sys
import time
from collections.abc import Callable, Iterator
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

SCRIPT = "benchmarks/ssl_domain_shift.py"
DEFAULT_INIT = Path(__file__).resolve().parent / "models" / "phantom-catheter-default"
SUPERVISED_ROWS = ("source-only", "supervised-B", "supervised-A+B")
SSL_ROWS = (
    "mean-teacher",
    "ua-mt",
    "dual-unet",
    "embedding-matching",
    "coranet",
    "crln",
    "voxel-adversarial",
)
ROWS = {
    "source-only": (None, ""),
    "supervised-B": ("supervised", "B"),
    "supervised-A+B": ("supervised", "A+B"),
    "mean-teacher": ("mean-teacher", "A+B+U"),
    "ua-mt": ("ua-mt", "A+B+U"),
    "dual-unet": ("dual-unet", "A+B+U"),
    "embedding-matching": ("embedding-matching", "A+B+U"),
    "coranet": ("coranet", "A+B+U"),
    "crln": ("crln", "A+B+U"),
    "voxel-adversarial": ("voxel-adversarial", "A+B+U"),
}
"""Row -> (method, the data it trains on: A/B labels, U = the unlabelled B scans); None: no training."""


# ------------------------------------------------------------------------------------------- data


def make_data(args) -> dict[str, list[dict]]:
    """Write the A and B phantom sets (once) and return their cases as entries with absolute paths.

    Source and target images share file names (``phantom_catheter_000``), and a case's name is its file
    name, so every entry points at a prefixed symbolic link (``A_...``, ``B_...``) in ``<out>/data/cases``.
    """
    from SemiSupSegLib.dataset import load_dataset
    from SemiSupSegLib.phantom import write_phantom_dataset

    root = args.out / "data"
    common = {"kind": args.kind, "size": args.size, "workers": args.workers}
    sets = {
        "A": (root / "source", {"cases": args.source_labeled, "profile": args.source_profile}),
        "B": (
            root / "target",
            {
                "cases": max(args.target_labeled),
                "unlabeled": args.unlabeled,
                "test": args.test_cases,
                "profile": args.target_profile,
            },
        ),
    }
    links = root / "cases"
    links.mkdir(parents=True, exist_ok=True)
    out: dict[str, list[dict]] = {}
    for tag, (folder, kwargs) in sets.items():
        seed = args.data_seed + (0 if tag == "A" else 1)
        if not (folder / "dataset.json").is_file():
            write_phantom_dataset(folder, seed=seed, **common, **kwargs)
        ds = load_dataset(folder / "dataset.json")
        for section in ("training", "unlabeled", "test"):
            out[f"{tag}-{section}"] = [_linked_entry(c, tag, links) for c in getattr(ds, section)]
    return out


def _linked_entry(case, tag: str, links: Path) -> dict:
    entry = {}
    for key in ("image", "label"):
        path = getattr(case, key)
        if path is None:
            continue
        prefix = tag if key == "image" else f"{tag}_label"  # the image's link name is the case name
        link = links.resolve() / f"{prefix}_{Path(path).name}"
        if not link.is_symlink():
            link.symlink_to(Path(path).resolve())
        entry[key] = str(link)
    if case.center is not None:
        entry["center"] = [float(c) for c in case.center]
    return entry


def write_split(path: Path, cases: dict[str, list[dict]], row: str, b_labeled: int) -> Path:
    """The dataset.json of one row and B-label count (labels/unlabelled as ``ROWS`` says), test = B test."""
    uses = ROWS[row][1]
    training = list(cases["A-training"]) if "A" in uses else []
    if "B" in uses:
        training += cases["B-training"][:b_labeled]
    unlabeled = (
        [{k: v for k, v in e.items() if k != "label"} for e in cases["B-unlabeled"]] if "U" in uses else []
    )
    data = {
        "name": f"domain-shift-{row}-B{b_labeled}",
        "labels": {"0": "background", "1": "instrument"},
        "modality": {"0": "US"},
        "training": training,
        "unlabeled": unlabeled,
        "test": cases["B-test"],
    }
    path.mkdir(parents=True, exist_ok=True)
    (path / "dataset.json").write_text(json.dumps(data, indent=1))
    return path / "dataset.json"


# ------------------------------------------------------------------------------------------- runs


def run_one(spec: dict) -> dict:
    """Train (unless ``source-only``) and evaluate one (row, B-label count, seed); cached in its folder.

    Runs in a worker process: everything it needs is in ``spec`` (JSON values).
    """
    run_dir = Path(spec["run_dir"])
    cached = run_dir / "result.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    import torch

    torch.set_num_threads(spec["threads"])
    method, _ = ROWS[spec["row"]]
    t0 = time.monotonic()
    model = spec["init"] if method is None else fine_tune(spec, method, spec["data"], run_dir / "model")
    train_seconds = time.monotonic() - t0
    per_case = evaluate(model, spec["test"], spec["device"])
    result = {
        "row": spec["row"],
        "method": method or "none",
        "b_labeled": spec["b_labeled"],
        "seed": spec["seed"],
        "train_seconds": round(train_seconds, 1),
        "cases": per_case,
    }
    cached.write_text(json.dumps(result, indent=1))
    return result


def fine_tune(spec: dict, method: str, data: str | Path, out: Path) -> str:
    """Fine-tune ``spec["init"]`` with ``method`` on ``data`` (no validation cases, no checkpoints) with the
    spec's steps, batch, lr, seed, device and precision; the model folder written (shared with
    ``active_learning.py``)."""
    from SemiSupSegLib.training import TrainConfig, Trainer

    config = TrainConfig(
        data=str(data),
        out=str(out),
        method=method,
        steps=spec["steps"],
        batch=spec["batch"],
        lr=spec["lr"],
        seed=spec["seed"],
        val_cases=0,
        checkpoint_every=10**9,
        device=spec["device"],
        precision=spec["precision"],
        init=spec["init"],
    )
    return str(Trainer(config).run())


def evaluate(model_dir: str, test: list[dict], device: str) -> list[dict]:
    """Dice of each test case, segmented from its true centre (coarse-to-fine region)."""
    import SimpleITK as sitk

    from SemiSupSegLib.inference import segment
    from SemiSupSegLib.metrics import segmentation_metrics
    from SemiSupSegLib.model_store import load_model
    from SemiSupSegLib.training import resolve_device

    model = load_model(model_dir, device=resolve_device(device))
    out = []
    for entry in test:
        image, label = sitk.ReadImage(entry["image"]), sitk.ReadImage(entry["label"])
        result = segment(model, image, entry["center"])
        pred = sitk.GetArrayFromImage(result.label) > 0
        metrics = segmentation_metrics(pred, sitk.GetArrayFromImage(label) > 0, image.GetSpacing()[::-1])
        out.append({"case": Path(entry["image"]).name.split(".")[0], "dice": float(metrics["dice"])})
    return out


def run_specs(args, cases: dict[str, list[dict]]) -> list[dict]:
    """Every (B-label count, row, seed) to run: setting by setting, seed by seed, rows in ``ROWS`` order
    (the supervised references first), so that a stopped run leaves whole seeds of the first setting."""
    specs = []
    for b in args.target_labeled:
        order = [r for r in ROWS if r in args.rows]
        for seed in args.seeds:
            for row in order:
                if row == "source-only" and seed != args.seeds[0]:
                    continue
                if row in ("supervised-B", "supervised-A+B") and b == 0:
                    continue
                folder = args.out / "runs" / f"B{b}" / row
                data = write_split(folder, cases, row, b)
                specs.append(
                    {
                        "row": row,
                        "b_labeled": b,
                        "seed": seed,
                        "run_dir": str(folder / f"seed{seed}"),
                        "data": str(data),
                        "test": cases["B-test"],
                        "init": args.init,
                        "steps": args.steps,
                        "batch": args.batch,
                        "lr": args.lr,
                        "device": args.device,
                        "precision": args.precision,
                        "threads": args.threads,
                    }
                )
                Path(specs[-1]["run_dir"]).mkdir(parents=True, exist_ok=True)
    return specs


def finished_runs(run: Callable[[dict], dict], specs: list[dict], jobs: int) -> Iterator[dict]:
    """``run(spec)`` of every spec as each finishes: here, or ``jobs`` at once in spawned processes (the
    pool is shut down when the generator ends, so no worker outlives the benchmark's loop)."""
    if jobs <= 1:
        yield from (run(s) for s in specs)
        return
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=context) as pool:
        futures = [pool.submit(run, s) for s in specs]
        yield from (f.result() for f in concurrent.futures.as_completed(futures))


def run_all(args) -> dict:
    """Run every spec not cached (``--jobs`` at once); the raw results, rewritten after each run."""
    cases = make_data(args)
    specs = run_specs(args, cases)
    setting = setting_record(args, cases)
    results: list[dict] = []
    print(f"{len(specs)} runs ({args.jobs} at a time)", flush=True)
    for result in finished_runs(run_one, specs, args.jobs):
        results.append(result)
        mean = np.mean([c["dice"] for c in result["cases"]])
        print(
            f"[{len(results)}/{len(specs)}] B{result['b_labeled']} {result['row']} seed {result['seed']}: "
            f"Dice {mean:.3f} ({result['train_seconds']:.0f} s)",
            flush=True,
        )
        write_json(args.json, raw_results(setting, results))
    return raw_results(setting, results)


def setting_record(args, cases: dict[str, list[dict]]) -> dict:
    import torch

    from SemiSupSegLib.model_store import resolve_model

    init = resolve_model(args.init)
    return {
        "init": str(args.init),
        "init_description": json.loads((init / "model.json").read_text()).get("description", ""),
        "init_weights_bytes": sum(f.stat().st_size for f in init.iterdir() if f.suffix == ".pt"),
        "source_profile": args.source_profile,
        "target_profile": args.target_profile,
        "kind": args.kind,
        "size": args.size,
        "source_labeled": len(cases["A-training"]),
        "target_labeled": args.target_labeled,
        "unlabeled": len(cases["B-unlabeled"]),
        "test_cases": len(cases["B-test"]),
        "steps": args.steps,
        "batch": f"{args.batch} labelled + {args.batch} unlabelled",
        "lr": args.lr,
        "precision": args.precision,
        "device": args.device,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "seeds": args.seeds,
        "data_seed": args.data_seed,
        "jobs": args.jobs,
        "command": command_line(),
    }


def raw_results(setting: dict, results: list[dict]) -> dict:
    rows = [
        {
            "row": f"B{r['b_labeled']} {r['row']}",
            "method": r["method"],
            "seed": r["seed"],
            "case": c["case"],
            "dice": c["dice"],
            "b_labeled": r["b_labeled"],
        }
        for r in sorted(results, key=lambda r: (-r["b_labeled"], r["row"], r["seed"]))
        for c in r["cases"]
    ]
    runs = [{k: v for k, v in r.items() if k != "cases"} for r in results]
    return {"setting": setting, "rows": rows, "runs": runs}


# ------------------------------------------------------------------------------------------ report


def per_row(rows: list[dict]) -> dict[str, dict[tuple[int, str], float]]:
    """Row name -> {(seed, case): Dice}."""
    out: dict[str, dict[tuple[int, str], float]] = {}
    for r in rows:
        out.setdefault(r["row"], {})[(int(r["seed"]), r["case"])] = float(r["dice"])
    return out


def paired(a: dict[tuple[int, str], float], b: dict[tuple[int, str], float]) -> tuple[np.ndarray, np.ndarray]:
    """Dice of ``a`` and ``b`` on common (seed, case) pairs; a one-seed row is paired with every seed."""

    def lookup(values, seed, case):
        if (seed, case) in values:
            return values[(seed, case)]
        seeds = {s for s, _ in values}
        return values.get((next(iter(seeds)), case)) if len(seeds) == 1 else None

    keys = sorted(set(a) | set(b))
    pairs = [(lookup(a, s, c), lookup(b, s, c)) for s, c in keys]
    pairs = [p for p in pairs if None not in p]
    return np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])


def paired_test(x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Mean difference x - y (Dice points), Wilcoxon signed-rank and paired t-test p-values."""
    from scipy import stats

    d = x - y
    out = {"n": int(len(d)), "mean_diff_points": float(100 * d.mean()) if len(d) else float("nan")}
    if len(d) >= 2 and np.any(d != 0):
        out["wilcoxon_p"] = float(stats.wilcoxon(x, y).pvalue)
        out["ttest_p"] = float(stats.ttest_rel(x, y).pvalue)
    return out


def summary(data: dict) -> tuple[list[dict], list[dict]]:
    """Per row: mean/std over (seed, case), std of the per-seed means; per setting: the paired test."""
    values = per_row(data["rows"])
    table = []
    for name, v in values.items():
        seeds = sorted({s for s, _ in v})
        seed_means = [np.mean([d for (s, _), d in v.items() if s == seed]) for seed in seeds]
        dice = np.array(list(v.values()))
        table.append(
            {
                "row": name,
                "b_labeled": int(name.split()[0][1:]),
                "mean": float(dice.mean()),
                "std": float(dice.std()),
                "seed_std": float(np.std(seed_means)),
                "seeds": len(seeds),
                "n": len(dice),
            }
        )
    tests = []
    for b in sorted({t["b_labeled"] for t in table}, reverse=True):
        here = [t for t in table if t["b_labeled"] == b]
        ssl = [t for t in here if t["row"].split(" ", 1)[1] in SSL_ROWS]
        sup = [t for t in here if t["row"].split(" ", 1)[1] in SUPERVISED_ROWS]
        if not ssl or not sup:
            continue
        best_ssl, best_sup = max(ssl, key=lambda t: t["mean"]), max(sup, key=lambda t: t["mean"])
        x, y = paired(values[best_ssl["row"]], values[best_sup["row"]])
        tests.append(
            {"b_labeled": b, "ssl": best_ssl["row"], "supervised": best_sup["row"], **paired_test(x, y)}
        )
    return table, tests


def markdown(data: dict) -> str:
    s = data["setting"]
    table, tests = summary(data)
    lines = [
        f"Start: `{Path(s['init']).name}` (profile `{s['source_profile']}`); new scanner: profile "
        f"`{s['target_profile']}`, {s['kind']} {s['size']}^3; {s['source_labeled']} A labels, "
        f"{s['unlabeled']} unlabelled B scans, {s['test_cases']} held-out B cases (region from the true "
        f"centre). Every trained row: {s['steps']} steps, batch {s['batch']}, lr {s['lr']}, "
        f"{s['precision']}, seeds {s['seeds']}, device {s['cuda'] or s['device']}.",
        "",
    ]
    header = ["B labels", "row", "Dice % (mean ± std over seed × case)", "std of seed means", "seeds", "n"]
    body = [
        [
            t["b_labeled"],
            t["row"].split(" ", 1)[1],
            f"{100 * t['mean']:.1f} ± {100 * t['std']:.1f}",
            f"{100 * t['seed_std']:.1f}",
            t["seeds"],
            t["n"],
        ]
        for t in sorted(table, key=lambda t: (-t["b_labeled"], -t["mean"]))
    ]
    lines += markdown_table(header, body)
    if tests:
        lines += [
            "",
            *markdown_table(
                [
                    "B labels",
                    "best SSL",
                    "best supervised",
                    "difference (points)",
                    "Wilcoxon p",
                    "t-test p",
                    "pairs",
                ],
                [
                    [
                        t["b_labeled"],
                        t["ssl"].split(" ", 1)[1],
                        t["supervised"].split(" ", 1)[1],
                        f"{t['mean_diff_points']:+.1f}",
                        f"{t.get('wilcoxon_p', float('nan')):.3g}",
                        f"{t.get('ttest_p', float('nan')):.3g}",
                        t["n"],
                    ]
                    for t in tests
                ],
            ),
        ]
    return "\n".join(lines)


def draw_figure(data: dict, path: Path) -> None:
    """Bars: mean Dice per row and B-label setting; error bars: std of the per-seed means; dots: seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table, _ = summary(data)
    settings = sorted({t["b_labeled"] for t in table}, reverse=True)
    values = per_row(data["rows"])
    fig, axes = plt.subplots(1, len(settings), figsize=(5 * len(settings), 4), squeeze=False)
    for ax, b in zip(axes[0], settings, strict=True):
        here = [t for t in table if t["b_labeled"] == b]
        here.sort(key=lambda t: list(ROWS).index(t["row"].split(" ", 1)[1]))
        names = [t["row"].split(" ", 1)[1] for t in here]
        colours = ["tab:blue" if n in SSL_ROWS else "tab:grey" for n in names]
        x = np.arange(len(here))
        ax.bar(
            x,
            [100 * t["mean"] for t in here],
            yerr=[100 * t["seed_std"] for t in here],
            color=colours,
            capsize=4,
        )
        for i, t in enumerate(here):
            v = values[t["row"]]
            seed_means = [
                100 * np.mean([d for (s, _), d in v.items() if s == seed])
                for seed in sorted({s for s, _ in v})
            ]
            ax.plot([i] * len(seed_means), seed_means, "k.", ms=4)
        ax.set_xticks(x, names, rotation=30, ha="right")
        ax.set_ylabel("Dice % on held-out B cases")
        ax.set_title(f"{b} labelled B case(s)")
        ax.set_ylim(0, 100)
    s = data["setting"]
    fig.suptitle(  # two lines: one panel (a single B-label setting) is too narrow for one
        f"Fine-tuning to a new scanner: {s['source_profile']} -> {s['target_profile']}\n"
        "(grey supervised, blue SSL)",
        fontsize=10,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("ssl_domain_shift"))
    p.add_argument("--json", type=Path, help="raw results (default: <out>/ssl_domain_shift.json)")
    p.add_argument(
        "--init",
        default=str(DEFAULT_INIT),
        help="the model trained on profile A only (default: the demo model shipped until 2026-12-01, kept "
        "in benchmarks/models/ because the shipped one has since seen random profiles)",
    )
    p.add_argument("--source-profile", default="default")
    p.add_argument("--target-profile", default="cluttered")
    p.add_argument("--kind", default="catheter")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--source-labeled", type=int, default=4)
    p.add_argument("--target-labeled", default="2,0", help="B-label counts, comma-separated")
    p.add_argument("--unlabeled", type=int, default=14)
    p.add_argument("--test-cases", type=int, default=8)
    p.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated, from: {', '.join(ROWS)}")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--lr", type=float, default=1e-4, help="every trained row's (the paper's 1e-4)")
    p.add_argument("--precision", default="bf16")
    p.add_argument("--device", default="auto")
    p.add_argument("--jobs", type=int, default=1, help="trainings at once (spawned processes)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per training")
    p.add_argument(
        "--workers", type=int, default=max(1, min(8, (os.cpu_count() or 1))), help="phantom rendering"
    )
    p.add_argument("--data-seed", type=int, default=13)
    p.add_argument("--tabulate", type=Path, metavar="JSON", help="train nothing: render this JSON")
    p.add_argument("--write", type=Path, help="markdown file whose [ssl_domain_shift] block is replaced")
    p.add_argument("--figure", type=Path, help="PNG bar chart with error bars")
    args = p.parse_args(argv)
    args.json = args.tabulate or args.json or args.out / "ssl_domain_shift.json"
    args.target_labeled = [int(v) for v in args.target_labeled.split(",")]
    args.rows = [r for r in args.rows.split(",") if r]
    unknown = [r for r in args.rows if r not in ROWS]
    if unknown:
        p.error(f"unknown rows {unknown}; known: {', '.join(ROWS)}")
    args.seeds = [int(s) for s in args.seeds.split(",")]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.write:
            check_block(args.write, SCRIPT, "ssl_domain_shift")
        if args.tabulate:
            data = read_json(args.tabulate)
        else:
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
            write_block(args.write, SCRIPT, "ssl_domain_shift", body)
            print(f"replaced the [ssl_domain_shift] block of {args.write}")
    except KeyError as error:
        raise fail(f"{args.json}: not raw results of {SCRIPT} (no {error})") from None
    except (ReportError, OSError) as error:
        raise fail(str(error)) from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
