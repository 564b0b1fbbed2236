"""Loss terms shared by several methods."""

from __future__ import annotations

import torch
from monai.losses import DiceCELoss


def supervised_loss() -> DiceCELoss:
    """0.5 (CE + soft Dice on the foreground), the supervised loss of METHODS.md.

    Dice = 1 - (2 sum(s y) + 1e-5) / (sum(s^2) + sum(y^2) + 1e-5), summed over the whole batch:
    MONAI's ``DiceCELoss`` with squared denominators, batch reduction and no background term.
    """
    return DiceCELoss(
        include_background=False,
        to_onehot_y=True,
        softmax=True,
        squared_pred=True,
        batch=True,
        smooth_nr=1e-5,
        smooth_dr=1e-5,
        lambda_dice=0.5,
        lambda_ce=0.5,
    )


def ramp(t: float, length: float) -> float:
    """Gaussian ramp-up exp(-5 (1 - clip(t, 0, T)/T)^2), with ramp(t, 0) = 1 (seed 000, Sec. IV-B)."""
    if length <= 0:
        return 1.0
    phase = 1.0 - min(max(float(t), 0.0), float(length)) / float(length)
    return float(torch.exp(torch.tensor(-5.0 * phase * phase)))
