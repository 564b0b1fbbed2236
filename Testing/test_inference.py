"""Tests of SemiSupSegLib.inference: output geometry, physical placement, ROI clamping, averaging, MC."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from stub_networks import ConstantNet, ThresholdNet, halfway_level, stub_model
from torch import nn

from SemiSupSegLib import inference
from SemiSupSegLib.errors import InputError, ModelError
from SemiSupSegLib.model_store import LoadedModel
from SemiSupSegLib.networks import CompactUNet, set_mc_dropout

SPACING = (0.4, 0.55, 0.7)
TARGET = (0.5, 0.5, 0.5)
SIZE = (64, 56, 48)
SPHERE_A = np.array([8.0, 9.0, 10.0])  # mm along the image axes from the first voxel centre
SPHERE_B = np.array([21.0, 24.0, 27.0])  # more than an ROI half-width (8 mm) away from A on every axis
RADIUS = 3.0


def _rotation(ax: float, ay: float, az: float) -> np.ndarray:
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


DIRECTION = _rotation(0.3, -0.5, 0.8)
ORIGIN = (12.0, -7.5, 3.25)


def _image(size=SIZE, spacing=SPACING, spheres=(SPHERE_A, SPHERE_B)) -> tuple[sitk.Image, np.ndarray]:
    """A rotated anisotropic volume with bright spheres (100) on 0; returns the image and the sphere mask."""
    zz, yy, xx = np.meshgrid(
        *(np.arange(n) * s for n, s in zip(size[::-1], spacing[::-1], strict=True)), indexing="ij"
    )
    mask = np.zeros(size[::-1], dtype=bool)
    for c in spheres:
        mask |= (xx - c[0]) ** 2 + (yy - c[1]) ** 2 + (zz - c[2]) ** 2 <= RADIUS**2
    image = sitk.GetImageFromArray(np.where(mask, 100.0, 0.0).astype(np.float32))
    image.SetSpacing(spacing)
    image.SetOrigin(ORIGIN)
    image.SetDirection(DIRECTION.ravel().tolist())
    return image, mask


def _physical(image: sitk.Image, axes_mm: np.ndarray) -> tuple[float, float, float]:
    """LPS point of a position given in mm along the image axes from the first voxel centre."""
    index = np.asarray(axes_mm) / np.asarray(image.GetSpacing())
    return image.TransformContinuousIndexToPhysicalPoint(tuple(float(i) for i in index))


def _model(networks: dict, patch=16, target=TARGET, inference_networks=None) -> LoadedModel:
    return stub_model(networks, patch, target, inference_networks)


def _sphere_model(image: sitk.Image, patch=16) -> LoadedModel:
    """A model whose fake network thresholds the normalised input half-way between background and sphere."""
    level = halfway_level(image, 0.0, 100.0, TARGET)
    return _model({"threshold": ThresholdNet(level)}, patch=patch)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    return 2.0 * np.count_nonzero(a & b) / max(1, np.count_nonzero(a) + np.count_nonzero(b))


def _assert_same_grid(out: sitk.Image, ref: sitk.Image) -> None:
    assert out.GetSize() == ref.GetSize()
    assert out.GetSpacing() == ref.GetSpacing()
    assert out.GetOrigin() == ref.GetOrigin()
    assert out.GetDirection() == ref.GetDirection()


def _mask_of(image: sitk.Image, spheres) -> np.ndarray:
    return _image(image.GetSize(), image.GetSpacing(), spheres)[1]


# --------------------------------------------------------------------------- geometry and placement


def test_roi_output_is_exactly_on_the_input_grid_and_in_the_right_place():
    image, _ = _image()
    result = inference.segment(_sphere_model(image), image, _physical(image, SPHERE_A), precision="fp32")
    assert result.mode == "roi"
    for out in (result.label, result.probability):
        _assert_same_grid(out, image)
    assert result.label.GetPixelID() == sitk.sitkUInt8
    assert result.probability.GetPixelID() == sitk.sitkFloat32
    assert result.uncertainty is None
    label = sitk.GetArrayFromImage(result.label)
    assert set(np.unique(label)) <= {0, 1}
    # Sphere A (at the centre point) is found; sphere B lies outside the ROI so it is not.
    assert _dice(label, _mask_of(image, [SPHERE_A])) > 0.85
    assert np.count_nonzero(label & _mask_of(image, [SPHERE_B])) == 0


def test_sliding_window_finds_every_sphere_on_a_rotated_anisotropic_input():
    image, mask = _image()
    result = inference.segment(_sphere_model(image), image, None, precision="fp32")
    assert result.mode == "sliding-window" and result.center is None
    _assert_same_grid(result.label, image)
    _assert_same_grid(result.probability, image)
    assert _dice(sitk.GetArrayFromImage(result.label), mask) > 0.85


def test_roi_and_sliding_window_agree_inside_the_roi():
    image, _ = _image()
    model = _sphere_model(image)
    center = _physical(image, SPHERE_A)
    roi = sitk.GetArrayFromImage(inference.segment(model, image, center, precision="fp32").probability)
    whole = sitk.GetArrayFromImage(inference.segment(model, image, None, precision="fp32").probability)
    near_a = _mask_of(image, [SPHERE_A])
    assert np.abs(roi[near_a] - whole[near_a]).max() < 1e-4


def test_roi_grid_is_centred_on_the_point_with_the_input_direction():
    image, _ = _image()
    center = _physical(image, SPHERE_A + 0.25)
    grid = inference.roi_grid(image, center, TARGET, (32, 32, 32))
    assert grid.GetSize() == (32, 32, 32)
    assert np.allclose(grid.GetSpacing(), TARGET)
    assert np.allclose(grid.GetDirection(), image.GetDirection())
    middle = grid.TransformContinuousIndexToPhysicalPoint((15.5, 15.5, 15.5))
    assert np.linalg.norm(np.subtract(middle, center)) <= 0.5 * math.sqrt(3) * 0.5 + 1e-6


def _roi_corners_in_input_index(image: sitk.Image, grid: sitk.Image) -> np.ndarray:
    """Input continuous indices of the centres of the 8 corner voxels of the ROI."""
    n = np.asarray(grid.GetSize()) - 1.0
    corners = [(x, y, z) for x in (0.0, n[0]) for y in (0.0, n[1]) for z in (0.0, n[2])]
    points = [grid.TransformContinuousIndexToPhysicalPoint(c) for c in corners]
    return np.array([image.TransformPhysicalPointToContinuousIndex(p) for p in points])


def test_roi_is_clamped_inside_the_volume_near_a_corner():
    corner = np.array([1.0, 1.5, 2.0])
    image, _ = _image(spheres=(corner + RADIUS,))
    point = _physical(image, corner)
    grid = inference.roi_grid(image, point, TARGET, (32, 32, 32))
    index = _roi_corners_in_input_index(image, grid)
    size = np.asarray(image.GetSize())
    assert np.all(index >= -0.5 - 1e-6) and np.all(index <= size - 0.5 + 1e-6)
    # every ROI sample lies inside the volume, and the ROI is pushed against the corner
    assert np.allclose(index.min(axis=0), 0.0, atol=1e-6)
    result = inference.segment(_sphere_model(image), image, point, precision="fp32")
    assert _dice(sitk.GetArrayFromImage(result.label), _mask_of(image, [corner + RADIUS])) > 0.8


def test_roi_larger_than_the_volume_is_padded_and_centred():
    size = (24, 20, 12)  # 8.4 mm along z at 0.7 mm: shorter than a 16 mm ROI
    center_mm = np.array([4.6, 5.2, 3.9])
    image, mask = _image(size=size, spheres=(center_mm,))
    start = inference.roi_start(image, _physical(image, center_mm), TARGET, (32, 32, 32))
    n_target = np.round(np.asarray(size) * np.asarray(SPACING) / 0.5).astype(int)
    assert np.all(start <= 0) and np.all(start + 32 >= n_target)
    result = inference.segment(_sphere_model(image), image, _physical(image, center_mm), precision="fp32")
    _assert_same_grid(result.label, image)
    assert _dice(sitk.GetArrayFromImage(result.label), mask) > 0.8


def test_region_goes_through_the_network_as_one_window():
    """A net that outputs its input window's mean gives ONE value over the region (issue 12: no patches,
    so no seam at the centre point), the sigmoid of the whole normalised region's mean."""

    class WindowMean(nn.Module):
        def forward(self, x):
            mean = x.mean(dim=(2, 3, 4), keepdim=True).expand_as(x)
            return torch.cat([torch.zeros_like(x), mean], dim=1)

    image, _ = _image(spheres=(SPHERE_A,))
    model = _model({"mean": WindowMean()}, patch=16)
    center = _physical(image, SPHERE_A)
    ctx = inference._make_context(model, image, "fp32", 0, False)
    fg, _, grid = inference._segment_roi(ctx, image, center, 2, lambda *a: None)
    assert grid.GetSize() == (32, 32, 32)
    region = ctx.tensor(inference._resample_onto(image, grid, ctx.background)).numpy()
    assert np.allclose(fg, 1 / (1 + np.exp(-region.mean())), atol=1e-5)


