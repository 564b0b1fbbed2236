"""Everything the Slicer panel computes that needs no Slicer: geometry, models, devices, the pool, messages.

The SemiSupSeg scripted module (``SemiSupSeg/SemiSupSeg.py``) only moves numbers between MRML nodes and
these functions, so pytest covers nearly all of the panel's behaviour (``Testing/test_slicer_bridge.py``).
This file imports neither Slicer nor torch: it is imported when Slicer starts, before the panel has
checked that torch is installed.

Coordinate conventions
----------------------
* Slicer works in **RAS** millimetres; ITK/SimpleITK and the engine in **LPS** (x and y negated).
* A Slicer volume maps voxel ``(i, j, k)`` to its *local* RAS frame with the 4x4 ``IJKToRAS`` matrix
  (columns: axis direction x spacing; last column: origin). A parent transform maps local RAS to
  world RAS (``GetMatrixTransformToWorld``); a markups point is read in world RAS.
* ``slicer.util.arrayFromVolume`` and ``sitk.GetArrayFromImage`` are both indexed ``[k, j, i]``, so a
  volume's array and an image built here from it share voxel order.
* The engine sees the volume in its local frame: points go world RAS -> local RAS -> LPS, and results
  (on the same voxel grid) are shown under the volume's parent transform.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from . import model_index
from .errors import InputError, ModelError, SemiSupSegError
from .train_commands import cli_command, device_argument

__all__ = [
    "DEVICE_CHOICES",
    "LPS_FROM_RAS",
    "SMALL_VOLUME_VOXELS",
    "array_from_image",
    "check_volume_array",
    "choose_device",
    "choose_execution",
    "confidence_text",
    "device_choices",
    "panel_device_choices",
    "default_locator",
    "default_models_folder",
    "default_pool_folder",
    "geometry_from_ijk_to_ras",
    "gpu_inventory",
    "ijk_to_ras_from_geometry",
    "ijk_to_ras_from_image",
    "image_from_array",
    "is_out_of_memory",
    "model_label",
    "model_tooltip",
    "ras_to_ijk",
    "resolve_locator_folder",
    "result_summary",
    "scan_locators",
    "scan_models",
    "segment_command",
    "user_message",
    "volume_lps_to_world_ras",
    "world_ras_to_volume_lps",
]

# diag(-1, -1, 1, 1): RAS <-> LPS for points and for 4x4 matrices (it is its own inverse).
LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
_FLIP3 = np.diag([-1.0, -1.0, 1.0])

# ------------------------------------------------------------------------------------------ points


def _matrix(matrix: Any, what: str = "matrix") -> np.ndarray:
    m = np.asarray(matrix, dtype=float)
    if m.shape != (4, 4) or not np.all(np.isfinite(m)):
        raise InputError(f"{what} is not a finite 4x4 matrix (shape {m.shape})")
    return m


def _point(point: Sequence[float], what: str = "point") -> np.ndarray:
    try:
        p = np.asarray([float(v) for v in point], dtype=float)
    except (TypeError, ValueError):
        raise InputError(f"{what} {point!r} is not 3 numbers") from None
    if p.shape != (3,) or not np.all(np.isfinite(p)):
        raise InputError(f"{what} {point!r} is not 3 finite numbers")
    return p


def _apply(matrix: np.ndarray, point: np.ndarray) -> np.ndarray:
    h = matrix @ np.append(point, 1.0)
    if abs(h[3]) < 1e-12:
        raise InputError("the transform maps the point to infinity (projective 4x4 matrix)")
    return h[:3] / h[3]


def _tuple(p: np.ndarray) -> tuple[float, float, float]:
    return (float(p[0]), float(p[1]), float(p[2]))


def world_ras_to_volume_lps(
    point_world_ras: Sequence[float], volume_to_world: Any | None = None
) -> tuple[float, float, float]:
    """A world RAS point (as a markups point gives it) in the volume's local LPS frame (what the engine uses).

    ``volume_to_world`` is the 4x4 matrix of the volume's parent transform (local RAS -> world RAS;
    Slicer's ``GetMatrixTransformToWorld``), or ``None`` when the volume is not transformed.
    """
    p = _point(point_world_ras, "point")
    if volume_to_world is not None:
        m = _matrix(volume_to_world, "parent transform")
        try:
            p = _apply(np.linalg.inv(m), p)
        except np.linalg.LinAlgError:
            raise InputError("the volume's parent transform cannot be inverted") from None
    return _tuple(_FLIP3 @ p)


def volume_lps_to_world_ras(
    point_lps: Sequence[float], volume_to_world: Any | None = None
) -> tuple[float, float, float]:
    """The inverse of :func:`world_ras_to_volume_lps`: an engine (local LPS) point in world RAS."""
    p = _FLIP3 @ _point(point_lps, "point")
    if volume_to_world is not None:
        p = _apply(_matrix(volume_to_world, "parent transform"), p)
    return _tuple(p)


def ras_to_ijk(point_ras: Sequence[float], ras_to_ijk_matrix: Any) -> tuple[float, float, float]:
    """Continuous voxel index ``(i, j, k)`` of a local RAS point, given the volume's 4x4 RASToIJK matrix."""
    return _tuple(_apply(_matrix(ras_to_ijk_matrix, "RASToIJK matrix"), _point(point_ras)))


