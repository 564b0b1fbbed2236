"""Tests of SemiSupSegLib.metrics: hand-computable overlap and surface distances, empty masks."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance

from SemiSupSegLib.errors import InputError
from SemiSupSegLib.metrics import METRIC_KEYS, localisation_error, segmentation_metrics, summarize


def plate(shape, x=None, z=None):
    """A one-voxel-thick plate (every voxel is a surface voxel) at x=``x`` or z=``z``."""
    mask = np.zeros(shape, bool)
    if x is not None:
        mask[2:8, 2:8, x] = True
    else:
        mask[z, 2:8, 2:8] = True
    return mask


def test_cubes_known_overlap():
    ref = np.zeros((10, 10, 10), np.uint8)
    pred = np.zeros((10, 10, 10), np.uint8)
    ref[2:6, 2:6, 2:6] = 1  # 64 voxels
    pred[3:7, 3:7, 3:7] = 1  # 64 voxels, 27 shared
    m = segmentation_metrics(pred, ref, (1.0, 1.0, 1.0))
    assert m["dice"] == pytest.approx(2 * 27 / 128)
    assert m["jaccard"] == pytest.approx(27 / 101)
    assert (m["pred_voxels"], m["ref_voxels"]) == (64.0, 64.0)
    assert list(m) == list(METRIC_KEYS)


def test_identical_masks():
    mask = np.zeros((12, 12, 12), bool)
    mask[3:9, 4:7, 2:10] = True
    m = segmentation_metrics(mask, mask, (0.5, 0.5, 0.5))
    assert (m["dice"], m["jaccard"], m["hd95_mm"], m["asd_vox"]) == (1.0, 1.0, 0.0, 0.0)


def test_shift_along_x_with_anisotropic_spacing():
    shape = (10, 12, 14)
    m = segmentation_metrics(plate(shape, x=7), plate(shape, x=4), (2.0, 1.0, 0.5))  # z, y, x
    assert m["dice"] == 0.0
    assert m["hd95_vox"] == pytest.approx(3.0) and m["asd_vox"] == pytest.approx(3.0)
    assert m["hd95_mm"] == pytest.approx(1.5) and m["asd_mm"] == pytest.approx(1.5)  # 3 * 0.5 mm


def test_shift_along_z_with_anisotropic_spacing():
    shape = (10, 12, 14)
    m = segmentation_metrics(plate(shape, z=6), plate(shape, z=4), (2.0, 1.0, 0.5))
    assert m["hd95_vox"] == pytest.approx(2.0) and m["asd_vox"] == pytest.approx(2.0)
    assert m["hd95_mm"] == pytest.approx(4.0) and m["asd_mm"] == pytest.approx(4.0)  # 2 * 2 mm


def test_matches_monai_on_whole_volume():
    """The crop to the joint bounding box and the shared edges give MONAI's own results."""
    rng = np.random.default_rng(1)
    z, y, x = np.mgrid[:20, :24, :28]
    ref = (z - 9) ** 2 / 36 + (y - 11) ** 2 / 49 + (x - 14) ** 2 / 64 <= 1
    pred = ref ^ (rng.random(ref.shape) < 0.05)
    spacing = (1.5, 0.8, 0.6)
    m = segmentation_metrics(pred, ref, spacing)
    p = torch.from_numpy(np.stack([~pred, pred])[None].astype(np.float32))
    r = torch.from_numpy(np.stack([~ref, ref])[None].astype(np.float32))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hd95 = float(compute_hausdorff_distance(p, r, percentile=95, spacing=list(spacing)))
        asd = float(compute_average_surface_distance(p, r, symmetric=True, spacing=list(spacing)))
        asd_vox = float(compute_average_surface_distance(p, r, symmetric=True))
    assert m["hd95_mm"] == pytest.approx(hd95, rel=1e-5)
    assert m["asd_mm"] == pytest.approx(asd, rel=1e-5)
    assert m["asd_vox"] == pytest.approx(asd_vox, rel=1e-5)
    assert m["asd_mm"] != pytest.approx(m["asd_vox"])


SHAPE, SPACING = (10, 20, 30), (2.0, 1.0, 0.5)
DIAG_VOX, DIAG_MM = math.sqrt(10**2 + 20**2 + 30**2), math.sqrt(20**2 + 20**2 + 15**2)


@pytest.mark.parametrize(
    ("pred_empty", "ref_empty", "expected"),
    [
        (
            True,
            True,
            {"dice": 1.0, "jaccard": 1.0, "hd95_vox": 0.0, "hd95_mm": 0.0, "asd_vox": 0.0, "asd_mm": 0.0},
        ),
        (
            True,
            False,
            {"dice": 0.0, "jaccard": 0.0, "hd95_vox": DIAG_VOX, "hd95_mm": DIAG_MM, "asd_mm": DIAG_MM},
        ),
        (
            False,
            True,
            {"dice": 0.0, "jaccard": 0.0, "hd95_vox": DIAG_VOX, "asd_vox": DIAG_VOX, "asd_mm": DIAG_MM},
        ),
    ],
)
def test_empty_masks(pred_empty, ref_empty, expected):
    full = np.zeros(SHAPE, bool)
    full[2:5, 3:9, 4:20] = True
    empty = np.zeros(SHAPE, bool)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = segmentation_metrics(empty if pred_empty else full, empty if ref_empty else full, SPACING)
    assert all(math.isfinite(v) for v in m.values())
    for key, value in expected.items():
        assert m[key] == pytest.approx(value), key
    assert m["pred_voxels"] == (0.0 if pred_empty else 288.0)


def test_no_warning_for_normal_masks():
    a = np.zeros((8, 8, 8), bool)
    a[2:5, 2:5, 2:5] = True
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        segmentation_metrics(a, np.roll(a, 1, axis=0), (1.0, 1.0, 1.0))


def test_input_errors():
    a = np.zeros((8, 8, 8), bool)
    with pytest.raises(InputError, match=r"shape \(8, 8, 8\) differs from reference shape \(8, 8, 7\)"):
        segmentation_metrics(a, np.zeros((8, 8, 7), bool), (1, 1, 1))
    with pytest.raises(InputError, match="not binary"):
        segmentation_metrics(a.astype(float) + 0.5, a, (1, 1, 1))
    with pytest.raises(InputError, match="spacing"):
        segmentation_metrics(a, a, (1, 0, 1))
    with pytest.raises(InputError, match="3 spacings"):
        segmentation_metrics(a, a, (1, 1))


def test_summarize_ignores_non_numeric():
    rows = [
        {"case": "a", "dice": 0.5, "hd95_mm": 2.0, "ok": True},
        {"case": "b", "dice": 1.0, "hd95_mm": float("nan")},
    ]
    s = summarize(rows)
    assert set(s) == {"dice", "hd95_mm"}
    assert s["dice"] == {"mean": 0.75, "std": 0.25, "n": 2.0}
    assert s["hd95_mm"] == {"mean": 2.0, "std": 0.0, "n": 1.0}
    assert summarize([]) == {}


def test_localisation_error():
    e = localisation_error((3.0, 4.0, 10.0), (0.0, 0.0, 10.0), (1.0, 2.0, 0.5))
    assert e["mm"] == pytest.approx(5.0)
    assert e["vox"] == pytest.approx(math.sqrt(3.0**2 + 2.0**2))
    e = localisation_error((0.0, 0.0, 1.0), (0.0, 0.0, 0.0), (1.0, 1.0, 0.25))
    assert (e["mm"], e["vox"]) == (pytest.approx(1.0), pytest.approx(4.0))
    with pytest.raises(InputError):
        localisation_error((0.0, 0.0), (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
