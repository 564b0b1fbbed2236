"""Dual-UNet with the hybrid constraint (seed 000), the product's reference fine-tuning method.

Two Compact-UNets with independent initialisation, no EMA between them; at inference their softmax
probabilities are averaged. Each network q minimises (eqs. 1, 8)

    L_sup + alpha (L_intra + L_inter) + beta L_LCont + gamma L_NCont,

with (alpha, beta, gamma) = (0.1, 0.002, 0.1) ramp(t, ramp_steps), where ``ramp_steps`` is the paper's 4k
steps of 10k, scaled proportionally for shorter runs (option ``ramp_steps``). The entropy thresholds
tau1 = H(0.5) and tau2 = H(0.7) ramp from 3/4 tau to tau over the same steps.

Each iteration has two optimiser stages, in order: ``"segmenters"`` (both UNets, Adam lr 1e-4) and
``"classifier"`` (the label-wise classifier and the contextual encoder's shape head, Adam ``classifier_lr``),
so the classifier is updated after the segmenters. The classifier stage reuses the segmenters' predictions
of the same iteration, detached (no second UNet forward).

Decisions (METHODS.md "000"; each default is the paper's, the option value in brackets is the behaviour
before issue 13, kept so that the difference can be measured):

- **L_sup is eq. 2, BCE + Dice at 1:1** (``sup_weights="1:1"``; ``"0.5:0.5"`` is the baselines'
  0.5 (CE + Dice), which weighed every other term twice as much against L_sup). The two-class softmax
  CE equals the sigmoid BCE; the Dice is METHODS.md's soft Dice on the foreground (squared
  denominators, 1e-5 smoothing) rather than eq. 2's linear denominators with smoothing 1.
- **Voxel distance of one probability** (``voxel_distance="foreground"``; ``"all-channels"``). The
  paper's network has one sigmoid output, so ||y^ - P^||^2 in eqs. 3, 5 and 9 (and D and ||y^_q -
  y^_q'||^2 in eq. 5) is the squared difference of the foreground probability; summed over both softmax
  channels it is twice that.
- **Voxel terms on the unlabelled half.** L_intra and L_inter use the unlabelled patches: the ``T`` = 8
  Monte-Carlo passes (dropout on, input noise; one batched forward per network under ``no_grad``) run
  on those only, which keeps a step within the cost budget.
- **BatchNorm in the Monte-Carlo passes on batch statistics** (``mc_batchnorm="batch"``;
  ``"running"``): each pass normalises with the statistics of its own unlabelled patches, as y^ uses
  batch statistics, and the running statistics are not updated (see
  :func:`~SemiSupSegLib.methods.common.mc_prediction`). Eval-mode BatchNorm biased P^ against y^.
- **Adversarial sign (L_LCont, eq. 6).** Default ``adversarial="saturating"``, the paper's minimax: the
  classifier minimises BCE(labelled predictions -> 1, unlabelled -> 0) and each segmenter minimises the
  negative of that BCE on its own predictions. ``adversarial="non-saturating"`` instead has the segmenters
  minimise the BCE with flipped targets (labelled -> 0, unlabelled -> 1), which keeps gradients alive when
  the classifier wins.
- **Contextual encoder without collapse (L_NCont, eq. 7).** The encoder CE is never trained on L_NCont (a
  constant encoder would make it zero). It is trained in the classifier stage by a *shape* signal: a
  linear head on CE's vector must regress the coarse shape of CE's input map, the 4^3 grid of
  max-pooled foreground probabilities. It learns this on the one-hot annotations and on the detached
  predictions, so the vector has to encode where the foreground is and cannot be constant; L_NCont then
  compares predictions with annotations (and the two networks' unlabelled predictions) in that space.
- **L_NCont is eq. 7's squared L2, on codes of pinned scale** (``ncont_distance="l2"``; ``"ratio"``).
  CE is trained only by its shape head, which leaves the scale of its output free: the raw distance
  grew from 0.02 to 92 and collapsed both networks. The code is therefore ``tanh(z) / sqrt(n)`` of
  the ``n``-dimensional pooled features ``z`` (:class:`ContextEncoder`), so every code has a squared
  length below 1 and ||CE(a) - CE(b)||^2 < 4 at any scale of CE's weights or input, while codes still
  differ in length. The former fix, the symmetric ratio ||a - b||^2 / (||a||^2 + ||b||^2) on unbounded
  codes (:func:`ratio_distance`), equals the cosine distance for codes of equal length, which seed
  000's Table IV rejects (Dice 65.3 against 69.1 for L2).
- Squared Euclidean distances throughout (METHODS.md), averaged over the mini-batch for vectors; the
  other network's output, P^, CE(y) and the other network's CE vector are detached targets.
- DU-Lsup (every term off) uses no unlabelled data, as Table III's (L, 0) rows.

Options: ``ablation`` (a Table III row, see :data:`ABLATIONS`), ``intra``/``inter``/``lcont``/``ncont``
(booleans, override the row), ``alpha``/``beta``/``gamma``, ``ramp_steps``, ``tau1``/``tau2`` (as
probabilities), ``mc_samples``, ``mc_precision`` (for the MC passes only: "auto", the default,
= bf16 where the device computes it natively; "fp32"; "bf16"),
``mc_batchnorm`` ("batch" | "running"), ``adversarial``, ``lr``, ``classifier_lr``, ``sup_weights``
("1:1" | "0.5:0.5"), ``voxel_distance`` ("foreground" | "all-channels"), ``ncont_distance`` ("l2" |
"ratio"). The defaults are the paper's: Adam lr 1e-4, ramps over 4k of 10k steps (scaled), and the
first value of each choice.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError
from ..inference import PRECISIONS, entropy
from ..losses import (
    VOXEL_DISTANCES,
    binary_entropy,
    foreground_squared_distance,
    masked_mean,
    ramp,
    ramped_threshold,
    supervised_loss,
)
from ..networks import NetworkConfig, _channels, build_network
from .base import Batch, Method, OptimizerSpec
from .common import (
    MC_BATCHNORM,
    OptionParser,
    as_bool,
    check_options,
    choice_option,
    eval_mode,
    frozen,
    mc_prediction,
    number_option,
    paper_ramp_steps,
)

VoxelDistance = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``[B, K, ...]`` x ``[B, K, ...]`` -> ``[B, ...]``, a value of ``losses.VOXEL_DISTANCES``."""

