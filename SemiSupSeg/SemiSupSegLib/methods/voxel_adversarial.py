"""Voxel-wise adversarial learning with a BYOL voxel representation (seed 004), METHODS.md "004".

A student and an EMA teacher of the same backbone (the paper's VNet: ``--network vnet``; the Compact-UNet
works too). With ``B`` labelled and ``B`` unlabelled patches per step, the student minimises (eq. 6)

    L_dice + alpha L_adv + beta L_feature + gamma(t) L_c,   alpha = 0.01, beta = 0.1 (the LA values),

- **L_dice**: soft Dice of the student on the labelled patches (the paper's supervised term).
- **L_c**: mean squared difference of the student's and the teacher's softmax on the unlabelled patches
  (teacher input noised as the mean teacher's), gamma(t) = 0.001 ramp(t, T), T the whole run.
- **L_adv** (Sec. III-A): the encoder levels go through :class:`FeatureFusion` (1x1 conv to ``hidden``
  channels each, upsampled to the patch, added, a 3^3 conv) into voxel features f_fused. Voxels are sampled
  per class (:func:`sample_class_voxels`): labelled voxels with their ground-truth class ("real"),
  unlabelled voxels with the teacher's class where its confidence > 0.7 ("fake"). The
  :class:`VoxelDiscriminator` (MLP hidden-hidden, then one real/fake logit per class, the voxel reading
  the head of its class) is trained in its own stage after the segmenter's, on the detached features:
  BCE(real -> 1, fake -> 0), Adam lr 2e-4, betas (0.5, 0.999). The segmenter's L_adv makes the fake
  voxels look real to the frozen discriminator.
- **L_feature** (Sec. III-B, BYOL): a second :class:`FeatureFusion` gives the representation map at the
  patch's resolution (the features are upsampled, the mask is never downsampled). For each class, voxels
  of the labelled patches are sampled; the student's go through a projector and a predictor, the
  teacher's (EMA of backbone, fusion and projector) through the projector only, and
  ``||normalise(p(z_s)) - normalise(z_t)||^2`` is averaged over the pairs (:func:`byol_loss`).

Decisions (**[decision]** marks are METHODS.md's):

- **[decision]** Unlabelled voxels whose teacher confidence is <= 0.7 are excluded from L_adv (option
  ``confidence``).
- **[decision]** The segmenter's adversarial term is the non-saturating BCE (fake voxels -> "real"); the
  paper prints only the discriminator's objective.
- **[decision] The pairing of L_feature**: each sampled student voxel of class c is paired with another
  sampled voxel of class c, a random permutation of the same draw, seen by the teacher (for one voxel per
  class the pair is the voxel itself).
- The encoder levels fused: the first four (VNet ``enc1``-``enc4``; its ``enc5`` is the bottleneck) or
  all of them (the Compact-UNet has three). The hidden width 64 (the paper's, every hidden layer of the
  voxel feature layer and the discriminator) is scaled by ``--width`` like the backbones, at least 8.
- ``voxels`` = 256 voxels per class and side (real, fake, and L_feature) per step: the paper does not give
  the number. The fusions use a 3^3 conv + ReLU without normalisation; projector and predictor are
  Linear-ReLU-Linear (BYOL's MLPs without their BatchNorm, which sampled voxels of one patch would skew).
- The schedule: SGD lr 0.01, momentum 0.9, weight decay 1e-4, x0.1 every 2500 of 6000 iterations, the
  step scaled to the run's length (2500/6000 of the steps; option ``lr_step``). EMA decay
  ``min(1 - 1/(t + 1), 0.99)`` for every teacher part.
- The saved model is the student (the paper segments with "only the VNet"); ``init_from`` loads one
  stored network into student and teacher.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss
from torch import nn

from ..losses import ramp
from ..networks import NetworkConfig, _channels, build_network
from .base import Batch, Method, OptimizerSpec
from .common import (
    check_options,
    ema_decay,
    frozen,
    frozen_copy,
    input_noise,
    load_stored,
    number_option,
    update_ema,
)

__all__ = [
    "FeatureFusion",
    "VoxelAdversarial",
    "VoxelDiscriminator",
    "byol_loss",
    "sample_class_voxels",
]

PAPER_STEPS, PAPER_LR_STEP = 6000, 2500


def encoder_levels(net: nn.Module, at_most: int = 4) -> list[str]:
    """The names of the backbone's first ``at_most`` encoder levels (``enc1``...)."""
    return [n for n in net.feature_names if n.startswith("enc")][:at_most]


