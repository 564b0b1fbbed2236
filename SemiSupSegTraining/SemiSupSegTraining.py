"""SemiSupSegTraining: background semi-supervised fine-tuning panel (3D Slicer scripted module).

The panel turns the labelled pool written by the SemiSupSeg panel plus folders of newly collected
unlabelled scans into a better model, without freezing Slicer: training runs as a separate
process (``PythonSlicer -m SemiSupSegLib.cli train ... --progress json``) whose JSON lines the
panel reads with a ``QTimer``. The scene work is ``SemiSupSegMRML.training`` and ``.plots``; what needs
no scene (commands, the run state, the data summary, the estimate, the comparison) is the engine's
``SemiSupSegLib.train_process`` and ``.childprocess``; both are tested with pytest. This file holds the
parameter node, the widgets and their wiring (the data and compare sections are mixins in
``SemiSupSegTrainingLib``); the self-test cases are in ``Testing/Python``.
"""

import importlib
import logging
import os
import pathlib
import shutil
import sys
import tempfile
from typing import Annotated

import qt
import slicer
import vtk
from SemiSupSegMRML import dependencies
from SemiSupSegMRML.plots import TrainingPlot, plot_view_node
from SemiSupSegMRML.training import (
    FALLBACK_METHODS,
    PANEL_METHOD,
    TrainingLogic,
    methods,
)
from SemiSupSegMRML.training import path_or_empty as _pathOrEmpty
from SemiSupSegTrainingLib import engine as _engine
from SemiSupSegTrainingLib.auto_retrain_section import AutoRetrainSection
from SemiSupSegTrainingLib.compare_section import CompareSection
from SemiSupSegTrainingLib.data_section import DataSection
from SemiSupSegTrainingLib.suggest_section import SuggestSection
from SemiSupSegWidgets.device_list import DeviceList
from slicer import vtkMRMLPlotChartNode, vtkMRMLTableNode
from slicer.parameterNodeWrapper import WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

