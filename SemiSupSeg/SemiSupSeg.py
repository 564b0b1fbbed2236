"""SemiSupSeg: the clinician's segmentation panel (3D Slicer scripted module).

Load a 3D ultrasound volume, place the instrument centre point (or let the DQN locator find it), segment
the catheter or guide-wire with a trained model on GPU or CPU, correct the result in the embedded Segment
Editor, and save the corrected case into the labelled pool that the training panel and
``semisupseg train`` read.

The module is kept thin: geometry, model listing, device choice, pool writing and error messages live in
the engine's ``SemiSupSegLib.slicer_bridge`` (tested with pytest outside Slicer). torch, MONAI and SciPy
are imported only when first needed, after one confirmation to install them.

Long runs: a segmentation with a centre point (bounded work: one batch of patches around the point) and
any small volume run inside Slicer, with the progress bar updated between stages, so that the loaded
model is reused by the next click. Full-volume mode and Monte-Carlo uncertainty on larger volumes run in
a background ``PythonSlicer -m SemiSupSegLib.segment_worker`` process that reports JSON-lines progress;
the Segment button turns into Cancel, which kills the whole process tree.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import pathlib
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from typing import Annotated

import ctk
import numpy as np
import qt
import slicer
import vtk
from slicer import vtkMRMLMarkupsFiducialNode, vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.parameterNodeWrapper import Choice, Default, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from SemiSupSegLib import slicer_bridge as bridge
from SemiSupSegLib.errors import InputError, SemiSupSegError

SEGMENT_NAME = "instrument"
SEGMENT_COLOR = (1.0, 0.85, 0.1)
SEGMENT_EDITOR_TAG = "SemiSupSegSegmentEditor"
MC_SAMPLES = 8
TORCH_REQUIREMENT = ">=2.1"


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

    inputVolume - the ultrasound volume. centerPoint - point list with the instrument centre (one point).
    locatorFolder - DQN locator used by Find instrument. modelsFolder / modelPath - where models are
    listed / the chosen model folder. device - Auto, GPU or CPU. probabilityOutput, uncertaintyOutput -
    optional outputs. forceBackground - run every segmentation in a background process. segmentation,
    probabilityVolume, uncertaintyVolume - outputs (created on first run). poolFolder, caseName - where and
    under which name "Add to labelled pool" saves.
    """

    inputVolume: vtkMRMLScalarVolumeNode
    centerPoint: vtkMRMLMarkupsFiducialNode
    locatorFolder: Annotated[pathlib.Path, Default(generator=bridge.default_locator)]
    modelsFolder: Annotated[pathlib.Path, Default(generator=bridge.default_models_folder)]
    modelPath: str = ""
    device: Annotated[str, Choice(list(bridge.DEVICE_CHOICES))] = "Auto"
    probabilityOutput: bool = False
    uncertaintyOutput: bool = False
    forceBackground: bool = False
    segmentation: vtkMRMLSegmentationNode
    probabilityVolume: vtkMRMLScalarVolumeNode
    uncertaintyVolume: vtkMRMLScalarVolumeNode
    poolFolder: Annotated[pathlib.Path, Default(generator=bridge.default_pool_folder)]
    caseName: str = ""


@contextlib.contextmanager
def userAction(message, device=None):
    """Run a user-triggered action: wait cursor, errors shown in a message box.

    The engine's errors (missing model, point outside the volume, wrong dimensionality...) and
    out-of-memory are shown as one clear sentence without a stack trace. Anything unexpected goes through
    ``slicer.util.tryWithErrorDisplay`` (message plus details for a bug report) and is re-raised.
    """
    shown = None
    with slicer.util.tryWithErrorDisplay(message, waitCursor=True):
        try:
            yield
        except Exception as exc:
            if not (isinstance(exc, (SemiSupSegError, ImportError)) or bridge.is_out_of_memory(exc)):
                raise
            logging.info("SemiSupSeg: %s", exc)
            shown = bridge.user_message(exc, device)
    if shown is not None:
        slicer.util.errorDisplay(f"{message}\n\n{shown}", windowTitle="SemiSupSeg")


#
# SemiSupSegWidget
#


class SemiSupSegWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._observedPointNode = None
        self._listedModelsFolder = None
        self._job = None
        self.segmentEditorWidget = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/SemiSupSeg.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = SemiSupSegLogic()
        self.logic.logCallback = self._log

        for pathEdit in (
            self.ui.locatorPathLineEdit,
            self.ui.modelsFolderPathLineEdit,
            self.ui.poolFolderPathLineEdit,
        ):
            pathEdit.filters = ctk.ctkPathLineEdit.Dirs
        self.ui.pointPlaceWidget.buttonsVisible = True
        self.ui.pointPlaceWidget.placeMultipleMarkups = (
            slicer.qSlicerMarkupsPlaceWidget.ForcePlaceSingleMarkup
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

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.findButton.connect("clicked(bool)", self.onFindButton)
        self.ui.segmentButton.connect("clicked(bool)", self.onSegmentButton)
        self.ui.refreshModelsButton.connect("clicked(bool)", lambda: self._refreshModels(force=True))
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
            p.centerPoint = self.logic.createPointNode()

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateGui)
        self._parameterNode = inputParameterNode
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
        if p is None:
            return
        self._refreshModels()
        self._observePointNode(p.centerPoint)
        self.ui.pointPlaceWidget.setCurrentNode(p.centerPoint)
        busy = self._job is not None
        hasVolume = p.inputVolume is not None
        hasModel = bool(p.modelPath)
        hasPoint = self.logic.hasPoint(p.centerPoint)
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

    # --- models -----------------------------------------------------------------------------------
    def _refreshModels(self, force=False) -> None:
        p = self._parameterNode
        folder = str(p.modelsFolder)
        if not force and folder == self._listedModelsFolder:
            return
        self._listedModelsFolder = folder
        combo = self.ui.modelComboBox
        wasBlocked = combo.blockSignals(True)
        try:
            combo.clear()
            entries = bridge.scan_models(folder)
            for index, entry in enumerate(entries):
                combo.addItem(bridge.model_label(entry), entry["path"])
                combo.setItemData(index, bridge.model_tooltip(entry), qt.Qt.ToolTipRole)
            paths = [e["path"] for e in entries]
            if p.modelPath in paths:
                combo.currentIndex = paths.index(p.modelPath)
            elif entries:
                combo.currentIndex = 0
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
            self.ui.confidenceLabel.text = bridge.confidence_text(found.q_value) + f" ({found.seconds:.1f} s)"
            return
        self.ui.confidenceLabel.text = ""

    def onSegmentButton(self) -> None:
        if self._job is not None:
            self._job.cancel()
            return
        p = self._parameterNode
        with userAction("Segmentation failed."):
            self.logic.ensureDependencies()
            request = self.logic.prepareSegmentation(
                p.inputVolume,
                p.centerPoint,
                p.modelPath,
                p.device,
                probability=p.probabilityOutput,
                uncertainty=p.uncertaintyOutput,
                forceBackground=p.forceBackground,
            )
            if request.execution == "background":
                self._job = self.logic.startBackgroundSegmentation(
                    request, onProgress=self._onProgress, onDone=self._onBackgroundDone
                )
                self.ui.segmentButton.text = "Cancel"
                self._onProgress("starting the background process", None)
                self._updateGui()
                return
            self._setRunning(True)
            try:
                outcome = self.logic.runSegmentation(request, progress=self._onProgress)
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
        self.ui.segmentButton.text = "Segment"
        self.ui.progressBar.setVisible(False)
        self._updateGui()
        if error is not None:
            self.ui.statusLabel.text = "Segmentation stopped." if isinstance(error, _Cancelled) else ""
            if not isinstance(error, _Cancelled):
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
        nodes = self.logic.importResults(
            request, outcome, p.segmentation, p.probabilityVolume, p.uncertaintyVolume
        )
        p.segmentation = nodes["segmentation"]
        if nodes.get("probability") is not None:
            p.probabilityVolume = nodes["probability"]
        if nodes.get("uncertainty") is not None:
            p.uncertaintyVolume = nodes["uncertainty"]
        self.ui.statusLabel.text = outcome["summary"]
        slicer.util.setSliceViewerLayers(background=request.volumeNode)

    def onAddToPool(self, unlabeled) -> None:
        p = self._parameterNode
        with userAction("Saving into the pool failed."):
            result = self.logic.addToPool(
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


class _Cancelled(Exception):
    pass


class SegmentationRequest:
    """One segmentation as prepared from the scene: the image (LPS, the volume's local frame), the
    centre point, the model, the device and where to run it."""

    def __init__(self, **fields) -> None:
        self.volumeNode = None
        self.image = None
        self.centerLps = None
        self.modelPath = ""
        self.device = "cpu"
        self.probability = False
        self.uncertainty = False
        self.execution = "in-process"
        self.__dict__.update(fields)


class BackgroundSegmentation:
    """A segmentation running in ``PythonSlicer -m SemiSupSegLib.segment_worker``.

    A reader thread puts the worker's stdout lines into a queue; a ``QTimer`` in the GUI thread reads
    them, reports progress, and when the process ends reads the result files and calls ``onDone``.
    """

    POLL_MS = 100

    def __init__(self, logic, request, args, env, tempDir, onProgress, onDone) -> None:
        self.logic, self.request, self.tempDir = logic, request, tempDir
        self.onProgress, self.onDone = onProgress, onDone
        self.lines = queue.Queue()
        self.finished = None
        self.error = None
        self.cancelled = False
        self.process = subprocess.Popen(
            args,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            encoding="utf-8",
            errors="replace",
            **bridge.process_group_kwargs(),
        )
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()
        self.timer = qt.QTimer()
        self.timer.setInterval(self.POLL_MS)
        self.timer.connect("timeout()", self._poll)
        self.timer.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.put(line)
        self.process.wait()
        self.lines.put(None)

    def _poll(self) -> None:
        while True:
            try:
                line = self.lines.get_nowait()
            except queue.Empty:
                return
            if line is None:
                self._finish()
                return
            self._handle(line)

    def _handle(self, line) -> None:
        try:
            event = bridge.parse_worker_line(line)
        except SemiSupSegError as exc:
            self.error = exc
            return
        if event is None:
            if line.strip():
                logging.info("SemiSupSeg worker: %s", line.rstrip())
            return
        kind = event["event"]
        if kind == "progress" and self.onProgress:
            self.onProgress(event.get("stage", ""), event.get("fraction"))
        elif kind == "finished":
            self.finished = event
        elif kind == "error":
            self.error = InputError(event.get("message", "the segmentation process failed"))

    def _finish(self) -> None:
        self.timer.stop()
        outcome, error = None, self.error
        try:
            if self.cancelled:
                error = _Cancelled()
            elif error is None and self.finished is None:
                error = RuntimeError(
                    f"the segmentation process ended without a result (exit status {self.process.returncode})"
                )
            elif error is None:
                outcome = self.logic.readWorkerOutputs(self.request, self.finished)
        except Exception as exc:  # noqa: BLE001 - handed to onDone, which shows it
            error = exc
        finally:
            shutil.rmtree(self.tempDir, ignore_errors=True)
        self.logic._job = None
        if self.onDone:
            self.onDone(self.request, outcome, error)

    def cancel(self) -> None:
        self.cancelled = True
        bridge.kill_process_tree(self.process)

    def isRunning(self) -> bool:
        return self.timer.isActive()


class SemiSupSegLogic(ScriptedLoadableModuleLogic):
    """Converts between MRML nodes and the engine's SimpleITK images and calls the engine.

    No widget code: usable from the Python console, from a script or from the self-test.
    ``logCallback(text)`` receives status messages.
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.logCallback = None
        self._models = {}
        self._job = None

    def getParameterNode(self):
        return SemiSupSegParameterNode(super().getParameterNode())

    def log(self, text) -> None:
        logging.info(text)
        if self.logCallback:
            self.logCallback(text)

    # --- dependencies -------------------------------------------------------------------------------
    def _requirements(self):
        path = pathlib.Path(__file__).resolve().parent / "Resources" / "requirements.txt"
        lines = (
            path.read_text(encoding="utf-8").splitlines() if path.is_file() else ["monai>=1.3", "scipy>=1.10"]
        )
        return bridge.requirement_names(lines)

    def missingDependencies(self):
        missing = [] if importlib.util.find_spec("torch") else ["torch"]
        missing += [req for req, module in self._requirements() if importlib.util.find_spec(module) is None]
        return missing

    def ensureDependencies(self, askConfirmation=True) -> None:
        """Install torch (through the PyTorch extension) and MONAI/SciPy (pip) after one confirmation.
        numpy and SimpleITK are pinned to Slicer's own versions so they are never replaced."""
        missing = self.missingDependencies()
        if not missing:
            return
        if slicer.app.testingEnabled():
            raise InputError(f"missing Python packages {', '.join(missing)}; install them before testing")
        if askConfirmation and not slicer.util.confirmOkCancelDisplay(
            "SemiSupSeg needs these Python packages, which are not installed yet: "
            f"{', '.join(missing)}.\n\nInstall them now? This downloads several hundred MB and may take "
            "minutes. Slicer's own numpy and SimpleITK are kept.",
            windowTitle="SemiSupSeg: install dependencies",
        ):
            raise InputError(f"SemiSupSeg cannot run without {', '.join(missing)} (installation declined)")
        if "torch" in missing:
            try:
                import PyTorchUtils
            except ModuleNotFoundError:
                raise InputError(
                    "SemiSupSeg needs the PyTorch extension to install torch: install 'PyTorch' from the "
                    "Extensions Manager, restart Slicer and try again"
                ) from None
            self.log("Installing PyTorch (this may take several minutes)...")
            if (
                PyTorchUtils.PyTorchUtilsLogic().installTorch(
                    askConfirmation=False, torchVersionRequirement=TORCH_REQUIREMENT
                )
                is None
            ):
                raise InputError("PyTorch was not installed; SemiSupSeg cannot segment without it")
        others = [req for req in missing if req != "torch"]
        if others:
            self.log(f"Installing {', '.join(others)}...")
            with tempfile.TemporaryDirectory() as folder:
                constraints = pathlib.Path(folder) / "constraints.txt"
                constraints.write_text(
                    bridge.dependency_constraints(self._slicerPackages()), encoding="utf-8"
                )
                try:
                    import slicer.packaging as packaging
                except ImportError:
                    packaging = None
                if packaging is not None and hasattr(packaging, "pip_ensure"):
                    packaging.pip_ensure(
                        others, constraints=str(constraints), prompt_install=False, requester="SemiSupSeg"
                    )
                else:
                    slicer.util.pip_install([*others, "-c", str(constraints)])
        importlib.invalidate_caches()  # let find_spec see the packages pip just installed
        still = self.missingDependencies()
        if still:
            raise InputError(
                f"installing {', '.join(still)} failed; see the Python console for pip's messages"
            )

    @staticmethod
    def _slicerPackages():
        import importlib.metadata

        versions = {}
        for name in ("numpy", "SimpleITK"):
            try:
                versions[name] = importlib.metadata.version(name)
            except importlib.metadata.PackageNotFoundError:
                versions[name] = None  # built into Slicer, not a pip package: nothing to pin
        return versions

    # --- scene <-> engine -----------------------------------------------------------------------------
    def createPointNode(self, name="Instrument centre"):
        node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", name)
        node.SetMaximumNumberOfControlPoints(1)
        node.CreateDefaultDisplayNodes()
        node.GetDisplayNode().SetSelectedColor(1.0, 0.3, 0.1)
        return node

    @staticmethod
    def _checkVolume(volumeNode):
        if volumeNode is None:
            raise InputError("choose an input volume first")
        if volumeNode.GetImageData() is None:
            raise InputError(f"volume '{volumeNode.GetName()}' has no voxels")

    @staticmethod
    def volumeToWorld(volumeNode):
        """The 4x4 local RAS -> world RAS matrix of the volume's parent transform, or None."""
        transformNode = volumeNode.GetParentTransformNode()
        if transformNode is None:
            return None
        if not transformNode.IsTransformToWorldLinear():
            raise InputError(
                f"volume '{volumeNode.GetName()}' is under a non-linear transform; harden the transform "
                "(Data module, right-click the volume, 'Harden transform') before segmenting"
            )
        matrix = vtk.vtkMatrix4x4()
        transformNode.GetMatrixTransformToWorld(matrix)
        return slicer.util.arrayFromVTKMatrix(matrix)

    def volumeToImage(self, volumeNode):
        """The volume as a SimpleITK image in its local frame (LPS), voxels copied."""
        self._checkVolume(volumeNode)
        matrix = vtk.vtkMatrix4x4()
        volumeNode.GetIJKToRASMatrix(matrix)
        return bridge.image_from_array(
            slicer.util.arrayFromVolume(volumeNode),
            slicer.util.arrayFromVTKMatrix(matrix),
            name=f"volume '{volumeNode.GetName()}'",
        )

    @staticmethod
    def _definedPointIndex(pointNode):
        if pointNode is None:
            return -1
        for i in range(pointNode.GetNumberOfControlPoints()):
            if pointNode.GetNthControlPointPositionStatus(i) == slicer.vtkMRMLMarkupsNode.PositionDefined:
                return i
        return -1

    def hasPoint(self, pointNode) -> bool:
        return self._definedPointIndex(pointNode) >= 0

    def centerLps(self, pointNode, volumeNode):
        """The point list's first defined point in the volume's local LPS frame, or None."""
        index = self._definedPointIndex(pointNode)
        if index < 0:
            return None
        world = [0.0, 0.0, 0.0]
        pointNode.GetNthControlPointPositionWorld(index, world)
        return bridge.world_ras_to_volume_lps(world, self.volumeToWorld(volumeNode))

    def setCenterLps(self, pointNode, volumeNode, pointLps, label="instrument") -> None:
        """Put an engine point (the volume's local LPS) into the point list as its only point."""
        x, y, z = bridge.volume_lps_to_world_ras(pointLps, self.volumeToWorld(volumeNode))
        index = self._definedPointIndex(pointNode)
        if index < 0:
            pointNode.RemoveAllControlPoints()
            pointNode.AddControlPointWorld(x, y, z, label)
        else:
            pointNode.SetNthControlPointPositionWorld(index, x, y, z)

    def imageToVolume(self, image, volumeNode, outputNode=None, name="output"):
        """A scalar volume node with the image's voxels and grid, under the input volume's transform."""
        array, ijkToRas = bridge.array_from_image(image)
        if outputNode is None:
            outputNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
        outputNode.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(ijkToRas))
        slicer.util.updateVolumeFromArray(outputNode, array.astype(np.float32))
        outputNode.SetAndObserveTransformNodeID(volumeNode.GetTransformNodeID())
        outputNode.CreateDefaultDisplayNodes()
        return outputNode

    def labelToSegmentation(self, label, volumeNode, segmentationNode=None):
        """Create or update the segmentation's "instrument" segment from a label on the volume's grid."""
        import SimpleITK as sitk

        if segmentationNode is None:
            segmentationNode = slicer.mrmlScene.AddNewNodeByClass(
                "vtkMRMLSegmentationNode", f"{volumeNode.GetName()} instrument"
            )
            segmentationNode.CreateDefaultDisplayNodes()
        segmentation = segmentationNode.GetSegmentation()
        segmentId = segmentation.GetSegmentIdBySegmentName(SEGMENT_NAME)
        if not segmentId:
            segmentId = segmentation.AddEmptySegment(SEGMENT_NAME, SEGMENT_NAME, list(SEGMENT_COLOR))
        # The label is on the volume's grid. With the segmentation under the same parent transform as the
        # volume (and so as the temporary labelmap Slicer makes from it), the import does not resample.
        segmentationNode.SetAndObserveTransformNodeID(volumeNode.GetTransformNodeID())
        segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
        array = sitk.GetArrayFromImage(label).astype(np.uint8)
        expected = tuple(slicer.util.arrayFromVolume(volumeNode).shape)
        if array.shape != expected:
            raise InputError(
                f"the segmentation's size {array.shape[::-1]} differs from the volume's {expected[::-1]}"
            )
        slicer.util.updateSegmentBinaryLabelmapFromArray(array, segmentationNode, segmentId, volumeNode)
        return segmentationNode

    def segmentToLabel(self, segmentationNode, volumeNode, image):
        """The "instrument" segment (or the only segment) as a 0/1 SimpleITK label on the image's grid."""
        import SimpleITK as sitk

        if segmentationNode is None:
            raise InputError("there is no segmentation yet; click Segment or draw the instrument first")
        segmentation = segmentationNode.GetSegmentation()
        segmentId = segmentation.GetSegmentIdBySegmentName(SEGMENT_NAME)
        if not segmentId and segmentation.GetNumberOfSegments() == 1:
            segmentId = segmentation.GetNthSegmentID(0)
        if not segmentId:
            raise InputError(
                f"segmentation '{segmentationNode.GetName()}' has no '{SEGMENT_NAME}' segment; rename the "
                "instrument's segment to 'instrument'"
            )
        array = slicer.util.arrayFromSegmentBinaryLabelmap(segmentationNode, segmentId, volumeNode)
        expected = sitk.GetArrayViewFromImage(image).shape
        if tuple(array.shape) != tuple(expected):
            raise InputError(
                f"the segment's grid {array.shape[::-1]} differs from the volume's {expected[::-1]}"
            )
        label = sitk.GetImageFromArray((np.asarray(array) > 0).astype(np.uint8))
        label.CopyInformation(image)
        return label

    # --- locate -------------------------------------------------------------------------------------
    def resolveDevice(self, choice):
        import torch

        return bridge.choose_device(choice, torch.cuda.is_available())

    def locate(self, volumeNode, pointNode, locatorFolder, deviceChoice="Auto"):
        """Run the DQN locator and put its point into ``pointNode``; return the engine's LocateResult."""
        from SemiSupSegLib.locator import load_locator, locate

        if pointNode is None:
            raise InputError("choose or create a point list for the centre point first")
        image = self.volumeToImage(volumeNode)
        folder = bridge.resolve_locator_folder(locatorFolder)
        device = self.resolveDevice(deviceChoice)
        self.log(f"Finding the instrument with locator '{folder.name}' on {device}...")
        found = locate(load_locator(folder, device), image)
        self.setCenterLps(pointNode, volumeNode, found.point_lps)
        self.log(f"Instrument found in {found.seconds:.1f} s")
        return found

    # --- segment ------------------------------------------------------------------------------------
    def prepareSegmentation(
        self,
        volumeNode,
        pointNode,
        modelPath,
        deviceChoice="Auto",
        *,
        probability=False,
        uncertainty=False,
        forceBackground=False,
    ):
        """Everything a segmentation needs from the scene, checked (point inside, 3D volume, model)."""
        from SemiSupSegLib.imageio import check_point_inside
        from SemiSupSegLib.model_store import resolve_model

        image = self.volumeToImage(volumeNode)
        if not modelPath:
            raise InputError("no model is chosen; pick one in the Model section (or choose its folder)")
        modelFolder = resolve_model(modelPath)
        center = self.centerLps(pointNode, volumeNode)
        if center is not None:
            check_point_inside(image, center, what="the centre point")
        device = self.resolveDevice(deviceChoice)
        voxels = int(np.prod(image.GetSize()))
        execution = bridge.choose_execution(
            voxels, center is not None, MC_SAMPLES if uncertainty else 0, forceBackground
        )
        return SegmentationRequest(
            volumeNode=volumeNode,
            image=image,
            centerLps=center,
            modelPath=str(modelFolder),
            device=device,
            probability=probability,
            uncertainty=uncertainty,
            execution=execution,
        )

    def _loadModel(self, modelPath, device):
        from SemiSupSegLib.model_store import load_model

        weights = pathlib.Path(modelPath) / "weights.pt"
        key = (str(modelPath), device, weights.stat().st_mtime if weights.exists() else 0)
        if key not in self._models:
            self._models.clear()  # keep one model in memory
            self._models[key] = load_model(modelPath, device)
        return self._models[key]

    def runSegmentation(self, request, progress=None):
        """Segment in this process; returns the outcome dict for :meth:`importResults`."""
        from SemiSupSegLib.inference import segment

        self.log(f"Segmenting with '{pathlib.Path(request.modelPath).name}' on {request.device}...")
        model = self._loadModel(request.modelPath, request.device)
        result = segment(
            model,
            request.image,
            request.centerLps,
            mc_samples=MC_SAMPLES if request.uncertainty else 0,
            progress=progress,
        )
        return {
            "label": result.label,
            "probability": result.probability if request.probability else None,
            "uncertainty": result.uncertainty,
            "summary": bridge.result_summary(result.seconds, result.mode, request.device, result.precision),
        }

    def startBackgroundSegmentation(self, request, onProgress=None, onDone=None):
        """Start the worker process; ``onDone(request, outcome, error)`` is called in the GUI thread."""
        import SimpleITK as sitk

        if self._job is not None and self._job.isRunning():
            raise InputError("a segmentation is already running; wait for it or cancel it")
        python = shutil.which("PythonSlicer") or shutil.which("PythonSlicer.exe")
        if not python:
            raise InputError(
                "PythonSlicer was not found; untick 'Always in a background process' and place a point"
            )
        tempDir = tempfile.mkdtemp(prefix="SemiSupSeg-")
        inputPath = os.path.join(tempDir, "input.nrrd")
        sitk.WriteImage(request.image, inputPath, False)
        request.outputs = {"label": os.path.join(tempDir, "label.nrrd")}
        if request.probability:
            request.outputs["probability"] = os.path.join(tempDir, "probability.nrrd")
        if request.uncertainty:
            request.outputs["uncertainty"] = os.path.join(tempDir, "uncertainty.nrrd")
        args = bridge.segment_worker_command(
            python,
            model=request.modelPath,
            input_path=inputPath,
            output_path=request.outputs["label"],
            center_lps=request.centerLps,
            probability_path=request.outputs.get("probability"),
            uncertainty_path=request.outputs.get("uncertainty"),
            mc_samples=MC_SAMPLES,
            device=request.device,
        )
        env = os.environ.copy()
        moduleDir = str(pathlib.Path(__file__).resolve().parent)
        env["PYTHONPATH"] = os.pathsep.join(x for x in (moduleDir, env.get("PYTHONPATH", "")) if x)
        if request.device == "cpu":
            env["CUDA_VISIBLE_DEVICES"] = "-1"
        self.log(f"Segmenting in a background process with '{pathlib.Path(request.modelPath).name}'...")
        logging.info("SemiSupSeg worker command: %s", args)
        self._job = BackgroundSegmentation(self, request, args, env, tempDir, onProgress, onDone)
        return self._job

    def readWorkerOutputs(self, request, finished):
        from SemiSupSegLib.imageio import read_image

        outcome = {
            "label": read_image(request.outputs["label"], what="segmentation"),
            "probability": None,
            "uncertainty": None,
            "summary": bridge.result_summary(
                finished.get("seconds", 0.0),
                finished.get("mode", ""),
                request.device,
                finished.get("precision", ""),
            ),
        }
        for key in ("probability", "uncertainty"):
            if key in request.outputs and os.path.exists(request.outputs[key]):
                outcome[key] = read_image(request.outputs[key], what=key)
        return outcome

    def waitForBackgroundSegmentation(self, job, timeoutSeconds=600):
        """Process events until ``job`` ends (for scripts and tests); False on timeout (then cancelled)."""
        deadline = time.monotonic() + timeoutSeconds
        while job.isRunning():
            if time.monotonic() > deadline:
                job.cancel()
                return False
            slicer.app.processEvents()
            time.sleep(0.02)
        return True

    def importResults(
        self, request, outcome, segmentationNode=None, probabilityNode=None, uncertaintyNode=None
    ):
        """Put an outcome into the scene; returns the nodes (segmentation, probability, uncertainty)."""
        volumeNode = request.volumeNode
        nodes = {"segmentation": self.labelToSegmentation(outcome["label"], volumeNode, segmentationNode)}
        name = volumeNode.GetName()
        if outcome.get("probability") is not None:
            nodes["probability"] = self.imageToVolume(
                outcome["probability"], volumeNode, probabilityNode, f"{name} instrument probability"
            )
        if outcome.get("uncertainty") is not None:
            nodes["uncertainty"] = self.imageToVolume(
                outcome["uncertainty"], volumeNode, uncertaintyNode, f"{name} instrument uncertainty"
            )
        self.log(outcome["summary"])
        return nodes

    def segment(
        self,
        volumeNode,
        pointNode,
        modelPath,
        deviceChoice="Auto",
        *,
        probability=False,
        uncertainty=False,
        segmentationNode=None,
        background=False,
        timeoutSeconds=600,
    ):
        """Segment and import in one call (blocking; for scripts and the self-test). Returns the nodes."""
        request = self.prepareSegmentation(
            volumeNode,
            pointNode,
            modelPath,
            deviceChoice,
            probability=probability,
            uncertainty=uncertainty,
            forceBackground=background,
        )
        if request.execution == "in-process":
            outcome = self.runSegmentation(request)
        else:
            done = {}
            job = self.startBackgroundSegmentation(
                request, onDone=lambda req, out, err: done.update(outcome=out, error=err)
            )
            if not self.waitForBackgroundSegmentation(job, timeoutSeconds):
                raise InputError(
                    f"the background segmentation took more than {timeoutSeconds} s and was stopped"
                )
            if done.get("error") is not None:
                raise done["error"]
            outcome = done["outcome"]
        nodes = self.importResults(request, outcome, segmentationNode)
        nodes["execution"] = request.execution
        nodes["summary"] = outcome["summary"]
        return nodes

    # --- pool -----------------------------------------------------------------------------------------
    def addToPool(self, volumeNode, segmentationNode, pointNode, poolFolder, name=None, unlabeled=False):
        """Save the volume (+ the corrected segment, + the centre point) into the pool's dataset.json."""
        image = self.volumeToImage(volumeNode)
        center = self.centerLps(pointNode, volumeNode)
        label = None if unlabeled else self.segmentToLabel(segmentationNode, volumeNode, image)
        result = bridge.add_to_pool(
            poolFolder, name or volumeNode.GetName(), image, label, center, unlabeled=unlabeled
        )
        self.log(result.message)
        return result


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
        self.setUp()
        try:
            self.test_panel_widgets()
        finally:
            self.tearDown()
        self.setUp()
        try:
            self.test_locate_segment_add_to_pool()
        finally:
            self.tearDown()

    # helpers
    def _phantomVolume(self, seed, name, transformed):
        from SemiSupSegLib.phantom import generate_phantom

        case = generate_phantom(size=64, seed=seed)
        array, ijkToRas = bridge.array_from_image(case.image)
        volumeNode = slicer.util.addVolumeFromArray(array, ijkToRas, name=name)
        if transformed:  # a rigid parent transform: rotation about z plus a shift
            angle = np.deg2rad(20.0)
            matrix = np.eye(4)
            matrix[:2, :2] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
            matrix[:3, 3] = [5.0, -3.0, 2.0]
            transformNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "probe pose")
            transformNode.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(matrix))
            volumeNode.SetAndObserveTransformNodeID(transformNode.GetID())
        return case, volumeNode

    def _tinyModelAndLocator(self):
        from SemiSupSegLib.locator.train import LocatorTrainConfig, LocatorTrainer
        from SemiSupSegLib.phantom import write_phantom_dataset
        from SemiSupSegLib.training import TrainConfig, Trainer

        data = write_phantom_dataset(self.tmp / "train-data", cases=2, size=32, seed=1)
        model = Trainer(
            TrainConfig(
                data=str(data),
                out=str(self.tmp / "models" / "tiny-model"),
                steps=2,
                batch=1,
                width=0.125,
                patch_size=(16, 16, 16),
                val_cases=0,
                translation=4,
                device="cpu",
                name="tiny-model",
            )
        ).run()
        locator = LocatorTrainer(
            LocatorTrainConfig(
                data=[str(data)],
                out=str(self.tmp / "locators" / "tiny-locator"),
                steps=2,
                agents=2,
                batch=4,
                warmup=4,
                grid=32,
                crop=9,
                scales=(3, 1),
                width=4,
                memory=64,
                val_cases=0,
                starts=2,
                device="cpu",
            )
        ).run()
        return pathlib.Path(model), pathlib.Path(locator)

    def _assertSameGrid(self, node, volumeNode):
        a, b = vtk.vtkMatrix4x4(), vtk.vtkMatrix4x4()
        node.GetIJKToRASMatrix(a)
        volumeNode.GetIJKToRASMatrix(b)
        np.testing.assert_allclose(
            slicer.util.arrayFromVTKMatrix(a), slicer.util.arrayFromVTKMatrix(b), atol=1e-6
        )
        self.assertEqual(node.GetImageData().GetDimensions(), volumeNode.GetImageData().GetDimensions())
        self.assertEqual(node.GetTransformNodeID(), volumeNode.GetTransformNodeID())

    # tests
    def test_panel_widgets(self):
        self.delayDisplay("Panel: widgets and parameter node")
        slicer.util.selectModule("SemiSupSeg")
        widget = slicer.util.getModuleWidget("SemiSupSeg")
        parameterNode = widget.logic.getParameterNode()
        for name in (
            "inputSelector",
            "pointSelector",
            "pointPlaceWidget",
            "findButton",
            "confidenceLabel",
            "modelComboBox",
            "modelsFolderPathLineEdit",
            "openModelsFolderButton",
            "deviceComboBox",
            "segmentButton",
            "probabilityCheckBox",
            "uncertaintyCheckBox",
            "progressBar",
            "statusLabel",
            "poolFolderPathLineEdit",
            "addLabelledButton",
            "addUnlabelledButton",
        ):
            self.assertTrue(hasattr(widget.ui, name), name)
        parameterNode.device = "CPU"
        self.assertEqual(widget.ui.deviceComboBox.currentText, "CPU")
        parameterNode.modelsFolder = self.tmp
        self.assertEqual(pathlib.Path(widget.ui.modelsFolderPathLineEdit.currentPath), self.tmp)
        self.assertIsNotNone(parameterNode.centerPoint)
        self.assertIsNotNone(widget.segmentEditorWidget)
        self.delayDisplay("Panel test passed")

    def test_locate_segment_add_to_pool(self):
        import SimpleITK as sitk

        from SemiSupSegLib.dataset import load_dataset

        logic = SemiSupSegLogic()
        missing = logic.missingDependencies()
        self.assertEqual(missing, [], f"install {missing} in Slicer's Python first (the module offers it)")

        self.delayDisplay("Training a tiny model and a tiny locator")
        modelFolder, locatorFolder = self._tinyModelAndLocator()
        case, volumeNode = self._phantomVolume(seed=3, name="phantom_a", transformed=True)
        pointNode = logic.createPointNode()

        # The image the engine sees is the phantom itself (local frame, LPS), whatever the transform.
        image = logic.volumeToImage(volumeNode)
        np.testing.assert_allclose(image.GetOrigin(), case.image.GetOrigin(), atol=1e-5)
        np.testing.assert_allclose(image.GetDirection(), case.image.GetDirection(), atol=1e-6)
        np.testing.assert_array_equal(
            sitk.GetArrayViewFromImage(image), sitk.GetArrayViewFromImage(case.image)
        )

        # Point round trip through the parent transform.
        logic.setCenterLps(pointNode, volumeNode, case.center)
        np.testing.assert_allclose(logic.centerLps(pointNode, volumeNode), case.center, atol=1e-4)

        self.delayDisplay("Locate")
        found = logic.locate(volumeNode, pointNode, locatorFolder.parent, "CPU")
        self.assertEqual(pointNode.GetNumberOfControlPoints(), 1)
        center = logic.centerLps(pointNode, volumeNode)
        np.testing.assert_allclose(center, found.point_lps, atol=1e-4)
        from SemiSupSegLib.imageio import point_inside

        self.assertTrue(point_inside(image, center))

        self.delayDisplay("Segment in Slicer")
        nodes = logic.segment(volumeNode, pointNode, str(modelFolder), "CPU", probability=True)
        self.assertEqual(nodes["execution"], "in-process")
        segmentationNode = nodes["segmentation"]
        self.assertEqual(segmentationNode.GetTransformNodeID(), volumeNode.GetTransformNodeID())
        segmentId = segmentationNode.GetSegmentation().GetSegmentIdBySegmentName(SEGMENT_NAME)
        self.assertTrue(segmentId)
        labelArray = slicer.util.arrayFromSegmentBinaryLabelmap(segmentationNode, segmentId, volumeNode)
        self.assertEqual(labelArray.shape, slicer.util.arrayFromVolume(volumeNode).shape)
        self._assertSameGrid(nodes["probability"], volumeNode)

        # The same as the engine gives on the same image and point (geometry and voxels).
        from SemiSupSegLib.inference import segment
        from SemiSupSegLib.model_store import load_model

        reference = sitk.GetArrayFromImage(segment(load_model(modelFolder), image, center).label)
        np.testing.assert_array_equal(labelArray > 0, reference > 0)

        if shutil.which("PythonSlicer"):
            self.delayDisplay("Segment in a background process")
            background = logic.segment(
                volumeNode, None, str(modelFolder), "CPU", background=True, timeoutSeconds=600
            )
            self.assertEqual(background["execution"], "background")
            seg2 = background["segmentation"]
            id2 = seg2.GetSegmentation().GetSegmentIdBySegmentName(SEGMENT_NAME)
            array2 = slicer.util.arrayFromSegmentBinaryLabelmap(seg2, id2, volumeNode)
            reference2 = sitk.GetArrayFromImage(segment(load_model(modelFolder), image, None).label)
            np.testing.assert_array_equal(array2 > 0, reference2 > 0)

        self.delayDisplay("Errors are clear")
        outside = logic.createPointNode("outside")
        logic.setCenterLps(outside, volumeNode, (500.0, 500.0, 500.0))
        with self.assertRaises(SemiSupSegError) as raised:
            logic.prepareSegmentation(volumeNode, outside, str(modelFolder), "CPU")
        self.assertIn("outside", str(raised.exception))

        self.delayDisplay("Add to pool")
        if not labelArray.any():  # an untrained tiny model may find nothing: draw the instrument instead
            logic.labelToSegmentation(case.label, volumeNode, segmentationNode)
        pool = self.tmp / "pool"
        first = logic.addToPool(volumeNode, segmentationNode, pointNode, pool)
        again = logic.addToPool(volumeNode, segmentationNode, pointNode, pool)
        self.assertFalse(first.updated)
        self.assertTrue(again.updated)
        _, otherVolume = self._phantomVolume(seed=4, name="phantom b", transformed=False)
        otherPoint = logic.createPointNode("b")
        logic.setCenterLps(otherPoint, otherVolume, (0.0, 0.0, 0.0))
        logic.addToPool(otherVolume, None, otherPoint, pool, unlabeled=True)

        data = load_dataset(pool / "dataset.json")  # validates images, labels, geometry and centres
        self.assertEqual([c.name for c in data.training], ["phantom_a"])
        self.assertEqual([c.name for c in data.unlabeled], ["phantom_b"])
        np.testing.assert_allclose(data.training[0].center, center, atol=1e-4)
        np.testing.assert_allclose(data.unlabeled[0].center, (0.0, 0.0, 0.0), atol=1e-4)
        saved = sitk.ReadImage(str(data.training[0].label))
        np.testing.assert_allclose(saved.GetOrigin(), image.GetOrigin(), atol=1e-4)
        np.testing.assert_allclose(saved.GetSpacing(), image.GetSpacing(), atol=1e-6)
        np.testing.assert_allclose(saved.GetDirection(), image.GetDirection(), atol=1e-6)
        expected = slicer.util.arrayFromSegmentBinaryLabelmap(segmentationNode, segmentId, volumeNode) > 0
        np.testing.assert_array_equal(sitk.GetArrayFromImage(saved) > 0, expected)
        self.delayDisplay("Test passed")


if __name__ == "__main__":  # pragma: no cover - run inside Slicer only
    sys.exit("Load this module in 3D Slicer (see README.md).")
