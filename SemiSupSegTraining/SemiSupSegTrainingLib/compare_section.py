"""The training panel's models: the "Start from" and "Compare with" lists, the comparison of the
new model with the current one, and adopting it as the default."""

import qt
import slicer
from SemiSupSegMRML.models import default_model, same_path

from SemiSupSegTrainingLib import engine as _engine


class CompareSection:
    """Mixin of ``SemiSupSegTrainingWidget`` (uses its ``ui``, ``logic`` and ``_parameterNode``)."""

    def populateModels(self) -> None:
        """Fill "Start from" (scratch + every model) and "Compare with" (default model first)."""
        models = _engine().scan_models()
        default = default_model()
        start = self.ui.startModelComboBox
        start.blockSignals(True)
        start.clear()
        start.addItem("From scratch", "")
        for entry in models:
            start.addItem(self._modelLabel(entry), entry["path"])
        start.blockSignals(False)
        current = self.ui.currentModelComboBox
        current.blockSignals(True)
        previous = current.currentData
        current.clear()
        current.addItem("(no current model)", "")
        ordered = sorted(models, key=lambda m: m["path"] != default)
        for entry in ordered:
            suffix = " [default]" if entry["path"] == default else ""
            current.addItem(self._modelLabel(entry) + suffix, entry["path"])
        # The current model: the one chosen before, else the default, else the fine-tuned parent.
        preferred = previous or default or (self._parameterNode.initModel if self._parameterNode else "")
        current.currentIndex = max(0, current.findData(preferred)) if preferred else 0
        current.blockSignals(False)
        if self._parameterNode:
            if start.findData(self._parameterNode.initModel) < 0:
                self._parameterNode.initModel = ""
            self._selectComboData(start, self._parameterNode.initModel)

    @staticmethod
    def _modelLabel(entry: dict) -> str:
        dice = f", val Dice {entry['dice']:.3f}" if entry.get("dice") is not None else ""
        origin = " (shipped)" if entry.get("origin") == "shipped" else ""
        return f"{entry['name']} ({entry['method']}{dice}){origin}"

    # --- compare and adopt ------------------------------------------------------------------------
    def onCompare(self) -> None:
        with slicer.util.tryWithErrorDisplay("Failed to start the comparison.", waitCursor=True):
            self.logic.ensureDependencies()
            self.startComparison()

    def startComparison(self) -> None:
        new = self._parameterNode.newModel
        if not new:
            raise ValueError("No new model to compare: train one first.")
        current = self.ui.currentModelComboBox.currentData or None
        if current and same_path(current, new):
            current = None
        self.logic.start_comparison(new, current, self._parameterNode.device)
        self.ui.resultLabel.text = "comparing the new and the current model on the validation cases..."
        self.startPolling()

    def showComparison(self, state) -> None:
        if state.status != "finished" or not state.result:
            self.ui.resultLabel.text = f"comparison failed: {state.message}"
            return
        self.comparison = state.result
        rows = _engine().comparison_table(state.result, ("dice", "hd95_mm", "asd_mm"))
        table = self.ui.comparisonTable
        table.clear()
        table.setColumnCount(len(rows[0]))
        table.setRowCount(len(rows) - 1)
        table.setHorizontalHeaderLabels(rows[0])
        for r, row in enumerate(rows[1:]):
            for c, text in enumerate(row):
                table.setItem(r, c, qt.QTableWidgetItem(text))
        table.resizeColumnsToContents()
        self.ui.resultLabel.text = _engine().comparison_text(state.result)
        self.updateButtons()

    def onMakeDefault(self) -> None:
        with slicer.util.tryWithErrorDisplay("Failed to make the model the default.", waitCursor=True):
            folder = self.logic.set_default_model(self._parameterNode.newModel)
            self.populateModels()
            self.ui.resultLabel.text = f"{folder} is now the default model of the SemiSupSeg panel."

    def onOpenModelsFolder(self) -> None:
        with slicer.util.tryWithErrorDisplay("Failed to open the models folder.", waitCursor=False):
            folder = _engine().models_folder()
            folder.mkdir(parents=True, exist_ok=True)
            qt.QDesktopServices.openUrl(qt.QUrl.fromLocalFile(str(folder)))
