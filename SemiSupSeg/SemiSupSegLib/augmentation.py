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
- ``contrast``: ``standard`` plus :class:`RandInstrumentContrastd`, which dims the instrument towards
  its tissue in some patches. The models segment an instrument by its absolute brightness more than by
  its shape: on the other generator's volumes a +9.5 dB brighter catheter lifts the shipped model's Dice
  from 0.02 to 0.25 (docs/BENCHMARKS.md, "ablation probe"). The scanner level includes it too.
- ``none``: patches as cut.
"""

from __future__ import annotations

import numpy as np
from monai.transforms import (
    Compose,
    MapTransform,
    RandAdjustContrastd,
    RandBiasFieldd,
    RandFlipd,
    RandGaussianNoised,
    RandGaussianSmoothd,
    RandHistogramShiftd,
    RandomizableTransform,
    RandRotated,
    RandScaleIntensityd,
    RandShiftIntensityd,
    RandZoomd,
)

AUGMENTATIONS = ("none", "standard", "scanner", "contrast")
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
        level: ``standard``, ``scanner`` or ``contrast`` (``none`` has no chain: the caller skips
            augmentation).
        rotation_degrees: largest rotation about each axis.

    Returns:
        A MONAI ``Compose`` taking and returning ``{"image": [1, z, y, x], "label": [1, z, y, x]}``.
    """
    level = augmentation_level(level)
    if level == "none":
        raise ValueError("augmentation 'none' has no transform chain")
    transforms = _geometry(rotation_degrees, zoom=level == "scanner")
    if level in ("scanner", "contrast"):  # before blur and noise, as a dimmer echo would be imaged
        transforms.append(RandInstrumentContrastd(prob=0.3))
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


class RandInstrumentContrastd(RandomizableTransform, MapTransform):
    """Dim the labelled instrument towards its tissue: inside the label, ``x <- t + f (x - t)`` with
    ``t`` the median of the patch outside the label and ``f`` drawn from ``factor``; the tissue and the
    label are untouched, a patch without instrument is left as it is.

    Hand-written: MONAI's intensity transforms act on the whole image or on a fixed mask
    (``MaskIntensityd``), none rescales the labelled structure's contrast against its surroundings.

    Args:
        image_key, label_key: the dictionary's image and label.
        prob: probability of dimming a patch.
        factor: range of ``f`` (1: unchanged, 0: the instrument at the tissue's median).
    """

    def __init__(
        self, image_key: str = "image", label_key: str = "label", prob: float = 0.3, factor=(0.3, 1.0)
    ) -> None:
        MapTransform.__init__(self, (image_key,))
        RandomizableTransform.__init__(self, prob)
        self.image_key, self.label_key = image_key, label_key
        self.factor = (float(factor[0]), float(factor[1]))
        self._f = 1.0

    def randomize(self, data=None) -> None:
        super().randomize(None)
        self._f = float(self.R.uniform(*self.factor))

    def __call__(self, data: dict) -> dict:
        self.randomize()
        out = dict(data)
        inside = np.asarray(out[self.label_key]) > 0.5
        if not self._do_transform or not inside.any() or inside.all():
            return out
        image = out[self.image_key]
        tissue = float(np.median(np.asarray(image)[~inside]))
        dimmed = image * 1.0  # a copy of the same type (numpy array or MONAI tensor)
        dimmed[inside] = tissue + self._f * (image[inside] - tissue)
        out[self.image_key] = dimmed
        return out