# --------------------------------------------------------------------------- networks and precision


def test_inference_networks_are_averaged():
    image, _ = _image(size=(40, 36, 32))
    nets = {"a": ConstantNet(0.2), "b": ConstantNet(0.6), "unused": ConstantNet(0.99)}
    model = _model(nets, inference_networks=["a", "b"])
    center = image.TransformContinuousIndexToPhysicalPoint((20.0, 18.0, 16.0))
    result = inference.segment(model, image, center, precision="fp32", threshold=0.3)
    prob = sitk.GetArrayFromImage(result.probability)
    label = sitk.GetArrayFromImage(result.label)
    inside = prob > 0
    assert inside.mean() > 0.5
    assert np.allclose(prob[inside & (prob > 0.39)], 0.4, atol=1e-5)
    assert np.allclose(np.percentile(prob[inside], 90), 0.4, atol=1e-5)
    assert np.array_equal(label.astype(bool), prob > 0.3)


def test_predict_batch_matches_direct_forward_and_leaves_modes_alone():
    torch.manual_seed(0)
    net = CompactUNet(width=0.125, dropout=0.5)
    net.train()
    batch = torch.randn(3, 1, 16, 16, 16)
    probs = inference.predict_batch([net], batch, "fp32", channels_last=False, memory_budget=1)
    assert net.training and all(m.training for m in net.modules())  # modes restored
    net.eval()
    with torch.no_grad():
        expected = torch.softmax(net(batch), dim=1)
    assert torch.allclose(probs, expected, atol=1e-5)
    channels_last = inference.predict_batch([net], batch, "fp32", channels_last=True)
    assert torch.allclose(channels_last, expected, atol=1e-4)
    assert net.enc1[0][1].weight.is_contiguous()  # the caller's network is not converted


