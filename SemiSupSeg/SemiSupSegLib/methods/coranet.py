"""CoraNet (seed 002): conservative-radical module and separate self-training.

METHODS.md "002". One backbone (encoder and shared decoder) whose main head D is a 3^3 conv block plus a
1x1 (``NetworkConfig.head_block``), and two more heads of the same form on the last decoder feature,
D_con and D_rad (:class:`~SemiSupSegLib.networks.OutputHead`).

- **CRM / supervised loss** (:meth:`CoraNet.crm_loss`): 0.5 (CE + Dice) on D plus the class-weighted CE
  of D_con with weights (alpha, 1) and of D_rad with (1, alpha) for (background, foreground), alpha = 5
  (for K > 2 classes: (alpha, 1, ..., 1) and (1, alpha, ..., alpha)). The weighted CE is torch's weighted
  mean sum(w_y CE) / sum(w_y), as ``nn.CrossEntropyLoss(weight=...)``.
- **Pretraining**: the first ``pretrain_steps`` steps (option; default 30 / 230 of the run, the paper's 30
  pretraining epochs before 200 of self-training in 3D) minimise the CRM loss on labelled patches only.
- **Masks** on the unlabelled patches, without gradient (:func:`xor_masks`): pseudo-label = argmax of D;
  uncertain = [p_con,fg >= 0.5] XOR [p_rad,fg >= 0.5], p_fg = 1 - p_background; certain = its complement.
  They come from the student's own forward of the step, or, with option ``mask_refresh_steps`` = R > 1,
  from a copy of the student and its heads taken every R self-training steps (the paper relabels every 5
  epochs; METHODS.md allows every step, the default).
- **C-SN**: the CRM loss of the unlabelled patches against the pseudo-label restricted to the certain
  voxels (masked CE and Dice on D, masked weighted CE on D_con and D_rad).
- **UC-SN**: mean-teacher consistency sum((1 - certain) ||p_s - p_t||^2) / sum(1 - certain) (the squared
  distance summed over the classes) between the student's D and the EMA teacher's D on the noised input
  (clamp(N(0, 0.1^2), -0.2, 0.2)), weight w = 0.1 ramp(t - pretrain_steps, T_r), T_r = 40 / 200 of the
  self-training steps (the paper's ramp over 40 epochs; option ``ramp_steps``).
- **Total** during self-training: L_sup + 0.5 (L_c-sn + w L_uc-sn).

Decisions:

- **[decision]** C-SN uses the same auxiliary class weights as the supervised loss; the public code swaps
  them in this phase, which looks like a bug (METHODS.md).
- **[decision]** The heads are a 3^3 conv block plus a 1x1 (METHODS.md; the paper's 2D heads have two 3x3
  convs); C-SN's CE + Dice has METHODS.md's 0.5 (CE + Dice) form of L_sup, and Dice averages the
  foreground classes over the certain voxels only.
- The teacher is an EMA of the backbone (D only; the auxiliary heads have no teacher), decay
  ``min(1 - 1/(s + 1), 0.99)`` with s counted from the first self-training step, so it copies the
  pretrained student then and warms up after; it sees the unlabelled half in train mode under no_grad.
- Adam lr 1e-3, betas (0.5, 0.999) (paper).
- The saved model is the student's backbone with its main head D only ("net"); the auxiliary heads are
  not saved and start afresh when a CoraNet model is fine-tuned with ``--init``. A model of another
  method initialises the backbone; its output 1x1 is loaded as D's 1x1, D's conv block starts afresh.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from ..errors import ModelError
from ..losses import masked_ce_dice, masked_cross_entropy, masked_mean, ramp, squared_distance
from ..networks import NetworkConfig, OutputHead, build_network
from .base import Batch, Method, OptimizerSpec
from .common import check_options, ema_decay, frozen_copy, input_noise, number_option, update_ema

__all__ = ["CoraNet", "class_weights", "xor_masks"]

PAPER_PRETRAIN_EPOCHS, PAPER_TRAIN_EPOCHS, PAPER_RAMP_EPOCHS = 30, 200, 40
CONSISTENCY_WEIGHT = 0.1
UNLABELED_WEIGHT = 0.5


def class_weights(alpha: float, num_classes: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The conservative and radical class weights: (alpha, 1, ..., 1) and (1, alpha, ..., alpha).

    Args:
        alpha: the misclassification cost (paper: 5).
        num_classes: K, background first.

    Returns:
        ``(conservative, radical)``.
    """
    rest = num_classes - 1
    return (float(alpha), *([1.0] * rest)), (1.0, *([float(alpha)] * rest))


