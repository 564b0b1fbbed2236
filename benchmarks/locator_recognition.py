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


def _grids(cases, target: str = "mask") -> list[tuple]:
    """(normalised grid, grid target, true centre on the grid) of labelled cases.

    ``target`` "mask": the instrument mask (what locator II's recognition learns); "centre": a ball of
    :data:`CENTRE_RADIUS` grid voxels around the annotated centre, so the map learns the annotated
    point itself rather than the tube whose middle only approximates it.
    """
    out = []
    for case in cases:
        volume = prepare_volume(read_image(case.image), GRID, (1,))
        centre = volume.geometry.to_index(case.center) if case.center is not None else None
        if target == "centre":
            mask = _ball(volume.levels[0].shape, centre, CENTRE_RADIUS)
        else:
            mask = grid_mask(read_image(case.label, what="label"), volume.geometry)
        out.append((volume.levels[0], mask, centre))
    return out


CENTRE_RADIUS = 3.0
PICKS = ("largest", "heaviest", "longest")  # how _component_middles chooses the component


def _ball(shape: tuple[int, ...], centre, radius: float) -> np.ndarray:
    grid = np.indices(shape, dtype=np.float32)
    distance = np.sqrt(sum((axis - c) ** 2 for axis, c in zip(grid, centre, strict=True)))
    return distance <= radius


def _initial(init: str | None, width: int) -> dict | None:
    if not init:
        return None
    path = Path(init)
    if (path / "weights.pt").is_file():
        return torch.load(path / "weights.pt", map_location="cpu", weights_only=True)["recognition"]
    return read_checkpoint(path)["recognition"]


def _recognised(likelihood: np.ndarray) -> tuple[np.ndarray, int, np.ndarray, np.ndarray]:
    """Components of ``likelihood >= 0.5``: (labels, count, voxels per component, summed likelihood)."""
    found = likelihood >= 0.5
    components, n = ndimage.label(found)
    labels = range(1, n + 1)
    size = np.asarray(ndimage.sum(found, components, labels))
    return components, n, size, np.asarray(ndimage.sum(likelihood, components, labels))


def _component_middles(likelihood: np.ndarray) -> dict[str, np.ndarray | None]:
    """The middle of the recognised component picked three ways (:data:`PICKS`): the largest (voxels),
    the heaviest (summed likelihood) and the longest (summed likelihood × the ratio of its first to
    second principal standard deviation: a tube, not a blob)."""
    components, n, size, mass = _recognised(likelihood)
    if n == 0:
        return dict.fromkeys(PICKS)
    scores = dict(zip(PICKS, (size, mass, mass * _elongations(components, n)), strict=True))
    picks = {}
    for name, score in scores.items():
        chosen = int(np.argmax(score)) + 1
        picks[name] = instrument_middle(likelihood, np.argwhere(components == chosen).mean(axis=0))
    return picks


def _heaviest_centroid(likelihood: np.ndarray) -> np.ndarray | None:
    """Likelihood-weighted centroid of the heaviest component: the located point of a centre map."""
    components, n, _, mass = _recognised(likelihood)
    if n == 0:
        return None
    return np.asarray(ndimage.center_of_mass(likelihood, components, int(np.argmax(mass)) + 1))


def _elongations(components: np.ndarray, n: int) -> np.ndarray:
    """Per component: first / second principal standard deviation of its voxels (1 for tiny ones)."""
    out = np.ones(n)
    for index, voxels in enumerate(ndimage.find_objects(components)):
        points = np.argwhere(components[voxels] == index + 1).astype(float)
        if len(points) >= 4:
            spread = np.sqrt(np.maximum(np.linalg.eigvalsh(np.cov(points.T)), 0.0))
            out[index] = spread[-1] / max(spread[-2], 0.5)
    return out


def evaluate(net: RecognitionNet, tests: dict) -> dict:
    """Per test set, per case: mask Dice, likelihood at the centre, middle errors (grid voxels)."""
    result = {}
    for name, grids in tests.items():
        rows = []
        for volume, mask, centre in grids:
            likelihood = likelihood_map(net, volume, CPU)
            from_centre, picks = instrument_middle(likelihood, centre), _component_middles(likelihood)
            picks_centroid = _heaviest_centroid(likelihood)
            error = lambda p, c=centre: None if p is None else float(np.linalg.norm(p - c))  # noqa: E731
            row = {
                "mask_dice": mask_overlap(likelihood, mask),
                "at_centre": point_confidence(likelihood, centre),
                "middle_from_centre_vox": error(from_centre),
                # a perfect map (the mask itself): how far the middle rule lands from the annotated centre
                "mask_middle_from_centre_vox": error(instrument_middle(mask.astype(np.float32), centre)),
            }
            row["centroid_of_heaviest_vox"] = error(picks_centroid)
            rows.append(row | {f"middle_of_{name}_vox": error(point) for name, point in picks.items()})
        result[name] = rows
    return result


