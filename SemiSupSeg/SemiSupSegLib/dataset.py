"""Datasets described by a Medical Segmentation Decathlon style ``dataset.json``.

The file is readable by ``monai.data.load_decathlon_datalist``::

    {"name": "...", "description": "...", "modality": {"0": "US"},
     "labels": {"0": "background", "1": "instrument"},
     "training": [{"image": "images/a.nii.gz", "label": "labels/a.nii.gz", "center": [x, y, z]}],
     "unlabeled": [{"image": "images/u.nii.gz", "center": [x, y, z]}],
     "test": [{"image": "images/t.nii.gz", "label": "labels/t.nii.gz"}]}

Paths are relative to the folder of the json and stay inside it (``../`` leaving the folder is refused;
an absolute path names a file elsewhere on purpose and is accepted). ``center`` is
optional, an LPS point in mm. ``test`` entries may also be plain path strings (MSD style). Each
section is optional, but a file needs at least one: a dataset with only ``test`` cases can be
evaluated; training needs labelled ``training`` cases (:func:`labelled_cases`). Labels are validated
in every section that has them (``training`` and ``test``).
Without ``labels`` the classes are ``{"0": "background", "1": "foreground"}``. Keys the engine does
not know are kept when the file is rewritten. The file is rewritten under a lock
(:func:`dataset_lock`), so two processes adding cases at once lose none.
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from . import imageio
from .atomic import atomic_write_json
from .errors import DatasetError, InputError
from .runlock import file_lock

SECTIONS = ("training", "unlabeled", "test")
DEFAULT_LABELS = {"0": "background", "1": "foreground"}
_KNOWN_ENTRY_KEYS = ("image", "label", "center")
_MAX_LISTED = 10


@dataclass
class Case:
    """One entry of a dataset section; paths are absolute."""

    name: str  # file name of the image without its extension
    image: Path
    label: Path | None
    center: tuple[float, float, float] | None  # LPS mm
    section: str  # "training" | "unlabeled" | "test"
    index: int  # position in its section
    extra: dict[str, Any] = field(default_factory=dict)  # unknown keys of the entry, kept on save


@dataclass
class Dataset:
    """A parsed ``dataset.json``. ``raw`` is the json as read."""

    path: Path
    name: str
    labels: dict[int, str]
    training: list[Case]
    unlabeled: list[Case]
    test: list[Case]
    raw: dict

    @property
    def num_classes(self) -> int:
        """Number of classes including background: largest label value + 1."""
        return max(self.labels) + 1 if self.labels else 0

    @property
    def modality(self) -> str:
        """The imaging modality: the Decathlon's ``{"0": "US"}`` (channel 0's) or a plain ``"US"``; "" if
        absent or of another form (it only describes the data: nothing depends on it)."""
        value = self.raw.get("modality")
        if isinstance(value, dict):
            value = value.get("0", "")
        return value if isinstance(value, str) else ""

    def cases(self) -> list[Case]:
        """All cases, training then unlabeled then test."""
        return [*self.training, *self.unlabeled, *self.test]


# --------------------------------------------------------------------------------------------- parsing


def _format_problems(what: str, problems: list[str]) -> str:
    """One line for one problem (``dataset 'd.json' has 1 problem: ...``), else one line per problem."""
    if len(problems) == 1:
        return f"{what} has 1 problem: {problems[0]}"
    lines = [f"{what} has {len(problems)} problem(s):"]
    lines += [f"  - {p}" for p in problems[:_MAX_LISTED]]
    if len(problems) > _MAX_LISTED:
        lines.append(f"  ... and {len(problems) - _MAX_LISTED} more")
    return "\n".join(lines)


def _resolve(base: Path, value: str) -> Path:
    return Path(os.path.normpath(base / os.path.expanduser(value)))


def _leaves_folder(value: str) -> bool:
    """Whether a relative path climbs out of the dataset's folder (``../x``, ``a/../../x``)."""
    if os.path.isabs(os.path.expanduser(value)):
        return False
    normal = os.path.normpath(value.replace("\\", "/")).replace("\\", "/")
    return normal == ".." or normal.startswith("../")


