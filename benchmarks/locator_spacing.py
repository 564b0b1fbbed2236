"""Probe (not a test): can the segmentation locator run the model on a coarser grid to save time?

    OMP_NUM_THREADS=1 python benchmarks/locator_spacing.py --model phantom-catheter --factors 1 1.5 2 \
        [--cases 4] [--work /tmp/locator-bench] [--out docs/benchmark_results/locator_spacing.json]
    python benchmarks/locator_spacing.py --tabulate docs/benchmark_results/locator_spacing.json

The segmentation locator (``SemiSupSegLib/locator/by_segmentation.py``) runs the model once over the
whole volume at the model's own spacing. This probe runs the same pick (the heaviest component of
``probability > 0.5``, its probability-weighted centroid; no minimum volume, so every pick counts) with
the volume resampled to ``factor`` x the model's spacing, on the first ``--cases`` test cases of each
set of ``benchmarks/locator.py`` (the same seeds, so the same volumes), and reports the error in grid
voxels of the 96³ locator grid, the share within 10, the picked component's volume and the seconds.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from _report import command_line, fail, markdown_table, read_json, write_json
from locator import SETS, _dataset, grid_error

from SemiSupSegLib.imageio import read_image
from SemiSupSegLib.inference import _inference_state, _make_context, _size_divisor, foreground_probability
from SemiSupSegLib.locator.by_segmentation import heaviest_component
from SemiSupSegLib.preprocessing import resample_to_spacing


def probability_at(model, image: sitk.Image, factor: float) -> tuple[np.ndarray, sitk.Image]:
    """The model's foreground probability over the whole volume resampled to ``factor`` x its spacing
    (one window, as ``inference.volume_probability`` at factor 1)."""
    ctx = _make_context(model, image, "fp32", 0, None)
    grid = resample_to_spacing(image, tuple(s * factor for s in ctx.spacing))
    array = sitk.GetArrayFromImage(grid)
    divisor = _size_divisor(ctx.nets)
    padded = np.full([-(-n // divisor) * divisor for n in array.shape], ctx.background, np.float32)
    padded[: array.shape[0], : array.shape[1], : array.shape[2]] = array
    with torch.inference_mode(), _inference_state(ctx.nets, mc_dropout=False):
        probs = ctx.probabilities(ctx.tensor(padded)[None, None])
    probability = foreground_probability(probs)[0].numpy()
    return probability[: array.shape[0], : array.shape[1], : array.shape[2]], grid


def measure_case(model, case, factor: float) -> dict:
    image = read_image(case.image)
    t0 = time.perf_counter()
    probability, grid = probability_at(model, image, factor)
    found = heaviest_component(probability, grid.GetSpacing()[::-1])
    seconds = time.perf_counter() - t0
    if found is None:
        return {"seconds": seconds, "found": False}
    point = grid.TransformContinuousIndexToPhysicalPoint(list(found[0][::-1]))
    error = grid_error(image, point, case.center)
    return {"seconds": seconds, "found": True, "volume_mm3": found[1], **error}


def measure(args: argparse.Namespace, results: dict, out: Path) -> dict:
    from SemiSupSegLib.dataset import load_dataset
    from SemiSupSegLib.model_store import load_model

    torch.set_num_threads(1)
    model = load_model(args.model)
    for factor in args.factors:
        done = results.setdefault("factors", {}).setdefault(f"{factor:g}", {})
        for name in SETS:
            for case in load_dataset(_dataset(Path(args.work), name, args.cases)).test:
                key = f"{name}/{case.name}"
                if key not in done:
                    done[key] = measure_case(model, case, factor)
                    print(f"x{factor:g} {key}: {done[key].get('vox', float('nan')):.1f} vox", flush=True)
                    write_json(out, results)
    return results


def render(results: dict) -> list[str]:
    header = ["model spacing x", "sets", "error median (grid vox)", "within 10 vox", "nothing found",
              "picked volume median (mm³)", "s / volume (median)", "cases"]  # fmt: skip
    rows = []
    for factor, cases in results["factors"].items():
        for kind in ("catheter", "guide-wire"):
            picked = [c for k, c in cases.items() if k.startswith(kind)]
            vox = np.array([c.get("vox", np.inf) for c in picked])
            volume = [c["volume_mm3"] for c in picked if c["found"]]
            rows.append([
                factor, kind, f"{np.median(vox):.1f}", f"{100 * np.mean(vox <= 10):.0f} %",
                sum(not c["found"] for c in picked), f"{np.median(volume):.0f}" if volume else "–",
                f"{np.median([c['seconds'] for c in picked]):.2f}", len(picked),
            ])  # fmt: skip
    return markdown_table(header, rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="phantom-catheter")
    parser.add_argument("--factors", type=float, nargs="+", default=[1.0, 1.5, 2.0])
    parser.add_argument("--cases", type=int, default=4, help="test cases per set (default 4)")
    parser.add_argument("--work", default="/tmp/semisupseg-locator-bench", help="where test data is written")
    parser.add_argument("--out", default="locator_spacing.json", help="raw results (JSON), also the cache")
    parser.add_argument("--tabulate", metavar="JSON", help="measure nothing: render this raw-results JSON")
    args = parser.parse_args(argv)
    try:
        if args.tabulate:
            results = read_json(Path(args.tabulate))
        else:
            out = Path(args.out)
            results = read_json(out) if out.is_file() else {}
            results.update(command=command_line(), model=args.model, cases_per_set=args.cases)
            results = measure(args, results, out)
        print("\n".join(render(results)))
    except (KeyError, OSError) as error:
        raise fail(f"cannot render: {error}") from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
