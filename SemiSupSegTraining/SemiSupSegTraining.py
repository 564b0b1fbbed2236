"""SemiSupSegTraining: background semi-supervised fine-tuning panel (3D Slicer scripted module).

The panel turns the labelled pool written by the SemiSupSeg panel plus folders of newly collected
unlabelled scans into a better model, without freezing Slicer: training runs as a separate
process (``PythonSlicer -m SemiSupSegLib.cli train ... --progress json``) whose JSON lines the
panel reads with a ``QTimer``. Everything that does not need Slicer (commands, the protocol reader,
the run state, the process-tree stop, the data summary, the estimate, the comparison) lives in the
engine module ``SemiSupSegLib.train_process`` and is tested with pytest; this file is the thin
Slicer layer (parameter node, widgets, plot nodes).
"""

import logging
import os
import pathlib
import shutil
import sys
import tempfile
import time
from typing import Annotated

import qt
import slicer
import vtk
from slicer import vtkMRMLPlotChartNode, vtkMRMLTableNode
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

DEFAULT_METHOD = "dual-unet"
POLL_MS = 250
TORCH_REQUIREMENT = ">=2.1"  # the same minimum as the segmentation panel asks for
# Methods listed when torch is not installed yet (the real list comes from the engine's registry).
FALLBACK_METHODS = [
    {"name": "dual-unet", "description": "(install the dependencies to see the descriptions)"},
    {"name": "mean-teacher", "description": ""},
    {"name": "supervised", "description": ""},
    {"name": "ua-mt", "description": ""},
]
# Method names the segmentation panel's widget may offer to re-read the models folder.
SEGMENTATION_PANEL_REFRESH = ("refreshModels", "refreshModelList", "updateModelList")


def _engine():
    """The scene-free engine side of this panel (imports no torch at import time)."""
    from SemiSupSegLib import train_process

    return train_process


#
# SemiSupSegTraining
#