def test_bf16_stays_close_to_fp32():
    torch.manual_seed(1)
    net = CompactUNet(width=0.125, dropout=0.0).eval()
    batch = torch.randn(2, 1, 16, 16, 16)
    fp32 = inference.predict_batch([net], batch, "fp32")
    bf16 = inference.predict_batch([net], batch, "bf16")
    assert (fp32 - bf16).abs().max() < 0.05


def test_auto_precision_resolves_to_a_supported_one():
    chosen = inference.resolve_precision("auto", "cpu")
    assert chosen == ("bf16" if inference.bf16_native("cpu") else "fp32")
    assert inference.resolve_precision("fp32", "cpu") == "fp32"
    with pytest.raises(InputError, match="fp16"):
        inference.resolve_precision("fp16", "cpu")


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ({"avx512f", "avx512bw"}, "fp32"),
        ({"avx512f", "avx512_bf16"}, "bf16"),
        ({"amx_bf16"}, "bf16"),
        (None, "bf16"),
    ],
)
def test_auto_chooses_bf16_on_the_cpu_only_with_bf16_instructions(monkeypatch, flags, expected):
    """oneDNN emulates bf16 on plain AVX-512 (twice as slow as fp32 here); auto must not pick it there."""
    monkeypatch.setattr(inference, "bf16_supported", lambda device: True)  # what oneDNN says on AVX-512
    monkeypatch.setattr(inference, "_cpu_flags", lambda: flags)  # None: no /proc/cpuinfo (macOS, Windows)
    assert inference.resolve_precision("auto", "cpu") == expected
    monkeypatch.setattr(inference, "bf16_supported", lambda device: False)
    assert inference.resolve_precision("auto", "cpu") == "fp32"


