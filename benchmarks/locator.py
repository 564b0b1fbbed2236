"""Benchmark of instrument localisation on phantom volumes no locator trained on (not a test).

    OMP_NUM_THREADS=1 python benchmarks/locator.py --locator phantom-locator-ii \
        --points-only phantom-locator [--segmentation phantom-locator-seg] --model phantom-catheter \
        [--several phantom-locator] [--cases 10] [--window-cases 2] \
        [--work /tmp/locator-bench] [--out docs/benchmark_results/locator.json] [--write docs/BENCHMARKS.md]
    python benchmarks/locator.py --tabulate docs/benchmark_results/locator.json [--write docs/BENCHMARKS.md]

Test data: the ``test`` split of ``semisupseg phantom`` (test cases have their own seeds, never
trained on): catheters and guide-wires at 128³ (0.4-0.7 mm) and at 160³ (0.45 mm) with the
``default`` profile, and at 128³ with the ``cluttered`` profile, which no shipped locator trained on.

Rows, side by side on the same cases:

- **grid centre**: always answer the middle of the volume (what a locator must beat);
- **segmentation centroid**: the centroid of the largest component of the segmentation model's
  sliding-window output (no point needed; its time is the sliding window's), on ``--window-cases``
  cases per set, since it takes tens of seconds per volume on a CPU; Dice and this row only on the
  sets of ``--dice-kinds`` (the shipped model segments catheters only);
- **points-only DQN** (``--points-only``): the paper's agent, learnt from centre points only;
- **locator II, search only**: the new locator's DQN point before the refinement;
- **locator II**: the new locator as shipped (search, then the middle of the recognised instrument);
- **segmentation locator** (``--segmentation``): the segmentation model run once over the whole
  volume, the probability-weighted centroid of its heaviest component, the volume's centre when that
  component is below the locator's ``min_volume_mm3`` (``SemiSupSegLib/locator/by_segmentation.py``);
- **segmentation locator, several models** (``--several``): one such locator naming several models
  (one per instrument), run in order until one's find is trusted.

A row whose locator is given for the first time is measured on the cached cases too (the other rows
are kept), so a new row can join a table measured earlier, on the same cases.

Columns: median and worst error in voxels of the locator's 96³ grid and in mm; % within 10 grid
voxels; ROI coverage (% of the instrument's voxels inside the 2×2×2-patch region the segmentation
model places at the point); the coarse-to-fine Dice from the point vs from the true centre; seconds
per volume (resampling + search; file reading excluded); and, from the locators' ``locator.json``,
their training minutes. Per-case results are cached in ``--out`` as they come, so an interrupted run
continues where it stopped (``--fresh`` starts over).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from _report import (
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
from scipy import ndimage

from SemiSupSegLib.dataset import load_dataset
from SemiSupSegLib.imageio import read_image
from SemiSupSegLib.inference import region_size, roi_grid, segment
from SemiSupSegLib.locator import load_locator, locate
from SemiSupSegLib.locator.environment import grid_geometry
from SemiSupSegLib.metrics import segmentation_metrics
from SemiSupSegLib.phantom import write_phantom_dataset

SETS = {  # name: (kind, seed, size, spacing, profile)
    "catheter 128³": ("catheter", 101, 128, None, "default"),
    "guide-wire 128³": ("guidewire", 102, 128, None, "default"),
    "catheter 160³ @0.45 mm": ("catheter", 201, 160, 0.45, "default"),
    "guide-wire 160³ @0.45 mm": ("guidewire", 202, 160, 0.45, "default"),
    "catheter 128³, cluttered (unseen)": ("catheter", 111, 128, None, "cluttered"),
    "guide-wire 128³, cluttered (unseen)": ("guidewire", 112, 128, None, "cluttered"),
}
GRID_CENTRE = "grid centre"
WINDOW = "segmentation centroid (sliding window)"
POINTS_ONLY = "points-only DQN"
SEARCH_ONLY = "locator II, search only"
LOCATOR = "locator II"
SEGMENTATION = "segmentation locator"
SEVERAL = "segmentation locator, several models"
TRUE = "true centre"
SCRIPT = "benchmarks/locator.py"


def _dataset(work: Path, name: str, cases: int) -> Path:
    kind, seed, size, spacing, profile = SETS[name]
    folder = work / f"{kind}-{seed}-{size}-{profile}-{cases}"
    path = folder / "dataset.json"
    if not path.is_file():
        write_phantom_dataset(
            folder, cases=0, test=cases, seed=seed, kind=kind, size=size, spacing=spacing, profile=profile
        )
    return path


# --------------------------------------------------------------------------------------------- measures


def grid_error(image: sitk.Image, point, center, grid: int = 96) -> dict:
    """Distance from ``point`` to ``center`` (LPS mm) in voxels of the ``grid³`` locator grid and in mm."""
    geometry = grid_geometry(image, grid)
    diff = geometry.to_index(point) - geometry.to_index(center)
    return {
        "vox": float(np.linalg.norm(diff)),
        "mm": float(np.linalg.norm(np.subtract(point, center))),
    }


def roi_coverage(model, image: sitk.Image, label: sitk.Image, point) -> float:
    """% of the instrument's voxels inside the coarse-to-fine region the model places at ``point``."""
    spacing = model.preprocessing.target_spacing or image.GetSpacing()
    size = region_size(image, spacing, model.patch_size, 2)
    grid = roi_grid(image, point, spacing, size)
    # every instrument voxel mapped at once (SimpleITK's point transforms are one call per point)
    index_xyz = np.argwhere(sitk.GetArrayViewFromImage(label) > 0)[:, ::-1].astype(float)
    if len(index_xyz) == 0:
        return float("nan")
    direction = np.asarray(label.GetDirection()).reshape(3, 3)
    physical = np.asarray(label.GetOrigin()) + (index_xyz * np.asarray(label.GetSpacing())) @ direction.T
    grid_direction = np.asarray(grid.GetDirection()).reshape(3, 3)
    local = (physical - np.asarray(grid.GetOrigin())) @ grid_direction / np.asarray(grid.GetSpacing())
    inside = np.all((local >= -0.5) & (local < np.asarray(size) - 0.5), axis=1)
    return float(100.0 * inside.mean())