def _parse_center(value: Any) -> tuple[float, float, float] | None:
    """The center as 3 floats, or ``None`` if absent or invalid (validation reports it)."""
    if value is None or isinstance(value, (str, bytes)):
        return None
    try:
        values = tuple(float(v) for v in value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: a JSON integer beyond a float
        return None
    if len(values) != 3 or not all(math.isfinite(v) for v in values):
        return None
    return values  # type: ignore[return-value]


def _parse_entry(entry: Any, section: str, index: int, base: Path, problems: list[str]) -> Case | None:
    if section == "test" and isinstance(entry, str):
        entry = {"image": entry}
    if not isinstance(entry, dict):
        problems.append(f"{section}[{index}] is not an object with an 'image' key")
        return None
    image = entry.get("image")
    if not isinstance(image, str) or not image:
        problems.append(f"{section}[{index}] has no 'image' path")
        return None
    label = entry.get("label")
    if label is not None and not isinstance(label, str):
        problems.append(f"{section}[{index}] 'label' is not a path string")
        return None
    for what, value in (("image", image), ("label", label)):
        if value and _leaves_folder(value):
            problems.append(
                f"{section}[{index}] {what} path {value!r} leaves the dataset folder; "
                "give an absolute path for a file elsewhere"
            )
            return None
    return Case(
        name=imageio.strip_image_extension(image),
        image=_resolve(base, image),
        label=_resolve(base, label) if label else None,
        center=_parse_center(entry.get("center")),
        section=section,
        index=index,
        extra={k: v for k, v in entry.items() if k not in _KNOWN_ENTRY_KEYS},
    )


def _parse_labels(raw: dict, problems: list[str]) -> dict[int, str]:
    labels = raw.get("labels", DEFAULT_LABELS)
    if not isinstance(labels, dict) or not labels:
        problems.append('\'labels\' is not a non-empty object like {"0": "background", "1": "instrument"}')
        return {0: "background", 1: "foreground"}
    parsed: dict[int, str] = {}
    keys: dict[int, str] = {}
    for key, value in labels.items():
        try:
            number = int(key)
        except (TypeError, ValueError):
            problems.append(f"'labels' key {key!r} is not an integer")
            continue
        if number in keys:  # "0" and "00": one would silently replace the other's name
            problems.append(f"'labels' keys {keys[number]!r} and {key!r} both name class {number}")
        keys[number], parsed[number] = key, str(value)
    return dict(sorted(parsed.items()))


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise DatasetError(f"dataset file '{path}' does not exist")
    try:
        raw = json.loads(path.read_text(encoding="utf-8-sig"))  # -sig: a BOM (Windows editors) is skipped
    except (OSError, UnicodeDecodeError) as err:
        raise DatasetError(f"dataset file '{path}' cannot be read: {err}") from None
    except (ValueError, RecursionError) as err:  # JSONDecodeError, > 4300 digits, nested 1000 deep
        raise DatasetError(f"dataset file '{path}' is not valid JSON: {err}") from None
    if not isinstance(raw, dict):
        raise DatasetError(f"dataset file '{path}' does not hold a JSON object")
    return raw


def _dataset_path(path: str | os.PathLike) -> Path:
    path = Path(path).expanduser()
    return path / "dataset.json" if path.is_dir() else path


def _parse(path: Path, raw: dict) -> Dataset:
    problems: list[str] = []
    if not any(section in raw for section in SECTIONS):
        problems.append(f"none of the lists {', '.join(repr(s) for s in SECTIONS)} is present")
    sections: dict[str, list[Case]] = {}
    for section in SECTIONS:
        entries = raw.get(section, [])
        if not isinstance(entries, list):
            problems.append(f"'{section}' is not a list")
            entries = []
        cases = [_parse_entry(e, section, i, path.parent, problems) for i, e in enumerate(entries)]
        sections[section] = [c for c in cases if c is not None]
    labels = _parse_labels(raw, problems)
    if problems:
        raise DatasetError(_format_problems(f"dataset '{path}'", problems), problems)
    name = raw.get("name") if isinstance(raw.get("name"), str) else path.parent.name
    return Dataset(path=path, name=name, labels=labels, raw=raw, **sections)


def load_dataset(path: str | os.PathLike, *, validate: bool = True, check_images: bool = True) -> Dataset:
    """Read a ``dataset.json`` (or the one in a folder) and, if ``validate``, check every case.

    Raises :class:`DatasetError` whose ``problems`` lists every problem found.
    """
    path = _dataset_path(path)
    dataset = _parse(path, _read_json(path))
    if validate:
        problems = validate_dataset(dataset, check_images=check_images)
        if problems:
            raise DatasetError(_format_problems(f"dataset '{path}'", problems), problems)
    return dataset


def labelled_cases(ds: Dataset, section: str, purpose: str) -> list[Case]:
    """The cases of ``section`` that have a label, or a :class:`DatasetError` saying there are none.

    Args:
        ds: the dataset.
        section: ``"training"`` or ``"test"``.
        purpose: what they are needed for, for the message (``"to train on"``).

    Returns:
        The labelled cases, in their order in the file.
    """
    cases = [c for c in getattr(ds, section) if c.label is not None]
    if not cases:
        raise DatasetError(f"dataset '{ds.path}' has no labelled cases in its '{section}' list {purpose}")
    return cases


# ------------------------------------------------------------------------------------------ validation


def _case_tag(case: Case) -> str:
    return f"{case.section}[{case.index}] '{case.name}'"


def _raw_center(ds: Dataset, case: Case) -> Any:
    entries = ds.raw.get(case.section)
    if isinstance(entries, list) and case.index < len(entries) and isinstance(entries[case.index], dict):
        return entries[case.index].get("center")
    return None


def _check_labels_declared(labels: dict[int, str]) -> list[str]:
    if sorted(labels) != list(range(len(labels))):
        return [f"'labels' keys {sorted(labels)} are not 0..{len(labels) - 1}"]
    return []


def _check_duplicates(cases: list[Case]) -> list[str]:
    problems, first_seen = [], {}
    for case in cases:
        if case.name in first_seen:
            problems.append(
                f"{_case_tag(case)}: duplicate case name (also {case.section}[{first_seen[case.name]}])"
            )
        else:
            first_seen[case.name] = case.index
    return problems


def _check_entry(ds: Dataset, case: Case) -> list[str]:
    """Problems found without reading images: missing files, missing label, invalid center."""
    tag, problems = _case_tag(case), []
    if case.section == "training" and case.label is None:
        problems.append(f"{case.section}[{case.index}] '{case.name}' has no label; put it under 'unlabeled'")
    if not case.image.is_file():
        problems.append(f"{tag}: image file '{case.image}' does not exist")
    if case.label is not None and not case.label.is_file():
        problems.append(f"{tag}: label file '{case.label}' does not exist")
    raw_center = _raw_center(ds, case) if case.center is None else None
    if raw_center is not None and _parse_center(raw_center) is None:
        problems.append(f"{tag}: center {raw_center!r} is not 3 finite numbers (LPS mm)")
    return problems


def _check_label_values(label: sitk.Image, labels: dict[int, str]) -> str | None:
    values = np.unique(sitk.GetArrayViewFromImage(label))
    declared = sorted(labels)
    outside = [v for v in values.tolist() if v not in labels]
    if not outside:
        return None
    shown = [int(v) if float(v).is_integer() else float(v) for v in outside[:_MAX_LISTED]]
    more = f" (and {len(outside) - _MAX_LISTED} more)" if len(outside) > _MAX_LISTED else ""
    return f"label has values {shown}{more} outside the declared classes {declared}"


def _check_images(ds: Dataset, case: Case) -> list[str]:
    """Problems found by reading the image and label of a case (files known to exist)."""
    tag, problems = _case_tag(case), []
    try:
        image = imageio.read_image(case.image, what="image")
    except InputError as err:
        return [f"{tag}: {err}"]
    if case.center is not None:
        try:
            imageio.check_point_inside(image, case.center, what="center")
        except InputError as err:
            problems.append(f"{tag}: {err}")
    if case.label is None or case.section == "unlabeled" or not case.label.is_file():
        return problems
    try:
        label = imageio.read_image(case.label, what="label")
    except InputError as err:
        return [*problems, f"{tag}: {err}"]
    mismatch = imageio.same_geometry(label, image)
    if mismatch:
        problems.append(f"{tag}: label {mismatch}")
    values = _check_label_values(label, ds.labels)
    if values:
        problems.append(f"{tag}: {values}")
    return problems


def validate_dataset(ds: Dataset, *, check_images: bool = True) -> list[str]:
    """Every problem of the dataset, each naming its case (``"training[2] 'case_003': ..."``).

    Without ``check_images`` only the json itself and the existence of the files are checked;
    with it every image and label is read (dimension, NaN, geometry, label values, center).
    """
    problems = _check_labels_declared(ds.labels)
    for section in SECTIONS:
        problems += _check_duplicates(getattr(ds, section))
    for case in ds.cases():
        problems += _check_entry(ds, case)
        if check_images and case.image.is_file():
            problems += _check_images(ds, case)
    return problems


# ------------------------------------------------------------------------------------------ writing


def _relative(path: Path, base: Path) -> str:
    """``path`` relative to ``base`` if it lies inside it, else absolute; always with ``/``."""
    try:
        return Path(os.path.normpath(path)).relative_to(os.path.normpath(base)).as_posix()
    except ValueError:
        return Path(path).as_posix()


def _case_entry(case: Case, base: Path) -> dict[str, Any]:
    entry: dict[str, Any] = {"image": _relative(case.image, base)}
    if case.label is not None:
        entry["label"] = _relative(case.label, base)
    if case.center is not None:
        entry["center"] = [float(v) for v in case.center]
    entry.update(case.extra)
    return entry


def _dataset_to_raw(ds: Dataset, base: Path) -> dict:
    raw = copy.deepcopy(ds.raw)
    raw["name"] = ds.name
    raw["labels"] = {str(k): v for k, v in sorted(ds.labels.items())}
    for section in SECTIONS:
        entries = [_case_entry(c, base) for c in getattr(ds, section)]
        if section == "test" and entries and all(set(e) == {"image"} for e in entries):
            entries = [e["image"] for e in entries]  # MSD style
        if entries or section in raw or section == "training":
            raw[section] = entries
    return raw


def save_dataset(ds_or_raw_dict: Dataset | dict, path: str | os.PathLike) -> None:
    """Write a :class:`Dataset` (paths made relative to the json's folder) or a raw dict, atomically."""
    path = Path(path)
    if isinstance(ds_or_raw_dict, Dataset):
        raw = _dataset_to_raw(ds_or_raw_dict, path.parent.absolute())
    else:
        raw = ds_or_raw_dict
    with dataset_lock(path):
        atomic_write_json(path, raw)


def dataset_lock(path: str | os.PathLike, timeout: float = 10.0):
    """The lock every rewrite of a ``dataset.json`` holds: ``.dataset.json.lock`` next to it.

    Args:
        path: the ``dataset.json``.
        timeout: seconds to wait for another writer (:func:`SemiSupSegLib.runlock.file_lock`).

    Returns:
        A context manager holding the lock.
    """
    path = Path(path)
    return file_lock(path.with_name(f".{path.name}.lock"), timeout)


# ------------------------------------------------------------------------------------------ upsert


def _new_raw(path: Path) -> dict:
    return {"name": path.parent.name, "description": "", "labels": dict(DEFAULT_LABELS), "training": []}


def _entry_dict(entry: Any) -> dict:
    return {"image": entry} if isinstance(entry, str) else dict(entry)


def _matches(entry: Any, image: Path, name: str, base: Path) -> bool:
    entry = _entry_dict(entry)
    other = entry.get("image")
    if not isinstance(other, str):
        return False
    return _resolve(base, other) == image or imageio.strip_image_extension(other) == name


def _checked_inputs(section: str, image: Any, label: Any, center: Any) -> tuple[Path, Path | None]:
    if section not in SECTIONS:
        raise InputError(f"unknown dataset section {section!r}; expected one of {', '.join(SECTIONS)}")
    if section == "training" and label is None:
        raise InputError("a training case needs a label; add it to 'unlabeled' instead")
    if center is not None and _parse_center(center) is None:
        raise InputError(f"center {center!r} is not 3 finite numbers (LPS mm)")
    image_path = Path(os.path.abspath(Path(image).expanduser()))
    label_path = Path(os.path.abspath(Path(label).expanduser())) if label is not None else None
    for what, p in (("image", image_path), ("label", label_path)):
        if p is not None and not p.is_file():
            raise InputError(f"{what} file '{p}' does not exist")
    return image_path, label_path


def upsert_case(
    dataset_json_path: str | os.PathLike,
    section: str,
    image: str | os.PathLike,
    label: str | os.PathLike | None = None,
    center: tuple[float, float, float] | list[float] | None = None,
    *,
    name: str | None = None,
) -> Case:
    """Add a case to a section, or update in place the entry with the same image path or name.

    ``name`` (default: the image's file name without extension) is only used to find an existing
    entry; the case name is always the image's file stem. Creates ``dataset.json`` (default labels)
    if absent. A case added to ``training`` is removed from ``unlabeled``. ``label``/``center``
    left as ``None`` keep the values of the entry updated (or moved from ``unlabeled``). The file
    is written atomically. Returns the resulting case.
    """
    path = _dataset_path(dataset_json_path).absolute()
    image_path, label_path = _checked_inputs(section, image, label, center)
    with dataset_lock(path):  # read, change and write as one step: a concurrent writer waits
        raw = _read_json(path) if path.exists() else _new_raw(path)
        return _upsert_raw(path, raw, section, image_path, label_path, center, name)


def _upsert_raw(
    path: Path, raw: dict, section: str, image: Path, label: Path | None, center: Any, name: str | None
) -> Case:
    """The body of :func:`upsert_case` on the file's current content ``raw``, written back to ``path``."""
    _parse(path, raw)  # refuse to edit a malformed file
    base = path.parent
    name = name or imageio.strip_image_extension(image)
    moved = _pop_matches(raw, "unlabeled", image, name, base) if section == "training" else []
    entries = _section_entries(raw, section)
    position = next((i for i, e in enumerate(entries) if _matches(e, image, name, base)), None)
    previous = _entry_dict(entries[position]) if position is not None else (moved[0] if moved else {})
    entry = _updated_entry(previous, section, image, label, center, base)
    if position is None:
        entries.append(entry)
    else:
        entries[position] = entry
        entries[:] = [
            e for i, e in enumerate(entries) if i == position or not _matches(e, image, name, base)
        ]
    atomic_write_json(path, raw)
    return _find_case(path, raw, section, image)


def _section_entries(raw: dict, section: str) -> list:
    """The section's list in ``raw`` (created if absent); MSD string test entries become dicts."""
    entries = raw.get(section)
    if not isinstance(entries, list):
        entries = raw[section] = []
    entries[:] = [_entry_dict(e) for e in entries]  # keep the list homogeneous for MONAI
    return entries


def _pop_matches(raw: dict, section: str, image: Path, name: str, base: Path) -> list[dict]:
    """Remove from ``raw[section]`` the entries matching the image or name; return them."""
    entries = raw.get(section)
    if not isinstance(entries, list):
        return []
    popped = [_entry_dict(e) for e in entries if _matches(e, image, name, base)]
    entries[:] = [e for e in entries if not _matches(e, image, name, base)]
    return popped


def _updated_entry(
    previous: dict, section: str, image: Path, label: Path | None, center: Any, base: Path
) -> dict:
    entry = dict(previous)
    entry["image"] = _relative(image, base)
    if label is not None:
        entry["label"] = _relative(label, base)
    if center is not None:
        entry["center"] = [float(v) for v in center]
    if section == "unlabeled":
        entry.pop("label", None)
    return entry


def _find_case(path: Path, raw: dict, section: str, image: Path) -> Case:
    dataset = _parse(path, raw)
    for case in getattr(dataset, section):
        if case.image == image:
            return case
    raise DatasetError(f"internal error: case '{image}' not found after writing '{path}'")


# ---------------------------------------------------------------------------------------- the pool
# The panels' labelled / unlabelled pool: one dataset.json with the cases saved from Slicer.
_NAME_CHARS = re.compile(r"[^A-Za-z0-9._-]+")


def case_name(name: str) -> str:
    """A stable file-system-safe case name from a volume's name (the same name is the same case)."""
    cleaned = _NAME_CHARS.sub("_", str(name).strip()).strip("._")
    if not cleaned:
        raise InputError(  # "病例" has letters, but none a file name keeps on every system
            f"case name {name!r} has no letters or digits of A-Z, a-z, 0-9; type a case name with some"
        )
    return cleaned[:120]


class PoolResult:
    """What :func:`add_to_pool` did: the case, its section, files, and whether it replaced an entry."""

    def __init__(self, case: Case, dataset_json: Path, updated: bool) -> None:
        self.case = case
        self.dataset_json = dataset_json
        self.updated = updated

    @property
    def message(self) -> str:
        verb = "Updated" if self.updated else "Added"
        where = "labelled pool" if self.case.section == "training" else "unlabelled pool"
        return f"{verb} case '{self.case.name}' in the {where} ({self.dataset_json})"


def _existing_sections(dataset_json: Path, name: str) -> set[str]:
    if not dataset_json.is_file():
        return set()
    try:
        ds = load_dataset(dataset_json, validate=False)
    except (DatasetError, InputError):
        return set()
    return {c.section for c in ds.cases() if c.name == name}


def add_to_pool(
    pool_folder: str | os.PathLike,
    name: str,
    image: sitk.Image,
    label: sitk.Image | None = None,
    center_lps: Sequence[float] | None = None,
    *,
    unlabeled: bool = False,
) -> PoolResult:
    """Save a case into the pool folder's ``dataset.json`` (created if absent) and return what was done.

    Labelled (default): ``images/<name>.nii.gz`` and ``labels/<name>.nii.gz`` (0/1, uint8, on exactly
    the image's grid) in the ``training`` section, replacing an unlabelled entry of the same case.
    ``unlabeled=True``: the image (and the centre point, if any) in ``unlabeled``. Every file is written
    atomically, the image and label together, then ``dataset.json`` under its lock (two panels adding at
    once lose no entry); adding the same name again updates the entry and its files instead of
    duplicating them. A failed write raises a named error: a new case leaves the pool unchanged; an
    updated case whose ``dataset.json`` could not be written keeps its old entry with the new files.
    """
    name = case_name(name)
    folder = Path(pool_folder).expanduser()
    if str(pool_folder) in ("", "."):
        raise InputError("no pool folder is chosen; choose the dataset folder to save into")
    if folder.exists() and not folder.is_dir():
        raise InputError(f"pool folder '{folder}' is a file, not a folder")
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError("the volume to save is not a scalar 3D image")
    center = None
    if center_lps is not None:
        center = _parse_center(center_lps)
        if center is None:
            raise InputError(f"centre point {center_lps!r} is not 3 finite numbers (LPS mm)")
        imageio.check_point_inside(image, center, what="centre point")
    dataset_json = folder / "dataset.json"
    sections = _existing_sections(dataset_json, name)
    if unlabeled:
        if "training" in sections:
            raise InputError(
                f"case '{name}' is already in the labelled pool; adding it as unlabelled would hide its "
                "label. Add it as labelled to update it, or give this volume another case name"
            )
        label_image = None
    else:
        if label is None:
            raise InputError("there is no segmentation to save; segment or draw the instrument first")
        mismatch = imageio.same_geometry(label, image)
        if mismatch:
            raise InputError(f"the segmentation does not match the volume's grid: {mismatch}")
        label_image = sitk.Cast(
            sitk.BinaryThreshold(label, 1e-6, 1e30, 1, 0) if _is_float(label) else label != 0, sitk.sitkUInt8
        )
        label_image.CopyInformation(image)
        if not np.any(sitk.GetArrayViewFromImage(label_image)):
            raise InputError(
                "the instrument segment is empty; correct it with the Segment Editor, or use "
                "'add as unlabelled' to save the volume with just the point"
            )
    image_path = folder / "images" / f"{name}.nii.gz"
    label_path = folder / "labels" / f"{name}.nii.gz"
    # image and label replace their files together or not at all (a full disk leaves the old pair)
    files = [(image, image_path)] + ([(label_image, label_path)] if label_image is not None else [])
    imageio.write_images(files)
    section = "unlabeled" if unlabeled else "training"
    case = upsert_case(
        dataset_json, section, image_path, label_path if label_image is not None else None, center
    )
    return PoolResult(case, dataset_json, updated=bool(sections))


def _is_float(image: sitk.Image) -> bool:
    return image.GetPixelID() in (sitk.sitkFloat32, sitk.sitkFloat64)
