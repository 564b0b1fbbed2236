"""Segmentation networks that expose their intermediate features.

Every semi-supervised method reads features (encoder levels, decoder levels, the last
decoder feature before the 1x1 output), so the networks are written here in plain torch
rather than taken from MONAI, whose networks return logits only.

Tensors are laid out ``[B, C, Z, Y, X]``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

__all__ = ["CompactUNet", "NetworkConfig", "build_network", "count_parameters", "set_mc_dropout"]


@dataclass(frozen=True)
class NetworkConfig:
    """What is needed to rebuild a network; stored in ``model.json``."""

    architecture: str = "compact-unet"
    in_channels: int = 1
    num_classes: int = 2
    width: float = 1.0
    dropout: float = 0.5

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> NetworkConfig:
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)


def _channels(base: int, width: float) -> int:
    return max(2, int(round(base * width)))


class MaskDropout(nn.Dropout):
    """Element-wise dropout drawn with ``rand_like`` instead of ``bernoulli_``.

    Same semantics as :class:`torch.nn.Dropout` (zeroes with probability ``p`` in training mode and
    scales by 1/(1-p)); hand-written because on the CPU torch's ``bernoulli_`` is about 3x slower
    than ``rand_like`` (0.45 s against 0.15 s for 33 M elements here), and dropout masks were 20 %
    of a full-width Dual-UNet step with its Monte-Carlo passes.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        if self.p >= 1:
            return torch.zeros_like(x)
        keep = torch.rand_like(x) >= self.p
        return x * keep * (1.0 / (1.0 - self.p))


class _ConvBlock(nn.Sequential):
    """Dropout (for Monte-Carlo passes) then 3^3 conv, BatchNorm, ReLU (seed 000, Table I).

    Dropout is element-wise, as TensorFlow's dropout in the paper's implementation; channel-wise
    ``Dropout3d`` at rate 0.5 removes half the channels of a narrow CPU-sized network and stalls it.
    """

    def __init__(self, in_ch: int, out_ch: int, dropout: float) -> None:
        super().__init__(
            MaskDropout(dropout) if dropout > 0 else nn.Identity(),
            nn.Conv3d(in_ch, out_ch, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm3d(out_ch),
            nn.ReLU(inplace=True),
        )


class CompactUNet(nn.Module):
    """Compact-UNet of seed 000, Table I.

    Encoder: conv 32 -> conv 64 -> pool -> 128, 128 -> pool -> 256, 256.
    Decoder: deconv 2^3 stride 2 + skip concatenation -> 128, 128 -> deconv + skip -> 64, 64,
    then a 1x1 convolution to ``num_classes`` logits (softmax replaces the paper's sigmoid;
    both are equivalent for two classes).

    Dropout with rate ``dropout`` is inserted before every 3^3 convolution except the first
    (which sees the raw image), as the paper does for Monte-Carlo dropout. At full width this
    reading of Table I has 5.36 M parameters and costs 1.5e11 FLOPs per 48^3 patch; the paper
    says "about 4.5 M" and 1.73e11 per network, so the table is followed, not the rounded count.

    ``width`` multiplies every channel count so that CPU and test configurations can shrink it.
    Input sizes must be divisible by 4.
    """

    feature_names = ("enc1", "enc2", "enc3", "dec2", "dec1")

    def __init__(
        self, in_channels: int = 1, num_classes: int = 2, width: float = 1.0, dropout: float = 0.5
    ) -> None:
        super().__init__()
        c32, c64, c128, c256 = (_channels(c, width) for c in (32, 64, 128, 256))
        self.config = NetworkConfig("compact-unet", in_channels, num_classes, width, dropout)
        self.enc1 = nn.Sequential(_ConvBlock(in_channels, c32, 0.0), _ConvBlock(c32, c64, dropout))
        self.enc2 = nn.Sequential(_ConvBlock(c64, c128, dropout), _ConvBlock(c128, c128, dropout))
        self.enc3 = nn.Sequential(_ConvBlock(c128, c256, dropout), _ConvBlock(c256, c256, dropout))
        self.pool = nn.MaxPool3d(kernel_size=3, stride=2, padding=1)
        self.up2 = nn.ConvTranspose3d(c256, c128, kernel_size=2, stride=2)
        self.dec2 = nn.Sequential(_ConvBlock(2 * c128, c128, dropout), _ConvBlock(c128, c128, dropout))
        self.up1 = nn.ConvTranspose3d(c128, c64, kernel_size=2, stride=2)
        self.dec1 = nn.Sequential(_ConvBlock(2 * c64, c64, dropout), _ConvBlock(c64, c64, dropout))
        self.head = nn.Conv3d(c64, num_classes, kernel_size=1)
        self.feature_channels = {"enc1": c64, "enc2": c128, "enc3": c256, "dec2": c128, "dec1": c64}

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Return logits and the named features; ``dec1`` is the last feature before the 1x1 output."""
        e1 = self.enc1(x)
        e2 = self.enc2(self.pool(e1))
        e3 = self.enc3(self.pool(e2))
        d2 = self.dec2(torch.cat([self.up2(e3), e2], dim=1))
        d1 = self.dec1(torch.cat([self.up1(d2), e1], dim=1))
        logits = self.head(d1)
        return logits, {"enc1": e1, "enc2": e2, "enc3": e3, "dec2": d2, "dec1": d1}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)[0]


_ARCHITECTURES = {"compact-unet": CompactUNet}


def build_network(config: NetworkConfig | dict) -> nn.Module:
    """Build a network from its stored configuration."""
    if isinstance(config, dict):
        config = NetworkConfig.from_dict(config)
    try:
        cls = _ARCHITECTURES[config.architecture]
    except KeyError:
        known = ", ".join(sorted(_ARCHITECTURES))
        raise ValueError(f"unknown network architecture {config.architecture!r}; known: {known}") from None
    return cls(config.in_channels, config.num_classes, config.width, config.dropout)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def set_mc_dropout(module: nn.Module, active: bool) -> None:
    """Switch only the dropout layers to train mode (Monte-Carlo dropout), BatchNorm stays in eval."""
    for m in module.modules():
        if isinstance(m, (nn.Dropout, nn.Dropout3d)):
            m.train(active)