TERMS = ("intra", "inter", "lcont", "ncont")
ABLATIONS: dict[str, tuple[str, ...]] = {
    "DU-Lsup": (),
    "+intra": ("intra",),
    "+inter": ("inter",),
    "+intra+inter": ("intra", "inter"),
    "+LCont": ("intra", "inter", "lcont"),
    "+NCont": ("intra", "inter", "ncont"),
    "all": TERMS,
}
"""Table III rows by short name; the long names (``DU-Lsup+intra+inter+LCont``...) are accepted too."""

ADVERSARIAL = ("saturating", "non-saturating")
SUP_WEIGHTS = {"1:1": (1.0, 1.0), "0.5:0.5": (0.5, 0.5)}
"""(CE, Dice) weights of L_sup by option value: eq. 2's 1:1, or the baselines' 0.5 (CE + Dice)."""
SHAPE_GRID = 4
POOL_GRID = 2


def long_ablation_name(terms: tuple[str, ...]) -> str:
    """Table III's row name, e.g. ``DU-Lsup+intra+inter+LCont``."""
    label = {"intra": "intra", "inter": "inter", "lcont": "LCont", "ncont": "NCont"}
    return "DU-Lsup" + "".join("+" + label[t] for t in TERMS if t in terms)


def resolve_ablation(name: str) -> tuple[str, ...]:
    """The terms switched on by a Table III row (short or long name, case-insensitive)."""
    names = {**{k.lower(): v for k, v in ABLATIONS.items()}}
    names.update({long_ablation_name(v).lower(): v for v in ABLATIONS.values()})
    try:
        return names[str(name).lower()]
    except KeyError:
        raise InputError(f"unknown ablation {name!r}; known: {', '.join(ABLATIONS)}") from None


def _ablation_option(name: str, value: object) -> str:
    """The ``ablation`` option: a Table III row name (see :func:`resolve_ablation`)."""
    resolve_ablation(value)
    return str(value)


