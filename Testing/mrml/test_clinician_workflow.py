"""Issue 19 on a real scene: load the next suggested case, refine here (union, undo), uncertainty overlay."""

import json
import math

import numpy as np
import pytest
import SimpleITK as sitk
import slicer
from helpers import instrument_label, oblique_image, transformed_volume
from SemiSupSegMRML import markups, overlay, segments
from SemiSupSegMRML.refine import RefineHistory, refine_here
from SemiSupSegMRML.segmentation import SegmentationLogic
from SemiSupSegMRML.suggested import load_next_suggested
from SemiSupSegMRML.volumes import volume_to_image

torch = pytest.importorskip("torch")


def _tiny_model(root, patch: int, foreground_everywhere: bool = False):
    from SemiSupSegLib.model_store import save_model
    from SemiSupSegLib.networks import CompactUNet

    torch.manual_seed(0)
    net = CompactUNet(width=0.0625)
    if foreground_everywhere:  # the region's label is then exactly the region the model looked at
        with torch.no_grad():
            net.head.weight.zero_()
            net.head.bias.copy_(torch.tensor([-10.0, 10.0]))
    meta = {
        "name": "tiny",
        "method": "supervised",
        "classes": {"0": "background", "1": "instrument"},
        "patch_size": [patch] * 3,
        "preprocessing": {"target_spacing": [1.0, 1.0, 1.0]},
    }
    return str(save_model(root / "model", {"net": net}, meta))