def test_three_class_foreground_is_one_minus_background():
    probs = torch.tensor([[0.2, 0.5, 0.3], [0.7, 0.1, 0.2]]).reshape(2, 3, 1, 1, 1)
    assert torch.allclose(inference.foreground_probability(probs).flatten(), torch.tensor([0.8, 0.3]))


# --------------------------------------------------------------------------- Monte-Carlo dropout


def test_mc_passes_are_one_batched_forward_with_dropout_on_and_batchnorm_off():
    torch.manual_seed(2)
    net = CompactUNet(width=0.125, dropout=0.5).eval()
    seen = {"batch": [], "dropout": set(), "batchnorm": set()}
    net.register_forward_pre_hook(lambda m, args: seen["batch"].append(args[0].shape[0]))
    for module in net.modules():
        if isinstance(module, (nn.Dropout, nn.Dropout3d)):
            module.register_forward_pre_hook(lambda m, a: seen["dropout"].add(m.training))
        if isinstance(module, nn.BatchNorm3d):
            module.register_forward_pre_hook(lambda m, a: seen["batchnorm"].add(m.training))
    batch = torch.randn(2, 1, 16, 16, 16)
    gen = torch.Generator().manual_seed(0)
    u = inference.mc_entropy([net], batch, 5, gen, channels_last=False)
    assert seen["batch"] == [10] and seen["dropout"] == {True} and seen["batchnorm"] == {False}
    assert not any(m.training for m in net.modules())
    assert u.shape == (2, 16, 16, 16)
    assert torch.isfinite(u).all() and (u >= 0).all() and (u <= math.log(2) + 1e-6).all()


def test_mc_chunks_only_above_the_memory_budget():
    net = CompactUNet(width=0.125, dropout=0.5).eval()
    sizes = []
    net.register_forward_pre_hook(lambda m, args: sizes.append(args[0].shape[0]))
    batch = torch.randn(2, 1, 16, 16, 16)
    per_patch = inference._bytes_per_patch([net], 16**3, "fp32")
    inference.mc_probabilities(
        [net], batch, 3, precision="fp32", channels_last=False, memory_budget=4 * per_patch
    )
    assert sizes == [4, 2]


def test_dropout_changes_the_passes():
    torch.manual_seed(3)
    with_dropout = CompactUNet(width=0.125, dropout=0.5).eval()
    without = CompactUNet(width=0.125, dropout=0.0).eval()
    without.load_state_dict(with_dropout.state_dict())
    batch = torch.randn(1, 1, 16, 16, 16)
    # Without dropout nor noise every pass is the deterministic one: entropy of the plain softmax.
    old = inference.MC_NOISE_STD
    try:
        inference.MC_NOISE_STD = 0.0
        p_plain = inference.predict_batch([without], batch, "fp32")
        p_mc = inference.mc_probabilities([without], batch, 4, precision="fp32")
        assert torch.allclose(p_plain, p_mc, atol=1e-5)
        p_drop = inference.mc_probabilities([with_dropout], batch, 4, precision="fp32")
        assert (p_drop - p_plain).abs().max() > 1e-3
    finally:
        inference.MC_NOISE_STD = old


def test_mc_noise_is_clipped():
    gen = torch.Generator().manual_seed(0)
    x = torch.zeros(50, 1, 4, 4, 4)
    noisy = inference.mc_inputs(x, 2, gen)
    assert noisy.shape == (100, 1, 4, 4, 4)
    assert noisy.abs().max() <= 0.2 + 1e-7 and noisy.std() > 0.05