def ijk_to_ras(index_ijk: Sequence[float], ijk_to_ras_matrix: Any) -> tuple[float, float, float]:
    """Local RAS point of a (continuous) voxel index ``(i, j, k)``."""
    return _tuple(_apply(_matrix(ijk_to_ras_matrix, "IJKToRAS matrix"), _point(index_ijk, "index")))


# ---------------------------------------------------------------------------------------- geometry


def geometry_from_ijk_to_ras(
    ijk_to_ras_matrix: Any,
) -> tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]]:
    """``(origin, spacing, direction)`` of the SimpleITK (LPS) image equal to a Slicer volume's grid.

    ``direction`` is SimpleITK's row-major 3x3 tuple whose *columns* are the i, j, k axis directions.
    Raises :class:`InputError` for a singular matrix (a zero spacing or degenerate axes).
    """
    m = _matrix(ijk_to_ras_matrix, "IJKToRAS matrix")
    linear = m[:3, :3]
    spacing = np.linalg.norm(linear, axis=0)
    if np.any(spacing <= 1e-12) or abs(np.linalg.det(linear)) <= 1e-12 * float(np.prod(spacing)):
        raise InputError(f"the volume's IJKToRAS matrix is singular (spacing {_tuple(spacing)})")
    direction_lps = _FLIP3 @ (linear / spacing)
    origin_lps = _FLIP3 @ m[:3, 3]
    return _tuple(origin_lps), _tuple(spacing), tuple(float(v) for v in direction_lps.reshape(-1))


def ijk_to_ras_from_geometry(
    origin_lps: Sequence[float], spacing: Sequence[float], direction_lps: Sequence[float]
) -> np.ndarray:
    """The Slicer IJKToRAS 4x4 matrix of a SimpleITK image's (LPS) geometry."""
    direction = np.asarray(direction_lps, dtype=float).reshape(3, 3)
    m = np.eye(4)
    m[:3, :3] = _FLIP3 @ direction @ np.diag(np.asarray(spacing, dtype=float))
    m[:3, 3] = _FLIP3 @ np.asarray(origin_lps, dtype=float)
    return m


def ijk_to_ras_from_image(image: sitk.Image) -> np.ndarray:
    """The Slicer IJKToRAS 4x4 matrix of a SimpleITK image."""
    return ijk_to_ras_from_geometry(image.GetOrigin(), image.GetSpacing(), image.GetDirection())


def check_volume_array(shape: Sequence[int], name: str = "the volume") -> None:
    """:class:`InputError` unless ``shape`` (``arrayFromVolume``'s ``[k, j, i]``) is a scalar 3D volume."""
    shape = tuple(int(s) for s in shape)
    if len(shape) == 4:
        raise InputError(
            f"{name} has {shape[3]} components per voxel (a colour, vector or 4D volume); "
            "SemiSupSeg needs a scalar 3D ultrasound volume"
        )
    if len(shape) != 3:
        raise InputError(f"{name} is {len(shape)}D (array shape {shape}); SemiSupSeg needs a 3D volume")
    size_ijk = shape[::-1]
    flat = [axis for axis, n in zip("ijk", size_ijk, strict=True) if n <= 1]
    if flat:
        raise InputError(
            f"{name} is a single slice (size {size_ijk}, 1 voxel along {', '.join(flat)}); "
            "SemiSupSeg needs a 3D volume"
        )


