"""Benchmark of SemiSupSegLib.inference on 160^3 phantom volumes (a script, not a test).

Measures, for each numerical variant (fp32, bf16 autocast, fp32 + channels_last_3d, bf16 + channels_last_3d):

(a) seconds per volume of coarse-to-fine ROI inference around the phantom's centre point (``segment`` with
    the centre: statistics, direct ROI resampling, 8 patches in one batch, mapping back);
(b) seconds per volume of MONAI sliding-window inference over the whole volume (overlap 0.25, MONAI's
    default) with the same network;
(c) the convolution-bound floor of (a): the time of the network forward (+ softmax) alone on exactly the
    8 ROI patches of (a), already normalised and in memory, min of 2 runs after warm-up; the FLOPs of that
    forward are counted with ``torch.utils.flop_counter`` and the achieved GFLOP/s reported;
(d) peak memory: every (mode, variant) runs in its own subprocess, which reports its RSS high-water mark
    (``VmHWM``, else ``ru_maxrss``) and the RSS before inference (after imports, model and image loading).

Dice (ROI vs sliding window, every variant vs fp32, every variant vs the phantom label) is meaningful only
with a trained model (``--model``); without one a random full-width network gives timings only.

Usage: ``PYTHONPATH=SemiSupSeg python benchmarks/inference.py [--model PATH] [--cases 3] [--out x.json]``
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

VARIANTS = {
    "fp32": ("fp32", False),
    "bf16": ("bf16", False),
    "fp32-cl": ("fp32", True),
    "bf16-cl": ("bf16", True),
}
PACKAGE = Path(__file__).resolve().parents[1] / "SemiSupSeg"
if str(PACKAGE) not in sys.path:
    sys.path.insert(0, str(PACKAGE))
DEFAULT_TARGET_SPACING = 0.55  # the middle of the phantoms' 0.4-0.7 mm spacing range


# --------------------------------------------------------------------------- helpers


def _status_mb(field: str) -> float:
    """A ``/proc/self/status`` memory field (``VmRSS``, ``VmHWM``) in MB, or NaN off Linux."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def _rss_mb() -> float:
    return _status_mb("VmRSS")


