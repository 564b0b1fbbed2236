"""SemiSupSeg: the clinician's segmentation panel (3D Slicer scripted module).

Load a 3D ultrasound volume, place the instrument centre point (or let the DQN locator find it), segment
the catheter or guide-wire with a trained model on GPU or CPU, correct the result in the embedded Segment
Editor, and save the corrected case into the labelled pool that the training panel and
``semisupseg train`` read.

The module is kept thin: widgets, the parameter node, dialogs and wiring. Everything done with the scene
(volume <-> image, point, segment, pool, background process) lives in the Qt-free ``SemiSupSegMRML``
package, tested on the real MRML core by ``Testing/mrml``; geometry, model listing and messages in the
engine's ``SemiSupSegLib.slicer_bridge``. torch, MONAI and SciPy are imported only when first needed,
after one confirmation to install them.

Long runs: a segmentation with a centre point (bounded work: one batch of patches around the point) and
any small volume run inside Slicer, with the progress bar updated between stages, so that the loaded
model is reused by the next click. Full-volume mode and Monte-Carlo uncertainty on larger volumes run in
a background ``PythonSlicer -m SemiSupSegLib.cli segment --progress json`` process that reports
JSON-lines progress (polled by a ``QTimer``); the Segment button turns into Cancel, which kills the
whole process tree.
"""

from __future__ import annotations

import importlib
import logging
import pathlib
import shutil
import sys
import tempfile
from typing import Annotated

import ctk
import qt
import slicer
import vtk
from SemiSupSegMRML import dependencies, markups, models
from SemiSupSegMRML.pool import add_to_pool
from SemiSupSegMRML.refine import RefineHistory
from SemiSupSegMRML.segmentation import Cancelled, SegmentationLogic
from SemiSupSegWidgets.actions import userAction
from SemiSupSegWidgets.device_list import DeviceList
from SemiSupSegWidgets.workflow_section import WorkflowSection
from slicer import vtkMRMLMarkupsFiducialNode, vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.parameterNodeWrapper import Default, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from SemiSupSegLib import slicer_bridge as bridge

SEGMENT_EDITOR_TAG = "SemiSupSegSegmentEditor"
POLL_MS = 100


#
# SemiSupSeg
#


