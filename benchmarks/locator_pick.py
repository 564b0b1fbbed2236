"""Probe (not a test): which voxels of a segmentation model's output should a locator take, and which
point of them should it answer?

    OMP_NUM_THREADS=1 python benchmarks/locator_pick.py --model phantom-guidewire [--cases 6] \
        [--kinds guide-wire catheter] [--work /tmp/locator-bench] [--out locator_pick.json]
    python benchmarks/locator_pick.py --tabulate docs/benchmark_results/locator_pick.json

The segmentation locator (``SemiSupSegLib/locator/by_segmentation.py``) runs the model once over the
whole volume and answers a centroid. This probe compares, on the first ``--cases`` test cases of each
set of ``benchmarks/locator.py`` whose name holds one of ``--kinds`` (the same seeds, so the same
volumes), the probability-weighted centroid of

- ``heaviest``: the component of ``p > 0.5`` with the largest summed probability (the catheter rule);
- ``all``: every voxel of ``p > 0.5`` (a thin instrument segmented in fragments);
- ``top3``: the three heaviest components;

and records the picked volume of each (mm³), from which a minimum volume is chosen per model. For the
``heaviest`` and ``all`` picks it also records two middles along the instrument besides the centroid
(``by_segmentation.axis_middle``: the weighted median along the first principal axis;
``geodesic_middle``: half-way along the longest path inside one component, ``heaviest`` only), shown
by ``--min-volume V`` in a second table over the cases whose pick holds at least V mm³ (the finds a
locator with that minimum volume trusts). Errors are in voxels of the 96³ locator grid, as in
``benchmarks/locator.py``. Per-case results are cached in ``--out`` as they come.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from _report import command_line, fail, markdown_table, read_json, write_json
from locator import SETS, _dataset, grid_error
from scipy import ndimage

from SemiSupSegLib.dataset import load_dataset
from SemiSupSegLib.imageio import read_image
from SemiSupSegLib.inference import volume_probability
from SemiSupSegLib.locator.by_segmentation import PROBABILITY_THRESHOLD, axis_middle, geodesic_middle
from SemiSupSegLib.model_store import load_model

PICKS = ("heaviest", "all", "top3")
MIDDLES = {  # pick: the middles along the instrument measured besides the centroid
    "heaviest": {"axis middle": axis_middle, "geodesic middle": geodesic_middle},
    "all": {"axis middle": axis_middle},
}


def picks(probability: np.ndarray) -> dict[str, np.ndarray]:
    """The voxels each pick takes (masks), from the components of ``probability > 0.5``."""
    components, count = ndimage.label(probability > PROBABILITY_THRESHOLD)
    labels = np.arange(1, count + 1)
    order = labels[np.argsort(-np.asarray(ndimage.sum(probability, components, labels)))]
    return {
        "heaviest": components == order[0],
        "all": components > 0,
        "top3": np.isin(components, order[:3]),
    }


def case_result(model, image, center) -> dict:
    """Each pick's error (grid voxels, mm) and picked volume (mm³) on one case; None when nothing found."""
    probability, grid = volume_probability(model, image)
    voxel_mm3 = float(np.prod(grid.GetSpacing()))
    if not (probability > PROBABILITY_THRESHOLD).any():
        return {pick: None for pick in PICKS}

    def error(zyx) -> dict:
        return grid_error(
            image, grid.TransformContinuousIndexToPhysicalPoint([float(v) for v in zyx[::-1]]), center
        )

    spacing_zyx = grid.GetSpacing()[::-1]
    result = {}
    for pick, mask in picks(probability).items():
        zyx = ndimage.center_of_mass(np.where(mask, probability, 0.0))
        result[pick] = {**error(zyx), "volume_mm3": float(mask.sum()) * voxel_mm3}
        for rule, middle in MIDDLES.get(pick, {}).items():
            result[pick][f"{rule} vox"] = error(middle(probability, mask, spacing_zyx))["vox"]
    return result


