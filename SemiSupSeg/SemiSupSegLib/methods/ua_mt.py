"""Uncertainty-aware mean teacher (UA-MT, Yu et al. 2019), the baseline every seed compares against.

Mean teacher (see :mod:`.mean_teacher`, same decisions) whose consistency keeps only the voxels where the
teacher is certain: ``T`` = 8 Monte-Carlo passes of the teacher (dropout active, input noise, one batched
forward under ``no_grad``) give the mean softmax P^ and its entropy U; the mask is
``U < (0.75 + 0.25 ramp(t, T_max)) ln 2`` with ``T_max`` = the whole run (option ``threshold_ramp_steps``);
the consistency is ``sum(mask (p_s - p_t)^2) / (2 sum(mask) + 1e-16)`` (for two classes, the squared
difference of the one foreground probability averaged over the masked voxels).

Decisions (besides the mean teacher's):

- **BatchNorm in the Monte-Carlo passes on batch statistics** (option ``mc_batchnorm``, default
  ``"batch"``; ``"running"`` is the eval-mode BatchNorm used before issue 13): each pass normalises with
  the statistics of its own unlabelled patches, as UA-MT's published code runs its teacher in train mode
  for the passes (METHODS.md "000"), and, unlike that code, the passes leave the teacher's running
  statistics untouched (they follow the teacher's one target forward per step).
- The supervised loss stays METHODS.md's 0.5 (CE + Dice) and the consistency its per-class mean, as
  METHODS.md "Baselines" states them.
"""

from __future__ import annotations

import math

import torch

from ..inference import PRECISIONS
from ..losses import ramped_threshold, uncertainty_consistency
from ..networks import NetworkConfig
from .common import MC_BATCHNORM, choice_option, mc_prediction, number_option
from .mean_teacher import MeanTeacher


class UAMT(MeanTeacher):
    """Mean teacher with an uncertainty-masked consistency (T Monte-Carlo passes of the teacher)."""

    name = "ua-mt"
    description = "UA-MT: mean teacher whose consistency keeps voxels of low Monte-Carlo teacher uncertainty"
    uses_unlabeled = True
    option_parsers = {
        **MeanTeacher.option_parsers,
        "mc_samples": number_option(int, 1),
        "mc_precision": choice_option(*PRECISIONS),
        "mc_batchnorm": choice_option(*MC_BATCHNORM),
        "threshold_ramp_steps": number_option(int, 0, optional=True),
    }

    def __init__(
        self,
        network: NetworkConfig,
        total_steps: int,
        mc_samples: int = 8,
        mc_precision: str = "auto",
        mc_batchnorm: str = "batch",
        threshold_ramp_steps: int | None = None,
        **options,
    ) -> None:
        mc_samples = self.option("mc_samples", mc_samples)
        mc_precision = self.option("mc_precision", mc_precision)
        mc_batchnorm = self.option("mc_batchnorm", mc_batchnorm)
        threshold_ramp_steps = self.option("threshold_ramp_steps", threshold_ramp_steps)
        super().__init__(network, total_steps, **options)
        self.mc_samples = mc_samples
        self.mc_precision = mc_precision  # auto (bf16 where native) | fp32 | bf16: the MC passes only
        self.mc_batchnorm = mc_batchnorm  # batch (their own statistics) | running (eval mode)
        self.threshold_ramp_steps = int(total_steps if threshold_ramp_steps is None else threshold_ramp_steps)

    def threshold(self, step: int) -> float:
        """(0.75 + 0.25 ramp(t, T_max)) ln 2."""
        return ramped_threshold(math.log(2.0), step, self.threshold_ramp_steps)

    def consistency_loss(
        self, p_student: torch.Tensor, p_teacher: torch.Tensor, x_u: torch.Tensor, step: int
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        mc = (self.mc_samples, self.mc_precision, self.mc_batchnorm)
        _, uncertainty = mc_prediction(self.teacher, x_u, *mc)
        mask = uncertainty < self.threshold(step)
        loss = uncertainty_consistency(p_student, p_teacher, mask)
        return loss, {"mask_fraction": mask.float().mean()}
