"""The ``semisupseg`` command line: everything the Slicer panels do, headless.

Run ``semisupseg COMMAND --help`` for each command's options. Errors on bad input are printed
as one line naming the problem, with exit status 2; a cancelled training exits with 130.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from . import __version__
from .errors import InputError, SemiSupSegError, TrainingCancelled

DEMO_MODEL = "phantom-catheter"
DEMO_LOCATOR = "phantom-locator"


# --- argument helpers ---------------------------------------------------------------------------
def _triple(kind: type, what: str):
    def parse(text: str):
        parts = [p for p in text.replace(";", ",").split(",") if p.strip()]
        if len(parts) == 1 and kind is int:
            parts = parts * 3
        try:
            values = tuple(kind(p) for p in parts)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what} must be numbers like 1,2,3; got {text!r}") from None
        if len(values) != 3:
            raise argparse.ArgumentTypeError(f"{what} needs 3 values (x,y,z); got {text!r}")
        return values

    return parse


def _method_option(text: str) -> tuple[str, object]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"method option must be KEY=VALUE; got {text!r}")
    key, value = text.split("=", 1)
    try:
        return key.replace("-", "_"), json.loads(value)
    except json.JSONDecodeError:
        return key.replace("-", "_"), value


# --- commands -----------------------------------------------------------------------------------
def cmd_phantom(args: argparse.Namespace) -> int:
    from .phantom import write_phantom_dataset

    def progress(done: int, total: int) -> None:
        print(f"\rwriting phantom cases {done}/{total}", end="", file=sys.stderr, flush=True)

    path = write_phantom_dataset(
        args.out,
        cases=args.cases,
        seed=args.seed,
        kind=args.kind,
        size=args.size,
        unlabeled=args.unlabeled,
        test=args.test,
        spacing=args.spacing,
        progress=progress,
    )
    print(file=sys.stderr)
    print(f"wrote {path}")
    return 0


def _train_config(args: argparse.Namespace):
    from .model_store import models_dir
    from .training import TrainConfig

    out = args.out or str(models_dir() / (args.name or f"{args.method}-{time.strftime('%Y%m%d-%H%M%S')}"))
    return TrainConfig(
        data=args.data,
        out=out,
        method=args.method,
        steps=args.steps,
        batch=args.batch,
        patch_size=args.patch,
        width=args.width,
        dropout=args.dropout,
        lr=args.lr,
        seed=args.seed,
        val_cases=args.val_cases,
        val_every=args.val_every,
        checkpoint_every=args.checkpoint_every,
        target_spacing=args.target_spacing,
        translation=args.translation,
        augment=not args.no_augment,
        device=args.device,
        precision=args.precision,
        init=args.init,
        name=args.name,
        description=args.description,
        method_options=dict(args.option or []),
    )


def _run_trainer(args: argparse.Namespace, trainer_cls, make_config, what: str, data_hint: str) -> int:
    """Shared by ``train`` and ``train-locator``: new run or ``--resume``, errors as protocol events."""
    from .progress import make_reporter

    reporter = make_reporter(args.progress)
    if args.resume:
        if not args.out:
            raise InputError("--resume needs --out, the folder of the interrupted run")
        config = trainer_cls.stored_config(args.out)
    else:
        if not args.data:
            raise InputError(f"{args.command} needs --data {data_hint}")
        config = make_config(args)
    try:
        folder = trainer_cls(config, reporter).run(resume=args.resume)
    except SemiSupSegError as exc:
        if not isinstance(exc, TrainingCancelled):
            reporter.emit("error", message=str(exc))
        raise
    if args.progress != "json":
        print(f"{what} written to {folder}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from .training import Trainer

    return _run_trainer(args, Trainer, _train_config, "model", "dataset.json")


def _locator_config(args: argparse.Namespace):
    from .locator.store import locators_dir
    from .locator.train import LocatorTrainConfig

    out = args.out or str(locators_dir() / (args.name or f"locator-{time.strftime('%Y%m%d-%H%M%S')}"))
    return LocatorTrainConfig(
        data=list(args.data),
        out=out,
        steps=args.steps,
        agents=args.agents,
        batch=args.batch,
        lr=args.lr,
        gamma=args.gamma,
        double=not args.no_double,
        augment=not args.no_augment,
        dueling=not args.no_dueling,
        all_actions=args.all_actions,
        keep_best=not args.keep_last,
        grid=args.grid,
        crop=args.crop,
        scales=tuple(args.scales),
        levels=args.levels,
        context=args.context,
        width=args.width,
        memory=args.memory,
        starts=args.starts,
        val_cases=args.val_cases,
        val_every=args.val_every,
        checkpoint_every=args.checkpoint_every,
        seed=args.seed,
        device=args.device,
        name=args.name,
        description=args.description,
    )


def cmd_train_locator(args: argparse.Namespace) -> int:
    from .locator.train import LocatorTrainer

    return _run_trainer(
        args, LocatorTrainer, _locator_config, "locator", "dataset.json (cases with a 'center')"
    )


def cmd_locate(args: argparse.Namespace) -> int:
    from .imageio import lps_to_ras, read_image
    from .locator import load_locator, locate
    from .training import resolve_device

    locator = load_locator(args.locator, resolve_device(args.device))
    found = locate(locator, read_image(args.input), starts=args.starts)
    if args.json:
        record = {
            "input": str(args.input),
            "locator": str(locator.path),
            "point_lps": list(found.point_lps),
            "point_ras": list(lps_to_ras(found.point_lps)),
            "index_xyz": list(found.index_xyz),
            "q_value": found.q_value,
            "seconds": found.seconds,
        }
        print(json.dumps(record))
        return 0
    fmt = lambda values: ", ".join(f"{v:.2f}" for v in values)  # noqa: E731
    print(f"point (LPS mm): {fmt(found.point_lps)}")
    print(f"point (RAS mm): {fmt(lps_to_ras(found.point_lps))}")
    print(f"voxel (x, y, z): {fmt(found.index_xyz)}")
    print(f"confidence (final Q): {found.q_value:.4f}  ({found.seconds:.2f} s)")
    return 0


def _read_center(args: argparse.Namespace):
    if args.center is None:
        return None
    from .imageio import ras_to_lps

    return ras_to_lps(args.center) if args.ras else args.center


def cmd_segment(args: argparse.Namespace) -> int:
    from .imageio import read_image, write_image
    from .inference import segment
    from .model_store import load_model
    from .training import resolve_device

    device = resolve_device(args.device)
    model = load_model(args.model, device)
    image = read_image(args.input)
    center = _read_center(args)
    if center is None and args.locator:
        center = _locate_for_segmentation(args.locator, image, device)
    result = segment(
        model,
        image,
        center,
        mc_samples=args.mc_samples if args.uncertainty else 0,
        precision=args.precision,
        threshold=args.threshold,
    )
    write_image(result.label, args.output)
    if args.probability:
        write_image(result.probability, args.probability)
    if args.uncertainty:
        write_image(result.uncertainty, args.uncertainty)
    print(f"segmented {args.input} in {result.seconds:.2f} s ({result.mode}); wrote {args.output}")
    return 0


def _locate_for_segmentation(locator_name: str, image, device) -> tuple[float, float, float]:
    from .locator import load_locator, locate

    found = locate(load_locator(locator_name, device), image)
    point = ", ".join(f"{v:.2f}" for v in found.point_lps)
    print(f"located the instrument at ({point}) LPS mm (Q {found.q_value:.3f}, {found.seconds:.2f} s)")
    return found.point_lps


def _localisation_row(locator, image, case) -> tuple[dict, tuple[float, float, float]]:
    """Locate the instrument; the row has the error to the case's centre (if any) in voxels and mm."""
    import numpy as np

    from .locator import locate
    from .locator.locate import grid_index_of
    from .metrics import localisation_error

    found = locate(locator, image)
    row = {"loc_q": found.q_value, "loc_seconds": found.seconds}
    if case.center is not None:
        error = localisation_error(found.point_lps, case.center, image.GetSpacing())
        true_grid = grid_index_of(locator, image, case.center)
        row.update(
            loc_mm=error["mm"],
            loc_vox=error["vox"],
            loc_grid_vox=float(np.linalg.norm(np.subtract(found.grid_index_zyx, true_grid))),
        )
    return row, found.point_lps


