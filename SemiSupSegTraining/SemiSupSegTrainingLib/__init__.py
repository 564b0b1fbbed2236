"""The SemiSupSegTraining panel's widget code, split by section into mixins of
``SemiSupSegTrainingWidget`` (they need Qt and Slicer; the scene-free work is in the engine)."""


def engine():
    """The scene-free engine side of this panel (imports no torch at import time)."""
    from SemiSupSegLib import train_process

    return train_process