class FeatureFusion(nn.Module):
    """Multi-resolution voxel features: per level a 1x1 conv to ``hidden``, upsampled, added, a 3^3 conv."""

    def __init__(self, channels: list[int], hidden: int) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv3d(c, hidden, kernel_size=1) for c in channels)
        self.mix = nn.Sequential(nn.Conv3d(hidden, hidden, kernel_size=3, padding=1), nn.ReLU(inplace=True))

    def forward(self, levels: list[torch.Tensor], size: tuple[int, ...]) -> torch.Tensor:
        """``[B, hidden, *size]`` from the feature maps ``levels`` (any resolutions)."""
        up = [
            F.interpolate(conv(f), size=size, mode="trilinear")
            for conv, f in zip(self.lateral, levels, strict=True)
        ]
        return self.mix(torch.stack(up).sum(dim=0))


def _mlp(width: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(width, width), nn.ReLU(inplace=True), nn.Linear(width, width))


class VoxelDiscriminator(nn.Module):
    """MLP ``hidden``-``hidden``, then one real/fake logit per class; a voxel reads its class's head."""

    def __init__(self, hidden: int, num_classes: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(hidden, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, hidden), nn.LeakyReLU(0.2)
        )
        self.heads = nn.Linear(hidden, num_classes)  # column c = the linear head of class c

    def forward(self, features: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """Real/fake logits ``[N]`` of voxel features ``[N, hidden]`` of classes ``[N]``."""
        return self.heads(self.mlp(features.float())).gather(1, classes.long()[:, None])[:, 0]


def sample_class_voxels(
    features: torch.Tensor, classes: torch.Tensor, num_classes: int, per_class: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Up to ``per_class`` random voxels of each class (without replacement), with their class.

    Args:
        features: ``[B, C, Z, Y, X]``.
        classes: ``[B, Z, Y, X]`` class indices; negative = excluded (e.g. an uncertain teacher).
        num_classes: K.
        per_class: voxels drawn per class (all of them when fewer).

    Returns:
        ``(features [N, C], classes [N])``, class 0's voxels first; N = 0 when nothing is eligible.
    """
    flat = features.movedim(1, -1).reshape(-1, features.shape[1])
    labels = classes.reshape(-1)
    picked = []
    for c in range(num_classes):
        where = (labels == c).nonzero().squeeze(1)
        picked.append(where[torch.randperm(where.numel(), device=where.device)[:per_class]])
    index = torch.cat(picked)
    return flat[index], labels[index]


def byol_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over pairs of ``||normalise(p) - normalise(z)||^2`` (= 2 - 2 cos, BYOL); ``target`` detached."""
    p, z = F.normalize(prediction.float(), dim=1), F.normalize(target.detach().float(), dim=1)
    return ((p - z) ** 2).sum(dim=1).mean()


def non_saturating_bce(logits: torch.Tensor, real: bool) -> torch.Tensor:
    """BCE of logits against "real" (1) or "fake" (0); 0 for no voxel."""
    if logits.numel() == 0:
        return logits.new_zeros(())
    target = torch.full_like(logits, 1.0 if real else 0.0)
    return F.binary_cross_entropy_with_logits(logits.float(), target)


class VoxelAdversarial(Method):
    """L_dice + 0.01 L_adv + 0.1 L_feature + 0.001 ramp L_c (seed 004; see the module docstring)."""

    name = "voxel-adversarial"
    description = (
        "Voxel-wise adversarial learning (seed 004): a per-class discriminator on fused multi-level voxel "
        "features makes unlabelled voxels look labelled; BYOL voxel representation; mean-teacher consistency"
    )
    uses_unlabeled = True
    option_parsers = {
        "lr": number_option(float, 0.0, low_open=True),
        "discriminator_lr": number_option(float, 0.0, low_open=True),
        "alpha": number_option(float, 0.0),
        "beta": number_option(float, 0.0),
        "gamma": number_option(float, 0.0),
        "confidence": number_option(float, 0.0, 1.0, high_open=True),
        "voxels": number_option(int, 1),
        "hidden": number_option(int, 1),
        "ramp_steps": number_option(int, 0, optional=True),
        "lr_step": number_option(int, 1, optional=True),
        "ema_decay": number_option(float, 0.0, 1.0),
    }

    def __init__(
        self,
        network: NetworkConfig,
        total_steps: int,
        lr: float = 0.01,
        discriminator_lr: float = 2e-4,
        alpha: float = 0.01,
        beta: float = 0.1,
        gamma: float = 0.001,
        confidence: float = 0.7,
        voxels: int = 256,
        hidden: int = 64,
        ramp_steps: int | None = None,
        lr_step: int | None = None,
        ema_decay: float = 0.99,
        **options,
    ) -> None:
        check_options(self.name, options, self.option_parsers)
        super().__init__(network, total_steps)
        opt = self.option
        self.lr, self.discriminator_lr = opt("lr", lr), opt("discriminator_lr", discriminator_lr)
        self.weights = {"alpha": opt("alpha", alpha), "beta": opt("beta", beta), "gamma": opt("gamma", gamma)}
        self.confidence, self.voxels = opt("confidence", confidence), opt("voxels", voxels)
        ramp_steps, lr_step = opt("ramp_steps", ramp_steps), opt("lr_step", lr_step)
        self.ramp_steps = int(total_steps if ramp_steps is None else ramp_steps)
        scaled = round(PAPER_LR_STEP * min(1.0, total_steps / PAPER_STEPS))
        self.lr_step = int(lr_step if lr_step is not None else max(1, scaled))
        self.max_decay = opt("ema_decay", ema_decay)
        self.student = build_network(network)
        self.teacher = frozen_copy(self.student)
        self.levels = encoder_levels(self.student)
        width = max(8, _channels(opt("hidden", hidden), network.width))
        channels = [self.student.feature_channels[n] for n in self.levels]
        self.adv_fusion = FeatureFusion(channels, width)
        self.representation = nn.ModuleDict(
            {"fusion": FeatureFusion(channels, width), "projector": _mlp(width)}
        )
        self.teacher_representation = frozen_copy(self.representation)
        self.predictor = _mlp(width)
        self.discriminator = VoxelDiscriminator(width, network.num_classes)
        self.dice = DiceLoss(include_background=False, to_onehot_y=True, softmax=True, batch=True)
        self._pending: tuple[torch.Tensor, ...] | None = None

    # --- interface ---------------------------------------------------------------------------
    def networks(self) -> dict[str, nn.Module]:
        return {"student": self.student}

    def init_from(self, networks: dict[str, dict[str, torch.Tensor]]) -> list[str]:
        """Load the stored student (or the stored model's first network) into student and teacher."""
        loaded = load_stored(networks, "student", self.student, self.teacher)
        return ["student", "teacher"] if loaded else []

    def optimizers(self) -> list[OptimizerSpec]:
        segmenter = [
            *self.student.parameters(),
            *self.adv_fusion.parameters(),
            *self.representation.parameters(),
            *self.predictor.parameters(),
        ]
        return [
            OptimizerSpec(
                "segmenter",
                segmenter,
                kind="sgd",
                lr=self.lr,
                momentum=0.9,
                weight_decay=1e-4,
                schedule="step",
                schedule_options={"step_size": self.lr_step, "gamma": 0.1},
            ),
            OptimizerSpec(
                "discriminator",
                list(self.discriminator.parameters()),
                kind="adam",
                lr=self.discriminator_lr,
                betas=(0.5, 0.999),
            ),
        ]

    def compute_losses(self, stage: str, batch: Batch, step: int) -> dict[str, torch.Tensor]:
        if batch.unlabeled_image is None:
            raise ValueError(f"{self.name} needs an unlabelled half in every mini-batch")
        if stage == "segmenter":
            return self._segmenter_losses(batch, step)
        if stage == "discriminator":
            return self._discriminator_losses(batch)
        raise ValueError(f"{self.name} has no stage {stage!r}")

    def after_iteration(self, step: int) -> None:
        decay = ema_decay(step, self.max_decay)
        update_ema(self.teacher, self.student, decay)
        update_ema(self.teacher_representation, self.representation, decay)

    # --- segmenter stage ---------------------------------------------------------------------
    def _teacher(self, batch: Batch) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Teacher softmax of the noised unlabelled patches and its encoder levels of the labelled ones."""
        x = torch.cat([batch.labeled_image, input_noise(batch.unlabeled_image)])
        with torch.no_grad():
            logits, features = self.teacher.forward_features(x)
        n = batch.labeled_image.shape[0]
        return torch.softmax(logits[n:].float(), dim=1), [features[k][:n] for k in self.levels]

    def _adversarial_voxels(self, levels: list[torch.Tensor], batch: Batch, p_teacher: torch.Tensor):
        """(real features, real classes, fake features, fake classes): labelled truth, confident teacher."""
        n, size, k = batch.labeled_image.shape[0], batch.labeled_image.shape[2:], p_teacher.shape[1]
        fused = self.adv_fusion(levels, tuple(size))
        confidence, guess = p_teacher.max(dim=1)
        fake_classes = torch.where(confidence > self.confidence, guess, torch.full_like(guess, -1))
        real = sample_class_voxels(fused[:n], batch.labeled_label[:, 0], k, self.voxels)
        fake = sample_class_voxels(fused[n:], fake_classes, k, self.voxels)
        return (*real, *fake)

    def feature_loss(
        self, levels: list[torch.Tensor], teacher_levels: list[torch.Tensor], label: torch.Tensor
    ):
        """L_feature: BYOL between each sampled student voxel and a same-class voxel seen by the teacher."""
        size, k = tuple(label.shape[2:]), self.network_config.num_classes
        student_map = self.representation["fusion"](levels, size)
        with torch.no_grad():
            teacher_map = self.teacher_representation["fusion"](teacher_levels, size)
        flat = torch.cat([student_map, teacher_map], dim=1)
        features, classes = sample_class_voxels(flat, label[:, 0], k, self.voxels)
        width = student_map.shape[1]
        losses = []
        for c in classes.unique():
            rows = (classes == c).nonzero().squeeze(1)
            partner = rows[torch.randperm(rows.numel(), device=rows.device)]
            prediction = self.predictor(self.representation["projector"](features[rows, :width]))
            with torch.no_grad():
                target = self.teacher_representation["projector"](features[partner, width:])
            losses.append(byol_loss(prediction, target))
        return torch.stack(losses).mean() if losses else student_map.new_zeros(())

    def _segmenter_losses(self, batch: Batch, step: int) -> dict[str, torch.Tensor]:
        n = batch.labeled_image.shape[0]
        logits, features = self.student.forward_features(
            torch.cat([batch.labeled_image, batch.unlabeled_image])
        )
        levels = [features[k] for k in self.levels]
        p_teacher, teacher_levels = self._teacher(batch)
        dice = self.dice(logits[:n].float(), batch.labeled_label)
        consistency = ((torch.softmax(logits[n:].float(), dim=1) - p_teacher) ** 2).mean()
        real, real_c, fake, fake_c = self._adversarial_voxels(levels, batch, p_teacher)
        with frozen(self.discriminator):
            adversarial = non_saturating_bce(self.discriminator(fake, fake_c), real=True)
        self._pending = (real.detach(), real_c, fake.detach(), fake_c)
        feature = self.feature_loss([f[:n] for f in levels], teacher_levels, batch.labeled_label)
        w = self.weights
        gamma = w["gamma"] * ramp(step, self.ramp_steps)
        total = dice + w["alpha"] * adversarial + w["beta"] * feature + gamma * consistency
        return {
            "loss": total,
            "dice": dice.detach(),
            "adversarial": adversarial.detach(),
            "feature": feature.detach(),
            "consistency": consistency.detach(),
            "gamma": torch.tensor(gamma),
            "fake_voxels": torch.tensor(float(fake.shape[0])),
        }

    # --- discriminator stage -----------------------------------------------------------------
    def _discriminator_losses(self, batch: Batch) -> dict[str, torch.Tensor]:
        """BCE(labelled voxels -> real, unlabelled -> fake) on the segmenter stage's detached features."""
        pending, self._pending = self._pending, None
        if pending is None:  # called on its own: the features of this batch, without gradient
            with torch.no_grad():
                _, features = self.student.forward_features(
                    torch.cat([batch.labeled_image, batch.unlabeled_image])
                )
                p_teacher, _ = self._teacher(batch)
                pending = self._adversarial_voxels([features[k] for k in self.levels], batch, p_teacher)
        real, real_c, fake, fake_c = pending
        d_real = non_saturating_bce(self.discriminator(real, real_c), real=True)
        d_fake = non_saturating_bce(self.discriminator(fake, fake_c), real=False)
        loss = 0.5 * (d_real + d_fake)
        return {"loss": loss, "discriminator_bce": loss.detach()}
