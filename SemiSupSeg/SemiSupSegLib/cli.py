"""The ``semisupseg`` command line: everything the Slicer panels do, headless.

Run ``semisupseg COMMAND --help`` for each command's options. Errors on bad input are printed
as one line naming the problem, with exit status 2; a cancelled training exits with 130.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from . import __version__
from .errors import InputError, SemiSupSegError, TrainingCancelled, checked_number

DEMO_MODEL = "phantom-catheter"
DEMO_LOCATOR = "phantom-locator"


# --- argument helpers ---------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    """argparse whose errors reach :func:`main` as one line (exit status 2), not usage text and an exit."""

    def error(self, message: str) -> NoReturn:
        command = self.prog.partition(" ")[2]
        raise InputError(f"{command + ': ' if command else ''}{message} (see '{self.prog} --help')")


def _number(kind: type, low: float | None = None, high: float | None = None, **open_bounds: bool):
    """An argparse ``type``: a number checked by :func:`checked_number` (argparse names the flag)."""

    def parse(text: str) -> int | float:
        try:
            return checked_number("", text, kind, low, high, **open_bounds)
        except InputError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


_COUNT = _number(int, 1)  # steps, batch, sizes, intervals, samples
_AMOUNT = _number(int, 0)  # numbers of cases, seeds, voxels of translation
_POSITIVE = _number(float, 0.0, low_open=True)  # learning rates, widths, spacings
_PROBABILITY = _number(float, 0.0, 1.0)


def _triple(kind: type, order: str, positive: bool = False):
    """An argparse ``type``: 3 numbers ``a,b,c`` in ``order`` (one integer stands for all 3)."""
    noun = ("positive " if positive else "") + ("integers" if kind is int else "numbers")

    def parse(text: str) -> tuple:
        parts = [p for p in text.replace(";", ",").split(",") if p.strip()]
        if len(parts) == 1 and kind is int:
            parts = parts * 3
        if len(parts) != 3:
            raise argparse.ArgumentTypeError(f"needs 3 values ({order}); got {text!r}")
        try:
            return tuple(checked_number("", p, kind, 0 if positive else None, low_open=True) for p in parts)
        except InputError:
            raise argparse.ArgumentTypeError(f"must be 3 {noun} ({order}); got {text!r}") from None

    return parse


_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


def _device(text: str) -> str:
    """An argparse ``type``: a device :func:`~SemiSupSegLib.training.resolve_device` understands."""
    if not _DEVICE.fullmatch(text):
        raise argparse.ArgumentTypeError(f"must be auto, cpu, cuda or cuda:N; got {text!r}")
    return text


def _image_output(text: str) -> str:
    """An argparse ``type``: a path to write an image to, refused before any work if its format is unknown."""
    from .imageio import SUPPORTED_EXTENSIONS, image_extension

    if not image_extension(text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is no image file; end it with {', '.join(SUPPORTED_EXTENSIONS)}"
        )
    return text


def _profile_name(text: str) -> str:
    """An argparse ``type``: a phantom profile name (the list is read from the phantom module on use)."""
    from .phantom import check_profile

    try:
        return check_profile(text)
    except InputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _method_option(text: str) -> tuple[str, object]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"method option must be KEY=VALUE; got {text!r}")
    key, value = text.split("=", 1)
    try:
        return key.replace("-", "_"), json.loads(value)
    except json.JSONDecodeError:
        return key.replace("-", "_"), value


def _scales(text: str) -> tuple[int, ...]:
    try:
        values = tuple(checked_number("", p, int, 1) for p in text.replace(";", ",").split(",") if p.strip())
    except InputError:
        raise argparse.ArgumentTypeError(f"must be positive integers like 9,3,1; got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("needs at least one step size")
    return values


def _shown(value: object) -> str:
    """A config value as the command line writes it (tuples as ``1,2,3``)."""
    if isinstance(value, (tuple, list)):
        return ",".join(_shown(v) for v in value)
    if isinstance(value, bool):
        return "on" if value else "off"
    return json.dumps(value) if isinstance(value, dict) else str(value)


def _default(config_cls: type, field: str) -> str:
    """``default X`` for a help text, read from the config dataclass (the one home of the defaults)."""
    return f"default {_shown(getattr(config_cls, field))}"


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
        profile=args.profile,
    )
    print(file=sys.stderr)
    print(f"wrote {path}")
    return 0


# Config fields whose flag is not ``--`` + the field's name.
_FLAGS = {
    "patch_size": "--patch",
    "augment": "--no-augment",
    "method_options": "--option",
    "double": "--no-double",
    "dueling": "--no-dueling",
    "keep_best": "--keep-last",
}


def _given(fields: dict[str, object]) -> dict[str, object]:
    """The config fields given on the command line: argparse leaves every other one ``None``."""
    return {k: v for k, v in fields.items() if v is not None}


def _unless(flag: bool | None) -> bool | None:
    """The config value of a ``--no-X`` flag: False when given, None (the config's default) when not."""
    return None if flag is None else not flag


def _train_fields(args: argparse.Namespace) -> dict[str, object]:
    """The :class:`~SemiSupSegLib.training.TrainConfig` fields given on the command line."""
    return _given(
        {
            "data": args.data,
            "method": args.method,
            "steps": args.steps,
            "batch": args.batch,
            "patch_size": args.patch,
            "width": args.width,
            "dropout": args.dropout,
            "lr": args.lr,
            "seed": args.seed,
            "val_cases": args.val_cases,
            "val_every": args.val_every,
            "checkpoint_every": args.checkpoint_every,
            "target_spacing": args.target_spacing,
            "translation": args.translation,
            "augment": _unless(args.no_augment),
            "device": args.device,
            "precision": args.precision,
            "init": args.init,
            "name": args.name,
            "description": args.description,
            "method_options": dict(args.option) if args.option else None,
        }
    )


def _same(field: str, given: object, stored: object) -> bool:
    """Whether a flag's value equals the stored configuration's (tuples and lists alike)."""
    if field == "data":  # paths: the same file however it is written
        as_list = lambda v: [v] if isinstance(v, str) else list(v)  # noqa: E731
        return [Path(p).resolve() for p in as_list(given)] == [Path(p).resolve() for p in as_list(stored)]
    return json.loads(json.dumps(given)) == json.loads(json.dumps(stored))


def _resume_folder(args: argparse.Namespace) -> str:
    if not args.out:
        raise InputError("--resume needs --out, the folder of the interrupted run")
    return args.out


def _resumed_config(args: argparse.Namespace, stored, fields: dict[str, object]):
    """The stored configuration of the run in ``--out`` with ``--steps`` applied.

    ``--steps`` extends or shortens the run (not below the step the checkpoint reached); any other flag
    given with a value other than the stored one is refused, naming it.
    """
    from .checkpoints import checkpoint_path, read_checkpoint

    differing = [
        f"{_FLAGS.get(k, '--' + k.replace('_', '-'))} {_shown(v)} (stored: {_shown(getattr(stored, k))})"
        for k, v in fields.items()
        if k != "steps" and not _same(k, v, getattr(stored, k))
    ]
    if differing:
        raise InputError(
            f"--resume continues the run in {args.out} as it was configured; only --steps may change, "
            f"but {', '.join(differing)} differ from it"
        )
    steps = fields.get("steps", stored.steps)
    if steps < stored.steps:
        done = int(read_checkpoint(checkpoint_path(args.out))["step"])
        if steps < done:
            raise InputError(
                f"--steps {steps} is below step {done}, where the checkpoint in {args.out} stands"
            )
    return dataclasses.replace(stored, steps=steps, out=str(args.out))


def _new_train_config(args: argparse.Namespace, fields: dict[str, object]):
    """A new run's configuration: the flags given, the dataclass's defaults for the others."""
    from .dataset import labelled_cases, load_dataset
    from .model_store import models_dir, resolve_model
    from .training import TrainConfig

    if "data" not in fields:
        raise InputError("train needs --data dataset.json")
    if "init" in fields:
        resolve_model(fields["init"])
    labelled_cases(load_dataset(fields["data"], validate=False), "training", "to train on")
    method = fields.get("method", TrainConfig.method)
    out = args.out or str(models_dir() / (args.name or f"{method}-{time.strftime('%Y%m%d-%H%M%S')}"))
    return TrainConfig(out=out, **fields)


def _run_trainer(args: argparse.Namespace, trainer_cls, config, what: str) -> int:
    """Shared by ``train`` and ``train-locator``: run a checked configuration, new or resumed."""
    folder = trainer_cls(config, args.reporter).run(resume=args.resume)
    if args.progress != "json":
        print(f"{what} written to {folder}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from .methods import get_method
    from .training import TrainConfig, Trainer

    fields = _train_fields(args)
    stored = Trainer.stored_config(_resume_folder(args)) if args.resume else None
    method = get_method(fields.get("method") or (stored.method if stored else TrainConfig.method))
    if "method_options" in fields:
        fields["method_options"] = method.parse_options(fields["method_options"])
    config = _resumed_config(args, stored, fields) if stored else _new_train_config(args, fields)
    return _run_trainer(args, Trainer, config, "model")


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
    from .locator.store import locators_dir
    from .locator.train import LocatorTrainConfig, LocatorTrainer

    fields = _locator_fields(args)
    if args.resume:
        config = _resumed_config(args, LocatorTrainer.stored_config(_resume_folder(args)), fields)
    elif "data" not in fields:
        raise InputError("train-locator needs --data dataset.json (cases with a 'center')")
    else:
        name = args.name or f"locator-{time.strftime('%Y%m%d-%H%M%S')}"
        config = LocatorTrainConfig(out=args.out or str(locators_dir() / name), **fields)
    return _run_trainer(args, LocatorTrainer, config, "locator")


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
    """``semisupseg segment``; with ``--progress json`` the panels' background segmentation: the
    protocol's ``started``, ``progress`` (``stage``, ``fraction``) and ``finished`` (``seconds``,
    ``mode``, ``precision``, ``device``, ``outputs``: name -> file written) events on stdout."""
    from .imageio import read_image, write_image
    from .model_store import load_model
    from .training import resolve_device

    reporter = args.reporter if args.progress == "json" else None
    device = resolve_device(args.device)
    center = _read_center(args)
    if reporter:
        mode = "roi" if center is not None or args.locator else "sliding-window"
        summary = {"model": str(args.model), "device": str(device), "mode": mode}
        reporter.emit("started", task="segmentation", summary=summary)
        reporter.emit("progress", stage="load model", fraction=0.0)
    model = load_model(args.model, device)
    image = read_image(args.input)
    if center is None and args.locator:
        center = _locate_for_segmentation(args.locator, image, device)
    result = _segment_reporting(args, model, image, center, str(device), reporter)
    outputs = {"label": args.output, "probability": args.probability, "uncertainty": args.uncertainty}
    outputs = {name: path for name, path in outputs.items() if path}
    write_image(result.label, args.output)
    if args.probability:
        write_image(result.probability, args.probability)
    if args.uncertainty:
        write_image(result.uncertainty, args.uncertainty)
    message = f"segmented {args.input} in {result.seconds:.2f} s ({result.mode}); wrote {args.output}"
    if reporter:
        reporter.emit(
            "finished",
            seconds=result.seconds,
            mode=result.mode,
            precision=result.precision,
            device=str(device),
            outputs=outputs,
            message=message,
        )
    else:
        print(message)
    return 0


def _segment_reporting(args: argparse.Namespace, model, image, center, device: str, reporter):
    """:func:`~.inference.segment` with its stages sent to ``reporter`` (when given); running out of
    memory becomes one line of advice (:func:`~.slicer_bridge.user_message`)."""
    from .inference import segment
    from .slicer_bridge import is_out_of_memory, user_message

    def progress(stage: str, fraction: float) -> None:
        reporter.emit("progress", stage=stage, fraction=float(fraction))

    try:
        return segment(
            model,
            image,
            center,
            mc_samples=args.mc_samples if args.uncertainty else 0,
            precision=args.precision,
            threshold=args.threshold,
            progress=progress if reporter else None,
        )
    except (MemoryError, RuntimeError) as exc:
        if not is_out_of_memory(exc):
            raise
        raise InputError(user_message(exc, device)) from exc


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


def _write_figure(figures_dir: Path, case, image, reference, result, row: dict) -> None:
    """A PNG of the case: slices through the centre used (else the reference), contours, uncertainty."""
    from .figures import write_case_figure

    write_case_figure(
        figures_dir / f"{case.name}.png",
        image,
        truth=reference,
        prediction=result.label,
        uncertainty=result.uncertainty,
        center_lps=result.center,
        title=f"{case.name}: Dice {row['dice']:.3f}, {result.mode}",
    )


def _evaluate_cases(
    model,
    cases,
    use_center: bool,
    precision: str,
    pred_dir: Path | None,
    locator=None,
    figures_dir: Path | None = None,
    mc_samples: int = 0,
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
        result = segment(model, image, center, precision=precision, mc_samples=mc_samples)
        pred = sitk.GetArrayViewFromImage(result.label) > 0
        ref = sitk.GetArrayViewFromImage(reference) > 0
        row = {"case": case.name, **segmentation_metrics(pred, ref, image.GetSpacing()[::-1])}
        row["seconds"] = result.seconds
        row.update(located)
        rows.append(row)
        if pred_dir is not None:
            write_image(result.label, pred_dir / f"{case.name}.nii.gz")
        if figures_dir is not None:
            _write_figure(figures_dir, case, image, reference, result, row)
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
    from .dataset import labelled_cases, load_dataset
    from .metrics import summarize
    from .model_store import load_model
    from .training import resolve_device

    if args.locator and args.no_center:
        raise InputError("--no-center (sliding window) and --locator (located centre) exclude each other")
    cases = labelled_cases(load_dataset(args.data), args.section, "to evaluate")
    device = resolve_device(args.device)
    model = load_model(args.model, device)
    locator = _load_locator(args.locator, device) if args.locator else None
    pred_dir = Path(args.predictions) if args.predictions else None
    figures_dir = Path(args.figures) if args.figures else None
    rows = _evaluate_cases(
        model, cases, not args.no_center, args.precision, pred_dir, locator, figures_dir, args.mc_samples
    )
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
    print(
        f"generating {args.cases} phantom catheter volumes ({args.size}^3, seed {args.seed}, "
        f"profile {args.profile}) in {out}"
    )
    data = write_phantom_dataset(
        out / "data", cases=0, test=args.cases, seed=args.seed, size=args.size, profile=args.profile
    )
    device = resolve_device(args.device)
    model = load_model(args.model, device)
    locator = _demo_locator(args, device)
    where = f"centre points found by locator '{locator.name}'" if locator else "the true centre points"
    print(f"segmenting with model '{model.name}' ({model.meta.get('method')}) from {where}")
    rows = _evaluate_cases(
        model, load_dataset(data).test, True, args.precision, out / "segmentations", locator, out / "figures"
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
    print(f"results in {out} (segmentations/, figures/, results.json)")
    return 0


# --- parser -------------------------------------------------------------------------------------
def _add_phantom(sub) -> None:
    p = sub.add_parser("phantom", help="write synthetic 3D-ultrasound instrument volumes and a dataset.json")
    p.add_argument("out", help="output folder")
    p.add_argument("--cases", type=_AMOUNT, default=4, help="labelled training cases (default 4)")
    p.add_argument("--unlabeled", type=_AMOUNT, default=0, help="unlabelled cases (default 0)")
    p.add_argument("--test", type=_AMOUNT, default=0, help="labelled test cases (default 0)")
    p.add_argument("--seed", type=_AMOUNT, default=0)
    p.add_argument("--kind", choices=("catheter", "guidewire"), default="catheter")
    p.add_argument("--size", type=_COUNT, default=160, help="voxels per axis (default 160)")
    p.add_argument(
        "--spacing", type=_POSITIVE, default=None, help="mm per voxel (default: drawn per case by --profile)"
    )
    _add_profile_flag(p)
    p.set_defaults(func=cmd_phantom)


def _add_profile_flag(p) -> None:
    p.add_argument(
        "--profile",
        type=_profile_name,
        default="default",
        help="scanner profile (default 'default'; 'random' draws every parameter per case); "
        "the names and their parameters are in docs/PHANTOM_PROFILES.md",
    )


TRAIN_HELP = """Train a segmentation model, or continue an interrupted run with --resume.

--resume continues the run in --out exactly as it was configured (read from its checkpoint). --steps
may change its length: more steps extend it, fewer shorten it, but not below the step its checkpoint
reached; schedules that scale with the run length (learning-rate decay, ramps without an explicit
option) follow the new length from there on. Any other flag given with --resume must repeat the stored
value: a different one is refused and named.
"""


def _add_train(sub) -> None:
    from .methods import METHODS
    from .training import TrainConfig as C

    p = sub.add_parser(
        "train",
        help="train or fine-tune a segmentation model",
        description=TRAIN_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--data", help="dataset.json (training + unlabeled sections)")
    p.add_argument("--method", choices=sorted(METHODS), help=_default(C, "method"))
    p.add_argument("--out", help="model folder to write (default: the models folder / NAME)")
    p.add_argument("--name", help="model name (default: the folder name)")
    p.add_argument("--description")
    p.add_argument("--steps", type=_COUNT, help=f"training steps ({_default(C, 'steps')})")
    p.add_argument(
        "--batch", type=_COUNT, help=f"labelled patches per step, as many unlabelled ({_default(C, 'batch')})"
    )
    p.add_argument(
        "--patch",
        type=_triple(int, "z,y,x", positive=True),
        help=f"patch size z,y,x ({_default(C, 'patch_size')})",
    )
    p.add_argument(
        "--width", type=_POSITIVE, help=f"channel width multiplier, 1.0 = paper ({_default(C, 'width')})"
    )
    p.add_argument("--dropout", type=_number(float, 0.0, 1.0, high_open=True), help=_default(C, "dropout"))
    p.add_argument("--lr", type=_POSITIVE, help="learning rate (default: the method's)")
    p.add_argument("--seed", type=_AMOUNT, help=_default(C, "seed"))
    p.add_argument("--val-cases", type=_AMOUNT, help="labelled cases held out (default 20%%)")
    p.add_argument("--val-every", type=_COUNT, help=_default(C, "val_every"))
    p.add_argument("--checkpoint-every", type=_COUNT, help=_default(C, "checkpoint_every"))
    p.add_argument(
        "--target-spacing",
        type=_triple(float, "x,y,z", positive=True),
        help="x,y,z mm (default: median spacing of the training images)",
    )
    p.add_argument(
        "--translation",
        type=_AMOUNT,
        help=f"random shift of patches around the centre, voxels ({_default(C, 'translation')})",
    )
    p.add_argument("--no-augment", action="store_true", default=None)
    p.add_argument("--device", type=_device, help=f"auto, cpu, cuda ({_default(C, 'device')})")
    p.add_argument(
        "--precision",
        choices=("fp32", "bf16", "auto"),
        help=f"bf16 autocast halves a CPU step on CPUs with AVX512-BF16/AMX ({_default(C, 'precision')})",
    )
    p.add_argument("--init", help="fine-tune from this model (folder or name)")
    p.add_argument("--option", type=_method_option, action="append", help="method option KEY=VALUE")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the interrupted run in --out (only --steps may change)",
    )
    p.add_argument("--progress", choices=("human", "json", "none"), default="human")
    p.set_defaults(func=cmd_train)


def _add_train_locator(sub) -> None:
    from .locator.train import LocatorTrainConfig as C

    p = sub.add_parser(
        "train-locator",
        help="train a DQN locator of the instrument centre from centre points",
        description="Train a DQN locator. --resume works as for train: only --steps may change.",
    )
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
    p.add_argument("--width", type=_COUNT, help=f"channels of the first convolution ({_default(C, 'width')})")
    p.add_argument("--memory", type=_COUNT, help=f"replay capacity in transitions ({_default(C, 'memory')})")
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


def _add_locate(sub) -> None:
    p = sub.add_parser("locate", help="find the instrument centre point with a DQN locator")
    p.add_argument("--locator", required=True, help="locator folder or name")
    p.add_argument("--input", required=True)
    p.add_argument(
        "--starts", type=_number(int, 1, 9), default=None, help="agents (1-9; default: the locator's)"
    )
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.add_argument("--device", type=_device, default="auto")
    p.set_defaults(func=cmd_locate)


def _add_segment(sub) -> None:
    p = sub.add_parser("segment", help="segment the instrument in one volume")
    p.add_argument("--model", required=True, help="model folder or name")
    p.add_argument("--input", required=True)
    p.add_argument(
        "--output", required=True, type=_image_output, help="label file to write (.nrrd, .nii.gz, .mha)"
    )
    p.add_argument("--center", type=_triple(float, "x,y,z"), help="instrument centre x,y,z in LPS mm")
    p.add_argument("--ras", action="store_true", help="--center is in RAS (Slicer) instead of LPS")
    p.add_argument("--locator", help="without --center: find the centre with this DQN locator first")
    p.add_argument("--probability", type=_image_output, help="also write the foreground probability")
    p.add_argument(
        "--uncertainty", type=_image_output, help="also write the Monte-Carlo uncertainty (entropy)"
    )
    p.add_argument("--mc-samples", type=_COUNT, default=8, help="Monte-Carlo passes for --uncertainty (8)")
    p.add_argument("--threshold", type=_PROBABILITY, default=0.5)
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto")
    p.add_argument("--device", type=_device, default="auto")
    p.add_argument(
        "--progress", choices=("human", "json", "none"), default="human", help="json: protocol events"
    )
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
    p.add_argument(
        "--figures", help="write a PNG per case into this folder: slices through the centre, contours"
    )
    p.add_argument(
        "--mc-samples",
        type=_AMOUNT,
        default=0,
        help="Monte-Carlo passes for an uncertainty map, drawn in the figures (default 0: none)",
    )
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto")
    p.add_argument("--device", type=_device, default="auto")
    p.set_defaults(func=cmd_evaluate)


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="segment fresh phantom volumes with the shipped model")
    p.add_argument("--out", default="semisupseg-demo")
    p.add_argument("--cases", type=_COUNT, default=4)
    p.add_argument(
        "--seed", type=_AMOUNT, default=2026, help="phantom seed (the shipped model never saw 2026)"
    )
    p.add_argument("--size", type=_COUNT, default=160)
    _add_profile_flag(p)
    p.add_argument("--model", default=DEMO_MODEL)
    p.add_argument("--locator", help=f"locator finding the centres (default: the shipped '{DEMO_LOCATOR}')")
    p.add_argument("--true-center", action="store_true", help="use the phantoms' true centres, no locator")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto")
    p.add_argument("--device", type=_device, default="auto")
    p.set_defaults(func=cmd_demo)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="semisupseg", description=__doc__.splitlines()[0])
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


def _asks_json_progress(argv: Sequence[str]) -> bool:
    """Whether the command line asks for ``--progress json``: read by hand when parsing it failed."""
    return any(
        token == "--progress=json" or (token == "--progress" and following == "json")
        for token, following in zip(argv, [*argv[1:], ""], strict=True)
    )


def _report_error(message: str, args: argparse.Namespace | None, argv: Sequence[str]) -> None:
    """One line naming the problem: an ``error`` event on stdout with ``--progress json``, else on stderr."""
    from .progress import JsonLinesReporter

    if args is not None and getattr(args, "progress", None) == "json":
        args.reporter.emit("error", message=message)
    elif args is None and _asks_json_progress(argv):
        JsonLinesReporter().emit("error", message=message)
    else:
        print(f"semisupseg: error: {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit status (0, 2 on bad input, 130 when cancelled).

    Every bad input, from the command line to the data, is reported once, as one line that names it
    (with ``--progress json``, as the protocol's ``error`` event on stdout) and gives status 2.
    """
    from .progress import make_reporter

    argv = list(sys.argv[1:] if argv is None else argv)
    args = None
    try:
        args = build_parser().parse_args(_glue_negative_values(argv))
        if hasattr(args, "progress"):
            args.reporter = make_reporter(args.progress)
        return args.func(args)
    except TrainingCancelled as exc:
        print(f"semisupseg: {exc}", file=sys.stderr)
        return 130
    except SemiSupSegError as exc:
        _report_error(str(exc), args, argv)
        return 2
    except KeyboardInterrupt:
        print("semisupseg: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if getattr(args, "progress", None) == "json":  # a bug: the reader still learns that the run ended
            args.reporter.emit("error", message=f"internal error, {type(exc).__name__}: {exc}")
        raise


if __name__ == "__main__":
    sys.exit(main())
