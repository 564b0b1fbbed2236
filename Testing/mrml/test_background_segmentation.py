"""The segmentation panel's background path: ``semisupseg segment --progress json`` in a child process,
read by :class:`SemiSupSegMRML.segmentation.BackgroundSegmentation`, gives what the in-process path gives."""

import numpy as np
import pytest
from helpers import rigid_transform_node
from SemiSupSegMRML import markups, segments
from SemiSupSegMRML.segmentation import SegmentationLogic
from SemiSupSegMRML.volumes import volume_from_image

from SemiSupSegLib.model_index import PRETRAINED_DIR
from SemiSupSegLib.phantom import generate_phantom

pytest.importorskip("torch")


def test_background_child_segments_like_the_in_process_path(scene):
    case = generate_phantom(size=(40, 36, 32), seed=3)
    transform, _ = rigid_transform_node("pose")
    volume = volume_from_image(case.image, "phantom", transform)
    point = markups.create_point_node()
    markups.set_center_lps(point, volume, case.center)
    logic = SegmentationLogic(log=lambda text: None)
    model = str(PRETRAINED_DIR / "phantom-catheter")

    here = logic.segment(volume, point, model, "CPU", probability=True)
    there = logic.segment(volume, point, model, "CPU", probability=True, background=True, timeout_seconds=120)

    assert here["execution"] == "in-process" and there["execution"] == "background"
    label_here = segments.segment_array(here["segmentation"], volume)
    label_there = segments.segment_array(there["segmentation"], volume)
    assert label_there.any() and np.array_equal(label_here, label_there)
    assert there["probability"] is not None