def _same_grid(volume, image: sitk.Image) -> None:
    read = volume_to_image(volume)
    np.testing.assert_allclose(read.GetOrigin(), image.GetOrigin(), atol=1e-5)
    np.testing.assert_allclose(read.GetSpacing(), image.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(read.GetDirection(), image.GetDirection(), atol=1e-6)
    assert np.array_equal(sitk.GetArrayViewFromImage(read), sitk.GetArrayViewFromImage(image))


def _pool(root):
    """Unlabelled a (with a centre) and b (none); c, ranked first by a stale ranking, is labelled now."""
    (root / "images").mkdir(parents=True)
    images = {name: oblique_image(seed) for seed, name in enumerate("abc")}
    for name, image in images.items():
        sitk.WriteImage(image, str(root / "images" / f"{name}.nii.gz"))
    sitk.WriteImage(instrument_label(images["c"]), str(root / "c_label.nii.gz"))
    center_a = list(images["a"].TransformContinuousIndexToPhysicalPoint((9.0, 4.0, 3.0)))
    raw = {
        "training": [{"image": "images/c.nii.gz", "label": "c_label.nii.gz"}],
        "unlabeled": [{"image": "images/a.nii.gz", "center": center_a}, {"image": "images/b.nii.gz"}],
    }
    (root / "dataset.json").write_text(json.dumps(raw))
    return root / "dataset.json", images, center_a


def test_load_next_suggested_skips_labelled_cases_sets_the_centre_and_segments(scene, tmp_path):
    pool, images, center_a = _pool(tmp_path / "pool")
    model = _tiny_model(tmp_path, patch=16)
    logic = SegmentationLogic(log=lambda text: None)
    point = markups.create_point_node()
    markups.set_center_lps(point, scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode"), (0.0, 0.0, 0.0))

    stale = [{"case": "c"}, {"case": "b"}, {"case": "a"}]  # c was labelled since this ranking
    loaded = load_next_suggested(logic, pool, model, point, "CPU", ranking=stale)
    assert loaded["case"].name == "b" and loaded["volume"].GetName() == "b"
    _same_grid(loaded["volume"], images["b"])
    assert not markups.has_point(point)  # no stored centre: the whole volume
    label = segments.segment_array(loaded["segmentation"], loaded["volume"])
    assert label.shape == sitk.GetArrayViewFromImage(images["b"]).shape

    loaded = load_next_suggested(logic, pool, model, point, "CPU")  # ranked here, in this process
    ranked = [s.case for s in loaded["ranking"]]
    assert sorted(ranked) == ["a", "b"] and loaded["case"].name == ranked[0]
    if ranked[0] == "a":
        np.testing.assert_allclose(markups.center_lps(point, loaded["volume"]), center_a, atol=1e-4)
    else:
        assert not markups.has_point(point)


def test_refine_here_adds_the_region_keeps_the_previous_result_and_undoes(scene, tmp_path):
    image, volume, _ = transformed_volume(seed=2)
    model = _tiny_model(tmp_path, patch=4, foreground_everywhere=True)  # region: 8 mm around the point
    logic = SegmentationLogic(log=lambda text: None)
    segmentation = segments.label_to_segmentation(instrument_label(image), volume)
    before = segments.segment_array(segmentation, volume)
    corner = image.TransformIndexToPhysicalPoint((1, 1, 1))  # far from the instrument line
    history = RefineHistory()

    result = refine_here(logic, volume, segmentation, corner, model, "CPU", history)

    after = segments.segment_array(segmentation, volume)
    assert np.all(after[before > 0])  # the union keeps everything the previous result had
    assert after[1, 1, 1] and not after[-1, -1, -1]  # the clicked voxel is in, the far corner is not
    assert result["added"] == int(after.sum() - before.sum()) > 0
    assert history.can_undo and history.undo()
    assert np.array_equal(segments.segment_array(segmentation, volume), before)
    assert not history.undo()


def test_uncertainty_overlay_lies_on_the_input_grid_with_colours_legend_opacity_and_summary(scene):
    image, volume, _ = transformed_volume(seed=1)
    label = instrument_label(image)
    uncertainty = np.zeros(sitk.GetArrayViewFromImage(image).shape, np.float32)
    k, j = uncertainty.shape[0] // 2, uncertainty.shape[1] // 2
    uncertainty[k, j, 2:5] = 0.6  # 3 of the 11 instrument voxels are uncertain (> 0.50 nats)
    uncertainty[0, 0, -1] = 0.3  # asymmetric: a flipped axis shows
    uncertainty_image = sitk.GetImageFromArray(uncertainty)
    uncertainty_image.CopyInformation(image)
    composite = scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode")
    nodes = segments.import_results({"label": label, "uncertainty": uncertainty_image}, volume)
    node = nodes["uncertainty"]

    legend = overlay.show_uncertainty_overlay(node, volume, opacity=0.4)

    np.testing.assert_allclose(
        slicer.util.arrayFromVTKMatrix(_ijk(node)), slicer.util.arrayFromVTKMatrix(_ijk(volume)), atol=1e-6
    )
    assert node.GetTransformNodeID() == volume.GetTransformNodeID() is not None
    assert np.array_equal(slicer.util.arrayFromVolume(node), uncertainty)
    display = node.GetDisplayNode()
    assert display.GetColorNodeID() == overlay.COLOR_NODE_ID and display.GetApplyThreshold()
    assert display.GetWindowLevelMin() == 0 and display.GetWindowLevelMax() == pytest.approx(math.log(2))
    assert composite.GetForegroundVolumeID() == node.GetID()
    assert composite.GetBackgroundVolumeID() == volume.GetID()
    assert composite.GetForegroundOpacity() == pytest.approx(0.4)
    assert legend.GetPrimaryDisplayNode() is display and legend.GetVisibility()
    assert legend.GetTitleText() == overlay.LEGEND_TITLE
    assert overlay.show_uncertainty_overlay(node, volume) is legend  # shown again: one legend
    overlay.set_overlay_opacity(0.8)
    assert composite.GetForegroundOpacity() == pytest.approx(0.8)
    summary = overlay.overlay_summary(node, nodes["segmentation"], volume)
    assert summary.startswith("27.3 % of the instrument (3 of 11 voxels)")
    overlay.hide_uncertainty_overlay(node)
    assert not composite.GetForegroundVolumeID() and not legend.GetVisibility()


def _ijk(node):
    import vtk

    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return matrix


class _ReplayedChild:
    """A child process double that replays protocol events (the suggest child's, as its CLI test pins)."""

    def __init__(self, args, env, events) -> None:
        self.args, self.env, self._events = list(args), env, events
        self.stderr_tail, self.returncode = [], None

    def start(self):
        return self

    def poll(self):
        events, self._events = self._events, []
        self.returncode = 0
        return events

    @property
    def running(self) -> bool:
        return self.returncode is None


def test_training_panel_ranks_in_a_suggest_child_and_reads_the_ranking(tmp_path):
    from SemiSupSegMRML.training import TrainingLogic

    from SemiSupSegLib.cli import build_parser

    ranking = [{"case": "b", "image": "/b.nii", "score": 0.4}, {"case": "a", "image": "/a.nii", "score": 0.1}]
    children = []

    def factory(args, env):
        finished = {"protocol": 1, "event": "finished", "result": {"ranking": ranking}, "message": "ranked"}
        started = {"protocol": 1, "event": "started", "total": 2}
        children.append(_ReplayedChild(args, env, [started, finished]))
        return children[-1]

    logic = TrainingLogic(process_factory=factory)
    assert logic.ranking() == []
    logic.start_suggestion(str(tmp_path / "dataset.json"), str(tmp_path / "model"), "cpu")
    logic.wait(timeout=5)

    assert logic.ranking() == ranking
    command = children[0].args
    assert command[1:4] == ["-m", "SemiSupSegLib.cli", "suggest"]
    parsed = build_parser().parse_args(command[3:])
    assert parsed.json and parsed.progress == "json" and parsed.device == "cpu"
    assert parsed.data == str(tmp_path / "dataset.json") and parsed.model == str(tmp_path / "model")
    assert children[0].env["CUDA_VISIBLE_DEVICES"] == "-1"
    with pytest.raises(ValueError, match="dataset.json"):
        logic.start_suggestion("", "m")