def _options() -> dict[str, OptionParser]:
    """Every Dual-UNet option and its parser (see the module docstring)."""
    weight, rate = number_option(float, 0.0), number_option(float, 0.0, low_open=True)
    probability = number_option(float, 0.0, 1.0, low_open=True, high_open=True)
    return {
        "lr": rate,
        "classifier_lr": rate,
        "ablation": _ablation_option,
        "alpha": weight,
        "beta": weight,
        "gamma": weight,
        "ramp_steps": number_option(int, 0, optional=True),
        "tau1": probability,
        "tau2": probability,
        "mc_samples": number_option(int, 1),
        "mc_precision": choice_option(*PRECISIONS),
        "mc_batchnorm": choice_option(*MC_BATCHNORM),
        "adversarial": choice_option(*ADVERSARIAL),
        "sup_weights": choice_option(*SUP_WEIGHTS),
        "voxel_distance": choice_option(*VOXEL_DISTANCES),
        "ncont_distance": choice_option(*CODE_DISTANCES),
        **{term: as_bool for term in TERMS},
    }


# ----------------------------------------------------------------------------------- voxel terms


def intra_loss(
    y: torch.Tensor,
    p_hat: torch.Tensor,
    u_hat: torch.Tensor,
    tau1: float,
    distance: VoxelDistance = foreground_squared_distance,
) -> torch.Tensor:
    """Eq. 3: sum([U^ < tau1] ||y^ - P^||^2) / sum([U^ < tau1]); ``p_hat`` is a detached target.

    ``distance`` is ||.||^2 per voxel: the foreground probability's squared difference (eq. 9) by default.
    """
    return masked_mean(distance(y, p_hat.detach()), u_hat < tau1)


def stable_voxels(
    y: torch.Tensor, p_hat: torch.Tensor, u: torch.Tensor, u_hat: torch.Tensor, tau2: float
) -> torch.Tensor:
    """Eq. 4: S = [C = C^] and ([U < tau2] or [U^ < tau2]), C and C^ the class maps of y^ and P^."""
    same_class = y.argmax(dim=1) == p_hat.argmax(dim=1)
    return same_class & ((u < tau2) | (u_hat < tau2))


def inter_mask(s_self: torch.Tensor, s_other: torch.Tensor, d_self: torch.Tensor, d_other: torch.Tensor):
    """Eq. 5's voxel selection for one network: (S_q and S_q' and [D_q > D_q']) or (not S_q and S_q')."""
    return (s_self & s_other & (d_self > d_other)) | (~s_self & s_other)


def inter_loss(
    y_self: torch.Tensor,
    y_other: torch.Tensor,
    mask: torch.Tensor,
    distance: VoxelDistance = foreground_squared_distance,
) -> torch.Tensor:
    """Eq. 5: sum(mask ||y^_q - y^_q'||^2) / sum(mask), with the other network's y^_q' detached."""
    return masked_mean(distance(y_self, y_other.detach()), mask)


# ------------------------------------------------------------------------ classifier and encoder


