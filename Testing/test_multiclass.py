"""Multi-class (K > 2, issue 15): label resampling, argmax labels, per-class Dice, the mixed phantom."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from torch import nn

from SemiSupSegLib import inference
from SemiSupSegLib.cli import main
from SemiSupSegLib.errors import InputError
from SemiSupSegLib.metrics import class_dice
from SemiSupSegLib.model_store import LoadedModel
from SemiSupSegLib.preprocessing import Preprocessing, resample_to_spacing

SPACING = (0.4, 0.55, 0.7)  # anisotropic, non-cubic, rotated: an axis-order bug moves the classes
SIZE = (40, 32, 24)
DIRECTION = np.array([[0.8, -0.6, 0.0], [0.6, 0.8, 0.0], [0.0, 0.0, 1.0]]) @ np.array(
    [[1.0, 0.0, 0.0], [0.0, 0.96, -0.28], [0.0, 0.28, 0.96]]
)
BOXES_MM = {1: ((2.0, 9.0), (3.0, 8.0), (4.0, 12.0)), 2: ((9.0, 14.0), (3.0, 8.0), (4.0, 12.0))}
"""Class -> (x, y, z) mm ranges along the image axes from the first voxel centre; class 2 touches class 1."""


def _three_class_image(spacing=SPACING, size=SIZE) -> tuple[sitk.Image, sitk.Image]:
    """A rotated anisotropic image (0 / 50 / 100 for classes 0 / 1 / 2) and its label."""
    axes = (np.arange(n) * s for n, s in zip(size[::-1], spacing[::-1], strict=True))
    zz, yy, xx = np.meshgrid(*axes, indexing="ij")
    label = np.zeros(size[::-1], np.uint8)
    for value, (rx, ry, rz) in BOXES_MM.items():
        inside = (xx >= rx[0]) & (xx < rx[1]) & (yy >= ry[0]) & (yy < ry[1]) & (zz >= rz[0]) & (zz < rz[1])
        label[inside] = value
    images = []
    for array in (label.astype(np.float32) * 50.0, label):
        image = sitk.GetImageFromArray(array)
        image.SetSpacing(spacing)
        image.SetOrigin((5.0, -3.0, 2.5))
        image.SetDirection(DIRECTION.ravel().tolist())
        images.append(image)
    return images[0], images[1]


def _class_volumes_mm3(label: sitk.Image) -> dict[int, float]:
    array = sitk.GetArrayViewFromImage(label)
    voxel = float(np.prod(label.GetSpacing()))
    return {k: float(np.count_nonzero(array == k)) * voxel for k in (1, 2)}


def test_label_resampling_keeps_every_class_in_place():
    _, label = _three_class_image()
    resampled = resample_to_spacing(label, (0.5, 0.5, 0.5), is_label=True)
    array = sitk.GetArrayViewFromImage(resampled)
    assert set(np.unique(array).tolist()) == {0, 1, 2}
    assert resampled.GetDirection() == pytest.approx(label.GetDirection())
    before, after = _class_volumes_mm3(label), _class_volumes_mm3(resampled)
    for k in (1, 2):
        assert after[k] == pytest.approx(before[k], rel=0.15), f"class {k}: {before[k]} -> {after[k]} mm3"
    # every resampled voxel of class k lies in class k's box (one coarse voxel of slack): no class 1 rim
    # between class 2 and the background, no class swapped by an axis-order mistake
    kk, jj, ii = np.nonzero(array)
    for k, j, i in zip(kk, jj, ii, strict=True):
        value = int(array[k, j, i])
        mm = np.array([i, j, k]) * 0.5
        for axis, (low, high) in enumerate(BOXES_MM[value]):
            assert low - 0.75 <= mm[axis] <= high + 0.75, f"class {value} at {mm} mm"


def test_class_dice_per_class_and_mean():
    ref = np.zeros((2, 3, 4), np.uint8)
    ref[0, 0, :4] = 1  # class 1: 4 voxels
    ref[1, 2, :2] = 2  # class 2: 2 voxels
    pred = np.zeros_like(ref)
    pred[0, 0, :3] = 1  # class 1: 3 of the 4 ...
    pred[1, 1, 0] = 1  # ... and two false voxels, one of them on class 2: 5 predicted, 3 right
    pred[1, 2, 1] = 1
    pred[1, 2, 0] = 2  # class 2: 1 predicted, 1 right
    result = class_dice(pred, ref, 3)
    assert result["dice_1"] == pytest.approx(2 * 3 / (5 + 4))
    assert result["dice_2"] == pytest.approx(2 * 1 / (1 + 2))
    assert result["dice_mean"] == pytest.approx((2 * 3 / 9 + 2 / 3) / 2)
    assert class_dice(pred, ref, 4)["dice_3"] == 1.0  # absent from both: right
    with pytest.raises(InputError, match="0..2"):
        class_dice(pred, np.full_like(ref, 3), 3)


class BandNet(nn.Module):
    """Fake 3-class network: logits peak at the class whose level (normalised 0 / 50 / 100) is nearest."""

    def __init__(self, levels: tuple[float, float, float]) -> None:
        super().__init__()
        self.levels = levels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([-20.0 * (x - level) ** 2 for level in self.levels], dim=1)


def _band_model(image: sitk.Image) -> LoadedModel:
    prep = Preprocessing(target_spacing=(0.5, 0.5, 0.5))
    stats = prep.intensity_statistics(sitk.GetArrayViewFromImage(image))
    levels = tuple(float(v) for v in prep.normalize(np.array([0.0, 50.0, 100.0]), stats))
    meta = {
        "name": "bands",
        "patch_size": [16, 16, 16],
        "preprocessing": prep.to_dict(),
        "classes": {"0": "background", "1": "catheter", "2": "guidewire"},
    }
    return LoadedModel(path=Path("bands"), meta=meta, networks={"net": BandNet(levels)})


@pytest.mark.parametrize("mode", ["sliding-window", "roi"])
def test_segment_writes_the_argmax_class_on_the_input_grid(mode):
    image, label = _three_class_image()
    center = image.TransformContinuousIndexToPhysicalPoint((20.0, 10.0, 11.0)) if mode == "roi" else None
    result = inference.segment(_band_model(image), image, center, precision="fp32", roi_patches=4)
    assert result.mode == mode
    predicted = sitk.GetArrayViewFromImage(result.label)
    assert set(np.unique(predicted).tolist()) == {0, 1, 2}
    dice = class_dice(predicted, sitk.GetArrayViewFromImage(label), 3)
    assert dice["dice_1"] > 0.85 and dice["dice_2"] > 0.85, dice
    probability = sitk.GetArrayViewFromImage(result.probability)  # 1 - P(background)
    assert probability[sitk.GetArrayViewFromImage(label) == 2].mean() > 0.8


def _cli(*argv: str) -> None:
    assert main(list(argv)) == 0


def test_mixed_phantom_trains_segments_and_evaluates_three_classes(tmp_path, capsys):
    data = tmp_path / "mixed"
    _cli("phantom", str(data), "--kind", "mixed", "--cases", "2", "--test", "1", "--size", "48")
    dataset = json.loads((data / "dataset.json").read_text())
    assert dataset["labels"] == {"0": "background", "1": "catheter", "2": "guidewire"}
    truth = sitk.ReadImage(str(data / dataset["training"][0]["label"]))
    assert set(np.unique(sitk.GetArrayFromImage(truth)).tolist()) == {0, 1, 2}
    center = truth.TransformPhysicalPointToIndex(dataset["training"][0]["center"])
    assert truth[center] == 1  # the centre is the catheter's
    model = tmp_path / "model"
    _cli(
        "train", "--data", str(data / "dataset.json"), "--out", str(model), "--steps", "1", "--patch", "16",
        "--width", "0.0625", "--val-cases", "1", "--val-every", "1", "--progress", "none",
    )  # fmt: skip
    meta = json.loads((model / "model.json").read_text())
    assert meta["classes"] == dataset["labels"]
    assert {net["num_classes"] for net in meta["networks"].values()} == {3}
    assert "dice" in meta["metrics"]["validation"]
    four = data / "four.json"  # the same cases declared with a fourth class
    four.write_text(json.dumps({**dataset, "labels": {**dataset["labels"], "3": "sheath"}}))
    refused = main(["train", "--data", str(four), "--init", str(model), "--out", str(tmp_path / "ft"),
                    "--steps", "1", "--patch", "16", "--val-cases", "0", "--progress", "none"])  # fmt: skip
    assert refused == 2 and "has 3 classes but the dataset's labels declare 4" in capsys.readouterr().err
    report, predictions = tmp_path / "evaluate.json", tmp_path / "predictions"
    _cli("evaluate", "--model", str(model), "--data", str(data / "dataset.json"), "--json", str(report),
         "--predictions", str(predictions), "--precision", "fp32")  # fmt: skip
    written = sitk.GetArrayFromImage(sitk.ReadImage(str(predictions / "phantom_mixed_t000.nii.gz")))
    assert set(np.unique(written).tolist()) <= {0, 1, 2}
    row = json.loads(report.read_text())["cases"][0]
    assert {"dice_1", "dice_2", "dice_mean"} <= set(row)
    assert row["dice_mean"] == pytest.approx((row["dice_1"] + row["dice_2"]) / 2)