def _evaluate_cases(
    model, cases, use_center: bool, precision: str, pred_dir: Path | None, locator=None
) -> list[dict]:
    import SimpleITK as sitk

    from .imageio import read_image, write_image
    from .inference import segment
    from .metrics import segmentation_metrics

    rows = []
    for case in cases:
        image = read_image(case.image)
        reference = read_image(case.label, what="label")
        located, center = {}, case.center if use_center else None
        if locator is not None:
            located, center = _localisation_row(locator, image, case)
        result = segment(model, image, center, precision=precision)
        pred = sitk.GetArrayViewFromImage(result.label) > 0
        ref = sitk.GetArrayViewFromImage(reference) > 0
        row = {"case": case.name, **segmentation_metrics(pred, ref, image.GetSpacing()[::-1])}
        row["seconds"] = result.seconds
        row.update(located)
        rows.append(row)
        if pred_dir is not None:
            write_image(result.label, pred_dir / f"{case.name}.nii.gz")
        where = f"; located {row['loc_vox']:.1f} vox, {row['loc_mm']:.1f} mm off" if "loc_mm" in row else ""
        dice, hd95 = row["dice"], row["hd95_mm"]
        print(
            f"{case.name}: Dice {dice:.3f}  HD95 {hd95:.2f} mm  {row['seconds']:.2f} s{where}",
            file=sys.stderr,
        )
    return rows