def test_uncertainty_map_in_roi_mode():
    torch.manual_seed(4)
    image, _ = _image(size=(48, 40, 36))
    net = CompactUNet(width=0.125, dropout=0.5).eval()
    model = _model({"net": net})
    center = image.TransformContinuousIndexToPhysicalPoint((24.0, 20.0, 18.0))
    result = inference.segment(model, image, center, mc_samples=3, precision="fp32")
    plain = inference.segment(model, image, center, precision="fp32")
    _assert_same_grid(result.uncertainty, image)
    u = sitk.GetArrayFromImage(result.uncertainty)
    assert np.isfinite(u).all() and u.min() >= 0 and u.max() <= math.log(2) + 1e-6
    assert u.max() > 0.01
    outside = sitk.GetArrayFromImage(result.probability) == 0  # outside the ROI
    footprint = _roi_footprint(image, inference.roi_grid(image, center, TARGET, (32, 32, 32)))
    assert np.all(u[~footprint] == 0) and np.any(~footprint)
    assert np.all(outside[~footprint])
    # the probability is still the deterministic one
    assert np.array_equal(
        sitk.GetArrayFromImage(result.probability), sitk.GetArrayFromImage(plain.probability)
    )


def _roi_footprint(image: sitk.Image, grid: sitk.Image) -> np.ndarray:
    ones = sitk.Image(grid.GetSize(), sitk.sitkUInt8) + 1
    ones.CopyInformation(grid)
    return (
        sitk.GetArrayFromImage(sitk.Resample(ones, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0)) > 0
    )


def test_uncertainty_in_sliding_window_mode():
    torch.manual_seed(5)
    image, _ = _image(size=(32, 28, 24))
    model = _model({"net": CompactUNet(width=0.125, dropout=0.5).eval()})
    result = inference.segment(model, image, None, mc_samples=2, precision="fp32")
    u = sitk.GetArrayFromImage(result.uncertainty)
    _assert_same_grid(result.uncertainty, image)
    assert np.isfinite(u).all() and u.min() >= 0 and u.max() <= math.log(2) + 1e-6 and u.max() > 0.01


def test_several_points_merge_their_regions_by_the_voxelwise_maximum():
    """Issue 19: two overlapping regions; the merge is their maximum and keeps each one-point label."""
    torch.manual_seed(6)
    image, _ = _image(size=(48, 40, 36))
    model = _model({"net": CompactUNet(width=0.125, dropout=0.5).eval()})
    indices = ((18.0, 16.0, 15.0), (30.0, 24.0, 21.0))
    points = [image.TransformContinuousIndexToPhysicalPoint(index) for index in indices]
    singles = [inference.segment(model, image, point, precision="fp32") for point in points]
    merged = inference.segment(model, image, centers=points, precision="fp32")
    p1, p2 = (sitk.GetArrayFromImage(r.probability) for r in singles)
    both = (p1 > 0) & (p2 > 0)
    assert both.any() and np.abs(p1 - p2)[both].max() > 1e-3  # the regions overlap and disagree there
    assert np.array_equal(sitk.GetArrayFromImage(merged.probability), np.maximum(p1, p2))
    merged_label = sitk.GetArrayFromImage(merged.label) > 0
    for single in singles:
        assert np.all(merged_label[sitk.GetArrayFromImage(single.label) > 0])
    assert merged.centers == tuple(tuple(float(c) for c in point) for point in points)
    _assert_same_grid(merged.probability, image)


# --------------------------------------------------------------------------- errors and callbacks


def test_point_outside_the_volume_is_an_input_error_naming_it():
    image, _ = _image(size=(32, 32, 32))
    with pytest.raises(InputError, match=r"centre point \(500, 0, 0\).*outside"):
        inference.segment(_model({"c": ConstantNet(0.5)}), image, (500.0, 0.0, 0.0))


def test_bad_point_is_an_input_error():
    image, _ = _image(size=(32, 32, 32))
    with pytest.raises(InputError):
        inference.segment(_model({"c": ConstantNet(0.5)}), image, (1.0, 2.0))


def test_2d_image_is_an_input_error():
    image = sitk.Image([32, 32], sitk.sitkFloat32)
    with pytest.raises(InputError, match="2D"):
        inference.segment(_model({"c": ConstantNet(0.5)}), image, (0.0, 0.0))


