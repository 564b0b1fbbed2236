"""The segmentation panel's background path: ``semisupseg segment --progress json`` in a child process,
read by :class:`SemiSupSegMRML.segmentation.BackgroundSegmentation`, gives what the in-process path gives."""

import numpy as np
import pytest
import slicer
from helpers import rigid_transform_node
from SemiSupSegMRML import markups, segments
from SemiSupSegMRML.segmentation import SegmentationLogic
from SemiSupSegMRML.volumes import volume_from_image, volume_to_world

from SemiSupSegLib import slicer_bridge as bridge
from SemiSupSegLib.model_index import PRETRAINED_DIR
from SemiSupSegLib.phantom import generate_phantom

pytest.importorskip("torch")


def test_background_child_segments_like_the_in_process_path_at_every_centre(scene):
    """Two centres (issue 19) in a posed volume: both reach the engine on both paths (the second region
    adds probability where the first has none), and the union keeps the one-point result."""
    case = generate_phantom(size=(72, 40, 36), seed=3, spacing=(0.9, 0.85, 0.8))  # longer than one region
    transform, _ = rigid_transform_node("pose")
    volume = volume_from_image(case.image, "phantom", transform)
    logic = SegmentationLogic(log=lambda text: None)
    model = str(PRETRAINED_DIR / "phantom-catheter")
    one = markups.create_point_node()
    markups.set_center_lps(one, volume, case.center)
    two = markups.create_point_node("two centres", max_points=markups.MAX_CENTERS)
    corner = case.image.TransformIndexToPhysicalPoint((2, 2, 2))
    for point in (case.center, corner):
        two.AddControlPointWorld(*bridge.volume_lps_to_world_ras(point, volume_to_world(volume)))
    np.testing.assert_allclose(markups.centers_lps(two, volume), [case.center, corner], atol=1e-4)

    alone = logic.segment(volume, one, model, "CPU", probability=True)
    here = logic.segment(volume, two, model, "CPU", probability=True)
    there = logic.segment(volume, two, model, "CPU", probability=True, background=True, timeout_seconds=120)

    assert here["execution"] == "in-process" and there["execution"] == "background"
    label_alone = segments.segment_array(alone["segmentation"], volume)
    label_here = segments.segment_array(here["segmentation"], volume)
    label_there = segments.segment_array(there["segmentation"], volume)
    assert label_there.any() and np.array_equal(label_here, label_there)
    assert np.all(label_here[label_alone > 0] > 0)
    covered = [(slicer.util.arrayFromVolume(r["probability"]) > 0).sum() for r in (alone, here, there)]
    assert covered[1] == covered[2] > covered[0]