class SemiSupSegTraining(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "SemiSupSeg Training"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = ["SemiSupSeg"]
        self.parent.contributors = ["SemiSupSeg developers"]
        self.parent.helpText = (
            "Semi-supervised fine-tuning of the instrument segmentation model from the labelled pool "
            "(cases corrected and saved in the SemiSupSeg panel) plus folders of new unlabelled scans. "
            "Training runs in a separate process: Slicer stays usable, Stop keeps a checkpoint that "
            "Resume continues from. When it finishes, the new model is compared with the current one "
            "on the validation cases before you make it the default. See the README's "
            "'Researcher's walkthrough'."
        )
        self.parent.acknowledgementText = "Methods from the seed papers listed in README.md."


#
# Parameter node
#


@parameterNodeWrapper
class SemiSupSegTrainingParameterNode:
    """The panel's state, saved with the scene.

    poolPath - the labelled pool's dataset.json; unlabeledFolders - folders of unlabelled scans;
    chooseValidation/validationCases - the validation split (automatic when not chosen);
    method, initModel ("" = from scratch), steps, patch, batch, width, device - the training;
    runFolder/runTask - the last run started (for Resume); newModel - the last model trained;
    lossTable, validationTable, plotChart - the plot nodes.
    """

    poolPath: pathlib.Path
    unlabeledFolders: list[str]
    chooseValidation: bool = False
    validationCases: list[str]
    method: str = DEFAULT_METHOD
    initModel: str = ""
    steps: Annotated[int, WithinRange(1, 1000000)] = 2000
    patch: Annotated[int, WithinRange(16, 160)] = 48
    batch: Annotated[int, WithinRange(1, 64)] = 2
    width: Annotated[float, WithinRange(0.125, 4.0)] = 1.0
    device: Annotated[str, Choice(["auto", "cpu", "cuda"])] = "auto"
    modelName: str = ""
    locatorSteps: Annotated[int, WithinRange(1, 1000000)] = 8000
    runFolder: str = ""
    runTask: str = ""
    newModel: str = ""
    estimateText: str = ""
    lossTable: vtkMRMLTableNode
    validationTable: vtkMRMLTableNode
    plotChart: vtkMRMLPlotChartNode


def _pathOrEmpty(path) -> str:
    text = str(path) if path is not None else ""
    return "" if text in ("", ".") else text


#
# Widget
#


class SemiSupSegTrainingWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._updatingGui = False
        self._methods = []
        self.comparison = None

    # --- set up ---------------------------------------------------------------------------------
    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/SemiSupSegTraining.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = SemiSupSegTrainingLogic()
        self.logic.logCallback = logging.info

        self.plotWidget = slicer.qMRMLPlotWidget()
        self.plotWidget.setMRMLScene(slicer.mrmlScene)
        self.ui.plotFrame.layout().addWidget(self.plotWidget)

        self.timer = qt.QTimer()
        self.timer.setInterval(POLL_MS)
        self.timer.connect("timeout()", self.onTimer)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.addFolderButton.connect("clicked(bool)", self.onAddFolder)
        self.ui.removeFolderButton.connect("clicked(bool)", self.onRemoveFolder)
        self.ui.checkDataButton.connect("clicked(bool)", self.onCheckData)
        self.ui.poolPathLineEdit.connect("currentPathChanged(QString)", self.onPoolChanged)
        self.ui.chooseValidationCheckBox.connect("toggled(bool)", self.onChooseValidationToggled)
        self.ui.validationList.connect("itemChanged(QListWidgetItem*)", self.onValidationItemChanged)
        self.ui.methodComboBox.connect("currentIndexChanged(int)", self.onMethodChanged)
        self.ui.startModelComboBox.connect("currentIndexChanged(int)", self.onStartModelChanged)
        self.ui.estimateButton.connect("clicked(bool)", self.onEstimate)
        self.ui.trainButton.connect("clicked(bool)", self.onTrainButton)
        self.ui.stopButton.connect("clicked(bool)", self.onStopButton)
        self.ui.resumeButton.connect("clicked(bool)", self.onResumeButton)
        self.ui.trainLocatorButton.connect("clicked(bool)", self.onTrainLocator)
        self.ui.showPlotInLayoutButton.connect("clicked(bool)", self.onShowPlotInLayout)
        self.ui.compareButton.connect("clicked(bool)", self.onCompare)
        self.ui.makeDefaultButton.connect("clicked(bool)", self.onMakeDefault)
        self.ui.openModelsFolderButton.connect("clicked(bool)", self.onOpenModelsFolder)

        self.initializeParameterNode()
        self.populateMethods()
        self.populateModels()
        self.onPoolChanged()
        self.updateButtons()

    def cleanup(self) -> None:
        """Slicer closes: ask a running training to stop (it writes a checkpoint; Resume later)."""
        if self.logic is not None:
            self.logic.stopAll()
        if hasattr(self, "timer"):
            self.timer.stop()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()
        self.populateModels()
        if self.ui.validationList.count == 0:
            self.onPoolChanged()
        self.updateButtons()

    def exit(self) -> None:
        # The timer keeps polling a running training while another module is shown.
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(
                self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGuiFromParameterNode
            )

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not _pathOrEmpty(self._parameterNode.poolPath):
            pool = _engine().default_pool()
            if pool.is_file():
                self._parameterNode.poolPath = pool

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(
                self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGuiFromParameterNode
            )
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(
                self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGuiFromParameterNode
            )
            self.updateGuiFromParameterNode()

    # --- parameter node <-> widgets that connectGui does not bind -------------------------------
    def updateGuiFromParameterNode(self, caller=None, event=None) -> None:
        if self._parameterNode is None or self._updatingGui:
            return
        self._updatingGui = True
        try:
            p = self._parameterNode
            folders = list(p.unlabeledFolders)
            if [
                self.ui.unlabeledFoldersList.item(i).text() for i in range(self.ui.unlabeledFoldersList.count)
            ] != folders:
                self.ui.unlabeledFoldersList.clear()
                for folder in folders:
                    self.ui.unlabeledFoldersList.addItem(folder)
            self.ui.validationList.enabled = p.chooseValidation
            chosen = set(p.validationCases)
            for i in range(self.ui.validationList.count):
                item = self.ui.validationList.item(i)
                item.setCheckState(qt.Qt.Checked if item.text() in chosen else qt.Qt.Unchecked)
            self._selectComboData(self.ui.methodComboBox, p.method)
            self._selectComboData(self.ui.startModelComboBox, p.initModel)
            self.ui.widthSpinBox.enabled = not p.initModel
            if p.estimateText:
                self.ui.estimateLabel.text = p.estimateText
            if p.plotChart:
                self._showChart(p.plotChart)
        finally:
            self._updatingGui = False
        self.updateButtons()

    @staticmethod
    def _selectComboData(combo, value) -> None:
        index = combo.findData(value)
        if index >= 0 and combo.currentIndex != index:
            combo.blockSignals(True)
            combo.currentIndex = index
            combo.blockSignals(False)

    def populateMethods(self) -> None:
        self._methods = self.logic.methods()
        combo = self.ui.methodComboBox
        combo.blockSignals(True)
        combo.clear()
        for entry in self._methods:
            combo.addItem(entry["name"], entry["name"])
            combo.setItemData(combo.count - 1, entry["description"], qt.Qt.ToolTipRole)
        combo.blockSignals(False)
        method = self._parameterNode.method if self._parameterNode else DEFAULT_METHOD
        if combo.findData(method) < 0:
            method = DEFAULT_METHOD
        self._selectComboData(combo, method)
        self._showMethodDescription()

    def _showMethodDescription(self) -> None:
        name = self.ui.methodComboBox.currentData
        description = next((m["description"] for m in self._methods if m["name"] == name), "")
        self.ui.methodDescriptionLabel.text = description

    def populateModels(self) -> None:
        """Fill "Start from" (scratch + every model) and "Compare with" (default model first)."""
        models = _engine().scan_models()
        default = _engine().default_model()
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

    # --- data -----------------------------------------------------------------------------------
    def onAddFolder(self) -> None:
        with slicer.util.tryWithErrorDisplay("Failed to add the folder.", waitCursor=False):
            start = self._parameterNode.unlabeledFolders[-1] if self._parameterNode.unlabeledFolders else ""
            folder = qt.QFileDialog.getExistingDirectory(None, "Folder of unlabelled scans", start)
            if folder:
                self.addUnlabeledFolder(folder)

    def addUnlabeledFolder(self, folder: str) -> None:
        folders = list(self._parameterNode.unlabeledFolders)
        if folder not in folders:
            self._parameterNode.unlabeledFolders = folders + [str(folder)]

    def onRemoveFolder(self) -> None:
        with slicer.util.tryWithErrorDisplay("Failed to remove the folder.", waitCursor=False):
            selected = {item.text() for item in self.ui.unlabeledFoldersList.selectedItems()}
            self._parameterNode.unlabeledFolders = [
                f for f in self._parameterNode.unlabeledFolders if f not in selected
            ]

    def onPoolChanged(self, path=None) -> None:
        """List the pool's labelled cases for the validation choice (errors go to the summary box)."""
        try:
            names = self.logic.labelledCaseNames(self.ui.poolPathLineEdit.currentPath)
        except Exception as exc:
            names = []
            self.ui.dataSummaryText.setPlainText(f"Cannot read the labelled pool: {exc}")
        self._updatingGui = True
        try:
            self.ui.validationList.clear()
            chosen = set(self._parameterNode.validationCases) if self._parameterNode else set()
            for name in names:
                item = qt.QListWidgetItem(name)
                item.setFlags(item.flags() | qt.Qt.ItemIsUserCheckable)
                item.setCheckState(qt.Qt.Checked if name in chosen else qt.Qt.Unchecked)
                self.ui.validationList.addItem(item)
        finally:
            self._updatingGui = False

    def onChooseValidationToggled(self, checked) -> None:
        self.ui.validationList.enabled = bool(checked)

    def onValidationItemChanged(self, item) -> None:
        if self._updatingGui or self._parameterNode is None:
            return
        checked = []
        for i in range(self.ui.validationList.count):
            it = self.ui.validationList.item(i)
            if it.checkState() == qt.Qt.Checked:
                checked.append(it.text())
        self._parameterNode.validationCases = checked

    def _validation(self):
        p = self._parameterNode
        return list(p.validationCases) if p.chooseValidation else None

    def onCheckData(self) -> None:
        with slicer.util.tryWithErrorDisplay("Failed to check the data.", waitCursor=True):
            self.checkData()

    def checkData(self):
        p = self._parameterNode
        summary = self.logic.dataSummary(
            _pathOrEmpty(p.poolPath), list(p.unlabeledFolders), self._validation()
        )
        self.ui.dataSummaryText.setPlainText(summary.text())
        return summary

    # --- method ---------------------------------------------------------------------------------
    def onMethodChanged(self, index) -> None:
        self._showMethodDescription()
        if self._parameterNode is not None and not self._updatingGui:
            self._parameterNode.method = self.ui.methodComboBox.currentData or DEFAULT_METHOD

    def onStartModelChanged(self, index) -> None:
        if self._parameterNode is not None and not self._updatingGui:
            self._parameterNode.initModel = self.ui.startModelComboBox.currentData or ""

    def onEstimate(self) -> None:
        with slicer.util.tryWithErrorDisplay("Failed to start the time estimate.", waitCursor=True):
            p = self._parameterNode
            self.logic.ensureDependencies()
            self.logic.startEstimate(p.method, p.patch, p.batch, p.width, p.device)
            self.ui.estimateLabel.text = "measuring a few steps in the background..."
            self.startPolling()

    # --- train, stop, resume, locator -----------------------------------------------------------
    def onTrainButton(self) -> None:
        with slicer.util.tryWithErrorDisplay("Failed to start the training.", waitCursor=True):
            p = self._parameterNode
            self.logic.ensureDependencies()
            if self.ui.methodComboBox.count <= len(FALLBACK_METHODS):
                self.populateMethods()  # the real registry, now that torch is there
            summary = self.checkData()
            if not summary.ok:
                raise ValueError("The data has problems; nothing was started.\n\n" + summary.text())
            out = self.logic.startTraining(
                pool=_pathOrEmpty(p.poolPath),
                unlabeledFolders=list(p.unlabeledFolders),
                validation=self._validation(),
                method=p.method,
                initModel=p.initModel or None,
                steps=p.steps,
                patch=p.patch,
                batch=p.batch,
                width=p.width,
                device=p.device,
                name=p.modelName or None,
                checkImages=False,  # checkData() just read every image
            )
            p.runFolder, p.runTask, p.newModel = out, "training", ""
            self.resetPlot()
            self.ui.resultLabel.text = f"Training into {out}"
            self.startPolling()

    def onStopButton(self) -> None:
        with slicer.util.tryWithErrorDisplay("Failed to stop the training.", waitCursor=False):
            self.logic.stop()
            self.updateFromJobs()

    def onResumeButton(self) -> None:
        with slicer.util.tryWithErrorDisplay("Failed to resume the training.", waitCursor=True):
            p = self._parameterNode
            self.logic.ensureDependencies()
            out, task = p.runFolder, p.runTask or "training"
            if not out or not _engine().checkpoint_path(out).is_file():
                out, task = self.logic.latestResumableRun()
            self.logic.resume(out, locator=task == "locator training")
            p.runFolder, p.runTask = out, task
            self.startPolling()

    def onTrainLocator(self) -> None:
        with slicer.util.tryWithErrorDisplay("Failed to start the locator training.", waitCursor=True):
            p = self._parameterNode
            self.logic.ensureDependencies()
            out = self.logic.startLocatorTraining(_pathOrEmpty(p.poolPath), p.locatorSteps, p.device)
            p.runFolder, p.runTask = out, "locator training"
            self.resetPlot()
            self.ui.resultLabel.text = f"Training the locator into {out}"
            self.startPolling()

    # --- polling ----------------------------------------------------------------------------------
    def startPolling(self) -> None:
        if not self.timer.isActive():
            self.timer.start()
        self.updateFromJobs()

    def onTimer(self) -> None:
        try:
            self.logic.poll()
            self.updateFromJobs()
            for slot, job in list(self.logic.jobs.items()):
                if job.ended and not job.reported:
                    job.reported = True
                    self.onJobEnded(slot)
        except Exception as exc:  # never let the timer raise into Qt's event loop
            logging.exception("SemiSupSegTraining: polling failed")
            self.ui.statusLabel.text = f"error while reading the process: {exc}"
        if not self.logic.active():
            self.timer.stop()
        self.updateButtons()

    def updateFromJobs(self) -> None:
        job = self.logic.jobs.get("train")
        if job is not None:
            state = job.state
            self.ui.progressBar.setValue(int(round(100 * state.fraction)))
            self.ui.statusLabel.text = f"{state.task or 'training'}: {state.status_text()}"
            self.ui.lossesLabel.text = state.losses_text()
            if self._parameterNode is not None:
                self.logic.updatePlot(self._parameterNode, state)
                if self._parameterNode.plotChart:
                    self._showChart(self._parameterNode.plotChart)
        tool = self.logic.jobs.get("tool")
        if tool is not None and tool.kind == "comparison" and tool.state.active:
            self.ui.resultLabel.text = f"comparing: {tool.state.status_text()}"
        self.updateButtons()

    def onJobEnded(self, kind: str) -> None:
        job = self.logic.jobs[kind]
        state = job.state
        if job.kind == "training" and state.status == "finished":
            self._parameterNode.newModel = state.model or ""
            metrics = ", ".join(
                f"{k} {v:.3f}" for k, v in state.metrics.items() if isinstance(v, (int, float))
            )
            self.ui.resultLabel.text = f"New model: {state.model}\nvalidation: {metrics or 'none'}"
            self.logic.notifyModelsChanged()
            self.populateModels()
            if state.model:
                self.startComparison()
        elif job.kind == "locator training" and state.status == "finished":
            self.ui.resultLabel.text = f"New locator: {state.model}"
            self.logic.notifyModelsChanged()
        elif job.kind == "estimate":
            self.showEstimate(state)
        elif job.kind == "comparison":
            self.showComparison(state)
        if state.status == "error":
            self.ui.statusLabel.text = f"{job.kind}: {state.message}"
            if not slicer.app.testingEnabled():
                slicer.util.errorDisplay(f"{job.kind} failed:\n\n{state.message}")

    def showEstimate(self, state) -> None:
        if state.status != "finished" or not state.result:
            self.ui.estimateLabel.text = f"estimate failed: {state.message}"
            return
        r = state.result
        total = r["seconds_per_step"] * self._parameterNode.steps
        text = (
            f"{r['seconds_per_step']:.2f} s per step on {r['device']}: about "
            f"{_engine().format_seconds(total)} for {self._parameterNode.steps} steps"
        )
        if r.get("peak_memory_mb") and r.get("gpu_memory_mb"):
            text += f"; GPU memory {r['peak_memory_mb']:.0f} of {r['gpu_memory_mb']:.0f} MB"
            if r["peak_memory_mb"] > 0.8 * r["gpu_memory_mb"]:
                text += " - lower the batch or the patch size"
        self._parameterNode.estimateText = text
        self.ui.estimateLabel.text = text

    # --- plot -------------------------------------------------------------------------------------
    def resetPlot(self) -> None:
        self.logic.resetPlot(self._parameterNode)

    def _showChart(self, chart) -> None:
        viewNode = self.logic.plotViewNode()
        if viewNode.GetPlotChartNodeID() != chart.GetID():
            viewNode.SetPlotChartNodeID(chart.GetID())
        if self.plotWidget.mrmlPlotViewNode() != viewNode:
            self.plotWidget.setMRMLPlotViewNode(viewNode)

    def onShowPlotInLayout(self) -> None:
        with slicer.util.tryWithErrorDisplay("Failed to show the plot.", waitCursor=False):
            chart = self.logic.ensurePlotNodes(self._parameterNode)
            slicer.modules.plots.logic().ShowChartInLayout(chart)

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
        if current and os.path.normcase(os.path.abspath(current)) == os.path.normcase(os.path.abspath(new)):
            current = None
        self.logic.startComparison(new, current, self._parameterNode.device)
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
        result = state.result
        summary = result["summary"]
        verdict = ""
        if result.get("better") is not None:
            word = "better than or as good as" if result["better"] else "worse than"
            verdict = (
                f"\nThe new model is {word} '{result['current']['name']}' "
                f"(mean Dice {summary['new']['dice']:.3f} vs {summary['current']['dice']:.3f})."
            )
        self.ui.resultLabel.text = (
            f"New model: {result['new']['path']}\ncompared on {len(result['rows'])} "
            f"{result['cases_from']} case(s).{verdict}"
        )
        self.updateButtons()

    def onMakeDefault(self) -> None:
        with slicer.util.tryWithErrorDisplay("Failed to make the model the default.", waitCursor=True):
            folder = self.logic.setDefaultModel(self._parameterNode.newModel)
            self.populateModels()
            self.ui.resultLabel.text = f"{folder} is now the default model of the SemiSupSeg panel."

    def onOpenModelsFolder(self) -> None:
        with slicer.util.tryWithErrorDisplay("Failed to open the models folder.", waitCursor=False):
            folder = _engine().models_folder()
            folder.mkdir(parents=True, exist_ok=True)
            qt.QDesktopServices.openUrl(qt.QUrl.fromLocalFile(str(folder)))

    # --- buttons ----------------------------------------------------------------------------------
    def updateButtons(self) -> None:
        if self.logic is None or not hasattr(self, "ui"):
            return
        p = self._parameterNode
        training = self.logic.isActive("train")
        tool = self.logic.isActive("tool")
        hasPool = bool(p and _pathOrEmpty(p.poolPath))
        self.ui.trainButton.enabled = hasPool and not training
        self.ui.trainLocatorButton.enabled = hasPool and not training
        self.ui.stopButton.enabled = training
        self.ui.resumeButton.enabled = not training and self.logic.canResume(p.runFolder if p else "")
        self.ui.checkDataButton.enabled = hasPool
        self.ui.estimateButton.enabled = not tool
        hasNew = bool(p and p.newModel)
        self.ui.compareButton.enabled = hasNew and not tool
        self.ui.makeDefaultButton.enabled = hasNew and self.comparison is not None and not tool


#
# Logic
#


class _Job:
    """One child process (training, locator training, estimate or comparison) and its run state."""

    def __init__(self, kind: str, process, state) -> None:
        self.kind = kind
        self.process = process
        self.state = state
        self.ended = False
        self.reported = False  # the widget has shown how it ended


def defaultProcessFactory(args, env):
    """The real child process: the engine's ``TrainingProcess`` (a new session/process group,
    reader threads; stopped as a whole tree)."""
    return _engine().TrainingProcess(args, env=env, log=lambda line: logging.info(f"[training] {line}"))


class SemiSupSegTrainingLogic(ScriptedLoadableModuleLogic):
    """Starts, polls and stops the training processes; no widget code (usable from scripts).

    ``processFactory(args, env)`` returns an object with ``start()``, ``poll()`` (new protocol
    events), ``running``, ``returncode``, ``stderr_tail`` and ``request_stop(grace)``; the
    self-test replaces it with a fake that replays events.
    """

    def __init__(self, processFactory=None) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.processFactory = processFactory or defaultProcessFactory
        self.jobs = {}  # "train" -> _Job, "tool" -> _Job
        self.logCallback = None
        self.requireDependencies = True  # the self-test's fake processes need no torch
        self._plotSignatures = {}

    def getParameterNode(self):
        return SemiSupSegTrainingParameterNode(super().getParameterNode())

    # --- environment ----------------------------------------------------------------------------
    @staticmethod
    def pythonExecutable() -> str:
        """Slicer's ``PythonSlicer`` (on the PATH inside Slicer), else this interpreter."""
        return shutil.which("PythonSlicer") or sys.executable

    @staticmethod
    def missingDependencies() -> list:
        import importlib.util

        return [name for name in ("torch", "monai", "scipy") if importlib.util.find_spec(name) is None]

    def ensureDependencies(self) -> None:
        """Install torch (PyTorch extension) and MONAI/SciPy (pip) after one confirmation."""
        missing = self.missingDependencies() if self.requireDependencies else []
        if not missing:
            return
        if slicer.app.testingEnabled():
            raise RuntimeError(f"Python packages {missing} are missing; install them before the self-test.")
        if not slicer.util.confirmOkCancelDisplay(
            f"Training needs the Python packages {', '.join(missing)}, which are not installed in this "
            "Slicer. Install them now? (torch through the PyTorch extension; this can take minutes)"
        ):
            raise RuntimeError(f"Training needs {', '.join(missing)}; installation was declined.")
        if "torch" in missing:
            try:
                import PyTorchUtils
            except ImportError:
                raise RuntimeError(
                    "Install the 'PyTorch' extension from the Extensions Manager, restart Slicer, "
                    "and try again."
                ) from None
            logic = PyTorchUtils.PyTorchUtilsLogic()
            if logic.installTorch(askConfirmation=False, torchVersionRequirement=TORCH_REQUIREMENT) is None:
                raise RuntimeError("PyTorch was not installed.")
        requirements = self._requirements()
        if requirements:
            try:
                import slicer.packaging as packaging  # a submodule: not an attribute until imported
            except ImportError:
                packaging = None
            if packaging is not None and hasattr(packaging, "pip_ensure"):
                packaging.pip_ensure(requirements, requester="SemiSupSeg", prompt_install=False)
            else:
                slicer.util.pip_install(requirements)

    @staticmethod
    def _requirements() -> list:
        """monai/scipy lines of the SemiSupSeg module's Resources/requirements.txt (next to the engine)."""
        path = _engine().ENGINE_DIR / "Resources" / "requirements.txt"
        if not path.is_file():
            return ["monai>=1.3", "scipy>=1.10"]
        lines = [line.split("#")[0].strip() for line in path.read_text().splitlines()]
        return [line for line in lines if line]

    def methods(self) -> list:
        """The engine's method registry (name + one-line description); needs torch."""
        try:
            from SemiSupSegLib.methods import describe_methods

            return describe_methods()
        except ImportError:
            logging.warning("SemiSupSegTraining: torch is not installed yet; listing the known methods")
            return list(FALLBACK_METHODS)

    def _env(self, device: str) -> dict:
        return _engine().child_environment(device)

    # --- data -----------------------------------------------------------------------------------
    @staticmethod
    def labelledCaseNames(pool: str) -> list:
        if not _pathOrEmpty(pool) or not os.path.isfile(pool):
            return []
        from SemiSupSegLib.dataset import load_dataset

        return [c.name for c in load_dataset(pool, validate=False).training]

    @staticmethod
    def dataSummary(pool, unlabeledFolders=(), validation=None, checkImages=True):
        if not _pathOrEmpty(pool):
            raise ValueError("Choose the labelled pool's dataset.json first.")
        return _engine().summarize_data(pool, list(unlabeledFolders), validation, checkImages)

    # --- starting processes -----------------------------------------------------------------------
    def _start(self, slot: str, kind: str, args, device: str, keepHistory: bool = False) -> _Job:
        if self.isActive(slot):
            raise RuntimeError(f"a {self.jobs[slot].kind} is already running in this panel; stop it first")
        previous = self.jobs.get(slot)
        state = previous.state if (keepHistory and previous is not None) else _engine().RunState()
        state.begin(kind, keep_history=keepHistory)
        process = self.processFactory(list(args), self._env(device))
        process.start()
        job = _Job(kind, process, state)
        self.jobs[slot] = job
        return job

    def startTraining(
        self,
        pool,
        unlabeledFolders=(),
        validation=None,
        method=DEFAULT_METHOD,
        initModel=None,
        steps=2000,
        patch=48,
        batch=2,
        width=1.0,
        device="auto",
        name=None,
        checkImages=True,
        valEvery=None,
        checkpointEvery=50,
    ) -> str:
        """Build the run's dataset.json in a new model folder and start ``semisupseg train``.

        Returns the model folder (in the models folder). Raises ValueError listing the data's
        problems, or when the folder is locked by another run.
        """
        engine = _engine()
        if self.isActive("train"):
            raise RuntimeError("a training is already running in this panel; stop it first")
        out = engine.new_run_folder(name or f"{method}-{time.strftime('%Y%m%d-%H%M%S')}")
        summary = engine.build_run_dataset(
            pool, list(unlabeledFolders), engine.run_dataset_path(out), validation, checkImages
        )
        if not summary.ok:
            shutil.rmtree(out, ignore_errors=True)
            raise ValueError("The data has problems; nothing was started.\n\n" + summary.text())
        request = engine.TrainRequest(
            data=summary.dataset,
            out=str(out),
            method=method,
            steps=int(steps),
            batch=int(batch),
            patch=(int(patch),) * 3,
            width=float(width),
            device=device,
            init=initModel or None,
            val_cases=len(summary.validation),
            val_every=valEvery,
            checkpoint_every=checkpointEvery,
            name=out.name,
            description=f"fine-tuned in Slicer from {pool}"
            if initModel
            else f"trained in Slicer from {pool}",
        )
        self._start("train", "training", engine.training_command(request, self.pythonExecutable()), device)
        return str(out)

    def startLocatorTraining(self, pool, steps=8000, device="auto", name=None) -> str:
        engine = _engine()
        summary = engine.summarize_data(pool, (), None, check_images=False)
        if summary.with_center < 2:
            raise ValueError(
                f"The locator learns from centre points: the pool has {summary.with_center} case(s) with one."
            )
        root = engine.locators_folder()
        out = engine.new_run_folder(name or f"locator-{time.strftime('%Y%m%d-%H%M%S')}", root)
        args = engine.locator_command(
            [pool], out, steps=int(steps), device=device, python=self.pythonExecutable()
        )
        self._start("train", "locator training", args, device)
        return str(out)

    def resume(self, out, locator=False, device="auto") -> None:
        engine = _engine()
        if not out or not engine.checkpoint_path(out).is_file():
            raise ValueError(f"No interrupted run to resume in '{out}'.")
        from SemiSupSegLib.runlock import is_locked

        holder = is_locked(out)
        if holder is not None:
            raise ValueError(f"'{out}' is being written by another training (pid {holder.get('pid', '?')}).")
        args = engine.resume_command(out, self.pythonExecutable(), locator=locator)
        previous = self.jobs.get("train")
        keep = previous is not None and previous.state.done
        self._start("train", "locator training" if locator else "training", args, device, keepHistory=keep)

    def latestResumableRun(self):
        engine = _engine()
        runs = [(r, "training") for r in engine.resumable_runs(engine.models_folder())]
        runs += [(r, "locator training") for r in engine.resumable_runs(engine.locators_folder())]
        runs = [(r, task) for r, task in runs if not r["locked"]]
        if not runs:
            raise ValueError("There is no interrupted run to resume.")
        run, task = max(runs, key=lambda pair: pair[0]["modified"])
        return run["out"], task

    def canResume(self, out) -> bool:
        try:
            if out and _engine().checkpoint_path(out).is_file():
                return True
            return bool(self.latestResumableRunOrNone())
        except Exception:
            return False

    def latestResumableRunOrNone(self):
        try:
            return self.latestResumableRun()
        except ValueError:
            return None

    def startEstimate(self, method, patch, batch, width, device) -> None:
        args = ["--method", method, "--patch", str(int(patch)), "--batch", str(int(batch))]
        args += ["--width", str(float(width)), "--device", device]
        self._start(
            "tool", "estimate", _engine().tool_command("estimate", args, self.pythonExecutable()), device
        )

    def startComparison(self, new, current=None, device="auto") -> None:
        args = ["--new", str(new), "--device", device]
        if current:
            args += ["--current", str(current)]
        self._start(
            "tool", "comparison", _engine().tool_command("compare", args, self.pythonExecutable()), device
        )

    # --- polling and stopping ---------------------------------------------------------------------
    def isActive(self, slot: str) -> bool:
        job = self.jobs.get(slot)
        return job is not None and not job.ended

    def active(self) -> bool:
        return any(not job.ended for job in self.jobs.values())

    def poll(self) -> list:
        """Read every job's new events into its state; return the slots whose process just ended."""
        ended = []
        for slot, job in self.jobs.items():
            if job.ended:
                continue
            for event in job.process.poll():
                job.state.update(event)
                if self.logCallback and event.get("event") in (
                    "started",
                    "checkpoint",
                    "finished",
                    "cancelled",
                    "error",
                ):
                    self.logCallback(f"{job.kind}: {event.get('event')} {event.get('message', '')}".strip())
            if not job.process.running:
                job.state.process_ended(job.process.returncode, list(job.process.stderr_tail))
                job.ended = True
                ended.append(slot)
        return ended

    def stop(self, slot: str = "train") -> None:
        """Stop the whole process tree; the training writes a checkpoint first (killed after 60 s)."""
        job = self.jobs.get(slot)
        if job is None or job.ended:
            return
        job.process.request_stop(_engine().DEFAULT_STOP_GRACE)
        job.state.stopping()

    def stopAll(self) -> None:
        for slot in list(self.jobs):
            self.stop(slot)

    def waitForJobs(self, timeout: float = 600.0) -> None:
        """Blocking helper for scripts and tests: poll (keeping Qt responsive) until every job ended."""
        deadline = time.monotonic() + timeout
        while self.active():
            if time.monotonic() > deadline:
                self.stopAll()
                raise RuntimeError(f"the training processes did not end within {timeout} s")
            self.poll()
            slicer.app.processEvents()
            time.sleep(0.05)

    # --- adopting a model -------------------------------------------------------------------------
    def setDefaultModel(self, model) -> str:
        if not model:
            raise ValueError("No new model: train one first.")
        folder = _engine().set_default_model(model)
        self.notifyModelsChanged()
        return str(folder)

    @staticmethod
    def notifyModelsChanged() -> None:
        """Make the SemiSupSeg panel re-read the models folder now, if its widget exists
        (it reads the folder anyway when it is first shown)."""
        widget = getattr(slicer.modules, "SemiSupSegWidget", None)
        if widget is None:
            return
        calls = [(name, {}) for name in SEGMENTATION_PANEL_REFRESH] + [("_refreshModels", {"force": True})]
        for name, kwargs in calls:
            refresh = getattr(widget, name, None)
            if callable(refresh):
                try:
                    refresh(**kwargs)
                except Exception:
                    logging.exception(f"SemiSupSeg panel: {name}() failed")
                return

    # --- plot nodes -------------------------------------------------------------------------------
    @staticmethod
    def plotViewNode():
        tag = "SemiSupSegTrainingPlotView"
        node = slicer.mrmlScene.GetSingletonNode(tag, "vtkMRMLPlotViewNode")
        if node is None:
            node = slicer.vtkMRMLPlotViewNode()
            node.SetSingletonTag(tag)
            node.SetName("SemiSupSeg training plot view")
            node = slicer.mrmlScene.AddNode(node)
        return node

    def ensurePlotNodes(self, parameterNode):
        """Tables of the loss and the validation metric, their series and a chart; created once."""
        if parameterNode.lossTable is None:
            parameterNode.lossTable = slicer.mrmlScene.AddNewNodeByClass(
                "vtkMRMLTableNode", "SemiSupSeg training loss"
            )
        if parameterNode.validationTable is None:
            parameterNode.validationTable = slicer.mrmlScene.AddNewNodeByClass(
                "vtkMRMLTableNode", "SemiSupSeg training validation"
            )
        if parameterNode.plotChart is None:
            chart = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLPlotChartNode", "SemiSupSeg training")
            chart.SetTitle("Training")
            chart.SetXAxisTitle("step")
            chart.SetYAxisTitle("loss / validation")
            for table, yName, marker, color in (
                (
                    parameterNode.lossTable,
                    "loss",
                    slicer.vtkMRMLPlotSeriesNode.MarkerStyleNone,
                    (0.85, 0.3, 0.1),
                ),
                (
                    parameterNode.validationTable,
                    "validation",
                    slicer.vtkMRMLPlotSeriesNode.MarkerStyleCircle,
                    (0.1, 0.4, 0.85),
                ),
            ):
                series = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", f"SemiSupSeg {yName}")
                series.SetAndObserveTableNodeID(table.GetID())
                series.SetXColumnName("step")
                series.SetYColumnName(yName)
                series.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter)
                series.SetLineStyle(slicer.vtkMRMLPlotSeriesNode.LineStyleSolid)
                series.SetMarkerStyle(marker)
                series.SetColor(*color)
                chart.AddAndObservePlotSeriesNodeID(series.GetID())
            parameterNode.plotChart = chart
        return parameterNode.plotChart

    def resetPlot(self, parameterNode) -> None:
        self.ensurePlotNodes(parameterNode)
        for table, yName in (
            (parameterNode.lossTable, "loss"),
            (parameterNode.validationTable, "validation"),
        ):
            self._fillTable(table, [], [], yName)

    def updatePlot(self, parameterNode, state) -> None:
        """Loss and validation metric (Dice; the localisation error for the locator) against step."""
        steps, losses = state.loss_series()
        vSteps, values = state.validation_series()
        if not steps and not vSteps and parameterNode.plotChart is None:
            return
        chart = self.ensurePlotNodes(parameterNode)
        key = state.validation_key() or "dice"
        chart.SetYAxisTitle(f"{state.loss_key() or 'loss'} / validation {key}")
        if self._fillTable(parameterNode.lossTable, steps, losses, "loss") | self._fillTable(
            parameterNode.validationTable, vSteps, values, "validation"
        ):
            chart.Modified()

    def _fillTable(self, tableNode, xs, ys, yName) -> bool:
        """Refill the table only when the series changed (the panel polls four times a second)."""
        import numpy as np

        signature = (len(xs), xs[-1] if xs else None, ys[-1] if ys else None, yName)
        if self._plotSignatures.get(tableNode.GetID()) == signature:
            return False
        self._plotSignatures[tableNode.GetID()] = signature
        slicer.util.updateTableFromArray(
            tableNode, [np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)], ["step", yName]
        )
        return True


