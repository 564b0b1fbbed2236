"""The preprocessing a model records at training time and replays at inference.

A model trained at one geometry works on any input because the input is first resampled to
the model's spacing and normalised the same way; results are then resampled back onto exactly
the input's grid (see :mod:`SemiSupSegLib.inference`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from .errors import InputError, checked_number

__all__ = ["Preprocessing", "check_resampled_size", "resample_to_spacing", "median_spacing"]

MAX_RESAMPLED_VOXELS = 1 << 30
"""Largest volume resampling may make: 1.07e9 voxels, 4.3 GB as float32 (a 160^3 phantom has 4.1e6)."""


def check_resampled_size(
    image: sitk.Image, target_spacing: Sequence[float], limit_voxels: int = MAX_RESAMPLED_VOXELS
) -> tuple[int, int, int]:
    """The size ``(x, y, z)`` of ``image`` resampled to ``target_spacing``, refused if too big to allocate
    or so thin that an axis keeps a single voxel.

    A wrong spacing in a file header (1e6 mm instead of 1 mm) would otherwise make SimpleITK try to
    allocate an astronomical volume and fail with an unexplained memory error; one of 1e-30 mm would shrink
    the volume to a point and the network would answer on nothing.

    Args:
        image: the volume to resample.
        target_spacing: the new spacing, (x, y, z) mm.
        limit_voxels: the most voxels the resampled volume may have.

    Returns:
        The resampled size in voxels, (x, y, z).

    Raises:
        InputError: naming the size it would need, in voxels and GB (float32), or the axis left 1 voxel.
    """
    old_spacing = np.asarray(image.GetSpacing(), dtype=float)
    extent = np.asarray(image.GetSize(), dtype=float) * old_spacing
    size = tuple(max(1, int(round(n))) for n in extent / np.asarray(target_spacing, dtype=float))
    voxels = float(np.prod(np.asarray(size, dtype=float)))
    mm = lambda values: ",".join(f"{v:.4g}" for v in values)  # noqa: E731
    if min(size) < 2:  # a spacing of 1e-30 mm: the volume shrinks to a point, the answer is arbitrary
        axis = "xyz"[int(np.argmin(size))]
        raise InputError(
            f"resampling the image of {'x'.join(map(str, image.GetSize()))} voxels at {mm(old_spacing)} mm "
            f"to {mm(target_spacing)} mm leaves 1 voxel along {axis}: the volume is thinner than 2 voxels of "
            "that grid; check the image's spacing"
        )
    if voxels > limit_voxels:
        raise InputError(
            f"resampling the image of {'x'.join(map(str, image.GetSize()))} voxels at {mm(old_spacing)} mm "
            f"to {mm(target_spacing)} mm would need {'x'.join(f'{n:.3g}' for n in size)} = {voxels:.3g} "
            f"voxels ({voxels * 4 / 1e9:.3g} GB as float32), more than the {limit_voxels:.3g} allowed; "
            "check the image's spacing"
        )
    return size  # type: ignore[return-value]


def resample_to_spacing(
    image: sitk.Image, spacing_xyz: Sequence[float], *, is_label: bool = False
) -> sitk.Image:
    """Resample to a new spacing, keeping origin, direction and physical extent.

    Labels are resampled linearly as floats, which keeps thin structures (a 0.9 mm guide-wire) better
    than nearest-neighbour does: a binary label ({0, 1}) is thresholded at 0.5; a multi-class label
    (values up to K - 1 > 1) is resampled one-hot, class by class, and each voxel takes the class of
    largest interpolated indicator (:func:`_resample_classes`), so the labels stay in {0..K-1}.
    A result too big for memory is refused first (:func:`check_resampled_size`).
    """
    spacing_xyz = tuple(float(s) for s in spacing_xyz)
    old_spacing = np.array(image.GetSpacing())
    if np.allclose(old_spacing, spacing_xyz, rtol=1e-4):
        return image
    new_size = check_resampled_size(image, spacing_xyz)
    if is_label:
        classes = int(np.max(sitk.GetArrayViewFromImage(image), initial=0)) + 1
        if classes > 2:
            return _resample_classes(image, new_size, spacing_xyz, classes)
    resampled = _resample_linear(sitk.Cast(image, sitk.sitkFloat32), image, new_size, spacing_xyz)
    if is_label:
        return sitk.Cast(resampled > 0.5, sitk.sitkUInt8)
    return resampled


def _resample_linear(
    source: sitk.Image, grid: sitk.Image, size: Sequence[int], spacing_xyz: Sequence[float]
) -> sitk.Image:
    """``source`` (float32) resampled linearly to ``size`` voxels of ``spacing_xyz`` on ``grid``'s frame."""
    return sitk.Resample(
        source,
        tuple(size),
        sitk.Transform(),
        sitk.sitkLinear,
        grid.GetOrigin(),
        tuple(spacing_xyz),
        grid.GetDirection(),
        0.0,
        sitk.sitkFloat32,
    )


