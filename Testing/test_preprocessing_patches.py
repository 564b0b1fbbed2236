import numpy as np
import pytest
import SimpleITK as sitk
import torch

from SemiSupSegLib.patches import PatchSampler, crop, prepare_case
from SemiSupSegLib.preprocessing import Preprocessing, median_spacing, resample_to_spacing


def _image(shape=(20, 30, 40), spacing=(0.5, 0.6, 0.7), value=None):
    rng = np.random.default_rng(0)
    array = (
        rng.uniform(0, 255, shape).astype(np.float32) if value is None else np.full(shape, value, np.float32)
    )
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin((10.0, -5.0, 3.0))
    image.SetDirection((0, 1, 0, -1, 0, 0, 0, 0, 1))
    return image


def test_resampling_keeps_the_physical_extent_and_frame():
    image = _image()
    out = resample_to_spacing(image, (0.25, 0.3, 0.35))
    assert out.GetSize() == (80, 60, 40)
    assert out.GetOrigin() == image.GetOrigin() and out.GetDirection() == image.GetDirection()
    assert resample_to_spacing(image, image.GetSpacing()) is image


def test_label_resampling_keeps_a_thin_line():
    label = np.zeros((20, 20, 20), np.uint8)
    label[10, 10, :] = 1
    image = sitk.GetImageFromArray(label)
    out = sitk.GetArrayFromImage(resample_to_spacing(image, (0.5, 0.5, 0.5), is_label=True))
    assert set(np.unique(out)) == {0, 1}
    assert out[20, 20, :39].all()  # the line stays connected at twice the resolution


def test_normalisation_is_zero_mean_unit_std_and_reproducible_on_crops():
    pre = Preprocessing()
    array = sitk.GetArrayFromImage(_image())
    stats = pre.intensity_statistics(array)
    whole = pre.normalize(array, stats)
    assert abs(whole.mean()) < 1e-3 and abs(whole.std() - 1) < 1e-3
    np.testing.assert_allclose(pre.normalize(array[2:8, 3:9, 4:10], stats), whole[2:8, 3:9, 4:10], rtol=1e-6)
    assert np.all(np.isfinite(pre.normalize(np.zeros((4, 4, 4)))))


def test_preprocessing_round_trips_through_json():
    pre = Preprocessing(target_spacing=(0.5, 0.6, 0.7), clip_percentiles=(1.0, 99.0))
    assert Preprocessing.from_dict(pre.to_dict()) == pre
    with pytest.raises(ValueError, match="unknown normalization"):
        Preprocessing(normalization="minmax").normalize(np.zeros(3))


def test_median_spacing():
    images = [_image(spacing=s) for s in [(0.4, 0.4, 0.4), (0.5, 0.6, 0.7), (0.6, 0.8, 0.9)]]
    assert median_spacing(images) == (0.5, 0.6, 0.7)


def test_crop_fills_outside_and_keeps_inside():
    array = np.arange(1000, dtype=np.float32).reshape(10, 10, 10)
    out = crop(array, (0, 0, 0), (4, 4, 4), fill=-1)
    assert out.shape == (4, 4, 4)
    assert np.all(out[:2] == -1) and out[2, 2, 2] == array[0, 0, 0]
    assert np.all(crop(array, (50, 50, 50), (4, 4, 4), fill=-7) == -7)


def test_sampler_centres_patches_on_the_instrument_and_is_reproducible():
    shape = (40, 40, 40)
    array = np.zeros(shape, np.float32)
    label = np.zeros(shape, np.uint8)
    label[20, 20, :] = 1
    image = sitk.GetImageFromArray(array + 10 * label)
    lab = sitk.GetImageFromArray(label)
    center = image.TransformContinuousIndexToPhysicalPoint((20, 20, 20))
    case = prepare_case("c", image, lab, center, Preprocessing())
    np.testing.assert_allclose(case.center_zyx, (20, 20, 20))
    draws = []
    for _ in range(2):
        sampler = PatchSampler([case], [], (16, 16, 16), seed=3, translation=4, random_fraction=0.0)
        images, labels = sampler.labeled_batch(6)
        draws.append(images)
        assert images.shape == (6, 1, 16, 16, 16) and labels.dtype.is_floating_point is False
        assert all(labels[i].sum() > 0 for i in range(6))  # shift 4 < half patch: the line stays inside
    assert np.array_equal(draws[0].numpy(), draws[1].numpy())


