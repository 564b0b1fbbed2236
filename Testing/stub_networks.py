"""Test doubles: stub networks whose output is a known function of the input, and a model around them.

With a stub the expected label is exact, so a test can check geometry (axis order, borders, padding)
without training anything.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from torch import nn

from SemiSupSegLib.model_store import LoadedModel
from SemiSupSegLib.preprocessing import Preprocessing


class ThresholdNet(nn.Module):
    """Stub network: foreground logit ``20 (x - level)`` of the normalised input, background 0."""

    def __init__(self, level: float) -> None:
        super().__init__()
        self.level = level

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.zeros_like(x), 20.0 * (x - self.level)], dim=1)


class ConstantNet(nn.Module):
    """Stub network whose foreground probability is ``p`` everywhere."""

    def __init__(self, p: float = 0.9) -> None:
        super().__init__()
        self.logit = math.log(p / (1 - p))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.zeros_like(x), torch.full_like(x, self.logit)], dim=1)


def stub_model(
    networks: dict[str, nn.Module],
    patch_zyx,
    target_spacing,
    inference_networks: list[str] | None = None,
    normalization: str = "percentile-zscore",
) -> LoadedModel:
    """A loaded two-class model around ``networks`` (``patch_zyx``: an int or 3 sizes)."""
    patch = [patch_zyx] * 3 if isinstance(patch_zyx, int) else list(patch_zyx)
    meta = {
        "name": "stub",
        "patch_size": patch,
        "preprocessing": Preprocessing(
            target_spacing=tuple(target_spacing), normalization=normalization
        ).to_dict(),
        "classes": {"0": "background", "1": "foreground"},
    }
    if inference_networks:
        meta["inference_networks"] = inference_networks
    return LoadedModel(path=Path("stub-model"), meta=meta, networks=networks)


def halfway_level(image: sitk.Image, low: float, high: float, target_spacing=None) -> float:
    """The normalised intensity half-way between raw ``low`` and ``high`` under ``image``'s statistics."""
    prep = Preprocessing(target_spacing=target_spacing)
    stats = prep.intensity_statistics(sitk.GetArrayViewFromImage(image))
    return float(prep.normalize(np.array([low, high]), stats).mean())
