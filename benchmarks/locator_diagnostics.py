"""Why a locator misses: the diagnostics behind "Why the locator misses" in docs/BENCHMARKS.md (a script).

Four measurements on phantom datasets written by ``semisupseg phantom`` (``--data``, repeatable; the
``test`` section is used unless ``--section`` says otherwise):

- ``visibility``: percentile of each scale level's value at the centre point among the field-of-view
  voxels of that level (is the instrument visible after the box filter of that scale?);
- ``contrast``: for each ``--levels`` kind and coarse scale, the AUC of a coarse sample's value for
  samples whose block holds instrument voxels against those that do not (field of view only; 0.5:
  the instrument is invisible at that scale, 1: every instrument block outshines every other), and the
  seconds ``prepare_volume`` takes with each kind (resampling, normalising and the coarse levels);
- ``probe``: a supervised probe of the Q-network (gamma 0, the rewards of all 6 actions regressed from
  states sampled uniformly around the target) trained on ``--train-data``; prints the share of held-out
  states whose greedy move gets closer, per scale;
- ``walks``: 30-step greedy walks of a locator at each scale from uniform starts around the target;
  median distance at the start, at the end, and of the best point on the walk;
- ``instrument``: distance from the located point to the nearest instrument voxel and to the centre;
- ``regress``: can the Q-network's feature extractor tell where the centre is at all? A supervised
  regressor (the Q-network with 3 outputs, one crop, no history) is trained on ``--train-data`` to
  predict the offset from a crop's centre to the target, for crops centred uniformly within ±radius
  (48 / 27 / 9 at scales 9 / 3 / 1) of it; prints the held-out median distance before and after. The
  ``--inputs`` it compares: ``box`` and ``peak`` (the locator's levels), ``tube`` (SimpleITK's
  Frangi-type objectness for bright 1-D structures, σ 1.5 grid voxels, then a running max) and
  ``label`` (the instrument mask itself: recognition given for free, so only the geometry is learnt).

Usage: ``OMP_NUM_THREADS=1 PYTHONPATH=SemiSupSeg python benchmarks/locator_diagnostics.py instrument
--locator L --data catheter/dataset.json --data guidewire/dataset.json [--cases 10]``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from scipy import ndimage

PACKAGE = Path(__file__).resolve().parents[1] / "SemiSupSeg"
if str(PACKAGE) not in sys.path:
    sys.path.insert(0, str(PACKAGE))

from SemiSupSegLib.dataset import load_dataset  # noqa: E402
from SemiSupSegLib.imageio import read_image  # noqa: E402
from SemiSupSegLib.locator import load_locator, locate  # noqa: E402
from SemiSupSegLib.locator.agent import DQNAgent, QNetwork, QNetworkConfig, q_values  # noqa: E402
from SemiSupSegLib.locator.environment import (  # noqa: E402
    HISTORY,
    CropSampler,
    GridVolume,
    grid_geometry,
    move,
    prepare_volume,
    resample_to_grid,
)
from SemiSupSegLib.locator.train import all_action_outcomes  # noqa: E402
from SemiSupSegLib.preprocessing import Preprocessing  # noqa: E402

GRID = 96


def cases(paths: list[str], section: str, count: int) -> list:
    return [c for p in paths for c in getattr(load_dataset(p), section)[:count]]


def visibility(args) -> None:
    for case in cases(args.data, args.section, args.cases):
        volume = prepare_volume(read_image(case.image), GRID, args.scales)
        target = tuple(np.rint(volume.geometry.to_index(case.center)).astype(int))
        row = []
        for scale, level in zip(args.scales, volume.levels, strict=True):
            fov = level[level != 0]
            row.append(f"scale {scale}: {100 * np.mean(fov < level[target]):.1f}")
        print(case.name, "centre percentile:", "; ".join(row))


def _auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """P(a positive sample > a negative one), from ranks (Mann-Whitney U)."""
    ranks = np.concatenate([positive, negative]).argsort().argsort().astype(float)
    n = len(positive)
    return float((ranks[:n].sum() - n * (n - 1) / 2) / (n * len(negative)))


def contrast(args) -> None:
    for case in cases(args.data, args.section, args.cases):
        image = read_image(case.image)
        geometry = grid_geometry(image, GRID)
        label = resample_to_grid(read_image(case.label), geometry) > 0.3
        fov = resample_to_grid(sitk.Cast(image > 0, sitk.sitkUInt8), geometry) > 0.5
        row = []
        for kind in args.levels.split(","):
            coarse = [s for s in args.scales if s > 1]
            t0 = time.perf_counter()
            levels = prepare_volume(image, GRID, coarse, kind).levels
            row.append(f"{kind} prepare {time.perf_counter() - t0:.2f} s")
            for scale, level in zip(coarse, levels, strict=True):
                block = ndimage.maximum_filter(label.astype(np.uint8), size=scale) > 0
                sample = (slice(scale // 2, None, scale),) * 3
                value, inside, seen = level[sample], block[sample], fov[sample]
                row.append(f"{kind} {scale}: {_auc(value[inside & seen], value[~inside & seen]):.3f}")
        print(case.name, "AUC", "; ".join(row))


def _sampler(case_list: list, scale: int) -> tuple[CropSampler, np.ndarray, np.ndarray]:
    volumes = [prepare_volume(read_image(c.image), GRID, (scale,)) for c in case_list]
    targets = np.array([v.geometry.to_index(c.center) for v, c in zip(volumes, case_list, strict=True)])
    spacing = np.array([v.geometry.spacing_zyx for v in volumes])
    return CropSampler(volumes, (scale,), 21), targets, spacing


def _probe_batch(data: tuple, scale: int, radius: int, n: int, rng: np.random.Generator) -> tuple:
    """States around the targets of ``data`` (sampler, targets, spacing) and the rewards of all 6 actions."""
    sampler, targets, spacing = data
    ids = rng.integers(0, len(targets), n)
    pos = np.clip(np.rint(targets[ids] + rng.uniform(-radius, radius, (n, 3))), 0, GRID - 1).astype(np.int64)
    states = sampler.states(ids, np.repeat(pos[:, None], HISTORY, 1), np.zeros(n, np.int64))
    return states, all_action_outcomes(pos, np.full(n, scale), targets[ids], spacing[ids], GRID)[1]


def probe(args) -> None:
    rng = np.random.default_rng(0)
    for scale, radius in zip(args.scales, (48, 27, 9)[-len(args.scales) :], strict=True):
        train = _sampler(cases(args.train_data, "training", 10**6), scale)
        test = _sampler(cases(args.data, args.section, args.cases), scale)
        agent = DQNAgent(QNetworkConfig(crop=21, n_scales=1), torch.device("cpu"), lr=1e-3, gamma=0.0)
        for _ in range(args.probe_steps):
            states, rewards = _probe_batch(train, scale, radius, 32, rng)
            agent.update_all_actions(states, None, rewards, np.zeros(32, np.int64))
        closer = {}
        for name, data in (("training", train), ("held-out", test)):
            states, rewards = _probe_batch(data, scale, radius, 512, rng)
            best = q_values(agent.online, states, np.zeros(512, np.int64), agent.device).argmax(1)
            closer[name] = 100 * np.mean(rewards[np.arange(512), best] > 0)
        print(
            f"scale {scale} (starts within ±{radius}): greedy move closer "
            f"{closer['training']:.0f} % training, {closer['held-out']:.0f} % held-out states"
        )


def walks(args) -> None:
    locator = load_locator(args.locator)
    rng, agents, results = np.random.default_rng(0), 16, {}
    for case in cases(args.data, args.section, args.cases):
        volume = prepare_volume(read_image(case.image), locator.grid, locator.scales)
        target = volume.geometry.to_index(case.center)
        sampler = CropSampler([volume], locator.scales, locator.crop)
        for k, scale in enumerate(locator.scales):
            radius = 48 if k == 0 else 3 * locator.scales[k - 1]
            pos = np.clip(np.rint(target + rng.uniform(-radius, radius, (agents, 3))), 0, locator.grid - 1)
            pos = pos.astype(np.int64)
            history, trail = np.repeat(pos[:, None], HISTORY, 1), [pos]
            for _ in range(30):
                states = sampler.states(np.zeros(agents, np.int64), history, np.full(agents, k))
                q = q_values(locator.network, states, np.full(agents, k), locator.device)
                pos, _ = move(pos, q.argmax(1), np.full(agents, scale), locator.grid)
                history = np.concatenate([history[:, 1:], pos[:, None]], axis=1)
                trail.append(pos)
            error = np.linalg.norm(np.array(trail) - target, axis=-1)  # [31, agents]
            for name, values in (("start", error[0]), ("end", error[-1]), ("best", error.min(0))):
                results.setdefault((scale, name), []).extend(values)
    for scale in locator.scales:
        row = {name: round(float(np.median(results[(scale, name)])), 1) for name in ("start", "end", "best")}
        print(f"scale {scale}: median distance (grid voxels) {row}")


def instrument(args) -> None:
    locator = load_locator(args.locator)
    for path in args.data:
        to_tube, to_centre = [], []
        for case in getattr(load_dataset(path), args.section)[: args.cases]:
            image, label = read_image(case.image), sitk.ReadImage(str(case.label))
            found = locate(locator, image)
            grid = grid_geometry(image, locator.grid)
            mask = sitk.GetArrayFromImage(label) > 0
            distance_mm = ndimage.distance_transform_edt(~mask, sampling=label.GetSpacing()[::-1])
            index = np.array(label.TransformPhysicalPointToIndex(tuple(found.point_lps)))[::-1]
            index = np.clip(index, 0, np.array(mask.shape) - 1)
            to_tube.append(distance_mm[tuple(index)] / grid.spacing.mean())
            to_centre.append(np.linalg.norm(grid.to_index(found.point_lps) - grid.to_index(case.center)))
        to_tube = np.array(to_tube)
        print(
            f"{path}: to the centre median {np.median(to_centre):.1f} grid voxels; to the instrument "
            f"median {np.median(to_tube):.1f}, within 3 voxels {100 * np.mean(to_tube <= 3):.0f} %"
        )


REGRESS_RADIUS = {9: 48, 3: 27, 1: 9}


def _regress_level(case, scale: int, inputs: str) -> GridVolume:
    """One-level volume for ``regress``: the locator's level, a tubularity map or the mask itself."""
    image = read_image(case.image)
    if inputs in ("box", "peak"):
        return prepare_volume(image, GRID, (scale,), inputs)
    geometry = grid_geometry(image, GRID)
    if inputs == "label":
        array = (resample_to_grid(read_image(case.label), geometry) > 0.3).astype(np.float32)
    else:
        normalised = Preprocessing().normalize(resample_to_grid(image, geometry))
        smooth = sitk.SmoothingRecursiveGaussian(sitk.GetImageFromArray(normalised), 1.5)
        tube = sitk.GetArrayFromImage(sitk.ObjectnessMeasure(smooth, objectDimension=1, brightObject=True))
        array = tube / (np.percentile(tube, 99.9) + 1e-6)
    level = array if scale == 1 else ndimage.maximum_filter(array, size=scale)
    return GridVolume(geometry, level[None].astype(np.float32))


