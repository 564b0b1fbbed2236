"""The SemiSupSegTraining panel's self-test cases, run by ``SemiSupSegTrainingTest.runTest`` inside Slicer.

Each case takes the running ``ScriptedLoadableModuleTest`` (``test``: its assertions, ``delayDisplay`` and
its temporary folder ``test.tmp``). A fake process (``fake_training_process``) drives the widget without
torch; then a real 5-step training runs on a tiny phantom pool (needs torch and MONAI in this Slicer).
"""

import os
import pathlib
import time

import fake_training_process
import slicer
from SemiSupSegMRML import dependencies
from SemiSupSegMRML.models import default_model
from SemiSupSegMRML.training import PANEL_METHOD, default_process_factory

from SemiSupSegLib import train_process


def run_all(test) -> None:
    """Every case, each between ``test.setUp()`` and ``test.tearDown()`` (the fake ones share one)."""
    test.setUp()
    try:
        fake_process_drives_the_widget(test)
        stop_and_resume_buttons_with_a_fake_process(test)
        automatic_retraining_with_a_fake_process(test)
    finally:
        test.tearDown()
    test.setUp()
    try:
        real_five_step_training(test)
    finally:
        test.tearDown()


def phantom_pool(test):
    """The tiny phantom pool of the real training (needs SciPy, a training dependency)."""
    from SemiSupSegLib.phantom import write_phantom_dataset

    return str(write_phantom_dataset(os.path.join(test.tmp, "pool"), cases=4, unlabeled=2, seed=3, size=48))


def plain_pool(test):
    """A pool of random 24^3 volumes written with SimpleITK only (the fake-process tests)."""
    import json

    import numpy as np
    import SimpleITK as sitk

    root = pathlib.Path(test.tmp) / "plain-pool"
    (root / "images").mkdir(parents=True, exist_ok=True)  # runTest builds it for two tests
    (root / "labels").mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    entries = {"training": [], "unlabeled": []}
    for i in range(6):
        name = f"case_{i:03d}"
        image = sitk.GetImageFromArray(rng.integers(1, 255, (24, 24, 24)).astype(np.uint8))
        sitk.WriteImage(image, str(root / "images" / f"{name}.nrrd"))
        entry = {"image": f"images/{name}.nrrd", "center": [12.0, 12.0, 12.0]}
        if i < 4:
            label = np.zeros((24, 24, 24), np.uint8)
            label[12, 12, 4:20] = 1
            sitk.WriteImage(sitk.GetImageFromArray(label), str(root / "labels" / f"{name}.nrrd"))
            entries["training"].append({**entry, "label": f"labels/{name}.nrrd"})
        else:
            entries["unlabeled"].append(entry)
    raw = {"name": "plain", "labels": {"0": "background", "1": "instrument"}, **entries}
    (root / "dataset.json").write_text(json.dumps(raw))
    return str(root / "dataset.json")


def panel_widget(pool):
    widget = slicer.util.getModuleWidget("SemiSupSegTraining")
    widget.initializeParameterNode()
    p = widget._parameterNode
    p.poolPath = pathlib.Path(pool)
    p.unlabeledFolders = []
    p.chooseValidation = False
    p.steps, p.patch, p.batch, p.width, p.device = 5, 16, 1, 0.125, "cpu"
    p.method, p.initModel, p.modelName = PANEL_METHOD, "", ""
    return widget


def fake_factory(started):
    """Fake training and comparison children; ``started`` collects their argument lists."""

    def factory(args, env):
        started.append(args)
        if "compare" in args:
            new = args[args.index("--new") + 1]
            result = {
                "cases_from": "validation",
                "new": {"name": "new", "path": new},
                "current": None,
                "rows": [{"case": "c", "new": {"dice": 0.5, "jaccard": 0.3, "hd95_mm": 4.0, "asd_mm": 1.0}}],
                "summary": {"new": {"dice": 0.5, "jaccard": 0.3, "hd95_mm": 4.0, "asd_mm": 1.0}},
                "better": None,
            }
            events = [{"event": "started", "task": "comparison"}, {"event": "finished", "result": result}]
            return fake_training_process.FakeTrainingProcess(args, env, events)
        out = args[args.index("--out") + 1]
        return fake_training_process.FakeTrainingProcess(
            args, env, fake_training_process.fakeTrainingEvents(out, steps=5)
        )

    return factory


def widget_with_fake_children(test):
    """The panel on the plain pool, its children faked (no torch); the list collects their arguments."""
    widget = panel_widget(plain_pool(test))
    widget.logic.requireDependencies = False
    started = []
    widget.logic.process_factory = fake_factory(started)
    return widget, started


