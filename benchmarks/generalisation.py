"""Several models on the same unseen cases of every scanner profile and of another generator (issue 12).

``region_vs_window.py`` compares inference layouts of one model; this script compares *models* (training
recipes) on identical cases, so that their differences can be tested pairwise. Each case is drawn once
(phantom profile ``P``: ``generate_phantom(size, kind, seed)``; ``other-generator``:
``benchmarks/other_generator.py``'s ``render_case``, an independent simulator; seeds ``--seed + i``,
guide-wires ``+ 500``), then every model segments it with the product's main path (the coarse-to-fine
region from the true centre) and its Dice against the label is recorded.

Raw results (``--out``): ``{"setting": {...}, "rows": [{"model", "profile", "kind", "seed", "dice"}]}``,
rewritten after every case; a second invocation with the same ``--out`` measures only the missing
(model, profile, kind, seed) rows, so a long table can span sessions. ``--tabulate JSON`` renders the
table (mean ± std per model and profile, the mean over profiles) and, for each model against the first
(``--reference``), the paired difference over every (profile, case) with Wilcoxon and paired-t p-values;
``--figure PNG`` draws a grouped bar chart; ``--write DOC`` replaces the block of DOC named after the
JSON's stem (``[generalisation_catheter]`` for ``generalisation_catheter.json``).

Usage::

    python benchmarks/generalisation.py --model shipped=PATH --model candidate=PATH \\
        --profiles default fine coarse cluttered other-generator --kinds catheter --size 128 --cases 8 \\
        --out docs/benchmark_results/generalisation.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

PACKAGE = Path(__file__).resolve().parents[1] / "SemiSupSeg"
if str(PACKAGE) not in sys.path:
    sys.path.insert(0, str(PACKAGE))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import (  # noqa: E402
    ReportError,
    command_line,
    fail,
    markdown_table,
    provenance,
    read_json,
    write_block,
    write_json,
)
from region_vs_window import _case, _dice  # noqa: E402
from ssl_domain_shift import paired_test  # noqa: E402

SCRIPT = "benchmarks/generalisation.py"


def _key(row: dict) -> tuple:
    return row["model"], row["profile"], row["kind"], row["seed"]


def measure(args: argparse.Namespace, models: dict[str, str], log) -> dict:
    from SemiSupSegLib import inference
    from SemiSupSegLib.model_store import load_model

    torch.set_num_threads(args.threads)
    data = read_json(args.out) if args.out.exists() else {"rows": []}
    data["setting"] = _setting(args, models)
    done = {_key(r) for r in data["rows"]}
    loaded = {name: load_model(path, torch.device("cpu")) for name, path in models.items()}
    for profile in args.profiles:
        for kind in args.kinds:
            for i in range(args.cases):
                seed = args.seed + i + (500 if kind == "guidewire" else 0)
                todo = [m for m in models if (m, profile, kind, seed) not in done]
                if not todo:
                    continue
                case = _case(profile, args.size, kind, seed)
                truth = sitk.GetArrayFromImage(case.label) > 0
                for name in todo:
                    started = time.perf_counter()
                    probability = inference.segment(loaded[name], case.image, case.center).probability
                    dice = _dice(sitk.GetArrayFromImage(probability) > 0.5, truth)
                    row = {"model": name, "profile": profile, "kind": kind, "seed": seed, "dice": dice}
                    data["rows"].append(row)
                    seconds = time.perf_counter() - started
                    log(f"{profile} {kind} seed {seed} {name}: Dice {dice:.3f} ({seconds:.1f} s)")
                write_json(args.out, data)
    return data


def _setting(args: argparse.Namespace, models: dict[str, str]) -> dict:
    return {
        "models": models,
        "size": args.size,
        "seed": args.seed,
        "command": command_line(),
        "path": "coarse-to-fine region from the true centre, fp32, CPU",
    }


def table(data: dict, reference: str | None) -> list[str]:
    rows = data["rows"]
    models = list(dict.fromkeys(r["model"] for r in rows))
    reference = reference or models[0]
    columns = list(dict.fromkeys((r["profile"], r["kind"]) for r in rows))
    by = {(r["model"], r["profile"], r["kind"], r["seed"]): r["dice"] for r in rows}
    header = [
        "model",
        *[f"{p} {k}" for p, k in columns],
        "mean",
        f"- {reference} (points)",
        "Wilcoxon p",
        "pairs",
    ]
    body = []
    for model in models:
        cells, means = [], []
        for profile, kind in columns:
            values = [d for (m, p, k, _), d in by.items() if (m, p, k) == (model, profile, kind)]
            cells.append(f"{np.mean(values):.3f} ± {np.std(values):.3f}" if values else "-")
            means.extend(values)
        pairs = [
            (d, by[(reference, p, k, s)])
            for (m, p, k, s), d in by.items()
            if m == model and (reference, p, k, s) in by
        ]
        test = paired_test(np.array([a for a, _ in pairs]), np.array([b for _, b in pairs]))
        diff = "-" if model == reference else f"{test['mean_diff_points']:+.1f}"
        p_value = f"{test['wilcoxon_p']:.3f}" if model != reference and "wilcoxon_p" in test else "-"
        body.append([model, *cells, f"{np.mean(means):.3f}", diff, p_value, len(pairs)])
    return markdown_table(header, body)


def figure(data: dict, path: Path) -> None:
    """Grouped bars: mean Dice per test profile (x) and model (bars), the standard error as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = data["rows"]
    models = list(dict.fromkeys(r["model"] for r in rows))
    columns = list(dict.fromkeys((r["profile"], r["kind"]) for r in rows))
    width = 0.8 / len(models)
    fig, ax = plt.subplots(figsize=(1.6 + 1.6 * len(columns), 3.6))
    for i, model in enumerate(models):
        values = [
            [r["dice"] for r in rows if (r["model"], r["profile"], r["kind"]) == (model, p, k)]
            for p, k in columns
        ]
        means = [np.mean(v) if v else np.nan for v in values]
        errors = [np.std(v) / np.sqrt(len(v)) if v else 0.0 for v in values]
        ax.bar(
            np.arange(len(columns)) + (i - (len(models) - 1) / 2) * width,
            means,
            width,
            yerr=errors,
            label=model,
            capsize=2,
        )
    ax.set_xticks(np.arange(len(columns)), [f"{p}\n{k}" for p, k in columns])
    ax.set_ylabel("Dice (region from the true centre)")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, ncol=min(3, len(models)))
    ax.set_title("Unseen cases per test profile: mean and standard error")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", action="append", default=[], metavar="NAME=PATH", help="a model to measure")
    p.add_argument(
        "--profiles", nargs="+", default=["default", "fine", "coarse", "cluttered", "other-generator"]
    )
    p.add_argument("--kinds", nargs="+", default=["catheter"])
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--cases", type=int, default=8)
    p.add_argument("--seed", type=int, default=7000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path)
    p.add_argument("--tabulate", type=Path, help="render these raw results only")
    p.add_argument("--reference", help="the model the others are compared with (default: the first)")
    p.add_argument("--write", type=Path, help="markdown file whose block [<JSON stem>] is replaced")
    p.add_argument("--figure", type=Path, help="also draw the grouped bar chart (PNG)")
    args = p.parse_args(argv)
    try:
        if args.tabulate:
            data, source = read_json(args.tabulate), args.tabulate
        else:
            if not args.model or args.out is None:
                raise ReportError("give --model NAME=PATH (one or more) and --out JSON, or --tabulate JSON")
            models = dict(item.split("=", 1) for item in args.model)
            data, source = measure(args, models, lambda line: print(line, flush=True)), args.out
        lines = table(data, args.reference)
        tabulate = f"python {SCRIPT} --tabulate {source} --write docs/BENCHMARKS.md"
        lines += ["", provenance([source], data["setting"].get("command"), tabulate)]
        print("\n".join(lines))
        if args.figure:
            figure(data, args.figure)
        if args.write:
            write_block(args.write, SCRIPT, Path(source).stem, lines)
    except (ReportError, OSError, ValueError) as error:
        raise fail(str(error)) from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
