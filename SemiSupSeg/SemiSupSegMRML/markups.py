"""The instrument centre: a markups point list <-> LPS points in the volume's own frame.

The centre list holds up to :data:`MAX_CENTERS` points (issue 19: a long guide-wire is covered by the
regions of two points); the locator's answer and the pool's stored centre are its first placed point.
"""

from __future__ import annotations

from collections.abc import Sequence

import slicer

from SemiSupSegLib import slicer_bridge as bridge

from .volumes import volume_to_world

POINT_COLOR = (1.0, 0.3, 0.1)
MAX_CENTERS = 8  # regions segmented at once; each costs about one plain region's time


def create_point_node(name: str = "Instrument centre", max_points: int = 1):
    """Add a point list that holds at most ``max_points`` control points.

    Args:
        name: the node's name.
        max_points: the most points it holds (the centre list: :data:`MAX_CENTERS`).

    Returns:
        The new ``vtkMRMLMarkupsFiducialNode``.
    """
    node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", name)
    node.SetMaximumNumberOfControlPoints(max_points)
    node.CreateDefaultDisplayNodes()
    node.GetDisplayNode().SetSelectedColor(*POINT_COLOR)
    return node


def defined_point_index(point_node) -> int:
    """The index of the first control point whose position is defined, or -1 (also for None)."""
    if point_node is None:
        return -1
    for i in range(point_node.GetNumberOfControlPoints()):
        if point_node.GetNthControlPointPositionStatus(i) == slicer.vtkMRMLMarkupsNode.PositionDefined:
            return i
    return -1


def has_point(point_node) -> bool:
    """True when the point list has a placed point."""
    return defined_point_index(point_node) >= 0


def center_lps(point_node, volume_node) -> tuple[float, float, float] | None:
    """The point list's first placed point in the volume's own LPS frame.

    Args:
        point_node: a markups point list (its own parent transform is taken into account).
        volume_node: the volume whose frame the point is expressed in.

    Returns:
        ``(x, y, z)`` in LPS mm, or None when no point is placed.
    """
    index = defined_point_index(point_node)
    if index < 0:
        return None
    world = [0.0, 0.0, 0.0]
    point_node.GetNthControlPointPositionWorld(index, world)
    return bridge.world_ras_to_volume_lps(world, volume_to_world(volume_node))


def centers_lps(point_node, volume_node) -> list[tuple[float, float, float]]:
    """Every placed point of the list, in order, in the volume's own LPS frame (empty when none).

    Args:
        point_node: a markups point list (its own parent transform is taken into account), or None.
        volume_node: the volume whose frame the points are expressed in.

    Returns:
        ``[(x, y, z), ...]`` in LPS mm.
    """
    if point_node is None:
        return []
    to_world = volume_to_world(volume_node)
    points = []
    for i in range(point_node.GetNumberOfControlPoints()):
        if point_node.GetNthControlPointPositionStatus(i) == slicer.vtkMRMLMarkupsNode.PositionDefined:
            world = [0.0, 0.0, 0.0]
            point_node.GetNthControlPointPositionWorld(i, world)
            points.append(bridge.world_ras_to_volume_lps(world, to_world))
    return points


def set_center_lps(point_node, volume_node, point_lps: Sequence[float], label: str = "instrument") -> None:
    """Make an engine point (the volume's own LPS frame) the point list's only placed point.

    Args:
        point_node: the point list to update.
        volume_node: the volume whose frame ``point_lps`` is in.
        point_lps: the point, LPS mm.
        label: the control point's label when a new point is added.
    """
    x, y, z = bridge.volume_lps_to_world_ras(point_lps, volume_to_world(volume_node))
    index = defined_point_index(point_node)
    if index < 0:
        point_node.RemoveAllControlPoints()
        point_node.AddControlPointWorld(x, y, z, label)
    else:
        point_node.SetNthControlPointPositionWorld(index, x, y, z)