EVALUATE_KEYS = (
    "dice",
    "jaccard",
    "hd95_mm",
    "asd_mm",
    "hd95_vox",
    "asd_vox",
    "seconds",
    "loc_mm",
    "loc_vox",
    "loc_grid_vox",
    "loc_seconds",
)


def _load_locator(name: str, device):
    from .locator import load_locator

    return load_locator(name, device)


def _print_summary(summary: dict, keys: Sequence[str]) -> None:
    for key in keys:
        if key in summary:
            s = summary[key]
            print(f"{key:>10}: {s['mean']:.4f} ± {s['std']:.4f}  (n={s['n']})")


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .atomic import atomic_write_json
    from .dataset import load_dataset
    from .metrics import summarize
    from .model_store import load_model
    from .training import resolve_device

    dataset = load_dataset(args.data)
    cases = [c for c in getattr(dataset, args.section) if c.label is not None]
    if not cases:
        raise InputError(f"{args.data} has no labelled cases in its '{args.section}' section to evaluate")
    if args.locator and args.no_center:
        raise InputError("--no-center (sliding window) and --locator (located centre) exclude each other")
    device = resolve_device(args.device)
    model = load_model(args.model, device)
    locator = _load_locator(args.locator, device) if args.locator else None
    pred_dir = Path(args.predictions) if args.predictions else None
    rows = _evaluate_cases(model, cases, not args.no_center, args.precision, pred_dir, locator)
    summary = summarize(rows)
    _print_summary(summary, EVALUATE_KEYS)
    if args.json:
        atomic_write_json(
            args.json,
            {
                "model": str(model.path),
                "data": str(args.data),
                "section": args.section,
                "cases": rows,
                "summary": summary,
            },
        )
        print(f"wrote {args.json}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from .model_store import list_models, models_dir

    models = list_models()
    if args.json:
        print(json.dumps(models, indent=2))
        return 0
    print(f"models folder: {models_dir()}")
    if not models:
        print("no models found")
    for m in models:
        dice = (m.get("metrics") or {}).get("validation", {}).get("dice")
        dice_text = f"  val Dice {dice:.3f}" if isinstance(dice, (int, float)) else ""
        print(f"{m['name']:<28} {m['method']:<14} {m['origin']:<8}{dice_text}  {m['path']}")
    return 0


def cmd_methods(args: argparse.Namespace) -> int:
    from .methods import describe_methods

    methods = describe_methods()
    if args.json:
        print(json.dumps(methods, indent=2))
    else:
        for m in methods:
            print(f"{m['name']:<16} {m['description']}")
    return 0


def _demo_locator(args: argparse.Namespace, device):
    """The demo's locator: ``--locator``, else the shipped one if present; none with ``--true-center``."""
    from .locator.store import LOCATOR_JSON
    from .model_store import PRETRAINED_DIR

    if args.true_center:
        return None
    if args.locator:
        return _load_locator(args.locator, device)
    shipped = PRETRAINED_DIR / DEMO_LOCATOR
    return _load_locator(str(shipped), device) if (shipped / LOCATOR_JSON).is_file() else None


def cmd_demo(args: argparse.Namespace) -> int:
    from .atomic import atomic_write_json
    from .dataset import load_dataset
    from .metrics import summarize
    from .model_store import load_model
    from .phantom import write_phantom_dataset
    from .training import resolve_device

    out = Path(args.out)
    t0 = time.monotonic()
    print(f"generating {args.cases} phantom catheter volumes ({args.size}^3, seed {args.seed}) in {out}")
    data = write_phantom_dataset(out / "data", cases=0, test=args.cases, seed=args.seed, size=args.size)
    device = resolve_device(args.device)
    model = load_model(args.model, device)
    locator = _demo_locator(args, device)
    where = f"centre points found by locator '{locator.name}'" if locator else "the true centre points"
    print(f"segmenting with model '{model.name}' ({model.meta.get('method')}) from {where}")
    rows = _evaluate_cases(
        model, load_dataset(data).test, True, args.precision, out / "segmentations", locator
    )
    summary = summarize(rows)
    if locator is not None:
        loc = summary["loc_vox"]
        print(f"localisation error {loc['mean']:.1f} ± {loc['std']:.1f} voxels (no centre given)")
    atomic_write_json(out / "results.json", {"model": str(model.path), "cases": rows, "summary": summary})
    print(
        f"Dice {summary['dice']['mean']:.3f} ± {summary['dice']['std']:.3f} over {len(rows)} unseen volumes; "
        f"{summary['seconds']['mean']:.2f} s per volume; total {time.monotonic() - t0:.1f} s"
    )
    print(f"results in {out} (segmentations/, results.json)")
    return 0


# --- parser -------------------------------------------------------------------------------------
def _add_phantom(sub) -> None:
    p = sub.add_parser("phantom", help="write synthetic 3D-ultrasound instrument volumes and a dataset.json")
    p.add_argument("out", help="output folder")
    p.add_argument("--cases", type=int, default=4, help="labelled training cases (default 4)")
    p.add_argument("--unlabeled", type=int, default=0, help="unlabelled cases (default 0)")
    p.add_argument("--test", type=int, default=0, help="labelled test cases (default 0)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--kind", choices=("catheter", "guidewire"), default="catheter")
    p.add_argument("--size", type=int, default=160, help="voxels per axis (default 160)")
    p.add_argument(
        "--spacing", type=float, default=None, help="mm per voxel (default: random 0.4-0.7 per case)"
    )
    p.set_defaults(func=cmd_phantom)


def _add_train(sub) -> None:
    from .methods import METHODS

    p = sub.add_parser("train", help="train or fine-tune a segmentation model")
    p.add_argument("--data", help="dataset.json (training + unlabeled sections)")
    p.add_argument("--method", default="supervised", choices=sorted(METHODS))
    p.add_argument("--out", help="model folder to write (default: the models folder / NAME)")
    p.add_argument("--name", help="model name (default: the folder name)")
    p.add_argument("--description", default="")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch", type=int, default=2, help="labelled patches per step (as many unlabelled)")
    p.add_argument("--patch", type=_triple(int, "--patch"), default=(48, 48, 48), help="patch size z,y,x")
    p.add_argument("--width", type=float, default=1.0, help="channel width multiplier (1.0 = paper)")
    p.add_argument("--dropout", type=float, default=0.5)
    p.add_argument("--lr", type=float, default=None, help="learning rate (default: the method's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val-cases", type=int, default=None, help="labelled cases held out (default 20%%)")
    p.add_argument("--val-every", type=int, default=200)
    p.add_argument("--checkpoint-every", type=int, default=100)
    p.add_argument(
        "--target-spacing",
        type=_triple(float, "--target-spacing"),
        default=None,
        help="x,y,z mm (default: median spacing of the training images)",
    )
    p.add_argument("--translation", type=int, default=32, help="random shift of patches around the centre")
    p.add_argument("--no-augment", action="store_true")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda")
    p.add_argument(
        "--precision",
        choices=("fp32", "bf16", "auto"),
        default="fp32",
        help="bf16 autocast halves a CPU step on CPUs with AVX512-BF16/AMX (default fp32)",
    )
    p.add_argument("--init", help="fine-tune from this model (folder or name)")
    p.add_argument("--option", type=_method_option, action="append", help="method option KEY=VALUE")
    p.add_argument("--resume", action="store_true", help="continue the interrupted run in --out")
    p.add_argument("--progress", choices=("human", "json", "none"), default="human")
    p.set_defaults(func=cmd_train)


def _scales(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(p) for p in text.replace(";", ",").split(",") if p.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"--scales must be integers like 9,3,1; got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("--scales needs at least one step size")
    return values


def _add_train_locator(sub) -> None:
    p = sub.add_parser(
        "train-locator", help="train a DQN locator of the instrument centre from centre points"
    )
    p.add_argument(
        "--data",
        action="append",
        help="dataset.json whose training/unlabeled cases have a 'center' (repeatable)",
    )
    p.add_argument("--out", help="locator folder to write (default: the locators folder / NAME)")
    p.add_argument("--name", help="locator name (default: the folder name)")
    p.add_argument("--description", default="")
    p.add_argument("--steps", type=int, default=8000, help="agent steps, one replay update each (8000)")
    p.add_argument("--agents", type=int, default=8, help="episodes run in parallel (8)")
    p.add_argument("--batch", type=int, default=32, help="replay batch (32)")
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--gamma", type=float, default=0.9)
    p.add_argument("--no-double", action="store_true", help="plain DQN targets instead of Double DQN")
    p.add_argument("--no-augment", action="store_true", help="no mirroring of the volumes in x and y")
    p.add_argument("--no-dueling", action="store_true", help="one Q head instead of value + advantage heads")
    p.add_argument(
        "--all-actions",
        action="store_true",
        help="TD targets for all 6 actions of each replayed state, not only the action taken (2x per step)",
    )
    p.add_argument(
        "--keep-last", action="store_true", help="write the last network, not the one of the best validation"
    )
    p.add_argument("--grid", type=int, default=96, help="volumes are resampled to GRID^3 (96)")
    p.add_argument("--crop", type=int, default=21, help="odd crop size in voxels (21)")
    p.add_argument("--scales", type=_scales, default=(9, 3, 1), help="search steps, coarse to fine (9,3,1)")
    p.add_argument(
        "--levels",
        choices=("box", "peak"),
        default="box",
        help="what coarse crops sample: box-filtered volume, or running max of a band-pass (box)",
    )
    p.add_argument(
        "--context", action="store_true", help="add the crop one scale coarser to the state (1 more channel)"
    )
    p.add_argument("--width", type=int, default=16, help="channels of the first convolution (16)")
    p.add_argument("--memory", type=int, default=100_000, help="replay capacity in transitions")
    p.add_argument("--starts", type=int, default=9, help="agents per volume at inference, 1-9 (9)")
    p.add_argument("--val-cases", type=int, default=None, help="cases held out (default 10%%)")
    p.add_argument("--val-every", type=int, default=500)
    p.add_argument("--checkpoint-every", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda")
    p.add_argument("--resume", action="store_true", help="continue the interrupted run in --out")
    p.add_argument("--progress", choices=("human", "json", "none"), default="human")
    p.set_defaults(func=cmd_train_locator)


def _add_locate(sub) -> None:
    p = sub.add_parser("locate", help="find the instrument centre point with a DQN locator")
    p.add_argument("--locator", required=True, help="locator folder or name")
    p.add_argument("--input", required=True)
    p.add_argument("--starts", type=int, default=None, help="agents (1-9; default: the locator's)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_locate)


def _add_segment(sub) -> None:
    p = sub.add_parser("segment", help="segment the instrument in one volume")
    p.add_argument("--model", required=True, help="model folder or name")
    p.add_argument("--input", required=True)
    p.add_argument("--output", required=True, help="label file to write (.nrrd, .nii.gz, .mha)")
    p.add_argument("--center", type=_triple(float, "--center"), help="instrument centre x,y,z in LPS mm")
    p.add_argument("--ras", action="store_true", help="--center is in RAS (Slicer) instead of LPS")
    p.add_argument("--locator", help="without --center: find the centre with this DQN locator first")
    p.add_argument("--probability", help="also write the foreground probability")
    p.add_argument("--uncertainty", help="also write the Monte-Carlo uncertainty (entropy)")
    p.add_argument("--mc-samples", type=int, default=8)
    p.add_argument("--threshold", type=float, default=0.5)
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_segment)


def _add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="segment labelled cases and report Dice, Jaccard, HD95, ASD")
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True, help="dataset.json")
    p.add_argument("--section", choices=("test", "training"), default="test")
    p.add_argument("--no-center", action="store_true", help="ignore centre points: sliding window")
    p.add_argument(
        "--locator", help="segment from the centre this DQN locator finds; report its localisation error"
    )
    p.add_argument("--json", help="write per-case metrics and the summary here")
    p.add_argument("--predictions", help="write the segmentations into this folder")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_evaluate)


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="segment fresh phantom volumes with the shipped model")
    p.add_argument("--out", default="semisupseg-demo")
    p.add_argument("--cases", type=int, default=4)
    p.add_argument("--seed", type=int, default=2026, help="phantom seed (the shipped model never saw 2026)")
    p.add_argument("--size", type=int, default=160)
    p.add_argument("--model", default=DEMO_MODEL)
    p.add_argument("--locator", help=f"locator finding the centres (default: the shipped '{DEMO_LOCATOR}')")
    p.add_argument("--true-center", action="store_true", help="use the phantoms' true centres, no locator")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_demo)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="semisupseg", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"semisupseg {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (
        _add_phantom,
        _add_train,
        _add_train_locator,
        _add_locate,
        _add_segment,
        _add_evaluate,
        _add_demo,
    ):
        add(sub)
    models = sub.add_parser("models", help="list the models").add_subparsers(dest="action", required=True)
    listing = models.add_parser("list", help="list the models in the models folder and the shipped ones")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(func=cmd_models)
    methods = sub.add_parser("methods", help="list the training methods")
    methods.add_argument("--json", action="store_true")
    methods.set_defaults(func=cmd_methods)
    return parser


_NUMBER_LIST = re.compile(r"^-?\d*\.?\d+(e[-+]?\d+)?([,;]\s*-?\d*\.?\d+(e[-+]?\d+)?)*$", re.I)


def _glue_negative_values(argv: Sequence[str]) -> list[str]:
    """Let ``--center -6.5,-0.6,1.1`` work: argparse would take the value for an option."""
    out: list[str] = []
    for token in argv:
        if (
            out
            and out[-1] in ("--center", "--target-spacing")
            and token.startswith("-")
            and _NUMBER_LIST.match(token)
        ):
            out[-1] = f"{out[-1]}={token}"
        else:
            out.append(token)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(_glue_negative_values(argv))
    try:
        return args.func(args)
    except TrainingCancelled as exc:
        print(f"semisupseg: {exc}", file=sys.stderr)
        return 130
    except SemiSupSegError as exc:
        print(f"semisupseg: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("semisupseg: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
