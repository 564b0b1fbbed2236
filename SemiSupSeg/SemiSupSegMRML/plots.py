"""Table, series and chart nodes of the training curves, fed from progress-protocol events.

The events are the child's JSON lines (``docs/ARCHITECTURE.md``, "progress protocol"), read into a
:class:`SemiSupSegLib.train_process.RunState`; :class:`TrainingPlot` draws that state's loss and
validation series against the step.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import slicer

PLOT_VIEW_TAG = "SemiSupSegTrainingPlotView"
SERIES = (  # y column, marker, colour
    ("loss", "MarkerStyleNone", (0.85, 0.3, 0.1)),
    ("validation", "MarkerStyleCircle", (0.1, 0.4, 0.85)),
)


def plot_view_node():
    """The training panel's own plot view node (a singleton), added on first use."""
    node = slicer.mrmlScene.GetSingletonNode(PLOT_VIEW_TAG, "vtkMRMLPlotViewNode")
    if node is None:
        node = slicer.vtkMRMLPlotViewNode()
        node.SetSingletonTag(PLOT_VIEW_TAG)
        node.SetName("SemiSupSeg training plot view")
        node = slicer.mrmlScene.AddNode(node)
    return node


def _add_series(chart, table, y_name: str, marker: str, color) -> None:
    series = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", f"SemiSupSeg {y_name}")
    series.SetAndObserveTableNodeID(table.GetID())
    series.SetXColumnName("step")
    series.SetYColumnName(y_name)
    series.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter)
    series.SetLineStyle(slicer.vtkMRMLPlotSeriesNode.LineStyleSolid)
    series.SetMarkerStyle(getattr(slicer.vtkMRMLPlotSeriesNode, marker))
    series.SetColor(*color)
    chart.AddAndObservePlotSeriesNodeID(series.GetID())


class TrainingPlot:
    """The loss and validation tables and their chart.

    ``holder`` is any object with ``lossTable``, ``validationTable`` and ``plotChart`` attributes (the
    panel's parameter node, or a plain namespace in scripts); the nodes are created once and kept there.
    """

    def __init__(self, holder) -> None:
        self.holder = holder
        self._signatures: dict = {}

    def ensure_nodes(self):
        """Create the two tables, their series and the chart if absent; returns the chart node."""
        h = self.holder
        if h.lossTable is None:
            h.lossTable = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLTableNode", "SemiSupSeg training loss")
        if h.validationTable is None:
            h.validationTable = slicer.mrmlScene.AddNewNodeByClass(
                "vtkMRMLTableNode", "SemiSupSeg training validation"
            )
        if h.plotChart is None:
            chart = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLPlotChartNode", "SemiSupSeg training")
            chart.SetTitle("Training")
            chart.SetXAxisTitle("step")
            chart.SetYAxisTitle("loss / validation")
            for (y_name, marker, color), table in zip(SERIES, (h.lossTable, h.validationTable), strict=True):
                _add_series(chart, table, y_name, marker, color)
            h.plotChart = chart
        return h.plotChart

    def reset(self) -> None:
        """Empty both tables (a new run starts)."""
        self.ensure_nodes()
        self._fill(self.holder.lossTable, [], [], "loss")
        self._fill(self.holder.validationTable, [], [], "validation")

    def update(self, state) -> None:
        """Draw a run state's loss and validation metric (Dice; the localisation error for the locator).

        Args:
            state: a :class:`SemiSupSegLib.train_process.RunState`.
        """
        steps, losses = state.loss_series()
        v_steps, values = state.validation_series()
        if not steps and not v_steps and self.holder.plotChart is None:
            return
        chart = self.ensure_nodes()
        chart.SetYAxisTitle(f"{state.loss_key() or 'loss'} / validation {state.validation_key() or 'dice'}")
        changed = self._fill(self.holder.lossTable, steps, losses, "loss")
        changed |= self._fill(self.holder.validationTable, v_steps, values, "validation")
        if changed:
            chart.Modified()

    def feed(self, state, events: Iterable[dict]) -> None:
        """Read protocol events into ``state`` and redraw once."""
        for event in events:
            state.update(event)
        self.update(state)

    def _fill(self, table_node, xs, ys, y_name: str) -> bool:
        """Refill the table only when the series changed (the panel polls four times a second)."""
        signature = (len(xs), xs[-1] if xs else None, ys[-1] if ys else None, y_name)
        if self._signatures.get(table_node.GetID()) == signature:
            return False
        self._signatures[table_node.GetID()] = signature
        slicer.util.updateTableFromArray(
            table_node, [np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)], ["step", y_name]
        )
        return True
