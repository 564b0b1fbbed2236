"""Cross-profile table (issue 12 part 4): training profile x test profile Dice, region and sliding window.

Each model is measured by ``benchmarks/region_vs_window.py`` on fresh phantoms of every named profile
(layouts ``shipped``, the coarse-to-fine region from the true centre, and ``window``, the sliding window
over the whole volume); this script only renders those raw JSONs side by side, one row per model and
instrument, one column pair per test profile, and checks issue 12's targets (region Dice >= 0.65 on
catheters and >= 0.5 on guide-wires, on every profile).

Usage::

    python benchmarks/region_vs_window.py --model M --profiles default fine coarse cluttered --sizes 96 \\
        --kinds catheter guidewire --cases 3 --layouts shipped window --out docs/benchmark_results/X.json
    python benchmarks/cross_profile.py --tabulate "trained on default=docs/benchmark_results/X.json" \\
        "trained on random=docs/benchmark_results/Y.json" --write docs/BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from _report import ReportError, display_path, fail, markdown_table, read_json, write_block

SCRIPT = "benchmarks/cross_profile.py"
BLOCK = "cross_profile"
TARGETS = {"catheter": 0.65, "guidewire": 0.5}
"""Issue 12's region Dice targets per instrument, on every profile."""


def _mean(cases: list[dict], layout: str) -> float:
    values = [c[layout]["dice"] for c in cases if layout in c]
    return float(np.mean(values)) if values else float("nan")


def _cell(region: float, window: float) -> str:
    """``region / window`` Dice, or the region alone where the window was not measured."""
    return f"{region:.3f}" if np.isnan(window) else f"{region:.3f} / {window:.3f}"


def table(models: list[tuple[str, dict]]) -> list[str]:
    """Markdown: one row per (model, instrument), "region / window" Dice per test profile (the region
    alone where a run measured no window), and whether issue 12's target is met."""
    profiles = list(dict.fromkeys(s["profile"] for _, r in models for s in r["settings"]))
    header = ["training", "instrument", "n", *[f"{p}: region / window" for p in profiles], "target met"]
    rows = []
    for label, results in models:
        for kind in dict.fromkeys(s["kind"] for s in results["settings"]):
            settings = {s["profile"]: s for s in results["settings"] if s["kind"] == kind}
            region = {p: _mean(settings[p]["cases"], "shipped") for p in settings}
            cells = [
                _cell(region[p], _mean(settings[p]["cases"], "window")) if p in settings else "-"
                for p in profiles
            ]
            sizes = {len(s["cases"]) for s in settings.values()}
            missed = [p for p in profiles if not region.get(p, 0.0) >= TARGETS.get(kind, 0.0)]
            verdict = "yes" if not missed else "no (" + ", ".join(missed) + ")"
            rows.append([label, kind, "/".join(str(n) for n in sorted(sizes)), *cells, verdict])
    return markdown_table(header, rows)


def provenance_lines(models: list[tuple[str, str, dict]], tabulate: str) -> list[str]:
    lines = ["", "Measured with:", ""]
    for label, path, results in models:
        lines.append(
            f"- {label}: `{results.get('command', '?')}` (device {results.get('device', 'cpu')}); "
            f"raw results `{display_path(path)}`"
        )
    lines += ["", f"*This block is generated: `{tabulate}` rebuilds it from the JSON.*"]
    return lines


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--tabulate",
        nargs="+",
        required=True,
        metavar="LABEL=JSON",
        help="a model's label and its region_vs_window.py raw results",
    )
    p.add_argument("--write", type=Path, help="markdown file whose [cross_profile] block is replaced")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        models = []
        for item in args.tabulate:
            label, sep, path = item.partition("=")
            if not sep:
                raise ReportError(f"--tabulate {item!r}: expected LABEL=JSON")
            models.append((label, path, read_json(Path(path))))
        lines = table([(label, results) for label, _, results in models])
        print("\n".join(lines))
        if args.write:
            quoted = " ".join(f'"{item}"' for item in args.tabulate)
            tabulate = f"python {SCRIPT} --tabulate {quoted} --write {args.write}"
            write_block(args.write, SCRIPT, BLOCK, [*lines, *provenance_lines(models, tabulate)])
            print(f"replaced the [{BLOCK}] block of {args.write}")
    except KeyError as error:
        raise fail(f"not raw results of benchmarks/region_vs_window.py (no {error})") from None
    except (ReportError, OSError) as error:
        raise fail(str(error)) from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
