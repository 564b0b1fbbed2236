"""The Slicer panel's scene-free half (SemiSupSegLib.slicer_bridge) and its background worker.

What Slicer would do is written out by hand here: a volume's IJKToRAS matrix is direction x spacing with
the origin in the last column, in RAS; SimpleITK's geometry is the same grid in LPS.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from SemiSupSegMRML import dependencies  # torch-free and Slicer-free at import

from SemiSupSegLib import dataset, imageio
from SemiSupSegLib import slicer_bridge as bridge
from SemiSupSegLib.childprocess import ProtocolError, kill_tree, parse_line, popen_options
from SemiSupSegLib.errors import DatasetError, InputError, ModelError


def _rotation(ax: float, ay: float, az: float) -> np.ndarray:
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def _oblique_image(size=(7, 5, 4)) -> sitk.Image:
    """An anisotropic image with a rotated direction and an origin away from 0 (sizes x, y, z)."""
    image = sitk.Image(list(size), sitk.sitkFloat32)
    image.SetSpacing((0.4, 0.7, 1.3))
    image.SetOrigin((12.5, -30.25, 7.0))
    image.SetDirection(tuple(_rotation(0.3, -0.5, 1.1).reshape(-1)))
    return image


def _parent_transform() -> np.ndarray:
    m = np.eye(4)
    m[:3, :3] = _rotation(0.2, 0.1, -0.7)
    m[:3, 3] = (10.0, -4.0, 25.0)
    return m


# ------------------------------------------------------------------------------------------ geometry


def test_ijk_to_ras_of_an_lps_identity_nrrd_is_what_slicer_shows(tmp_path):
    # A NRRD written by ITK with identity LPS directions: Slicer shows IJKToRAS = diag(-sx, -sy, sz) with
    # the origin's x and y negated (Slicer's RAS convention).
    image = sitk.Image([4, 5, 6], sitk.sitkUInt8)
    image.SetSpacing((0.5, 0.6, 0.7))
    image.SetOrigin((1.0, 2.0, 3.0))
    path = tmp_path / "a.nrrd"
    sitk.WriteImage(image, str(path))
    expected = np.array([[-0.5, 0, 0, -1.0], [0, -0.6, 0, -2.0], [0, 0, 0.7, 3.0], [0, 0, 0, 1]], dtype=float)
    np.testing.assert_allclose(bridge.ijk_to_ras_from_image(sitk.ReadImage(str(path))), expected, atol=1e-12)
    origin, spacing, direction = bridge.geometry_from_ijk_to_ras(expected)
    np.testing.assert_allclose(origin, (1.0, 2.0, 3.0))
    np.testing.assert_allclose(spacing, (0.5, 0.6, 0.7))
    np.testing.assert_allclose(direction, np.eye(3).reshape(-1), atol=1e-12)


def test_geometry_round_trip_oblique_anisotropic():
    image = _oblique_image()
    m = bridge.ijk_to_ras_from_image(image)
    origin, spacing, direction = bridge.geometry_from_ijk_to_ras(m)
    np.testing.assert_allclose(origin, image.GetOrigin(), atol=1e-12)
    np.testing.assert_allclose(spacing, image.GetSpacing(), atol=1e-12)
    np.testing.assert_allclose(direction, image.GetDirection(), atol=1e-12)
    # Every voxel maps to the same physical point both ways (RAS = LPS with x, y negated).
    for index in [(0, 0, 0), (6, 4, 3), (2.5, 1.25, 3.0), (-0.5, 4.5, 0.0)]:
        lps = image.TransformContinuousIndexToPhysicalPoint(index)
        ras = bridge.ijk_to_ras(index, m)
        np.testing.assert_allclose(ras, (-lps[0], -lps[1], lps[2]), atol=1e-9)
        np.testing.assert_allclose(bridge.ras_to_ijk(ras, np.linalg.inv(m)), index, atol=1e-9)


def test_point_round_trip_through_parent_transform_to_engine_lps_and_index():
    image = _oblique_image()
    ijk_to_ras = bridge.ijk_to_ras_from_image(image)
    parent = _parent_transform()
    index = (3.25, 1.5, 2.75)
    local_ras = bridge.ijk_to_ras(index, ijk_to_ras)
    world = parent @ np.append(local_ras, 1.0)  # what a markups point placed on that voxel reads
    lps = bridge.world_ras_to_volume_lps(world[:3], parent)
    np.testing.assert_allclose(image.TransformPhysicalPointToContinuousIndex(lps), index, atol=1e-9)
    np.testing.assert_allclose(bridge.volume_lps_to_world_ras(lps, parent), world[:3], atol=1e-9)
    # Without a transform the world point is the local one.
    np.testing.assert_allclose(
        bridge.world_ras_to_volume_lps(local_ras), image.TransformContinuousIndexToPhysicalPoint(index)
    )
    # Ignoring the parent transform would be wrong: the test can fail.
    assert not np.allclose(bridge.world_ras_to_volume_lps(world[:3]), lps, atol=1e-3)


def test_image_from_array_matches_slicer_voxel_order():
    array = np.arange(4 * 5 * 7, dtype=np.int16).reshape(4, 5, 7)  # [k, j, i] like arrayFromVolume
    source = _oblique_image()
    image = bridge.image_from_array(array, bridge.ijk_to_ras_from_image(source))
    assert image.GetSize() == (7, 5, 4)
    assert image.GetPixel(6, 2, 3) == array[3, 2, 6]
    assert imageio.same_geometry(image, source) is None
    back, m = bridge.array_from_image(image)
    np.testing.assert_array_equal(back, array)
    np.testing.assert_allclose(m, bridge.ijk_to_ras_from_image(source))
    array[0, 0, 0] = 99
    assert image.GetPixel(0, 0, 0) == 0  # a copy: editing the volume later does not change it


@pytest.mark.parametrize(
    ("shape", "words"),
    [((1, 5, 6), "single slice"), ((5, 6), "2D"), ((4, 5, 6, 3), "3 components"), ((2, 3, 4, 5, 6), "5D")],
)
def test_wrong_dimensionality_is_a_clear_error(shape, words):
    with pytest.raises(InputError, match=words):
        bridge.image_from_array(np.zeros(shape, np.uint8), np.eye(4), name="volume 'US'")


def test_nan_voxels_and_singular_matrices_are_refused():
    array = np.zeros((3, 4, 5), np.float32)
    array[1, 1, 1] = np.nan
    with pytest.raises(InputError, match="NaN"):
        bridge.image_from_array(array, np.eye(4))
    with pytest.raises(InputError, match="singular"):
        bridge.geometry_from_ijk_to_ras(np.diag([1.0, 0.0, 1.0, 1.0]))
    with pytest.raises(InputError, match="4x4"):
        bridge.ras_to_ijk((0, 0, 0), np.eye(3))


# ---------------------------------------------------------------------------------- models, devices


def _fake_model(folder: Path, name: str, **extra) -> Path:
    folder.mkdir(parents=True)
    meta = {
        "name": name,
        "method": "dual-unet",
        "modality": "US",
        "target": "catheter",
        "networks": {"unet_a": {}},
        "description": "phantom catheters",
        "metrics": {"validation": {"dice": 0.8123, "hd95_mm": 2.25}},
        "training": {"labeled": 12, "unlabeled": 40, "steps": 3000},
        **extra,
    }
    (folder / "model.json").write_text(json.dumps(meta))
    return folder


def test_models_are_listed_with_a_description_line(tmp_path):
    _fake_model(tmp_path / "b-model", "beta")
    _fake_model(tmp_path / "a-model", "alpha", metrics={})
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "model.json").write_text("{not json")
    (tmp_path / "no-networks").mkdir()
    (tmp_path / "no-networks" / "model.json").write_text('{"name": "x", "networks": {}}')
    entries = bridge.scan_models(tmp_path, include_shipped=False)
    assert [e["name"] for e in entries] == ["alpha", "beta"]
    assert bridge.model_label(entries[1]) == "beta — dual-unet, US, Dice 0.81, HD95 2.2 mm"
    assert bridge.model_label(entries[0]) == "alpha — dual-unet, US"
    tip = bridge.model_tooltip(entries[1])
    assert "12 labelled, 40 unlabelled, 3000 steps" in tip and "phantom catheters" in tip
    assert str(tmp_path / "b-model") in tip
    assert bridge.scan_models(tmp_path / "missing", include_shipped=False) == []


def test_locator_folder_resolution(tmp_path):
    with pytest.raises(ModelError, match="no locator folder"):
        bridge.resolve_locator_folder("")
    with pytest.raises(ModelError, match="does not exist"):
        bridge.resolve_locator_folder(tmp_path / "nope")
    with pytest.raises(ModelError, match="holds no locator"):
        bridge.resolve_locator_folder(tmp_path)
    loc = tmp_path / "loc-b"
    loc.mkdir()
    (loc / "locator.json").write_text("{}")
    assert bridge.resolve_locator_folder(loc) == loc
    assert bridge.resolve_locator_folder(tmp_path) == loc


def test_device_choice():
    assert bridge.choose_device("Auto", True) == "cuda"
    assert bridge.choose_device("Auto", False) == "cpu"
    assert bridge.choose_device("CPU", True) == "cpu"
    assert bridge.choose_device("GPU", True) == "cuda"
    with pytest.raises(InputError, match="GPU was chosen but torch sees no CUDA GPU"):
        bridge.choose_device("GPU", False)
    with pytest.raises(InputError, match="unknown device"):
        bridge.choose_device("TPU", True)


def test_the_device_list_names_each_gpu_and_each_entry_chooses_its_gpu():
    gpus = [("NVIDIA H200", 143_771 * 2**20), ("NVIDIA A100", 80 * 2**30)]
    choices = bridge.device_choices(gpus)
    assert choices == ["Auto", "CPU", "GPU 0: NVIDIA H200 (140 GiB)", "GPU 1: NVIDIA A100 (80 GiB)"]
    assert [bridge.choose_device(c, True, 2) for c in choices] == ["cuda", "cpu", "cuda:0", "cuda:1"]
    assert bridge.device_choices([]) == ["Auto", "CPU"]
    with pytest.raises(InputError, match="GPU 1 was chosen but torch sees 1 GPU"):
        bridge.choose_device(choices[3], True, 1)  # a list made before a GPU went away
    with pytest.raises(InputError, match="GPU was chosen but torch sees no CUDA GPU"):
        bridge.choose_device(choices[2], False)
    with pytest.raises(InputError, match="unknown device"):
        bridge.choose_device("GPUs", True)


def test_execution_choice():
    big = 200**3
    assert bridge.choose_execution(big, has_center=True) == "in-process"
    assert bridge.choose_execution(big, has_center=False) == "background"
    assert bridge.choose_execution(big, has_center=True, mc_samples=8) == "background"
    assert bridge.choose_execution(64**3, has_center=False, mc_samples=8) == "in-process"
    assert bridge.choose_execution(64**3, has_center=True, force_background=True) == "background"


def test_confidence_and_summary_text():
    assert "settled" in bridge.confidence_text(-0.1)
    assert "low confidence" in bridge.confidence_text(2.0)
    assert "unknown" in bridge.confidence_text(float("nan"))
    assert "place the point by hand" in bridge.confidence_text(-0.1, 0.2, True)  # locator II: Q is ignored
    assert "0.93" in bridge.confidence_text(3.0, 0.93, False) and "LOW" not in bridge.confidence_text(
        3.0, 0.93, False
    )
    assert "by phantom-guidewire" in bridge.confidence_text(float("nan"), 0.8, False, "phantom-guidewire")
    assert "(instrument recognised at the point);" in bridge.confidence_text(float("nan"), 0.8, False, None)
    assert (
        bridge.result_summary(3.21, "roi", "cpu", "bf16")
        == "Segmented in 3.2 s (around the point, cpu, bf16)"
    )


# -------------------------------------------------------------------------------------------- pool


def _volume_and_label(value_at_center=1) -> tuple[sitk.Image, sitk.Image, tuple[float, float, float]]:
    image = sitk.Cast(_oblique_image((12, 10, 8)), sitk.sitkUInt8)
    label = sitk.Image(image.GetSize(), sitk.sitkUInt8)
    label.CopyInformation(image)
    label[5, 4, 3] = value_at_center
    label[6, 4, 3] = value_at_center
    center = image.TransformIndexToPhysicalPoint((5, 4, 3))
    return image, label, center


def test_add_to_pool_twice_updates_instead_of_duplicating(tmp_path):
    image, label, center = _volume_and_label(value_at_center=7)  # any non-zero label value is the instrument
    first = dataset.add_to_pool(tmp_path / "pool", "US volume #3", image, label, center)
    assert first.case.name == "US_volume_3" and not first.updated
    moved = (center[0] + 0.5, center[1], center[2])
    second = dataset.add_to_pool(tmp_path / "pool", "US volume #3", image, label, moved)
    assert second.updated and "Updated" in second.message
    ds = dataset.load_dataset(tmp_path / "pool" / "dataset.json")  # validates images, labels, centres
    assert [c.name for c in ds.training] == ["US_volume_3"]
    assert ds.training[0].center == pytest.approx(moved)
    saved = sitk.ReadImage(str(ds.training[0].label))
    assert imageio.same_geometry(saved, image) is None
    assert saved.GetPixelID() == sitk.sitkUInt8
    assert set(np.unique(sitk.GetArrayViewFromImage(saved)).tolist()) == {0, 1}
    raw = json.loads((tmp_path / "pool" / "dataset.json").read_text())
    assert raw["training"] == [
        {"image": "images/US_volume_3.nii.gz", "label": "labels/US_volume_3.nii.gz", "center": list(moved)}
    ]
    leftovers = [p.name for p in (tmp_path / "pool").rglob(".*")]
    assert leftovers == []  # atomic writes leave no temporary files


def test_unlabelled_then_labelled_moves_the_case(tmp_path):
    image, label, center = _volume_and_label()
    result = dataset.add_to_pool(tmp_path, "case", image, None, center, unlabeled=True)
    assert result.case.section == "unlabeled" and not (tmp_path / "labels").exists()
    raw = json.loads((tmp_path / "dataset.json").read_text())
    assert raw["unlabeled"] == [{"image": "images/case.nii.gz", "center": list(center)}]
    again = dataset.add_to_pool(tmp_path, "case", image, None, center, unlabeled=True)
    assert again.updated and len(json.loads((tmp_path / "dataset.json").read_text())["unlabeled"]) == 1
    dataset.add_to_pool(tmp_path, "case", image, label, center)
    ds = dataset.load_dataset(tmp_path)
    assert [c.name for c in ds.training] == ["case"] and ds.unlabeled == []
    with pytest.raises(InputError, match="already in the labelled pool"):
        dataset.add_to_pool(tmp_path, "case", image, None, center, unlabeled=True)


def test_pool_errors_are_clear(tmp_path):
    image, label, center = _volume_and_label()
    empty = sitk.Image(image.GetSize(), sitk.sitkUInt8)
    empty.CopyInformation(image)
    with pytest.raises(InputError, match="segment is empty"):
        dataset.add_to_pool(tmp_path, "a", image, empty, center)
    shifted = sitk.Image(label)
    shifted.SetOrigin((0.0, 0.0, 0.0))
    with pytest.raises(InputError, match="does not match the volume's grid: origin"):
        dataset.add_to_pool(tmp_path, "a", image, shifted, center)
    with pytest.raises(InputError, match="outside the volume"):
        dataset.add_to_pool(tmp_path, "a", image, label, (500.0, 0.0, 0.0))
    with pytest.raises(InputError, match="no segmentation"):
        dataset.add_to_pool(tmp_path, "a", image, None, center)
    with pytest.raises(InputError, match="type a case name"):
        dataset.add_to_pool(tmp_path, "  ##  ", image, label, center)
    assert not (tmp_path / "dataset.json").exists()  # nothing half-written
    (tmp_path / "dataset.json").write_text("[1, 2]")
    with pytest.raises(DatasetError):
        dataset.add_to_pool(tmp_path, "a", image, label, center)


# ------------------------------------------------------------------------------- messages, processes


def test_user_messages_never_show_a_stack_trace():
    assert bridge.user_message(InputError("centre point (1, 2, 3) mm is outside the volume")) == (
        "centre point (1, 2, 3) mm is outside the volume"
    )
    gpu = bridge.user_message(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"), "cuda")
    assert gpu.startswith("Out of memory on the GPU") and "choose CPU" in gpu
    cpu = bridge.user_message(MemoryError(), "cpu")
    assert cpu.startswith("Out of memory on the computer") and "centre point" in cpu
    other = bridge.user_message(ValueError("bad thing\n  File 'x.py', line 3"))
    assert other == "Unexpected error (ValueError): bad thing"
    assert "Traceback" not in other and "missing" in bridge.user_message(ModuleNotFoundError(name="monai"))


def test_requirements_and_pins():
    lines = ["# comment", "", "monai>=1.3", "scipy>=1.10  # x", "scikit-image[data]>=0.2"]
    assert dependencies.requirement_names(lines) == [
        ("monai>=1.3", "monai"),
        ("scipy>=1.10", "scipy"),
        ("scikit-image[data]>=0.2", "scikit_image"),
    ]
    assert dependencies.dependency_constraints({"numpy": "1.26.4", "SimpleITK": None}) == "numpy==1.26.4\n"


def test_worker_command_and_progress_lines():
    args = bridge.segment_command(
        "/s/PythonSlicer",
        model="m",
        input_path="in.nrrd",
        output_path="out.nrrd",
        centers_lps=[(-1.5, 2, 3), (4, 5, 6.5)],
        uncertainty_path="u.nrrd",
        mc_samples=4,
        device="cuda",
    )
    assert args[:4] == ["/s/PythonSlicer", "-m", "SemiSupSegLib.cli", "segment"]
    assert args[args.index("--progress") + 1] == "json"
    assert [a for a in args if a.startswith("--center")] == ["--center=-1.5,2.0,3.0", "--center=4.0,5.0,6.5"]
    assert args[args.index("--mc-samples") + 1] == "4"
    assert "--probability" not in args
    assert parse_line('{"protocol": 1, "event": "progress", "fraction": 0.5}\n')["fraction"] == 0.5
    assert parse_line("UserWarning: something") is None
    assert parse_line(b"{broken") is None
    with pytest.raises(ProtocolError, match="protocol 2"):
        parse_line('{"protocol": 2, "event": "progress"}')


@pytest.mark.skipif(os.name == "nt", reason="POSIX process groups")
def test_kill_process_tree_ends_the_children_too():
    code = (
        "import subprocess, sys, time; "
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
        "print(p.pid, flush=True); time.sleep(60)"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, **popen_options()
    )
    child = int(proc.stdout.readline())
    kill_tree(proc)
    assert proc.poll() is not None
    for _ in range(50):
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        pytest.fail("the grandchild survived")


# ---------------------------------------------------------------------------------------- the worker


@pytest.fixture(scope="module")
def untrained_model(tmp_path_factory) -> Path:
    """A 0-step model on two synthetic 24^3 volumes: enough to exercise the worker's plumbing."""
    from SemiSupSegLib.training import TrainConfig, Trainer

    root = tmp_path_factory.mktemp("worker")
    rng = np.random.default_rng(0)
    entries = []
    for i in range(2):
        image = sitk.GetImageFromArray(rng.integers(0, 255, (24, 24, 24)).astype(np.uint8))
        image.SetSpacing((0.6, 0.6, 0.6))
        label = sitk.GetImageFromArray((np.arange(24**3).reshape(24, 24, 24) % 7 == 0).astype(np.uint8))
        label.CopyInformation(image)
        sitk.WriteImage(image, str(root / f"i{i}.nii.gz"))
        sitk.WriteImage(label, str(root / f"l{i}.nii.gz"))
        entries.append({"image": f"i{i}.nii.gz", "label": f"l{i}.nii.gz", "center": [7.0, 7.0, 7.0]})
    (root / "dataset.json").write_text(
        json.dumps({"labels": {"0": "background", "1": "instrument"}, "training": entries})
    )
    config = TrainConfig(
        data=str(root / "dataset.json"),
        out=str(root / "model"),
        steps=0,
        width=0.125,
        patch_size=(16, 16, 16),
        val_cases=0,
        device="cpu",
    )
    return Path(Trainer(config).run())


