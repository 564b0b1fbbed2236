"""The SemiSupSeg panel's self-test cases, run by ``SemiSupSegTest.runTest`` inside Slicer.

Each case takes the running ``ScriptedLoadableModuleTest`` (``test``: its assertions, ``delayDisplay``
and its temporary folder ``test.tmp``). The helpers build a phantom volume under a rigid parent
transform and train a tiny model and a tiny locator on the fly (needs torch, MONAI and SciPy).
"""

import pathlib
import shutil

import numpy as np
import slicer
import vtk
from SemiSupSegMRML import dependencies, markups, segments
from SemiSupSegMRML.pool import add_to_pool
from SemiSupSegMRML.volumes import volume_from_image


def run_all(test) -> None:
    """Every case, each between ``test.setUp()`` and ``test.tearDown()``."""
    for case in (panel_widgets, locate_segment_add_to_pool):
        test.setUp()
        try:
            case(test)
        finally:
            test.tearDown()


def phantom_volume(seed, name, transformed):
    from SemiSupSegLib.phantom import generate_phantom

    case = generate_phantom(size=64, seed=seed)
    volumeNode = volume_from_image(case.image, name)
    if transformed:  # a rigid parent transform: rotation about z plus a shift
        angle = np.deg2rad(20.0)
        matrix = np.eye(4)
        matrix[:2, :2] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
        matrix[:3, 3] = [5.0, -3.0, 2.0]
        transformNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "probe pose")
        transformNode.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(matrix))
        volumeNode.SetAndObserveTransformNodeID(transformNode.GetID())
    return case, volumeNode

def tiny_model_and_locator(tmp):
    from SemiSupSegLib.locator.train import LocatorTrainConfig, LocatorTrainer
    from SemiSupSegLib.phantom import write_phantom_dataset
    from SemiSupSegLib.training import TrainConfig, Trainer

    data = write_phantom_dataset(tmp / "train-data", cases=2, size=32, seed=1)
    model = Trainer(
        TrainConfig(
            data=str(data),
            out=str(tmp / "models" / "tiny-model"),
            steps=2,
            batch=1,
            width=0.125,
            patch_size=(16, 16, 16),
            val_cases=0,
            translation=4,
            device="cpu",
            name="tiny-model",
        )
    ).run()
    locator = LocatorTrainer(
        LocatorTrainConfig(
            data=[str(data)],
            out=str(tmp / "locators" / "tiny-locator"),
            steps=2,
            agents=2,
            batch=4,
            warmup=4,
            grid=32,
            crop=9,
            scales=(3, 1),
            width=4,
            memory=64,
            val_cases=0,
            starts=2,
            device="cpu",
        )
    ).run()
    return pathlib.Path(model), pathlib.Path(locator)

def assert_same_grid(test, node, volumeNode):
    a, b = vtk.vtkMatrix4x4(), vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(a)
    volumeNode.GetIJKToRASMatrix(b)
    np.testing.assert_allclose(
        slicer.util.arrayFromVTKMatrix(a), slicer.util.arrayFromVTKMatrix(b), atol=1e-6
    )
    test.assertEqual(node.GetImageData().GetDimensions(), volumeNode.GetImageData().GetDimensions())
    test.assertEqual(node.GetTransformNodeID(), volumeNode.GetTransformNodeID())

def panel_widgets(test):
    test.delayDisplay("Panel: widgets and parameter node")
    slicer.util.selectModule("SemiSupSeg")
    widget = slicer.util.getModuleWidget("SemiSupSeg")
    parameterNode = widget.logic.getParameterNode()
    for name in (
        "inputSelector",
        "pointSelector",
        "pointPlaceWidget",
        "findButton",
        "confidenceLabel",
        "modelComboBox",
        "modelsFolderPathLineEdit",
        "openModelsFolderButton",
        "deviceComboBox",
        "segmentButton",
        "probabilityCheckBox",
        "uncertaintyCheckBox",
        "progressBar",
        "statusLabel",
        "poolFolderPathLineEdit",
        "addLabelledButton",
        "addUnlabelledButton",
    ):
        test.assertTrue(hasattr(widget.ui, name), name)
    parameterNode.device = "CPU"
    test.assertEqual(widget.ui.deviceComboBox.currentText, "CPU")
    parameterNode.modelsFolder = test.tmp
    test.assertEqual(pathlib.Path(widget.ui.modelsFolderPathLineEdit.currentPath), test.tmp)
    test.assertIsNotNone(parameterNode.centerPoint)
    test.assertIsNotNone(widget.segmentEditorWidget)
    test.delayDisplay("Panel test passed")

def locate_segment_add_to_pool(test):
    """The clinician's flow through the module's own logic; ``Testing/mrml`` checks each step in
    detail on the Qt-free core, this runs it once inside a real Slicer."""
    import SemiSupSeg  # the module file: its Logic, as the panel builds it
    from SemiSupSegLib.dataset import load_dataset

    logic = SemiSupSeg.SemiSupSegLogic()
    missing = dependencies.missing_dependencies()
    test.assertEqual(missing, [], f"install {missing} in Slicer's Python first (the module offers it)")

    test.delayDisplay("Training a tiny model and a tiny locator")
    modelFolder, locatorFolder = tiny_model_and_locator(test.tmp)
    case, volumeNode = phantom_volume(seed=3, name="phantom_a", transformed=True)
    pointNode = markups.create_point_node()

    test.delayDisplay("Locate")
    found = logic.locate(volumeNode, pointNode, locatorFolder.parent, "CPU")
    np.testing.assert_allclose(markups.center_lps(pointNode, volumeNode), found.point_lps, atol=1e-4)

    test.delayDisplay("Segment in Slicer")
    nodes = logic.segment(volumeNode, pointNode, str(modelFolder), "CPU", probability=True)
    test.assertEqual(nodes["execution"], "in-process")
    segmentationNode = nodes["segmentation"]
    assert_same_grid(test, nodes["probability"], volumeNode)
    if shutil.which("PythonSlicer"):
        test.delayDisplay("Segment in a background process")
        background = logic.segment(volumeNode, None, str(modelFolder), "CPU", background=True)
        test.assertEqual(background["execution"], "background")

    test.delayDisplay("Add to pool")
    segments.label_to_segmentation(case.label, volumeNode, segmentationNode)  # the "corrected" segment
    pool = test.tmp / "pool"
    test.assertFalse(add_to_pool(volumeNode, segmentationNode, pointNode, pool).updated)
    test.assertTrue(add_to_pool(volumeNode, segmentationNode, pointNode, pool).updated)
    data = load_dataset(pool / "dataset.json")  # validates images, labels, geometry and centres
    test.assertEqual([c.name for c in data.training], ["phantom_a"])
    test.delayDisplay("Test passed")
