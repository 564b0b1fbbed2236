"""Probe of the locator's recognition network: does longer training make its map find the instrument?

    OMP_NUM_THREADS=1 python benchmarks/locator_recognition.py --data A/dataset.json --data B/dataset.json \
        --test /tmp/semisupseg-locator-bench [--init LOCATOR_OR_CHECKPOINT] --steps 3000 --every 1000 \
        [--stride 1|2] [--lr 3e-3] [--patch 48] [--out docs/benchmark_results/locator_recognition.json]

Trains (or continues, from a locator folder's or a run checkpoint's ``recognition`` weights) the
recognition network of :mod:`SemiSupSegLib.locator.recognition` on the labelled cases of ``--data``,
and every ``--every`` steps measures on the test cases of every ``dataset.json`` under ``--test``
(the sets of ``benchmarks/locator.py``): the mask Dice of the thresholded map, the likelihood at the
true centre, and the error of :func:`instrument_middle` started **at the true centre** (the best a
search could hand it) and at the largest component (no search at all). Not a test; raw JSON only
(per checkpoint of the probe, written as it goes).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from _report import command_line, fail, markdown_table, read_json, write_json
from scipy import ndimage

from SemiSupSegLib.checkpoints import read_checkpoint
from SemiSupSegLib.dataset import load_dataset
from SemiSupSegLib.imageio import read_image
from SemiSupSegLib.locator.environment import prepare_volume
from SemiSupSegLib.locator.recognition import (
    RecognitionConfig,
    RecognitionNet,
    grid_mask,
    instrument_middle,
    likelihood_map,
    mask_overlap,
    point_confidence,
    train_recognition,
)

GRID = 96
CPU = torch.device("cpu")


def _grids(cases) -> list[tuple]:
    """(normalised grid, grid mask, true centre on the grid) of labelled cases."""
    out = []
    for case in cases:
        volume = prepare_volume(read_image(case.image), GRID, (1,))
        mask = grid_mask(read_image(case.label, what="label"), volume.geometry)
        centre = volume.geometry.to_index(case.center) if case.center is not None else None
        out.append((volume.levels[0], mask, centre))
    return out


def _initial(init: str | None, width: int) -> dict | None:
    if not init:
        return None
    path = Path(init)
    if (path / "weights.pt").is_file():
        return torch.load(path / "weights.pt", map_location="cpu", weights_only=True)["recognition"]
    return read_checkpoint(path)["recognition"]


def _largest_middle(likelihood: np.ndarray) -> np.ndarray | None:
    found = likelihood >= 0.5
    components, n = ndimage.label(found)
    if n == 0:
        return None
    largest = int(np.argmax(ndimage.sum(found, components, range(1, n + 1)))) + 1
    return instrument_middle(likelihood, np.argwhere(components == largest).mean(axis=0))


def evaluate(net: RecognitionNet, tests: dict) -> dict:
    """Per test set, per case: mask Dice, likelihood at the centre, middle errors (grid voxels)."""
    result = {}
    for name, grids in tests.items():
        rows = []
        for volume, mask, centre in grids:
            likelihood = likelihood_map(net, volume, CPU)
            from_centre, largest = instrument_middle(likelihood, centre), _largest_middle(likelihood)
            error = lambda p, c=centre: None if p is None else float(np.linalg.norm(p - c))  # noqa: E731
            rows.append(
                {
                    "mask_dice": mask_overlap(likelihood, mask),
                    "at_centre": point_confidence(likelihood, centre),
                    "middle_from_centre_vox": error(from_centre),
                    "middle_of_largest_vox": error(largest),
                }
            )
        result[name] = rows
    return result


def _middle_errors(cases: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """Errors (grid voxels) of the middle from the true centre and of the largest component's middle; a
    case without a component counts as a miss (99)."""
    missing = lambda v: 99.0 if v is None else v  # noqa: E731
    centre = np.array([missing(r["middle_from_centre_vox"]) for r in cases])
    return centre, np.array([missing(r["middle_of_largest_vox"]) for r in cases])


def summary_lines(results: dict) -> list[str]:
    """One markdown row per checkpoint of the probe, pooled over every test case."""
    header = [
        "extra steps", "last-100 loss", "mask Dice (mean)", "middle from the true centre: median (vox)",
        "within 3 vox", "middle of the largest component within 10 vox", "likelihood at the centre (mean)",
        "cases",
    ]  # fmt: skip
    rows = []
    for point in results["checkpoints"]:
        cases = [r for rows_ in point["sets"].values() for r in rows_]
        centre, largest = _middle_errors(cases)
        loss = point.get("loss_last_100")
        rows.append(
            [
                point["extra_steps"], "–" if loss is None else f"{loss:.3f}",
                f"{np.mean([r['mask_dice'] for r in cases]):.3f}", f"{np.median(centre):.1f}",
                f"{100 * np.mean(centre <= 3):.0f} %", f"{100 * np.mean(largest <= 10):.0f} %",
                f"{np.mean([r['at_centre'] for r in cases]):.2f}", len(cases),
            ]
        )  # fmt: skip
    return markdown_table(header, rows)


def per_set_lines(results: dict) -> list[str]:
    """One markdown row per test set at the probe's last checkpoint: where recognition works and where not."""
    header = ["test set", "mask Dice (mean)", "middle from the true centre: median (vox)",
              "middle of the largest component within 10 vox", "cases"]  # fmt: skip
    last, rows = results["checkpoints"][-1], []
    for name, cases in last["sets"].items():
        centre, largest = _middle_errors(cases)
        rows.append(
            [name, f"{np.mean([r['mask_dice'] for r in cases]):.3f}", f"{np.median(centre):.1f}",
             f"{100 * np.mean(largest <= 10):.0f} %", len(cases)]
        )  # fmt: skip
    return markdown_table(header, rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", action="append", help="dataset.json with labelled cases")
    parser.add_argument("--test", help="folder holding the test sets' dataset.json files")
    parser.add_argument("--tabulate", metavar="JSON", help="measure nothing: print this probe's summary")
    parser.add_argument("--init", help="locator folder or run checkpoint to continue from")
    parser.add_argument("--width", type=int, default=RecognitionConfig.width)
    parser.add_argument("--stride", type=int, choices=(1, 2), default=RecognitionConfig.stride)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--lr", type=float, default=3e-3, help="Adam's learning rate (default 3e-3)")
    parser.add_argument("--patch", type=int, default=48, help="training crop size, a multiple of 8")
    parser.add_argument("--every", type=int, default=1000)
    parser.add_argument("--cases", type=int, default=4, help="test cases per set")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", default="docs/benchmark_results/locator_recognition.json")
    args = parser.parse_args(argv)
    if args.tabulate:
        results = read_json(Path(args.tabulate))
        print("\n".join([*summary_lines(results), "", *per_set_lines(results)]))
        return 0
    if not args.data or not args.test:
        raise fail("--data and --test are required unless --tabulate is given")
    torch.set_num_threads(1)
    train = _grids([c for d in args.data for c in load_dataset(d).training])
    tests = {
        p.parent.name: _grids(load_dataset(p).test[: args.cases])
        for p in sorted(Path(args.test).glob("*/dataset.json"))
    }
    net = RecognitionNet(RecognitionConfig(width=args.width, stride=args.stride))
    state = _initial(args.init, args.width)
    if state is not None:
        net.load_state_dict(state)
    results = {
        "command": command_line(),
        "init": args.init,
        "stride": args.stride,
        "lr": args.lr,
        "patch": args.patch,
        "train_cases": len(train),
        "checkpoints": [],
    }
    done, t0 = 0, time.monotonic()
    results["checkpoints"].append({"extra_steps": 0, "sets": evaluate(net.eval(), tests)})
    write_json(Path(args.out), results)
    while done < args.steps:
        chunk = min(args.every, args.steps - done)
        net, losses = train_recognition(
            [g[0] for g in train],
            [g[1] for g in train],
            config=net.config,
            steps=chunk,
            device=CPU,
            seed=args.seed + done,
            lr=args.lr,
            patch=args.patch,
            network=net,
        )
        done += chunk
        results["checkpoints"].append(
            {
                "extra_steps": done,
                "loss_last_100": float(np.mean(losses[-100:])),
                "seconds": round(time.monotonic() - t0, 1),
                "sets": evaluate(net.eval(), tests),
            }
        )
        write_json(Path(args.out), results)
        print(f"{done} steps: loss {results['checkpoints'][-1]['loss_last_100']:.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