POLL_MS = 250


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
    method, initModel ("" = from scratch), steps, patch, batch, width, augment, device - the training;
    runFolder/runTask - the last run started (for Resume); newModel - the last model trained;
    autoRetrain/autoRetrainEvery - fine-tune the default model after N new labelled cases (off);
    lossTable, validationTable, plotChart - the plot nodes.
    """

    poolPath: pathlib.Path
    unlabeledFolders: list[str]
    chooseValidation: bool = False
    validationCases: list[str]
    method: str = PANEL_METHOD
    initModel: str = ""
    steps: Annotated[int, WithinRange(1, 1000000)] = 2000
    patch: Annotated[int, WithinRange(16, 160)] = 48
    batch: Annotated[int, WithinRange(1, 64)] = 2
    width: Annotated[float, WithinRange(0.125, 4.0)] = 1.0
    augment: str = "standard"  # a level of `semisupseg train --augment`, the items of augmentComboBox
    device: str = "Auto"  # one of slicer_bridge.panel_device_choices(), kept in step by DeviceList
    modelName: str = ""
    locatorSteps: Annotated[int, WithinRange(1, 1000000)] = 8000
    runFolder: str = ""
    runTask: str = ""
    newModel: str = ""
    estimateText: str = ""
    autoRetrain: bool = False
    autoRetrainEvery: Annotated[int, WithinRange(1, 1000)] = 5
    lossTable: vtkMRMLTableNode
    validationTable: vtkMRMLTableNode
    plotChart: vtkMRMLPlotChartNode


#
# Widget
#


class SemiSupSegTrainingWidget(
    ScriptedLoadableModuleWidget,
    VTKObservationMixin,
    CompareSection,
    DataSection,
    SuggestSection,
    AutoRetrainSection,
):
    """The panel; its data, compare, suggest and automatic-retraining sections are the mixins in
    ``SemiSupSegTrainingLib``."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._updatingGui = False
        self._methods = []
        self._methodsFromRegistry = False
        self.comparison = None

    # --- set up ---------------------------------------------------------------------------------
    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/SemiSupSegTraining.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = SemiSupSegTrainingLogic()
        self.deviceList = DeviceList(self.ui.deviceComboBox)
        self.logic.log = logging.info

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

        self.setupSuggestSection()
        self.setupAutoRetrainSection()
        self.initializeParameterNode()
        self.populateMethods()
        self.populateModels()
        self.onPoolChanged()
        self.updateButtons()

    def cleanup(self) -> None:
        """Slicer closes: ask a running training to stop (it writes a checkpoint; Resume later)."""
        if self.logic is not None:
            self.logic.stop_all()
        if hasattr(self, "timer"):
            self.timer.stop()
            self.autoRetrainTimer.stop()
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
        self.deviceList.setParameterNode(inputParameterNode)
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(
                self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGuiFromParameterNode
            )
            self.updateGuiFromParameterNode()

    # --- parameter node <-> widgets that connectGui does not bind -------------------------------
    def updateGuiFromParameterNode(self, caller=None, event=None) -> None:
        self.deviceList.setParameterNode(self._parameterNode)
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
            self.updateAutoRetrainFromParameterNode(p)
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

    def populateMethods(self, fromRegistry=False) -> None:
        """Fill the method list: the known names when the panel opens (no torch import, which takes
        seconds), the engine's registry with descriptions once torch is needed anyway."""
        self._methods = methods() if fromRegistry else list(FALLBACK_METHODS)
        self._methodsFromRegistry = fromRegistry
        combo = self.ui.methodComboBox
        combo.blockSignals(True)
        combo.clear()
        for entry in self._methods:
            combo.addItem(entry["name"], entry["name"])
            combo.setItemData(combo.count - 1, entry["description"], qt.Qt.ToolTipRole)
        combo.blockSignals(False)
        method = self._parameterNode.method if self._parameterNode else PANEL_METHOD
        if combo.findData(method) < 0:
            method = PANEL_METHOD
        self._selectComboData(combo, method)
        self._showMethodDescription()

    def _showMethodDescription(self) -> None:
        name = self.ui.methodComboBox.currentData
        description = next((m["description"] for m in self._methods if m["name"] == name), "")
        self.ui.methodDescriptionLabel.text = description

    # --- method ---------------------------------------------------------------------------------
    def onMethodChanged(self, index) -> None:
        self._showMethodDescription()
        if self._parameterNode is not None and not self._updatingGui:
            self._parameterNode.method = self.ui.methodComboBox.currentData or PANEL_METHOD

    def onStartModelChanged(self, index) -> None:
        if self._parameterNode is not None and not self._updatingGui:
            self._parameterNode.initModel = self.ui.startModelComboBox.currentData or ""

    def onEstimate(self) -> None:
        with slicer.util.tryWithErrorDisplay("Failed to start the time estimate.", waitCursor=True):
            p = self._parameterNode
            self.logic.ensureDependencies()
            self.logic.start_estimate(p.method, p.patch, p.batch, p.width, p.device)
            self.ui.estimateLabel.text = "measuring a few steps in the background..."
            self.startPolling()

    # --- train, stop, resume, locator -----------------------------------------------------------
    def onTrainButton(self) -> None:
        with slicer.util.tryWithErrorDisplay("Failed to start the training.", waitCursor=True):
            p = self._parameterNode
            self.logic.ensureDependencies()
            if not self._methodsFromRegistry:
                self.populateMethods(fromRegistry=True)  # the real registry, now that torch is there
            summary = self.checkData()
            if not summary.ok:
                raise ValueError("The data has problems; nothing was started.\n\n" + summary.text())
            settings = dict(self._trainingSettings(), check_images=False)  # checkData() read them
            out = self.logic.start_training(
                _pathOrEmpty(p.poolPath), init_model=p.initModel or None, name=p.modelName or None, **settings
            )
            self._runStarted(out)

    def _trainingSettings(self) -> dict:
        """The panel's training settings (``TrainingLogic.start_training``'s keywords) but the pool, the
        start model and the name."""
        p = self._parameterNode
        names = ("method", "steps", "patch", "batch", "width", "augment", "device")
        settings = {name: getattr(p, name) for name in names}
        return dict(settings, unlabeled_folders=list(p.unlabeledFolders), validation=self._validation())

    def _runStarted(self, out: str) -> None:
        p = self._parameterNode
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
                out, task = self.logic.latest_resumable_run()
            self.logic.resume(out, locator=task == "locator training")
            p.runFolder, p.runTask = out, task
            self.startPolling()

    def onTrainLocator(self) -> None:
        with slicer.util.tryWithErrorDisplay("Failed to start the locator training.", waitCursor=True):
            p = self._parameterNode
            self.logic.ensureDependencies()
            out = self.logic.start_locator_training(_pathOrEmpty(p.poolPath), p.locatorSteps, p.device)
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
                self.logic.plot(self._parameterNode).update(state)
                if self._parameterNode.plotChart:
                    self._showChart(self._parameterNode.plotChart)
        tool = self.logic.jobs.get("tool")
        if tool is not None and tool.kind == "comparison" and tool.state.active:
            self.ui.resultLabel.text = f"comparing: {tool.state.status_text()}"
        self.updateSuggestProgress()
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
            self.logic.notify_models_changed()
            self.populateModels()
            if state.model:
                self.startComparison()
        elif job.kind == "locator training" and state.status == "finished":
            self.ui.resultLabel.text = f"New locator: {state.model}"
            self.logic.notify_models_changed()
        elif job.kind == "estimate":
            self.showEstimate(state)
        elif job.kind == "comparison":
            self.showComparison(state)
        elif job.kind == "suggestion":
            self.showSuggestions(state)
        if state.status == "error":
            self.ui.statusLabel.text = f"{job.kind}: {state.message}"
            if not slicer.app.testingEnabled():
                slicer.util.errorDisplay(f"{job.kind} failed:\n\n{state.message}")

    def showEstimate(self, state) -> None:
        if state.status != "finished" or not state.result:
            self.ui.estimateLabel.text = f"estimate failed: {state.message}"
            return
        text = _engine().estimate_text(state.result, self._parameterNode.steps)
        self._parameterNode.estimateText = text
        self.ui.estimateLabel.text = text

    # --- plot -------------------------------------------------------------------------------------
    def resetPlot(self) -> None:
        self.logic.plot(self._parameterNode).reset()

    def _showChart(self, chart) -> None:
        viewNode = plot_view_node()
        if viewNode.GetPlotChartNodeID() != chart.GetID():
            viewNode.SetPlotChartNodeID(chart.GetID())
        if self.plotWidget.mrmlPlotViewNode() != viewNode:
            self.plotWidget.setMRMLPlotViewNode(viewNode)

    def onShowPlotInLayout(self) -> None:
        with slicer.util.tryWithErrorDisplay("Failed to show the plot.", waitCursor=False):
            chart = self.logic.plot(self._parameterNode).ensure_nodes()
            slicer.modules.plots.logic().ShowChartInLayout(chart)

    # --- buttons ----------------------------------------------------------------------------------
    def updateButtons(self) -> None:
        if self.logic is None or not hasattr(self, "ui"):
            return
        p = self._parameterNode
        training = self.logic.is_active("train")
        tool = self.logic.is_active("tool")
        hasPool = bool(p and _pathOrEmpty(p.poolPath))
        self.ui.trainButton.enabled = hasPool and not training
        self.ui.trainLocatorButton.enabled = hasPool and not training
        self.ui.stopButton.enabled = training
        self.ui.resumeButton.enabled = not training and self.logic.can_resume(p.runFolder if p else "")
        self.ui.checkDataButton.enabled = hasPool
        self.ui.estimateButton.enabled = not tool
        hasNew = bool(p and p.newModel)
        self.ui.compareButton.enabled = hasNew and not tool
        self.ui.makeDefaultButton.enabled = hasNew and self.comparison is not None and not tool