def xor_masks(
    logits_main: torch.Tensor, logits_con: torch.Tensor, logits_rad: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """CoraNet's pseudo-label and certain mask, without gradient.

    Args:
        logits_main, logits_con, logits_rad: ``[B, K, ...]`` of D, D_con and D_rad.

    Returns:
        ``(pseudo_label [B, ...] long, certain [B, ...] bool)``: argmax of D, and NOT
        ([p_con,fg >= 0.5] XOR [p_rad,fg >= 0.5]) with p_fg = 1 - p_background.
    """
    with torch.no_grad():
        con_fg = 1.0 - torch.softmax(logits_con.float(), dim=1)[:, 0]
        rad_fg = 1.0 - torch.softmax(logits_rad.float(), dim=1)[:, 0]
        uncertain = (con_fg >= 0.5) ^ (rad_fg >= 0.5)
        return logits_main.argmax(dim=1), ~uncertain


class _Heads(nn.Module):
    """The backbone (its own head being D) with D_con and D_rad on its last decoder feature."""

    def __init__(self, network: NetworkConfig) -> None:
        super().__init__()
        self.backbone = build_network(dataclasses.replace(network, head_block=True))
        channels, k = self.backbone.feature_channels["dec1"], network.num_classes
        block_dropout = network.dropout if network.architecture == "compact-unet" else 0.0
        self.con = OutputHead(channels, k, True, block_dropout)
        self.rad = OutputHead(channels, k, True, block_dropout)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Logits of D, D_con and D_rad."""
        logits, features = self.backbone.forward_features(x)
        return logits, self.con(features["dec1"]), self.rad(features["dec1"])


class CoraNet(Method):
    """CRM pretraining, then L_sup + 0.5 (L_c-sn + 0.1 ramp L_uc-sn) (seed 002; see the module docstring)."""

    name = "coranet"
    description = (
        "CoraNet (seed 002): conservative and radical heads mark uncertain voxels (XOR); self-training on "
        "the certain ones, mean-teacher consistency on the uncertain ones; supervised pretraining first"
    )
    uses_unlabeled = True
    option_parsers = {
        "lr": number_option(float, 0.0, low_open=True),
        "alpha": number_option(float, 0.0, low_open=True),
        "pretrain_steps": number_option(int, 0, optional=True),
        "ramp_steps": number_option(int, 0, optional=True),
        "ema_decay": number_option(float, 0.0, 1.0),
        "mask_refresh_steps": number_option(int, 1),
    }

    def __init__(
        self,
        network: NetworkConfig,
        total_steps: int,
        lr: float = 1e-3,
        alpha: float = 5.0,
        pretrain_steps: int | None = None,
        ramp_steps: int | None = None,
        ema_decay: float = 0.99,
        mask_refresh_steps: int = 1,
        **options,
    ) -> None:
        check_options(self.name, options, self.option_parsers)
        super().__init__(network, total_steps)
        self.lr = self.option("lr", lr)
        self.alpha = self.option("alpha", alpha)
        pretrain = self.option("pretrain_steps", pretrain_steps)
        paper_share = PAPER_PRETRAIN_EPOCHS / (PAPER_PRETRAIN_EPOCHS + PAPER_TRAIN_EPOCHS)
        self.pretrain_steps = int(round(total_steps * paper_share) if pretrain is None else pretrain)
        ramp_steps = self.option("ramp_steps", ramp_steps)
        self_training = max(0, total_steps - self.pretrain_steps)
        paper_ramp = round(self_training * PAPER_RAMP_EPOCHS / PAPER_TRAIN_EPOCHS)
        self.ramp_steps = int(paper_ramp if ramp_steps is None else ramp_steps)
        self.max_decay = self.option("ema_decay", ema_decay)
        self.mask_refresh_steps = self.option("mask_refresh_steps", mask_refresh_steps)
        self.weights = class_weights(self.alpha, network.num_classes)
        self.student = _Heads(network)
        self.teacher = frozen_copy(self.student.backbone)
        self.mask_source = frozen_copy(self.student) if self.mask_refresh_steps > 1 else None

    def networks(self) -> dict[str, nn.Module]:
        return {"net": self.student.backbone}

    def optimizers(self) -> list[OptimizerSpec]:
        params = list(self.student.parameters())
        return [OptimizerSpec("student", params, kind="adam", lr=self.lr, betas=(0.5, 0.999))]

    def init_from(self, networks: dict[str, dict[str, torch.Tensor]]) -> list[str]:
        """Load a stored network into the backbone and the teacher; D's conv block may be missing from it."""
        if not networks:
            return []
        state = networks.get("net") or next(iter(networks.values()))
        result = self.student.backbone.load_state_dict(state, strict=False)
        wrong = [k for k in result.missing_keys if not k.startswith("head_block.")] + result.unexpected_keys
        if wrong:
            raise ModelError(f"the --init model does not fit a CoraNet backbone: {', '.join(wrong[:3])}")
        self.teacher.load_state_dict(self.student.backbone.state_dict())
        return ["backbone", "teacher"]

    def crm_loss(
        self, logits: tuple[torch.Tensor, ...], target: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """0.5 (CE + Dice) of D plus the weighted CE of D_con (alpha, 1) and D_rad (1, alpha), on ``mask``.

        Args:
            logits: ``(main, con, rad)``, each ``[B, K, ...]``.
            target: class indices ``[B, 1, ...]`` or ``[B, ...]``.
            mask: the voxels counted (C-SN's certain region), or None for all.

        Returns:
            The scalar loss.
        """
        main, con, rad = logits
        conservative, radical = self.weights
        return (
            masked_ce_dice(main, target, mask)
            + masked_cross_entropy(con, target, mask, conservative)
            + masked_cross_entropy(rad, target, mask, radical)
        )

    def _masks(self, x_u: torch.Tensor, logits_u: tuple[torch.Tensor, ...], step: int) -> tuple:
        """Pseudo-label and certain mask from this step's logits, or from the periodic copy."""
        if self.mask_source is None:
            return xor_masks(*logits_u)
        if (step - self.pretrain_steps) % self.mask_refresh_steps == 0:
            self.mask_source.load_state_dict(self.student.state_dict())
        with torch.no_grad():
            return xor_masks(*self.mask_source(x_u))

    def compute_losses(self, stage: str, batch: Batch, step: int) -> dict[str, torch.Tensor]:
        n = batch.labeled_image.shape[0]
        if step < self.pretrain_steps or batch.unlabeled_image is None:
            sup = self.crm_loss(self.student(batch.labeled_image), batch.labeled_label)
            return {"loss": sup, "sup": sup.detach()}
        logits = self.student(torch.cat([batch.labeled_image, batch.unlabeled_image]))
        sup = self.crm_loss(tuple(t[:n] for t in logits), batch.labeled_label)
        logits_u = tuple(t[n:] for t in logits)
        pseudo, certain = self._masks(batch.unlabeled_image, logits_u, step)
        c_sn = self.crm_loss(logits_u, pseudo, certain)
        p_student = torch.softmax(logits_u[0].float(), dim=1)
        with torch.no_grad():
            p_teacher = torch.softmax(self.teacher(input_noise(batch.unlabeled_image)).float(), dim=1)
        uc_sn = masked_mean(squared_distance(p_student, p_teacher), ~certain)
        weight = CONSISTENCY_WEIGHT * ramp(step - self.pretrain_steps, self.ramp_steps)
        total = sup + UNLABELED_WEIGHT * (c_sn + weight * uc_sn)
        return {
            "loss": total,
            "sup": sup.detach(),
            "c_sn": c_sn.detach(),
            "uc_sn": uc_sn.detach(),
            "uncertain_fraction": (~certain).float().mean(),
            "consistency_weight": torch.tensor(weight),
        }

    def after_iteration(self, step: int) -> None:
        decay = ema_decay(max(0, step - self.pretrain_steps), self.max_decay)
        update_ema(self.teacher, self.student.backbone, decay)
