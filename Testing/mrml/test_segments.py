"""Results -> segmentation, probability and uncertainty nodes; segment -> label; errors change nothing."""

import numpy as np
import pytest
import SimpleITK as sitk
import slicer
import vtk
from helpers import grid_transform_node, instrument_label, node_count, transformed_volume
from SemiSupSegMRML import segments

from SemiSupSegLib.errors import InputError


def _matrix(node):
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return slicer.util.arrayFromVTKMatrix(m)


def test_segment_lies_on_the_volume_voxel_grid_under_its_parent_transform(scene):
    image, volume, _ = transformed_volume()
    label = instrument_label(image)
    seg = segments.label_to_segmentation(label, volume)
    assert seg.GetTransformNodeID() == volume.GetTransformNodeID()
    np.testing.assert_array_equal(segments.segment_array(seg, volume), sitk.GetArrayViewFromImage(label))
    back = segments.segment_to_label(seg, volume, image)
    np.testing.assert_allclose(back.GetDirection(), image.GetDirection(), atol=1e-6)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(back), sitk.GetArrayViewFromImage(label))


def test_editing_the_segment_array_is_what_segment_to_label_reads(scene):
    image, volume, _ = transformed_volume()
    seg = segments.label_to_segmentation(instrument_label(image), volume)
    edited = segments.segment_array(seg, volume)
    edited[1, 2, 3] = 1
    segments.set_segment_array(seg, volume, edited)
    label = sitk.GetArrayFromImage(segments.segment_to_label(seg, volume, image))
    assert label[1, 2, 3] == 1 and label.sum() == edited.sum()


def test_size_mismatch_label_leaves_the_scene_as_it_was(scene):
    image, volume, _ = transformed_volume()
    small = sitk.Image(5, 5, 5, sitk.sitkUInt8)
    before = node_count()
    with pytest.raises(InputError, match="size"):
        segments.label_to_segmentation(small, volume)
    assert node_count() == before


def test_label_on_a_grid_transformed_volume_adds_no_node(scene):
    image, volume, _ = transformed_volume()
    volume.SetAndObserveTransformNodeID(grid_transform_node().GetID())
    before = node_count()
    with pytest.raises(InputError, match="non-linear"):
        segments.label_to_segmentation(instrument_label(image), volume)
    assert node_count() == before


def test_probability_and_uncertainty_volumes_share_the_input_grid_and_transform(scene):
    image, volume, _ = transformed_volume()
    probability = sitk.Cast(image, sitk.sitkFloat32)
    uncertainty = sitk.Cast(image * 0.5, sitk.sitkFloat32)
    outcome = {"label": instrument_label(image), "probability": probability, "uncertainty": uncertainty}
    nodes = segments.import_results(outcome, volume)
    for key, source in (("probability", probability), ("uncertainty", uncertainty)):
        node = nodes[key]
        np.testing.assert_allclose(_matrix(node), _matrix(volume), atol=1e-6)
        assert node.GetImageData().GetDimensions() == volume.GetImageData().GetDimensions()
        assert node.GetTransformNodeID() == volume.GetTransformNodeID()
        np.testing.assert_allclose(slicer.util.arrayFromVolume(node), sitk.GetArrayViewFromImage(source))
    again = segments.import_results(outcome, volume, nodes["segmentation"], nodes["probability"])
    assert again["probability"] is nodes["probability"] and again["segmentation"] is nodes["segmentation"]


def test_mismatched_probability_adds_no_segmentation(scene):
    image, volume, _ = transformed_volume()
    outcome = {"label": instrument_label(image), "probability": sitk.Image(4, 4, 4, sitk.sitkFloat32)}
    before = node_count()
    with pytest.raises(InputError):
        segments.import_results(outcome, volume)
    assert node_count() == before


def test_segment_to_label_names_a_missing_or_ambiguous_segment(scene):
    image, volume, _ = transformed_volume()
    with pytest.raises(InputError, match="no segmentation yet"):
        segments.segment_to_label(None, volume, image)
    seg = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    seg.GetSegmentation().AddEmptySegment("a")
    seg.GetSegmentation().AddEmptySegment("b")
    with pytest.raises(InputError, match="no 'instrument' segment"):
        segments.segment_to_label(seg, volume, image)