def dice_from(model, image: sitk.Image, label: sitk.Image, point) -> float:
    result = segment(model, image, point)
    pred = sitk.GetArrayViewFromImage(result.label) > 0
    ref = sitk.GetArrayViewFromImage(label) > 0
    return float(segmentation_metrics(pred, ref, image.GetSpacing()[::-1])["dice"])


def window_centroid(model, image: sitk.Image) -> tuple[tuple[float, ...], float]:
    """Centroid (LPS mm) of the largest component of the sliding-window segmentation, and its seconds."""
    t0 = time.monotonic()
    result = segment(model, image, None)
    mask = sitk.GetArrayFromImage(result.label) > 0
    seconds = time.monotonic() - t0
    components, n = ndimage.label(mask)
    if n == 0:  # nothing found: answer the volume's middle, as a clinician would have to
        return grid_centre_point(image), seconds
    largest = int(np.argmax(ndimage.sum(mask, components, range(1, n + 1)))) + 1
    zyx = ndimage.center_of_mass(mask, components, largest)
    return image.TransformContinuousIndexToPhysicalPoint(tuple(float(c) for c in zyx[::-1])), seconds


def grid_centre_point(image: sitk.Image) -> tuple[float, ...]:
    centre = (np.asarray(image.GetSize()) - 1) / 2.0
    return image.TransformContinuousIndexToPhysicalPoint(tuple(float(c) for c in centre))


# --------------------------------------------------------------------------------------------- running


def _row(image, label, center, point, seconds, model, with_dice: bool, **extra) -> dict:
    row = {**grid_error(image, point, center), "seconds": float(seconds), "point": [float(v) for v in point]}
    if model is not None:
        row["coverage"] = roi_coverage(model, image, label, point)
        if with_dice:
            row["dice"] = dice_from(model, image, label, point)
    return {**row, **extra}


def _case_rows(locators: dict, model, case, window: bool, dice: bool) -> dict:
    """Every row's result on one case (Dice and the centroid row only where the model segments the kind)."""
    image = read_image(case.image)
    label = read_image(case.label, what="label")
    center = tuple(case.center)
    rows = {GRID_CENTRE: _row(image, label, center, grid_centre_point(image), 0.0, model, False)}
    rows.update(_locator_rows(locators, model, image, label, center, dice))
    if model is not None:
        rows[TRUE] = _true_centre_row(model, image, label, center, dice)
        if dice and window:
            point, seconds = window_centroid(model, image)
            rows[WINDOW] = _row(image, label, center, point, seconds, model, False)
    return rows


