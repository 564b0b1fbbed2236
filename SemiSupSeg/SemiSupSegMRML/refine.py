""""Refine here": segment the region around a clicked point and add it to the current result, undoably.

The union keeps every voxel the previous result had: ``new = previous OR region's label``. Each refine
pushes the previous instrument segment onto a :class:`RefineHistory`; :meth:`RefineHistory.undo` puts it
back exactly. (The panel also saves the Segment Editor's undo state, so Ctrl+Z works there too.)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

from SemiSupSegLib.errors import InputError

from .segments import segment_array, set_segment_array

UNDO_LIMIT = 10


@dataclass
class RefineHistory:
    """The instrument segment before each refine (newest last), at most ``limit`` of them."""

    limit: int = UNDO_LIMIT
    states: list = field(default_factory=list)  # [(segmentation node, volume node, [k, j, i] array)]

    @property
    def can_undo(self) -> bool:
        return bool(self.states)

    def push(self, segmentation_node, volume_node, array: np.ndarray) -> None:
        """Remember ``array`` as the segment to go back to."""
        self.states.append((segmentation_node, volume_node, np.array(array, copy=True)))
        del self.states[: max(0, len(self.states) - self.limit)]

    def undo(self) -> bool:
        """Put the segment back as it was before the last refine; False when there is nothing to undo."""
        if not self.states:
            return False
        segmentation_node, volume_node, array = self.states.pop()
        set_segment_array(segmentation_node, volume_node, array)
        return True

    def clear(self) -> None:
        self.states.clear()


def refine_here(
    logic,
    volume_node,
    segmentation_node,
    point_lps: Sequence[float],
    model_path: str,
    device_choice: str = "Auto",
    history: RefineHistory | None = None,
) -> dict:
    """Segment the coarse-to-fine region around ``point_lps`` and add it to the instrument segment.

    Args:
        logic: a :class:`~SemiSupSegMRML.segmentation.SegmentationLogic` (its loaded model is reused).
        volume_node: the segmented volume.
        segmentation_node: the current result (its "instrument" segment is extended).
        point_lps: the clicked point, LPS mm in the volume's own frame.
        model_path: the model folder.
        device_choice: "Auto", "GPU" or "CPU".
        history: receives the previous segment (for :meth:`RefineHistory.undo`).

    Returns:
        ``{"added": voxels added, "region": voxels the region labelled, "summary": one line}``.

    Raises:
        InputError: no segmentation yet, or the point is outside the volume (nothing changed).
    """
    if point_lps is None:
        raise InputError("place the refine point on the part the result missed first")
    previous = segment_array(segmentation_node, volume_node)  # names a missing segmentation first
    request = logic.prepare_at(volume_node, tuple(float(c) for c in point_lps), model_path, device_choice)
    outcome = logic.run(request)
    region = sitk.GetArrayViewFromImage(outcome["label"]) > 0
    union = (previous > 0) | region
    if history is not None:
        history.push(segmentation_node, volume_node, previous)
    set_segment_array(segmentation_node, volume_node, union)
    added = int(union.sum() - (previous > 0).sum())
    return {
        "added": added,
        "region": int(region.sum()),
        "summary": f"Refine here added {added} voxels to the instrument ({outcome['summary']})",
    }
