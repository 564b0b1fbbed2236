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

__all__ = [
    "ARCHITECTURES",
    "CompactUNet",
    "NetworkConfig",
    "OutputHead",
    "VNet",
    "build_network",
    "count_parameters",
    "set_mc_dropout",
    "size_divisor",
]


@dataclass(frozen=True)
class NetworkConfig:
    """What is needed to rebuild a network; stored in ``model.json``."""

    architecture: str = "compact-unet"
    in_channels: int = 1
    num_classes: int = 2
    width: float = 1.0
    dropout: float = 0.5
    #: A 3^3 conv block between the last decoder feature and the 1x1 output (CoraNet's main head D).
    head_block: bool = False

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


class OutputHead(nn.Module):
    """An output head: an optional 3^3 conv block, then the 1x1 convolution to the class logits.

    With the block it is one head of CoraNet (METHODS.md "002": "each head is a 3^3 conv block plus a
    1x1"). A backbone keeps its own output as two attributes, ``head_block`` and ``head`` (the 1x1), so
    that the state dicts of models saved before the block existed still load (``head.weight``).
    """

    def __init__(self, in_ch: int, num_classes: int, block: bool, dropout: float) -> None:
        super().__init__()
        self.block = _ConvBlock(in_ch, in_ch, dropout) if block else nn.Identity()
        self.conv = nn.Conv3d(in_ch, num_classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.block(x))


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
    Input sizes must be divisible by 4 (:attr:`size_divisor`).
    """

    feature_names = ("enc1", "enc2", "enc3", "dec2", "dec1")
    size_divisor = 4

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 2,
        width: float = 1.0,
        dropout: float = 0.5,
        head_block: bool = False,
    ) -> None:
        super().__init__()
        c32, c64, c128, c256 = (_channels(c, width) for c in (32, 64, 128, 256))
        self.config = NetworkConfig("compact-unet", in_channels, num_classes, width, dropout, head_block)
        self.enc1 = nn.Sequential(_ConvBlock(in_channels, c32, 0.0), _ConvBlock(c32, c64, dropout))
        self.enc2 = nn.Sequential(_ConvBlock(c64, c128, dropout), _ConvBlock(c128, c128, dropout))
        self.enc3 = nn.Sequential(_ConvBlock(c128, c256, dropout), _ConvBlock(c256, c256, dropout))
        self.pool = nn.MaxPool3d(kernel_size=3, stride=2, padding=1)
        self.up2 = nn.ConvTranspose3d(c256, c128, kernel_size=2, stride=2)
        self.dec2 = nn.Sequential(_ConvBlock(2 * c128, c128, dropout), _ConvBlock(c128, c128, dropout))
        self.up1 = nn.ConvTranspose3d(c128, c64, kernel_size=2, stride=2)
        self.dec1 = nn.Sequential(_ConvBlock(2 * c64, c64, dropout), _ConvBlock(c64, c64, dropout))
        self.head_block = _ConvBlock(c64, c64, dropout) if head_block else nn.Identity()
        self.head = nn.Conv3d(c64, num_classes, kernel_size=1)
        self.feature_channels = {"enc1": c64, "enc2": c128, "enc3": c256, "dec2": c128, "dec1": c64}

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Return logits and the named features; ``dec1`` is the last decoder feature before the output
        (before the head block where there is one)."""
        e1 = self.enc1(x)
        e2 = self.enc2(self.pool(e1))
        e3 = self.enc3(self.pool(e2))
        d2 = self.dec2(torch.cat([self.up2(e3), e2], dim=1))
        d1 = self.dec1(torch.cat([self.up1(d2), e1], dim=1))
        logits = self.head(self.head_block(d1))
        return logits, {"enc1": e1, "enc2": e2, "enc3": e3, "dec2": d2, "dec1": d1}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)[0]


def _vnet_stage(in_ch: int, out_ch: int, convs: int) -> nn.Sequential:
    """``convs`` 3^3 conv + BatchNorm + ReLU layers (the first maps ``in_ch`` to ``out_ch``)."""
    layers: list[nn.Module] = []
    for i in range(convs):
        layers += [nn.Conv3d(in_ch if i == 0 else out_ch, out_ch, 3, padding=1), nn.BatchNorm3d(out_ch)]
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def _vnet_resample(in_ch: int, out_ch: int, up: bool) -> nn.Sequential:
    """Downsampling conv k = 2, s = 2 (or upsampling transposed conv k = 2, s = 2), BatchNorm, ReLU."""
    conv = nn.ConvTranspose3d if up else nn.Conv3d
    return nn.Sequential(conv(in_ch, out_ch, 2, stride=2), nn.BatchNorm3d(out_ch), nn.ReLU(inplace=True))