def _resample_classes(
    label: sitk.Image, size: Sequence[int], spacing_xyz: Sequence[float], classes: int
) -> sitk.Image:
    """A label of ``classes`` values resampled one-hot: the argmax of the linearly resampled indicators.

    Voxels outside the input take the background (every indicator is 0 there, ties go to class 0).
    """
    best = None
    winner = None
    for value in range(classes):
        indicator = sitk.Cast(sitk.Equal(label, value), sitk.sitkFloat32)
        resampled = sitk.GetArrayFromImage(_resample_linear(indicator, label, size, spacing_xyz))
        if best is None:
            best, winner = resampled, np.zeros(resampled.shape, np.uint8)
            continue
        better = resampled > best
        best = np.where(better, resampled, best)
        winner[better] = value
    out = sitk.GetImageFromArray(winner)
    out.SetSpacing(tuple(spacing_xyz))
    out.SetOrigin(label.GetOrigin())
    out.SetDirection(label.GetDirection())
    return out


def median_spacing(images: Sequence[sitk.Image]) -> tuple[float, float, float]:
    """The per-axis median spacing of a training set (the nnU-Net convention)."""
    spacings = np.array([img.GetSpacing() for img in images], dtype=float)
    return tuple(float(s) for s in np.median(spacings, axis=0))


NORMALIZATIONS = ("percentile-zscore", "fov-percentile-zscore", "fov-local-zscore")
LOCAL_SIGMA_MM = 3.0
"""Gaussian window (standard deviation, mm) of ``fov-local-zscore``. **[decision]** ours: about twice a
catheter's diameter, so that the instrument stands out of its window, and small against the scale of a
scanner's gain and time-gain-compensation changes."""
MAX_LOCAL_SIGMA_MM = 100.0
"""A larger window is no longer local (and its filter would take the memory and time of a huge kernel)."""
LOCAL_EPSILON = 0.05
"""Floor of the local standard deviation (in units of the clipped range), so that flat regions are not
amplified into noise."""
LOCAL_CLIP = 8.0
"""Local z-scores are clipped to +-this (an isolated bright voxel in flat tissue would be unbounded)."""
FILL_SHARE = 0.01
"""Voxels at the volume's minimum are a fill outside the field of view when they are at least this share."""


def _spacing(value: object) -> tuple[float, float, float]:
    """A target spacing: 3 finite numbers > 0 mm, or an :class:`InputError`."""
    problem = InputError(f"preprocessing target_spacing {value!r} is not 3 numbers > 0 (mm)")
    if not isinstance(value, (list, tuple)) or len(value) != 3:
        raise problem
    try:
        return tuple(float(checked_number("", v, float, 0.0, low_open=True)) for v in value)  # type: ignore[return-value]
    except InputError:
        raise problem from None


def _percentiles(value: object) -> tuple[float, float]:
    """Two clip percentiles ``low < high`` in [0, 100]."""
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise InputError(f"preprocessing clip_percentiles {value!r} is not 2 numbers")
    low, high = (checked_number("preprocessing clip_percentiles", v, float, 0, 100) for v in value)
    if low >= high:
        raise InputError(f"preprocessing clip_percentiles {list(value)!r} are not increasing")
    return float(low), float(high)


