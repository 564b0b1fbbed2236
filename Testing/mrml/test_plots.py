"""Training-curve table and chart nodes fed from progress-protocol events."""

import types

import slicer
from SemiSupSegMRML.plots import TrainingPlot, plot_view_node

from SemiSupSegLib.train_process import RunState


def _events(steps=4):
    yield {"protocol": 1, "event": "started", "task": "training", "step": 0, "total": steps}
    for step in range(1, steps + 1):
        yield {
            "protocol": 1,
            "event": "progress",
            "step": step,
            "total": steps,
            "losses": {"loss": 1.0 / step},
        }
    yield {"protocol": 1, "event": "validation", "step": steps, "total": steps, "metrics": {"dice": 0.6}}


def _holder():
    return types.SimpleNamespace(lossTable=None, validationTable=None, plotChart=None)


def _column(table_node, name):
    return list(slicer.util.arrayFromTableColumn(table_node, name))


def test_protocol_events_fill_loss_and_validation_tables(scene):
    holder, state = _holder(), RunState()
    state.begin("training")
    TrainingPlot(holder).feed(state, _events(4))
    assert _column(holder.lossTable, "step") == [1, 2, 3, 4]
    assert _column(holder.lossTable, "loss") == [1.0, 0.5, 1.0 / 3, 0.25]
    assert _column(holder.validationTable, "validation") == [0.6]
    assert holder.plotChart.GetNumberOfPlotSeriesNodes() == 2
    assert "dice" in holder.plotChart.GetYAxisTitle()


def test_reset_empties_the_tables_and_nodes_are_created_once(scene):
    holder, state = _holder(), RunState()
    state.begin("training")
    plot = TrainingPlot(holder)
    plot.feed(state, _events(3))
    chart = holder.plotChart
    plot.reset()
    assert holder.lossTable.GetTable().GetNumberOfRows() == 0 and holder.plotChart is chart
    assert plot_view_node() is plot_view_node()
