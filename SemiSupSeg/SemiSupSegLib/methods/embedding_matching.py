"""Embedding matching (seed 001): UA-MT pseudo-labels plus nearest-neighbour pseudo-labels from embeddings.

METHODS.md "001". A student and an EMA teacher (decay ``min(1 - 1/(t + 1), 0.99)``) of the same backbone.
Per step, with ``B`` labelled and ``B`` unlabelled patches:

- **L_sup**: 0.5 (CE + Dice) of the student on the labelled patches.
- **L_ua**: CE of the student on the unlabelled patches against argmax P^, the teacher's mean softmax over
  ``T`` = 8 Monte-Carlo passes, on the voxels where their entropy U < tau(t) = (0.75 + 0.25 ramp(t, T_max))
  ln K (the UA-MT threshold ramp; ln 2 for two classes).
- **L_nn** on the voxels with U >= tau(t): from each labelled patch, N voxels of each class are drawn in a
  band of ``band`` voxels inside that class's surface (:func:`surface_bands`; for two classes, object
  voxels just inside the surface and background voxels just outside it); the **teacher's** last decoder
  feature embeds them; the **student's** embeds the unlabelled voxels. S_c = the mean cosine similarity of
  a voxel to the class-c embeddings, averaged over ``repeats`` = K fresh samples. Since the mean of cosines
  is the dot product with the mean of the normalised embeddings, ``S = x^ . mean_k mean_n e^`` costs
  O(voxels x d) (:func:`class_similarity_maps`), never voxels x N. The pseudo-label argmax_c S_c (for two
  classes [S_obj > S_bg]) is detached; L_nn is the student's CE against it.
- **L_ent**: the mean entropy of softmax(S) over the unlabelled voxels, with gradient through the student
  embeddings (the labelled embeddings are the teacher's, constant).
- **Total**: L_sup + L_ua + 0.25 ramp(t, T) L_nn + 0.125 ramp(t, T) L_ent, T = the whole run (option
  ``ramp_steps``).

Decisions:

- **[decision]** N = 256 voxels per class and labelled patch and K = 4 repeats (lost in the extraction;
  options ``samples`` and ``repeats``); the band is 3 voxels wide (option ``band``; "a few voxels"),
  measured with a cube (chessboard distance); a band with fewer than N voxels gives all of them.
- **[decision]** L_ua and L_nn are CE averaged over their voxels (sum / count, 0 when empty); L_ent is
  averaged over every unlabelled voxel (the paper's eq. 4 was lost and names no region).
- **[decision]** When a class has no band voxel in any labelled patch of the batch, S cannot be formed:
  L_nn and L_ent are 0 for that step.
- Input noise (paper, Sec. 3): N(0, 0.02^2) on the student's inputs, N(0, 0.01^2) on the teacher's input
  that embeds the labelled voxels. The Monte-Carlo passes use the passes' own noise of METHODS.md
  "Notation" (clamp(N(0, 0.1^2), -0.2, 0.2), one batched forward under ``no_grad``, BatchNorm on batch
  statistics, as UA-MT here; options ``mc_samples``, ``mc_precision``, ``mc_batchnorm``).
- Dropout 0.15 (the paper's "0.15 for all convolution layers except the output") is this method's
  default network dropout (``default_dropout``; ``--dropout`` overrides it). The Compact-UNet keeps its
  first convolution (on the raw image) without dropout; the VNet has only its two Dropout3d.
- **[decision]** The paper's "half width" 3D U-Net is ``--width 0.5`` of the chosen backbone: the width
  is the product's one knob, so that the comparison tables run every method at the same width.
- Adam lr 1e-4, betas (0.9, 0.99) (paper: decay rates 0.9 and 0.99). The saved model is the teacher.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..inference import PRECISIONS, entropy
from ..losses import masked_cross_entropy, ramp, ramped_threshold, supervised_loss
from ..networks import NetworkConfig, build_network
from .base import Batch, Method, OptimizerSpec
from .common import (
    MC_BATCHNORM,
    check_options,
    choice_option,
    ema_decay,
    frozen_copy,
    load_stored,
    mc_prediction,
    number_option,
    update_ema,
)

__all__ = ["EmbeddingMatching", "class_similarity_maps", "sample_class_embeddings", "surface_bands"]

STUDENT_NOISE = 0.02
TEACHER_NOISE = 0.01
NN_WEIGHT = 0.25
ENTROPY_WEIGHT = 0.125


def surface_bands(label: torch.Tensor, num_classes: int, width: int) -> torch.Tensor:
    """Voxels of each class within ``width`` voxels (chessboard distance) of a voxel of another class.

    For two classes, channel 1 is the object band just inside the surface of the ground truth and channel
    0 the background band just outside it (METHODS.md "001", L_nn step 1).

    Args:
        label: class indices ``[B, 1, Z, Y, X]`` or ``[B, Z, Y, X]``.
        num_classes: K.
        width: the band's width in voxels (>= 1).

    Returns:
        Boolean ``[B, K, Z, Y, X]``.
    """
    label = label[:, 0] if label.dim() == 5 else label
    onehot = F.one_hot(label.long(), num_classes).movedim(-1, 1).float()
    others_near = F.max_pool3d(1.0 - onehot, kernel_size=2 * width + 1, stride=1, padding=width)
    return (onehot > 0) & (others_near > 0)


def sample_class_embeddings(
    embeddings: torch.Tensor, bands: torch.Tensor, samples: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean normalised embedding of up to ``samples`` random band voxels per class and patch, pooled.

    Args:
        embeddings: ``[B, d, Z, Y, X]`` (the teacher's last decoder feature of the labelled patches).
        bands: boolean ``[B, K, Z, Y, X]`` from :func:`surface_bands`.
        samples: N, voxels drawn per class from each patch (without replacement; all when fewer).

    Returns:
        ``(means [K, d], found [K])``: per class the mean over every drawn voxel of e / ||e||, and whether
        any voxel was drawn (a class without one has a zero mean).
    """
    unit = F.normalize(embeddings.float(), dim=1).flatten(2)  # [B, d, V]
    flat = bands.flatten(2)  # [B, K, V]
    k, d = bands.shape[1], unit.shape[1]
    sums, counts = unit.new_zeros(k, d), unit.new_zeros(k)
    for b in range(unit.shape[0]):
        for c in range(k):
            where = flat[b, c].nonzero().squeeze(1)
            chosen = where[torch.randperm(where.numel(), device=where.device)[:samples]]
            sums[c] += unit[b][:, chosen].sum(dim=1)
            counts[c] += chosen.numel()
    return sums / counts.clamp_min(1.0).unsqueeze(1), counts > 0


