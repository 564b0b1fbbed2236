"""SSL comparison tables in the style of seed 000's Tables II and III (a script, not a test).

Two benchmarks, each a table of Dice and HD95 (mean +- std over held-out cases):

- ``phantom``: phantom catheter volumes (``SemiSupSegLib.phantom``), settings (L, U) = (2, 14) and (4, 12),
  evaluated on held-out phantom test cases with coarse-to-fine inference around their centre points;
  unlabelled patches are sampled around the unlabelled cases' centre points.
- ``la2018``: the real LA2018 MRI volumes of ``../shared/data/la2018`` resampled coarser, 4 and 8 labelled
  cases and the rest of the training pool unlabelled; these volumes have no centre points, so training uses
  random patches and evaluation sliding-window inference.

Rows: supervised, mean-teacher, ua-mt, dual-unet, and the dual-unet ablation rows of Table III (option
``ablation``). Every row uses the same seeds, step budget, width, patch and learning rate; a supervised
or DU-Lsup row ignores the unlabelled cases. Results go to ``<out>/ssl_table.json`` and ``.md``.

The defaults are sized for a 2-core CPU and still take hours for the full table; ``--rows``,
``--settings``, ``--steps`` and ``--benchmarks`` select a smoke configuration, e.g.
``OMP_NUM_THREADS=1 PYTHONPATH=SemiSupSeg python benchmarks/ssl_table.py --benchmarks phantom
--settings 2,14 --rows supervised,dual-unet --steps 4 --test-cases 2 --out /tmp/ssl_smoke``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

PACKAGE = Path(__file__).resolve().parents[1] / "SemiSupSeg"
if str(PACKAGE) not in sys.path:
    sys.path.insert(0, str(PACKAGE))

from SemiSupSegLib.dataset import load_dataset  # noqa: E402
from SemiSupSegLib.inference import segment  # noqa: E402
from SemiSupSegLib.methods.dual_unet import ABLATIONS, long_ablation_name  # noqa: E402
from SemiSupSegLib.metrics import segmentation_metrics, summarize  # noqa: E402
from SemiSupSegLib.model_store import load_model  # noqa: E402
from SemiSupSegLib.phantom import write_phantom_dataset  # noqa: E402
from SemiSupSegLib.training import TrainConfig, Trainer  # noqa: E402

LA2018 = Path(__file__).resolve().parents[2] / "shared" / "data" / "la2018"
BASE_ROWS = {"supervised": ("supervised", {}), "mean-teacher": ("mean-teacher", {}), "ua-mt": ("ua-mt", {})}
ABLATION_ROWS = {long_ablation_name(t): ("dual-unet", {"ablation": name}) for name, t in ABLATIONS.items()}
ROWS = {**BASE_ROWS, "dual-unet": ("dual-unet", {}), **ABLATION_ROWS}


def _entry(case, base: Path, with_label: bool = True) -> dict:
    entry = {"image": str(Path(case.image).resolve())}
    if with_label and case.label:
        entry["label"] = str(Path(case.label).resolve())
    if case.center is not None:
        entry["center"] = list(case.center)
    return entry


def write_split(source: Path, out: Path, labeled: list, unlabeled: list, test: list) -> Path:
    """A dataset.json with ``labeled`` training cases, ``unlabeled`` ones (labels dropped) and ``test``."""
    ds = load_dataset(source, check_images=False)
    data = {
        "name": f"{ds.raw.get('name', 'data')}-L{len(labeled)}-U{len(unlabeled)}",
        "labels": {str(k): v for k, v in ds.labels.items()},
        "modality": ds.raw.get("modality", {"0": ""}),
        "training": [_entry(c, out) for c in labeled],
        "unlabeled": [_entry(c, out, with_label=False) for c in unlabeled],
        "test": [_entry(c, out) for c in test],
    }
    out.mkdir(parents=True, exist_ok=True)
    path = out / "dataset.json"
    path.write_text(json.dumps(data, indent=1))
    return path


def evaluate(model_dir: Path, cases: list, use_center: bool) -> dict:
    """Dice and HD95 (voxels, mm) per held-out case, then mean/std."""
    model = load_model(model_dir)
    rows = []
    for case in cases:
        image, label = sitk.ReadImage(str(case.image)), sitk.ReadImage(str(case.label))
        result = segment(model, image, case.center if use_center else None)
        pred = sitk.GetArrayFromImage(result.label) > 0
        rows.append(segmentation_metrics(pred, sitk.GetArrayFromImage(label) > 0, image.GetSpacing()[::-1]))
    s = summarize(rows)
    return {k: s[k] for k in ("dice", "hd95_vox", "hd95_mm") if k in s}


def run_row(data: Path, out: Path, row: str, args, seed: int, spacing, use_center: bool) -> dict:
    """Train and evaluate one row, or reuse ``out/result.json`` from an earlier run of the same row.

    Delete a run's folder to measure it again (e.g. after changing the method).
    """
    cached = out / "result.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    result = train_and_evaluate(data, out, row, args, seed, spacing, use_center)
    cached.write_text(json.dumps(result, indent=1))
    return result


def train_and_evaluate(data: Path, out: Path, row: str, args, seed: int, spacing, use_center: bool) -> dict:
    method, options = ROWS[row]
    config = TrainConfig(
        data=str(data),
        out=str(out),
        method=method,
        steps=args.steps,
        batch=2,
        patch_size=(args.patch,) * 3,
        width=args.width,
        lr=args.lr,
        seed=seed,
        val_cases=0,
        checkpoint_every=10**9,
        translation=args.translation,
        target_spacing=spacing,
        precision=args.precision,
        method_options=dict(options),
    )
    t0 = time.monotonic()
    folder = Trainer(config).run()
    seconds = time.monotonic() - t0
    metrics = evaluate(folder, load_dataset(data).test, use_center)
    return {"row": row, "seed": seed, "train_seconds": round(seconds, 1), **metrics}


def phantom_settings(args) -> list[tuple[str, Path, list, bool, tuple | None]]:
    root = args.out / "phantom-data"
    pool = max(int(n_l) + int(n_u) for n_l, n_u in args.settings)
    source = root / "dataset.json"
    if not source.exists():
        write_phantom_dataset(
            root, cases=pool, unlabeled=0, test=args.test_cases, seed=args.data_seed, size=args.size
        )
    ds = load_dataset(source)
    out = []
    for l_count, u_count in args.settings:
        labeled, unlabeled = ds.training[:l_count], ds.training[l_count : l_count + u_count]
        path = write_split(source, args.out / f"phantom-L{l_count}-U{u_count}", labeled, unlabeled, ds.test)
        out.append((f"phantom (L,U)=({l_count},{u_count})", path, ds.test, True, None))
    return out


def la_settings(args) -> list[tuple[str, Path, list, bool, tuple | None]]:
    source = args.la2018 / "dataset.json"
    if not source.exists():
        print(f"skipping la2018: {source} is absent")
        return []
    cases = load_dataset(source).training
    test, pool = cases[-args.la_test :], cases[: -args.la_test]
    spacing = (args.la_spacing,) * 3
    out = []
    for l_count in args.la_labeled:
        path = write_split(source, args.out / f"la2018-L{l_count}", pool[:l_count], pool[l_count:], test)
        out.append((f"la2018 L={l_count} U={len(pool) - l_count}", path, test, False, spacing))
    return out


def table_markdown(results: list[dict], settings_text: str) -> str:
    lines = [settings_text, ""]
    for setting in dict.fromkeys(r["setting"] for r in results):
        lines += [
            f"### {setting}",
            "",
            "| Method | Dice % | HD95 (voxels) | HD95 (mm) | n |",
            "|---|---|---|---|---|",
        ]
        for r in (r for r in results if r["setting"] == setting):
            d, hv, hm = r["dice"], r.get("hd95_vox", {}), r.get("hd95_mm", {})
            lines.append(
                f"| {r['row']} | {100 * d['mean']:.1f} ± {100 * d['std']:.1f} | "
                f"{hv.get('mean', float('nan')):.1f} ± {hv.get('std', float('nan')):.1f} | "
                f"{hm.get('mean', float('nan')):.1f} ± {hm.get('std', float('nan')):.1f} | {int(d['n'])} |"
            )
        lines.append("")
    return "\n".join(lines)


def aggregate(per_seed: list[dict]) -> dict:
    """Metrics of one row over seeds: mean +- std over all (seed, case) pairs' per-seed means."""
    out = {}
    for key in ("dice", "hd95_vox", "hd95_mm"):
        values = [r[key]["mean"] for r in per_seed if key in r]
        if values:
            out[key] = {
                "mean": float(np.mean(values)),
                "std": float(np.mean([r[key]["std"] for r in per_seed])),
                "n": float(sum(r[key]["n"] for r in per_seed)),
            }
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("ssl_table"))
    p.add_argument("--benchmarks", default="phantom,la2018")
    p.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated, from: {', '.join(ROWS)}")
    p.add_argument("--settings", default="2,14;4,12", help="phantom (L,U) pairs, ';'-separated")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--seeds", default="0")
    p.add_argument("--width", type=float, default=0.25)
    p.add_argument("--patch", type=int, default=32)
    p.add_argument(
        "--lr", type=float, default=1e-3, help="every row's learning rate (paper: 1e-4 for 10k steps)"
    )
    p.add_argument("--translation", type=int, default=12)
    p.add_argument("--precision", default="fp32")
    p.add_argument("--size", type=int, default=96, help="phantom volume size (voxels)")
    p.add_argument("--test-cases", type=int, default=8)
    p.add_argument("--data-seed", type=int, default=11)
    p.add_argument("--la2018", type=Path, default=LA2018)
    p.add_argument("--la-labeled", default="4,8")
    p.add_argument("--la-test", type=int, default=10)
    p.add_argument(
        "--cached-only",
        action="store_true",
        help="train nothing: tabulate the runs under --out that already have a result.json",
    )
    p.add_argument("--la-spacing", type=float, default=2.0, help="isotropic mm (the data is 0.625 mm)")
    args = p.parse_args(argv)
    args.settings = [tuple(int(v) for v in s.split(",")) for s in args.settings.split(";") if s]
    args.rows = [r for r in args.rows.split(",") if r]
    unknown = [r for r in args.rows if r not in ROWS]
    if unknown:
        p.error(f"unknown rows {unknown}; known: {', '.join(ROWS)}")
    args.seeds = [int(s) for s in args.seeds.split(",")]
    args.la_labeled = [int(v) for v in args.la_labeled.split(",")]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    settings = []
    if "phantom" in args.benchmarks:
        settings += phantom_settings(args)
    if "la2018" in args.benchmarks:
        settings += la_settings(args)
    results = []
    for setting, data, _test, use_center, spacing in settings:
        for row in args.rows:
            per_seed = []
            for seed in args.seeds:
                run_dir = args.out / "runs" / setting.replace(" ", "_") / row / f"seed{seed}"
                if args.cached_only and not (run_dir / "result.json").is_file():
                    continue
                per_seed.append(run_row(data, run_dir, row, args, seed, spacing, use_center))
                print(json.dumps({"setting": setting, **per_seed[-1]}), flush=True)
            if not per_seed:
                continue
            results.append({"setting": setting, "row": row, **aggregate(per_seed), "runs": per_seed})
            write_tables(args, results)  # after every row, so an interrupted run keeps what it measured
    print(write_tables(args, results))
    return 0


def write_tables(args, results: list[dict]) -> str:
    """Write ``ssl_table.json`` and ``ssl_table.md`` under ``args.out``; returns the markdown."""
    text = (
        f"Settings: {args.steps} steps, width {args.width}, patch {args.patch}^3, batch 2+2, lr {args.lr}, "
        f"seeds {args.seeds}, precision {args.precision}, torch threads {torch.get_num_threads()}; phantom "
        f"{args.size}^3 with {args.test_cases} held-out cases (centre-point ROI inference); la2018 resampled "
        f"to {args.la_spacing} mm, last {args.la_test} cases held out (random patches, sliding window)."
    )
    (args.out / "ssl_table.json").write_text(json.dumps({"settings": text, "results": results}, indent=1))
    markdown = table_markdown(results, text)
    (args.out / "ssl_table.md").write_text(markdown)
    return markdown


if __name__ == "__main__":
    sys.exit(main())