#
# Self-test
#


class FakeTrainingProcess:
    """Replays protocol events like a training child would, a few per poll (for the self-test).

    ``request_stop`` makes the next poll report ``cancelled`` at the last step sent, exit 130.
    """

    def __init__(self, args, env, events, perPoll=2, returncode=0) -> None:
        self.args = list(args)
        self.env = dict(env)
        self._events = [dict(e, protocol=1) for e in events]
        self.perPoll = perPoll
        self._returncode = returncode
        self._stopRequested = False
        self._done = False
        self.started = False
        self.stderr_tail = []
        self.lastStep = 0

    def start(self):
        self.started = True
        return self

    def poll(self):
        if self._done:
            return []
        if self._stopRequested:
            self._done, self._returncode = True, 130
            self._events = []
            return [{"protocol": 1, "event": "cancelled", "step": self.lastStep, "message": "stopped"}]
        batch, self._events = self._events[: self.perPoll], self._events[self.perPoll :]
        for e in batch:
            self.lastStep = int(e.get("step", self.lastStep) or self.lastStep)
        if not self._events:
            self._done = True
        return batch

    @property
    def running(self) -> bool:
        return not self._done

    @property
    def returncode(self):
        return None if not self._done else self._returncode

    def request_stop(self, grace=60.0) -> None:
        self._stopRequested = True


