"""Writing the pool from nodes: labelled, unlabelled, update, move; centres in the volume's own frame."""

import json

import numpy as np
import pytest
import SimpleITK as sitk
from helpers import instrument_label, node_count, transformed_volume
from SemiSupSegMRML import markups, segments
from SemiSupSegMRML.pool import add_to_pool

from SemiSupSegLib.dataset import load_dataset
from SemiSupSegLib.errors import InputError


def _scene_case(seed=0, name="case a"):
    image, volume, matrix = transformed_volume(seed, name)
    seg = segments.label_to_segmentation(instrument_label(image), volume)
    point = markups.create_point_node()
    lps = image.TransformIndexToPhysicalPoint((7, 5, 4))
    markups.set_center_lps(point, volume, lps)
    return image, volume, seg, point, lps


def test_labelled_case_saves_the_segment_and_the_centre_in_the_volume_frame(scene, tmp_path):
    image, volume, seg, point, lps = _scene_case()
    result = add_to_pool(volume, seg, point, tmp_path / "pool")
    assert not result.updated
    data = load_dataset(tmp_path / "pool" / "dataset.json")  # validates files, geometry and centre
    (case,) = data.training
    assert case.name == "case_a"
    np.testing.assert_allclose(case.center, lps, atol=1e-4)  # not the world (transformed) position
    saved = sitk.ReadImage(str(case.label))
    np.testing.assert_allclose(saved.GetDirection(), image.GetDirection(), atol=1e-6)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(saved), segments.segment_array(seg, volume))


def test_unlabelled_then_labelled_moves_the_case_and_adding_again_updates(scene, tmp_path):
    _, volume, seg, point, _ = _scene_case()
    pool = tmp_path / "pool"
    add_to_pool(volume, None, point, pool, unlabeled=True)
    assert [c.name for c in load_dataset(pool / "dataset.json").unlabeled] == ["case_a"]
    moved = add_to_pool(volume, seg, point, pool)
    again = add_to_pool(volume, seg, point, pool, name="case a")
    raw = json.loads((pool / "dataset.json").read_text())
    assert moved.updated and again.updated
    assert len(raw["training"]) == 1 and raw.get("unlabeled", []) == []


def test_empty_segment_is_refused_and_nothing_is_written(scene, tmp_path):
    _, volume, seg, point, _ = _scene_case()
    segments.set_segment_array(seg, volume, np.zeros_like(segments.segment_array(seg, volume)))
    before = node_count()
    with pytest.raises(InputError, match="empty"):
        add_to_pool(volume, seg, point, tmp_path / "pool")
    assert node_count() == before
    assert not (tmp_path / "pool" / "dataset.json").exists()