def _errors(cases: list[dict], key: str) -> np.ndarray | None:
    """Every case's ``key`` error (grid voxels; a case without a component counts as a miss, 99), or None
    when a run recorded before that measurement existed lacks it."""
    if not all(key in r for r in cases):
        return None
    return np.array([99.0 if r[key] is None else r[key] for r in cases])


def _middle_errors(cases: list[dict]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Errors of the middle from the true centre and, per way of picking the component, of the picked
    component's middle (runs recorded before the heaviest and longest picks have only ``largest``)."""
    picks = {name: _errors(cases, f"middle_of_{name}_vox") for name in PICKS}
    return _errors(cases, "middle_from_centre_vox"), {k: v for k, v in picks.items() if v is not None}


def _oracle(cases: list[dict]) -> str:
    """Median error of the middle rule on the true mask ("–" for runs recorded before it was measured)."""
    errors = _errors(cases, "mask_middle_from_centre_vox")
    return "–" if errors is None else f"{np.median(errors):.1f}"


def _centroid(cases: list[dict]) -> list[str]:
    """Median error and share within 3 and 10 voxels of the heaviest component's centroid (the point a
    centre map gives); "–" for runs recorded before it was measured."""
    errors = _errors(cases, "centroid_of_heaviest_vox")
    if errors is None:
        return ["–"] * 3
    return [
        f"{np.median(errors):.1f}",
        f"{100 * np.mean(errors <= 3):.0f} %",
        f"{100 * np.mean(errors <= 10):.0f} %",
    ]


def _within_10(picks: dict[str, np.ndarray]) -> list[str]:
    return [f"{100 * np.mean(picks[name] <= 10):.0f} %" if name in picks else "–" for name in PICKS]


def summary_lines(results: dict) -> list[str]:
    """One markdown row per checkpoint of the probe, pooled over every test case."""
    header = [
        "extra steps", "last-100 loss", "mask Dice (mean)", "middle from the true centre: median (vox)",
        "within 3 vox", *[f"middle of the {name} component within 10 vox" for name in PICKS],
        "likelihood at the centre (mean)", "cases",
    ]  # fmt: skip
    rows = []
    for point in results["checkpoints"]:
        cases = [r for rows_ in point["sets"].values() for r in rows_]
        centre, picks = _middle_errors(cases)
        loss = point.get("loss_last_100")
        rows.append(
            [
                point["extra_steps"], "–" if loss is None else f"{loss:.3f}",
                f"{np.mean([r['mask_dice'] for r in cases]):.3f}", f"{np.median(centre):.1f}",
                f"{100 * np.mean(centre <= 3):.0f} %", *_within_10(picks),
                f"{np.mean([r['at_centre'] for r in cases]):.2f}", len(cases),
            ]
        )  # fmt: skip
    return markdown_table(header, rows)


def per_set_lines(results: dict) -> list[str]:
    """One markdown row per test set at the probe's last checkpoint: where recognition works and where not."""
    header = ["test set", "mask Dice (mean)", "middle from the true centre: median (vox)",
              *[f"middle of the {name} component within 10 vox" for name in PICKS],
              "middle of the true mask from the true centre: median (vox)",
              "centroid of the heaviest component: median (vox)", "within 3 vox", "within 10 vox",
              "cases"]  # fmt: skip
    last, rows = results["checkpoints"][-1], []
    for name, cases in last["sets"].items():
        centre, picks = _middle_errors(cases)
        rows.append(
            [name, f"{np.mean([r['mask_dice'] for r in cases]):.3f}", f"{np.median(centre):.1f}",
             *_within_10(picks), _oracle(cases), *_centroid(cases), len(cases)]
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
    parser.add_argument(
        "--target", choices=("mask", "centre"), default="mask", help="what the map learns (default mask)"
    )
    parser.add_argument("--save", help="write the trained network's weights here (a .pt file)")
    args = parser.parse_args(argv)
    if args.tabulate:
        results = read_json(Path(args.tabulate))
        print("\n".join([*summary_lines(results), "", *per_set_lines(results)]))
        return 0
    if not args.data or not args.test:
        raise fail("--data and --test are required unless --tabulate is given")
    torch.set_num_threads(1)
    train = _grids([c for d in args.data for c in load_dataset(d).training], args.target)
    tests = {
        p.parent.name: _grids(load_dataset(p).test[: args.cases], args.target)
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
        "target": args.target,
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
    if args.save:
        state = {"recognition": net.state_dict(), "config": vars(net.config), "step": done}
        torch.save(state, args.save)  # a checkpoint that --init continues from
    return 0


if __name__ == "__main__":
    sys.exit(main())
