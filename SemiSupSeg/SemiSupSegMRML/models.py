"""Which model the segmentation panel lists and selects.

The training panel's "Make default" writes ``default_model.json``
(:func:`SemiSupSegLib.model_index.set_default_model`); its one reader is
:func:`SemiSupSegLib.model_index.default_model`, used here.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from SemiSupSegLib import model_index
from SemiSupSegLib import slicer_bridge as bridge


def same_path(a: str, b: str) -> bool:
    """Both given and naming the same folder (case-insensitively where the system is)."""
    return (
        bool(a) and bool(b) and os.path.normcase(os.path.abspath(a)) == os.path.normcase(os.path.abspath(b))
    )


def default_model() -> str:
    """The folder the user made the default model, or "" when none is set (or it was removed)."""
    return model_index.default_model() or ""


def list_models(folder) -> list[dict]:
    """Every model in ``folder``, then the shipped ones (:func:`SemiSupSegLib.slicer_bridge.scan_models`)."""
    return bridge.scan_models(str(folder))


def choose_model(paths: Sequence[str], current: str, default: str, prefer_default: bool = False) -> str:
    """The model to select among the listed ``paths``.

    Args:
        paths: the listed model folders.
        current: the model chosen before ("" when none).
        default: the default model's folder ("" when none).
        prefer_default: the default was just changed ("Make default"): select it over ``current``.

    Returns:
        The default when preferred or when nothing valid is chosen, else ``current``; else the first
        listed model; "" when nothing is listed.
    """
    listed_default = next((p for p in paths if same_path(p, default)), "")
    listed_current = next((p for p in paths if same_path(p, current)), "")
    if listed_default and (prefer_default or not listed_current):
        return listed_default
    return listed_current or (paths[0] if paths else "")