def fake_process_drives_the_widget(test):
    test.delayDisplay("A fake training process drives the panel")
    widget, started = widget_with_fake_children(test)
    widget.onTrainButton()
    test.assertTrue(started and started[0][1:4] == ["-m", "SemiSupSegLib.cli", "train"])
    test.assertIn("--progress", started[0])
    test.assertEqual(started[0][started[0].index("--method") + 1], "dual-unet")
    test.assertTrue(
        os.path.isfile(os.path.join(widget._parameterNode.runFolder, ".training", "dataset.json"))
    )
    test.assertFalse(widget.ui.trainButton.enabled)
    test.assertTrue(widget.ui.stopButton.enabled)
    for _ in range(50):
        widget.onTimer()
        if not widget.logic.active():
            break
    test.assertFalse(widget.logic.active())
    test.assertEqual(widget.ui.progressBar.value, 100)
    p = widget._parameterNode
    test.assertEqual(p.newModel, p.runFolder)
    test.assertEqual(p.lossTable.GetTable().GetNumberOfRows(), 5)
    test.assertEqual(p.validationTable.GetTable().GetNumberOfRows(), 1)
    test.assertTrue(any("compare" in a for a in started))  # the comparison started by itself
    test.assertEqual(widget.ui.comparisonTable.rowCount, 2)  # the case + the mean
    test.assertTrue(widget.ui.makeDefaultButton.enabled)
    test.delayDisplay("Fake run drove the panel")


def stop_and_resume_buttons_with_a_fake_process(test):
    test.delayDisplay("Stop and Resume with a fake process")
    pool = plain_pool(test)
    widget = panel_widget(pool)
    widget.logic.requireDependencies = False
    widget.logic.process_factory = lambda args, env: fake_training_process.FakeTrainingProcess(
        args,
        env,
        fake_training_process.fakeTrainingEvents(
            args[args.index("--out") + 1] if "--out" in args else "", steps=20
        ),
        perPoll=3,
    )
    widget.onTrainButton()
    widget.onTimer()
    widget.onTimer()
    widget.onStopButton()
    test.assertIn("stopping", widget.ui.statusLabel.text)
    for _ in range(10):
        widget.onTimer()
    job = widget.logic.jobs["train"]
    test.assertEqual(job.state.status, "cancelled")
    test.assertFalse(widget.ui.stopButton.enabled)
    # a checkpoint file makes the run resumable
    checkpoint = os.path.join(widget._parameterNode.runFolder, ".training", "checkpoint.pt")
    with open(checkpoint, "wb") as f:
        f.write(b"fake")
    widget.updateButtons()
    test.assertTrue(widget.ui.resumeButton.enabled)
    resumed = []
    widget.logic.process_factory = lambda args, env: (
        resumed.append(args) or fake_training_process.FakeTrainingProcess(args, env, [])
    )
    widget.onResumeButton()
    test.assertIn("--resume", resumed[0])
    widget.logic.wait(30)
    test.delayDisplay("Stop and Resume work")


def real_five_step_training(test):
    test.delayDisplay("A real 5-step training on a tiny phantom pool")
    missing = dependencies.missing_dependencies()
    if missing:
        raise RuntimeError(f"this test needs {missing} installed in Slicer's Python")
    pool = phantom_pool(test)
    widget = panel_widget(pool)
    widget.logic.requireDependencies = True
    widget.logic.process_factory = default_process_factory
    widget.onTrainButton()
    deadline = time.monotonic() + 900
    while widget.logic.active() and time.monotonic() < deadline:
        slicer.app.processEvents()  # the panel's QTimer polls the process
        time.sleep(0.05)
    widget.onTimer()
    job = widget.logic.jobs["train"]
    test.assertEqual(job.state.status, "finished", job.state.message)
    out = widget._parameterNode.runFolder
    test.assertTrue(os.path.isfile(os.path.join(out, "model.json")))
    test.assertIn(out, [m["path"] for m in train_process.scan_models()])
    test.assertEqual(widget._parameterNode.lossTable.GetTable().GetNumberOfRows(), 5)
    widget.logic.wait(600)  # the comparison started when training finished
    widget.onTimer()
    test.assertEqual(
        widget.logic.jobs["tool"].state.status, "finished", widget.logic.jobs["tool"].state.message
    )
    test.assertGreaterEqual(widget.ui.comparisonTable.rowCount, 2)
    widget.onMakeDefault()
    test.assertEqual(os.path.abspath(default_model()), os.path.abspath(out))
    test.delayDisplay("Real training, comparison and adoption passed")


def automatic_retraining_with_a_fake_process(test):
    test.delayDisplay("Retrain automatically: a fine-tuning starts after N new labelled cases")
    widget, started = widget_with_fake_children(test)
    p = widget._parameterNode
    p.autoRetrainEvery = 5
    p.autoRetrain = True  # the 4 labelled cases are new to a model trained from scratch: not yet 5
    widget.onAutoRetrainTimer()
    test.assertEqual(started, [])
    test.assertIn("4 of 5", widget.autoRetrainStatusLabel.text)
    p.autoRetrainEvery = 4
    widget.onAutoRetrainTimer()
    test.assertEqual(len(started), 1)
    test.assertEqual(started[0][started[0].index("--steps") + 1], "5")  # the panel's settings
    test.assertEqual(p.runTask, "training")
    for _ in range(50):
        widget.onTimer()
        if not widget.logic.active():
            break
    widget.onAutoRetrainTimer()
    trainings = [args for args in started if "train" in args]
    test.assertEqual(len(trainings), 1)  # those 4 cases are covered: nothing new
    p.autoRetrain = False
    test.assertFalse(widget.autoRetrainTimer.isActive())
