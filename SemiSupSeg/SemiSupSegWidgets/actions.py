"""How the segmentation panel runs a user-triggered action: wait cursor, errors in a message box."""

import contextlib
import logging

import slicer

from SemiSupSegLib import slicer_bridge as bridge
from SemiSupSegLib.errors import SemiSupSegError


@contextlib.contextmanager
def userAction(message, device=None):
    """Run a user-triggered action: wait cursor, errors shown in a message box.

    The engine's errors (missing model, point outside the volume, wrong dimensionality...) and
    out-of-memory are shown as one clear sentence without a stack trace. Anything unexpected goes through
    ``slicer.util.tryWithErrorDisplay`` (message plus details for a bug report) and is re-raised.
    """
    shown = None
    with slicer.util.tryWithErrorDisplay(message, waitCursor=True):
        try:
            yield
        except Exception as exc:
            if not (isinstance(exc, (SemiSupSegError, ImportError)) or bridge.is_out_of_memory(exc)):
                raise
            logging.info("SemiSupSeg: %s", exc)
            shown = bridge.user_message(exc, device)
    if shown is not None:
        slicer.util.errorDisplay(f"{message}\n\n{shown}", windowTitle="SemiSupSeg")
