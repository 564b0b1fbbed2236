"""The data and folders of a training run (torch-free).

The labelled pool's ``dataset.json`` plus folders of unlabelled scans merged into one ``dataset.json``
for the run (:func:`build_run_dataset`), with the validation cases (automatic or chosen) and every
problem found (:func:`summarize_data`, :class:`DataSummary`); the models, locators and run folders, and
the runs that can be resumed (:func:`resumable_runs`).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from . import model_index
from .errors import InputError, ModelError
from .model_index import home_dir

RUN_DATASET = "dataset.json"  # written into OUT/.training/ by build_run_dataset
_LABEL_SUFFIXES = ("-label", "_label", "-labels", "_labels", "_seg", "-seg", "_mask", "-mask")


@dataclass
class DataSummary:
    """The cases a run would use, and every problem found, shown before starting."""

    pool: str
    labeled: int = 0
    unlabeled_pool: int = 0
    unlabeled_extra: int = 0
    test: int = 0
    with_center: int = 0
    validation: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    dataset: str | None = None

    @property
    def unlabeled(self) -> int:
        return self.unlabeled_pool + self.unlabeled_extra

    @property
    def training(self) -> int:
        return self.labeled - len(self.validation)

    @property
    def ok(self) -> bool:
        return not self.problems and self.training >= 1

    def text(self) -> str:
        lines = [
            f"{self.labeled} labelled case(s): {self.training} for training, "
            f"{len(self.validation)} for validation ({', '.join(self.validation) or 'none'})",
            f"{self.unlabeled} unlabelled case(s) ({self.unlabeled_pool} in the pool, "
            f"{self.unlabeled_extra} from the folders); {self.with_center} case(s) with a centre point",
        ]
        if self.test:
            lines.append(f"{self.test} test case(s) (not used for training)")
        lines += [f"note: {n}" for n in self.notes]
        if self.problems:
            lines.append(f"{len(self.problems)} problem(s):")
            lines += [f"  - {p}" for p in self.problems[:20]]
            if len(self.problems) > 20:
                lines.append(f"  ... and {len(self.problems) - 20} more")
        elif self.training < 1:
            lines.append("problem: no labelled case is left for training")
        return "\n".join(lines)


def scan_image_folder(folder: str | os.PathLike, recursive: bool = False) -> list[Path]:
    """Images the engine reads (NRRD, NIfTI, MetaImage headers) in ``folder``, sorted.

    Slicer segmentation files (``.seg.nrrd``) and files whose name ends like a label
    (``-label``, ``_seg``, ``_mask``...) are left out.
    """
    from .imageio import image_extension, strip_image_extension

    root = Path(folder).expanduser()
    if not root.is_dir():
        raise InputError(f"unlabelled folder '{root}' does not exist")
    files = root.rglob("*") if recursive else root.iterdir()
    found = []
    for path in files:
        if not path.is_file() or not image_extension(path) or path.name.lower().endswith(".seg.nrrd"):
            continue
        if strip_image_extension(path).lower().endswith(_LABEL_SUFFIXES):
            continue
        found.append(path.absolute())
    return sorted(found)


def _auto_validation(names: list[str]) -> list[str]:
    """The training loop's default: the last 20 % (at least 1) when there are 3 cases or more."""
    n = max(1, round(0.2 * len(names))) if len(names) >= 3 else 0
    return names[len(names) - n :] if n else []