def _noise_case(name: str, seed: int):
    """A 32^3 noise volume with a labelled line through its middle (prepared, no resampling)."""
    rng = np.random.default_rng(seed)
    label = np.zeros((32, 32, 32), np.uint8)
    label[16, 16, :] = 1
    image = sitk.GetImageFromArray(rng.normal(size=label.shape).astype(np.float32) + 3 * label)
    center = image.TransformContinuousIndexToPhysicalPoint((16, 16, 16))
    return prepare_case(name, image, sitk.GetImageFromArray(label), center, Preprocessing())


@pytest.mark.parametrize("workers", [0, 2])
def test_batch_stream_is_reproducible_and_workers_do_not_repeat_each_other(workers):
    """Loader workers (issue 12's GPU training) must each draw their own patches, the same ones every run."""
    from SemiSupSegLib.patches import batch_stream

    cases = [_noise_case("a", 1), _noise_case("b", 2)]
    runs = []
    for _ in range(2):
        sampler = PatchSampler(cases, cases[:1], (8, 8, 8), seed=5, translation=4)
        stream = batch_stream(sampler, 2, unlabeled=True, workers=workers, seed=11)
        runs.append([next(stream) for _ in range(4)])
    for first, second in zip(*runs, strict=True):
        for a, b in zip(first, second, strict=True):
            assert torch.equal(a, b)
    images, labels, unlabeled = runs[0][0]
    assert images.shape == (2, 1, 8, 8, 8) and labels.dtype == torch.long and unlabeled.shape == images.shape
    consecutive = [batch[0] for batch in runs[0]]  # with 2 workers, batches 0 and 1 come from different ones
    assert not any(torch.equal(consecutive[i], consecutive[i + 1]) for i in range(3))


def test_loader_workers_survive_the_stop_signal_that_reaches_the_whole_process_group():
    """Cancel sends SIGTERM to the training's process group: the workers must leave the stop to the trainer
    (which finishes the step and writes a checkpoint); a killed worker made the run fail without one."""
    import os
    import signal
    import time

    from SemiSupSegLib.patches import batch_stream

    cases = [_noise_case("a", 1)]
    stream = batch_stream(PatchSampler(cases, [], (8, 8, 8), seed=5), 1, unlabeled=False, workers=1, seed=3)
    next(stream)
    for worker in stream._workers:  # the DataLoader iterator's worker processes
        os.kill(worker.pid, signal.SIGTERM)
    time.sleep(0.5)
    images, labels, _ = next(stream)
    assert images.shape == (1, 1, 8, 8, 8) and all(w.is_alive() for w in stream._workers)


def _fan_volume(rng: np.random.Generator, pad: int) -> np.ndarray:
    """Speckle-like tissue (non-cubic) inside a zero border of ``pad`` voxels: the field of view of a
    scan-converted ultrasound volume, whose share of the volume differs between scanners."""
    tissue = rng.gamma(2.0, 30.0, size=(10, 12, 14)).astype(np.float32) + 1.0
    return np.pad(tissue, pad)


def test_field_of_view_normalisation_does_not_depend_on_the_empty_border():
    """With statistics over the field of view, the same tissue gets the same values whatever the share
    of empty voxels around it (another sector angle); the whole-volume statistics shift it."""
    rng = np.random.default_rng(0)
    tight, wide = _fan_volume(rng, 0), None
    wide = np.pad(tight, 6)
    inner = (slice(6, -6),) * 3
    fov = Preprocessing(normalization="fov-percentile-zscore")
    np.testing.assert_allclose(fov.normalize(wide)[inner], fov.normalize(tight), atol=1e-5)
    whole = Preprocessing()
    assert np.abs(whole.normalize(wide)[inner] - whole.normalize(tight)).mean() > 0.3
    tissue = fov.normalize(wide)[inner]
    assert abs(tissue.mean()) < 0.05 and abs(tissue.std() - 1) < 0.05
    assert np.all(np.isfinite(fov.normalize(np.zeros((4, 5, 6)))))  # nothing in view: no division by 0


def test_the_field_of_view_normalisation_round_trips_through_model_json():
    pre = Preprocessing(target_spacing=(0.5, 0.6, 0.7), normalization="fov-percentile-zscore")
    assert Preprocessing.from_dict(pre.to_dict()) == pre


