"""The clinician's flow on nodes: locate -> segment -> correct -> add to pool -> train -> new default."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
from helpers import rigid_transform_node
from SemiSupSegMRML import markups, models, segments
from SemiSupSegMRML.pool import add_to_pool
from SemiSupSegMRML.segmentation import SegmentationLogic
from SemiSupSegMRML.training import TrainingLogic
from SemiSupSegMRML.volumes import volume_from_image

from SemiSupSegLib.model_index import PRETRAINED_DIR
from SemiSupSegLib.phantom import generate_phantom

pytest.importorskip("torch")


def _phantom_volume(seed, name):
    case = generate_phantom(size=(40, 36, 32), seed=seed)
    transform, _ = rigid_transform_node(f"pose {seed}")
    return case, volume_from_image(case.image, name, transform)


def test_locate_segment_correct_pool_train_and_adopt(scene, home, tmp_path):
    logic = SegmentationLogic(log=lambda text: None)
    case, volume = _phantom_volume(3, "phantom a")
    point = markups.create_point_node()
    found = logic.locate(volume, point, PRETRAINED_DIR / "phantom-locator", "CPU")
    np.testing.assert_allclose(markups.center_lps(point, volume), found.point_lps, atol=1e-4)
    markups.set_center_lps(point, volume, case.center)  # the clinician moves the point onto the instrument

    nodes = logic.segment(volume, point, str(PRETRAINED_DIR / "phantom-catheter"), "CPU", probability=True)
    seg = nodes["segmentation"]
    assert nodes["execution"] == "in-process" and nodes["probability"] is not None
    corrected = segments.segment_array(seg, volume)
    corrected[:] = np.asarray(__import__("SimpleITK").GetArrayViewFromImage(case.label)) > 0  # "corrected"
    segments.set_segment_array(seg, volume, corrected)

    pool = tmp_path / "pool"
    add_to_pool(volume, seg, point, pool)
    other, other_volume = _phantom_volume(4, "phantom b")
    segments.label_to_segmentation(other.label, other_volume)
    other_point = markups.create_point_node("b")
    markups.set_center_lps(other_point, other_volume, other.center)
    add_to_pool(other_volume, segments.label_to_segmentation(other.label, other_volume), other_point, pool)

    refreshed = []
    training = TrainingLogic(on_models_changed=lambda: refreshed.append(True))
    out = training.start_training(
        str(pool / "dataset.json"),
        method="supervised",
        steps=2,
        patch=16,
        batch=1,
        width=0.0625,
        device="cpu",
        name="flow-model",
        checkpoint_every=100,
        augment="scanner",  # the panel's Augmentation choice reaches the trained model
    )
    training.wait(timeout=120)
    job = training.jobs["train"]
    assert job.state.status == "finished", job.state.message
    assert json.loads((Path(out) / "model.json").read_text())["training"]["config"]["augment"] == "scanner"
    listed = [m["path"] for m in models.list_models(home / "models")]
    assert any(os.path.samefile(p, out) for p in listed)
    training.set_default_model(out)
    assert refreshed and os.path.samefile(models.default_model(), out)
    shipped = str(PRETRAINED_DIR / "phantom-catheter")
    assert os.path.samefile(models.choose_model(listed, shipped, models.default_model(), True), out)