def _regress_batch(sampler, targets, radius, n, rng, augment) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ids = rng.integers(0, len(targets), n)
    target = targets[ids]
    pos = np.clip(np.rint(target + rng.uniform(-radius, radius, (n, 3))), 0, GRID - 1).astype(np.int64)
    flips = None
    if augment:  # mirror in y and x, as the locator's training does
        flips = np.stack([np.zeros(n, bool), rng.random(n) < 0.5, rng.random(n) < 0.5], axis=1)
        target = np.where(flips, GRID - 1 - target, target)
    return sampler.crops(ids, pos, np.zeros(n, np.int64), flips)[:, None], pos, target


def _regress_sets(args, scale: int, inputs: str) -> dict[str, tuple[CropSampler, np.ndarray]]:
    sets = {}
    for name, paths, section, count in (
        ("training", args.train_data, "training", 10**6),
        ("held-out", args.data, args.section, args.cases),
    ):
        found = cases(paths, section, count)
        volumes = [_regress_level(c, scale, inputs) for c in found]
        targets = np.array([v.geometry.to_index(c.center) for v, c in zip(volumes, found, strict=True)])
        sets[name] = (CropSampler(volumes, (scale,), 21, dtype=np.float16), targets)
    return sets


def _train_regressor(data: tuple, radius: int, steps: int, rng: np.random.Generator) -> QNetwork:
    network = QNetwork(QNetworkConfig(crop=21, history=1, n_scales=1, actions=3, dueling=0))
    optimizer = torch.optim.Adam(network.parameters(), lr=1e-3)
    zeros = torch.zeros(32, dtype=torch.long)
    for _ in range(steps):
        crops, pos, target = _regress_batch(*data, radius, 32, rng, augment=True)
        offset = torch.from_numpy(((target - pos) / radius).astype(np.float32))
        loss = torch.nn.functional.smooth_l1_loss(network(torch.from_numpy(crops), zeros), offset)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return network


