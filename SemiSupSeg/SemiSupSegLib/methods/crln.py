"""CRLN (seed 003): prototype rectification of teacher pseudo-labels + collaborative positive supervision.

METHODS.md "003". The student is the backbone plus the :class:`DynamicInteraction` module (learnable
prototypes, K classes x P prototypes x C) and a representation head; the teacher is its EMA (every part).
Per step, with ``B`` labelled and ``B`` unlabelled patches:

- **Relation map M** (:class:`DynamicInteraction`): the prototypes are queries of two single-head
  cross-attention blocks (scale C^-1/2, an MLP on the queries after each), keys and values the 1x1
  projected, LayerNorm'd tokens of a coarse and then a fine decoder level. The fine level's attention
  logits (K P maps) go through a spatial 3^3 conv and a conv merging each class's P prototypes (weights
  shared across classes), then a transposed conv + ReLU to full resolution: M >= 0, ``[B, K, Z, Y, X]``.
- **Rectification** (:func:`rectify`): softmax(logits + (1 - lambda) M), lambda one scalar (initially 0)
  trained alone in its own stage after the main one: the student in eval mode, logits and M of the
  labelled patches detached, loss 0.5 (CE + Dice).
- **L_sup** = 0.5 (CE + Dice) of the logits **and** of M (as logits) on the labelled patches: the only
  place the DIM and the prototypes learn.
- **Pseudo-labels**: the teacher sees the weak view (the patches as sampled, already cropped, flipped,
  rotated and brightened by the training augmentation); from iteration T_r on its rectified prediction,
  before it its softmax. The student sees the strong view (:func:`strong_view`: rot90/flip, CutMix with
  Beta(4, 4) boxes, brightness x U(0.75, 1.25), noise N(0, 0.1^2) clipped to +-0.2), and the teacher's
  probabilities are moved and mixed identically.
- **L_u** = mean over unlabelled patches of (fraction of voxels with teacher confidence >= 0.97) x the
  patch's CE to the pseudo-label.
- **L_cps** (:func:`cps_loss`): InfoNCE (temperature 0.5) on the representation head's unit vectors of the
  last decoder level. Valid voxels: labelled ones (their class) and unlabelled ones whose teacher
  confidence is >= 0.7 (the teacher's class). Per class up to 256 anchors among its valid voxels where the
  student's confidence is < 0.97; per anchor 512 negatives among the valid voxels of other classes; the
  positive (class mean + xi prototype mean) / (1 + xi), xi = 0.6.
- **Total** L_sup + 0.5 L_u + 0.5 L_cps; SGD lr 2.5e-3, momentum 0.9, Nesterov, weight decay 5e-4, poly 0.9.

Decisions (**[decision]** marks are METHODS.md's):

- **[decision]** The representation has the prototypes' dimension C (its head maps the last decoder
  level to C channels), so the class's prototype mean lives in the representation space.
- The coarse and fine levels: the decoder level at half resolution (``dec2``) is the fine one, the
  level at a quarter (``dec3`` of the VNet; the Compact-UNet's bottleneck ``enc3``) the coarse one.
  C = 64 scaled by ``--width`` (at least 8); P = 16 (the LA configuration; option ``prototypes``).
- The positive and the negatives are constants of L_cps (detached), the anchors carry the gradient;
  the class mean is over every valid voxel of the class in the batch.
- The teacher's pseudo-labels are rectified with the teacher's own M (it is the EMA of the whole
  student, DIM included) and the trained lambda.
- lambda's optimiser: SGD with the main one's lr and momentum, without weight decay, constant.
- T_r = 800 iterations (the authors'), at most half the run for shorter runs (option ``rectify_from``).
- CutMix pairs each unlabelled patch with the next one in the batch (a roll by one); with one
  unlabelled patch nothing is mixed.
- The saved model is the teacher's backbone; only the backbone segments (M is a training signal).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..losses import supervised_loss
from ..networks import NetworkConfig, _channels, build_network
from .base import Batch, Method, OptimizerSpec
from .common import check_options, ema_decay, eval_mode, frozen_copy, load_stored, number_option, update_ema

__all__ = ["CRLN", "DynamicInteraction", "cps_loss", "cutmix_boxes", "info_nce", "rectify", "strong_view"]

PAPER_RECTIFY_FROM = 800


def relation_levels(net: nn.Module) -> tuple[str, str]:
    """(coarse, fine) feature names: the quarter- and half-resolution decoder inputs (see decisions)."""
    return ("dec3" if "dec3" in net.feature_names else "enc3"), "dec2"


class _Attention(nn.Module):
    """One single-head cross-attention block: prototypes (queries) attend to feature tokens."""

    def __init__(self, in_channels: int, dim: int) -> None:
        super().__init__()
        self.tokens = nn.Conv3d(in_channels, dim, kernel_size=1)
        self.norm = nn.LayerNorm(dim)
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim))

    def forward(self, queries: torch.Tensor, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Updated queries ``[B, Q, C]`` and the attention logits ``[B, Q, voxels]``."""
        tokens = self.norm(self.tokens(features).flatten(2).transpose(1, 2))  # [B, V, C]
        logits = self.q(queries) @ self.k(tokens).transpose(1, 2) / math.sqrt(queries.shape[-1])
        queries = queries + torch.softmax(logits, dim=-1) @ self.v(tokens)
        return queries + self.mlp(queries), logits