class SemiSupSeg(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "SemiSupSeg"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = ["Markups", "Segmentations"]
        self.parent.contributors = ["SemiSupSeg developers"]
        self.parent.helpText = (
            "Segment catheters and guide-wires in 3D ultrasound: choose the volume, place the instrument "
            "centre point or click <b>Find instrument</b>, pick a model and click <b>Segment</b>. "
            "Correct the result in the Segment Editor below, then <b>Add to labelled pool</b> so that "
            "the next training learns from it. Without a point the whole volume is segmented (slower). "
            "See the README's 'Clinician's walkthrough'."
        )
        self.parent.acknowledgementText = "Methods from the seed papers listed in README.md."


#
# Parameter node
#


@parameterNodeWrapper
class SemiSupSegParameterNode:
    """Everything the panel remembers; saved with the scene.

    inputVolume - the ultrasound volume. centerPoint - point list with the instrument centre (up to
    markups.MAX_CENTERS points: the region at each, merged).
    locatorFolder - DQN locator used by Find instrument. modelsFolder / modelPath - where models are
    listed / the chosen model folder. device - Auto, GPU or CPU. probabilityOutput, uncertaintyOutput -
    optional outputs. forceBackground - run every segmentation in a background process. segmentation,
    probabilityVolume, uncertaintyVolume - outputs (created on first run). poolFolder, caseName - where and
    under which name "Add to labelled pool" saves. refinePoint - the point "Refine here" segments around.
    """

    inputVolume: vtkMRMLScalarVolumeNode
    centerPoint: vtkMRMLMarkupsFiducialNode
    locatorFolder: Annotated[pathlib.Path, Default(generator=bridge.default_locator)]
    modelsFolder: Annotated[pathlib.Path, Default(generator=bridge.default_models_folder)]
    modelPath: str = ""
    device: str = "Auto"  # one of bridge.panel_device_choices(), kept in step by DeviceList
    probabilityOutput: bool = False
    uncertaintyOutput: bool = False
    forceBackground: bool = False
    segmentation: vtkMRMLSegmentationNode
    probabilityVolume: vtkMRMLScalarVolumeNode
    uncertaintyVolume: vtkMRMLScalarVolumeNode
    poolFolder: Annotated[pathlib.Path, Default(generator=bridge.default_pool_folder)]
    caseName: str = ""
    refinePoint: vtkMRMLMarkupsFiducialNode


#
# SemiSupSegWidget
#


class SemiSupSegWidget(ScriptedLoadableModuleWidget, VTKObservationMixin, WorkflowSection):
    """The panel; its *Next case, refine, uncertainty* section is the mixin in ``SemiSupSegWidgets``."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._observedPointNode = None
        self._listedModelsFolder = None
        self._job = None
        self._jobTimer = None
        self.segmentEditorWidget = None
        self.refineHistory = RefineHistory()

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/SemiSupSeg.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = SemiSupSegLogic()
        self.deviceList = DeviceList(self.ui.deviceComboBox)
        self.logic.logCallback = self._log

        for pathEdit in (
            self.ui.locatorPathLineEdit,
            self.ui.modelsFolderPathLineEdit,
            self.ui.poolFolderPathLineEdit,
        ):
            pathEdit.filters = ctk.ctkPathLineEdit.Dirs
        self.ui.pointPlaceWidget.buttonsVisible = True
        self.ui.pointPlaceWidget.placeMultipleMarkups = (
            slicer.qSlicerMarkupsPlaceWidget.ShowPlaceMultipleMarkupsOption  # several centres (issue 19)
        )
        self.ui.progressBar.setVisible(False)

        # Embedded Segment Editor on the output segmentation and the input volume (undo included).
        self.segmentEditorWidget = slicer.qMRMLSegmentEditorWidget()
        self.segmentEditorWidget.setMaximumNumberOfUndoStates(10)
        self.segmentEditorWidget.setMRMLScene(slicer.mrmlScene)
        self.segmentEditorWidget.setSegmentationNodeSelectorVisible(False)
        self.segmentEditorWidget.setSourceVolumeNodeSelectorVisible(False)
        self.ui.correctCollapsibleButton.layout().addWidget(self.segmentEditorWidget)
        self._selectSegmentEditorNode()
        self.setupWorkflowSection()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.findButton.connect("clicked(bool)", self.onFindButton)
        self.ui.segmentButton.connect("clicked(bool)", self.onSegmentButton)
        self.ui.refreshModelsButton.connect("clicked(bool)", lambda: self.refreshModels())
        self.ui.openModelsFolderButton.connect("clicked(bool)", self.onOpenModelsFolder)
        self.ui.modelComboBox.connect("currentIndexChanged(int)", self.onModelChanged)
        self.ui.addLabelledButton.connect("clicked(bool)", lambda: self.onAddToPool(unlabeled=False))
        self.ui.addUnlabelledButton.connect("clicked(bool)", lambda: self.onAddToPool(unlabeled=True))

        self.initializeParameterNode()

    def cleanup(self) -> None:
        if self._job is not None:
            self._job.cancel()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()
        self._selectSegmentEditorNode()
        self.segmentEditorWidget.installKeyboardShortcuts()
        self.segmentEditorWidget.updateWidgetFromMRML()

    def exit(self) -> None:
        self.segmentEditorWidget.setActiveEffect(None)
        self.segmentEditorWidget.uninstallKeyboardShortcuts()
        self.segmentEditorWidget.removeViewObservations()
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateGui)

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)
        self.segmentEditorWidget.setSegmentationNode(None)
        self.segmentEditorWidget.removeViewObservations()

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    # --- parameter node ---------------------------------------------------------------------------
    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        p = self._parameterNode
        if not p.inputVolume:
            first = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if first and not first.IsA("vtkMRMLLabelMapVolumeNode"):
                p.inputVolume = first
        if not p.centerPoint:
            p.centerPoint = markups.create_point_node(max_points=markups.MAX_CENTERS)
        if not p.refinePoint:
            p.refinePoint = markups.create_point_node("Refine point")

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateGui)
        self._parameterNode = inputParameterNode
        self.deviceList.setParameterNode(inputParameterNode)
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateGui)
            self._updateGui()

    def _selectSegmentEditorNode(self) -> None:
        # Our own editor node: the Segment Editor module's widget observes the "SegmentEditor" singleton
        # and would activate the same effect (and view observations) whenever this panel picks one.
        node = slicer.mrmlScene.GetSingletonNode(SEGMENT_EDITOR_TAG, "vtkMRMLSegmentEditorNode")
        if node is None:
            node = slicer.mrmlScene.CreateNodeByClass("vtkMRMLSegmentEditorNode")
            node.UnRegister(None)
            node.SetSingletonTag(SEGMENT_EDITOR_TAG)
            node = slicer.mrmlScene.AddNode(node)
        if self.segmentEditorWidget.mrmlSegmentEditorNode() != node:
            self.segmentEditorWidget.setMRMLSegmentEditorNode(node)

    def _observePointNode(self, node) -> None:
        if node == self._observedPointNode:
            return
        events = (
            slicer.vtkMRMLMarkupsNode.PointPositionDefinedEvent,
            slicer.vtkMRMLMarkupsNode.PointPositionUndefinedEvent,
            slicer.vtkMRMLMarkupsNode.PointRemovedEvent,
        )
        if self._observedPointNode is not None:
            for event in events:
                self.removeObserver(self._observedPointNode, event, self._updateGui)
        self._observedPointNode = node
        if node is not None:
            for event in events:
                self.addObserver(node, event, self._updateGui)

    def _updateGui(self, caller=None, event=None) -> None:
        p = self._parameterNode
        self.deviceList.setParameterNode(p)
        if p is None:
            return
        self._refreshModels()
        self._observePointNode(p.centerPoint)
        self.ui.pointPlaceWidget.setCurrentNode(p.centerPoint)
        busy = self._job is not None
        hasVolume = p.inputVolume is not None
        hasModel = bool(p.modelPath)
        hasPoint = markups.has_point(p.centerPoint)
        self.ui.findButton.enabled = hasVolume and p.centerPoint is not None and not busy
        self.ui.segmentButton.enabled = busy or (hasVolume and hasModel)
        self.ui.segmentButton.toolTip = (
            "Stop the running segmentation"
            if busy
            else "Segment the instrument"
            if hasVolume and hasModel
            else "Choose an input volume and a model first"
        )
        self.ui.modeLabel.text = (
            ""
            if hasPoint or not hasVolume
            else "No centre point: the whole volume will be segmented (slower). Place a point or click "
            "Find instrument for a faster, more precise result."
        )
        hasSegmentation = p.segmentation is not None
        self.ui.addLabelledButton.enabled = hasVolume and hasSegmentation and not busy
        self.ui.addUnlabelledButton.enabled = hasVolume and not busy
        editor = self.segmentEditorWidget
        if editor.segmentationNode() != p.segmentation:
            editor.setSegmentationNode(p.segmentation)
        # The editor accepts a source volume only once it has a segmentation (older Slicer logs an error
        # on every call otherwise).
        if p.segmentation is not None and editor.sourceVolumeNode() != p.inputVolume:
            editor.setSourceVolumeNode(p.inputVolume)
        self.refinePlaceWidget.setCurrentNode(p.refinePoint)
        self.loadNextButton.enabled = hasModel and not busy
        self.refineButton.enabled = hasVolume and hasModel and hasSegmentation and not busy
        self.undoRefineButton.enabled = self.refineHistory.can_undo and not busy

    # --- models -----------------------------------------------------------------------------------
    def refreshModels(self, preferDefault=False) -> None:
        """Re-read the models folder (public: the training panel calls it after a new model or a new
        default). ``preferDefault`` selects the default model even when another one is chosen."""
        if self._parameterNode is not None:
            self._refreshModels(force=True, preferDefault=preferDefault)

    def _refreshModels(self, force=False, preferDefault=False) -> None:
        p = self._parameterNode
        folder = str(p.modelsFolder)
        if not force and folder == self._listedModelsFolder:
            return
        self._listedModelsFolder = folder
        combo = self.ui.modelComboBox
        wasBlocked = combo.blockSignals(True)
        try:
            combo.clear()
            entries = models.list_models(folder)
            for index, entry in enumerate(entries):
                combo.addItem(bridge.model_label(entry), entry["path"])
                combo.setItemData(index, bridge.model_tooltip(entry), qt.Qt.ToolTipRole)
            paths = [e["path"] for e in entries]
            chosen = models.choose_model(paths, p.modelPath, models.default_model(), preferDefault)
            if chosen:
                combo.currentIndex = paths.index(chosen)
        finally:
            combo.blockSignals(wasBlocked)
        self.onModelChanged(combo.currentIndex)

    def onModelChanged(self, index) -> None:
        p = self._parameterNode
        if p is None:
            return
        combo = self.ui.modelComboBox
        path = combo.itemData(index) if index >= 0 else ""
        tooltip = combo.itemData(index, qt.Qt.ToolTipRole) if index >= 0 else ""
        self.ui.modelDescriptionLabel.text = tooltip or (
            f"No model in {p.modelsFolder}. Train one with the SemiSupSeg Training module or "
            "'semisupseg train', or choose another models folder."
        )
        if path and p.modelPath != path:
            p.modelPath = path
        elif not path and p.modelPath and combo.count == 0:
            p.modelPath = ""

    def onOpenModelsFolder(self) -> None:
        with userAction("Cannot open the models folder."):
            folder = pathlib.Path(self._parameterNode.modelsFolder).expanduser()
            folder.mkdir(parents=True, exist_ok=True)
            qt.QDesktopServices.openUrl(qt.QUrl.fromLocalFile(str(folder)))

    # --- actions ----------------------------------------------------------------------------------
    def _log(self, text) -> None:
        self.ui.statusLabel.text = text
        slicer.app.processEvents()

    def _onProgress(self, stage, fraction) -> None:
        self.ui.progressBar.setVisible(True)
        if fraction is None:
            self.ui.progressBar.setRange(0, 0)  # busy indicator
        else:
            self.ui.progressBar.setRange(0, 100)
            self.ui.progressBar.value = int(round(100 * max(0.0, min(1.0, float(fraction)))))
        self.ui.statusLabel.text = f"Segmenting: {stage}..."
        slicer.app.processEvents()

    def onFindButton(self) -> None:
        p = self._parameterNode
        with userAction("Finding the instrument failed."):
            self.logic.ensureDependencies()
            self.ui.confidenceLabel.text = "Searching..."
            slicer.app.processEvents()
            found = self.logic.locate(p.inputVolume, p.centerPoint, p.locatorFolder, p.device)
            text = bridge.confidence_text(
                found.q_value, found.confidence, found.low_confidence, found.found_by
            )
            self.ui.confidenceLabel.text = text + f" ({found.seconds:.1f} s)"
            return
        self.ui.confidenceLabel.text = ""

    def onSegmentButton(self) -> None:
        if self._job is not None:
            self._job.cancel()
            return
        p = self._parameterNode
        with userAction("Segmentation failed."):
            self.logic.ensureDependencies()
            request = self.logic.prepare(
                p.inputVolume,
                p.centerPoint,
                p.modelPath,
                p.device,
                probability=p.probabilityOutput,
                uncertainty=p.uncertaintyOutput,
                force_background=p.forceBackground,
            )
            if request.execution == "background":
                self._job = self.logic.start_background(
                    request, on_progress=self._onProgress, on_done=self._onBackgroundDone
                )
                self._jobTimer = qt.QTimer()
                self._jobTimer.setInterval(POLL_MS)
                self._jobTimer.connect("timeout()", self._job.poll)
                self._jobTimer.start()
                self.ui.segmentButton.text = "Cancel"
                self._onProgress("starting the background process", None)
                self._updateGui()
                return
            self._setRunning(True)
            try:
                outcome = self.logic.run(request, progress=self._onProgress)
            finally:
                self._setRunning(False)
                self._updateGui()
            self._showOutcome(request, outcome)

    def _setRunning(self, running) -> None:
        for w in (
            self.ui.segmentButton,
            self.ui.findButton,
            self.ui.addLabelledButton,
            self.ui.addUnlabelledButton,
        ):
            w.enabled = not running
        if not running:
            self.ui.progressBar.setVisible(False)

    def _onBackgroundDone(self, request, outcome, error) -> None:
        self._job = None
        if self._jobTimer is not None:
            self._jobTimer.stop()
            self._jobTimer = None
        self.ui.segmentButton.text = "Segment"
        self.ui.progressBar.setVisible(False)
        self._updateGui()
        if error is not None:
            self.ui.statusLabel.text = "Segmentation stopped." if isinstance(error, Cancelled) else ""
            if not isinstance(error, Cancelled):
                slicer.util.errorDisplay(
                    f"Segmentation failed.\n\n{bridge.user_message(error, request.device)}",
                    windowTitle="SemiSupSeg",
                )
            return
        with userAction("Showing the segmentation failed."):
            self._showOutcome(request, outcome)

    def _showOutcome(self, request, outcome) -> None:
        p = self._parameterNode
        if p.segmentation is not None and self.segmentEditorWidget.segmentationNode() == p.segmentation:
            self.segmentEditorWidget.saveStateForUndo()  # Ctrl+Z brings back the previous segment
        nodes = self.logic.import_results(
            request, outcome, p.segmentation, p.probabilityVolume, p.uncertaintyVolume
        )
        p.segmentation = nodes["segmentation"]
        if nodes.get("probability") is not None:
            p.probabilityVolume = nodes["probability"]
        if nodes.get("uncertainty") is not None:
            p.uncertaintyVolume = nodes["uncertainty"]
        self.ui.statusLabel.text = outcome["summary"]
        slicer.util.setSliceViewerLayers(background=request.volume_node)
        self.refineHistory.clear()
        self.showUncertainty()

    def onAddToPool(self, unlabeled) -> None:
        p = self._parameterNode
        with userAction("Saving into the pool failed."):
            result = add_to_pool(
                p.inputVolume,
                p.segmentation,
                p.centerPoint,
                p.poolFolder,
                name=p.caseName or p.inputVolume.GetName(),
                unlabeled=unlabeled,
            )
            self.ui.poolStatusLabel.text = result.message


#
# SemiSupSegLogic
#


class SemiSupSegLogic(ScriptedLoadableModuleLogic, SegmentationLogic):
    """The module's logic for Slicer: the parameter node, plus :class:`SemiSupSegMRML.segmentation.
    SegmentationLogic` (locate, segment, import), which holds all the scene work and has no Qt."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        SegmentationLogic.__init__(self, log=self._log)
        self.logCallback = None

    def getParameterNode(self):
        return SemiSupSegParameterNode(super().getParameterNode())

    def _log(self, text) -> None:
        logging.info(text)
        if self.logCallback:
            self.logCallback(text)

    def ensureDependencies(self) -> None:
        """Install torch/MONAI/SciPy after one confirmation (the one installer of both panels)."""
        dependencies.ensure_dependencies(
            lambda question: slicer.util.confirmOkCancelDisplay(
                question, windowTitle="SemiSupSeg: install dependencies"
            ),
            testing=slicer.app.testingEnabled(),
            log=self._log,
        )


#
# SemiSupSegTest
#


class SemiSupSegTest(ScriptedLoadableModuleTest):
    """End to end in the scene: phantom volume -> tiny model and locator trained on the fly -> locate ->
    segment (in Slicer and in the background process) -> check geometry -> add to pool -> check dataset.json.

    Needs torch, MONAI and SciPy in Slicer's Python (the module installs them at first use; the test does
    not install anything). Takes about a minute on a laptop CPU.
    """

    def setUp(self):
        slicer.mrmlScene.Clear()
        self.tmp = pathlib.Path(tempfile.mkdtemp(prefix="SemiSupSegTest-"))

    def tearDown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def runTest(self):
        _testingModule("segmentation_selftest").run_all(self)


def _testingModule(name: str):
    """A module of the self-test kept in ``Testing/Python`` (its cases and helpers)."""
    folder = str(pathlib.Path(__file__).resolve().parent / "Testing" / "Python")
    if folder not in sys.path:
        sys.path.insert(0, folder)
    return importlib.import_module(name)


if __name__ == "__main__":  # pragma: no cover - run inside Slicer only
    sys.exit("Load this module in 3D Slicer (see README.md).")
