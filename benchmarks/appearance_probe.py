"""Probe (not a test): where a model's misses on a test profile come from, contrast or recognition.

    OMP_NUM_THREADS=1 python benchmarks/appearance_probe.py --model phantom-catheter \\
        --profiles default other-generator other-generator:bright --cases 4 \\
        --out docs/benchmark_results/appearance_probe.json
    python benchmarks/appearance_probe.py --tabulate docs/benchmark_results/appearance_probe.json

For each case (drawn as ``benchmarks/generalisation.py`` draws them: size 128, seeds ``--seed + i``) it
records the instrument's contrast as the model's normalisation shows it (the median z-score inside the
label, and the share of the field of view brighter than the label's 90th percentile) and what the model
makes of it (coarse-to-fine from the true centre: the median probability inside the label, recall,
and false-positive voxels). A test profile whose instruments have our contrast but get probability ~0
is a recognition failure, not a brightness one.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from _report import command_line, fail, markdown_table, read_json, write_json
from region_vs_window import _case

from SemiSupSegLib.inference import segment
from SemiSupSegLib.model_store import load_model


def case_row(model, case) -> dict:
    """Contrast under the model's normalisation and the model's output inside and outside the label."""
    image = sitk.GetArrayFromImage(case.image).astype(np.float32)
    label = sitk.GetArrayFromImage(case.label) > 0
    normalised = model.preprocessing.normalize(image, spacing_zyx=case.image.GetSpacing()[::-1])
    flat = image.ravel()
    fill = flat == flat.min()
    in_view = ~fill.reshape(image.shape) if fill.mean() >= 0.01 else np.ones_like(label)
    view = np.sort(image[in_view])
    p90 = np.percentile(image[label], 90)
    probability = sitk.GetArrayFromImage(segment(model, case.image, center=case.center).probability)
    found = probability > 0.5
    return {
        "label_median_z": float(np.median(normalised[label])),
        "view_brighter_than_label_p90": float(1.0 - np.searchsorted(view, p90) / view.size),
        "probability_in_label_median": float(np.median(probability[label])),
        "recall": float((found & label).sum() / max(int(label.sum()), 1)),
        "false_positive_voxels": int((found & ~label).sum()),
    }


def measure(args: argparse.Namespace) -> dict:
    torch.set_num_threads(1)
    model = load_model(args.model)
    data = read_json(args.out) if args.out.is_file() else {"rows": []}
    data["setting"] = {"model": args.model, "size": 128, "kind": "catheter", "command": command_line()}
    done = {(r["profile"], r["seed"]) for r in data["rows"]}
    for profile in args.profiles:
        for seed in range(args.seed, args.seed + args.cases):
            if (profile, seed) in done:
                continue
            row = {"profile": profile, "seed": seed, **case_row(model, _case(profile, 128, "catheter", seed))}
            data["rows"].append(row)
            print(
                f"{profile} {seed}: "
                + ", ".join(f"{k} {v:.3g}" for k, v in row.items() if k not in ("profile", "seed")),
                flush=True,
            )
            write_json(args.out, data)
    return data


def _cell(rows: list[dict], key: str, fmt: str) -> str:
    """Mean (min-max) of ``key`` over ``rows``."""
    values = np.array([r[key] for r in rows], dtype=float)
    return f"{fmt.format(np.mean(values))} ({fmt.format(values.min())}-{fmt.format(values.max())})"


def table(data: dict) -> list[str]:
    header = [
        "profile", "cases", "label median z-score", "view brighter than the label's p90",
        "probability in the label (median)", "recall", "false-positive voxels",
    ]  # fmt: skip
    rows = []
    for profile in dict.fromkeys(r["profile"] for r in data["rows"]):
        mine = [r for r in data["rows"] if r["profile"] == profile]

        rows.append([
            profile, str(len(mine)), _cell(mine, "label_median_z", "{:.2f}"),
            _cell(mine, "view_brighter_than_label_p90", "{:.3f}"),
            _cell(mine, "probability_in_label_median", "{:.2f}"), _cell(mine, "recall", "{:.2f}"),
            _cell(mine, "false_positive_voxels", "{:.0f}"),
        ])  # fmt: skip
    return [
        f"Model `{data['setting']['model']}`; mean (min-max) over the cases.",
        "",
        *markdown_table(header, rows),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="phantom-catheter")
    parser.add_argument(
        "--profiles", nargs="+", default=["default", "other-generator", "other-generator:bright"]
    )
    parser.add_argument("--cases", type=int, default=4)
    parser.add_argument("--seed", type=int, default=7000)
    parser.add_argument(
        "--out", type=Path, default=Path("appearance_probe.json"), help="raw results, also the cache"
    )
    parser.add_argument("--tabulate", type=Path, metavar="JSON", help="measure nothing: render this JSON")
    args = parser.parse_args(argv)
    try:
        data = read_json(args.tabulate) if args.tabulate else measure(args)
        print("\n".join(table(data)))
    except (KeyError, OSError) as error:
        raise fail(f"cannot render: {error}") from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
