"""Tests of the synthetic ultrasound phantom generator (SemiSupSegLib.phantom)."""

from __future__ import annotations

import functools
import json
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage, sparse
from scipy.sparse import csgraph

from SemiSupSegLib.errors import InputError
from SemiSupSegLib.phantom import PhantomCase, case_seed, generate_phantom, write_phantom_dataset

KINDS = ("catheter", "guidewire")
HARD_DICE = 0.35


@functools.lru_cache(maxsize=32)
def _case(size: int, kind: str, seed: int) -> PhantomCase:
    return generate_phantom(size, kind, seed)


def _arrays(case: PhantomCase) -> tuple[np.ndarray, np.ndarray]:
    return sitk.GetArrayFromImage(case.image), sitk.GetArrayFromImage(case.label)


def best_threshold_dice(image: np.ndarray, label: np.ndarray) -> float:
    """Best Dice of ``image >= t`` against ``label`` over every threshold t (uint8 histogram, vectorised)."""
    hist_all = np.bincount(image.ravel(), minlength=256)
    hist_label = np.bincount(image.ravel()[label.ravel() > 0], minlength=256)
    predicted = np.cumsum(hist_all[::-1])[::-1]
    true_pos = np.cumsum(hist_label[::-1])[::-1]
    return float(np.max(2.0 * true_pos / (predicted + label.sum())))


def tube_diameter(label: np.ndarray, spacing_zyx: np.ndarray) -> float:
    """Diameter (mm) of the largest tube in ``label``: 2 sqrt(volume / (pi * length)).

    The length is the geodesic diameter of the 26-connected voxel graph (two Dijkstra sweeps).
    """
    components, _ = ndimage.label(label, structure=np.ones((3, 3, 3)))
    largest = np.argmax(np.bincount(components.ravel())[1:]) + 1
    coords = np.argwhere(components == largest)
    index = -np.ones(label.shape, np.int64)
    index[tuple(coords.T)] = np.arange(len(coords))
    rows, cols, weights = [], [], []
    for offset in np.argwhere(np.ones((3, 3, 3))) - 1:
        if tuple(offset) <= (0, 0, 0):
            continue
        neighbour = coords + offset
        inside = np.all((neighbour >= 0) & (neighbour < label.shape), axis=1)
        j = index[tuple(neighbour[inside].T)]
        rows.append(np.flatnonzero(inside)[j >= 0])
        cols.append(j[j >= 0])
        weights.append(np.full(int((j >= 0).sum()), np.linalg.norm(offset * spacing_zyx)))
    graph = sparse.coo_matrix(
        (np.concatenate(weights), (np.concatenate(rows), np.concatenate(cols))), shape=(len(coords),) * 2
    ).tocsr()
    far = int(np.argmax(csgraph.dijkstra(graph, directed=False, indices=0)))
    length = float(csgraph.dijkstra(graph, directed=False, indices=far).max())
    volume = len(coords) * float(np.prod(spacing_zyx))
    return 2.0 * np.sqrt(volume / (np.pi * length))


def test_helpers_can_fail() -> None:
    label = np.zeros((40, 40, 40), np.uint8)
    label[20, 20, 5:35] = 1
    assert best_threshold_dice((label * 200).astype(np.uint8), label) == pytest.approx(1.0)
    noisy = np.random.default_rng(0).integers(0, 256, label.shape).astype(np.uint8)
    assert best_threshold_dice(noisy, label) < 0.1
    tube = np.zeros((60, 60, 60), np.uint8)
    zz, yy, _ = np.indices(tube.shape)
    tube[((zz - 30) ** 2 + (yy - 30) ** 2 <= 16) & (np.arange(60) >= 5) & (np.arange(60) < 55)] = 1
    assert tube_diameter(tube, np.array([0.5, 0.5, 0.5])) == pytest.approx(4.0, abs=0.3)


@pytest.mark.parametrize("kind", KINDS)
def test_deterministic(kind: str) -> None:
    a, b, c = generate_phantom(64, kind, 7), generate_phantom(64, kind, 7), generate_phantom(64, kind, 8)
    for x, y in ((a.image, b.image), (a.label, b.label)):
        assert np.array_equal(sitk.GetArrayFromImage(x), sitk.GetArrayFromImage(y))
    assert a.center == b.center
    assert a.image.GetSpacing() == b.image.GetSpacing()
    assert not np.array_equal(sitk.GetArrayFromImage(a.image), sitk.GetArrayFromImage(c.image))
    assert not np.array_equal(sitk.GetArrayFromImage(a.label), sitk.GetArrayFromImage(c.label))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("seed", [0, 1])