def regress(args) -> None:
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    for scale in args.scales:
        radius = REGRESS_RADIUS[scale]
        for inputs in args.inputs.split(","):
            sets = _regress_sets(args, scale, inputs)
            network = _train_regressor(sets["training"], radius, args.probe_steps, rng)
            crops, pos, target = _regress_batch(*sets["held-out"], radius, 512, rng, augment=False)
            with torch.no_grad():
                guess = network(torch.from_numpy(crops), torch.zeros(512, dtype=torch.long)).numpy()
            before = np.median(np.linalg.norm(pos - target, axis=1))
            after = np.median(np.linalg.norm(pos + guess * radius - target, axis=1))
            print(f"scale {scale}, input {inputs}: held-out median distance {before:.1f} -> {after:.1f} vox")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["visibility", "contrast", "probe", "walks", "instrument", "regress"])
    p.add_argument("--data", action="append", required=True, help="dataset.json to evaluate (repeatable)")
    p.add_argument("--train-data", action="append", help="probe: dataset.json to train on (repeatable)")
    p.add_argument("--section", default="test")
    p.add_argument("--cases", type=int, default=4, help="cases per dataset")
    p.add_argument("--locator", help="walks, instrument: locator folder or name")
    p.add_argument("--scales", default="9,3,1", help="visibility, probe: scales")
    p.add_argument("--probe-steps", type=int, default=3000, help="probe, regress: updates of 32")
    p.add_argument("--inputs", default="box,peak,tube,label", help="regress: inputs to compare")
    p.add_argument("--levels", default="box,peak", help="contrast: level kinds to compare")
    args = p.parse_args(argv)
    args.scales = tuple(int(s) for s in args.scales.split(","))
    torch.set_num_threads(1)
    commands = {
        "visibility": visibility,
        "contrast": contrast,
        "probe": probe,
        "walks": walks,
        "instrument": instrument,
        "regress": regress,
    }
    commands[args.what](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
