"""Instrument recognition for the locator: a small fully-convolutional likelihood network on its grid.

**[decision] (locator II, issue 11; overrides "from centre points only").** The points-only DQN of seed
000 never learnt to *recognise* the instrument in speckle from a distance-to-point reward (the probes
in docs/BENCHMARKS.md: given the mask as input, the same network finds the centre to 5-7 voxels; from
the image, no better than the grid centre). So recognition learns from the **voxel masks of the
labelled cases**, and the DQN keeps learning the **search** from the centre points of every case,
labelled and unlabelled. The likelihood map this network gives becomes state channels of the DQN
(see :mod:`.environment`); the paper's points-only agent stays available (``--recognition off``).

The input: the normalised grid and its band-pass (:func:`~.environment.band_pass`; thin bright
structures kept, shading removed), which speeds up learning the thin guide-wires.
The network (``stride`` 2, the shipped locator II): a stride-2 convolution (the grid's voxels all reach
it, thin guide-wires included), then MONAI's ``UNet`` at half the grid's resolution; one logit per
half-resolution voxel, turned into an instrument likelihood and interpolated back onto the grid. Working
at half resolution costs about an eighth of a full-resolution network of the same widths (the locator
must answer in a fraction of a second on a CPU). ``stride`` 1: no stem, a four-level ``UNet`` with a
residual unit per level at the grid's own resolution (one logit per grid voxel), several times the
inference cost; ``benchmarks/locator_recognition.py --stride 1`` measures whether it recognises better.

Targets: the label resampled linearly onto the grid, instrument where it covers at least
:data:`MASK_FRACTION` of a grid voxel (so a 0.6 mm guide-wire on a 1.2 mm grid still has voxels),
then brought onto the output grid (max-pooled by 2 for stride 2). Loss: MONAI's ``DiceLoss`` on the
sigmoid plus a cross-entropy weighting instrument voxels :data:`POS_WEIGHT` times (the instrument is
~0.1 % of the volume; plain cross-entropy would learn "nothing anywhere").
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F
from monai.losses import DiceLoss
from monai.networks.nets import UNet
from scipy import ndimage
from torch import nn

from .environment import GridGeometry, band_pass

MASK_FRACTION = 0.2
PATCH = 48  # training crop of the grid (a multiple of MULTIPLE)
POS_WEIGHT = 3.0  # instrument voxels weigh 3x in the cross-entropy (they are ~1 % of a crop)
MULTIPLE = 8  # stride 2: the stem halves the grid and the UNet twice more; stride 1: the UNet three times
# Adam's learning rate and the training crop of the likelihood network, per stride. Stride 2: as the
# shipped locator II was trained (train_recognition's defaults). Stride 1, measured (docs/BENCHMARKS.md,
# "Recognition probe II"): at lr 3e-3 with 48³ crops it did not train (loss 0.83 after 1500 steps); at
# 1e-3 with 32³ crops it did (0.42 after 3000), with 2.7x the mask Dice of stride 2 on the same data.
TRAINING_BY_STRIDE = {2: {"lr": 1e-2, "patch": PATCH}, 1: {"lr": 1e-3, "patch": 32}}


@dataclass(frozen=True)
class RecognitionConfig:
    """Shape of the recognition network; stored in ``locator.json`` under ``recognition``."""

    width: int = 12
    inputs: int = 2  # the normalised grid and its band-pass
    stride: int = 2  # grid voxels per output voxel: 2 (stem + half-resolution UNet) or 1 (full resolution);
    # 2 is also what a locator.json written before this field means

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> RecognitionConfig:
        config = cls(**{k: int(v) for k, v in data.items() if k in cls.__dataclass_fields__})
        if config.stride not in (1, 2):
            raise ValueError(f"recognition stride must be 1 or 2, got {config.stride}")
        return config


class RecognitionNet(nn.Module):
    """Instrument logits at 1/``stride`` of the grid's resolution from :func:`network_input` batches."""

    def __init__(self, config: RecognitionConfig) -> None:
        super().__init__()
        self.config = config
        w = config.width
        if config.stride == 1:
            self.stem = nn.Identity()
            self.body = UNet(
                3, config.inputs, 1, channels=(w, 2 * w, 4 * w, 8 * w), strides=(2, 2, 2), num_res_units=1
            )
        else:
            self.stem = nn.Sequential(nn.Conv3d(config.inputs, w, 3, stride=2, padding=1), nn.PReLU())
            self.body = UNet(3, w, 1, channels=(w, 2 * w, 4 * w), strides=(2, 2), num_res_units=0)

    def forward(self, volume: torch.Tensor) -> torch.Tensor:
        return self.body(self.stem(volume))