def _merged_raw(
    pool: str | os.PathLike, unlabeled_folders: Sequence[str | os.PathLike], validation: Sequence[str] | None
) -> tuple[dict, DataSummary]:
    from .dataset import load_dataset
    from .errors import DatasetError
    from .imageio import strip_image_extension

    summary = DataSummary(pool=str(pool))
    try:
        ds = load_dataset(pool, validate=False)
    except DatasetError as exc:
        summary.problems = list(exc.problems)
        return {}, summary

    def entry(case, with_label: bool) -> dict:
        item = {"image": case.image.as_posix(), **case.extra}
        if with_label and case.label is not None:
            item["label"] = case.label.as_posix()
        if case.center is not None:
            item["center"] = [float(v) for v in case.center]
        return item

    names = [c.name for c in ds.training]
    if validation is None:
        chosen = _auto_validation(names)
    else:
        chosen = [str(v) for v in validation]
        unknown = [v for v in chosen if v not in names]
        if unknown:
            summary.problems.append(f"validation case(s) {unknown} are not labelled cases of {ds.path}")
            chosen = [v for v in chosen if v in names]
    training = [c for c in ds.training if c.name not in chosen] + [
        c for name in chosen for c in ds.training if c.name == name
    ]
    unlabeled = [entry(c, False) for c in ds.unlabeled]
    known_paths = {os.path.normcase(str(c.image)) for c in ds.cases()}
    known_names = {c.name for c in ds.unlabeled}
    extra = 0
    for folder in unlabeled_folders:
        try:
            images = scan_image_folder(folder)
        except InputError as exc:
            summary.problems.append(str(exc))
            continue
        if not images:
            summary.notes.append(f"no image the engine reads in '{folder}'")
        for image in images:
            name = strip_image_extension(image)
            if os.path.normcase(str(image)) in known_paths:
                continue  # already in the pool
            if name in known_names:
                summary.notes.append(f"skipped {image}: an unlabelled case named '{name}' is already used")
                continue
            known_paths.add(os.path.normcase(str(image)))
            known_names.add(name)
            unlabeled.append({"image": image.as_posix()})
            extra += 1
    raw = {key: value for key, value in ds.raw.items() if key not in ("training", "unlabeled", "test")}
    raw.update(
        name=ds.name,
        labels={str(k): v for k, v in ds.labels.items()},
        training=[entry(c, True) for c in training],
        unlabeled=unlabeled,
        test=[entry(c, True) for c in ds.test],
        semisupseg_run={
            "pool": str(ds.path),
            "unlabeled_folders": [str(Path(f).expanduser().absolute()) for f in unlabeled_folders],
            "validation": chosen,
        },
    )
    summary.labeled = len(ds.training)
    summary.unlabeled_pool = len(ds.unlabeled)
    summary.unlabeled_extra = extra
    summary.test = len(ds.test)
    summary.with_center = sum(c.center is not None for c in (*ds.training, *ds.unlabeled))
    summary.validation = chosen
    if chosen and len(chosen) >= len(ds.training):
        summary.problems.append(
            f"{len(ds.training)} labelled case(s) cannot give {len(chosen)} validation case(s) "
            "and still train"
        )
    if not ds.training:
        summary.problems.append(f"the labelled pool {ds.path} has no labelled case")
    return raw, summary


def build_run_dataset(
    pool: str | os.PathLike,
    unlabeled_folders: Sequence[str | os.PathLike] = (),
    out_json: str | os.PathLike | None = None,
    validation: Sequence[str] | None = None,
    check_images: bool = True,
) -> DataSummary:
    """Merge the labelled pool and the unlabelled folders into one ``dataset.json`` and check it.

    The labelled cases are ordered so that the validation cases (``validation`` names, or the
    training loop's automatic choice when None) come last: train with ``--val-cases
    len(summary.validation)``. Paths are absolute. With ``out_json`` the file is written there
    (atomically) and ``summary.dataset`` names it; otherwise it is only checked. The summary lists
    every problem ``validate_dataset`` finds (each naming its case).
    """
    from .atomic import atomic_write_json
    from .dataset import load_dataset, validate_dataset

    raw, summary = _merged_raw(pool, list(unlabeled_folders), validation)
    if not raw:
        return summary
    with tempfile.TemporaryDirectory(prefix="semisupseg-data-") as tmp:
        target = Path(out_json) if out_json else Path(tmp) / RUN_DATASET
        atomic_write_json(target, raw)
        dataset = load_dataset(target, validate=False)
        summary.problems += validate_dataset(dataset, check_images=check_images)
        if out_json:
            summary.dataset = str(Path(out_json).absolute())
    return summary


