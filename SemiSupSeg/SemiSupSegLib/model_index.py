"""Where models live and what they are, read from ``model.json`` alone, without importing torch.

The Slicer panels list models before torch is installed, so this module is torch-free;
:mod:`SemiSupSegLib.model_store` (which loads weights) builds on it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .errors import ModelError

MODEL_JSON = "model.json"
PRETRAINED_DIR = Path(__file__).resolve().parent / "pretrained"


def home_dir() -> Path:
    """``$SEMISUPSEG_HOME``, default ``~/.SemiSupSeg``."""
    return Path(os.environ.get("SEMISUPSEG_HOME") or Path.home() / ".SemiSupSeg").expanduser()


def models_dir() -> Path:
    return home_dir() / "models"


def read_model_json(path: str | os.PathLike) -> dict:
    """A model folder's description; :class:`ModelError` when it is missing, corrupt or names no network."""
    folder = Path(path)
    meta_path = folder / MODEL_JSON
    if not meta_path.is_file():
        raise ModelError(f"{folder} is not a model: it has no {MODEL_JSON}")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:  # ValueError: JSON, huge ints
        raise ModelError(f"{meta_path} is corrupt: {type(exc).__name__}: {str(exc)[:200]}") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("networks"), dict) or not meta["networks"]:
        raise ModelError(f"{meta_path} describes no networks")
    return meta


def _object(value: object) -> dict:
    """``value`` if it is a JSON object, else ``{}`` (a hand-edited model.json must not break the list)."""
    return value if isinstance(value, dict) else {}


def describe_model(folder: Path, meta: dict, origin: str) -> dict:
    """The short description the CLI and the panels list; ``dice`` is the validation Dice or None."""
    metrics = _object(meta.get("metrics"))
    dice = _object(metrics.get("validation")).get("dice")
    return {
        "name": str(meta.get("name", folder.name)),
        "path": str(folder),
        "origin": origin,
        "method": meta.get("method", "?"),
        "modality": meta.get("modality", "?"),
        "target": meta.get("target", "?"),
        "description": meta.get("description", ""),
        "created": meta.get("created", ""),
        "metrics": metrics,
        "training": _object(meta.get("training")),
        "dice": dice if isinstance(dice, (int, float)) else None,
    }


def list_models(folder: str | os.PathLike | None = None, include_shipped: bool = True) -> list[dict]:
    """Every valid model in ``folder`` (default: the models folder), then the shipped ones.

    Folders without a valid ``model.json`` are skipped; a folder reached twice (a link) is listed once.
    """
    roots = [("user", Path(folder).expanduser() if folder is not None else models_dir())]
    if include_shipped:
        roots.append(("shipped", PRETRAINED_DIR))
    found, seen = [], set()
    for origin, root in roots:
        if not root.is_dir():
            continue
        for sub in sorted(p for p in root.iterdir() if p.is_dir()):
            try:
                meta = read_model_json(sub)
            except ModelError:
                continue
            if sub.resolve() not in seen:
                seen.add(sub.resolve())
                found.append(describe_model(sub, meta, origin))
    return found


# ---------------------------------------------------------------------------------- the default model
def default_model_file() -> Path:
    """``<home>/default_model.json``: written by the training panel's "Make default"."""
    return home_dir() / "default_model.json"


def default_model() -> str | None:
    """The model the user made the default (a folder that still holds a model), or None."""
    try:
        record = json.loads(default_model_file().read_text(encoding="utf-8"))
        path = Path(record["model"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return str(path) if (path / MODEL_JSON).is_file() else None


def set_default_model(model: str | os.PathLike) -> Path:
    """Make ``model`` the default of the segmentation panel (atomic write).

    Args:
        model: a model folder, or the name of a model in the models folder or among the shipped ones.

    Returns:
        The model's absolute folder.

    Raises:
        ModelError: no such model, or its ``model.json`` is missing or corrupt.
    """
    import datetime

    from .atomic import atomic_write_json
    from .model_store import resolve_model  # imports torch; only "Make default" after a training calls it

    folder = resolve_model(model).absolute()
    meta = read_model_json(folder)
    record = {
        "model": str(folder),
        "name": meta.get("name", folder.name),
        "set": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    }
    atomic_write_json(default_model_file(), record)
    return folder
