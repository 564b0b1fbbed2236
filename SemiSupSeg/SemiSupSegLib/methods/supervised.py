"""Supervised baseline: one Compact-UNet trained on labelled patches with CE + Dice."""

from __future__ import annotations

import torch

from ..losses import supervised_loss
from ..networks import NetworkConfig, build_network
from .base import Batch, Method, OptimizerSpec


class Supervised(Method):
    """L = 0.5 (CE + Dice) on labelled patches only (the 'supervised' rows of every seed table)."""

    name = "supervised"
    description = "Supervised baseline: one Compact-UNet, CE + Dice on the labelled cases only"
    uses_unlabeled = False

    def __init__(self, network: NetworkConfig, total_steps: int, lr: float = 1e-4, **options) -> None:
        super().__init__(network, total_steps, **options)
        self.net = build_network(network)
        self.lr = lr
        self.loss_fn = supervised_loss()

    def networks(self) -> dict[str, torch.nn.Module]:
        return {"net": self.net}

    def optimizers(self) -> list[OptimizerSpec]:
        return [OptimizerSpec("main", list(self.net.parameters()), kind="adam", lr=self.lr)]

    def compute_losses(self, stage: str, batch: Batch, step: int) -> dict[str, torch.Tensor]:
        logits = self.net(batch.labeled_image)
        loss = self.loss_fn(logits, batch.labeled_label)
        return {"loss": loss, "sup": loss.detach()}
