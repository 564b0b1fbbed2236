"""Axis order and far-edge borders on data where getting them wrong shows.

Every volume here is non-cubic, anisotropic and rotated (a non-identity direction), every patch is
non-cubic, and the points of interest lie near the FAR corner of the volume, so swapping x,y,z for
z,y,x or clamping only at the near edge changes the result. The networks are stubs whose output is a
known function of the input, so the expected label is exact.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from stub_networks import ConstantNet, ThresholdNet, stub_model
from torch import nn

from SemiSupSegLib import inference
from SemiSupSegLib.locator.agent import QNetwork, QNetworkConfig
from SemiSupSegLib.locator.environment import grid_geometry, move, reward
from SemiSupSegLib.locator.store import Locator
from SemiSupSegLib.locator.train import all_action_outcomes
from SemiSupSegLib.model_store import LoadedModel
from SemiSupSegLib.patches import PatchSampler, prepare_case
from SemiSupSegLib.preprocessing import Preprocessing

SHAPE_ZYX = (40, 52, 72)  # array order; SimpleITK size (x, y, z) = (72, 52, 40)
SPACING = (0.5, 0.8, 1.1)  # (x, y, z) mm
ORIGIN = (12.0, -7.5, 3.25)
PATCH_ZYX = (16, 24, 32)
FAR_INDEX_XYZ = (69.3, 50.2, 38.6)  # continuous input index near the far corner


def _rotation(ax: float, ay: float, az: float) -> np.ndarray:
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


DIRECTION = _rotation(0.3, -0.5, 0.8)
locate_module = importlib.import_module("SemiSupSegLib.locator.locate")  # the package exports a function


def _volume(array_zyx: np.ndarray, spacing=SPACING) -> sitk.Image:
    """``array_zyx`` on the rotated anisotropic grid of this module."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(array_zyx))
    image.SetSpacing(spacing)
    image.SetOrigin(ORIGIN)
    image.SetDirection(DIRECTION.ravel().tolist())
    return image


def _far_point(image: sitk.Image) -> tuple[float, float, float]:
    return image.TransformContinuousIndexToPhysicalPoint(FAR_INDEX_XYZ)


def _model(net: nn.Module, target_spacing) -> LoadedModel:
    return stub_model({"stub": net}, PATCH_ZYX, target_spacing)


def _assert_on_grid_of(out: sitk.Image, image: sitk.Image) -> None:
    assert out.GetSize() == image.GetSize() and out.GetSpacing() == image.GetSpacing()
    assert out.GetOrigin() == image.GetOrigin() and out.GetDirection() == image.GetDirection()


# --------------------------------------------------------------------------------------- inference


def test_roi_label_is_exact_and_clamped_at_the_far_corner_with_non_cubic_patches():
    """At the input's own spacing the ROI samples are input voxels: the label is known exactly."""
    mask = np.random.default_rng(0).random(SHAPE_ZYX) < 0.3
    image = _volume(np.where(mask, 100.0, 0.0).astype(np.float32))
    prep = Preprocessing(target_spacing=SPACING)
    level = float(prep.normalize(np.array([0.0, 100.0]), prep.intensity_statistics(mask * 100.0)).mean())
    model = _model(ThresholdNet(level), SPACING)
    result = inference.segment(model, image, _far_point(image), roi_patches=2, precision="fp32")
    _assert_on_grid_of(result.label, image)
    # region (z, y, x) = 2 x patch = (32, 48, 64) voxels, pushed against the far corner of (40, 52, 72)
    expected = np.zeros(SHAPE_ZYX, np.uint8)
    expected[8:, 4:, 8:] = mask[8:, 4:, 8:]
    np.testing.assert_array_equal(sitk.GetArrayFromImage(result.label), expected)


