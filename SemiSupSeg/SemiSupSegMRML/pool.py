"""Writing the labelled / unlabelled pool from scene nodes.

The files and ``dataset.json`` are written by the engine (:func:`SemiSupSegLib.dataset.add_to_pool`,
which updates the entry through :func:`SemiSupSegLib.dataset.upsert_case`); this module only turns the
nodes into an image, a label and a centre. Centres are stored in the volume's own frame (LPS mm), which
is not the world frame when the volume has a parent transform.
"""

from __future__ import annotations

from SemiSupSegLib import dataset

from .markups import center_lps
from .segments import segment_to_label
from .volumes import volume_to_image


def add_to_pool(
    volume_node,
    segmentation_node,
    point_node,
    pool_folder,
    name: str | None = None,
    unlabeled: bool = False,
) -> dataset.PoolResult:
    """Save the volume (with its corrected segment and centre point) into the pool's ``dataset.json``.

    Args:
        volume_node: the volume to save.
        segmentation_node: the segmentation with the instrument segment (ignored when ``unlabeled``).
        point_node: the centre point list, or None.
        pool_folder: the pool folder (created if absent).
        name: the case name (default: the volume's name); the same name updates the case.
        unlabeled: save into the ``unlabeled`` section, without a label.

    Returns:
        The engine's :class:`~SemiSupSegLib.dataset.PoolResult` (``message``, ``updated``, ``case``).
    """
    image = volume_to_image(volume_node)
    center = center_lps(point_node, volume_node)
    label = None if unlabeled else segment_to_label(segmentation_node, volume_node, image)
    return dataset.add_to_pool(
        pool_folder, name or volume_node.GetName(), image, label, center, unlabeled=unlabeled
    )
