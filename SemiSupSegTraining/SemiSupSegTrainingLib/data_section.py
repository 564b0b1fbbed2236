"""The training panel's data: the folders of unlabelled scans, the validation cases of the labelled
pool and the data check."""

import qt
import slicer
from SemiSupSegMRML.training import path_or_empty as _pathOrEmpty


class DataSection:
    """Mixin of ``SemiSupSegTrainingWidget`` (uses its ``ui``, ``logic`` and ``_parameterNode``)."""

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
            names = self.logic.labelled_case_names(self.ui.poolPathLineEdit.currentPath)
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
        summary = self.logic.data_summary(
            _pathOrEmpty(p.poolPath), list(p.unlabeledFolders), self._validation()
        )
        self.ui.dataSummaryText.setPlainText(summary.text())
        return summary
