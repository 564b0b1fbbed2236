"""The uncertainty volume as a coloured overlay on the slice views, with a legend, an opacity and a
one-line summary of how much of the instrument is uncertain.

The overlay is the uncertainty volume itself (on exactly the input's grid, under its parent transform,
see :func:`~SemiSupSegMRML.segments.import_results`) shown as the slice views' foreground layer: colour
table :data:`COLOR_NODE_ID`, window [0, ln 2] nats (the largest two-class entropy), voxels below
:data:`TRANSPARENT_BELOW` nats transparent, so the input shows through where the model is sure.
"""

from __future__ import annotations

import math

import slicer

from SemiSupSegLib.suggest import uncertainty_summary

from .segments import segment_array

COLOR_NODE_ID = "vtkMRMLColorTableNodeIron"  # dark -> red -> yellow -> white: more doubt is brighter
MAX_ENTROPY = math.log(2)  # two classes
TRANSPARENT_BELOW = 0.05  # nats: p(instrument) below about 0.01 or above 0.99
DEFAULT_OPACITY = 0.5
LEGEND_TITLE = "Uncertainty (entropy, nats)"


def _slice_composites() -> list:
    scene = slicer.mrmlScene
    return [scene.GetNthNodeByClass(i, "vtkMRMLSliceCompositeNode") for i in range(
        scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode"))]


def legend_node(uncertainty_node):
    """The uncertainty volume's colour legend display node, or None."""
    for i in range(uncertainty_node.GetNumberOfDisplayNodes()):
        node = uncertainty_node.GetNthDisplayNode(i)
        if node is not None and node.IsA("vtkMRMLColorLegendDisplayNode"):
            return node
    return None


def _ensure_legend(uncertainty_node):
    legend = legend_node(uncertainty_node)
    if legend is None:
        legend = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLColorLegendDisplayNode")
        uncertainty_node.AddAndObserveDisplayNodeID(legend.GetID())
    legend.SetAndObservePrimaryDisplayNode(uncertainty_node.GetDisplayNode())
    legend.SetTitleText(LEGEND_TITLE)
    legend.SetVisibility(True)
    return legend


def set_overlay_opacity(opacity: float) -> None:
    """The foreground (overlay) opacity of every slice view, clamped to [0, 1]."""
    for composite in _slice_composites():
        composite.SetForegroundOpacity(min(1.0, max(0.0, float(opacity))))


def show_uncertainty_overlay(uncertainty_node, volume_node, opacity: float = DEFAULT_OPACITY):
    """Show ``uncertainty_node`` over ``volume_node`` in every slice view, with a colour legend.

    Args:
        uncertainty_node: the uncertainty volume (entropy, nats) on the volume's grid.
        volume_node: the input volume, shown as the background layer.
        opacity: the overlay's opacity in [0, 1].

    Returns:
        The colour legend display node.
    """
    uncertainty_node.CreateDefaultDisplayNodes()
    display = uncertainty_node.GetDisplayNode()
    display.SetAndObserveColorNodeID(COLOR_NODE_ID)
    display.SetAutoWindowLevel(False)
    display.SetWindowLevelMinMax(0.0, MAX_ENTROPY)
    display.SetAutoThreshold(False)
    display.SetLowerThreshold(TRANSPARENT_BELOW)
    display.SetUpperThreshold(MAX_ENTROPY + 1.0)
    display.SetApplyThreshold(True)
    legend = _ensure_legend(uncertainty_node)
    for composite in _slice_composites():
        composite.SetBackgroundVolumeID(volume_node.GetID())
        composite.SetForegroundVolumeID(uncertainty_node.GetID())
    set_overlay_opacity(opacity)
    return legend


def hide_uncertainty_overlay(uncertainty_node) -> None:
    """Remove the overlay from the slice views and hide its legend."""
    for composite in _slice_composites():
        if composite.GetForegroundVolumeID() == uncertainty_node.GetID():
            composite.SetForegroundVolumeID(None)
    legend = legend_node(uncertainty_node)
    if legend is not None:
        legend.SetVisibility(False)


def overlay_summary(uncertainty_node, segmentation_node, volume_node) -> str:
    """One line: the fraction of the instrument segment whose entropy is above the engine's threshold
    (:func:`SemiSupSegLib.suggest.uncertainty_summary`)."""
    uncertainty = slicer.util.arrayFromVolume(uncertainty_node)
    return uncertainty_summary(uncertainty, segment_array(segmentation_node, volume_node))
