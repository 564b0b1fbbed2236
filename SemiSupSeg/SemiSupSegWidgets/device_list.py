"""Both panels' device list: Auto, CPU and one entry per GPU torch sees, by name and memory (issue 18).

The list is only known when the panel opens (torch is not imported when Slicer starts), while the
parameter node's ``Choice`` annotations are fixed when the module is imported. So the combo box is not
bound by ``connectGui``; :class:`DeviceList` keeps it and the parameter node's ``device`` in step.
"""

from SemiSupSegLib import slicer_bridge as bridge


class DeviceList:
    """Fills ``combo`` with :func:`~SemiSupSegLib.slicer_bridge.panel_device_choices` and mirrors it to and
    from ``parameterNode.device`` (a saved value no longer listed, such as a GPU that went away, is kept
    and shown, so that running names the problem instead of silently changing device)."""

    def __init__(self, combo) -> None:
        self.combo = combo
        self.parameterNode = None
        combo.clear()
        combo.addItems(bridge.panel_device_choices())
        combo.connect("currentTextChanged(QString)", self._onChanged)

    def setParameterNode(self, parameterNode) -> None:
        self.parameterNode = parameterNode
        self.update()

    def update(self) -> None:
        """Show the parameter node's device (call on every parameter node change)."""
        if self.parameterNode is None:
            return
        value = self.parameterNode.device
        if self.combo.findText(value) < 0:
            self.combo.addItem(value)
        if self.combo.currentText != value:
            wasBlocked = self.combo.blockSignals(True)
            self.combo.currentText = value
            self.combo.blockSignals(wasBlocked)

    def _onChanged(self, text: str) -> None:
        if self.parameterNode is not None and self.parameterNode.device != text:
            self.parameterNode.device = text
