"""Widget sections of the SemiSupSeg segmentation panel (Qt; the scene logic is in ``SemiSupSegMRML``)."""
