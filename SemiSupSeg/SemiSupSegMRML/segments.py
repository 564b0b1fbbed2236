"""The "instrument" segment <-> a 0/1 label on the volume's voxel grid, and a result's output nodes.

A multi-class model's label (K > 2, issue 15) becomes one segment per foreground class, named from the
model's classes (``dataset.json``'s ``labels``); the single-segment editing helpers below work on the
"instrument" segment (or the only segment).
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
import slicer
import vtk

from SemiSupSegLib.errors import InputError

from .volumes import check_volume, image_to_volume, volume_to_world

SEGMENT_NAME = "instrument"
SEGMENT_COLOR = (1.0, 0.85, 0.1)
CLASS_COLORS = ((1.0, 0.85, 0.1), (0.2, 0.8, 1.0), (1.0, 0.35, 0.35), (0.45, 1.0, 0.45), (0.85, 0.5, 1.0))
"""Colours of a multi-class model's segments, class 1 first (repeating after the fifth)."""


def class_segments(classes: dict | None) -> dict[int, str]:
    """Label value -> segment name: one per foreground class of a multi-class model (K > 2), named from
    ``model.json``'s ``classes`` (those of ``dataset.json``'s ``labels``); ``{1: "instrument"}`` otherwise.

    Args:
        classes: ``{"0": "background", "1": "catheter", ...}``, or None.

    Returns:
        The segments to make, by label value.
    """
    named = {int(k): str(v) for k, v in (classes or {}).items() if str(k).isdigit() and int(k) > 0}
    return named if len(named) > 1 else {1: SEGMENT_NAME}


def _voxels_on_grid(label: sitk.Image, volume_node) -> np.ndarray:
    """An output image's voxels [k, j, i]; InputError when its size is not the volume's."""
    array = sitk.GetArrayFromImage(label)
    expected = tuple(slicer.util.arrayFromVolume(volume_node).shape)
    if array.shape != expected:
        raise InputError(
            f"the segmentation's size {array.shape[::-1]} differs from the volume's {expected[::-1]}"
        )
    return array


def label_to_segmentation(
    label: sitk.Image, volume_node, segmentation_node=None, classes: dict | None = None
):
    """Create or update the segmentation's segments from a label on the volume's grid: the "instrument"
    segment (non-zero voxels), or for a multi-class model one segment per foreground class, named from
    ``classes`` (:func:`class_segments`).

    Everything is checked before the scene changes: a label of another size raises and leaves no new
    node behind.

    Args:
        label: a label image with the volume's size (non-zero = instrument; class values for K > 2).
        volume_node: the volume the label was computed on.
        segmentation_node: the segmentation to update, or None to add one.
        classes: the model's classes (``model.json``'s ``classes``), or None for one instrument.

    Returns:
        The segmentation node, under the volume's parent transform.
    """
    check_volume(volume_node)
    volume_to_world(volume_node)  # a non-linear parent transform raises before any node is added
    voxels = _voxels_on_grid(label, volume_node)
    names = class_segments(classes)
    if names == {1: SEGMENT_NAME}:
        masks = {SEGMENT_NAME: ((voxels > 0).astype(np.uint8), SEGMENT_COLOR)}
    else:
        masks = {
            name: ((voxels == value).astype(np.uint8), CLASS_COLORS[i % len(CLASS_COLORS)])
            for i, (value, name) in enumerate(sorted(names.items()))
        }
    if segmentation_node is None:
        segmentation_node = slicer.mrmlScene.AddNewNodeByClass(
            "vtkMRMLSegmentationNode", f"{volume_node.GetName()} instrument"
        )
        segmentation_node.CreateDefaultDisplayNodes()
    segmentation = segmentation_node.GetSegmentation()
    # Under the same parent transform as the volume (and so as the temporary labelmap Slicer makes from
    # it), the import does not resample.
    segmentation_node.SetAndObserveTransformNodeID(volume_node.GetTransformNodeID())
    segmentation_node.SetReferenceImageGeometryParameterFromVolumeNode(volume_node)
    for name, (array, color) in masks.items():
        segment_id = segmentation.GetSegmentIdBySegmentName(name)
        if not segment_id:
            segment_id = segmentation.AddEmptySegment(name, name, list(color))
        slicer.util.updateSegmentBinaryLabelmapFromArray(array, segmentation_node, segment_id, volume_node)
    return segmentation_node