def _peak_rss_mb() -> float:
    """RSS high-water mark of this process in MB.

    ``VmHWM`` belongs to the process's own address space; ``ru_maxrss`` (the fallback) also keeps the
    parent's high-water mark across fork + exec, so it can only over-estimate a worker's peak.
    """
    peak = _status_mb("VmHWM")
    return peak if np.isfinite(peak) else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _dice(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    a, b = a.astype(bool), b.astype(bool)
    if mask is not None:
        a, b = a & mask, b & mask
    total = np.count_nonzero(a) + np.count_nonzero(b)
    return 1.0 if total == 0 else 2.0 * np.count_nonzero(a & b) / total


def _read(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


# --------------------------------------------------------------------------- worker (one subprocess)


def _forward_floor(model, image: sitk.Image, center, precision: str, channels_last: bool) -> dict:
    """(c): time the network forward alone on the 8 ROI patches of ``image``; also time the other stages."""
    from SemiSupSegLib import inference

    t0 = time.perf_counter()
    ctx = inference._make_context(model, image, precision, 0, channels_last)
    t1 = time.perf_counter()
    size = [2 * p for p in reversed(ctx.patch)]
    grid = inference.roi_grid(image, center, ctx.spacing, size)
    region = ctx.tensor(inference._resample_onto(image, grid, ctx.background))
    batch = inference._patches(region, ctx.patch, 2)
    t2 = time.perf_counter()
    times = []
    for _ in range(2):
        start = time.perf_counter()
        with torch.inference_mode(), inference._inference_state(ctx.nets, False):
            probs = ctx.probabilities(batch)
        times.append(time.perf_counter() - start)
    t3 = time.perf_counter()
    foreground = inference.foreground_probability(inference._stitch(probs, ctx.patch, 2)[None])[0]
    label = inference.to_input_grid(foreground.numpy(), grid, image) > 0.5
    t4 = time.perf_counter()
    return {
        "forward_seconds": min(times),
        "stage_seconds": {
            "statistics_and_setup": t1 - t0,
            "roi_resample_normalise": t2 - t1,
            "forward": min(times),
            "map_back": t4 - t3,
        },
        "batch_shape": list(batch.shape),
        "label_voxels": int(sitk.GetArrayViewFromImage(label).sum()),
    }


def run_worker(spec: dict) -> dict:
    """Run one (mode, variant) over the cases; return timings, peak RSS and where the labels are."""
    from SemiSupSegLib import inference
    from SemiSupSegLib.model_store import load_model

    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    precision, channels_last = VARIANTS[spec["variant"]]
    model = load_model(spec["model"], "cpu")
    cases = [(sitk.ReadImage(c["image"]), c["center"]) for c in spec["cases"]]
    rss_before = _rss_mb()
    roi = spec["mode"] == "roi"
    # Warm-up: one batch of the patch shape through the networks (oneDNN primitive creation).
    warm = torch.randn(8, 1, *model.patch_size)
    inference.predict_batch(model.inference_networks, warm, precision, channels_last=channels_last)
    seconds, labels = [], []
    for i, (image, center) in enumerate(cases):
        start = time.perf_counter()
        result = inference.segment(
            model,
            image,
            center if roi else None,
            precision=precision,
            channels_last=channels_last,
            mc_samples=int(spec.get("mc_samples", 0)),
        )
        seconds.append(time.perf_counter() - start)
        out = Path(spec["labels"]) / f"{spec['mode']}-{spec['variant']}-{i}.mha"
        sitk.WriteImage(result.label, str(out), False)
        labels.append(str(out))
    report = {
        "mode": spec["mode"],
        "variant": spec["variant"],
        "mc_samples": int(spec.get("mc_samples", 0)),
        "seconds": seconds,
        "labels": labels,
        "rss_before_mb": rss_before,
        "peak_rss_mb": _peak_rss_mb(),
        "threads": torch.get_num_threads(),
    }
    if roi and spec.get("floor"):
        report.update(_forward_floor(model, cases[0][0], cases[0][1], precision, channels_last))
    return report


def _spawn(spec: dict) -> dict:
    """Run :func:`run_worker` in a fresh interpreter so its ``ru_maxrss`` is its own."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PACKAGE), env.get("PYTHONPATH", "")) if p)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"worker {spec['mode']}/{spec['variant']} failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


# --------------------------------------------------------------------------- set-up in the parent


def _make_model(args: argparse.Namespace, work: Path) -> tuple[str, dict]:
    """The trained model given with ``--model``, or a random network of ``--width`` saved in ``work``."""
    from SemiSupSegLib.model_store import read_model_json, resolve_model, save_model
    from SemiSupSegLib.networks import CompactUNet
    from SemiSupSegLib.preprocessing import Preprocessing

    if args.model:
        folder = resolve_model(args.model)
        return str(folder), read_model_json(folder)
    torch.manual_seed(args.seed)
    net = CompactUNet(width=args.width).eval()
    spacing = (DEFAULT_TARGET_SPACING,) * 3
    meta = {
        "name": f"random-width-{args.width:g}",
        "method": "random",
        "classes": {"0": "background", "1": "instrument"},
        "patch_size": [48, 48, 48],
        "preprocessing": Preprocessing(target_spacing=spacing).to_dict(),
    }
    folder = save_model(work / "model", {"net": net}, meta)
    return str(folder), read_model_json(folder)


def _make_cases(args: argparse.Namespace, meta: dict, work: Path) -> list[dict]:
    """Phantoms at the model's spacing (so the network sees a ``size``^3 volume) or at random spacing."""
    from SemiSupSegLib.phantom import generate_phantom

    target = (meta.get("preprocessing") or {}).get("target_spacing")
    spacing = tuple(target) if (target and args.phantom_spacing == "model") else None
    cases = []
    for i in range(args.cases):
        case = generate_phantom(size=args.size, kind=args.kind, seed=args.seed + 1000 + i, spacing=spacing)
        paths = {"image": str(work / f"case{i}-image.mha"), "label": str(work / f"case{i}-label.mha")}
        sitk.WriteImage(case.image, paths["image"], False)
        sitk.WriteImage(case.label, paths["label"], False)
        cases.append({**paths, "center": list(case.center), "spacing": list(case.image.GetSpacing())})
    return cases


def _resample_strategies(model_path: str, args: argparse.Namespace) -> dict:
    """Direct resampling onto the ROI grid vs resampling the whole volume then cropping.

    Uses a phantom at 0.8x the model's spacing so that the whole-volume resampling is real work; both
    give the same samples because the ROI grid lies on the grid of the resampled volume.
    """
    from SemiSupSegLib import inference
    from SemiSupSegLib.model_store import load_model
    from SemiSupSegLib.phantom import generate_phantom
    from SemiSupSegLib.preprocessing import Preprocessing

    model = load_model(model_path, "cpu")
    spacing = model.preprocessing.target_spacing or (DEFAULT_TARGET_SPACING,) * 3
    case = generate_phantom(size=args.size, kind=args.kind, seed=args.seed + 999, spacing=spacing[0] * 0.8)
    image, prep = case.image, Preprocessing(target_spacing=spacing)
    size = [2 * p for p in reversed(model.patch_size)]
    timings = {"direct_roi_seconds": [], "whole_then_crop_seconds": []}
    for _ in range(3):
        t0 = time.perf_counter()
        grid = inference.roi_grid(image, case.center, spacing, size)
        direct = inference._resample_onto(image, grid, 0.0)
        t1 = time.perf_counter()
        whole = sitk.GetArrayViewFromImage(prep.resample(image))
        lo = np.maximum(inference.roi_start(image, case.center, spacing, size), 0)[::-1]
        crop = np.array(whole[lo[0] : lo[0] + size[2], lo[1] : lo[1] + size[1], lo[2] : lo[2] + size[0]])
        t2 = time.perf_counter()
        timings["direct_roi_seconds"].append(t1 - t0)
        timings["whole_then_crop_seconds"].append(t2 - t1)
    same_shape = crop.shape == direct.shape
    return {
        **{key: min(values) for key, values in timings.items()},
        "input_spacing": list(image.GetSpacing()),
        "max_abs_difference": float(np.abs(crop - direct).max()) if same_shape else None,
    }


def _count_flops(model_path: str) -> float:
    """FLOPs (multiply-add = 2) of the inference networks on 8 patches, counted on one patch x 8."""
    from torch.utils.flop_counter import FlopCounterMode

    from SemiSupSegLib.model_store import load_model

    model = load_model(model_path, "cpu")
    x = torch.randn(1, 1, *model.patch_size)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        for net in model.inference_networks:
            net(x)
    return 8.0 * counter.get_total_flops()


# --------------------------------------------------------------------------- Dice and report


def _roi_footprint(model_path: str, case: dict) -> np.ndarray:
    from SemiSupSegLib import inference
    from SemiSupSegLib.model_store import load_model

    model = load_model(model_path, "cpu")
    image = sitk.ReadImage(case["image"])
    spacing = model.preprocessing.target_spacing or image.GetSpacing()
    grid = inference.roi_grid(image, case["center"], spacing, [2 * p for p in reversed(model.patch_size)])
    ones = sitk.Image(grid.GetSize(), sitk.sitkUInt8) + 1
    ones.CopyInformation(grid)
    resampled = sitk.Resample(ones, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    return sitk.GetArrayFromImage(resampled) > 0


def _dice_report(runs: dict, cases: list[dict], model_path: str) -> dict:
    """Mean Dice over cases: each run vs the phantom label (whole / inside ROI), vs fp32, ROI vs SW."""
    truth = [_read(Path(c["label"])) for c in cases]
    inside = [_roi_footprint(model_path, c) for c in cases]
    labels = {key: [_read(Path(p)) for p in run["labels"]] for key, run in runs.items()}
    report = {}
    for (mode, variant), preds in labels.items():
        n = len(preds)
        entry = {
            "vs_truth": float(np.mean([_dice(preds[i], truth[i]) for i in range(n)])),
            "vs_truth_in_roi": float(np.mean([_dice(preds[i], truth[i], inside[i]) for i in range(n)])),
        }
        ref = labels.get((mode, "fp32"))
        if ref is not None:
            entry["vs_fp32"] = float(np.mean([_dice(preds[i], ref[i]) for i in range(n)]))
        if mode == "roi" and (("sliding-window", variant) in labels):
            sw = labels[("sliding-window", variant)]
            m = len(sw)
            entry["roi_vs_sw_in_roi"] = float(np.mean([_dice(preds[i], sw[i], inside[i]) for i in range(m)]))
            entry["roi_vs_sw"] = float(np.mean([_dice(preds[i], sw[i]) for i in range(m)]))
        report[f"{mode}/{variant}"] = entry
    return report


def _fmt(value, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "-"
    return f"{value:.{digits}f}"


def _table(results: dict) -> str:
    rows = [
        "| mode | variant | s/volume (median) | forward-only floor (c) s | GFLOP/s | peak RSS MB | "
        "RSS before MB | Dice vs truth | Dice vs fp32 | Dice ROI vs SW (in ROI) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    flops = results["flops_8_patches"]
    for key, run in results["runs"].items():
        dice = results["dice"].get(key, {})
        floor = run.get("forward_seconds")
        rows.append(
            f"| {run['mode']} | {run['variant']} | {_fmt(float(np.median(run['seconds'])))} | "
            f"{_fmt(floor)} | "
            f"{_fmt(flops / floor / 1e9 if floor else None, 1)} | {_fmt(run['peak_rss_mb'], 0)} | "
            f"{_fmt(run['rss_before_mb'], 0)} | {_fmt(dice.get('vs_truth'), 3)} | "
            f"{_fmt(dice.get('vs_fp32'), 4)} | {_fmt(dice.get('roi_vs_sw_in_roi'), 3)} |"
        )
    return "\n".join(rows)


def _recommend(results: dict) -> str:
    """The fastest ROI variant whose Dice vs the truth stays within 0.5 points of fp32 (trained model)."""
    dice = results["dice"]
    base = dice.get("roi/fp32", {}).get("vs_truth")
    ok = []
    for key, run in results["runs"].items():
        if run["mode"] != "roi":
            continue
        d = dice.get(key, {}).get("vs_truth")
        if base is not None and d is not None and abs(d - base) <= 0.005:
            ok.append((float(np.median(run["seconds"])), run["variant"]))
    if not ok:
        return "none"
    return min(ok)[1] + (
        "" if results["trained_model"] else " (timing only: random weights, Dice not meaningful)"
    )


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="trained model folder or name (for meaningful Dice)")
    parser.add_argument("--width", type=float, default=1.0, help="width of the random network (no --model)")
    parser.add_argument("--cases", type=int, default=3, help="phantom volumes for ROI mode (default 3)")
    parser.add_argument("--sw-cases", type=int, default=1, help="volumes for sliding window (default 1)")
    parser.add_argument("--variants", default="fp32,bf16,fp32-cl,bf16-cl", help="variants for ROI mode")
    parser.add_argument("--sw-variants", default="fp32,bf16-cl", help="variants for sliding window")
    parser.add_argument("--mc-samples", type=int, default=0, help="also time ROI mode with MC uncertainty")
    parser.add_argument("--size", type=int, default=160)
    parser.add_argument("--kind", default="catheter", choices=("catheter", "guidewire"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--phantom-spacing",
        default="model",
        choices=("model", "random"),
        help="phantoms at the model's target spacing (a size^3 network input) or at random spacing",
    )
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    parser.add_argument("--out", default="inference_benchmark.json", help="JSON results")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def _check_variants(text: str) -> list[str]:
    names = [v.strip() for v in text.split(",") if v.strip()]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    return names


def _runs(args: argparse.Namespace, model_path: str, cases: list[dict], labels: Path) -> dict:
    base = {"model": model_path, "labels": str(labels), "threads": args.threads}
    plan = [("roi", v, cases, 0) for v in _check_variants(args.variants)]
    plan += [("sliding-window", v, cases[: args.sw_cases], 0) for v in _check_variants(args.sw_variants)]
    if args.mc_samples > 0:
        plan.append(("roi-mc", _check_variants(args.variants)[-1], cases, args.mc_samples))
    runs = {}
    for mode, variant, subset, mc in plan:
        spec = {**base, "mode": "roi" if mode == "roi-mc" else mode, "variant": variant, "cases": subset}
        spec.update({"mc_samples": mc, "floor": mode == "roi"})
        print(f"running {mode}/{variant} on {len(subset)} case(s)...", flush=True)
        run = _spawn(spec)
        if mode == "roi-mc":
            run["mode"] = "roi-mc"
        runs[(run["mode"], variant)] = run
    return runs


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        print("RESULT " + json.dumps(run_worker(json.loads(args.worker))), flush=True)
        return 0
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="semisupseg-bench-") as tmp:
        work = Path(tmp)
        (work / "labels").mkdir()
        model_path, meta = _make_model(args, work)
        cases = _make_cases(args, meta, work)
        resampling = _resample_strategies(model_path, args)
        flops = _count_flops(model_path)
        runs = _runs(args, model_path, cases, work / "labels")
        dice_runs = {k: v for k, v in runs.items() if k[0] != "roi-mc"}
        dice = _dice_report(dice_runs, cases, model_path)
    results = {
        "model": args.model or meta["name"],
        "trained_model": bool(args.model),
        "networks": meta.get("networks"),
        "patch_size": meta.get("patch_size"),
        "target_spacing": (meta.get("preprocessing") or {}).get("target_spacing"),
        "volume_size": args.size,
        "case_spacings": [c["spacing"] for c in cases],
        "torch_threads": torch.get_num_threads() if not args.threads else args.threads,
        "bf16_supported": _bf16(),
        "flops_8_patches": flops,
        "resampling": resampling,
        "runs": {f"{k[0]}/{k[1]}": {**v, "labels": None} for k, v in runs.items()},
        "dice": dice,
        "total_seconds": time.perf_counter() - started,
    }
    results["recommended_auto"] = _recommend(results)
    print()
    print(_table(results))
    print()
    print(f"convolution FLOPs for the 8 ROI patches: {flops / 1e9:.1f} GFLOP")
    print(f"ROI resampling: {json.dumps(resampling)}")
    print(f"fastest ROI variant within 0.5 Dice points of fp32: {results['recommended_auto']}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out} ({results['total_seconds']:.0f} s)")
    return 0


def _bf16() -> bool:
    from SemiSupSegLib.inference import bf16_supported

    return bf16_supported("cpu")


if __name__ == "__main__":
    sys.exit(main())
