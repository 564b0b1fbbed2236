"""Uncertainty estimators side by side (issue 20): time, peak memory, error detection, case ranking.

Every estimator of ``SemiSupSegLib.inference.UNCERTAINTY_METHODS`` (with several pass counts) segments the
same fresh phantoms (catheter, profiles ``default fine coarse cluttered``, case ``i`` of profile ``j``
drawn with seed ``--seed + 100 j + i``) from the true centre with the shipped model ``phantom-catheter``,
each estimator in its own subprocess so that its peak memory (``resource.getrusage`` maxrss) is its own.
Per estimator it records:

- seconds per volume (``segment()`` wall time, the plain run ``none`` is the reference);
- peak RSS of the subprocess (import, phantoms and model included; ``none`` is the reference);
- error-detection AUROC: the uncertainty as a detector of the voxels the label gets wrong, over the
  voxels of the coarse-to-fine region (on the input grid), pooled over the cases (and per case);
- case ranking: Spearman correlation of the mean uncertainty in the region with the case's Dice
  (negative is useful: doubtful cases score lower), and of ``SemiSupSegLib.suggest.doubt_share`` (of
  what the model claims or doubts in the region, the share it doubts; 1 for a confident miss) with it;
- the reliability curve: the error rate in each decile of the uncertainty (region voxels, pooled).

``--full-width`` adds the issue's memory setting: a full-width Compact-UNet (random weights, no
full-width model is shipped) on one 160^3 phantom, bf16 where supported, seconds and peak RSS per estimator.

``--data DATASET`` measures on the ``test`` cases of a ``dataset.json`` instead of phantoms (e.g. LA2018
with a model trained on it): from the case's centre point where it has one, else over the whole volume
(sliding window; the "region" is then the whole volume). Two-network estimators (``disagreement``, and
``entropy``, which for such a model is the entropy of the networks' mean) need a two-network model (e.g.
a ``dual-unet``); the shipped model has one network.

Usage: ``PYTHONPATH=SemiSupSeg python benchmarks/uncertainty.py [--cases 3] [--size 96] [--full-width]
[--write docs/BENCHMARKS.md]``; ``--tabulate JSON`` renders existing results. Each estimator's run is
cached as JSON under ``--cache`` (a rerun resumes); the raw results go to ``--out``
(``docs/benchmark_results/uncertainty.json``), the reliability plot to ``--plot``
(``docs/images/uncertainty_reliability.png``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import SimpleITK as sitk

PACKAGE = Path(__file__).resolve().parents[1] / "SemiSupSeg"
if str(PACKAGE) not in sys.path:
    sys.path.insert(0, str(PACKAGE))
SCRIPT = "benchmarks/uncertainty.py"
DEFAULT_MODEL = PACKAGE / "SemiSupSegLib" / "pretrained" / "phantom-catheter"

from _report import (  # noqa: E402
    REPO,
    RESULTS,
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

# label -> (method or None for the plain segmentation, passes)
ESTIMATORS: dict[str, tuple[str | None, int]] = {
    "none": (None, 0),
    "entropy": ("entropy", 0),
    "mc-dropout T=8": ("mc-dropout", 8),
    "mc-dropout T=4": ("mc-dropout", 4),
    "mc-dropout T=2": ("mc-dropout", 2),
    "decoder-mc T=8": ("decoder-mc", 8),
    "decoder-mc T=4": ("decoder-mc", 4),
    "last-block-mc T=8": ("last-block-mc", 8),
    "last-block-mc T=4": ("last-block-mc", 4),
    "flips T=4": ("flips", 4),
    "flips T=3": ("flips", 3),
    "flips T=2": ("flips", 2),
    "disagreement": ("disagreement", 0),
}
FULL_WIDTH = ("none", "entropy", "mc-dropout T=8", "last-block-mc T=8", "flips T=2")
PROFILES = ("default", "fine", "coarse", "cluttered")
DECILES = 10


# --------------------------------------------------------------------------- statistics


def auroc(scores: np.ndarray, positives: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` detecting ``positives`` (Mann-Whitney U, ties averaged)."""
    from scipy.stats import rankdata

    n_pos = int(positives.sum())
    n_neg = positives.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[positives].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def reliability(scores: np.ndarray, errors: np.ndarray, bins: int = DECILES) -> list[float]:
    """Error rate in each of ``bins`` equal-count bins of ``scores`` (ascending; ties split by order)."""
    order = np.argsort(scores, kind="stable")
    return [float(errors[part].mean()) for part in np.array_split(order, bins)]


def spearman(x: list[float], y: list[float]) -> float:
    from scipy.stats import spearmanr

    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(spearmanr(x, y).statistic)


