"""The segmentation panel's *Next case, refine, uncertainty* section: load the case the model doubts most,
refine the result at a clicked point (undoable), and show the uncertainty volume as an overlay. All scene
work is in the Qt-free ``SemiSupSegMRML`` (``suggested``, ``refine``, ``overlay``); the widgets are made
here (the .ui file is left as it is)."""

import pathlib

import ctk
import qt
import slicer
from SemiSupSegMRML import markups, overlay
from SemiSupSegMRML.refine import refine_here
from SemiSupSegMRML.suggested import load_next_suggested

from .actions import userAction


class WorkflowSection:
    """Mixin of ``SemiSupSegWidget`` (uses its ``ui``, ``logic``, ``layout``, parameter node, Segment
    Editor widget, ``refineHistory``, ``_onProgress`` and ``_updateGui``)."""

    def setupWorkflowSection(self) -> None:
        """Add the section under the panel's other sections."""
        section = ctk.ctkCollapsibleButton()
        section.text = "Next case, refine, uncertainty"
        form = qt.QFormLayout(section)
        self.loadNextButton = qt.QPushButton("Load next suggested case")
        self.loadNextButton.toolTip = (
            "Load the pool's unlabelled case the model doubts most (the training panel's ranking, else "
            "ranked now), with its stored centre, and segment it"
        )
        self.refinePlaceWidget = slicer.qSlicerMarkupsPlaceWidget()
        self.refinePlaceWidget.setMRMLScene(slicer.mrmlScene)
        self.refinePlaceWidget.placeMultipleMarkups = slicer.qSlicerMarkupsPlaceWidget.ForcePlaceSingleMarkup
        self.refineButton = qt.QPushButton("Refine here")
        self.refineButton.toolTip = "Segment around the refine point and add it to the result (undoable)"
        self.undoRefineButton = qt.QPushButton("Undo refine")
        self.overlayCheckBox = qt.QCheckBox("Show the uncertainty volume over the slices")
        self.overlayCheckBox.checked = True
        self.overlayOpacitySlider = ctk.ctkSliderWidget()
        self.overlayOpacitySlider.minimum, self.overlayOpacitySlider.maximum = 0.0, 1.0
        self.overlayOpacitySlider.singleStep, self.overlayOpacitySlider.value = 0.05, overlay.DEFAULT_OPACITY
        self.uncertaintySummaryLabel = qt.QLabel("")
        self.uncertaintySummaryLabel.wordWrap = True
        for label, widget in (
            ("", self.loadNextButton),
            ("Refine point:", self.refinePlaceWidget),
            ("", self.refineButton),
            ("", self.undoRefineButton),
            ("", self.overlayCheckBox),
            ("Overlay opacity:", self.overlayOpacitySlider),
            ("", self.uncertaintySummaryLabel),
        ):
            form.addRow(label, widget)
        self.layout.addWidget(section)
        self.loadNextButton.connect("clicked(bool)", self.onLoadNextSuggested)
        self.refineButton.connect("clicked(bool)", self.onRefineHere)
        self.undoRefineButton.connect("clicked(bool)", self.onUndoRefine)
        self.overlayCheckBox.connect("toggled(bool)", lambda checked: self.showUncertainty())
        self.overlayOpacitySlider.connect("valueChanged(double)", overlay.set_overlay_opacity)

    def onLoadNextSuggested(self) -> None:
        p = self._parameterNode
        with userAction("Loading the next suggested case failed.", p.device):
            self.logic.ensureDependencies()
            loaded = load_next_suggested(
                self.logic,
                pathlib.Path(p.poolFolder).expanduser() / "dataset.json",
                p.modelPath,
                p.centerPoint,
                p.device,
                ranking=_trainingPanelRanking() or None,
                progress=lambda done, total, case: self._onProgress(f"ranking ({case})", done / total),
            )
            self.ui.progressBar.setVisible(False)
            p.inputVolume, p.segmentation = loaded["volume"], loaded["segmentation"]
            p.caseName = loaded["case"].name
            self.refineHistory.clear()
            self.ui.statusLabel.text = f"Suggested case '{p.caseName}': {loaded['summary']}"
            slicer.util.setSliceViewerLayers(background=loaded["volume"], fit=True)

    def onRefineHere(self) -> None:
        p = self._parameterNode
        with userAction("Refine here failed.", p.device):
            self.logic.ensureDependencies()
            if self.segmentEditorWidget.segmentationNode() == p.segmentation:
                self.segmentEditorWidget.saveStateForUndo()  # Ctrl+Z in the editor works too
            point = markups.center_lps(p.refinePoint, p.inputVolume)
            args = (p.inputVolume, p.segmentation, point, p.modelPath, p.device, self.refineHistory)
            self.ui.statusLabel.text = refine_here(self.logic, *args)["summary"]
        self._updateGui()

    def onUndoRefine(self) -> None:
        with userAction("Undoing the refine failed."):
            self.refineHistory.undo()
            self.ui.statusLabel.text = "The last refine was undone."
        self._updateGui()

    def showUncertainty(self) -> None:
        p = self._parameterNode
        node = p.uncertaintyVolume if p is not None else None
        self.uncertaintySummaryLabel.text = ""
        if node is None or p.inputVolume is None:
            return
        if self.overlayCheckBox.checked:
            overlay.show_uncertainty_overlay(node, p.inputVolume, self.overlayOpacitySlider.value)
        else:
            overlay.hide_uncertainty_overlay(node)
        if p.segmentation is not None:
            self.uncertaintySummaryLabel.text = overlay.overlay_summary(node, p.segmentation, p.inputVolume)


def _trainingPanelRanking() -> list:
    """The training panel's last ranking (``semisupseg suggest`` in its child), or [] if it has none."""
    widget = getattr(slicer.modules, "SemiSupSegTrainingWidget", None)
    logic = getattr(widget, "logic", None)
    return logic.ranking() if logic is not None else []
