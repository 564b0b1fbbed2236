"""``semisupseg train-locator``, ``locator-from-model`` and ``locate``: the instrument locators on the
command line (the DQN locators, and the segmentation locator built on a segmentation model)."""

from __future__ import annotations

import argparse
import json
import math
import time

from ..errors import InputError
from .arguments import _AMOUNT, _COUNT, _POSITIVE, _PROBABILITY, _default, _device, _number, _scales
from .train import (
    _FLAGS,
    _given,
    _resume_folder,
    _resumed_config,
    _run_trainer,
    _unless,
    refuse_interrupted_run,
)

MAX_REPLAY = 10**8
"""Largest replay memory ``train-locator --memory`` takes: 36 bytes a transition, 3.6 GB (2e9, 72 GB, ran
for minutes without a word)."""


def _locator_fields(args: argparse.Namespace) -> dict[str, object]:
    """The :class:`~SemiSupSegLib.locator.train.LocatorTrainConfig` fields given on the command line."""
    return _given(
        {
            "data": list(args.data) if args.data else None,
            "steps": args.steps,
            "agents": args.agents,
            "batch": args.batch,
            "lr": args.lr,
            "gamma": args.gamma,
            "double": _unless(args.no_double),
            "augment": _unless(args.no_augment),
            "dueling": _unless(args.no_dueling),
            "all_actions": args.all_actions,
            "keep_best": _unless(args.keep_last),
            "grid": args.grid,
            "crop": args.crop,
            "scales": args.scales,
            "levels": args.levels,
            "context": args.context,
            "recognition": _unless(args.points_only),
            "recognition_steps": args.recognition_steps,
            "recognition_width": args.recognition_width,
            "recognition_stride": None if args.recognition_stride is None else int(args.recognition_stride),
            "recognition_lr": args.recognition_lr,
            "recognition_patch": args.recognition_patch,
            "refine": _unless(args.no_refine),
            "width": args.width,
            "memory": args.memory,
            "starts": args.starts,
            "val_cases": args.val_cases,
            "val_every": args.val_every,
            "checkpoint_every": args.checkpoint_every,
            "seed": args.seed,
            "device": args.device,
            "name": args.name,
            "description": args.description,
        }
    )


def cmd_train_locator(args: argparse.Namespace) -> int:
    from ..locator.store import locators_dir
    from ..locator.train import LocatorTrainConfig, LocatorTrainer

    fields = _locator_fields(args)
    if args.resume:
        config = _resumed_config(
            args,
            LocatorTrainer.stored_config(_resume_folder(args)),
            fields,
            {**_FLAGS, "augment": "--no-augment"},
        )
    elif "data" not in fields:
        raise InputError("train-locator needs --data dataset.json (cases with a 'center')")
    else:
        name = args.name or f"locator-{time.strftime('%Y%m%d-%H%M%S')}"
        config = LocatorTrainConfig(out=args.out or str(locators_dir() / name), **fields)
    refuse_interrupted_run(args, LocatorTrainer, config.out)
    return _run_trainer(args, LocatorTrainer, config, "locator")


def cmd_locate(args: argparse.Namespace) -> int:
    from ..imageio import lps_to_ras, read_image
    from ..locator import load_locator, locate
    from ..training import resolve_device

    locator = load_locator(args.locator, resolve_device(args.device))
    found = locate(locator, read_image(args.input), starts=args.starts)
    if args.json:
        record = {
            "input": str(args.input),
            "locator": str(locator.path),
            "point_lps": list(found.point_lps),
            "point_ras": list(lps_to_ras(found.point_lps)),
            "index_xyz": list(found.index_xyz),
            "q_value": found.q_value if math.isfinite(found.q_value) else None,  # JSON has no NaN
            "confidence": found.confidence,
            "low_confidence": found.low_confidence,
            "found_by": found.found_by,
            "seconds": found.seconds,
        }
        print(json.dumps(record))
        return 0
    fmt = lambda values: ", ".join(f"{v:.2f}" for v in values)  # noqa: E731
    print(f"point (LPS mm): {fmt(found.point_lps)}")
    print(f"point (RAS mm): {fmt(lps_to_ras(found.point_lps))}")
    print(f"voxel (x, y, z): {fmt(found.index_xyz)}")
    print(f"{_confidence_text(found)}  ({found.seconds:.2f} s)")
    return 0


def cmd_locator_from_model(args: argparse.Namespace) -> int:
    from ..locator.by_segmentation import DEFAULT_MIN_VOLUME_MM3, save_segmentation_locator
    from ..locator.store import locators_dir

    volumes = _per_model(args.min_volume or [DEFAULT_MIN_VOLUME_MM3], "--min-volume", len(args.model))
    picks = _per_model(args.pick or ["heaviest"], "--pick", len(args.model))
    models = ", ".join(args.model)
    name = args.name or f"locator-{'+'.join(args.model)}".replace("/", "-").strip("-.")
    folder = save_segmentation_locator(
        args.out or locators_dir() / name,
        args.model,
        name=args.name,
        description=args.description or f"segmentation locator on model {models}",
        min_volume_mm3=volumes,
        pick=picks,
    )
    shown = ", ".join(f"{v:g}" for v in volumes)
    print(f"wrote segmentation locator {folder} (model {models}, min volume {shown} mm³)")
    return 0


