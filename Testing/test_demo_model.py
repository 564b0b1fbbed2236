"""The shipped phantom model: it loads safely and still segments unseen phantom volumes."""

import json

import numpy as np
import SimpleITK as sitk

from SemiSupSegLib.inference import segment
from SemiSupSegLib.metrics import segmentation_metrics
from SemiSupSegLib.model_store import PRETRAINED_DIR, list_models, load_model
from SemiSupSegLib.phantom import generate_phantom


def test_the_demo_model_is_shipped_and_listed():
    meta = json.loads((PRETRAINED_DIR / "phantom-catheter" / "model.json").read_text())
    assert meta["method"] == "supervised" and meta["networks"]["net"]["width"] == 0.25
    assert any(m["name"] == "phantom-catheter" and m["origin"] == "shipped" for m in list_models())


def test_the_demo_model_segments_unseen_phantoms():
    # Seeds 2026+ were never used for training (the model saw seed 0, see docs/DEMO_MODEL.md).
    model = load_model("phantom-catheter")
    dice = []
    for i in range(2):
        case = generate_phantom(size=128, kind="catheter", seed=2026 * 100003 + 75000 + i)
        result = segment(model, case.image, case.center)
        pred = sitk.GetArrayViewFromImage(result.label) > 0
        ref = sitk.GetArrayViewFromImage(case.label) > 0
        dice.append(segmentation_metrics(pred, ref, case.image.GetSpacing()[::-1])["dice"])
    assert np.mean(dice) > 0.5, dice