def test_background_segmentation_command_reports_json_lines(untrained_model, tmp_path, capsys):
    """The panel's command runs ``semisupseg segment --progress json``: protocol events only on stdout."""
    from SemiSupSegLib.cli import main

    geometry = _oblique_image((20, 18, 16))
    noise = np.random.default_rng(1).normal(size=(16, 18, 20)).astype(np.float32)  # a constant is refused
    image = sitk.GetImageFromArray(noise)
    image.CopyInformation(geometry)
    sitk.WriteImage(image, str(tmp_path / "in.nrrd"))
    center = image.TransformContinuousIndexToPhysicalPoint((10, 9, 8))
    args = bridge.segment_command(
        "python",
        model=str(untrained_model),
        input_path=str(tmp_path / "in.nrrd"),
        output_path=str(tmp_path / "seg.nrrd"),
        centers_lps=[center],
        probability_path=str(tmp_path / "p.nrrd"),
    )[3:]
    assert main(args) == 0
    lines = capsys.readouterr().out.splitlines()
    events = [parse_line(line) for line in lines]
    assert None not in events  # nothing but events on stdout
    kinds = [e["event"] for e in events]
    assert kinds[0] == "started" and kinds[-1] == "finished" and "progress" in kinds
    assert [e["fraction"] for e in events if e["event"] == "progress"][-1] == 1.0
    assert events[-1]["mode"] == "roi" and set(events[-1]["outputs"]) == {"label", "probability"}
    for name in ("seg.nrrd", "p.nrrd"):
        assert imageio.same_geometry(sitk.ReadImage(str(tmp_path / name)), image) is None

    args[args.index("--model") + 1] = str(tmp_path / "no-such-model")
    assert main(args) == 2
    captured = capsys.readouterr()
    error = parse_line(captured.out.splitlines()[-1])
    assert error["event"] == "error" and "not found" in error["message"]
    assert "Traceback" not in captured.out + captured.err


def test_the_panels_list_the_gpus_torch_sees_and_open_without_torch_or_cuda(monkeypatch):
    """Catches a panel list without the GPUs, one that imports torch before it is installed, and a panel
    that cannot open when CUDA is broken."""
    gpus = [("NVIDIA H200", 140 * 2**30)]
    assert bridge.panel_device_choices(lambda: gpus) == ["Auto", "CPU", "GPU 0: NVIDIA H200 (140 GiB)"]

    def broken():
        raise RuntimeError("CUDA driver initialization failed")

    assert bridge.panel_device_choices(broken) == list(bridge.DEVICE_CHOICES)
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real_find_spec(name, *a)
    )
    unused = lambda: pytest.fail("torch must not be imported")  # noqa: E731
    assert bridge.panel_device_choices(unused) == ["Auto", "GPU", "CPU"]