def _per_model(values: list, flag: str, models: int) -> list:
    """A flag given once (for every --model) or once per --model, as one value per model."""
    if len(values) not in (1, models):
        raise InputError(f"give {flag} once, or once per --model ({models}), not {len(values)} times")
    return values * models if len(values) == 1 else values


def _confidence_text(found) -> str:
    from ..slicer_bridge import confidence_text

    return confidence_text(found.q_value, found.confidence, found.low_confidence, found.found_by)


def _load_locator(name: str, device):
    from ..locator import load_locator

    return load_locator(name, device)


def _locate_for_segmentation(locator_name: str, image, device) -> tuple[float, float, float]:
    from ..locator import load_locator, locate

    found = locate(load_locator(locator_name, device), image)
    point = ", ".join(f"{v:.2f}" for v in found.point_lps)
    print(f"located the instrument at ({point}) LPS mm ({_confidence_text(found)}, {found.seconds:.2f} s)")
    return found.point_lps


def _localisation_row(locator, image, case) -> tuple[dict, tuple[float, float, float]]:
    """Locate the instrument; the row has the error to the case's centre (if any) in voxels and mm."""
    import numpy as np

    from ..locator import locate
    from ..locator.locate import grid_index_of
    from ..metrics import localisation_error

    found = locate(locator, image)
    row = {"loc_seconds": found.seconds}
    if math.isfinite(found.q_value):  # a DQN agent's; a segmentation locator has none
        row["loc_q"] = found.q_value
    if found.confidence is not None:
        row["loc_confidence"] = found.confidence
    if case.center is not None:
        error = localisation_error(found.point_lps, case.center, image.GetSpacing())
        true_grid = grid_index_of(locator, image, case.center)
        row.update(
            loc_mm=error["mm"],
            loc_vox=error["vox"],
            loc_grid_vox=float(np.linalg.norm(np.subtract(found.grid_index_zyx, true_grid))),
        )
    return row, found.point_lps


def _add_train_locator(sub) -> None:
    sub.add_parser(
        "train-locator",
        help="train the instrument locator: recognition from masks, DQN search from centre points",
        description="Train a DQN locator: a small instrument-likelihood network learns from the voxel masks "
        "of the labelled cases, then the DQN learns the search from the centre points of every case "
        "(--points-only: the paper's agent, centre points only). --resume works as for train: only "
        "--steps may change.",
        populate=_train_locator_arguments,  # on first use: its defaults import torch (arguments._Parser)
    )