def summarize_data(
    pool: str | os.PathLike,
    unlabeled_folders: Sequence[str | os.PathLike] = (),
    validation: Sequence[str] | None = None,
    check_images: bool = True,
) -> DataSummary:
    """Counts and problems of a run's data, without writing anything."""
    return build_run_dataset(pool, unlabeled_folders, None, validation, check_images)


def trained_case_names(model: str | os.PathLike) -> set[str]:
    """Names of the labelled cases a model learnt from: its ``model.json``'s training and validation cases.

    Args:
        model: a model folder.

    Returns:
        The case names (what :func:`SemiSupSegLib.dataset.case_name` gives); empty when the folder is no
        readable model or its ``model.json`` lists no cases (a model trained before the list was kept).
    """
    try:
        meta = model_index.read_model_json(model)
    except ModelError:  # a missing or corrupt model knows no case
        return set()
    training = meta.get("training")
    if not isinstance(training, dict):
        return set()
    names = [*_list(training.get("labeled_cases")), *_list(training.get("validation_cases"))]
    return {name for name in names if isinstance(name, str)}


def _list(value: object) -> list:
    return value if isinstance(value, list) else []


def new_labelled_cases(pool: str | os.PathLike, known: Iterable[str]) -> list[str]:
    """The pool's labelled cases whose names are not in ``known``, in the pool's order.

    Args:
        pool: the labelled pool's ``dataset.json``.
        known: case names already learnt from (:func:`trained_case_names`).

    Returns:
        The new case names.

    Raises:
        DatasetError: the pool cannot be read.
    """
    from .dataset import load_dataset

    known = set(known)
    return [case.name for case in load_dataset(pool, validate=False).training if case.name not in known]


def models_folder() -> Path:
    return home_dir() / "models"


def locators_folder() -> Path:
    return home_dir() / "locators"


def scan_models(root: str | os.PathLike | None = None, include_shipped: bool = True) -> list[dict]:
    """Models in the models folder (then the shipped ones) from their ``model.json`` alone, without
    torch (see :func:`SemiSupSegLib.model_index.list_models`)."""
    return model_index.list_models(root, include_shipped)


def default_pool() -> Path:
    """The labelled pool the segmentation panel writes by default."""
    return home_dir() / "pool" / "dataset.json"


def run_dataset_path(out: str | os.PathLike) -> Path:
    return Path(out) / ".training" / RUN_DATASET


def new_run_folder(name: str, root: str | os.PathLike | None = None) -> Path:
    """A folder for a new model in the models folder (``root``): ``name``, or ``name-2``... if taken."""
    root = Path(root) if root is not None else models_folder()
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in name.strip()).strip(".-") or "model"
    candidate, n = root / safe, 1
    while candidate.exists():
        n += 1
        candidate = root / f"{safe}-{n}"
    return candidate


def checkpoint_path(out: str | os.PathLike) -> Path:
    """Where a run in ``out`` keeps its checkpoint (one home, torch-free; the trainers write it)."""
    return Path(out) / ".training" / "checkpoint.pt"


def resumable_runs(root: str | os.PathLike | None = None) -> list[dict]:
    """Interrupted runs in the models (or locators) folder: a checkpoint and no live lock."""
    from .runlock import is_locked

    root = Path(root) if root is not None else models_folder()
    runs = []
    if not root.is_dir():
        return runs
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        checkpoint = checkpoint_path(folder)
        if checkpoint.is_file():
            holder = is_locked(folder)
            runs.append(
                {
                    "out": str(folder),
                    "checkpoint": str(checkpoint),
                    "modified": checkpoint.stat().st_mtime,
                    "locked": holder is not None,
                    "holder": holder,
                }
            )
    return runs
