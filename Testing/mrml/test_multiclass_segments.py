"""A multi-class label (issue 15) becomes one segment per class, named from the model's classes."""

import numpy as np
import SimpleITK as sitk
import slicer
from helpers import instrument_label, transformed_volume
from SemiSupSegMRML import segments

CLASSES = {"0": "background", "1": "catheter", "2": "guidewire"}


def _two_class_label(image: sitk.Image) -> sitk.Image:
    """The helpers' asymmetric line as class 1, and a short line two rows over as class 2."""
    label = instrument_label(image)
    array = sitk.GetArrayFromImage(label)
    k, j = array.shape[0] // 2, array.shape[1] // 2
    array[k - 2, j + 2, 1:5] = 2
    out = sitk.GetImageFromArray(array)
    out.CopyInformation(label)
    return out


def _segment_voxels(segmentation_node, name: str, volume) -> np.ndarray:
    segment_id = segmentation_node.GetSegmentation().GetSegmentIdBySegmentName(name)
    assert segment_id, f"no segment named {name!r}"
    return np.array(slicer.util.arrayFromSegmentBinaryLabelmap(segmentation_node, segment_id, volume))


def test_each_class_is_a_segment_named_from_the_model_classes(scene):
    image, volume, _ = transformed_volume()
    label = _two_class_label(image)
    nodes = segments.import_results({"label": label, "classes": CLASSES}, volume)
    segmentation = nodes["segmentation"]
    names = [
        segmentation.GetSegmentation().GetNthSegment(i).GetName()
        for i in range(segmentation.GetSegmentation().GetNumberOfSegments())
    ]
    assert names == ["catheter", "guidewire"]
    array = sitk.GetArrayViewFromImage(label)
    for value, name in ((1, "catheter"), (2, "guidewire")):
        np.testing.assert_array_equal(_segment_voxels(segmentation, name, volume), array == value)