def class_similarity_maps(embeddings: torch.Tensor, class_means: torch.Tensor) -> torch.Tensor:
    """S_c = the mean cosine similarity of each voxel to class c's sampled embeddings: ``x^ . mean(e^)``.

    Args:
        embeddings: the student's ``[B, d, Z, Y, X]`` (gradient flows through them).
        class_means: ``[K, d]`` from :func:`sample_class_embeddings` (averaged over the repeats).

    Returns:
        ``[B, K, Z, Y, X]``, O(voxels x d) to compute.
    """
    unit = F.normalize(embeddings.float(), dim=1)
    return torch.einsum("bd...,kd->bk...", unit, class_means.to(unit.dtype))


class EmbeddingMatching(Method):
    """L = L_sup + L_ua + 0.25 ramp L_nn + 0.125 ramp L_ent (seed 001; see the module docstring)."""

    name = "embedding-matching"
    description = (
        "Embedding matching (seed 001): UA-MT pseudo-labels where the teacher is certain, nearest-neighbour "
        "pseudo-labels from embeddings of labelled surface bands elsewhere, entropy minimisation"
    )
    uses_unlabeled = True
    default_dropout = 0.15
    option_parsers = {
        "lr": number_option(float, 0.0, low_open=True),
        "ema_decay": number_option(float, 0.0, 1.0),
        "ramp_steps": number_option(int, 0, optional=True),
        "threshold_ramp_steps": number_option(int, 0, optional=True),
        "samples": number_option(int, 1),
        "repeats": number_option(int, 1),
        "band": number_option(int, 1),
        "mc_samples": number_option(int, 1),
        "mc_precision": choice_option(*PRECISIONS),
        "mc_batchnorm": choice_option(*MC_BATCHNORM),
    }

    def __init__(
        self,
        network: NetworkConfig,
        total_steps: int,
        lr: float = 1e-4,
        ema_decay: float = 0.99,
        ramp_steps: int | None = None,
        threshold_ramp_steps: int | None = None,
        samples: int = 256,
        repeats: int = 4,
        band: int = 3,
        mc_samples: int = 8,
        mc_precision: str = "auto",
        mc_batchnorm: str = "batch",
        **options,
    ) -> None:
        check_options(self.name, options, self.option_parsers)
        super().__init__(network, total_steps)
        self.lr = self.option("lr", lr)
        self.max_decay = self.option("ema_decay", ema_decay)
        ramp_steps = self.option("ramp_steps", ramp_steps)
        self.ramp_steps = int(total_steps if ramp_steps is None else ramp_steps)
        threshold_ramp_steps = self.option("threshold_ramp_steps", threshold_ramp_steps)
        self.threshold_ramp_steps = int(total_steps if threshold_ramp_steps is None else threshold_ramp_steps)
        self.samples = self.option("samples", samples)
        self.repeats = self.option("repeats", repeats)
        self.band = self.option("band", band)
        self.mc = (
            self.option("mc_samples", mc_samples),
            self.option("mc_precision", mc_precision),
            self.option("mc_batchnorm", mc_batchnorm),
        )
        self.student = build_network(network)
        self.teacher = frozen_copy(self.student)
        self.loss_fn = supervised_loss()

    def networks(self) -> dict[str, torch.nn.Module]:
        return {"teacher": self.teacher}

    def optimizers(self) -> list[OptimizerSpec]:
        params = list(self.student.parameters())
        return [OptimizerSpec("student", params, kind="adam", lr=self.lr, betas=(0.9, 0.99))]

    def init_from(self, networks: dict[str, dict[str, torch.Tensor]]) -> list[str]:
        """Load the stored teacher (or the stored model's first network) into student and teacher."""
        loaded = load_stored(networks, "teacher", self.student, self.teacher)
        return ["student", "teacher"] if loaded else []

    def threshold(self, step: int) -> float:
        """tau(t) = (0.75 + 0.25 ramp(t, T_max)) ln K."""
        return ramped_threshold(math.log(self.network_config.num_classes), step, self.threshold_ramp_steps)

    def class_means(self, labeled_image: torch.Tensor, labeled_label: torch.Tensor) -> tuple:
        """The teacher's mean normalised band embeddings per class, averaged over ``repeats`` draws.

        Returns:
            ``(means [K, d], found [K])`` without gradient; see :func:`sample_class_embeddings`.
        """
        noisy = labeled_image + TEACHER_NOISE * torch.randn_like(labeled_image)
        with torch.no_grad():
            embeddings = self.teacher.forward_features(noisy)[1]["dec1"]
            bands = surface_bands(labeled_label, self.network_config.num_classes, self.band)
            draws = [sample_class_embeddings(embeddings, bands, self.samples) for _ in range(self.repeats)]
        means = torch.stack([m for m, _ in draws]).mean(dim=0)
        return means, draws[0][1]

    def compute_losses(self, stage: str, batch: Batch, step: int) -> dict[str, torch.Tensor]:
        if batch.unlabeled_image is None:
            raise ValueError(f"{self.name} needs an unlabelled half in every mini-batch")
        n = batch.labeled_image.shape[0]
        x = torch.cat([batch.labeled_image, batch.unlabeled_image])
        logits, features = self.student.forward_features(x + STUDENT_NOISE * torch.randn_like(x))
        sup = self.loss_fn(logits[:n], batch.labeled_label)
        p_teacher, uncertainty = mc_prediction(self.teacher, batch.unlabeled_image, *self.mc)
        certain = uncertainty < self.threshold(step)
        ua = masked_cross_entropy(logits[n:], p_teacher.argmax(dim=1), certain)
        means, found = self.class_means(batch.labeled_image, batch.labeled_label)
        similarity = class_similarity_maps(features["dec1"][n:], means)
        if bool(found.all()):
            nn_loss = masked_cross_entropy(logits[n:], similarity.detach().argmax(dim=1), ~certain)
            ent = entropy(torch.softmax(similarity, dim=1)).mean()
        else:
            nn_loss = ent = logits.new_zeros(())
        weight = ramp(step, self.ramp_steps)
        total = sup + ua + NN_WEIGHT * weight * nn_loss + ENTROPY_WEIGHT * weight * ent
        return {
            "loss": total,
            "sup": sup.detach(),
            "ua": ua.detach(),
            "nn": nn_loss.detach(),
            "entropy": ent.detach(),
            "certain_fraction": certain.float().mean(),
            "ramp": torch.tensor(weight),
        }

    def after_iteration(self, step: int) -> None:
        update_ema(self.teacher, self.student, ema_decay(step, self.max_decay))
