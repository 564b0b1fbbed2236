"""Segmentation and localisation metrics, computed with MONAI.

Masks are binary arrays indexed ``[z, y, x]`` (as ``sitk.GetArrayFromImage`` returns them), bool
or 0/1; spacing is given in the same ``(z, y, x)`` order. Every metric is returned twice where it
has a unit: in voxels (spacing 1) and in millimetres.

* ``dice``, ``jaccard``: overlap, 1 is perfect.
* ``hd95_vox``, ``hd95_mm``: 95th percentile of the symmetric Hausdorff distance between the
  surfaces of the two masks.
* ``asd_vox``, ``asd_mm``: symmetric average surface distance.
* ``pred_voxels``, ``ref_voxels``: number of foreground voxels.

Multi-class label arrays (K > 2, issue 15): :func:`class_dice` gives each foreground class's Dice
(``dice_<k>``) and their mean (``dice_mean``); the metrics above then describe the foreground as a whole.

Empty masks never give NaN:

* both empty: ``dice = jaccard = 1``, ``hd95 = asd = 0`` (the prediction is right);
* exactly one empty: ``dice = jaccard = 0`` and ``hd95`` and ``asd`` equal the diagonal of the
  whole volume, the largest distance possible inside it, as a finite worst case:
  ``sqrt(nz^2 + ny^2 + nx^2)`` voxels and ``sqrt((nz*sz)^2 + (ny*sy)^2 + (nx*sx)^2)`` mm for an
  array of shape ``(nz, ny, nx)`` and spacing ``(sz, sy, sx)``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from monai.metrics import compute_dice, compute_iou
from monai.metrics.utils import get_mask_edges, get_surface_distance

from .errors import InputError

METRIC_KEYS = ("dice", "jaccard", "hd95_vox", "hd95_mm", "asd_vox", "asd_mm", "pred_voxels", "ref_voxels")


def _as_mask(array: np.ndarray, what: str) -> np.ndarray:
    array = np.asarray(array)
    if array.dtype == bool:
        return array
    if not np.all((array == 0) | (array == 1)):
        raise InputError(f"{what} mask is not binary (values other than 0 and 1)")
    return array != 0


def _check_inputs(pred: np.ndarray, ref: np.ndarray, spacing_zyx: Sequence[float]) -> tuple:
    pred, ref = np.asarray(pred), np.asarray(ref)
    if pred.shape != ref.shape:
        raise InputError(f"prediction shape {pred.shape} differs from reference shape {ref.shape}")
    spacing = tuple(float(s) for s in spacing_zyx)
    if pred.ndim not in (2, 3) or len(spacing) != pred.ndim:
        raise InputError(
            f"expected 3D [z, y, x] masks and 3 spacings, got shape {pred.shape}, spacing {spacing}"
        )
    if not all(math.isfinite(s) and s > 0 for s in spacing):
        raise InputError(f"spacing {spacing} is not positive and finite")
    return _as_mask(pred, "prediction"), _as_mask(ref, "reference"), spacing


def _empty_case(shape: tuple[int, ...], spacing: tuple[float, ...], both_empty: bool) -> dict[str, float]:
    if both_empty:
        overlap, dist_vox, dist_mm = 1.0, 0.0, 0.0
    else:
        overlap = 0.0
        dist_vox = math.sqrt(sum(n * n for n in shape))
        dist_mm = math.sqrt(sum((n * s) ** 2 for n, s in zip(shape, spacing, strict=True)))
    return {
        "dice": overlap,
        "jaccard": overlap,
        "hd95_vox": dist_vox,
        "hd95_mm": dist_mm,
        "asd_vox": dist_vox,
        "asd_mm": dist_mm,
    }


def _crop_to_union(pred: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Crop both masks to their joint bounding box plus a 1-voxel background margin.

    Nothing outside the box is foreground, so the overlap counts are unchanged; the margin keeps
    every surface voxel a surface voxel, and distances between voxels do not depend on where the
    array starts. MONAI's surface distance works on the whole array otherwise (slow on 160^3).
    """
    union = pred | ref
    slices = []
    for axis in range(union.ndim):
        other = tuple(a for a in range(union.ndim) if a != axis)
        hits = np.flatnonzero(union.any(axis=other))
        slices.append(slice(int(hits[0]), int(hits[-1]) + 1))
    pad = [(1, 1)] * union.ndim
    return np.pad(pred[tuple(slices)], pad), np.pad(ref[tuple(slices)], pad)


def _one_hot(mask: np.ndarray) -> torch.Tensor:
    """[1, 2, *shape] one-hot float tensor (background, foreground)."""
    fg = torch.from_numpy(np.ascontiguousarray(mask)).to(torch.float32)
    return torch.stack([1.0 - fg, fg])[None]


def _surface_metrics(pred: np.ndarray, ref: np.ndarray, spacing: tuple[float, ...]) -> dict[str, float]:
    """HD95 and symmetric ASD, in voxels and mm, from MONAI's mask edges and surface distances.

    Same definitions as ``compute_hausdorff_distance(percentile=95)`` (the larger of the two
    directed 95th percentiles) and ``compute_average_surface_distance(symmetric=True)`` (mean of
    all distances of both directions), but the edges are extracted once instead of four times.
    """
    edges_pred, edges_ref = get_mask_edges(torch.from_numpy(pred), torch.from_numpy(ref), crop=False)
    result = {}
    for unit, sampling in (("vox", None), ("mm", list(spacing))):
        forward = get_surface_distance(edges_pred, edges_ref, "euclidean", sampling)
        backward = get_surface_distance(edges_ref, edges_pred, "euclidean", sampling)
        hd95 = torch.max(torch.stack([torch.quantile(d.double(), 0.95) for d in (forward, backward)]))
        result[f"hd95_{unit}"] = float(hd95)
        result[f"asd_{unit}"] = float(torch.cat([forward, backward]).double().mean())
    return result