def _train_locator_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of ``semisupseg train-locator``, with defaults read from the locator's trainer."""
    from ..locator.train import LocatorTrainConfig as C

    p.add_argument(
        "--data",
        action="append",
        help="dataset.json whose training/unlabeled cases have a 'center' (repeatable)",
    )
    p.add_argument("--out", help="locator folder to write (default: the locators folder / NAME)")
    p.add_argument("--name", help="locator name (default: the folder name)")
    p.add_argument("--description")
    p.add_argument(
        "--steps", type=_COUNT, help=f"agent steps, one replay update each ({_default(C, 'steps')})"
    )
    p.add_argument("--agents", type=_COUNT, help=f"episodes run in parallel ({_default(C, 'agents')})")
    p.add_argument("--batch", type=_COUNT, help=f"replay batch ({_default(C, 'batch')})")
    p.add_argument("--lr", type=_POSITIVE, help=_default(C, "lr"))
    p.add_argument("--gamma", type=_PROBABILITY, help=_default(C, "gamma"))
    p.add_argument(
        "--no-double", action="store_true", default=None, help="plain DQN targets instead of Double DQN"
    )
    p.add_argument(
        "--no-augment", action="store_true", default=None, help="no mirroring of the volumes in x and y"
    )
    p.add_argument(
        "--no-dueling",
        action="store_true",
        default=None,
        help="one Q head instead of value + advantage heads",
    )
    p.add_argument(
        "--all-actions",
        action="store_true",
        default=None,
        help="TD targets for all 6 actions of each replayed state, not only the action taken (2x per step)",
    )
    p.add_argument(
        "--keep-last",
        action="store_true",
        default=None,
        help="write the last network, not the one of the best validation",
    )
    p.add_argument("--grid", type=_COUNT, help=f"volumes are resampled to GRID^3 ({_default(C, 'grid')})")
    p.add_argument("--crop", type=_COUNT, help=f"odd crop size in voxels ({_default(C, 'crop')})")
    p.add_argument("--scales", type=_scales, help=f"search steps, coarse to fine ({_default(C, 'scales')})")
    p.add_argument(
        "--levels",
        choices=("box", "peak"),
        help=f"what coarse crops sample: box-filtered volume, or running max of a band-pass "
        f"({_default(C, 'levels')})",
    )
    p.add_argument(
        "--context",
        action="store_true",
        default=None,
        help="add the crop one scale coarser to the state (1 more channel)",
    )
    p.add_argument(
        "--points-only",
        action="store_true",
        default=None,
        help="no recognition network: the paper's agent, learning from centre points only",
    )
    p.add_argument(
        "--recognition-steps",
        type=_COUNT,
        help=f"training steps of the instrument-likelihood network ({_default(C, 'recognition_steps')})",
    )
    p.add_argument(
        "--recognition-width",
        type=_COUNT,
        help=f"channels of the likelihood network's first layer ({_default(C, 'recognition_width')})",
    )
    p.add_argument(
        "--recognition-stride",
        choices=("1", "2"),  # text choices: a refusal quotes the value given, as every other flag's
        help="grid voxels per voxel of the likelihood map: 2, half resolution (fast), or 1, the grid's own "
        f"(finer, slower) ({_default(C, 'recognition_stride')})",
    )
    p.add_argument(
        "--recognition-lr",
        type=_POSITIVE,
        help="Adam's learning rate of the likelihood network (default: 1e-2 at stride 2, 1e-3 at stride 1)",
    )
    p.add_argument(
        "--recognition-patch",
        type=_COUNT,
        help="its training crop, a multiple of 8 (default: 48 at stride 2, 32 at stride 1)",
    )
    p.add_argument(
        "--no-refine",
        action="store_true",
        default=None,
        help="keep the search's point instead of moving it to the middle of the recognised instrument",
    )
    p.add_argument("--width", type=_COUNT, help=f"channels of the first convolution ({_default(C, 'width')})")
    p.add_argument(
        "--memory",
        type=_number(int, 1, MAX_REPLAY),
        help=f"replay capacity in transitions, at most {MAX_REPLAY:.0e} ({_default(C, 'memory')})",
    )
    p.add_argument(
        "--starts",
        type=_number(int, 1, 9),
        help=f"agents per volume at inference, 1-9 ({_default(C, 'starts')})",
    )
    p.add_argument("--val-cases", type=_AMOUNT, help="cases held out (default 10%%)")
    p.add_argument("--val-every", type=_COUNT, help=_default(C, "val_every"))
    p.add_argument("--checkpoint-every", type=_COUNT, help=_default(C, "checkpoint_every"))
    p.add_argument("--seed", type=_AMOUNT, help=_default(C, "seed"))
    p.add_argument("--device", type=_device, help=f"auto, cpu, cuda ({_default(C, 'device')})")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the interrupted run in --out (only --steps may change)",
    )
    p.add_argument("--progress", choices=("human", "json", "none"), default="human")
    p.set_defaults(func=cmd_train_locator)


def _add_locator_from_model(sub) -> None:
    sub.add_parser(
        "locator-from-model",
        help="make a segmentation locator: a segmentation model run over the volume finds the instrument",
        description="Write a locator folder (locator.json only, nothing is trained) that finds the "
        "instrument by running the segmentation model MODEL once over the whole volume and taking the "
        "middle (along its length) of its most probable component; below --min-volume the answer is the "
        "volume's centre with low confidence. Several --model (one per instrument, e.g. a catheter and a "
        "guide-wire model): they run in order and the first trusted find answers.",
        populate=_locator_from_model_arguments,  # on first use: the locator package imports torch
    )


def _locator_from_model_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of ``semisupseg locator-from-model``."""
    from ..locator.by_segmentation import DEFAULT_MIN_VOLUME_MM3

    p.add_argument(
        "--model", required=True, action="append", help="segmentation model name or folder (repeatable)"
    )
    p.add_argument("--out", help="locator folder to write (default: the locators folder / NAME)")
    p.add_argument("--name", help="locator name (default: locator-MODEL)")
    p.add_argument("--description")
    p.add_argument(
        "--min-volume",
        type=_number(float, 0.0, 1e9),
        action="append",
        help="mm³ of the found component below which the confidence is low: once for every model, or "
        f"once per --model in their order (default {DEFAULT_MIN_VOLUME_MM3:g})",
    )
    p.add_argument(
        "--pick",
        choices=("heaviest", "all"),
        action="append",
        help="heaviest: the middle of the most probable component along its length (default); all: the "
        "middle of every voxel above 0.5 along their principal axis (a thin instrument found in fragments, "
        "as a guide-wire); once, or once per --model",
    )
    p.set_defaults(func=cmd_locator_from_model)


def _add_locate(sub) -> None:
    p = sub.add_parser("locate", help="find the instrument centre point with a locator (DQN or segmentation)")
    p.add_argument("--locator", required=True, help="locator folder or name")
    p.add_argument("--input", required=True)
    p.add_argument(
        "--starts", type=_number(int, 1, 9), default=None, help="agents (1-9; default: the locator's)"
    )
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.add_argument("--device", type=_device, default="auto")
    p.set_defaults(func=cmd_locate)
