"""SemiSupSeg: the clinician's segmentation panel (3D Slicer scripted module).

PLACEHOLDER: the panel itself (load, place or find the instrument, segment, correct, add to
the labelled pool) is issue 5 and is not written yet. This file exists because the extension's
CMake build needs the module script; it registers the module and ships the engine package
``SemiSupSegLib``, which both panels import. Until the panel lands, use the ``semisupseg``
command line (see README.md).
"""

from slicer.ScriptedLoadableModule import ScriptedLoadableModule, ScriptedLoadableModuleWidget


class SemiSupSeg(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "SemiSupSeg"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["SemiSupSeg developers"]
        self.parent.helpText = (
            "Semi-supervised segmentation of catheters and guide-wires in 3D ultrasound. "
            "The interactive panel is not available yet; use the semisupseg command line."
        )
        self.parent.acknowledgementText = "Methods from the seed papers listed in README.md."


class SemiSupSegWidget(ScriptedLoadableModuleWidget):
    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        import qt

        label = qt.QLabel("This panel is not available yet. Use the semisupseg command line (see README).")
        label.wordWrap = True
        self.layout.addWidget(label)
        self.layout.addStretch(1)