def network_input(volume: np.ndarray, inputs: int = 2) -> np.ndarray:
    """``[inputs, g, g, g]`` float32: the normalised grid, then (with 2 inputs) its band-pass."""
    channels = [volume, band_pass(volume)][:inputs]
    return np.stack(channels).astype(np.float32, copy=False)


def grid_mask(label: sitk.Image, geometry: GridGeometry) -> np.ndarray:
    """``[g, g, g]`` bool: grid voxels that the instrument label covers by at least :data:`MASK_FRACTION`.

    Args:
        label: the case's label image (instrument > 0), on its image's geometry.
        geometry: the locator grid of that image (:func:`~.environment.grid_geometry`).

    Returns:
        The instrument mask on the grid, array order (z, y, x).
    """
    binary = sitk.Cast(sitk.Greater(label, 0), sitk.sitkFloat32)
    resampled = sitk.Resample(
        binary,
        [geometry.size] * 3,
        sitk.Transform(),
        sitk.sitkLinear,
        tuple(geometry.origin),
        tuple(geometry.spacing),
        tuple(geometry.direction.ravel()),
        0.0,
        sitk.sitkFloat32,
    )
    return sitk.GetArrayFromImage(resampled) >= MASK_FRACTION


def output_target(mask: np.ndarray, stride: int) -> np.ndarray:
    """A grid mask on the network's output grid, float32: itself (stride 1) or max-pooled by 2."""
    return mask.astype(np.float32) if stride == 1 else half_resolution(mask)


