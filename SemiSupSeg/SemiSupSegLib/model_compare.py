"""The comparison of a new model with the current one on the validation cases (imports torch when called)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

from .errors import InputError
from .train_commands import device_argument

COMPARED_METRICS = ("dice", "jaccard", "hd95_mm", "asd_mm")


def comparison_cases(model: str | os.PathLike, data: str | os.PathLike | None = None) -> tuple[list, str]:
    """The validation cases recorded in the model's ``model.json`` (names in its training data),
    else the labelled test cases of that data; and which of the two they are."""
    from .dataset import load_dataset
    from .model_store import read_model_json, resolve_model

    meta = read_model_json(resolve_model(model))
    training = meta.get("training") or {}
    data = data or training.get("dataset")
    if not data:
        raise InputError(f"model {model} records no training data; give the dataset to compare on")
    dataset = load_dataset(data)
    names = list(training.get("validation_cases") or [])
    cases = [c for c in dataset.training if c.name in names and c.label is not None]
    if cases:
        return cases, "validation"
    cases = [c for c in dataset.test if c.label is not None]
    if cases:
        return cases, "test"
    raise InputError(f"{dataset.path} has no validation or labelled test case to compare the models on")


def compare_models(
    new: str | os.PathLike,
    current: str | os.PathLike | None,
    data: str | os.PathLike | None = None,
    device: str = "auto",
    precision: str = "auto",
    on_case: Callable[[int, int, str], None] | None = None,
) -> dict:
    """Segment the validation cases with the new and the current model; rows side by side.

    Returns ``{"cases_from", "new": {name, path}, "current": {...} | None, "rows": [{"case",
    "new": {metric: value}, "current": {...}}], "summary": {"new": {metric: mean}, "current":
    {...}}, "better": bool | None}``; ``better`` compares the mean Dice.
    """
    import SimpleITK as sitk

    from .imageio import read_image
    from .inference import segment
    from .metrics import segmentation_metrics
    from .model_store import load_model
    from .training import resolve_device

    cases, cases_from = comparison_cases(new, data)
    dev = resolve_device(device_argument(device))
    models = {"new": load_model(new, dev)}
    if current:
        models["current"] = load_model(current, dev)
    rows = []
    for i, case in enumerate(cases):
        if on_case is not None:
            on_case(i, len(cases), case.name)
        image = read_image(case.image)
        reference = sitk.GetArrayViewFromImage(read_image(case.label, what="label")) > 0
        row: dict = {"case": case.name}
        for key, model in models.items():
            result = segment(model, image, case.center, precision=precision)
            pred = sitk.GetArrayViewFromImage(result.label) > 0
            metrics = segmentation_metrics(pred, reference, image.GetSpacing()[::-1])
            row[key] = {m: float(metrics[m]) for m in COMPARED_METRICS} | {"seconds": result.seconds}
        rows.append(row)
    summary = {
        key: {m: float(sum(r[key][m] for r in rows) / len(rows)) for m in (*COMPARED_METRICS, "seconds")}
        for key in models
    }
    better = summary["new"]["dice"] >= summary["current"]["dice"] if "current" in summary else None
    described = {key: {"name": m.name, "path": str(m.path)} for key, m in models.items()}
    return {
        "cases_from": cases_from,
        "new": described["new"],
        "current": described.get("current"),
        "rows": rows,
        "summary": summary,
        "better": better,
    }


def comparison_table(result: dict, metrics: Sequence[str] = ("dice", "hd95_mm")) -> list[list[str]]:
    """Rows of text for a side-by-side table: case, then each metric new / current."""
    has_current = result.get("current") is not None
    header = ["case"]
    for m in metrics:
        header += [f"{m} new"] + ([f"{m} current"] if has_current else [])
    table = [header]
    for row in [*result["rows"], {"case": "mean", **result["summary"]}]:
        cells = [row["case"]]
        for m in metrics:
            cells.append(f"{row['new'][m]:.3f}")
            if has_current:
                cells.append(f"{row['current'][m]:.3f}")
        table.append(cells)
    return table


def comparison_text(result: dict) -> str:
    """The panel's summary of :func:`compare_models`'s answer: where the new model is, how many cases
    were compared, and (with a current model) whether the new one is better by mean Dice.

    Args:
        result: :func:`compare_models`'s answer.

    Returns:
        Two or three lines of text.
    """
    verdict = ""
    if result.get("better") is not None:
        word = "better than or as good as" if result["better"] else "worse than"
        summary = result["summary"]
        verdict = (
            f"\nThe new model is {word} '{result['current']['name']}' "
            f"(mean Dice {summary['new']['dice']:.3f} vs {summary['current']['dice']:.3f})."
        )
    return (
        f"New model: {result['new']['path']}\ncompared on {len(result['rows'])} "
        f"{result['cases_from']} case(s).{verdict}"
    )