def fakeTrainingEvents(out: str, steps: int = 5) -> list:
    events = [{"event": "preparing", "case": "case_000", "index": 1, "total": 1}]
    events.append(
        {
            "event": "started",
            "task": "training",
            "step": 0,
            "total": steps,
            "summary": {"method": "dual-unet"},
        }
    )
    for step in range(1, steps + 1):
        loss = 1.0 / step
        events.append(
            {
                "event": "progress",
                "step": step,
                "total": steps,
                "losses": {"loss": loss, "sup": loss / 2},
                "seconds_per_step": 0.5,
                "eta_seconds": 0.5 * (steps - step),
            }
        )
    events.append(
        {"event": "validation", "step": steps, "total": steps, "metrics": {"dice": 0.5, "hd95_mm": 4.0}}
    )
    events.append(
        {
            "event": "finished",
            "step": steps,
            "total": steps,
            "model": out,
            "metrics": {"dice": 0.5},
            "message": "ok",
        }
    )
    return events


class SemiSupSegTrainingTest(ScriptedLoadableModuleTest):
    """A fake process drives the widget (no torch needed), then a real 5-step training runs on a
    tiny phantom pool (needs torch and MONAI in this Slicer)."""

    def setUp(self):
        slicer.mrmlScene.Clear()
        self.tmp = tempfile.mkdtemp(prefix="SemiSupSegTrainingTest-")
        self._home = os.environ.get("SEMISUPSEG_HOME")
        os.environ["SEMISUPSEG_HOME"] = os.path.join(self.tmp, "home")  # never the user's models folder

    def tearDown(self):
        if self._home is None:
            os.environ.pop("SEMISUPSEG_HOME", None)
        else:
            os.environ["SEMISUPSEG_HOME"] = self._home
        shutil.rmtree(self.tmp, ignore_errors=True)

    def runTest(self):
        self.setUp()
        try:
            self.test_FakeProcessDrivesTheWidget()
            self.test_StopAndResumeButtonsWithAFakeProcess()
        finally:
            self.tearDown()
        self.setUp()
        try:
            self.test_RealFiveStepTraining()
        finally:
            self.tearDown()

    def _phantomPool(self):
        """The tiny phantom pool of the real training (needs SciPy, a training dependency)."""
        from SemiSupSegLib.phantom import write_phantom_dataset

        return str(
            write_phantom_dataset(os.path.join(self.tmp, "pool"), cases=4, unlabeled=2, seed=3, size=48)
        )

    def _plainPool(self):
        """A pool of random 24^3 volumes written with SimpleITK only (the fake-process tests)."""
        import json

        import numpy as np
        import SimpleITK as sitk

        root = pathlib.Path(self.tmp) / "plain-pool"
        (root / "images").mkdir(parents=True, exist_ok=True)  # runTest builds it for two tests
        (root / "labels").mkdir(exist_ok=True)
        rng = np.random.default_rng(0)
        entries = {"training": [], "unlabeled": []}
        for i in range(6):
            name = f"case_{i:03d}"
            image = sitk.GetImageFromArray(rng.integers(1, 255, (24, 24, 24)).astype(np.uint8))
            sitk.WriteImage(image, str(root / "images" / f"{name}.nrrd"))
            entry = {"image": f"images/{name}.nrrd", "center": [12.0, 12.0, 12.0]}
            if i < 4:
                label = np.zeros((24, 24, 24), np.uint8)
                label[12, 12, 4:20] = 1
                sitk.WriteImage(sitk.GetImageFromArray(label), str(root / "labels" / f"{name}.nrrd"))
                entries["training"].append({**entry, "label": f"labels/{name}.nrrd"})
            else:
                entries["unlabeled"].append(entry)
        raw = {"name": "plain", "labels": {"0": "background", "1": "instrument"}, **entries}
        (root / "dataset.json").write_text(json.dumps(raw))
        return str(root / "dataset.json")

    def _widget(self, pool):
        widget = slicer.util.getModuleWidget("SemiSupSegTraining")
        widget.initializeParameterNode()
        p = widget._parameterNode
        p.poolPath = pathlib.Path(pool)
        p.unlabeledFolders = []
        p.chooseValidation = False
        p.steps, p.patch, p.batch, p.width, p.device = 5, 16, 1, 0.125, "cpu"
        p.method, p.initModel, p.modelName = DEFAULT_METHOD, "", ""
        return widget

    def test_FakeProcessDrivesTheWidget(self):
        self.delayDisplay("A fake training process drives the panel")
        pool = self._plainPool()
        widget = self._widget(pool)
        widget.logic.requireDependencies = False
        started = []

        def factory(args, env):
            started.append(args)
            if "compare" in args:
                new = args[args.index("--new") + 1]
                result = {
                    "cases_from": "validation",
                    "new": {"name": "new", "path": new},
                    "current": None,
                    "rows": [
                        {"case": "c", "new": {"dice": 0.5, "jaccard": 0.3, "hd95_mm": 4.0, "asd_mm": 1.0}}
                    ],
                    "summary": {"new": {"dice": 0.5, "jaccard": 0.3, "hd95_mm": 4.0, "asd_mm": 1.0}},
                    "better": None,
                }
                events = [{"event": "started", "task": "comparison"}, {"event": "finished", "result": result}]
                return FakeTrainingProcess(args, env, events)
            out = args[args.index("--out") + 1]
            return FakeTrainingProcess(args, env, fakeTrainingEvents(out, steps=5))

        widget.logic.processFactory = factory
        widget.onTrainButton()
        self.assertTrue(started and started[0][1:4] == ["-m", "SemiSupSegLib.cli", "train"])
        self.assertIn("--progress", started[0])
        self.assertEqual(started[0][started[0].index("--method") + 1], "dual-unet")
        self.assertTrue(
            os.path.isfile(os.path.join(widget._parameterNode.runFolder, ".training", "dataset.json"))
        )
        self.assertFalse(widget.ui.trainButton.enabled)
        self.assertTrue(widget.ui.stopButton.enabled)
        for _ in range(50):
            widget.onTimer()
            if not widget.logic.active():
                break
        self.assertFalse(widget.logic.active())
        self.assertEqual(widget.ui.progressBar.value, 100)
        p = widget._parameterNode
        self.assertEqual(p.newModel, p.runFolder)
        self.assertEqual(p.lossTable.GetTable().GetNumberOfRows(), 5)
        self.assertEqual(p.validationTable.GetTable().GetNumberOfRows(), 1)
        self.assertTrue(any("compare" in a for a in started))  # the comparison started by itself
        self.assertEqual(widget.ui.comparisonTable.rowCount, 2)  # the case + the mean
        self.assertTrue(widget.ui.makeDefaultButton.enabled)
        self.delayDisplay("Fake run drove the panel")

    def test_StopAndResumeButtonsWithAFakeProcess(self):
        self.delayDisplay("Stop and Resume with a fake process")
        pool = self._plainPool()
        widget = self._widget(pool)
        widget.logic.requireDependencies = False
        widget.logic.processFactory = lambda args, env: FakeTrainingProcess(
            args,
            env,
            fakeTrainingEvents(args[args.index("--out") + 1] if "--out" in args else "", steps=20),
            perPoll=3,
        )
        widget.onTrainButton()
        widget.onTimer()
        widget.onTimer()
        widget.onStopButton()
        self.assertIn("stopping", widget.ui.statusLabel.text)
        for _ in range(10):
            widget.onTimer()
        job = widget.logic.jobs["train"]
        self.assertEqual(job.state.status, "cancelled")
        self.assertFalse(widget.ui.stopButton.enabled)
        # a checkpoint file makes the run resumable
        checkpoint = os.path.join(widget._parameterNode.runFolder, ".training", "checkpoint.pt")
        with open(checkpoint, "wb") as f:
            f.write(b"fake")
        widget.updateButtons()
        self.assertTrue(widget.ui.resumeButton.enabled)
        resumed = []
        widget.logic.processFactory = lambda args, env: (
            resumed.append(args) or FakeTrainingProcess(args, env, [])
        )
        widget.onResumeButton()
        self.assertIn("--resume", resumed[0])
        widget.logic.waitForJobs(30)
        self.delayDisplay("Stop and Resume work")

    def test_RealFiveStepTraining(self):
        self.delayDisplay("A real 5-step training on a tiny phantom pool")
        missing = SemiSupSegTrainingLogic.missingDependencies()
        if missing:
            raise RuntimeError(f"this test needs {missing} installed in Slicer's Python")
        pool = self._phantomPool()
        widget = self._widget(pool)
        widget.logic.requireDependencies = True
        widget.logic.processFactory = defaultProcessFactory
        widget.onTrainButton()
        deadline = time.monotonic() + 900
        while widget.logic.active() and time.monotonic() < deadline:
            slicer.app.processEvents()  # the panel's QTimer polls the process
            time.sleep(0.05)
        widget.onTimer()
        job = widget.logic.jobs["train"]
        self.assertEqual(job.state.status, "finished", job.state.message)
        out = widget._parameterNode.runFolder
        self.assertTrue(os.path.isfile(os.path.join(out, "model.json")))
        self.assertIn(out, [m["path"] for m in _engine().scan_models()])
        self.assertEqual(widget._parameterNode.lossTable.GetTable().GetNumberOfRows(), 5)
        widget.logic.waitForJobs(600)  # the comparison started when training finished
        widget.onTimer()
        self.assertEqual(
            widget.logic.jobs["tool"].state.status, "finished", widget.logic.jobs["tool"].state.message
        )
        self.assertGreaterEqual(widget.ui.comparisonTable.rowCount, 2)
        widget.onMakeDefault()
        self.assertEqual(os.path.abspath(_engine().default_model()), os.path.abspath(out))
        self.delayDisplay("Real training, comparison and adoption passed")