def _trunk(in_channels: int, width: float) -> nn.Sequential:
    """Strided 4^3 convolutions (64, 128, 256, 512 x width channels), LeakyReLU; each halves the size."""
    layers: list[nn.Module] = []
    channels = in_channels
    for base in (64, 128, 256, 512):
        out = _channels(base, width)
        layers += [nn.Conv3d(channels, out, kernel_size=4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        channels = out
    return nn.Sequential(*layers)


class LabelClassifier(nn.Module):
    """Fig. 3: strided 3D convolutions, then fully connected layers; one logit "annotated" (eq. 6)."""

    def __init__(self, num_classes: int, width: float) -> None:
        super().__init__()
        self.trunk = _trunk(num_classes, width)
        top = _channels(512, width)
        self.fc = nn.Sequential(nn.Linear(top, _channels(128, width)), nn.LeakyReLU(0.2))
        self.out = nn.Linear(_channels(128, width), 1)

    def forward(self, probabilities: torch.Tensor) -> torch.Tensor:
        features = self.trunk(probabilities).mean(dim=(2, 3, 4))
        return self.out(self.fc(features))[:, 0]


class ContextEncoder(nn.Module):
    """CE of eq. 7: the classifier's conv trunk without FC layers and one more 64-kernel conv, pooled.

    The 64 feature maps are average-pooled to a 2^3 grid and flattened (an n = 512-d vector ``z``): a
    global mean would make CE blind to where the foreground is (a prediction shifted from its annotation
    would cost nothing). ``shape_head`` (used only to train CE) regresses the 4^3 max-pooled foreground of
    the input from the code.

    With ``bounded`` (the default) the code is ``tanh(norm(z)) / sqrt(n)``, ``norm`` a BatchNorm without
    affine parameters: each feature is centred and scaled by its statistics over the maps CE sees (batch
    statistics in the classifier stage, which trains CE; the running ones, in eval mode, when L_NCont is
    computed), so the growth of CE's weights under the shape signal does not reach the code, and tanh
    keeps every code's squared length below 1 at any scale, so eq. 7's squared L2 between two codes is
    below 4. Codes still differ in length (this is not a cosine). tanh alone is not enough: measured
    (width 0.0625, shape head at lr 1e-3), ``z`` grew from 0.01 to 58 in 40 steps, every feature
    saturated and all codes became equal. Without ``bounded`` the code is ``z`` (before issue 13).
    """

    def __init__(self, num_classes: int, width: float, dim: int = 64, bounded: bool = True) -> None:
        super().__init__()
        self.trunk = _trunk(num_classes, width)
        self.extra = nn.Conv3d(_channels(512, width), dim, kernel_size=3, padding=1)
        self.code_size = dim * POOL_GRID**3
        self.bounded = bounded
        self.norm = nn.BatchNorm1d(self.code_size, affine=False) if bounded else None
        self.shape_head = nn.Linear(self.code_size, SHAPE_GRID**3)

    def forward(self, probabilities: torch.Tensor) -> torch.Tensor:
        z = F.adaptive_avg_pool3d(self.extra(self.trunk(probabilities)), POOL_GRID).flatten(1)
        if self.norm is None:
            return z
        return torch.tanh(self.norm(z.float())) / math.sqrt(self.code_size)

    def shape_loss(self, probabilities: torch.Tensor) -> torch.Tensor:
        """MSE between the head's output and the input's coarse shape (the anti-collapse training signal)."""
        target = F.adaptive_max_pool3d(1.0 - probabilities[:, :1].float(), SHAPE_GRID).flatten(1)
        return F.mse_loss(self.shape_head(self(probabilities)), target)


def squared_l2_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Eq. 7's distance: the mean over the batch of ``||a - b||^2`` between codes ``[N, n]``.

    Bounded only because :class:`ContextEncoder` bounds its codes (``ncont_distance="l2"``, the default).
    """
    a, b = a.float(), b.float()
    return ((a - b) ** 2).sum(dim=1).mean()


def ratio_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of ``||a - b||^2 / (||a||^2 + ||b||^2)`` (norms detached): in [0, 2] at any scale.

    The distance before issue 13 (``ncont_distance="ratio"``, on unbounded codes). For codes of equal
    length it is the cosine distance ``1 - cos(a, b)``, which seed 000's Table IV rejects; the history
    that led to it:

    Eq. 7's ||CE(a) - CE(b)||^2 has no fixed scale: CE's features grow while its shape head trains. Measured
    on the phantom table (width 0.25, 24^3 patches): the raw distance rose from 0.02 to 92 within 100
    steps, gamma L_NCont outweighed L_sup tenfold and both UNets collapsed to background (Dice 0).
    Dividing by the target's norm alone was tried next and is not enough: on LA2018 the target code's
    norm can be small and the ratio reached 6, again above L_sup. The symmetric ratio is bounded by 2
    (a = -b), is 0 for equal codes and 1 for a zero code, so gamma = 0.1 keeps L_NCont below L_sup.
    Unit-length vectors were also tried and rejected: CE's codes share one dominant direction, so their
    angles hardly differ.
    """
    a, b = a.float(), b.float()
    scale = ((a.detach() ** 2).sum(dim=1) + (b.detach() ** 2).sum(dim=1)).clamp_min(1e-12)
    return (((a - b) ** 2).sum(dim=1) / scale).mean()


CODE_DISTANCES = {"l2": squared_l2_distance, "ratio": ratio_distance}
"""L_NCont's distance between CE codes by option value (``ncont_distance``); "l2" uses bounded codes."""


# ------------------------------------------------------------------------------------ the method


@dataclass
class _Predictions:
    """Softmax maps of the current iteration, kept (detached) for the classifier stage."""

    labeled: list[torch.Tensor]
    unlabeled: list[torch.Tensor]
    annotation: torch.Tensor


class DualUNet(Method):
    """Seed 000: two Compact-UNets, L_sup + alpha (L_intra + L_inter) + beta L_LCont + gamma L_NCont."""

    name = "dual-unet"
    description = "Dual-UNet hybrid constraint (seed 000): two UNets, uncertainty + contextual constraints"
    uses_unlabeled = True
    option_parsers = _options()

    def __init__(
        self,
        network: NetworkConfig,
        total_steps: int,
        lr: float = 1e-4,
        classifier_lr: float = 1e-4,
        ablation: str = "all",
        alpha: float = 0.1,
        beta: float = 0.002,
        gamma: float = 0.1,
        ramp_steps: int | None = None,
        tau1: float = 0.5,
        tau2: float = 0.7,
        mc_samples: int = 8,
        mc_precision: str = "auto",
        mc_batchnorm: str = "batch",
        adversarial: str = "saturating",
        sup_weights: str = "1:1",
        voxel_distance: str = "foreground",
        ncont_distance: str = "l2",
        **options,
    ) -> None:
        check_options(self.name, options, self.option_parsers)  # left in options: the term switches
        switches = {t: self.option(t, v) for t, v in options.items()}
        super().__init__(network, total_steps)
        on = set(resolve_ablation(self.option("ablation", ablation)))
        self.terms = {t: switches.get(t, t in on) for t in TERMS}
        self.adversarial = self.option("adversarial", adversarial)
        self.weights = {k: self.option(k, v) for k, v in (("alpha", alpha), ("beta", beta), ("gamma", gamma))}
        ramp_steps = self.option("ramp_steps", ramp_steps)
        self.ramp_steps = paper_ramp_steps(total_steps) if ramp_steps is None else ramp_steps
        self.tau = (binary_entropy(self.option("tau1", tau1)), binary_entropy(self.option("tau2", tau2)))
        self.mc_samples = self.option("mc_samples", mc_samples)
        self.mc_precision = self.option("mc_precision", mc_precision)
        self.mc_batchnorm = self.option("mc_batchnorm", mc_batchnorm)
        self.voxel_distance = VOXEL_DISTANCES[self.option("voxel_distance", voxel_distance)]
        self.ncont_distance = self.option("ncont_distance", ncont_distance)
        self.code_distance = CODE_DISTANCES[self.ncont_distance]
        self.lr, self.classifier_lr = self.option("lr", lr), self.option("classifier_lr", classifier_lr)
        self.net1, self.net2 = build_network(network), build_network(network)
        k, w = network.num_classes, network.width
        self.classifier = LabelClassifier(k, w) if self.terms["lcont"] else None
        bounded = self.ncont_distance == "l2"
        self.encoder = ContextEncoder(k, w, bounded=bounded) if self.terms["ncont"] else None
        self.uses_unlabeled = any(self.terms.values())
        self.loss_fn = supervised_loss(*SUP_WEIGHTS[self.option("sup_weights", sup_weights)])
        self._pending: _Predictions | None = None

    # --- interface ---------------------------------------------------------------------------
    def networks(self) -> dict[str, nn.Module]:
        return {"net1": self.net1, "net2": self.net2}

    def inference_network_names(self) -> list[str]:
        return ["net1", "net2"]

    def _auxiliary(self) -> list[nn.Module]:
        return [m for m in (self.classifier, self.encoder) if m is not None]

    def optimizers(self) -> list[OptimizerSpec]:
        segmenters = [*self.net1.parameters(), *self.net2.parameters()]
        specs = [OptimizerSpec("segmenters", segmenters, kind="adam", lr=self.lr)]
        auxiliary = [p for m in self._auxiliary() for p in m.parameters()]
        if auxiliary:
            specs.append(OptimizerSpec("classifier", auxiliary, kind="adam", lr=self.classifier_lr))
        return specs

    def compute_losses(self, stage: str, batch: Batch, step: int) -> dict[str, torch.Tensor]:
        if stage == "segmenters":
            return self._segmenter_losses(batch, step)
        if stage == "classifier":
            return self._classifier_losses(batch)
        raise ValueError(f"dual-unet has no stage {stage!r}")

    # --- schedules ---------------------------------------------------------------------------
    def loss_weights(self, step: int) -> dict[str, float]:
        """(alpha, beta, gamma) ramp(t, ramp_steps)."""
        r = ramp(step, self.ramp_steps)
        return {k: v * r for k, v in self.weights.items()}

    def thresholds(self, step: int) -> tuple[float, float]:
        """(tau1, tau2), each ramping from 3/4 of H(0.5) and H(0.7) to the full value."""
        return tuple(ramped_threshold(t, step, self.ramp_steps) for t in self.tau)

    # --- segmenters --------------------------------------------------------------------------
    def _forward(self, batch: Batch) -> tuple[list[torch.Tensor], _Predictions]:
        """Logits of both networks on labelled (+ unlabelled if any term uses them) patches, one pass each."""
        n = batch.labeled_image.shape[0]
        x = batch.labeled_image
        if self.uses_unlabeled:
            if batch.unlabeled_image is None:
                raise ValueError("dual-unet needs an unlabelled half in every mini-batch")
            x = torch.cat([x, batch.unlabeled_image])
        logits = [self.net1(x), self.net2(x)]
        probs = [torch.softmax(z.float(), dim=1) for z in logits]
        annotation = F.one_hot(batch.labeled_label[:, 0], probs[0].shape[1]).movedim(-1, 1).float()
        return logits, _Predictions([p[:n] for p in probs], [p[n:] for p in probs], annotation)

    def terms_per_network(
        self, batch: Batch, step: int
    ) -> tuple[dict[str, list[torch.Tensor]], dict[str, torch.Tensor]]:
        """Every active loss term per network (index 0 = net1), and mask statistics for the log.

        Targets from the other network, P^ and CE(y) are detached; the classifier and the encoder are
        frozen here, so only the two UNets receive gradient.
        """
        logits, pred = self._forward(batch)
        n = batch.labeled_image.shape[0]
        terms = {"sup": [self.loss_fn(z[:n], batch.labeled_label) for z in logits]}
        stats: dict[str, torch.Tensor] = {}
        if self.terms["intra"] or self.terms["inter"]:
            voxel, stats = self._voxel_terms(pred.unlabeled, batch.unlabeled_image, step)
            terms.update(voxel)
        with frozen(*self._auxiliary()):
            if self.terms["lcont"]:
                terms["lcont"] = [self._adversarial(pred.labeled[q], pred.unlabeled[q]) for q in range(2)]
            if self.terms["ncont"]:
                terms["ncont"] = self._ncont(pred.labeled, pred.unlabeled, pred.annotation)
        if self._auxiliary():
            detach = lambda ps: [p.detach() for p in ps]  # noqa: E731
            self._pending = _Predictions(detach(pred.labeled), detach(pred.unlabeled), pred.annotation)
        return terms, stats

    def _voxel_terms(
        self, y: list[torch.Tensor], x_u: torch.Tensor, step: int
    ) -> tuple[dict[str, list[torch.Tensor]], dict[str, torch.Tensor]]:
        """L_intra (eq. 3) and L_inter (eqs. 4, 5) of both networks on the unlabelled predictions ``y``."""
        tau1, tau2 = self.thresholds(step)
        mc = [
            mc_prediction(net, x_u, self.mc_samples, self.mc_precision, self.mc_batchnorm)
            for net in (self.net1, self.net2)
        ]
        distance = self.voxel_distance
        out: dict[str, list[torch.Tensor]] = {}
        stats: dict[str, torch.Tensor] = {}
        if self.terms["intra"]:
            out["intra"] = [intra_loss(y[q], mc[q][0], mc[q][1], tau1, distance) for q in range(2)]
            stats["intra_mask"] = torch.stack([(u < tau1).float().mean() for _, u in mc]).mean()
        if self.terms["inter"]:
            y_ = [p.detach() for p in y]
            s = [stable_voxels(y_[q], mc[q][0], entropy(y_[q]), mc[q][1], tau2) for q in range(2)]
            d = [distance(y_[q], mc[q][0]) for q in range(2)]
            masks = [inter_mask(s[0], s[1], d[0], d[1]), inter_mask(s[1], s[0], d[1], d[0])]
            out["inter"] = [inter_loss(y[q], y[1 - q], masks[q], distance) for q in range(2)]
            stats["inter_mask"] = torch.stack([m.float().mean() for m in masks]).mean()
        return out, stats

    def _adversarial(self, labeled: torch.Tensor, unlabeled: torch.Tensor) -> torch.Tensor:
        """Eq. 6 for one segmenter (classifier frozen): -BCE (saturating) or BCE with flipped targets."""
        d_l, d_u = self.classifier(labeled), self.classifier(unlabeled)
        if self.adversarial == "saturating":
            return -classifier_bce(d_l, d_u)
        return classifier_bce(d_u, d_l)

    def _ncont(
        self, labeled: list[torch.Tensor], unlabeled: list[torch.Tensor], annotation: torch.Tensor
    ) -> list[torch.Tensor]:
        """Eq. 7 per network: ||CE(y^l_q) - CE(y)||^2 + ||CE(y^u_q) - CE(y^u_q')||^2, targets detached.

        CE runs in eval mode here (its code normalisation on running statistics, see
        :class:`ContextEncoder`), so that every map's code is a function of that map alone.
        """
        with eval_mode(self.encoder):
            with torch.no_grad():
                target_l = self.encoder(annotation)
            code_l = [self.encoder(p) for p in labeled]
            code_u = [self.encoder(u) for u in unlabeled]
        distance = self.code_distance
        return [distance(code_l[q], target_l) + distance(code_u[q], code_u[1 - q].detach()) for q in range(2)]

    def _segmenter_losses(self, batch: Batch, step: int) -> dict[str, torch.Tensor]:
        terms, stats = self.terms_per_network(batch, step)
        w = self.loss_weights(step)
        factor = {"sup": 1.0, "intra": w["alpha"], "inter": w["alpha"]}
        factor.update(lcont=w["beta"], ncont=w["gamma"])
        loss = sum(factor[k] * (v[0] + v[1]) for k, v in terms.items())
        logged = {k: ((v[0] + v[1]) / 2).detach() for k, v in terms.items()}
        logged.update({k: torch.tensor(v) for k, v in w.items()})
        return {"loss": loss, **logged, **stats}

    # --- classifier stage --------------------------------------------------------------------
    def _classifier_losses(self, batch: Batch) -> dict[str, torch.Tensor]:
        """BCE of the classifier (labelled predictions -> 1, unlabelled -> 0) and CE's shape regression."""
        pending, self._pending = self._pending, None
        if pending is None:  # called on its own (not after the segmenters' stage of this iteration)
            with torch.no_grad():
                pending = self._forward(batch)[1]
        out: dict[str, torch.Tensor] = {}
        labeled, unlabeled = torch.cat(pending.labeled), torch.cat(pending.unlabeled)
        if self.classifier is not None:
            out["classifier_bce"] = classifier_bce(self.classifier(labeled), self.classifier(unlabeled))
        if self.encoder is not None:
            maps = torch.cat([pending.annotation, labeled, unlabeled])
            out["encoder_shape"] = self.encoder.shape_loss(maps)
        out["loss"] = sum(out.values())
        return out


def classifier_bce(logits_labeled: torch.Tensor, logits_unlabeled: torch.Tensor) -> torch.Tensor:
    """BCE with targets 1 for ``logits_labeled`` and 0 for ``logits_unlabeled`` (the negative of eq. 6)."""
    bce = F.binary_cross_entropy_with_logits
    ones, zeros = torch.ones_like(logits_labeled), torch.zeros_like(logits_unlabeled)
    return 0.5 * (bce(logits_labeled.float(), ones) + bce(logits_unlabeled.float(), zeros))