def test_geometry_and_field_of_view(kind: str, seed: int) -> None:
    case = _case(64, kind, seed)
    image, label = _arrays(case)
    assert case.kind == kind
    assert case.image.GetSize() == (64, 64, 64) == case.label.GetSize()
    assert case.image.GetPixelID() == sitk.sitkUInt8 and case.label.GetPixelID() == sitk.sitkUInt8
    for getter in ("GetSpacing", "GetOrigin", "GetDirection"):
        assert getattr(case.label, getter)() == pytest.approx(getattr(case.image, getter)())
    assert case.image.GetDirection() == pytest.approx(np.eye(3).ravel())
    spacing = case.image.GetSpacing()
    assert 0.4 <= spacing[0] <= 0.7 and spacing[0] == spacing[1] == spacing[2]
    assert set(np.unique(label)) == {0, 1}
    corners = image[np.ix_([0, -1], [0, -1], [0, -1])]
    assert np.all(corners == 0)
    assert 0.35 < np.mean(image > 0) < 0.9
    assert np.mean(image[0] > 0) < 0.05, "the probe apex is at the top: the first slice is almost empty"
    assert np.mean(image[-1] > 0) > 0.5
    assert np.all(image[label > 0] > 0), "the label stays inside the field of view"


def test_spacing_override_and_shape() -> None:
    case = generate_phantom((48, 56, 64), "catheter", 3, spacing=(0.5, 0.6, 0.7))
    assert case.image.GetSize() == (48, 56, 64)
    assert case.image.GetSpacing() == pytest.approx((0.5, 0.6, 0.7))
    assert generate_phantom(48, "guidewire", 3, spacing=0.3).image.GetSpacing() == pytest.approx((0.3,) * 3)
    centre_index = case.image.TransformPhysicalPointToContinuousIndex((0.0, 0.0, 0.0))
    assert centre_index == pytest.approx(((48 - 1) / 2, (56 - 1) / 2, (64 - 1) / 2))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_center_on_instrument(kind: str, seed: int) -> None:
    case = _case(64, kind, seed)
    image, label = _arrays(case)
    index = case.label.TransformPhysicalPointToIndex(case.center)
    assert case.label[index] == 1
    k, j, i = index[::-1]
    patch = label[max(k - 24, 0) : k + 24, max(j - 24, 0) : j + 24, max(i - 24, 0) : i + 24]
    assert patch.sum() > 0.3 * label.sum() or patch.sum() > 40, "the centre is within the instrument's extent"


@pytest.mark.parametrize("kind, low, high", [("catheter", 2.0, 3.6), ("guidewire", 0.6, 1.3)])
def test_instrument_diameter(kind: str, low: float, high: float) -> None:
    for seed in range(3):
        case = _case(96, kind, seed)
        _, label = _arrays(case)
        diameter = tube_diameter(label, np.array(case.image.GetSpacing()[::-1]))
        assert low <= diameter <= high, f"{kind} seed {seed}: diameter {diameter:.2f} mm"


@pytest.mark.parametrize("kind", KINDS)
def test_global_threshold_fails_but_instrument_is_visible(kind: str) -> None:
    for seed in range(3):
        image, label = _arrays(_case(96, kind, seed))
        dice = best_threshold_dice(image, label)
        print(f"{kind} seed {seed}: best global threshold Dice {dice:.3f}")
        assert dice < HARD_DICE
        inside = image[label > 0].astype(float)
        fov = image[image > 0].astype(float)
        assert inside.mean() > fov.mean() + 20, "the instrument is brighter than the average of the sector"
        assert np.median(inside) > np.median(fov)


@pytest.mark.parametrize("kind", KINDS)
def test_generation_time_160(kind: str) -> None:
    generate_phantom(32, kind, 0)
    start = time.perf_counter()
    case = generate_phantom(160, kind, 11)
    elapsed = time.perf_counter() - start
    print(f"160^3 {kind}: {elapsed:.2f} s")
    assert case.image.GetSize() == (160, 160, 160)
    assert elapsed < 3.0