def instrument_segment_id(segmentation_node) -> str:
    """The id of the "instrument" segment, or of the only segment.

    Raises:
        InputError: no segmentation, or it has several segments and none named "instrument".
    """
    if segmentation_node is None:
        raise InputError("there is no segmentation yet; click Segment or draw the instrument first")
    segmentation = segmentation_node.GetSegmentation()
    segment_id = segmentation.GetSegmentIdBySegmentName(SEGMENT_NAME)
    if not segment_id and segmentation.GetNumberOfSegments() == 1:
        segment_id = segmentation.GetNthSegmentID(0)
    if not segment_id:
        raise InputError(
            f"segmentation '{segmentation_node.GetName()}' has no '{SEGMENT_NAME}' segment; rename the "
            "instrument's segment to 'instrument'"
        )
    return segment_id


def segment_array(segmentation_node, volume_node) -> np.ndarray:
    """The instrument segment as a [k, j, i] array on the volume's grid (a copy: edit and write back
    with :func:`set_segment_array`).

    Unlike ``slicer.util.arrayFromSegmentBinaryLabelmap``, which leaves its temporary labelmap's
    display node in the scene at every call, this removes every temporary node it adds.
    """
    segment_id = instrument_segment_id(segmentation_node)
    labelmap = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__SemiSupSeg_temp__")
    try:
        ids = vtk.vtkStringArray()
        ids.InsertNextValue(segment_id)
        logic = slicer.modules.segmentations.logic()
        if not logic.ExportSegmentsToLabelmapNode(segmentation_node, ids, labelmap, volume_node):
            raise InputError(f"segment '{SEGMENT_NAME}' cannot be exported on the volume's grid")
        return np.array(slicer.util.arrayFromVolume(labelmap))
    finally:
        display = labelmap.GetDisplayNode()
        for node in (display.GetColorNode() if display else None, display, labelmap):
            if node is not None and node.GetScene() is not None and not node.GetSingletonTag():
                slicer.mrmlScene.RemoveNode(node)


def set_segment_array(segmentation_node, volume_node, array: np.ndarray) -> None:
    """Replace the instrument segment's voxels with ``array`` ([k, j, i] on the volume's grid)."""
    segment_id = instrument_segment_id(segmentation_node)
    expected = tuple(slicer.util.arrayFromVolume(volume_node).shape)
    if tuple(array.shape) != expected:
        raise InputError(
            f"the edited segment's size {array.shape[::-1]} differs from the volume's {expected[::-1]}"
        )
    slicer.util.updateSegmentBinaryLabelmapFromArray(
        (np.asarray(array) > 0).astype(np.uint8), segmentation_node, segment_id, volume_node
    )


def segment_to_label(segmentation_node, volume_node, image: sitk.Image) -> sitk.Image:
    """The instrument segment as a 0/1 uint8 SimpleITK label on the image's grid.

    Args:
        segmentation_node: the segmentation holding the instrument segment.
        volume_node: the volume the segment is drawn on.
        image: :func:`~SemiSupSegMRML.volumes.volume_to_image` of that volume (gives the geometry).

    Returns:
        The label, with the image's origin, spacing and direction.
    """
    array = segment_array(segmentation_node, volume_node)
    expected = sitk.GetArrayViewFromImage(image).shape
    if tuple(array.shape) != tuple(expected):
        raise InputError(f"the segment's grid {array.shape[::-1]} differs from the volume's {expected[::-1]}")
    label = sitk.GetImageFromArray((array > 0).astype(np.uint8))
    label.CopyInformation(image)
    return label


def import_results(
    outcome: dict, volume_node, segmentation_node=None, probability_node=None, uncertainty_node=None
) -> dict:
    """Put a segmentation outcome into the scene.

    Args:
        outcome: ``{"label": image, "probability": image or None, "uncertainty": image or None}``,
            each on the volume's grid, and optionally ``"classes"`` (the model's; a multi-class model's
            label becomes one segment per class, :func:`label_to_segmentation`).
        volume_node: the segmented volume.
        segmentation_node, probability_node, uncertainty_node: nodes to update (None: add new ones).

    Returns:
        ``{"segmentation": node, "probability": node, "uncertainty": node}`` (the last two only when the
        outcome has them).
    """
    for key in ("probability", "uncertainty"):  # every size checked before the scene changes
        if outcome.get(key) is not None:
            _voxels_on_grid(outcome[key], volume_node)
    segmentation = label_to_segmentation(
        outcome["label"], volume_node, segmentation_node, outcome.get("classes")
    )
    nodes = {"segmentation": segmentation}
    name = volume_node.GetName()
    for key, node in (("probability", probability_node), ("uncertainty", uncertainty_node)):
        if outcome.get(key) is not None:
            nodes[key] = image_to_volume(outcome[key], volume_node, node, f"{name} instrument {key}")
    return nodes