def test_roi_extent_follows_the_target_spacing_on_each_axis_and_ends_at_the_far_edge():
    """At a target spacing of (2, 2, 1) times the input's (x, y, z), a 1-patch region of (16, 24, 32)
    voxels (z, y, x) covers (16, 48, 64) input voxels and is pushed against the far edge of each axis.

    A coarse grid's last sample is the input's next-to-last voxel (the resampled grid keeps the
    input's origin), so the footprint ends within one voxel of the far edge.
    """
    image = _volume(np.random.default_rng(1).random(SHAPE_ZYX).astype(np.float32))
    target = (2 * SPACING[0], 2 * SPACING[1], SPACING[2])
    result = inference.segment(
        _model(ConstantNet(), target), image, _far_point(image), roi_patches=1, precision="fp32"
    )
    _assert_on_grid_of(result.label, image)
    label = sitk.GetArrayFromImage(result.label).astype(bool)
    for axis, (n, extent) in enumerate(zip(SHAPE_ZYX, (16, 48, 64), strict=True)):
        covered = np.flatnonzero(label.any(axis=tuple(a for a in range(3) if a != axis)))
        name = "zyx"[axis]
        assert covered[-1] >= n - 2, f"axis {name}: region ends at {covered[-1]} of {n}"
        assert n - extent - 1 <= covered[0] <= n - extent, f"axis {name}: region starts at {covered[0]}"
    assert label.sum() == pytest.approx(16 * 48 * 64, rel=0.1)


# --------------------------------------------------------------------------------------- patches


