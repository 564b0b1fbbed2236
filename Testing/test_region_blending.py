"""The coarse-to-fine region has no seams and fits small volumes (issue 12, part 2).

The networks are stubs with a known output that needs context (a convolution), so a patch border or its
zero padding inside the region shows as a wrong value. Volumes are non-cubic, anisotropic and rotated;
patches are non-cubic.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from torch import nn

from SemiSupSegLib import inference
from SemiSupSegLib.model_store import LoadedModel
from SemiSupSegLib.preprocessing import Preprocessing

SHAPE_ZYX = (48, 60, 80)
SPACING = (0.5, 0.8, 1.1)  # (x, y, z) mm
PATCH_ZYX = (16, 24, 32)
DIRECTION = (0.36, -0.48, 0.8, 0.8, 0.6, 0.0, -0.48, 0.64, 0.6)  # a rotation (orthonormal rows)


class ConvNet(nn.Module):
    """Stub network: a fixed random 3^3 convolution (zero padding) of the input is the foreground logit."""

    def __init__(self, kernel: int = 3, seed: int = 0) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.weight = torch.randn((1, 1, kernel, kernel, kernel), generator=generator) / kernel
        self.padding = kernel // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logit = nn.functional.conv3d(x, self.weight.to(x.dtype), padding=self.padding)
        return torch.cat([torch.zeros_like(logit), logit], dim=1)


class TubeDetector(nn.Module):
    """Stub network that needs context: foreground where the 9^3 local mean of the input exceeds ``level``."""

    def __init__(self, level: float) -> None:
        super().__init__()
        self.level = level

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        local = nn.functional.avg_pool3d(x, 9, stride=1, padding=4, count_include_pad=True)
        return torch.cat([torch.zeros_like(x), 40.0 * (local - self.level)], dim=1)


def _model(net: nn.Module, patch_zyx, target_spacing) -> LoadedModel:
    meta = {
        "name": "stub",
        "patch_size": list(patch_zyx),
        "preprocessing": Preprocessing(target_spacing=tuple(target_spacing)).to_dict(),
        "classes": {"0": "background", "1": "foreground"},
    }
    return LoadedModel(path=Path("stub-model"), meta=meta, networks={"stub": net})


def _volume(array_zyx: np.ndarray, spacing=SPACING) -> sitk.Image:
    image = sitk.GetImageFromArray(np.ascontiguousarray(array_zyx, dtype=np.float32))
    image.SetSpacing(spacing)
    image.SetOrigin((4.0, -3.0, 7.5))
    image.SetDirection(DIRECTION)
    return image


def _region_interior(image: sitk.Image, grid: sitk.Image, margin) -> np.ndarray:
    """Input voxels inside ``grid`` and at least ``margin`` (z, y, x) of its voxels from its faces."""
    start = np.rint(image.TransformPhysicalPointToContinuousIndex(grid.GetOrigin())).astype(int)[::-1]
    inside = np.zeros(SHAPE_ZYX, bool)
    margin = np.broadcast_to(np.asarray(margin, dtype=int), (3,))
    lo, hi = start + margin, start + np.asarray(grid.GetSize())[::-1] - margin
    inside[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] = True
    return inside


def _region_vs_window(monkeypatch=None, margin=1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Region probability, sliding-window probability (one window over the whole volume) and the region's
    interior ``margin`` voxels inside its faces."""
    image = _volume(np.random.default_rng(3).normal(size=SHAPE_ZYX))
    center = image.TransformContinuousIndexToPhysicalPoint((37.0, 29.0, 21.0))  # x, y, z: off the middle
    net = ConvNet()
    # the reference: a window as large as the volume, so the sliding window itself has no window border
    window = inference.segment(_model(net, SHAPE_ZYX, SPACING), image, precision="fp32").probability
    if monkeypatch is not None:  # the region no longer fits one window: blended patches
        monkeypatch.setattr(inference, "MEMORY_BUDGET_BYTES", 2064 * int(np.prod(PATCH_ZYX)) * 3)
    region_model = _model(net, PATCH_ZYX, SPACING)
    region = inference.segment(region_model, image, center, precision="fp32").probability
    size = inference.region_size(image, SPACING, PATCH_ZYX, 2)
    assert size == (64, 48, 32)  # 2 x patch (x, y, z): the region lies inside the volume
    grid = inference.roi_grid(image, center, SPACING, size)
    interior = _region_interior(image, grid, margin)
    return sitk.GetArrayFromImage(region), sitk.GetArrayFromImage(window), interior