def test_write_dataset(tmp_path: Path) -> None:
    monai_data = pytest.importorskip("monai.data")
    calls = []
    path = write_phantom_dataset(
        tmp_path / "ds",
        cases=2,
        seed=4,
        size=48,
        unlabeled=1,
        test=1,
        progress=lambda d, t: calls.append((d, t)),
    )
    assert path == tmp_path / "ds" / "dataset.json"
    assert calls == [(1, 4), (2, 4), (3, 4), (4, 4)]
    data = json.loads(path.read_text())
    assert data["name"] == "phantom-catheter" and data["modality"] == {"0": "US"}
    assert data["labels"] == {"0": "background", "1": "instrument"}
    assert (data["numTraining"], data["numUnlabeled"], data["numTest"]) == (2, 1, 1)
    assert data["generator"]["seed"] == 4 and data["generator"]["kind"] == "catheter"
    assert data["generator"]["size"] == [48, 48, 48]
    assert [len(data[k]) for k in ("training", "unlabeled", "test")] == [2, 1, 1]
    assert "label" not in data["unlabeled"][0]
    names = [e["image"] for k in ("training", "unlabeled", "test") for e in data[k]]
    assert len(set(names)) == 4
    for entry in data["training"] + data["unlabeled"] + data["test"]:
        assert entry["image"].startswith("images/") and (path.parent / entry["image"]).is_file()
        assert len(entry["center"]) == 3 and all(isinstance(c, float) for c in entry["center"])
        if "label" in entry:
            label = sitk.ReadImage(str(path.parent / entry["label"]))
            assert label[label.TransformPhysicalPointToIndex(entry["center"])] == 1
    expected = generate_phantom(48, "catheter", case_seed(4, 1))
    assert data["training"][1]["center"] == pytest.approx(list(expected.center))
    written = sitk.ReadImage(str(path.parent / data["training"][1]["image"]))
    assert np.array_equal(sitk.GetArrayFromImage(written), sitk.GetArrayFromImage(expected.image))
    assert written.GetSpacing() == pytest.approx(expected.image.GetSpacing())
    assert not list(path.parent.rglob(".*tmp*")), "no temporary files left behind"
    datalist = monai_data.load_decathlon_datalist(str(path), is_segmentation=True, data_list_key="training")
    assert len(datalist) == 2
    for item in datalist:
        assert Path(item["image"]).is_absolute() and Path(item["image"]).is_file()
        assert Path(item["label"]).is_absolute() and Path(item["label"]).is_file()


def test_parallel_workers_write_the_same_dataset(tmp_path: Path) -> None:
    """workers=2 renders in other processes; files and dataset.json must equal the sequential ones."""
    kwargs = {"cases": 2, "seed": 7, "size": 32, "unlabeled": 1, "test": 1, "profile": "random"}
    calls = []
    serial = write_phantom_dataset(tmp_path / "serial", **kwargs)
    parallel = write_phantom_dataset(
        tmp_path / "parallel", workers=2, progress=lambda d, t: calls.append((d, t)), **kwargs
    )
    assert calls == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert json.loads(serial.read_text()) == json.loads(parallel.read_text())
    files = sorted(p.relative_to(serial.parent) for p in serial.parent.rglob("*.nii.gz"))
    assert len(files) == 7  # 4 images, 3 labels (the unlabelled case has none)
    for name in files:
        a, b = (sitk.ReadImage(str(root.parent / name)) for root in (serial, parallel))
        assert np.array_equal(sitk.GetArrayFromImage(a), sitk.GetArrayFromImage(b)), name
        assert a.GetSpacing() == b.GetSpacing() and a.GetOrigin() == b.GetOrigin()


def test_case_seeds_are_distinct() -> None:
    seeds = {
        case_seed(s, i, split)
        for s in range(3)
        for i in range(50)
        for split in ("training", "unlabeled", "test")
    }
    assert len(seeds) == 3 * 50 * 3


@pytest.mark.parametrize(
    "kwargs",
    [
        {"kind": "needle"},
        {"size": 16},
        {"size": (64, 64)},
        {"size": (64, 64, 31)},
        {"spacing": 0.0},
        {"spacing": -0.5},
        {"spacing": (0.5, 0.5)},
        {"spacing": (0.5, float("nan"), 0.5)},
        {"seed": -1},
    ],
)
def test_generate_bad_arguments(kwargs: dict) -> None:
    with pytest.raises(InputError):
        generate_phantom(**{"size": 48, **kwargs})


@pytest.mark.parametrize(
    "kwargs",
    [
        {"cases": -1},
        {"unlabeled": -2},
        {"test": -1},
        {"kind": "wire"},
        {"size": 8},
        {"size": 2000},
        {"spacing": 0},
        {"workers": 0},
        {"workers": 100000},
    ],
)
def test_dataset_bad_arguments(tmp_path: Path, kwargs: dict) -> None:
    with pytest.raises(InputError):
        write_phantom_dataset(tmp_path / "bad", **{"cases": 1, "size": 48, **kwargs})
    assert not (tmp_path / "bad" / "dataset.json").exists()