class DynamicInteraction(nn.Module):
    """DIM: the prototypes interact with a coarse then a fine level; the relation map M >= 0 (module doc)."""

    def __init__(self, coarse: int, fine: int, dim: int, num_classes: int, prototypes: int) -> None:
        super().__init__()
        self.num_classes, self.per_class = num_classes, prototypes
        self.prototypes = nn.Parameter(0.02 * torch.randn(num_classes, prototypes, dim))
        self.blocks = nn.ModuleList([_Attention(coarse, dim), _Attention(fine, dim)])
        self.spatial = nn.Conv3d(prototypes, prototypes, kernel_size=3, padding=1)
        self.merge = nn.Conv3d(prototypes, 1, kernel_size=1)
        self.up = nn.ConvTranspose3d(1, 1, kernel_size=2, stride=2)

    def forward(self, coarse: torch.Tensor, fine: torch.Tensor) -> torch.Tensor:
        """M ``[B, K, 2 z, 2 y, 2 x]`` from the coarse and the fine (``[B, c, z, y, x]``) features."""
        b, k, p = fine.shape[0], self.num_classes, self.per_class
        queries = self.prototypes.reshape(1, k * p, -1).expand(b, -1, -1)
        queries, _ = self.blocks[0](queries, coarse)
        _, logits = self.blocks[1](queries, fine)
        maps = logits.reshape(b * k, p, *fine.shape[2:])  # each class's P maps; convs shared by classes
        merged = self.merge(F.relu(self.spatial(maps)))
        return F.relu(self.up(merged)).reshape(b, k, *[2 * s for s in fine.shape[2:]])


def rectify(logits: torch.Tensor, relation: torch.Tensor, lam: torch.Tensor | float) -> torch.Tensor:
    """Eq. (8): softmax(logits + (1 - lambda) M) over the class dimension."""
    return torch.softmax(logits.float() + (1.0 - lam) * relation.float(), dim=1)