def test_patches_are_centred_on_a_marker_given_as_an_lps_point():
    """A single bright marker voxel on a rotated anisotropic grid, resampled to twice its spacing:
    with no translation and no augmentation both patch kinds have the marker at their centre."""
    marker_xyz = (36, 20, 8)  # even: a voxel of the 2x-coarser grid, so resampling keeps it sharp
    label_array = np.zeros(SHAPE_ZYX, np.uint8)
    label_array[marker_xyz[::-1]] = 1
    image = _volume(100.0 * label_array.astype(np.float32))
    label = _volume(label_array)
    point = image.TransformContinuousIndexToPhysicalPoint(marker_xyz)
    prep = Preprocessing(target_spacing=tuple(2 * s for s in SPACING))
    case = prepare_case("marker", image, label, point, prep)
    sampler = PatchSampler(
        [case], [case], PATCH_ZYX, seed=0, translation=0, random_fraction=0.0, augment=False
    )
    images, labels = sampler.labeled_batch(1)
    middle = tuple(p // 2 for p in PATCH_ZYX)
    assert images.shape[2:] == PATCH_ZYX
    assert np.unravel_index(int(images[0, 0].argmax()), PATCH_ZYX) == middle
    assert np.argwhere(labels[0, 0].numpy()).tolist() == [list(middle)]
    unlabeled = sampler.unlabeled_batch(1)
    assert np.unravel_index(int(unlabeled[0, 0].argmax()), PATCH_ZYX) == middle


# --------------------------------------------------------------------------------------- locator


def _locator_geometry():
    """A 24³ locator grid over the rotated anisotropic volume: voxels of 1.83, 1.73 and 1.5 mm (z, y, x)."""
    image = sitk.Image(SHAPE_ZYX[::-1], sitk.sitkFloat32)
    image.SetSpacing(SPACING)
    image.SetOrigin(ORIGIN)
    image.SetDirection(DIRECTION.ravel().tolist())
    return grid_geometry(image, 24)


def _mm(geometry, a, b) -> np.ndarray:
    """Physical distance of grid indices (z, y, x), through the grid's own index-to-LPS mapping."""
    pairs = zip(a, b, strict=True)
    return np.array([np.linalg.norm(geometry.to_physical(p) - geometry.to_physical(q)) for p, q in pairs])


def test_locator_reward_is_the_decrease_in_physical_distance_on_an_anisotropic_grid():
    geometry = _locator_geometry()
    assert len(set(np.round(geometry.spacing, 6))) == 3  # the three axes really differ
    positions = np.array([[3, 5, 7], [20, 2, 11], [12, 12, 12], [6, 18, 1], [9, 4, 20], [15, 9, 3]])
    targets = np.array([[10, 4, 2], [4, 15, 11], [12, 3, 20], [1, 10, 14], [9, 4, 8], [7, 20, 19]])
    actions = np.arange(6)
    new, refused = move(positions, actions, np.full(6, 2), grid=24)
    assert not refused.any()
    expected = _mm(geometry, positions, targets) - _mm(geometry, new, targets)
    got = reward(positions, new, targets, geometry.spacing_zyx, refused)
    np.testing.assert_allclose(got, expected, rtol=1e-9)
    # training scores all 6 moves alike, each divided by the step length in mm (mean spacing)
    spacing = np.stack([geometry.spacing_zyx] * 6)
    nexts, rewards = all_action_outcomes(positions, np.full(6, 2), targets, spacing, 24)
    before = np.repeat(positions, 6, axis=0)
    gain = _mm(geometry, before, np.repeat(targets, 6, axis=0)) - _mm(
        geometry, nexts.reshape(-1, 3), np.repeat(targets, 6, axis=0)
    )
    stayed = (nexts.reshape(-1, 3) == before).all(axis=1)
    scaled = np.clip(gain / (2 * geometry.spacing_zyx.mean()), -1.0, 1.0)
    np.testing.assert_allclose(rewards.ravel(), np.where(stayed, -1.0, scaled), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("axis", [0, 1, 2], ids=["z", "y", "x"])
@pytest.mark.parametrize("step", [1, 3])
def test_a_locator_move_off_the_far_edge_is_refused_and_one_onto_it_is_not(axis, step):
    grid = 24
    action = 2 * axis  # the + move along this axis
    inside = np.array([[5, 7, 9]])
    on_edge, refused = move(np.where(np.arange(3) == axis, grid - 1 - step, inside), [action], [step], grid)
    assert not refused[0] and on_edge[0, axis] == grid - 1  # landing on the last voxel is allowed
    for start in sorted({grid - 1, grid - step}):  # from the edge, or a partial step short of it
        position = np.where(np.arange(3) == axis, start, inside)
        stay, refused = move(position, [action], [step], grid)
        assert refused[0] and (stay == position).all()
        target = np.where(np.arange(3) == axis, 0, inside)
        assert reward(position, stay, target, np.ones(3), refused)[0] == -1.0


def test_located_grid_point_maps_to_its_lps_point_on_a_rotated_anisotropic_volume(monkeypatch):
    """The locator's 16³ grid spans the input's voxel edges: grid index g (z, y, x) is the input's
    continuous index ``(g + 0.5) * n / 16 - 0.5`` per axis (x, y, z after reversing)."""
    grid_point = np.array([13.0, 2.0, 9.0])  # z, y, x: every axis different, none at the centre
    monkeypatch.setattr(locate_module, "search_volume", lambda *args, **kwargs: (grid_point, -0.1))
    image = _volume(np.random.default_rng(0).random(SHAPE_ZYX, np.float32))  # not constant: refused
    meta = {"grid_size": 16, "crop_size": 9, "scales": [3, 1]}
    locator = Locator(Path("stub-locator"), meta, QNetwork(QNetworkConfig(crop=9, n_scales=2, width=4)))
    found = locate_module.locate(locator, image, starts=1)
    index_xyz = (grid_point[::-1] + 0.5) * np.asarray(image.GetSize()) / 16 - 0.5
    np.testing.assert_allclose(found.index_xyz, index_xyz, atol=1e-6)
    expected = image.TransformContinuousIndexToPhysicalPoint(tuple(float(i) for i in index_xyz))
    np.testing.assert_allclose(found.point_lps, expected, atol=1e-6)
    assert found.grid_index_zyx == tuple(grid_point)
