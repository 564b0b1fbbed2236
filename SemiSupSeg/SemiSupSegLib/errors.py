"""Errors the engine raises on bad input. The CLI and the Slicer panels show their message as is."""


class SemiSupSegError(Exception):
    """Base class: a problem the user can act on, with a message that names it."""


class InputError(SemiSupSegError):
    """An image, label or point that cannot be used (missing, corrupt, wrong dimension, NaN...)."""


class DatasetError(SemiSupSegError):
    """A ``dataset.json`` or one of its cases is invalid. ``problems`` lists every problem found."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = list(problems or [message])


class ModelError(SemiSupSegError):
    """A model folder is missing, incomplete or corrupt."""


class TrainingCancelled(SemiSupSegError):
    """Training stopped on request (SIGINT/SIGTERM); the last checkpoint is usable."""


class TrainingDiverged(SemiSupSegError):
    """A loss became NaN or infinite; the last checkpoint (if any) is still usable."""