def cutmix_boxes(
    shape: tuple[int, ...], batch: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """One CutMix box per patch as a boolean mask ``[batch, 1, *shape]``: its volume is 1 - lam of the
    patch, lam ~ Beta(4, 4), each side (1 - lam)^(1/3) of the patch's, placed uniformly inside it."""
    lam = torch.distributions.Beta(4.0, 4.0).sample((batch,))
    masks = torch.zeros(batch, 1, *shape, dtype=torch.bool)
    for i in range(batch):
        sides = [max(1, round(s * float(1.0 - lam[i]) ** (1 / 3))) for s in shape]
        starts = [
            int(torch.randint(0, s - w + 1, (1,), generator=generator))
            for s, w in zip(shape, sides, strict=True)
        ]
        masks[(i, 0, *[slice(a, a + w) for a, w in zip(starts, sides, strict=True)])] = True
    return masks


def strong_view(images: torch.Tensor, probabilities: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The student's strong view of unlabelled patches and the teacher's probabilities moved with them.

    rot90 in the (y, x) plane (half turns only where y and x differ) and a flip of x (the same for the
    whole batch), CutMix of each patch with the
    next one (the same boxes for images and probabilities), then brightness x U(0.75, 1.25) and noise
    N(0, 0.1^2) clipped to +-0.2 on the images only.
    """
    square = images.shape[3] == images.shape[4]  # a quarter turn of a non-square plane changes its shape
    turns = int(torch.randint(0, 4, (1,))) if square else 2 * int(torch.randint(0, 2, (1,)))
    flip = bool(torch.randint(0, 2, (1,)))

    def move(t: torch.Tensor) -> torch.Tensor:
        t = torch.rot90(t, turns, dims=(3, 4))
        return t.flip(4) if flip else t

    images, probabilities = move(images), move(probabilities)
    if images.shape[0] > 1:
        box = cutmix_boxes(tuple(images.shape[2:]), images.shape[0]).to(images.device)
        images = torch.where(box, images.roll(1, dims=0), images)
        probabilities = torch.where(box, probabilities.roll(1, dims=0), probabilities)
    gain = torch.empty(images.shape[0], 1, 1, 1, 1, device=images.device).uniform_(0.75, 1.25)
    noise = (0.1 * torch.randn_like(images)).clamp(-0.2, 0.2)
    return images * gain + noise, probabilities


def info_nce(
    anchors: torch.Tensor, positive: torch.Tensor, negatives: torch.Tensor, tau: float
) -> torch.Tensor:
    """Mean over anchors of -log(e^{a.p/tau} / (e^{a.p/tau} + sum_n e^{a.n/tau})) on unit vectors.

    Args:
        anchors: ``[A, C]``; positive: ``[C]`` (one per class); negatives: ``[A, N, C]``.
        tau: the temperature.
    """
    a = F.normalize(anchors.float(), dim=-1)
    p, n = F.normalize(positive.float(), dim=-1), F.normalize(negatives.float(), dim=-1)
    logits = torch.cat([(a @ p)[:, None], torch.einsum("ac,anc->an", a, n)], dim=1) / tau
    return F.cross_entropy(logits, torch.zeros(a.shape[0], dtype=torch.long, device=a.device))


def cps_loss(
    representation: torch.Tensor,
    classes: torch.Tensor,
    student_confidence: torch.Tensor,
    prototype_means: torch.Tensor,
    *,
    anchors: int = 256,
    negatives: int = 512,
    xi: float = 0.6,
    tau: float = 0.5,
    confidence: float = 0.97,
) -> tuple[torch.Tensor, dict[str, int]]:
    """L_cps over the valid voxels (``classes`` >= 0): per class InfoNCE of its anchors (module doc).

    Args:
        representation: ``[B, C, Z, Y, X]`` (gradient flows to the anchors only).
        classes: ``[B, Z, Y, X]``, the voxel's class, -1 where it is not valid.
        student_confidence: ``[B, Z, Y, X]``, the student's max softmax (anchors need < ``confidence``).
        prototype_means: ``[K, C]``, the mean of each class's prototypes.

    Returns:
        ``(loss, counts)``: the mean over classes with anchors and negatives (0 when none), and the number of
        anchors drawn per class (``{"anchors_<k>": n}``).
    """
    flat = representation.movedim(1, -1).reshape(-1, representation.shape[1])
    labels, sure = classes.reshape(-1), student_confidence.reshape(-1)
    losses, counts = [], {}
    for c in range(prototype_means.shape[0]):
        members = (labels == c).nonzero().squeeze(1)
        pool = (labels >= 0) & (labels != c)
        candidates = ((labels == c) & (sure < confidence)).nonzero().squeeze(1)
        chosen = candidates[torch.randperm(candidates.numel(), device=flat.device)[:anchors]]
        counts[f"anchors_{c}"] = int(chosen.numel())
        others = pool.nonzero().squeeze(1)
        if chosen.numel() == 0 or others.numel() == 0:
            continue
        picks = others[torch.randint(0, others.numel(), (chosen.numel(), negatives), device=flat.device)]
        positive = (flat[members].detach().mean(dim=0) + xi * prototype_means[c].detach()) / (1.0 + xi)
        losses.append(info_nce(flat[chosen], positive, flat[picks].detach(), tau))
    loss = torch.stack(losses).mean() if losses else representation.new_zeros(())
    return loss, counts


class _Student(nn.Module):
    """Backbone + DIM + representation head (the teacher is its EMA copy)."""

    def __init__(self, network: NetworkConfig, dim: int, prototypes: int) -> None:
        super().__init__()
        self.backbone = build_network(network)
        self.levels = relation_levels(self.backbone)
        ch = self.backbone.feature_channels
        self.dim = DynamicInteraction(
            ch[self.levels[0]], ch[self.levels[1]], dim, network.num_classes, prototypes
        )
        self.head = nn.Sequential(
            nn.Conv3d(ch["dec1"], dim, 1), nn.ReLU(inplace=True), nn.Conv3d(dim, dim, 1)
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Logits, relation map M and the representation, all ``[B, ., Z, Y, X]``."""
        logits, features = self.backbone.forward_features(x)
        relation = self.dim(features[self.levels[0]], features[self.levels[1]])
        return logits, relation, self.head(features["dec1"])


class CRLN(Method):
    """L_sup (logits and M) + 0.5 L_u (rectified pseudo-labels) + 0.5 L_cps; lambda alone (seed 003)."""

    name = "crln"
    description = (
        "CRLN (seed 003): learnable prototypes give a relation map that rectifies the teacher's "
        "pseudo-labels on strongly augmented unlabelled patches (CutMix); contrastive positives mixed "
        "with the prototypes"
    )
    uses_unlabeled = True
    option_parsers = {
        "lr": number_option(float, 0.0, low_open=True),
        "prototypes": number_option(int, 1),
        "dim": number_option(int, 1),
        "xi": number_option(float, 0.0),
        "temperature": number_option(float, 0.0, low_open=True),
        "anchors": number_option(int, 1),
        "negatives": number_option(int, 1),
        "rectify_from": number_option(int, 0, optional=True),
        "confidence": number_option(float, 0.0, 1.0),
        "valid_confidence": number_option(float, 0.0, 1.0),
        "ema_decay": number_option(float, 0.0, 1.0),
    }

    def __init__(
        self,
        network: NetworkConfig,
        total_steps: int,
        lr: float = 2.5e-3,
        prototypes: int = 16,
        dim: int = 64,
        xi: float = 0.6,
        temperature: float = 0.5,
        anchors: int = 256,
        negatives: int = 512,
        rectify_from: int | None = None,
        confidence: float = 0.97,
        valid_confidence: float = 0.7,
        ema_decay: float = 0.99,
        **options,
    ) -> None:
        check_options(self.name, options, self.option_parsers)
        super().__init__(network, total_steps)
        opt = self.option
        self.lr, self.xi, self.tau = opt("lr", lr), opt("xi", xi), opt("temperature", temperature)
        self.anchors, self.negatives = opt("anchors", anchors), opt("negatives", negatives)
        self.confidence, self.valid_confidence = (
            opt("confidence", confidence),
            opt("valid_confidence", valid_confidence),
        )
        rectify_from = opt("rectify_from", rectify_from)
        default_from = min(PAPER_RECTIFY_FROM, total_steps // 2)
        self.rectify_from = int(default_from if rectify_from is None else rectify_from)
        self.max_decay = opt("ema_decay", ema_decay)
        width = max(8, _channels(opt("dim", dim), network.width))
        self.student = _Student(network, width, opt("prototypes", prototypes))
        self.teacher = frozen_copy(self.student)
        self.lam = nn.Parameter(torch.zeros(()))
        self.loss_fn = supervised_loss()

    # --- interface ---------------------------------------------------------------------------
    def networks(self) -> dict[str, nn.Module]:
        return {"net": self.teacher.backbone}

    def init_from(self, networks: dict[str, dict[str, torch.Tensor]]) -> list[str]:
        """Load the stored backbone (or the stored model's first network) into student and teacher."""
        loaded = load_stored(networks, "net", self.student.backbone, self.teacher.backbone)
        return ["student", "teacher"] if loaded else []

    def optimizers(self) -> list[OptimizerSpec]:
        main = OptimizerSpec(
            "main",
            list(self.student.parameters()),
            kind="sgd",
            lr=self.lr,
            momentum=0.9,
            nesterov=True,
            weight_decay=5e-4,
            schedule="poly",
            schedule_options={"power": 0.9},
        )
        lam = OptimizerSpec("lambda", [self.lam], kind="sgd", lr=self.lr, momentum=0.9)
        return [main, lam]

    def compute_losses(self, stage: str, batch: Batch, step: int) -> dict[str, torch.Tensor]:
        if stage == "main":
            return self._main_losses(batch, step)
        if stage == "lambda":
            return self._lambda_loss(batch)
        raise ValueError(f"{self.name} has no stage {stage!r}")

    def after_iteration(self, step: int) -> None:
        update_ema(self.teacher, self.student, ema_decay(step, self.max_decay))

    # --- stages ------------------------------------------------------------------------------
    def pseudo_labels(self, x_u: torch.Tensor, step: int) -> torch.Tensor:
        """The teacher's probabilities on the weak view: rectified from iteration T_r on."""
        with torch.no_grad():
            logits, relation, _ = self.teacher(x_u)
            if step >= self.rectify_from:
                return rectify(logits, relation, self.lam.detach())
            return torch.softmax(logits.float(), dim=1)

    def _main_losses(self, batch: Batch, step: int) -> dict[str, torch.Tensor]:
        if batch.unlabeled_image is None:
            raise ValueError(f"{self.name} needs an unlabelled half in every mini-batch")
        n = batch.labeled_image.shape[0]
        strong, p_teacher = strong_view(
            batch.unlabeled_image, self.pseudo_labels(batch.unlabeled_image, step)
        )
        logits, relation, representation = self.student(torch.cat([batch.labeled_image, strong]))
        sup = self.loss_fn(logits[:n], batch.labeled_label) + self.loss_fn(relation[:n], batch.labeled_label)
        teacher_confidence, pseudo = p_teacher.max(dim=1)
        weight = (teacher_confidence >= self.confidence).float().flatten(1).mean(dim=1)
        per_patch = F.cross_entropy(logits[n:].float(), pseudo, reduction="none").flatten(1).mean(dim=1)
        unlabeled = (weight * per_patch).mean()
        valid = torch.cat(
            [batch.labeled_label[:, 0], torch.where(teacher_confidence >= self.valid_confidence, pseudo, -1)]
        )
        student_confidence = torch.softmax(logits.detach().float(), dim=1).max(dim=1).values
        prototype_means = self.student.dim.prototypes.mean(dim=1)
        cps, counts = cps_loss(
            F.normalize(representation.float(), dim=1),
            valid,
            student_confidence,
            prototype_means,
            anchors=self.anchors,
            negatives=self.negatives,
            xi=self.xi,
            tau=self.tau,
            confidence=self.confidence,
        )
        total = sup + 0.5 * unlabeled + 0.5 * cps
        return {
            "loss": total,
            "sup": sup.detach(),
            "unlabeled": unlabeled.detach(),
            "cps": cps.detach(),
            "reliable_fraction": weight.mean().detach(),
            "rectified": torch.tensor(float(step >= self.rectify_from)),
        }

    def _lambda_loss(self, batch: Batch) -> dict[str, torch.Tensor]:
        """lambda alone: 0.5 (CE + Dice) of the rectified labelled prediction, student in eval mode."""
        with torch.no_grad(), eval_mode(self.student):
            logits, relation, _ = self.student(batch.labeled_image)
        rectified_logits = logits.float() + (1.0 - self.lam) * relation.float()
        loss = self.loss_fn(rectified_logits, batch.labeled_label)
        return {"loss": loss, "lambda": self.lam.detach().clone()}