class VNet(nn.Module):
    """The VNet of UA-MT / SSL4MIS (METHODS.md "Backbones"), used by seeds 003 and 004.

    n_filters 16: encoder stages of 1, 2, 3, 3, 3 convs at 16, 32, 64, 128, 256 channels, each followed
    (but the last) by a conv k = 2, s = 2 downsampling; decoder stages of 3, 3, 2, 1 convs after a
    transposed conv k = 2, s = 2, each added (not concatenated) to the encoder stage of its size; a 1x1
    output. With ``dropout`` > 0, ``Dropout3d(dropout)`` acts on the bottleneck and on the last decoder
    stage (the published ``has_dropout``; 0.5 there), the only dropout of this network.

    Written here in plain torch (not MONAI's VNet) so that it returns its named features like
    :class:`CompactUNet`: ``enc1`` to ``enc5`` and ``dec4`` to ``dec1``, ``dec1`` being the last feature
    before the output. ``width`` multiplies every channel count. Input sizes must be divisible by 16.
    """

    feature_names = ("enc1", "enc2", "enc3", "enc4", "enc5", "dec4", "dec3", "dec2", "dec1")
    size_divisor = 16

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 2,
        width: float = 1.0,
        dropout: float = 0.5,
        head_block: bool = False,
    ) -> None:
        super().__init__()
        ch = [_channels(c, width) for c in (16, 32, 64, 128, 256)]
        self.config = NetworkConfig("vnet", in_channels, num_classes, width, dropout, head_block)
        ins = [in_channels, *ch[1:]]  # a stage after a downsampling keeps its channel count
        self.encoders = nn.ModuleList(
            _vnet_stage(i, o, n) for i, o, n in zip(ins, ch, (1, 2, 3, 3, 3), strict=True)
        )
        self.downs = nn.ModuleList(_vnet_resample(ch[i], ch[i + 1], up=False) for i in range(4))
        self.ups = nn.ModuleList(_vnet_resample(ch[i + 1], ch[i], up=True) for i in (3, 2, 1, 0))
        self.decoders = nn.ModuleList(
            _vnet_stage(ch[i], ch[i], n) for i, n in zip((3, 2, 1, 0), (3, 3, 2, 1), strict=True)
        )
        self.dropout = nn.Dropout3d(dropout) if dropout > 0 else nn.Identity()
        self.head_block = _ConvBlock(ch[0], ch[0], 0.0) if head_block else nn.Identity()
        self.head = nn.Conv3d(ch[0], num_classes, kernel_size=1)
        names = self.feature_names
        self.feature_channels = dict(zip(names, [*ch, ch[3], ch[2], ch[1], ch[0]], strict=True))

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Return logits and the named features; ``dec1`` is the last feature before the output head."""
        skips = []
        for i, encoder in enumerate(self.encoders):
            x = encoder(x if i == 0 else self.downs[i - 1](x))
            skips.append(x)
        features = {f"enc{i + 1}": s for i, s in enumerate(skips)}
        x = self.dropout(x)
        for i, (up, decoder) in enumerate(zip(self.ups, self.decoders, strict=True)):
            x = decoder(up(x) + skips[3 - i])
            features[f"dec{4 - i}"] = x
        logits = self.head(self.head_block(self.dropout(x)))
        return logits, features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)[0]


ARCHITECTURES: dict[str, type[nn.Module]] = {"compact-unet": CompactUNet, "vnet": VNet}
"""Every backbone by the name ``--network`` and ``model.json`` use."""


def _architecture(name: str) -> type[nn.Module]:
    try:
        return ARCHITECTURES[name]
    except KeyError:
        known = ", ".join(sorted(ARCHITECTURES))
        raise ValueError(f"unknown network architecture {name!r}; known: {known}") from None


def size_divisor(architecture: str) -> int:
    """What every patch side must be a multiple of for ``architecture`` (its pooling depth).

    Args:
        architecture: a key of :data:`ARCHITECTURES`.

    Returns:
        4 for the Compact-UNet, 16 for the VNet.
    """
    return _architecture(architecture).size_divisor


def build_network(config: NetworkConfig | dict) -> nn.Module:
    """Build a network from its stored configuration."""
    if isinstance(config, dict):
        config = NetworkConfig.from_dict(config)
    cls = _architecture(config.architecture)
    return cls(config.in_channels, config.num_classes, config.width, config.dropout, config.head_block)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def set_mc_dropout(module: nn.Module, active: bool) -> None:
    """Switch only the dropout layers to train mode (Monte-Carlo dropout), BatchNorm stays in eval."""
    for m in module.modules():
        if isinstance(m, (nn.Dropout, nn.Dropout3d)):
            m.train(active)