def _locator_rows(locators: dict, model, image, label, center, dice: bool) -> dict:
    """The rows of ``locators`` on one case."""
    rows = {}
    for name, locator in locators.items():
        found = locate(locator, image)
        extra = {} if found.confidence is None else {"confidence": found.confidence}
        if found.found_by is not None:
            extra["found_by"] = found.found_by
        rows[name] = _row(image, label, center, found.point_lps, found.seconds, model, dice, **extra)
        if locator.recognizer is not None:
            plain = locate(locator, image, refine=False)
            rows[SEARCH_ONLY] = _row(image, label, center, plain.point_lps, plain.seconds, model, False)
    return rows


def _train_seconds(timings: dict) -> float:
    """The whole run's wall time (over resumes) when recorded, else the training loop's."""
    return float(timings.get("wall_seconds_total", timings.get("train_seconds", float("nan"))))


def _true_centre_row(model, image, label, center, dice: bool) -> dict:
    """The region at the true centre: ROI coverage (measured: an instrument can leave the region), Dice."""
    row = {"coverage": roi_coverage(model, image, label, center), "coverage_measured": True}
    if dice:
        row["dice"] = dice_from(model, image, label, center)
    return row


def _complete_true_centre_rows(results: dict, model, work: Path, cases: int) -> None:
    """Measure the true centre's coverage of cached cases that lack it (earlier runs assumed 100 %)."""
    for name, result in results["sets"].items():
        for case in load_dataset(_dataset(work, name, cases)).test:
            rows = result["cases"].get(case.name)
            if rows is None or rows.get(TRUE, {}).get("coverage_measured"):
                continue
            image, label = read_image(case.image), read_image(case.label, what="label")
            known = rows.get(TRUE, {})
            rows[TRUE] = {**known, **_true_centre_row(model, image, label, tuple(case.center), False)}


def measure(args: argparse.Namespace, results: dict, json_path: Path) -> dict:
    """Run every row on every test case; per-case results are saved as they come (resumable)."""
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    locators = {LOCATOR: load_locator(args.locator)}
    if args.points_only:
        locators[POINTS_ONLY] = load_locator(args.points_only)
    if args.segmentation:
        locators[SEGMENTATION] = load_locator(args.segmentation)
    if args.several:
        locators[SEVERAL] = load_locator(args.several)
    model = None
    if args.model:
        from SemiSupSegLib.model_store import load_model

        model = load_model(args.model)
    results.setdefault("sets", {})
    results["training_minutes"] = {
        name: round(_train_seconds(loc.meta.get("timings", {})) / 60, 1)
        for name, loc in locators.items()
        if name not in (SEGMENTATION, SEVERAL)  # they train nothing: they use segmentation models
    }
    for name in SETS:
        done = results["sets"].setdefault(name, {"cases": {}})["cases"]
        dice = SETS[name][0] in args.dice_kinds
        for i, case in enumerate(load_dataset(_dataset(Path(args.work), name, args.cases)).test):
            if case.name in done:
                new = {row: loc for row, loc in locators.items() if row not in done[case.name]}
                if not new:
                    continue
                image, label = read_image(case.image), read_image(case.label, what="label")
                done[case.name].update(_locator_rows(new, model, image, label, tuple(case.center), dice))
            else:
                done[case.name] = _case_rows(
                    locators, model, case, window=dice and i < args.window_cases, dice=dice
                )
            found = ", ".join(f"{row}: {done[case.name][row]['vox']:.1f} vox" for row in locators)
            print(f"{name} {case.name}: {found}", flush=True)
            write_json(json_path, results)
    if model is not None:
        _complete_true_centre_rows(results, model, Path(args.work), args.cases)
    return results


# --------------------------------------------------------------------------------------------- tables


def _machine() -> str:
    cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = next(
        (ln.split(":", 1)[1].strip() for ln in cpu.splitlines() if "Model name" in ln), platform.machine()
    )
    date = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    threads = torch.get_num_threads()
    return f"{date}; {model}, {os.cpu_count()} cores (shared); torch {torch.__version__}, {threads} thread(s)"


def _values(cases: dict, row: str, key: str) -> np.ndarray:
    return np.array([c[row][key] for c in cases.values() if row in c and key in c[row]], dtype=float)


