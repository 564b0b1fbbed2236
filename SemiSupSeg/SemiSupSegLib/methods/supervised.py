"""Supervised baseline: one Compact-UNet trained on labelled patches with CE + Dice."""

from __future__ import annotations

import torch

from ..losses import supervised_loss
from ..networks import NetworkConfig, build_network
from .base import Batch, Method, OptimizerSpec
from .common import check_options, number_option


class Supervised(Method):
    """L = 0.5 (CE + Dice) on labelled patches only (the 'supervised' rows of every seed table)."""

    name = "supervised"
    description = "Supervised baseline: one Compact-UNet, CE + Dice on the labelled cases only"
    uses_unlabeled = False
    option_parsers = {"lr": number_option(float, 0.0, low_open=True)}

    def __init__(self, network: NetworkConfig, total_steps: int, lr: float = 1e-4, **options) -> None:
        check_options(self.name, options, self.option_parsers)
        super().__init__(network, total_steps)
        self.lr = self.option("lr", lr)
        self.net = build_network(network)
        self.loss_fn = supervised_loss()

    def networks(self) -> dict[str, torch.nn.Module]:
        return {"net": self.net}

    def optimizers(self) -> list[OptimizerSpec]:
        return [OptimizerSpec("main", list(self.net.parameters()), kind="adam", lr=self.lr)]

    def compute_losses(self, stage: str, batch: Batch, step: int) -> dict[str, torch.Tensor]:
        logits = self.net(batch.labeled_image)
        loss = self.loss_fn(logits, batch.labeled_label)
        return {"loss": loss, "sup": loss.detach()}