def half_resolution(mask: np.ndarray) -> np.ndarray:
    """A grid mask max-pooled by 2 (odd sizes padded), float32: the stride-2 network's output grid."""
    pad = [(0, s % 2) for s in mask.shape]
    padded = np.pad(mask.astype(np.float32), pad)
    z, y, x = (s // 2 for s in padded.shape)
    return padded.reshape(z, 2, y, 2, x, 2).max(axis=(1, 3, 5))


def likelihood_map(net: RecognitionNet, volume: np.ndarray, device: torch.device) -> np.ndarray:
    """Instrument likelihood ``[g, g, g]`` in [0, 1] of a normalised grid volume, without gradients.

    The grid is padded to a multiple of 8 (the network's downsampling); a stride-2 network's output is
    interpolated trilinearly back onto the grid.
    """
    shape = volume.shape
    pad = [(-s) % MULTIPLE for s in shape]
    x = torch.from_numpy(network_input(volume, net.config.inputs))[None].to(device)
    x = F.pad(x, (0, pad[2], 0, pad[1], 0, pad[0]))
    with torch.no_grad():
        full = torch.sigmoid(net(x).float())
        if net.config.stride > 1:
            full = F.interpolate(full, scale_factor=net.config.stride, mode="trilinear", align_corners=False)
    return full[0, 0, : shape[0], : shape[1], : shape[2]].cpu().numpy()


def recognizer(net: RecognitionNet, device: torch.device) -> Callable[[np.ndarray], np.ndarray]:
    """The ``recognizer`` argument of :func:`~.environment.prepare_volume` for a trained network."""
    return lambda volume: likelihood_map(net, volume, device)


def likelihood_levels(likelihood: np.ndarray, scales: Sequence[int]) -> np.ndarray:
    """``[n_scales, g, g, g]``: the likelihood, and a running maximum of width ``scale`` for scales > 1.

    A coarse crop samples every ``scale``-th voxel; the running maximum keeps a thin instrument lit at
    those samples (as the ``peak`` levels do for the image).
    """
    stack = [
        likelihood if s <= 1 else ndimage.maximum_filter(likelihood, size=int(s), mode="nearest")
        for s in scales
    ]
    return np.stack(stack).astype(np.float32, copy=False)


# --------------------------------------------------------------------------------------------- training


def _crop_starts(mask: np.ndarray, patch: int, rng: np.random.Generator, positive: bool) -> np.ndarray:
    """Corner of a ``patch³`` crop: around an instrument voxel when ``positive``, else anywhere."""
    shape = np.array(mask.shape)
    if positive and mask.any():
        voxels = np.argwhere(mask)
        centre = voxels[rng.integers(len(voxels))] + rng.integers(-patch // 4, patch // 4 + 1, 3)
    else:
        centre = rng.integers(0, shape)
    return np.clip(centre - patch // 2, 0, np.maximum(shape - patch, 0))


def _batch(
    volumes: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    batch: int,
    patch: int,
    rng: np.random.Generator,
    positive_fraction: float = 0.7,
    stride: int = 2,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Crops ``[B, C, p, p, p]`` of network inputs ``[C, g, g, g]`` and their targets on the output grid
    ``[B, 1, p/stride, p/stride, p/stride]``, mirrored in y and x at random."""
    images, targets = [], []
    for _ in range(batch):
        i = int(rng.integers(len(volumes)))
        z, y, x = _crop_starts(masks[i], patch, rng, rng.random() < positive_fraction)
        window = (slice(z, z + patch), slice(y, y + patch), slice(x, x + patch))
        image, mask = volumes[i][(slice(None), *window)], masks[i][window]
        for axis in (1, 2):  # the probe stays on top (z): mirror only across the beam
            if rng.random() < 0.5:
                image, mask = np.flip(image, axis + 1), np.flip(mask, axis)
        images.append(np.ascontiguousarray(image, dtype=np.float32))
        targets.append(output_target(mask, stride))
    return torch.from_numpy(np.stack(images)), torch.from_numpy(np.stack(targets))[:, None]


def train_recognition(
    volumes: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    *,
    config: RecognitionConfig,
    steps: int,
    device: torch.device,
    seed: int = 0,
    batch: int = 4,
    lr: float = 1e-2,
    patch: int = PATCH,
    progress: Callable[[int, float], None] | None = None,
    network: RecognitionNet | None = None,
) -> tuple[RecognitionNet, list[float]]:
    """Train the recognition network on normalised grid volumes and their grid masks.

    Args:
        volumes: normalised ``[g, g, g]`` grids of the labelled cases.
        masks: their instrument masks (:func:`grid_mask`).
        config: network shape.
        steps: Adam steps, one batch of random crops each (70 % around the instrument).
        device: where to train.
        seed: seeds the crops and the initial weights.
        batch: crops per step; lr: Adam's learning rate (cosine decay to 5 % of it).
        patch: crop size (a multiple of 8; at most the smallest grid).
        progress: called with (step, loss) after every step.
        network: continue training this network (default: a new one of ``config``).

    Returns:
        The trained network in eval mode and the loss of every step.
    """
    if not volumes or len(volumes) != len(masks):
        raise ValueError("recognition needs at least one volume with its mask")
    patch = min(patch // MULTIPLE * MULTIPLE, *(min(v.shape) // MULTIPLE * MULTIPLE for v in volumes))
    inputs = [network_input(v, config.inputs) for v in volumes]
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    net = (network if network is not None else RecognitionNet(config)).to(device).train()
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps, eta_min=0.05 * lr)
    dice = DiceLoss(sigmoid=True, batch=True)
    losses = []
    for step in range(steps):
        images, targets = _batch(inputs, masks, batch, patch, rng, stride=net.config.stride)
        logits, targets = net(images.to(device)), targets.to(device)
        loss = dice(logits, targets) + F.binary_cross_entropy_with_logits(
            logits, targets, pos_weight=torch.tensor(POS_WEIGHT, device=device)
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(float(loss.detach()))
        if progress is not None:
            progress(step + 1, losses[-1])
    return net.eval(), losses


def mask_overlap(likelihood: np.ndarray, mask: np.ndarray, threshold: float = 0.5) -> float:
    """Dice of the thresholded likelihood with a grid mask (1.0 when both are empty)."""
    found = likelihood >= threshold
    total = int(found.sum()) + int(mask.sum())
    return 1.0 if total == 0 else 2.0 * float(np.logical_and(found, mask).sum()) / total


# ------------------------------------------------------------------------------------- after the search


def instrument_middle(
    likelihood: np.ndarray,
    point: Sequence[float],
    threshold: float = 0.5,
    reach: float = 12.0,
    min_voxels: int = 8,
) -> np.ndarray | None:
    """The middle of the recognised instrument nearest ``point``, on the grid (z, y, x), or None.

    The annotated centre is the middle of the visible instrument along its length (see
    :func:`~SemiSupSegLib.phantom.generate_phantom`), which a search stepping one voxel at a time
    only approaches. So the search's point picks the instrument, and this puts the point in its
    middle: the connected component of ``likelihood >= threshold`` nearest ``point`` (within
    ``reach`` grid voxels, at least ``min_voxels``), its principal axis (likelihood-weighted), and the
    weighted mean of the voxels whose projection on that axis lies within 1.5 voxels of the median
    projection. All vectorised; about 0.01 s on a 96³ grid.

    Args:
        likelihood: ``[g, g, g]`` instrument likelihood.
        point: the search's grid point (z, y, x).
        threshold: likelihood that counts as instrument.
        reach: farthest distance (grid voxels) from ``point`` to the component.
        min_voxels: smallest component taken for an instrument.

    Returns:
        The middle (z, y, x, continuous), or None when no component qualifies (keep ``point``).
    """
    found = likelihood >= threshold
    if not found.any():
        return None
    voxels = np.argwhere(found)
    distance = np.linalg.norm(voxels - np.asarray(point, float), axis=1)
    nearest = int(np.argmin(distance))
    if distance[nearest] > reach:
        return None
    components, _ = ndimage.label(found)
    member = components[tuple(voxels.T)] == components[tuple(voxels[nearest])]
    coords = voxels[member].astype(float)
    if len(coords) < min_voxels:
        return None
    weights = likelihood[found][member].astype(float)
    mean = np.average(coords, axis=0, weights=weights)
    centred = coords - mean
    axis = np.linalg.eigh((centred * weights[:, None]).T @ centred)[1][:, -1]
    along = centred @ axis
    middle = np.abs(along - np.median(along)) <= 1.5
    return np.average(coords[middle], axis=0, weights=weights[middle])


def point_confidence(likelihood: np.ndarray, point: Sequence[float], radius: int = 2) -> float:
    """The largest likelihood within ``radius`` grid voxels (a cube) of ``point``: is it on the instrument?"""
    centre = np.rint(np.asarray(point, float)).astype(int)
    low = np.clip(centre - radius, 0, np.array(likelihood.shape) - 1)
    high = np.clip(centre + radius + 1, 1, np.array(likelihood.shape))
    return float(likelihood[tuple(slice(a, b) for a, b in zip(low, high, strict=True))].max())


def confidence_threshold(confidences: Sequence[float], hits: Sequence[bool], default: float = 0.5) -> float:
    """The confidence threshold that best separates hits from misses (balanced accuracy) on validation.

    Candidates are ``default`` and the midpoints between sorted confidences; with only hits or only
    misses, ``default``.
    """
    conf, hit = np.asarray(confidences, float), np.asarray(hits, bool)
    if hit.all() or not hit.any():
        return float(default)
    values = np.sort(conf)
    candidates = np.unique(np.concatenate([[default], (values[1:] + values[:-1]) / 2]))
    scores = [0.5 * (np.mean(conf[hit] >= t) + np.mean(conf[~hit] < t)) for t in candidates]
    return float(candidates[int(np.argmax(scores))])