# --------------------------------------------------------------------------- one estimator (subprocess)


def _region_mask(model, image, center) -> np.ndarray:
    """The coarse-to-fine region's footprint on the input grid ``[z, y, x]`` (as inference places it)."""
    from SemiSupSegLib import inference

    spacing = model.preprocessing.target_spacing or image.GetSpacing()
    size = inference.region_size(image, spacing, model.patch_size, 2)
    grid = inference.roi_grid(image, center, spacing, size)
    ones = sitk.Image(grid.GetSize(), sitk.sitkUInt8) + 1
    ones.CopyInformation(grid)
    footprint = sitk.Resample(ones, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    return sitk.GetArrayFromImage(footprint) > 0


Case = tuple[str, "int | str", sitk.Image, sitk.Image, "tuple | None"]
"""(group: profile or dataset name, case id: phantom seed or case name, image, label, centre or None)."""


def _cases(args: argparse.Namespace) -> list[Case]:
    """The cases measured: fresh phantoms, or the test cases of ``--data``."""
    if args.data:
        return _dataset_cases(args.data)
    from SemiSupSegLib.phantom import generate_phantom

    seeds = [(profile, args.seed + 100 * j + i)
             for j, profile in enumerate(args.profiles) for i in range(args.cases)]  # fmt: skip
    phantoms = [(profile, seed, generate_phantom(args.size, "catheter", seed=seed, profile=profile))
                for profile, seed in seeds]  # fmt: skip
    return [(profile, seed, case.image, case.label, case.center) for profile, seed, case in phantoms]


def _dataset_cases(path: str) -> list[Case]:
    from SemiSupSegLib.dataset import labelled_cases, load_dataset

    ds = load_dataset(path)
    read = sitk.ReadImage
    return [(ds.name, case.name, read(str(case.image)), read(str(case.label)), case.center)
            for case in labelled_cases(ds, "test", "to measure the uncertainty on")]  # fmt: skip


def run_estimator(args: argparse.Namespace, label: str) -> dict:
    """Segment every case with one estimator; this process's peak RSS is the estimator's."""
    import torch

    from SemiSupSegLib import inference
    from SemiSupSegLib.model_store import load_model
    from SemiSupSegLib.suggest import doubt_share

    torch.set_num_threads(args.threads)
    method, passes = ESTIMATORS[label]
    model = load_model(args.model, "cpu")
    cases = _cases(args)
    options = {"uncertainty_method": method, "mc_samples": passes} if method else {}
    inference.segment(model, cases[0][2], cases[0][4], **options)  # warm-up (oneDNN)
    rows, scores, errors = [], [], []
    for group, case_id, image, label_image, center in cases:
        result = inference.segment(model, image, center, **options)
        truth = sitk.GetArrayFromImage(label_image) > 0
        predicted = sitk.GetArrayFromImage(result.label) > 0
        total = truth.sum() + predicted.sum()
        row = {"profile": group, "seed": case_id, "seconds": result.seconds,
               "dice": float(2 * (truth & predicted).sum() / total) if total else 1.0}  # fmt: skip
        if method:
            region = _region_mask(model, image, center) if center is not None else np.ones_like(truth)
            u = sitk.GetArrayFromImage(result.uncertainty)[region]
            wrong = (truth != predicted)[region]
            share = doubt_share(sitk.GetArrayFromImage(result.uncertainty), predicted, region)
            row.update(mean_uncertainty=float(u.mean()), doubt_share=share, auroc=auroc(u, wrong))
            row["error_rate"] = float(wrong.mean())
            scores.append(u)
            errors.append(wrong)
        rows.append(row)
        print(f"{label} {group} {case_id}: " + ", ".join(f"{k} {v:.3f}" for k, v in row.items()
                                                       if isinstance(v, float)), flush=True)  # fmt: skip
    out = {"label": label, "method": method, "passes": passes, "cases": rows,
           "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}  # fmt: skip
    if method:
        scores_all, errors_all = np.concatenate(scores), np.concatenate(errors)
        out.update(auroc=auroc(scores_all, errors_all), reliability=reliability(scores_all, errors_all))
    return out


def run_full_width(args: argparse.Namespace, label: str) -> dict:
    """One 160^3 phantom through a full-width random Compact-UNet with one estimator."""
    from pathlib import Path as _Path

    import torch

    from SemiSupSegLib import inference
    from SemiSupSegLib.model_store import LoadedModel
    from SemiSupSegLib.networks import CompactUNet
    from SemiSupSegLib.phantom import generate_phantom
    from SemiSupSegLib.preprocessing import Preprocessing

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    case = generate_phantom(160, "catheter", seed=args.seed)
    meta = {"name": "full-width", "patch_size": [48, 48, 48],
            "classes": {"0": "background", "1": "instrument"},
            "preprocessing": Preprocessing(target_spacing=case.image.GetSpacing()).to_dict()}  # fmt: skip
    model = LoadedModel(path=_Path("full-width"), meta=meta, networks={"net": CompactUNet(width=1.0).eval()})
    method, passes = ESTIMATORS[label]
    options = {"uncertainty_method": method, "mc_samples": passes} if method else {}
    result = inference.segment(model, case.image, case.center, **options)
    return {"label": label, "seconds": result.seconds, "precision": result.precision,
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}  # fmt: skip


# --------------------------------------------------------------------------- orchestration


def _cache_path(args: argparse.Namespace, kind: str, label: str) -> Path:
    name = label.replace(" ", "_").replace("=", "")
    if args.data and kind == "phantom":  # the cases and the model (its resolved path) name the run
        model = hashlib.sha1(str(Path(args.model).resolve()).encode()).hexdigest()[:8]
        cases = Path(args.data).parent.name
        return Path(args.cache) / f"data_{cases}_{Path(args.model).name}-{model}_{name}.json"
    return Path(args.cache) / f"{kind}_s{args.size}_c{args.cases}_seed{args.seed}_{name}.json"


def _run_cached(args: argparse.Namespace, kind: str, label: str) -> dict:
    """The cached result of one estimator run, else run it now in a subprocess and cache it."""
    path = _cache_path(args, kind, label)
    if path.is_file():
        return json.loads(path.read_text())
    argv = [sys.executable, __file__, "--worker", kind, label, *_shared_argv(args)]
    started = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        raise ReportError(f"{kind} run of {label!r} failed: {done.stderr.strip().splitlines()[-1:]}")
    print(done.stdout.strip(), flush=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["wall_seconds"] = time.perf_counter() - started
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
    return result


def _shared_argv(args: argparse.Namespace) -> list[str]:
    return ["--model", str(args.model), "--size", str(args.size), "--cases", str(args.cases),
            "--seed", str(args.seed), "--threads", str(args.threads),
            "--profiles", *args.profiles, *(["--data", args.data] if args.data else [])]  # fmt: skip


def measure(args: argparse.Namespace) -> dict:
    import torch

    runs = [_run_cached(args, "phantom", label) for label in args.estimators]
    full = [_run_cached(args, "full", label) for label in args.full_width]
    return {
        "command": command_line(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.processor() or platform.machine()}, {args.threads} torch threads, "
        f"{os.cpu_count()} cores (other jobs may have run alongside: compare within one run)",
        "torch": torch.__version__,
        "model": display_path(args.model),
        "size": args.size,
        "profiles": list(args.profiles),
        "cases_per_profile": args.cases,
        "seed": args.seed,
        "data": display_path(Path(args.data)) if args.data else None,
        "uncertainty_seed": 0,
        "runs": runs,
        "full_width": full,
    }


# --------------------------------------------------------------------------- report


def _mean(values) -> float:
    values = [v for v in values if v == v]
    return float(np.mean(values)) if values else float("nan")


def _run_row(run: dict, plain: dict) -> list[str]:
    cases = run["cases"]
    seconds = _mean([c["seconds"] for c in cases])
    ratio = seconds / _mean([c["seconds"] for c in plain["cases"]])
    peak = run["peak_rss_bytes"] / 1024**3
    if run["method"] is None:
        return [run["label"], f"{seconds:.2f}", "1.00x", f"{peak:.2f}", "-", "-", "-", "-"]
    dice = [c["dice"] for c in cases]
    rho = spearman([c["mean_uncertainty"] for c in cases], dice)
    shares = [c.get("doubt_share") for c in cases]
    rho_share = f"{spearman(shares, dice):+.2f}" if None not in shares else "-"  # runs before the share
    per_case = _mean([c["auroc"] for c in cases])
    return [run["label"], f"{seconds:.2f}", f"{ratio:.2f}x", f"{peak:.2f}", f"{run['auroc']:.3f}",
            f"{per_case:.3f}", f"{rho:+.2f}", rho_share]  # fmt: skip


def table(results: dict, json_path: Path, plot_path: Path) -> list[str]:
    runs = results["runs"]
    plain = next(r for r in runs if r["method"] is None)
    header = ["estimator", "s / volume", "x plain", "peak RSS GiB", "error AUROC (pooled)",
              "error AUROC (mean per case)", "Spearman(mean u, Dice)",
              "Spearman(doubt share, Dice)"]  # fmt: skip
    n, dice = len(plain["cases"]), _mean([c["dice"] for c in plain["cases"]])
    if results.get("data"):
        cases = f"The {n} test cases of `{results['data']}` ({plain['cases'][0]['profile']})"
    else:
        cases = (f"Phantom catheters, profiles {', '.join(results['profiles'])} "
                 f"({results['cases_per_profile']} per profile, {n} cases, {results['size']}^3, "
                 f"seed {results['seed']})")  # fmt: skip
    where = "from the centre point, else the whole volume" if results.get("data") else "from the true centre"
    lines = [
        f"{cases}, model `{results['model']}`, {where}; mean Dice {dice:.3f}. "
        f"{results['machine']}; {results['date']}.",
        "",
        *markdown_table(header, [_run_row(run, plain) for run in runs]),
    ]
    if results.get("full_width"):
        base = results["full_width"][0]
        rows = [[r["label"], f"{r['seconds']:.1f}", f"{r['seconds'] / base['seconds']:.2f}x",
                 f"{r['peak_rss_bytes'] / 1024**3:.2f}"] for r in results["full_width"]]  # fmt: skip
        lines += ["", f"Full-width Compact-UNet (random weights), one 160^3 phantom, region 96^3, "
                  f"{results['full_width'][0]['precision']}:", "",
                  *markdown_table(["estimator", "s / volume", "x plain", "peak RSS GiB"], rows)]  # fmt: skip
    if _has_curves(results):
        link = os.path.relpath(plot_path, REPO / "docs")
        lines += ["", f"![error rate per uncertainty decile]({link})"]
    lines.append("")
    tabulate = f"python {SCRIPT} --tabulate {display_path(json_path)} --write docs/BENCHMARKS.md"
    return [*lines, provenance([json_path], results.get("command"), tabulate)]


PLOT_LINK = "images/uncertainty_reliability.png"


def _has_curves(results: dict) -> bool:
    return any(run.get("reliability") for run in results["runs"])


def plot(results: dict, path: Path) -> None:
    """Reliability plot: the error rate of the region voxels per uncertainty decile, per estimator."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for run in results["runs"]:
        if run.get("reliability"):
            x = np.arange(1, len(run["reliability"]) + 1)
            ax.plot(x, run["reliability"], marker="o", label=f"{run['label']} (AUROC {run['auroc']:.3f})")
    ax.set_xlabel("uncertainty decile within the region (1 = most certain)")
    ax.set_ylabel("voxel error rate")
    ax.set_yscale("log")
    cases = Path(results["data"]).parent.name if results.get("data") else "phantom catheters"
    model = Path(results["model"])
    ax.set_title(f"Uncertainty reliability, {model.parent.name}/{model.name} on {cases}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(DEFAULT_MODEL))
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--cases", type=int, default=3, help="cases per profile")
    parser.add_argument("--profiles", nargs="+", default=list(PROFILES))
    parser.add_argument("--estimators", nargs="+", default=list(ESTIMATORS), choices=list(ESTIMATORS))
    parser.add_argument("--seed", type=int, default=9000)
    parser.add_argument("--data", help="measure on the test cases of this dataset.json instead of phantoms")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--full-width", nargs="*", default=[], choices=list(ESTIMATORS), metavar="ESTIMATOR",
        help=f"also the full-width 160^3 memory runs of these estimators (no name: {', '.join(FULL_WIDTH)})",
    )
    parser.add_argument("--cache", default=str(RESULTS / "uncertainty_runs"))
    parser.add_argument("--out", type=Path, default=RESULTS / "uncertainty.json")
    parser.add_argument("--plot", type=Path, default=REPO / "docs" / PLOT_LINK)
    parser.add_argument("--write", type=Path, help="markdown file whose marked block receives the table")
    parser.add_argument("--tabulate", type=Path, help="render this raw-results JSON only")
    parser.add_argument("--worker", nargs=2, metavar=("KIND", "LABEL"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.full_width == [] and "--full-width" in (argv if argv is not None else sys.argv):
        args.full_width = list(FULL_WIDTH)
    if args.worker:
        kind, label = args.worker
        result = run_estimator(args, label) if kind == "phantom" else run_full_width(args, label)
        print(json.dumps(result))
        return 0
    block = (args.tabulate or args.out).stem  # the JSON's stem names its block (default: "uncertainty")
    try:
        if args.write:
            check_block(args.write, SCRIPT, block)
        if args.tabulate:
            results, path = read_json(args.tabulate), args.tabulate
        else:
            results, path = measure(args), args.out
            write_json(args.out, results)
        if _has_curves(results):  # a run of the plain prediction and full-width timings only has none
            plot(results, args.plot)
        lines = table(results, path, args.plot)
    except ReportError as error:
        raise fail(str(error)) from None
    print("\n".join(lines))
    if args.write:
        write_block(args.write, SCRIPT, block, lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