def image_from_array(array_kji: np.ndarray, ijk_to_ras_matrix: Any, name: str = "the volume") -> sitk.Image:
    """A SimpleITK image (a copy) of a Slicer volume's voxels ``[k, j, i]`` and its IJKToRAS matrix."""
    array = np.asarray(array_kji)
    check_volume_array(array.shape, name)
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    if array.dtype.kind == "f":
        bad = int(array.size - np.count_nonzero(np.isfinite(array)))
        if bad:
            raise InputError(f"{name} has {bad} NaN or infinite voxel(s); fix or mask them before segmenting")
    origin, spacing, direction = geometry_from_ijk_to_ras(ijk_to_ras_matrix)
    image = sitk.GetImageFromArray(np.ascontiguousarray(array).copy())
    image.SetOrigin(origin)
    image.SetSpacing(spacing)
    image.SetDirection(direction)
    return image


def array_from_image(image: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """``(array [k, j, i], IJKToRAS 4x4)`` to put a SimpleITK image into a Slicer volume node."""
    return sitk.GetArrayFromImage(image), ijk_to_ras_from_image(image)


# ------------------------------------------------------------------------------------------ folders


def _home() -> Path:
    return model_index.home_dir()


def shipped_folder() -> Path:
    """The models and locators shipped with the engine (``SemiSupSegLib/pretrained``)."""
    return model_index.PRETRAINED_DIR


def default_models_folder() -> Path:
    return _home() / "models"


def default_locators_folder() -> Path:
    return _home() / "locators"


def default_pool_folder() -> Path:
    """Where "Add to labelled pool" writes by default: a dataset folder with ``dataset.json``."""
    return _home() / "pool"


# ------------------------------------------------------------------------------------------- models

_LOCATOR_JSON = "locator.json"


def scan_models(folder: str | os.PathLike | None, include_shipped: bool = True) -> list[dict]:
    """The models in ``folder`` (then the shipped ones), from their ``model.json`` alone (no torch),
    so the combo box can be filled before torch is installed. No folder: the shipped ones only."""
    if folder is None or str(folder) in ("", "."):
        shipped = model_index.list_models(None, include_shipped)
        return [m for m in shipped if m["origin"] == "shipped"]
    return model_index.list_models(folder, include_shipped)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and np.isfinite(value) else None


def _metric_text(metrics: Any) -> str:
    """``"Dice 0.81, HD95 2.3 mm"`` from a model's metrics, wherever the Dice is recorded."""
    if not isinstance(metrics, dict):
        return ""
    candidates = [metrics] + [v for v in metrics.values() if isinstance(v, dict)]
    for block in candidates:
        dice = _number(block.get("dice"))
        if dice is not None:
            hd95 = _number(block.get("hd95_mm"))
            return f"Dice {dice:.2f}" + (f", HD95 {hd95:.1f} mm" if hd95 is not None else "")
    return ""


def _training_text(training: Any) -> str:
    if not isinstance(training, dict):
        return ""
    parts = []
    labelled = training.get("labeled", training.get("labelled"))
    if isinstance(labelled, (int, float)):
        parts.append(f"{int(labelled)} labelled")
    unlabelled = training.get("unlabeled", training.get("unlabelled"))
    if isinstance(unlabelled, (int, float)) and unlabelled:
        parts.append(f"{int(unlabelled)} unlabelled")
    steps = training.get("steps")
    if isinstance(steps, (int, float)):
        parts.append(f"{int(steps)} steps")
    return ", ".join(parts)


def model_label(entry: dict) -> str:
    """One line for the model combo box: ``"name — method, modality, Dice 0.81 (shipped)"``."""
    details = [str(entry.get("method", "?"))]
    modality = entry.get("modality")
    if modality and modality != "?":
        details.append(str(modality))
    metric = _metric_text(entry.get("metrics"))
    if metric:
        details.append(metric)
    origin = " (shipped)" if entry.get("origin") == "shipped" else ""
    return f"{entry.get('name', '?')} — {', '.join(details)}{origin}"


def model_tooltip(entry: dict) -> str:
    """Several lines for the combo box's tooltip: description, target, training summary, metrics, folder."""
    lines = [str(entry.get("name", "?"))]
    if entry.get("description"):
        lines.append(str(entry["description"]))
    lines.append(
        f"method: {entry.get('method', '?')}; modality: {entry.get('modality', '?')}; "
        f"target: {entry.get('target', '?')}"
    )
    training = _training_text(entry.get("training"))
    if training:
        lines.append(f"trained on: {training}")
    metric = _metric_text(entry.get("metrics"))
    if metric:
        lines.append(f"validation: {metric}")
    if entry.get("created"):
        lines.append(f"created: {entry['created']}")
    lines.append(f"folder: {entry.get('path', '?')}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------- locators


def scan_locators(folder: str | os.PathLike | None, include_shipped: bool = True) -> list[Path]:
    """Locator folders (with a ``locator.json``) in ``folder`` and among the shipped ones."""
    roots = [Path(folder).expanduser()] if folder is not None and str(folder) not in ("", ".") else []
    if include_shipped:
        roots.append(shipped_folder())
    found: list[Path] = []
    for root in roots:
        if (root / _LOCATOR_JSON).is_file():
            found.append(root)
        elif root.is_dir():
            found += sorted(p for p in root.iterdir() if (p / _LOCATOR_JSON).is_file())
    return found


def default_locator() -> Path:
    """The locator the panel offers first: the user's first (by folder name), else a shipped one, else the
    (possibly empty) locators folder, which :func:`resolve_locator_folder` then explains."""
    found = scan_locators(default_locators_folder())
    return found[0] if found else default_locators_folder()


def resolve_locator_folder(path: str | os.PathLike | None) -> Path:
    """The locator to run for the chosen path: the folder itself if it is a locator, or the only/first
    locator inside it. :class:`ModelError` with what to do when there is none."""
    if path is None or str(path) in ("", "."):
        raise ModelError(
            "no locator folder is chosen; pick a folder with a locator.json (semisupseg train-locator)"
        )
    folder = Path(path).expanduser()
    if (folder / _LOCATOR_JSON).is_file():
        return folder
    inside = scan_locators(folder, include_shipped=False) if folder.is_dir() else []
    if inside:
        return inside[0]
    if not folder.exists():
        raise ModelError(f"locator folder '{folder}' does not exist")
    raise ModelError(
        f"'{folder}' holds no locator (no {_LOCATOR_JSON} in it or its sub-folders); "
        "train one with 'semisupseg train-locator' or place the point by hand"
    )


def confidence_text(
    q_value: float, confidence: float | None = None, low: bool | None = None, found_by: str | None = None
) -> str:
    """How much to trust a located point, for the panel and the CLI.

    Args:
        q_value: the agents' final max-Q (all a points-only locator has: near 0 or below, they settled).
        confidence: a locator II's instrument likelihood at the point (None for a points-only locator).
        low: whether ``confidence`` is below the threshold calibrated on the locator's validation cases.
        found_by: the model of a several-model segmentation locator that found the point (which
            instrument it is), named in the line.

    Returns:
        One line; a low confidence tells the clinician to place the point by hand.
    """
    if confidence is not None:
        if low:
            return (
                f"LOW confidence ({confidence:.2f}): the instrument may not be at this point; "
                "place the point by hand"
            )
        by = f" by {found_by}" if found_by else ""
        found = f"instrument recognised at the point{by}"
        return f"confidence {confidence:.2f} ({found}); check it and drag if needed"
    q = float(q_value)
    if not np.isfinite(q):
        return "confidence unknown (no finite Q-value); check the point"
    if q <= 0.25:
        return f"settled on a target (final Q {q:.2f}); check the point and drag it if needed"
    return f"low confidence (final Q {q:.2f}: the agents still expected to move); check the point carefully"


# ------------------------------------------------------------------------------------------ devices

DEVICE_CHOICES = ("Auto", "GPU", "CPU")


def gpu_inventory() -> list[tuple[str, int]]:
    """(name, memory in bytes) of every GPU torch sees, in index order; empty without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return []
    props = [torch.cuda.get_device_properties(i) for i in range(torch.cuda.device_count())]
    return [(p.name, int(p.total_memory)) for p in props]


def device_choices(gpus: Sequence[tuple[str, int]]) -> list[str]:
    """The panel's device list: Auto, CPU, then ``"GPU i: name (N GiB)"`` per GPU (issue 18).

    Args:
        gpus: (name, memory in bytes) per GPU, as :func:`gpu_inventory` returns them.

    Returns:
        The choices; each is understood by :func:`choose_device`.
    """
    return [
        "Auto",
        "CPU",
        *[f"GPU {i}: {name} ({memory / 2**30:.0f} GiB)" for i, (name, memory) in enumerate(gpus)],
    ]


def panel_device_choices(inventory: Callable[[], list[tuple[str, int]]] = gpu_inventory) -> list[str]:
    """What a panel's device list offers: :func:`device_choices` of the GPUs torch sees, or
    :data:`DEVICE_CHOICES` (Auto, GPU, CPU) while torch is not installed (it is not imported then: the
    PyTorch extension installs it on first use) or cannot list its GPUs.

    Args:
        inventory: lists the GPUs (:func:`gpu_inventory`; a test double in tests).

    Returns:
        The panel's choices, each understood by :func:`choose_device` and the training commands.
    """
    if importlib.util.find_spec("torch") is None:
        return list(DEVICE_CHOICES)
    try:
        return device_choices(inventory())
    except (ImportError, RuntimeError, OSError):  # a broken CUDA install: the panel still opens
        return list(DEVICE_CHOICES)


def choose_device(choice: str, cuda_available: bool, gpu_count: int | None = None) -> str:
    """The torch device string for a panel choice (``Auto``, ``CPU``, ``GPU``, or ``GPU i: ...`` of
    :func:`device_choices`); :class:`InputError` if a GPU is asked for that torch does not see.

    Args:
        choice: the panel's text.
        cuda_available: whether torch sees a GPU.
        gpu_count: how many GPUs torch sees (checked for ``GPU i``), None to skip the check.
    """
    key = str(choice).strip().lower()
    if key in ("auto", ""):
        return "cuda" if cuda_available else "cpu"
    try:
        device = device_argument(key)  # the one parser of device choices (train_commands)
    except InputError:
        raise InputError(
            f"unknown device {choice!r}; expected Auto, CPU, GPU or one GPU of the list"
        ) from None
    if device == "cpu":
        return "cpu"
    if not cuda_available:
        raise InputError(
            "GPU was chosen but torch sees no CUDA GPU on this computer (or the installed torch is a "
            "CPU-only build); choose Auto or CPU"
        )
    index = device.partition(":")[2]
    if index and gpu_count is not None and int(index) >= gpu_count:
        raise InputError(f"GPU {index} was chosen but torch sees {gpu_count} GPU(s); choose another device")
    return device


# ------------------------------------------------------------------------------------- long-running

# Volumes up to this many voxels are segmented inside Slicer whatever the mode (a few seconds at most).
SMALL_VOLUME_VOXELS = 96**3


def choose_execution(
    voxels: int, has_center: bool, mc_samples: int = 0, force_background: bool = False
) -> str:
    """``"in-process"`` or ``"background"`` for one segmentation.

    In process (the model stays loaded for the next click): a centre point without uncertainty, where
    the work is bounded (one batch of 2x2x2 patches around the point, a few seconds), or any small
    volume. Background process (the UI stays responsive, Cancel kills it): full-volume sliding-window
    mode and Monte-Carlo uncertainty on larger volumes, whose time grows with the volume.
    """
    if force_background:
        return "background"
    if int(voxels) <= SMALL_VOLUME_VOXELS:
        return "in-process"
    if has_center and int(mc_samples) <= 0:
        return "in-process"
    return "background"


def segment_command(
    python: str,
    *,
    model: str,
    input_path: str,
    output_path: str,
    centers_lps: Sequence[Sequence[float]] = (),
    probability_path: str | None = None,
    uncertainty_path: str | None = None,
    mc_samples: int = 0,
    device: str = "cpu",
    precision: str = "auto",
) -> list[str]:
    """The background segmentation's command: ``semisupseg segment ... --progress json``.

    Args:
        python: the interpreter (Slicer's ``PythonSlicer``).
        model, input_path, output_path: the model folder, the volume file and the label file to write.
        centers_lps: the instrument centres in the volume's LPS frame, one ``--center`` each (none: the
            whole volume).
        probability_path, uncertainty_path: optional outputs.
        mc_samples: passes of the uncertainty estimator (0: the estimator's own default).
        device, precision: as ``semisupseg segment`` takes them.

    Returns:
        An argument list (for ``subprocess``/``QProcess``, no shell).
    """
    args = ["--model", str(model), "--input", str(input_path), "--output", str(output_path)]
    args += ["--device", str(device), "--precision", str(precision), "--progress", "json"]
    for point in centers_lps:
        args.append("--center=" + ",".join(repr(float(v)) for v in _point(point, "centre point")))
    if probability_path:
        args += ["--probability", str(probability_path)]
    if uncertainty_path:
        args += ["--uncertainty", str(uncertainty_path)]
        if int(mc_samples) > 0:  # else the estimator's own number of passes
            args += ["--mc-samples", str(int(mc_samples))]
    return cli_command(["segment"], args, python)


def result_summary(seconds: float, mode: str, device: str, precision: str = "") -> str:
    """The status line after a segmentation, e.g. ``"Segmented in 3.2 s (around the point, cpu, bf16)"``."""
    where = {"roi": "around the point", "sliding-window": "full volume"}.get(mode, mode)
    details = ", ".join(x for x in (where, device, precision) if x)
    return f"Segmented in {float(seconds):.1f} s ({details})"


# -------------------------------------------------------------------------------------- messages


def is_out_of_memory(exc: BaseException) -> bool:
    """True for CPU or GPU out-of-memory errors, whatever library raised them."""
    if isinstance(exc, MemoryError):
        return True
    if type(exc).__name__ == "OutOfMemoryError":  # torch.cuda.OutOfMemoryError / torch.OutOfMemoryError
        return True
    text = str(exc).lower()
    return any(
        s in text
        for s in (
            "out of memory",
            "can't allocate memory",
            "cannot allocate memory",
            "bad_alloc",
            "not enough memory",
            "failed to allocate",
        )
    )


def user_message(exc: BaseException, device: str | None = None) -> str:
    """A one-paragraph message for the panel, never a stack trace.

    The engine's own errors (missing model, point outside the volume, wrong dimensionality...) already
    name the problem and are shown as they are; out-of-memory gets advice; anything else is summarised
    with its type so that it can be reported.
    """
    if isinstance(exc, SemiSupSegError):
        return str(exc)
    if is_out_of_memory(exc):
        on_gpu = device == "cuda" or "cuda" in str(exc).lower()
        advice = (
            "choose CPU as the device (slower, uses the computer's memory), or place a centre point "
            "so that only the region around it is segmented"
            if on_gpu
            else "place a centre point so that only the region around it is segmented, turn the "
            "uncertainty output off, or close other programs"
        )
        where = "the GPU" if on_gpu else "the computer"
        return f"Out of memory on {where} while segmenting: {advice}."
    if isinstance(exc, FileNotFoundError):
        return f"File not found: {exc.filename or exc}"
    if isinstance(exc, PermissionError):
        return f"Permission denied: {exc.filename or exc}; choose a folder you can write to"
    if isinstance(exc, (ImportError, ModuleNotFoundError)):
        missing = getattr(exc, "name", None) or str(exc)
        return (
            f"A Python package is missing ({missing}). Click Segment again to install the dependencies, "
            "or install them from the PyTorch Utils module and the Python console"
        )
    first_line = (str(exc).strip().splitlines() or [""])[0][:300]
    return f"Unexpected error ({type(exc).__name__}): {first_line or 'no message'}"
