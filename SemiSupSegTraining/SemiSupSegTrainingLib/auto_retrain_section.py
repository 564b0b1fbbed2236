"""The training panel's "Retrain automatically" section (issue 19, optional; off by default): a slow
timer asks :class:`SemiSupSegMRML.auto_retrain.AutoRetrain` whether the pool has gained N labelled cases
the default model has not learnt from, and if so starts a fine-tuning of that model with the panel's
training settings. The run is then shown, stopped, resumed and compared like one started by Train.
The widgets are made here (the .ui file is left as it is)."""

import ctk
import qt
from SemiSupSegMRML.auto_retrain import AutoRetrain
from SemiSupSegMRML.models import default_model
from SemiSupSegMRML.training import path_or_empty

CHECK_MS = 5000  # the check reads the pool only when its file changed


class AutoRetrainSection:
    """Mixin of ``SemiSupSegTrainingWidget`` (uses its ``logic``, ``layout``, parameter node and
    ``_trainingSettings``/``_runStarted``)."""

    def setupAutoRetrainSection(self) -> None:
        section = ctk.ctkCollapsibleButton()
        section.text = "Retrain automatically"
        section.collapsed = True
        form = qt.QFormLayout(section)
        self.autoRetrainCheckBox = qt.QCheckBox("Fine-tune the default model when new labels arrive")
        self.autoRetrainCheckBox.toolTip = (
            "Off by default. When the labelled pool has gained the number of cases below that the default "
            "model (or the start model, when no default is set) has not learnt from, a fine-tuning of it "
            "starts with this panel's settings; compare it, then make it the default."
        )
        self.autoRetrainEverySpinBox = qt.QSpinBox()
        self.autoRetrainEverySpinBox.setRange(1, 1000)
        self.autoRetrainStatusLabel = qt.QLabel("")
        self.autoRetrainStatusLabel.wordWrap = True
        form.addRow(self.autoRetrainCheckBox)
        form.addRow("New labelled cases:", self.autoRetrainEverySpinBox)
        form.addRow(self.autoRetrainStatusLabel)
        self.layout.addWidget(section)
        self.autoRetrain = AutoRetrain(self.logic)
        self.autoRetrainTimer = qt.QTimer()
        self.autoRetrainTimer.setInterval(CHECK_MS)
        self.autoRetrainTimer.connect("timeout()", self.onAutoRetrainTimer)
        self.autoRetrainCheckBox.connect("toggled(bool)", self.onAutoRetrainSettingsChanged)
        self.autoRetrainEverySpinBox.connect("valueChanged(int)", self.onAutoRetrainSettingsChanged)

    def updateAutoRetrainFromParameterNode(self, p) -> None:
        self.autoRetrainCheckBox.checked = p.autoRetrain
        self.autoRetrainEverySpinBox.value = p.autoRetrainEvery
        self._applyAutoRetrain(p)

    def onAutoRetrainSettingsChanged(self, *_args) -> None:
        p = self._parameterNode
        if p is None or self._updatingGui:
            return
        p.autoRetrain = bool(self.autoRetrainCheckBox.checked)
        p.autoRetrainEvery = int(self.autoRetrainEverySpinBox.value)
        self._applyAutoRetrain(p)

    def _applyAutoRetrain(self, p) -> None:
        self.autoRetrain.every = p.autoRetrainEvery if p.autoRetrain else 0
        if p.autoRetrain and not self.autoRetrainTimer.isActive():
            self.autoRetrainTimer.start()
            self.onAutoRetrainTimer()
        else:
            self.autoRetrainTimer.stop()
            self.autoRetrainStatusLabel.text = "off"

    def onAutoRetrainTimer(self) -> None:
        try:
            p = self._parameterNode
            model = default_model() or p.initModel
            out = self.autoRetrain.check(path_or_empty(p.poolPath), model, **self._trainingSettings())
            if out:
                self._runStarted(out)
        except Exception as exc:  # never let the timer raise into Qt's event loop
            self.autoRetrain.message = f"automatic retraining failed: {exc}"
        self.autoRetrainStatusLabel.text = self.autoRetrain.message