def _cells(cases: dict, row: str) -> list[str] | None:
    vox, mm = _values(cases, row, "vox"), _values(cases, row, "mm")
    if len(vox) == 0:
        return None
    dice, true = _values(cases, row, "dice"), _values(cases, TRUE, "dice")
    coverage, seconds = _values(cases, row, "coverage"), _values(cases, row, "seconds")
    fmt = lambda a, f: f.format(np.nanmedian(a)) if len(a) else "–"  # noqa: E731
    dice_text = f"{100 * dice.mean():.1f} ({100 * (dice.mean() - true.mean()):+.1f})" if len(dice) else "–"
    return [
        f"{np.median(vox):.1f} / {vox.max():.1f}",
        f"{np.median(mm):.1f} / {mm.max():.1f}",
        f"{100 * np.mean(vox <= 10):.0f} %",
        f"{np.nanmean(coverage):.1f} % (min {np.nanmin(coverage):.0f})" if len(coverage) else "–",
        dice_text,
        fmt(seconds, "{:.2f}"),
        str(len(vox)),
    ]


ROWS = (GRID_CENTRE, WINDOW, POINTS_ONLY, SEARCH_ONLY, LOCATOR, SEGMENTATION, SEVERAL)


def _table(results: dict) -> list[str]:
    header = [
        "test set", "row", "error, median / worst (grid vox)", "median / worst (mm)", "within 10 vox",
        "ROI coverage, mean (min)", "Dice from the point (vs true centre)", "s / volume", "cases",
    ]  # fmt: skip
    rows = []
    for name, result in results["sets"].items():
        true = _values(result["cases"], TRUE, "dice")
        for row in ROWS:
            cells = _cells(result["cases"], row)
            if cells is not None:
                rows.append([name, row, *cells])
        coverage = _values(result["cases"], TRUE, "coverage")
        if len(coverage):
            dice = f"{100 * true.mean():.1f}" if len(true) else "–"
            cover = f"{np.mean(coverage):.1f} % (min {np.min(coverage):.0f})"
            rows.append([name, TRUE, "0", "0", "100 %", cover, dice, "–", str(len(coverage))])
    return markdown_table(header, rows)


FIGURE_ROWS = (GRID_CENTRE, POINTS_ONLY, LOCATOR, SEGMENTATION, SEVERAL)


def figure(results: dict, path: Path) -> None:
    """Every case's error (grid voxels) per test set, one column of dots per row of :data:`FIGURE_ROWS`,
    with each row's median as a bar and the 10-voxel line of the "within 10" column."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = list(results["sets"])
    rows = [
        row
        for row in FIGURE_ROWS
        if any(len(_values(s["cases"], row, "vox")) for s in results["sets"].values())
    ]
    fig, axes = plt.subplots(1, len(sets), figsize=(2.2 * len(sets), 3.6), sharey=True)
    rng = np.random.default_rng(0)  # horizontal jitter only
    for ax, name in zip(np.atleast_1d(axes), sets, strict=True):
        cases = results["sets"][name]["cases"]
        for i, row in enumerate(rows):
            errors = _values(cases, row, "vox")
            if len(errors):
                ax.scatter(i + rng.uniform(-0.15, 0.15, len(errors)), errors, s=9, alpha=0.7, color=f"C{i}")
                ax.hlines(np.median(errors), i - 0.3, i + 0.3, color="k", linewidth=1.5)
        ax.axhline(10, color="grey", linestyle="--", linewidth=0.8)
        ax.set_xticks(range(len(rows)), rows, rotation=60, ha="right", fontsize=7)
        ax.set_title(name, fontsize=8)
    np.atleast_1d(axes)[0].set_ylabel("error (voxels of the 96³ grid)")
    fig.suptitle(
        "Locators on unseen phantoms: every case (dots), median (bar), 10 voxels (dashed)", fontsize=9
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _confidence_lines(results: dict) -> list[str]:
    """Does each row's confidence separate hits (≤ 10 grid voxels) from misses? Pooled over every set."""
    return [line for row in (LOCATOR, SEGMENTATION, SEVERAL) for line in _row_confidence_lines(results, row)]


