"""Loss terms shared by several methods."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss


def supervised_loss(ce_weight: float = 0.5, dice_weight: float = 0.5) -> DiceCELoss:
    """w_ce CE + w_dice soft Dice on the foreground; the defaults give METHODS.md's 0.5 (CE + Dice).

    Dice = 1 - (2 sum(s y) + 1e-5) / (sum(s^2) + sum(y^2) + 1e-5), summed over the whole batch:
    MONAI's ``DiceCELoss`` with squared denominators, batch reduction and no background term. The
    Dual-UNet uses weights (1, 1), seed 000's eq. 2 (two-class softmax CE equals the sigmoid BCE).

    Args:
        ce_weight: the weight of the voxel-mean cross-entropy.
        dice_weight: the weight of the soft Dice loss.

    Returns:
        The loss module, called as ``loss(logits [B, K, ...], labels [B, 1, ...])``.
    """
    return DiceCELoss(
        include_background=False,
        to_onehot_y=True,
        softmax=True,
        squared_pred=True,
        batch=True,
        smooth_nr=1e-5,
        smooth_dr=1e-5,
        lambda_dice=dice_weight,
        lambda_ce=ce_weight,
    )


def ramp(t: float, length: float) -> float:
    """Gaussian ramp-up exp(-5 (1 - clip(t, 0, T)/T)^2), with ramp(t, 0) = 1 (seed 000, Sec. IV-B)."""
    if length <= 0:
        return 1.0
    phase = 1.0 - min(max(float(t), 0.0), float(length)) / float(length)
    return float(torch.exp(torch.tensor(-5.0 * phase * phase)))


def binary_entropy(p: float) -> float:
    """H(p) = -p ln p - (1 - p) ln(1 - p) in nats; maps the seed-000 probability thresholds to entropies.

    H(0.5) = ln 2 = 0.6931 (tau_1), H(0.7) = 0.6109 (tau_2) (seed 000, Sec. III-B).
    """
    p = float(p)
    if not 0.0 < p < 1.0:
        return 0.0
    return -(p * math.log(p) + (1.0 - p) * math.log(1.0 - p))


def ramped_threshold(tau: float, t: float, length: float) -> float:
    """(0.75 + 0.25 ramp(t, T)) tau: an uncertainty threshold rising from 3/4 tau to tau (UA-MT; seed 000)."""
    return (0.75 + 0.25 * ramp(t, length)) * float(tau)


def squared_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Voxel-wise ||a - b||^2 summed over the class dimension: ``[B, K, ...] -> [B, ...]``.

    For two classes this is twice :func:`foreground_squared_distance` (the channels differ by opposite
    amounts).
    """
    return ((a - b) ** 2).sum(dim=1)


def foreground_squared_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Voxel-wise (a_fg - b_fg)^2 of the foreground probabilities ``1 - p_0``: ``[B, K, ...] -> [B, ...]``.

    Seed 000's network has one sigmoid output, so its ||y^ - P^||^2 (eqs. 3, 5, 9) is this single-channel
    squared difference; for a two-class softmax it is half of :func:`squared_distance`.
    """
    return (a[:, 0] - b[:, 0]) ** 2


VOXEL_DISTANCES = {"foreground": foreground_squared_distance, "all-channels": squared_distance}
"""The voxel distance ||.||^2 of the Dual-UNet's eqs. 3 and 5, by option value (``voxel_distance``)."""


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """sum(mask * values) / sum(mask), and 0 when the mask is empty (the form of seed 000 eqs. 3 and 5)."""
    mask = mask.to(values.dtype)
    return (mask * values).sum() / mask.sum().clamp_min(1.0)


def uncertainty_consistency(
    p_student: torch.Tensor, p_teacher: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """UA-MT consistency sum(mask (p_s - p_t)^2) / (K sum(mask) + 1e-16); K = 2 gives METHODS.md's formula.

    ``p_*`` are ``[B, K, ...]`` probabilities, ``mask`` is ``[B, ...]``; ``p_teacher`` must carry no gradient.
    """
    mask = mask.unsqueeze(1).to(p_student.dtype)
    k = p_student.shape[1]
    return (mask * (p_student - p_teacher) ** 2).sum() / (k * mask.sum() + 1e-16)


def masked_cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor | None = None,
    class_weights: tuple[float, ...] | None = None,
) -> torch.Tensor:
    """Voxel cross-entropy averaged over ``mask`` with class weights: sum(m w_y CE) / sum(m w_y).

    Without a mask it is torch's weighted ``cross_entropy`` (the weighted mean of ``nn.CrossEntropyLoss``,
    which CoraNet's weighted CE is); without weights and mask the plain voxel mean. An empty mask gives 0.

    Args:
        logits: ``[B, K, ...]``.
        target: class indices ``[B, ...]`` or ``[B, 1, ...]`` (long).
        mask: ``[B, ...]`` boolean or 0/1, or None for every voxel.
        class_weights: one weight per class, or None for 1 each.

    Returns:
        The scalar loss.
    """
    target = target[:, 0] if target.dim() == logits.dim() else target
    voxel = F.cross_entropy(logits.float(), target, reduction="none")
    weights = torch.ones_like(voxel)
    if class_weights is not None:
        weights = torch.as_tensor(class_weights, dtype=voxel.dtype, device=voxel.device)[target]
    if mask is not None:
        weights = weights * mask.to(voxel.dtype)
    return (weights * voxel).sum() / weights.sum().clamp_min(1e-12)


def masked_dice_loss(
    logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Soft Dice on the foreground classes restricted to ``mask``, averaged over those classes.

    Per class c >= 1: 1 - (2 sum(m s y) + 1e-5) / (sum(m s^2) + sum(m y^2) + 1e-5), summed over the whole
    batch, ``s`` the softmax of class c and ``y`` its one-hot target: with no mask this is the Dice of
    :func:`supervised_loss`.

    Args:
        logits: ``[B, K, ...]``.
        target: class indices ``[B, ...]`` or ``[B, 1, ...]``.
        mask: ``[B, ...]`` boolean or 0/1, or None.

    Returns:
        The scalar loss.
    """
    target = target[:, 0] if target.dim() == logits.dim() else target
    probs = torch.softmax(logits.float(), dim=1)[:, 1:]
    onehot = F.one_hot(target, logits.shape[1]).movedim(-1, 1)[:, 1:].to(probs.dtype)
    m = torch.ones_like(probs[:, :1]) if mask is None else mask.unsqueeze(1).to(probs.dtype)
    dims = [0, *range(2, probs.dim())]
    overlap = (m * probs * onehot).sum(dims)
    denominator = (m * probs * probs).sum(dims) + (m * onehot).sum(dims)
    return (1.0 - (2.0 * overlap + 1e-5) / (denominator + 1e-5)).mean()


def masked_ce_dice(
    logits: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor | None = None,
    weights: tuple[float, float] = (0.5, 0.5),
) -> torch.Tensor:
    """w_ce :func:`masked_cross_entropy` + w_dice :func:`masked_dice_loss`: METHODS.md's supervised loss
    0.5 (CE + Dice) on the voxels of ``mask`` (all of them without one, equal to :func:`supervised_loss`)."""
    ce = masked_cross_entropy(logits, target, mask)
    return weights[0] * ce + weights[1] * masked_dice_loss(logits, target, mask)