def _monai_metrics(pred: np.ndarray, ref: np.ndarray, spacing: tuple[float, ...]) -> dict[str, float]:
    """All overlap and surface metrics of two non-empty masks."""
    p, r = _one_hot(pred), _one_hot(ref)
    with warnings.catch_warnings():
        # Both masks are non-empty here; silence MONAI's "ground truth of class 0 is all 0" family anyway.
        warnings.filterwarnings("ignore", message=".*(all 0|is all 0|empty).*")
        result = {
            "dice": float(compute_dice(p, r, include_background=False).reshape(-1)[0]),
            "jaccard": float(compute_iou(p, r, include_background=False).reshape(-1)[0]),
        }
        result.update(_surface_metrics(pred, ref, spacing))
    return result


def segmentation_metrics(pred: np.ndarray, ref: np.ndarray, spacing_zyx: Sequence[float]) -> dict[str, float]:
    """Dice, Jaccard, HD95 and ASD (voxels and mm) of a binary ``[z, y, x]`` prediction.

    Empty masks give the finite values documented in the module docstring. Raises
    :class:`InputError` for shapes that differ, non-binary masks or invalid spacing.
    """
    pred, ref, spacing = _check_inputs(pred, ref, spacing_zyx)
    n_pred, n_ref = int(np.count_nonzero(pred)), int(np.count_nonzero(ref))
    if n_pred == 0 or n_ref == 0:
        result = _empty_case(pred.shape, spacing, both_empty=n_pred == n_ref)
    else:
        result = _monai_metrics(*_crop_to_union(pred, ref), spacing)
    result["pred_voxels"] = float(n_pred)
    result["ref_voxels"] = float(n_ref)
    return {key: result[key] for key in METRIC_KEYS}


def _label_array(array: np.ndarray, what: str, classes: int) -> np.ndarray:
    array = np.asarray(array)
    if array.dtype.kind not in "biu" or array.size and (array.min() < 0 or array.max() >= classes):
        raise InputError(f"{what} labels are not integers in 0..{classes - 1}")
    return array


def class_dice(pred: np.ndarray, ref: np.ndarray, classes: int) -> dict[str, float]:
    """Per-class Dice of two multi-class label arrays and their mean over the foreground classes.

    Class ``k``'s Dice is that of the masks ``pred == k`` and ``ref == k``, ``2 |P & R| / (|P| + |R|)``,
    with the empty-mask rule of the module docstring (both empty: 1, one empty: 0).

    Args:
        pred: predicted labels ``[z, y, x]``, integers in ``0..classes-1``.
        ref: reference labels, same shape.
        classes: K, the number of classes including the background (0).

    Returns:
        ``dice_<k>`` for k = 1..K-1 and ``dice_mean``, their mean.

    Raises:
        InputError: shapes that differ, or labels outside ``0..classes-1``.
    """
    pred, ref = np.asarray(pred), np.asarray(ref)
    if pred.shape != ref.shape:
        raise InputError(f"prediction shape {pred.shape} differs from reference shape {ref.shape}")
    pred, ref = _label_array(pred, "prediction", classes), _label_array(ref, "reference", classes)
    result = {}
    for k in range(1, classes):
        p, r = pred == k, ref == k
        total = int(np.count_nonzero(p)) + int(np.count_nonzero(r))
        result[f"dice_{k}"] = 2.0 * int(np.count_nonzero(p & r)) / total if total else 1.0
    result["dice_mean"] = float(np.mean(list(result.values()))) if result else 1.0
    return result


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
        value, (bool, np.bool_)
    )


def summarize(rows: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Per key: ``mean``, ``std`` (population, ddof=0) and ``n`` over the rows.

    Non-numeric values (strings, bools, None) and non-finite numbers are ignored; keys keep the
    order in which they first appear.
    """
    columns: dict[str, list[float]] = {}
    for row in rows:
        for key, value in row.items():
            if _is_number(value) and math.isfinite(float(value)):
                columns.setdefault(key, []).append(float(value))
    return {
        key: {"mean": float(np.mean(v)), "std": float(np.std(v)), "n": float(len(v))}
        for key, v in columns.items()
    }


def _vector3(values: Sequence[float], what: str) -> np.ndarray:
    try:
        array = np.asarray([float(v) for v in values], dtype=float)
    except (TypeError, ValueError):
        raise InputError(f"{what} {values!r} is not 3 numbers") from None
    if array.shape != (3,) or not np.all(np.isfinite(array)):
        raise InputError(f"{what} {values!r} is not 3 finite numbers")
    return array


def localisation_error(
    pred_lps: Sequence[float], true_lps: Sequence[float], spacing_xyz: Sequence[float]
) -> dict[str, float]:
    """Distance between a predicted and a true point (LPS mm).

    ``mm``: euclidean distance; ``vox``: euclidean norm of the difference divided per axis by the
    spacing ``(x, y, z)`` (exact for axis-aligned volumes).
    """
    diff = _vector3(pred_lps, "predicted point") - _vector3(true_lps, "true point")
    spacing = _vector3(spacing_xyz, "spacing")
    if np.any(spacing <= 0):
        raise InputError(f"spacing {tuple(spacing_xyz)} is not positive")
    return {"mm": float(np.linalg.norm(diff)), "vox": float(np.linalg.norm(diff / spacing))}
