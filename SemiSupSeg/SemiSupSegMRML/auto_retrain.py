"""Retrain when enough new labels arrived: the training panel's optional automatic fine-tuning (issue 19).

As MONAI Label offers on its server, the training panel can start a fine-tuning of the current default
model by itself once the labelled pool has gained ``every`` cases that model has not learnt from. It is
off by default. The panel calls :meth:`AutoRetrain.check` from a slow timer; a check that finds the pool
file, the model and ``every`` unchanged since the last one reads nothing.

**[decision]** "New" is decided by case name: the pool's labelled cases, minus those listed in the
model's ``model.json`` (training and validation cases, :func:`SemiSupSegLib.run_data.trained_case_names`),
minus those the last automatic start already included. So one batch of new labels starts one run, also
while its model waits to be compared and adopted; a corrected label saved under an existing name is not
new. A model that lists no cases (trained elsewhere, such as a shipped one) has learnt none of the pool's.
The run goes through :meth:`SemiSupSegMRML.training.TrainingLogic.start_training`, so it is checked,
shown, stopped, resumed and compared like one started with the Train button.
"""

from __future__ import annotations

import os
import time

from SemiSupSegLib import run_data
from SemiSupSegLib.errors import SemiSupSegError

from .training import path_or_empty


class AutoRetrain:
    """Starts a fine-tuning of the model when the pool has gained ``every`` new labelled cases.

    Args:
        logic: the panel's :class:`~SemiSupSegMRML.training.TrainingLogic` (its ``"train"`` slot).
        every: new labelled cases that start a run; 0 switches the automatic retraining off.
    """

    def __init__(self, logic, every: int = 0) -> None:
        self.logic = logic
        self.every = int(every)
        self.message = ""  # what the last check found, for the panel
        self._covered: set[str] = set()  # the new cases that started automatic runs
        self._last_seen: tuple | None = None

    def pending(self, pool, model) -> list[str]:
        """The pool's labelled cases that ``model`` has not learnt from and no automatic run included.

        Args:
            pool: the labelled pool's ``dataset.json``.
            model: the model folder to fine-tune ("" or None: from scratch, which knows no case).

        Returns:
            Their names, in the pool's order.
        """
        known = run_data.trained_case_names(model) if model else set()
        return run_data.new_labelled_cases(pool, known | self._covered)

    def check(self, pool, model, **settings) -> str | None:
        """Start the fine-tuning if it is due.

        Args:
            pool: the labelled pool's ``dataset.json``.
            model: the model to fine-tune (the current default); "" or None trains from scratch.
            **settings: the other arguments of ``TrainingLogic.start_training`` (method, steps, ...).

        Returns:
            The new model folder when a run was started, else None; :attr:`message` says why.
        """
        pool = path_or_empty(pool)
        if self.every <= 0 or not pool or self.logic.is_active("train"):
            return None
        seen = (pool, _modified_ns(pool), str(model or ""), self.every)
        if seen == self._last_seen:
            return None
        self._last_seen = seen
        try:
            new = self.pending(pool, model)
        except (SemiSupSegError, OSError) as exc:
            self.message = f"automatic retraining waits: the pool cannot be read ({exc})"
            return None
        if len(new) < self.every:
            self.message = f"{len(new)} of {self.every} new labelled case(s)"
            self.message += f"; a fine-tuning starts at {self.every}"
            return None
        name = f"auto-{time.strftime('%Y%m%d-%H%M%S')}"
        try:
            out = self.logic.start_training(pool, init_model=model or None, name=name, **settings)
        except (ValueError, RuntimeError) as exc:  # the data's problems: tried again when the pool changes
            self.message = f"automatic retraining did not start: {exc}"
            return None
        self._covered |= set(new)
        self.message = f"fine-tuning started on {len(new)} new labelled case(s) ({', '.join(new)}) into {out}"
        return out


def _modified_ns(path: str) -> int | None:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return None
