"""SemiSupSegTraining: background semi-supervised fine-tuning panel (3D Slicer scripted module).

PLACEHOLDER: the panel (data, method, Train/Stop/Resume with progress and plots, compare and
adopt) is issue 6 and is not written yet. Until it lands, use ``semisupseg train``.
"""

from slicer.ScriptedLoadableModule import ScriptedLoadableModule, ScriptedLoadableModuleWidget


class SemiSupSegTraining(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "SemiSupSeg Training"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = ["SemiSupSeg"]
        self.parent.contributors = ["SemiSupSeg developers"]
        self.parent.helpText = (
            "Semi-supervised fine-tuning from the labelled pool and new unlabelled scans. "
            "The panel is not available yet; use 'semisupseg train'."
        )
        self.parent.acknowledgementText = "Methods from the seed papers listed in README.md."


class SemiSupSegTrainingWidget(ScriptedLoadableModuleWidget):
    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        import qt

        label = qt.QLabel("This panel is not available yet. Use 'semisupseg train' (see README).")
        label.wordWrap = True
        self.layout.addWidget(label)
        self.layout.addStretch(1)
