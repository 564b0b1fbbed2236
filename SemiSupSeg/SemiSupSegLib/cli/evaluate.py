"""``semisupseg evaluate``: segment labelled cases and report the metrics (shared with the demo)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from ..errors import InputError
from .arguments import _AMOUNT, _device
from .locator import _load_locator, _localisation_row


def _write_figure(figures_dir: Path, case, image, reference, result, row: dict) -> None:
    """A PNG of the case: slices through the centre used (else the reference), contours, uncertainty."""
    from ..figures import write_case_figure

    write_case_figure(
        figures_dir / f"{case.name}.png",
        image,
        truth=reference,
        prediction=result.label,
        uncertainty=result.uncertainty,
        center_lps=result.center,
        title=f"{case.name}: Dice {row['dice']:.3f}, {result.mode}",
    )


def _case_row(name: str, result, reference, image, classes: int) -> dict:
    """Metrics of one case: the foreground as a whole, and per class (``dice_<k>``, ``dice_mean``) when the
    model has K > 2 classes."""
    import SimpleITK as sitk

    from ..metrics import class_dice, segmentation_metrics

    pred_labels = sitk.GetArrayViewFromImage(result.label)
    ref_labels = sitk.GetArrayViewFromImage(reference)
    row = {"case": name, **segmentation_metrics(pred_labels > 0, ref_labels > 0, image.GetSpacing()[::-1])}
    if classes > 2:
        row.update(class_dice(pred_labels, ref_labels, classes))
    row["seconds"] = result.seconds
    return row


def _class_dice_text(row: dict, names: dict[int, str]) -> str:
    """``  catheter 0.812  guidewire 0.431  mean 0.622`` for a multi-class row, else ``""``."""
    if "dice_mean" not in row:
        return ""
    parts = [f"{names.get(k, k)} {row[f'dice_{k}']:.3f}" for k in sorted(names) if f"dice_{k}" in row]
    return "  " + "  ".join([*parts, f"mean {row['dice_mean']:.3f}"])


def _class_names(model) -> dict[int, str]:
    """The model's foreground classes, index -> name (from model.json's ``classes``)."""
    classes = model.meta.get("classes") or {}
    return {int(k): str(v) for k, v in classes.items() if str(k).isdigit() and int(k) > 0}


def _evaluate_cases(
    model,
    cases,
    use_center: bool,
    precision: str,
    pred_dir: Path | None,
    locator=None,
    figures_dir: Path | None = None,
    mc_samples: int = 0,
    uncertainty_method: str | None = None,
) -> list[dict]:
    from ..imageio import read_image, write_image
    from ..inference import segment

    names = _class_names(model)
    rows = []
    for case in cases:
        image = read_image(case.image)
        reference = read_image(case.label, what="label")
        located, center = {}, case.center if use_center else None
        if locator is not None:
            located, center = _localisation_row(locator, image, case)
        options = {"mc_samples": mc_samples, "uncertainty_method": uncertainty_method}
        result = segment(model, image, center, precision=precision, **options)
        row = _case_row(case.name, result, reference, image, model.num_classes)
        row.update(located)
        rows.append(row)
        if pred_dir is not None:
            write_image(result.label, pred_dir / f"{case.name}.nii.gz")
        if figures_dir is not None:
            _write_figure(figures_dir, case, image, reference, result, row)
        where = f"; located {row['loc_vox']:.1f} vox, {row['loc_mm']:.1f} mm off" if "loc_mm" in row else ""
        dice, hd95 = row["dice"], row["hd95_mm"]
        print(
            f"{case.name}: Dice {dice:.3f}  HD95 {hd95:.2f} mm  {row['seconds']:.2f} s{where}"
            + _class_dice_text(row, names),
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


def _class_keys(names: dict[int, str]) -> tuple[str, ...]:
    """Per-class Dice keys of a multi-class model (K > 2): ``dice_<k>`` for each class, then ``dice_mean``."""
    if len(names) < 2:
        return ()
    return (*(f"dice_{k}" for k in sorted(names)), "dice_mean")


def _print_summary(summary: dict, keys: Sequence[str], names: dict[int, str] | None = None) -> None:
    """One line per key present: mean ± std (n); per-class Dice keys carry the class name."""
    for key in keys:
        if key in summary:
            s = summary[key]
            index = key.removeprefix("dice_")
            label = f"dice {names[int(index)]}" if names and index.isdigit() and int(index) in names else key
            label = "dice mean" if key == "dice_mean" else label
            print(f"{label:>10}: {s['mean']:.4f} ± {s['std']:.4f}  (n={int(s['n'])})")


def _check_outputs(args: argparse.Namespace, dataset_json: Path, cases) -> None:
    """Refuse a ``--json``, a prediction or a figure that would overwrite ``dataset.json``, a case's image
    or label, or one another (``--predictions`` set to the dataset's images folder)."""
    from ..atomic import check_outputs_spare_inputs
    from ..model_index import MODEL_JSON
    from ..model_store import resolve_model

    model_json = resolve_model(args.model) / MODEL_JSON
    inputs = {"dataset file (--data)": dataset_json, "model's model.json": model_json}
    for case in cases:
        inputs[f"image of case '{case.name}'"] = case.image
        inputs[f"label of case '{case.name}'"] = case.label
    outputs = {"--json": args.json} if args.json else {}
    for case in cases:
        if args.predictions:
            outputs[f"prediction of case '{case.name}'"] = Path(args.predictions) / f"{case.name}.nii.gz"
        if args.figures:
            outputs[f"figure of case '{case.name}'"] = Path(args.figures) / f"{case.name}.png"
    check_outputs_spare_inputs(outputs, inputs)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ..atomic import atomic_write_json
    from ..dataset import labelled_cases, load_dataset
    from ..metrics import summarize
    from ..model_store import load_model
    from ..training import resolve_device

    if args.locator and args.no_center:
        raise InputError("--no-center (sliding window) and --locator (located centre) exclude each other")
    dataset = load_dataset(args.data)
    cases = labelled_cases(dataset, args.section, "to evaluate")
    _check_outputs(args, dataset.path, cases)
    device = resolve_device(args.device)
    model = load_model(args.model, device)
    locator = _load_locator(args.locator, device) if args.locator else None
    pred_dir = Path(args.predictions) if args.predictions else None
    figures_dir = Path(args.figures) if args.figures else None
    rows = _evaluate_cases(
        model,
        cases,
        not args.no_center,
        args.precision,
        pred_dir,
        locator,
        figures_dir,
        args.mc_samples,
        args.uncertainty_method,
    )
    summary = summarize(rows)
    names = _class_names(model)
    _print_summary(summary, (*EVALUATE_KEYS[:1], *_class_keys(names), *EVALUATE_KEYS[1:]), names)
    if args.json:
        atomic_write_json(
            args.json,
            {
                "model": str(model.path),
                "data": str(args.data),
                "section": args.section,
                "classes": dict(model.meta.get("classes", {})),
                "cases": rows,
                "summary": summary,
            },
        )
        print(f"wrote {args.json}")
    return 0


def _add_evaluate(sub) -> None:
    p = sub.add_parser(
        "evaluate",
        help="segment labelled cases and report Dice, Jaccard, HD95, ASD (and per-class Dice for K > 2)",
    )
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
        help="passes for an uncertainty map, drawn in the figures (default 0: none)",
    )
    p.add_argument(
        "--uncertainty-method",
        help="estimator of that map (default: inference.DEFAULT_UNCERTAINTY; see semisupseg segment --help)",
    )
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto")
    p.add_argument("--device", type=_device, default="auto")
    p.set_defaults(func=cmd_evaluate)
