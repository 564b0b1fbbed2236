"""The training panel's "Next cases to label" section: the pool's unlabelled cases ranked by the current
model's doubt, computed by a ``semisupseg suggest --json --progress json`` child
(:meth:`SemiSupSegMRML.training.TrainingLogic.start_suggestion`); the score is documented in
``SemiSupSegLib.suggest``. The widgets are made here (the .ui file is left as it is)."""

import ctk
import qt
import slicer
from SemiSupSegMRML.models import default_model
from SemiSupSegMRML.training import path_or_empty

COLUMNS = ("rank", "case", "score (nats)", "region", "instrument uncertain", "doubt share (1: likely missed)")


class SuggestSection:
    """Mixin of ``SemiSupSegTrainingWidget`` (uses its ``ui``, ``logic``, ``layout`` and parameter node)."""

    def setupSuggestSection(self) -> None:
        """Add the section under the panel's other sections."""
        section = ctk.ctkCollapsibleButton()
        section.text = "Next cases to label"
        form = qt.QVBoxLayout(section)
        self.suggestButton = qt.QPushButton("Rank unlabelled cases")
        self.suggestButton.toolTip = (
            "Rank the pool's unlabelled cases by how much the current model doubts them (mean Monte-Carlo "
            "entropy over the case's centre region, or the whole volume): label the first ones next."
        )
        self.suggestStatusLabel = qt.QLabel("")
        self.suggestStatusLabel.wordWrap = True
        self.suggestTable = qt.QTableWidget()
        self.suggestTable.setEditTriggers(qt.QAbstractItemView.NoEditTriggers)
        form.addWidget(self.suggestButton)
        form.addWidget(self.suggestStatusLabel)
        form.addWidget(self.suggestTable)
        self.layout.addWidget(section)
        self.suggestButton.connect("clicked(bool)", self.onSuggest)

    def onSuggest(self) -> None:
        with slicer.util.tryWithErrorDisplay("Failed to rank the unlabelled cases.", waitCursor=True):
            p = self._parameterNode
            self.logic.ensureDependencies()
            model = self.ui.currentModelComboBox.currentData or default_model()
            self.logic.start_suggestion(path_or_empty(p.poolPath), model, p.device)
            self.suggestStatusLabel.text = "ranking the unlabelled cases in the background..."
            self.startPolling()

    def updateSuggestProgress(self) -> None:
        job = self.logic.jobs.get("suggest")
        if job is not None and job.state.active:
            self.suggestStatusLabel.text = f"ranking: {job.state.status_text()}"
        self.suggestButton.enabled = not self.logic.is_active("suggest")

    def showSuggestions(self, state) -> None:
        """Fill the table from the finished child's ranking (best first)."""
        ranking = self.logic.ranking()
        if state.status != "finished":
            self.suggestStatusLabel.text = f"ranking failed: {state.message}"
            return
        table = self.suggestTable
        table.clear()
        table.setColumnCount(len(COLUMNS))
        table.setHorizontalHeaderLabels(list(COLUMNS))
        table.setRowCount(len(ranking))
        for row, entry in enumerate(ranking):
            share, missed = entry.get("uncertain_fraction"), entry.get("doubt_share")
            cells = (
                str(row + 1),
                str(entry.get("case", "")),
                f"{float(entry.get('score', 0.0)):.4f}",
                str(entry.get("region", "")),
                "" if share is None else f"{100 * float(share):.1f} %",
                "" if missed is None else f"{float(missed):.2f}",
            )
            for column, text in enumerate(cells):
                table.setItem(row, column, qt.QTableWidgetItem(text))
        table.resizeColumnsToContents()
        first = ranking[0]["case"] if ranking else "none"
        self.suggestStatusLabel.text = (
            f"{len(ranking)} case(s) ranked; label '{first}' next (SemiSupSeg: Load next suggested case)."
        )