#
# Logic
#


class SemiSupSegTrainingLogic(ScriptedLoadableModuleLogic, TrainingLogic):
    """The module's logic for Slicer: the parameter node and the plot, plus :class:`SemiSupSegMRML.
    training.TrainingLogic` (child processes, default model), which has no Qt.

    ``processFactory(args, env)`` replaces the real child process (tests inject a fake one).
    """

    def __init__(self, processFactory=None) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        TrainingLogic.__init__(self, processFactory, on_models_changed=refreshSegmentationPanel)
        self.requireDependencies = True  # the self-test's fake processes need no torch
        self._plot = None

    def getParameterNode(self):
        return SemiSupSegTrainingParameterNode(super().getParameterNode())

    def ensureDependencies(self) -> None:
        """Install torch/MONAI/SciPy after one confirmation (the one installer of both panels)."""
        if not self.requireDependencies:
            return
        dependencies.ensure_dependencies(
            lambda question: slicer.util.confirmOkCancelDisplay(question, windowTitle="SemiSupSeg Training"),
            testing=slicer.app.testingEnabled(),
        )

    def plot(self, parameterNode) -> TrainingPlot:
        """The training curves kept in ``parameterNode``'s table and chart nodes."""
        if self._plot is None or self._plot.holder is not parameterNode:
            self._plot = TrainingPlot(parameterNode)
        return self._plot


def refreshSegmentationPanel() -> None:
    """Make the SemiSupSeg panel re-read its models and select the default (if its widget exists; it
    reads them anyway when first shown)."""
    widget = getattr(slicer.modules, "SemiSupSegWidget", None)
    if widget is not None:
        widget.refreshModels(preferDefault=True)


#
# Self-test
#


def _testingModule(name: str):
    """A module of the self-test kept in ``Testing/Python`` (not in production code): the cases and the
    fake child process."""
    folder = str(pathlib.Path(__file__).resolve().parent / "Testing" / "Python")
    if folder not in sys.path:
        sys.path.insert(0, folder)
    return importlib.import_module(name)


class SemiSupSegTrainingTest(ScriptedLoadableModuleTest):
    """A fake process drives the widget (no torch needed), then a real 5-step training runs on a
    tiny phantom pool (needs torch and MONAI in this Slicer); the cases are in
    ``Testing/Python/training_selftest.py``."""

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
        _testingModule("training_selftest").run_all(self)
