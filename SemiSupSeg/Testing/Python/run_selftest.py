"""Run the SemiSupSeg panel's self-test (SemiSupSegTest) in a 3D Slicer install, then exit.

    Slicer --no-splash --testing --additional-module-paths <repo>/SemiSupSeg <repo>/SemiSupSegTraining \
        --python-script <repo>/SemiSupSeg/Testing/Python/run_selftest.py

Exit status 0 when the test passes, 1 otherwise (the failure is printed). torch, MONAI and SciPy must
already be installed in Slicer's Python (open the panel and click Segment once: it offers to install them).
"""

import traceback

import slicer

status = 1
try:
    slicer.util.selectModule("SemiSupSeg")  # builds the panel, as a user opening it would
    import SemiSupSeg

    SemiSupSeg.SemiSupSegTest().runTest()
    print("SemiSupSeg self-test passed")
    status = 0
except Exception:  # noqa: BLE001 - report any failure and exit non-zero
    traceback.print_exc()
    print("SemiSupSeg self-test FAILED")
slicer.util.exit(status)