def measure(args: argparse.Namespace, results: dict, out: Path) -> dict:
    torch.set_num_threads(1)
    model = load_model(args.model)
    cases = results.setdefault("cases", {})
    for name in SETS:
        if not any(kind in name for kind in args.kinds):
            continue
        for case in load_dataset(_dataset(Path(args.work), name, 10)).test[: args.cases]:
            key = f"{name}/{case.name}"
            if key in cases:
                continue
            cases[key] = case_result(model, read_image(case.image), tuple(case.center))
            shown = ", ".join(f"{p} {r['vox']:.1f}" for p, r in cases[key].items() if r)
            print(f"{key}: {shown or 'nothing found'}", flush=True)
            write_json(out, results)
    return results


def render(results: dict) -> list[str]:
    header = ["set", "cases", *(f"{p}: error median (grid vox)" for p in PICKS), "within 10 (all)"]
    header += ["picked volume, all: min / median / max (mm³)"]
    rows = []
    for name in SETS:
        found = [r for key, r in results["cases"].items() if key.startswith(name + "/")]
        if not found:
            continue
        cells = []
        for pick in PICKS:
            errors = [r[pick]["vox"] if r[pick] else np.nan for r in found]
            cells.append(f"{np.nanmedian(errors):.1f}")
        every = np.array([r["all"]["vox"] if r["all"] else np.inf for r in found])
        volumes = np.array([r["all"]["volume_mm3"] if r["all"] else 0.0 for r in found])
        cells.append(f"{np.mean(every <= 10) * 100:.0f} %")
        cells.append(f"{volumes.min():.1f} / {np.median(volumes):.1f} / {volumes.max():.1f}")
        rows.append([name, str(len(found)), *cells])
    return [
        f"Model `{results['model']}`; measured with "
        + "; then ".join(f"`{c}`" for c in results.get("commands", [results.get("command")]))
        + ".",
        "",
        *markdown_table(header, rows),
    ]


def render_middles(results: dict, min_volume: float) -> list[str]:
    """Median error (grid voxels) and share within 3 of each rule, over the finds of >= ``min_volume``."""
    header = ["set", "pick", "trusted cases", "centroid", *(f"{rule}" for rule in MIDDLES["heaviest"])]
    rows = []
    for name in SETS:
        found = [r for key, r in results["cases"].items() if key.startswith(name + "/")]
        for pick, rules in MIDDLES.items():
            trusted = [r[pick] for r in found if r[pick] and r[pick]["volume_mm3"] >= min_volume]
            if not trusted or not all(f"{rule} vox" in r for r in trusted for rule in rules):
                continue
            cells = []
            for key in ("vox", *(f"{rule} vox" for rule in MIDDLES["heaviest"])):
                errors = np.array([r[key] for r in trusted if key in r])
                within = f"{np.mean(errors <= 3) * 100:.0f} %" if len(errors) else ""
                cells.append(f"{np.median(errors):.1f} ({within} within 3)" if len(errors) else "–")
            rows.append([name, pick, str(len(trusted)), *cells])
    return [
        f"Finds of at least {min_volume:g} mm³; median error (grid voxels):",
        "",
        *markdown_table(header, rows),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="phantom-guidewire")
    parser.add_argument("--cases", type=int, default=6, help="test cases per set (default 6)")
    parser.add_argument(
        "--kinds", nargs="+", default=["guide-wire", "catheter"], help="sets whose name holds one"
    )
    parser.add_argument("--work", default="/tmp/semisupseg-locator-bench", help="where test data is written")
    parser.add_argument("--out", default="locator_pick.json", help="raw results (JSON), also the cache")
    parser.add_argument("--tabulate", metavar="JSON", help="measure nothing: render this raw-results JSON")
    parser.add_argument(
        "--min-volume",
        type=float,
        help="also tabulate the middles over the finds of at least this volume (mm³)",
    )
    args = parser.parse_args(argv)
    try:
        if args.tabulate:
            results = read_json(Path(args.tabulate))
        else:
            out = Path(args.out)
            results = read_json(out) if out.is_file() else {}
            results["model"] = args.model
            commands = results.setdefault("commands", [])  # every run that added cases to this JSON
            if command_line() not in commands:
                commands.append(command_line())
            results = measure(args, results, out)
        print("\n".join(render(results)))
        if args.min_volume is not None:
            print("\n" + "\n".join(render_middles(results, args.min_volume)))
    except (KeyError, OSError) as error:
        raise fail(f"cannot render: {error}") from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