def _row_confidence_lines(results: dict, row: str) -> list[str]:
    conf, hit, found_by = [], [], {}
    for result in results["sets"].values():
        for case in result["cases"].values():
            if "confidence" in case.get(row, {}):
                conf.append(case[row]["confidence"])
                hit.append(case[row]["vox"] <= 10)
                by = case[row].get("found_by", "nothing trusted")
                found_by[by] = found_by.get(by, 0) + 1
    conf, hit = np.array(conf), np.array(hit, bool)
    if not len(conf):
        return []
    text = f"Confidence of `{row}` over all {len(conf)} cases: {int(hit.sum())} hits (≤ 10 grid voxels)"
    if hit.any():
        text += f", confidence of hits median {np.median(conf[hit]):.2f} (min {conf[hit].min():.2f})"
    if (~hit).any():
        text += (
            f"; {int((~hit).sum())} misses, median {np.median(conf[~hit]):.2f} (max {conf[~hit].max():.2f})"
        )
    if row == SEVERAL:
        text += "; the point found by " + ", ".join(f"{k}: {v}" for k, v in sorted(found_by.items()))
    return [text + "."]


def render(results: dict, json_path: Path) -> list[str]:
    """The generated block: machine, locators and training minutes, the table, confidence, provenance."""
    minutes = ", ".join(f"{k}: {v} min" for k, v in results.get("training_minutes", {}).items())
    lines = [
        f"Machine: {results['machine']}.",
        f"Locators: {json.dumps(results['locators'])}; model `{results.get('model')}`; training time "
        f"recorded in each `locator.json`: {minutes}.",
        "",
    ]
    lines += _table(results)
    lines += ["", *_confidence_lines(results)]
    tabulate = f"python {SCRIPT} --tabulate {display_path(json_path)} --write docs/BENCHMARKS.md"
    return [*lines, "", provenance([json_path], results.get("command"), tabulate)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--locator", help="the locator II folder or name (required unless --tabulate)")
    parser.add_argument("--points-only", help="a points-only locator measured beside it")
    parser.add_argument("--segmentation", help="a segmentation locator measured beside them")
    parser.add_argument("--several", help="a segmentation locator of several models (one per instrument)")
    parser.add_argument("--model", help="segmentation model for ROI coverage, Dice and the centroid row")
    parser.add_argument("--cases", type=int, default=10, help="test cases per set (default 10)")
    parser.add_argument("--window-cases", type=int, default=2, help="cases per set for the centroid row")
    parser.add_argument(
        "--dice-kinds",
        nargs="+",
        default=["catheter"],
        help="instrument kinds the model segments: Dice and the centroid row only on those sets "
        "(default: catheter, as the shipped phantom-catheter)",
    )
    parser.add_argument("--work", default="/tmp/semisupseg-locator-bench", help="where test data is written")
    parser.add_argument("--out", default="locator_benchmark.json", help="raw results (JSON), also the cache")
    parser.add_argument("--fresh", action="store_true", help="ignore the cached results in --out")
    parser.add_argument("--tabulate", metavar="JSON", help="measure nothing: render this raw-results JSON")
    parser.add_argument("--write", help="markdown file whose block for this JSON is replaced (_report.py)")
    parser.add_argument("--figure", metavar="PNG", help="also draw every case's error per set and row")
    args = parser.parse_args(argv)
    json_path = Path(args.tabulate or args.out)
    if not args.tabulate and not args.locator:
        raise fail("--locator is required unless --tabulate is given")
    try:
        if args.write:
            check_block(Path(args.write), SCRIPT, json_path.stem)  # before measuring, not after
        if args.tabulate:
            results = read_json(json_path)
        else:
            results = {} if args.fresh or not json_path.is_file() else read_json(json_path)
            results.update(
                command=command_line(),
                machine=_machine(),
                locators={
                    LOCATOR: str(args.locator),
                    POINTS_ONLY: str(args.points_only),
                    SEGMENTATION: str(args.segmentation),
                    **({SEVERAL: str(args.several)} if args.several else {}),
                },
                model=args.model,
            )
            results = measure(args, results, json_path)
            write_json(json_path, results)
            print(f"wrote {json_path}")
        body = render(results, json_path)
        print("\n".join(body))
        if args.write:
            write_block(Path(args.write), SCRIPT, json_path.stem, body)
            print(f"replaced the [{json_path.stem}] block of {args.write}")
        if args.figure:
            figure(results, Path(args.figure))
            print(f"wrote {args.figure}")
    except KeyError as error:
        raise fail(f"{json_path}: not raw results of {SCRIPT} (no {error})") from None
    except (ReportError, OSError) as error:
        raise fail(str(error)) from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