def test_region_equals_sliding_window_inside_the_region():
    """One window: equal to float rounding (1e-5) everywhere 1 voxel inside the region's faces, where the
    former 2x2x2 patches put their borders (zero-padded by the convolution) through the centre point."""
    region, window, interior = _region_vs_window()
    assert interior.sum() == 62 * 46 * 30
    np.testing.assert_allclose(region[interior], window[interior], atol=1e-5)
    assert np.all(region[~_region_interior(*_grid_of_region(), margin=0)] == 0)


def _grid_of_region() -> tuple[sitk.Image, sitk.Image]:
    image = _volume(np.zeros(SHAPE_ZYX))
    center = image.TransformContinuousIndexToPhysicalPoint((37.0, 29.0, 21.0))
    return image, inference.roi_grid(image, center, SPACING, (64, 48, 32))


def test_blended_region_equals_sliding_window_inside_the_region(monkeypatch):
    """Above the memory budget the region is covered by half-overlapping patches with MONAI's Gaussian
    weights (sigma = patch / 8). A voxel on a patch border (wrong by the zero padding) weighs little
    against the patch it is central in, so a quarter patch inside the region's faces the blend is within
    0.03 of the sliding window. Nearer the faces MONAI's weight floor (1e-3) lets border voxels weigh
    as much as central ones, which is why the margin is a quarter patch; the former 2x2x2 tiles put a
    zero-padded border through the centre and are off by up to 0.3 there."""
    margin = [p // 4 for p in PATCH_ZYX]
    region, window, interior = _region_vs_window(monkeypatch, margin)
    assert np.abs(region[interior] - window[interior]).max() < 0.03
    assert np.ptp(window[interior]) > 0.5  # the map varies: a misplaced patch would be caught


def test_the_64_cube_path_segments_a_tube_through_the_centre():
    """A 64^3 volume (35 mm) is smaller than a 2-patch region at the model's spacing: the region must shrink
    to the volume instead of padding it, and the tube through the centre point must be found whole."""
    shape, spacing = (64, 64, 64), (0.55, 0.55, 0.55)
    zz, yy, xx = np.indices(shape)
    tube = (yy - 31.5) ** 2 + (xx - 31.5) ** 2 <= 4.0**2  # along z, through the centre
    image = sitk.GetImageFromArray(np.where(tube, 100.0, 10.0).astype(np.float32))
    image.SetSpacing(spacing)
    image.SetDirection(DIRECTION)
    target = (0.58, 0.58, 0.58)
    prep = Preprocessing(target_spacing=target)
    low, high = prep.normalize(np.array([10.0, 100.0]), prep.intensity_statistics(tube * 90.0 + 10.0))
    model = _model(TubeDetector(low + 0.38 * (high - low)), (48, 48, 48), target)
    center = image.TransformContinuousIndexToPhysicalPoint((31.5, 31.5, 31.5))
    size = inference.region_size(image, target, (48, 48, 48), 2)
    assert size == (60, 60, 60)  # 61 voxels at 0.58 mm, rounded down to a multiple of 4; not 96
    label = sitk.GetArrayFromImage(inference.segment(model, image, center, precision="fp32").label)
    middle = label[8:48].astype(bool)  # slices well inside the region (the tube runs on past it)
    dice = 2 * np.sum(middle & tube[8:48]) / (middle.sum() + tube[8:48].sum())
    assert dice > 0.85, f"Dice {dice:.3f}"


def test_region_never_exceeds_what_the_volume_allows_on_each_axis():
    """Non-cubic patch, anisotropic volume: each axis is clamped on its own (a multiple of 4, >= a patch)."""
    image = _volume(np.zeros((30, 70, 90)), spacing=(0.5, 0.8, 1.1))  # mm extent x 45, y 56, z 33
    # at 1 mm: (x, y, z) = (45, 56, 33) voxels; patch (x, y, z) = (32, 24, 16), 2 patches = (64, 48, 32)
    assert inference.region_size(image, (1.0, 1.0, 1.0), PATCH_ZYX, 2) == (44, 48, 32)
    # a volume shorter than a patch keeps one patch (padded): the network's training context
    assert inference.region_size(image, (4.0, 4.0, 4.0), PATCH_ZYX, 2) == (32, 24, 16)