def test_vector_image_and_nan_are_input_errors():
    vector = sitk.Image([16, 16, 16], sitk.sitkVectorFloat32, 2)
    with pytest.raises(InputError, match="components"):
        inference.segment(_model({"c": ConstantNet(0.5)}), vector)
    array = np.zeros((16, 16, 16), np.float32)
    array[3, 4, 5] = np.nan
    with pytest.raises(InputError, match="NaN"):
        inference.segment(_model({"c": ConstantNet(0.5)}), sitk.GetImageFromArray(array))


def test_patch_size_not_divisible_by_4_is_a_model_error():
    image, _ = _image(size=(32, 32, 32))
    with pytest.raises(ModelError, match="divisible by 4"):
        inference.segment(_model({"c": ConstantNet(0.5)}, patch=(16, 18, 16)), image)


def test_network_failure_is_a_model_error():
    image, _ = _image(size=(32, 32, 32))
    two_channel = CompactUNet(in_channels=2, width=0.125).eval()
    with pytest.raises(ModelError, match="failed on a batch"):
        inference.segment(_model({"n": two_channel}), image, precision="fp32")


def test_bad_options_are_input_errors():
    image, _ = _image(size=(32, 32, 32))
    model = _model({"c": ConstantNet(0.5)})
    for kwargs in ({"mc_samples": -1}, {"threshold": 1.5}, {"roi_patches": 0}, {"overlap": 1.0}):
        with pytest.raises(InputError):
            inference.segment(model, image, **kwargs)


def test_progress_is_reported_in_order():
    image, _ = _image(size=(32, 32, 32))
    stages = []
    inference.segment(
        _model({"c": ConstantNet(0.5)}),
        image,
        precision="fp32",
        progress=lambda stage, fraction: stages.append((stage, fraction)),
    )
    assert [s for s, _ in stages] == ["preprocess", "predict", "map back", "done"]
    fractions = [f for _, f in stages]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0


@pytest.mark.parametrize("normalization", ["percentile-zscore", "fov-percentile-zscore", "fov-local-zscore"])
def test_an_empty_border_changes_the_segmentation_only_without_field_of_view_statistics(normalization):
    """The same scan exported with a wider empty margin (another sector angle or export) must segment the
    same with ``fov-percentile-zscore`` or ``fov-local-zscore`` (up to the resampling of the two regions'
    grids); with whole-volume statistics the empty share shifts the normalised tissue, and a fixed network
    answers differently (the reason the option exists). Local z-scores put a fifth of the speckle above 1,
    so their stub thresholds at 2.5 to keep resampling flips from dominating."""
    rng = np.random.default_rng(1)
    tissue = rng.gamma(2.0, 20.0, size=(18, 22, 26)).astype(np.float32) + 1.0
    tissue[7:11, 9:13, 4:22] += 60.0  # a bright tube along x
    image = sitk.GetImageFromArray(tissue)
    image.SetSpacing((0.5, 0.6, 0.7))
    image.SetDirection(sitk.VersorTransform((0.3, 0.2, 0.9), 0.7).GetMatrix())
    padded = sitk.ConstantPad(image, (9, 9, 9), (9, 9, 9), 0.0)
    threshold = ThresholdNet(2.5 if normalization == "fov-local-zscore" else 1.0)
    model = stub_model({"threshold": threshold}, 16, TARGET, normalization=normalization)
    center = image.TransformContinuousIndexToPhysicalPoint((13.0, 11.0, 9.0))
    plain = sitk.GetArrayFromImage(inference.segment(model, image, center).probability)
    wide = sitk.GetArrayFromImage(inference.segment(model, padded, center).probability)[9:-9, 9:-9, 9:-9]
    changed = np.mean((plain > 0.5) != (wide > 0.5))  # the regions' grids differ: edges may flip
    if normalization.startswith("fov-"):
        assert changed < 0.05  # 3 % here (fov-local-zscore: 0.2 %)
    else:
        assert changed > 0.3  # 69 % here: the empty border shifted every tissue value


