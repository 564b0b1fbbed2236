"""Training augmentation levels, as MONAI transform chains on ``{"image", "label"}`` patches.

- ``standard``: seed 000's augmentation (Sec. IV-B): random rotation, mirroring and intensity
  re-scaling. The default, as every model before the levels was trained.
- ``scanner``: domain randomisation for another ultrasound scanner (issue 12): on top of ``standard``,
  what a different probe and system change in the image, each drawn per patch:

  - voxel size and instrument calibre: zoom 0.8–1.25 (image and label together), which also makes
    the speckle grain finer or coarser;
  - point-spread function: Gaussian blur of 0.5–1.5 voxels;
  - SNR: additive Gaussian noise;
  - gain and time-gain compensation: a smooth polynomial bias field across the patch, wider intensity
    scale and shift;
  - log compression and the display map: a wider gamma range and a random monotone histogram shift.

  **[decision]** The ranges are ours, chosen to cover the spread of `--profile random`
  (docs/PHANTOM_PROFILES.md) rather than taken from a paper; the seed papers use ``standard`` only.
- ``none``: patches as cut.
"""

from __future__ import annotations

import numpy as np
from monai.transforms import (
    Compose,
    RandAdjustContrastd,
    RandBiasFieldd,
    RandFlipd,
    RandGaussianNoised,
    RandGaussianSmoothd,
    RandHistogramShiftd,
    RandRotated,
    RandScaleIntensityd,
    RandShiftIntensityd,
    RandZoomd,
)

AUGMENTATIONS = ("none", "standard", "scanner")
DEFAULT_AUGMENTATION = "standard"
KEYS = ("image", "label")


def augmentation_level(value: str | bool) -> str:
    """The level a configuration names; ``True``/``False`` (configs stored before the levels) mean
    ``standard``/``none``.

    Args:
        value: a level name, or the bool an older checkpoint or ``model.json`` holds.

    Returns:
        One of :data:`AUGMENTATIONS`.

    Raises:
        ValueError: for any other value.
    """
    if isinstance(value, bool):
        return DEFAULT_AUGMENTATION if value else "none"
    if value not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation {value!r}; use one of {', '.join(AUGMENTATIONS)}")
    return value


def build_augmentation(
    seed: int, level: str = DEFAULT_AUGMENTATION, rotation_degrees: float = 15.0
) -> Compose:
    """The transform chain of a level, seeded.

    Args:
        seed: seed of every random stream in the chain.
        level: ``standard`` or ``scanner`` (``none`` has no chain: the caller skips augmentation).
        rotation_degrees: largest rotation about each axis.

    Returns:
        A MONAI ``Compose`` taking and returning ``{"image": [1, z, y, x], "label": [1, z, y, x]}``.
    """
    level = augmentation_level(level)
    if level == "none":
        raise ValueError("augmentation 'none' has no transform chain")
    transforms = _geometry(rotation_degrees, zoom=level == "scanner")
    transforms += _scanner_intensity() if level == "scanner" else _standard_intensity()
    transform = Compose(transforms)
    transform.set_random_state(seed=seed)
    return transform


def _geometry(rotation_degrees: float, zoom: bool) -> list:
    angle = np.deg2rad(rotation_degrees)
    rotate = RandRotated(
        KEYS,
        range_x=angle,
        range_y=angle,
        range_z=angle,
        prob=0.5,
        mode=("bilinear", "nearest"),
        padding_mode="border",
    )
    flips = [RandFlipd(KEYS, prob=0.5, spatial_axis=axis) for axis in range(3)]
    scale = [
        RandZoomd(
            KEYS, prob=0.3, min_zoom=0.8, max_zoom=1.25, mode=("trilinear", "nearest"), padding_mode="edge"
        )
    ]
    return [rotate, *flips, *(scale if zoom else [])]


def _standard_intensity() -> list:
    return [
        RandScaleIntensityd("image", factors=0.15, prob=0.5),
        RandShiftIntensityd("image", offsets=0.15, prob=0.5),
        RandAdjustContrastd("image", gamma=(0.8, 1.25), prob=0.3),
    ]


def _scanner_intensity() -> list:
    return [
        RandGaussianSmoothd("image", sigma_x=(0.5, 1.5), sigma_y=(0.5, 1.5), sigma_z=(0.5, 1.5), prob=0.25),
        RandGaussianNoised("image", prob=0.2, std=0.15),
        RandBiasFieldd("image", degree=3, coeff_range=(0.0, 0.3), prob=0.3),
        RandScaleIntensityd("image", factors=0.3, prob=0.5),
        RandShiftIntensityd("image", offsets=0.3, prob=0.5),
        RandAdjustContrastd("image", gamma=(0.6, 1.6), prob=0.4),
        RandHistogramShiftd("image", num_control_points=(5, 12), prob=0.2),
    ]
