"""Run the SemiSupSegTraining self-test inside Slicer and exit with its status.

    Slicer --no-splash --testing \
        --additional-module-paths <repo>/SemiSupSeg <repo>/SemiSupSegTraining \
        --python-script <repo>/SemiSupSegTraining/Testing/Python/run_selftest.py

It needs torch, MONAI and SciPy installed in Slicer's Python (the SemiSupSeg panel installs them
at first use) for its real 5-step training; the fake-process part needs neither.
"""

import traceback

import slicer

status = 1
try:
    slicer.util.getModule("SemiSupSegTraining")  # raises if the module was not found
    import SemiSupSegTraining

    SemiSupSegTraining.SemiSupSegTrainingTest().runTest()
    print("SemiSupSegTraining self-test passed")
    status = 0
except Exception:
    traceback.print_exc()
    print("SemiSupSegTraining self-test FAILED")
finally:
    slicer.util.exit(status)
