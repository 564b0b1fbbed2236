"""Benchmark of the DQN instrument locator on phantom volumes it never trained on (not a test).

    OMP_NUM_THREADS=1 python benchmarks/locator.py --locator phantom-locator [--model phantom-catheter] \
        [--cases 10] [--work /tmp/locator-bench] [--write docs/BENCHMARKS.md]

Test data: the ``test`` split of ``semisupseg phantom`` with the seeds and size the shipped locator's
training data used (101 catheter, 102 guide-wire, 128³): test cases have their own seeds, so none
was trained on. "Other geometry": 160³ at a fixed 0.45 mm (seeds 201, 202), vs 128³ at 0.4-0.7 mm.

Reported per set: localisation error in voxels of the 96³ grid and in mm (median, mean ± std, %
within 10 grid voxels), seconds per volume (resampling + search; reading the file excluded), for 9
agent starts (best final Q, or the median point) and for 1 start, and the error of always answering
the grid centre. With ``--model``: the coarse-to-fine Dice from the located point and from the true
centre. ``--write`` replaces the "Locator" section of the given file.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from SemiSupSegLib.dataset import load_dataset
from SemiSupSegLib.imageio import read_image
from SemiSupSegLib.locator import load_locator, locate
from SemiSupSegLib.locator.locate import grid_index_of
from SemiSupSegLib.phantom import write_phantom_dataset

SETS = {  # name: (kind, seed, size, spacing)
    "catheter 128³": ("catheter", 101, 128, None),
    "guide-wire 128³": ("guidewire", 102, 128, None),
    "catheter 160³ @0.45 mm": ("catheter", 201, 160, 0.45),
    "guide-wire 160³ @0.45 mm": ("guidewire", 202, 160, 0.45),
}
VARIANTS = {"9 starts, best Q": (9, "q"), "9 starts, median": (9, "median"), "1 start": (1, "q")}
BASELINE = "grid centre, no search (baseline)"


def _dataset(work: Path, name: str, cases: int) -> Path:
    kind, seed, size, spacing = SETS[name]
    folder = work / f"{kind}-{seed}-{size}-{cases}"
    path = folder / "dataset.json"
    if not path.is_file():
        write_phantom_dataset(folder, cases=0, test=cases, seed=seed, kind=kind, size=size, spacing=spacing)
    return path


def _errors(locator, image: sitk.Image, center, starts: int, how: str) -> dict:
    found = locate(locator, image, starts=starts, how=how)
    truth = np.array(grid_index_of(locator, image, center))
    grid_spacing = np.asarray(image.GetSpacing())[::-1] * np.asarray(image.GetSize())[::-1] / locator.grid
    diff = np.subtract(found.grid_index_zyx, truth)
    return {
        "vox": float(np.linalg.norm(diff)),
        "mm": float(np.linalg.norm(diff * grid_spacing)),
        "seconds": found.seconds,
        "point": found.point_lps,
    }


def _baseline(locator, image: sitk.Image, center) -> dict:
    """The error of always answering the grid centre: what a locator must beat."""
    truth = np.array(grid_index_of(locator, image, center))
    grid_spacing = np.asarray(image.GetSpacing())[::-1] * np.asarray(image.GetSize())[::-1] / locator.grid
    diff = (locator.grid - 1) / 2 - truth
    return {
        "vox": float(np.linalg.norm(diff)),
        "mm": float(np.linalg.norm(diff * grid_spacing)),
        "seconds": 0.0,
    }


def _dice(model, image: sitk.Image, label: sitk.Image, center) -> float:
    from SemiSupSegLib.inference import segment
    from SemiSupSegLib.metrics import segmentation_metrics

    result = segment(model, image, center)
    pred = sitk.GetArrayViewFromImage(result.label) > 0
    ref = sitk.GetArrayViewFromImage(label) > 0
    return segmentation_metrics(pred, ref, image.GetSpacing()[::-1])["dice"]


def _summary(rows: list[dict]) -> dict:
    vox = np.array([r["vox"] for r in rows])
    mm = np.array([r["mm"] for r in rows])
    sec = np.array([r["seconds"] for r in rows])
    return {
        "median_vox": np.median(vox),
        "mean_vox": vox.mean(),
        "std_vox": vox.std(),
        "median_mm": np.median(mm),
        "mean_mm": mm.mean(),
        "std_mm": mm.std(),
        "within10": 100 * np.mean(vox <= 10),
        "max_vox": vox.max(),
        "seconds": np.median(sec),
    }


def run_set(locator, model, path: Path) -> tuple[dict, dict]:
    """Per variant, the error summary; and the Dice with the located vs the true centre."""
    rows: dict[str, list[dict]] = {v: [] for v in [*VARIANTS, BASELINE]}
    dice: dict[str, list[float]] = {"located": [], "true": []}
    for case in load_dataset(path).test:
        image = read_image(case.image)
        for variant, (starts, how) in VARIANTS.items():
            rows[variant].append(_errors(locator, image, case.center, starts, how))
        rows[BASELINE].append(_baseline(locator, image, case.center))
        if model is not None:
            label = read_image(case.label, what="label")
            dice["located"].append(_dice(model, image, label, rows["9 starts, best Q"][-1]["point"]))
            dice["true"].append(_dice(model, image, label, case.center))
        first = rows["9 starts, best Q"][-1]
        print(
            f"  {case.name}: {first['vox']:.1f} vox, {first['mm']:.1f} mm, {first['seconds']:.2f} s",
            flush=True,
        )
    return {v: _summary(r) for v, r in rows.items()}, dice


def _machine() -> str:
    cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = next(
        (ln.split(":", 1)[1].strip() for ln in cpu.splitlines() if "Model name" in ln), platform.machine()
    )
    date = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    threads = torch.get_num_threads()
    return f"{date}; {model}, {os.cpu_count()} cores (shared); torch {torch.__version__}, {threads} thread(s)"


def _table(results: dict, dice: dict) -> list[str]:
    lines = [
        "| test set | search | median error (vox at 96³) | mean ± std (vox) | median (mm) | mean ± std (mm) "
        "| within 10 vox | worst (vox) | s / volume |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, variants in results.items():
        for variant, s in variants.items():
            lines.append(
                f"| {name} | {variant} | {s['median_vox']:.2f} | {s['mean_vox']:.2f} ± {s['std_vox']:.2f} "
                f"| {s['median_mm']:.2f} | {s['mean_mm']:.2f} ± {s['std_mm']:.2f} | {s['within10']:.0f} % "
                f"| {s['max_vox']:.1f} | {s['seconds']:.3f} |"
            )
    if any(d["located"] for d in dice.values()):
        lines += [
            "",
            "| test set | Dice, located centre | Dice, true centre | difference (points) |",
            "|---|---|---|---|",
        ]
        for name, d in dice.items():
            if d["located"]:
                loc, true = 100 * np.mean(d["located"]), 100 * np.mean(d["true"])
                lines.append(f"| {name} | {loc:.1f} | {true:.1f} | {loc - true:+.1f} |")
    return lines


def write_section(path: Path, body: list[str]) -> None:
    """Replace (or append) the ``## Locator`` section of a markdown file, leaving the others."""
    text = path.read_text() if path.is_file() else "# Benchmarks\n"
    lines = text.rstrip("\n").split("\n")
    start = next((i for i, ln in enumerate(lines) if ln.strip() == "## Locator"), None)
    if start is None:
        lines += ["", *body]
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        lines[start:end] = [*body, ""] if end < len(lines) else body
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--locator", required=True)
    parser.add_argument("--model", help="segmentation model for the Dice comparison (optional)")
    parser.add_argument("--cases", type=int, default=10, help="test cases per set (default 10)")
    parser.add_argument("--work", default="/tmp/semisupseg-locator-bench", help="where test data is written")
    parser.add_argument("--write", help="markdown file whose 'Locator' section is replaced")
    parser.add_argument("--notes", default="", help="extra text for the section (e.g. training time)")
    args = parser.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    locator = load_locator(args.locator)
    model = None
    if args.model:
        from SemiSupSegLib.model_store import load_model

        model = load_model(args.model)
    results, dice = {}, {}
    for name in SETS:
        print(name, flush=True)
        cases = args.cases if "128" in name else max(2, args.cases // 2)
        results[name], dice[name] = run_set(locator, model, _dataset(Path(args.work), name, cases))
    body = ["## Locator", "", f"Machine: {_machine()}.", f"Locator: `{locator.path.name}`.", ""]
    body += _table(results, dice)
    if args.notes:
        body += ["", args.notes]
    print("\n".join(body))
    if args.write:
        write_section(Path(args.write), body)
        print(f"wrote the Locator section of {args.write}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