def _speckle_with_tube(rng: np.random.Generator, shape=(24, 40, 56)) -> tuple[np.ndarray, np.ndarray]:
    """Gamma speckle with a bright tube along x, and the tube's mask (non-cubic, [z, y, x])."""
    tissue = rng.gamma(2.0, 30.0, size=shape).astype(np.float32) + 1.0
    z, y, _ = np.indices(shape)
    tube = (z - shape[0] // 2) ** 2 + (y - shape[1] // 2) ** 2 <= 4
    tissue[tube] *= 3.0
    return tissue, tube


def test_local_normalisation_removes_a_slow_gain_change_that_global_statistics_keep():
    """A time-gain-compensation-like gain rising 4x along depth (x here) and an offset change nothing of
    the local z-scores (up to the edges of the window), while the global z-scores of the same tube fall
    by more than one standard deviation from one end to the other."""
    rng = np.random.default_rng(1)
    tissue, tube = _speckle_with_tube(rng)
    gain = np.linspace(1.0, 4.0, tissue.shape[2], dtype=np.float32)[None, None, :]
    scanned = tissue * gain + 20.0
    spacing = (0.5, 0.5, 0.5)
    local = Preprocessing(normalization="fov-local-zscore", local_sigma_mm=2.0)
    before = local.normalize(tissue, spacing_zyx=spacing)
    after = local.normalize(scanned, spacing_zyx=spacing)
    inner = (slice(6, -6), slice(6, -6), slice(6, -6))
    assert np.corrcoef(before[inner].ravel(), after[inner].ravel())[0, 1] > 0.97
    x = tissue.shape[2]
    tube_near, tube_far = tube[..., 6 : x // 3], tube[..., 2 * x // 3 : -6]
    near, far = after[..., 6 : x // 3][tube_near].mean(), after[..., 2 * x // 3 : -6][tube_far].mean()
    assert near > 1.0 and abs(near - far) < 0.3  # the tube stands out equally at both depths
    fov = Preprocessing(normalization="fov-percentile-zscore").normalize(scanned)
    assert fov[..., 2 * x // 3 : -6][tube_far].mean() - fov[..., 6 : x // 3][tube_near].mean() > 1.0


def test_local_normalisation_window_is_in_millimetres_along_each_axis():
    """An anisotropic grid: one bright voxel changes its neighbours' z-scores over sigma / spacing voxels
    per axis, so its reach is 4x longer along z (0.25 mm voxels) than along x (1 mm)."""
    shape, spacing_zyx = (96, 32, 24), (0.25, 0.5, 1.0)
    noise = np.random.default_rng(2).normal(0, 0.5, shape).astype(np.float32)
    tissue = np.full(shape, 10.0, np.float32) + noise
    bright = tissue.copy()
    bright[48, 16, 12] = 30.0
    local = Preprocessing(normalization="fov-local-zscore", local_sigma_mm=1.0, clip_percentiles=(0.0, 100.0))
    stats = local.intensity_statistics(bright)  # the same clip range for both
    change = np.abs(local.normalize(bright, stats, spacing_zyx) - local.normalize(tissue, stats, spacing_zyx))
    change[48, 16, 12] = 0.0
    reach_z = np.abs(np.flatnonzero(change[:, 16, 12] > 1e-3) - 48).max()
    reach_x = np.abs(np.flatnonzero(change[48, 16, :] > 1e-3) - 12).max()
    assert 3.0 <= reach_z / reach_x <= 5.0, (reach_z, reach_x)
    constant = local.normalize(np.full(shape, 7.0, np.float32), spacing_zyx=spacing_zyx)
    assert np.all(constant == 0.0)  # nothing stands out, and no division by a zero deviation


def test_local_normalisation_ignores_the_empty_border_and_round_trips():
    """The fill around the field of view is 0 after normalisation and changes nothing inside; the
    window's size travels in model.json."""
    rng = np.random.default_rng(3)
    tight, _ = _speckle_with_tube(rng, (16, 20, 24))
    wide = np.pad(tight, 6)
    inner = (slice(6, -6),) * 3
    local = Preprocessing(normalization="fov-local-zscore")
    spacing = (0.6, 0.6, 0.6)
    padded = local.normalize(wide, spacing_zyx=spacing)
    np.testing.assert_allclose(padded[inner], local.normalize(tight, spacing_zyx=spacing), atol=1e-4)
    border = np.ones(wide.shape, bool)
    border[inner] = False
    assert np.all(padded[border] == 0.0)
    pre = Preprocessing(target_spacing=(0.5, 0.6, 0.7), normalization="fov-local-zscore", local_sigma_mm=2.5)
    assert Preprocessing.from_dict(pre.to_dict()) == pre
    assert "local_sigma_mm" not in Preprocessing().to_dict()  # other models' model.json unchanged
    with pytest.raises(ValueError, match="spacing"):
        local.normalize(tight)