@dataclass(frozen=True)
class Preprocessing:
    """Resampling and intensity normalisation, stored in ``model.json`` under ``preprocessing``.

    - ``target_spacing``: (x, y, z) mm, or None to keep the input's spacing.
    - ``normalization``: ``"percentile-zscore"``: clip to the ``clip_percentiles`` of the volume,
      then subtract the mean and divide by the standard deviation; ``"fov-percentile-zscore"``: the
      same with every statistic taken over the field of view only, i.e. without the voxels holding the
      volume's minimum when they are at least 1 % of it: the fill outside a scan-converted sector
      (MONAI's ``NormalizeIntensity(nonzero=True)`` idea). The share of empty voxels differs between scanners
      (sector angle, depth, export); with whole-volume statistics it shifts every tissue value (0.57
      standard deviations between our phantom, 59 % in view, and a full-view volume, docs/BENCHMARKS.md).
    - ``"fov-local-zscore"``: clipped like ``fov-percentile-zscore``, then every voxel standardised by the
      mean and standard deviation of its neighbourhood (a Gaussian window of ``local_sigma_mm``) over the
      voxels in view; 0 outside the view. The models segment an instrument by its absolute brightness
      more than by its contrast to its surroundings (docs/BENCHMARKS.md, "ablation probe"), while what a
      scanner keeps is that local contrast: a gain, time-gain compensation or display map that changes
      slowly over the window drops out. **[decision]** ours (issue 12); the seed papers normalise
      globally.
    """

    target_spacing: tuple[float, float, float] | None = None
    normalization: str = "percentile-zscore"
    clip_percentiles: tuple[float, float] = (0.5, 99.5)
    local_sigma_mm: float = LOCAL_SIGMA_MM

    def to_dict(self) -> dict:
        out = {
            "target_spacing": list(self.target_spacing) if self.target_spacing else None,
            "normalization": self.normalization,
            "clip_percentiles": list(self.clip_percentiles),
        }
        if self.normalization == "fov-local-zscore":
            out["local_sigma_mm"] = self.local_sigma_mm
        return out

    @classmethod
    def from_dict(cls, data: object) -> Preprocessing:
        """The preprocessing a ``model.json`` describes, each field checked.

        Args:
            data: the ``preprocessing`` object of ``model.json``.

        Returns:
            The preprocessing.

        Raises:
            InputError: naming the field that is not an object, 3 positive spacings, a known normalisation
                or 2 increasing percentiles in [0, 100] (a damaged file would otherwise give a traceback
                or, for reversed percentiles, a silently wrong normalisation).
        """
        if not isinstance(data, dict):
            raise InputError(f"preprocessing {data!r} is not an object")
        spacing = data.get("target_spacing")
        normalization = data.get("normalization", "percentile-zscore")
        if normalization not in NORMALIZATIONS:
            raise InputError(f"preprocessing normalization {normalization!r} is not one of {NORMALIZATIONS}")
        return cls(
            target_spacing=_spacing(spacing) if spacing is not None else None,
            normalization=normalization,
            clip_percentiles=_percentiles(data.get("clip_percentiles", (0.5, 99.5))),
            local_sigma_mm=float(
                checked_number(
                    "preprocessing local_sigma_mm",
                    data.get("local_sigma_mm", LOCAL_SIGMA_MM),
                    float,
                    0.0,
                    MAX_LOCAL_SIGMA_MM,
                    low_open=True,
                )
            ),
        )

    def resample(self, image: sitk.Image, *, is_label: bool = False) -> sitk.Image:
        if self.target_spacing is None:
            return image
        return resample_to_spacing(image, self.target_spacing, is_label=is_label)

    def intensity_statistics(self, array: np.ndarray) -> tuple[float, float, float, float]:
        """(low, high, mean, std) of the whole volume (or of its field of view, by ``normalization``):
        clip bounds, then the clipped data's moments.

        Written with numpy rather than MONAI's ``ScaleIntensityRangePercentiles`` +
        ``NormalizeIntensity`` because inference normalises crops with the statistics of the whole
        volume, and those transforms compute their statistics from the array they are given.
        """
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(f"unknown normalization {self.normalization!r}")
        flat = np.asarray(array, dtype=np.float32).ravel()
        if self.normalization.startswith("fov-") and flat.size:
            fill = flat == flat.min()
            if FILL_SHARE <= fill.mean() < 1.0:  # a fill value around the field of view, not one dark voxel
                flat = flat[~fill]
        if flat.size > 2_000_000:  # a regular subsample gives the same percentiles to <0.1 %
            flat = flat[:: flat.size // 1_000_000]
        low, high = (float(v) for v in np.percentile(flat, self.clip_percentiles))
        scaled = self._clip_scale(flat, low, high)
        return low, high, float(scaled.mean()), float(scaled.std())

    @staticmethod
    def _clip_scale(array: np.ndarray, low: float, high: float) -> np.ndarray:
        span = high - low if high > low else 1.0
        return np.clip((np.asarray(array, dtype=np.float32) - low) / span, 0.0, 1.0)

    def normalize(
        self,
        array: np.ndarray,
        statistics: tuple[float, float, float, float] | None = None,
        spacing_zyx: Sequence[float] | None = None,
    ) -> np.ndarray:
        """Normalise a [z, y, x] array.

        Args:
            array: raw intensities on the model's grid.
            statistics: the whole volume's :meth:`intensity_statistics` (default: the array's own).
            spacing_zyx: the array's voxel size in mm, [z, y, x]; needed by ``fov-local-zscore`` only.

        Returns:
            float32 array of the same shape.
        """
        low, high, mean, std = statistics or self.intensity_statistics(array)
        scaled = self._clip_scale(array, low, high)
        if self.normalization == "fov-local-zscore":
            if spacing_zyx is None:
                raise ValueError("fov-local-zscore needs the array's spacing")
            in_view = np.asarray(array) > low
            return local_zscore(scaled, in_view, self.local_sigma_mm / np.asarray(spacing_zyx, dtype=float))
        return ((scaled - mean) / (std if std > 1e-8 else 1.0)).astype(np.float32)

    def __call__(self, image: sitk.Image) -> tuple[np.ndarray, sitk.Image]:
        """Resample and normalise; return the [z, y, x] float32 array and its grid (an sitk.Image)."""
        resampled = self.resample(image)
        spacing_zyx = resampled.GetSpacing()[::-1]
        return self.normalize(sitk.GetArrayViewFromImage(resampled), spacing_zyx=spacing_zyx), resampled


def local_zscore(scaled: np.ndarray, in_view: np.ndarray, sigma_voxels_zyx: Sequence[float]) -> np.ndarray:
    """``(x - mean) / max(std, LOCAL_EPSILON)`` with the mean and standard deviation of a Gaussian window,
    taken over the voxels ``in_view`` only (normalised convolution); 0 outside the view.

    Hand-written with ``scipy.ndimage.gaussian_filter``: MONAI's intensity transforms normalise with
    global (or per-channel) statistics only.

    Args:
        scaled: [z, y, x] intensities (clipped and scaled to [0, 1]).
        in_view: [z, y, x] bool, the voxels that are part of the scan.
        sigma_voxels_zyx: the window's standard deviation in voxels along z, y, x.

    Returns:
        float32 local z-scores, clipped to +-:data:`LOCAL_CLIP`. The filters run in place, so about five
        float32 volumes are alive at once besides the input.
    """
    from scipy.ndimage import gaussian_filter

    def smooth(array: np.ndarray) -> np.ndarray:  # in place: a volume's worth of memory less per call
        return gaussian_filter(array, sigma, output=array, mode="constant", truncate=3.0)

    sigma = [float(s) for s in sigma_voxels_zyx]
    weight = smooth(np.array(in_view, dtype=np.float32))  # a copy: the caller's mask stays as it is
    keep = np.asarray(in_view, dtype=bool) & (weight > 1e-3)  # in view, and with enough of it around
    np.maximum(weight, 1e-3, out=weight)
    x = np.where(in_view, np.asarray(scaled, dtype=np.float32), np.float32(0.0))
    mean = smooth(x.copy())
    mean /= weight
    spread = smooth(np.square(x))
    spread /= weight
    del weight
    spread -= np.square(mean)
    np.sqrt(np.maximum(spread, LOCAL_EPSILON**2, out=spread), out=spread)
    x -= mean
    del mean
    x /= spread
    np.clip(x, -LOCAL_CLIP, LOCAL_CLIP, out=x)
    x[~keep] = 0.0
    return x