def test_inference_normalises_like_training_on_an_anisotropic_grid():
    """Local z-scores depend on the voxel size: the volume inference feeds the networks must equal the one
    training cuts its patches from (``prepare_case``), on a grid of (0.4, 0.7, 1.2) mm."""
    from SemiSupSegLib.patches import prepare_case

    spacing = (0.4, 0.7, 1.2)
    rng = np.random.default_rng(4)
    tissue = rng.gamma(2.0, 20.0, size=(14, 20, 30)).astype(np.float32) + 1.0
    tissue[5:9, 8:12, :] += 60.0
    image = sitk.GetImageFromArray(tissue)
    image.SetSpacing(spacing)
    image.SetDirection(sitk.VersorTransform((0.3, 0.2, 0.9), 0.7).GetMatrix())
    model = stub_model({"threshold": ThresholdNet(2.5)}, 16, spacing, normalization="fov-local-zscore")
    ctx = inference._make_context(model, image, "fp32", 0, None)
    fed = ctx.tensor(sitk.GetArrayViewFromImage(model.preprocessing.resample(image))).cpu().numpy()
    trained = prepare_case("c", image, None, None, model.preprocessing).image
    np.testing.assert_allclose(fed, trained, atol=1e-5)
    assert fed[5:9, 8:12, 6:-6].mean() > 1.0  # the tube stands out of its neighbourhood (1.36)


# ----------------------------------------------------------------------------------- BatchNorm folding


def _net_with_running_statistics(seed: int = 0) -> CompactUNet:
    """A tiny Compact-UNet whose BatchNorms hold non-trivial running statistics and affine parameters."""
    torch.manual_seed(seed)
    net = CompactUNet(width=0.0625, dropout=0.5)
    for module in net.modules():
        if isinstance(module, nn.BatchNorm3d):
            n = module.num_features
            module.running_mean.copy_(torch.randn(n))
            module.running_var.copy_(torch.rand(n) + 0.5)
            module.weight.data.copy_(torch.randn(n))
            module.bias.data.copy_(torch.randn(n))
    return net.eval()


def test_folded_batch_norms_give_the_same_logits_with_and_without_mc_dropout():
    net = _net_with_running_statistics()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    folded = inference.fuse_batch_norms(net)
    assert not any(isinstance(m, nn.BatchNorm3d) for m in folded.modules())
    assert any(isinstance(m, nn.BatchNorm3d) for m in net.modules())  # the original is not changed
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    x = torch.randn(1, 1, 16, 20, 24)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), net(x), atol=2e-5, rtol=1e-4)
        set_mc_dropout(net, True)
        set_mc_dropout(folded, True)
        torch.manual_seed(3)
        sampled = net(x)
        torch.manual_seed(3)
        torch.testing.assert_close(folded(x), sampled, atol=2e-5, rtol=1e-4)  # the same dropout masks


def test_inference_folds_a_copy_once_and_leaves_the_models_networks_as_loaded():
    """Training from a model (``--init``) after segmenting with it in the same process reads its
    BatchNorm state: inference must fold a copy, made once per layout, never the model's own modules."""
    net = _net_with_running_statistics()
    model = LoadedModel(
        path=Path("folding"),
        meta={"patch_size": [16, 16, 16], "preprocessing": {"target_spacing": [1.0, 1.0, 1.0]}},
        networks={"net": net},
    )
    before = {k: v.clone() for k, v in net.state_dict().items()}
    array = np.zeros((20, 24, 28), np.float32)
    array[8:12, 10:14, 4:24] = 100.0
    image = sitk.GetImageFromArray(array)
    first = inference.segment(model, image, precision="fp32").probability
    folded = model.inference_cache[("folded", inference.use_channels_last("cpu"))]
    second = inference.segment(model, image, precision="fp32").probability
    assert model.inference_cache[("folded", inference.use_channels_last("cpu"))] is folded
    assert any(isinstance(m, nn.BatchNorm3d) for m in net.modules())
    assert net.state_dict().keys() == before.keys()
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    np.testing.assert_array_equal(sitk.GetArrayFromImage(first), sitk.GetArrayFromImage(second))
