"""Mean-teacher baseline (Tarvainen & Valpola 2017, as used by UA-MT and the seeds' comparison tables).

Decisions (METHODS.md, "Baselines"):

- The student sees the mini-batch (labelled + unlabelled halves) in one forward; the supervised loss uses
  the labelled half, the consistency the unlabelled half only (as UA-MT's published training script).
- The teacher sees the unlabelled half with input noise ``clamp(N(0, 0.1^2), -0.2, 0.2)`` under
  ``no_grad``, in the loop's train mode: dropout active and BatchNorm on batch statistics, so the teacher's
  BatchNorm buffers follow its own forward passes (the EMA touches parameters only).
- EMA decay ``min(1 - 1/(t + 1), 0.99)``; the teacher starts as a copy of the student and is a copy of it
  after step 0.
- Consistency weight ``0.1 ramp(t, T_c)`` with ``T_c`` = the whole run by default (UA-MT ramps over its
  whole schedule); option ``ramp_steps``.
- The saved model holds the teacher only; ``init_from`` loads one stored network into student and teacher.
"""

from __future__ import annotations

import torch

from ..losses import ramp, supervised_loss
from ..networks import NetworkConfig, build_network
from .base import Batch, Method, OptimizerSpec
from .common import check_options, ema_decay, frozen_copy, input_noise, load_stored, number_option, update_ema


class MeanTeacher(Method):
    """L = L_sup + w(t) MSE(softmax student(x_u), softmax teacher(x_u + noise)), w = 0.1 ramp(t, T_c)."""

    name = "mean-teacher"
    description = "Mean teacher: EMA teacher, softmax MSE consistency on noised unlabelled patches"
    uses_unlabeled = True
    option_parsers = {
        "lr": number_option(float, 0.0, low_open=True),
        "consistency": number_option(float, 0.0),
        "ramp_steps": number_option(int, 0, optional=True),
        "ema_decay": number_option(float, 0.0, 1.0),
    }

    def __init__(
        self,
        network: NetworkConfig,
        total_steps: int,
        lr: float = 1e-4,
        consistency: float = 0.1,
        ramp_steps: int | None = None,
        ema_decay: float = 0.99,
        **options,
    ) -> None:
        check_options(self.name, options, self.option_parsers)
        super().__init__(network, total_steps)
        self.lr = self.option("lr", lr)
        self.consistency = self.option("consistency", consistency)
        ramp_steps = self.option("ramp_steps", ramp_steps)
        self.ramp_steps = int(total_steps if ramp_steps is None else ramp_steps)
        self.max_decay = self.option("ema_decay", ema_decay)
        self.student = build_network(network)
        self.teacher = frozen_copy(self.student)
        self.loss_fn = supervised_loss()

    def networks(self) -> dict[str, torch.nn.Module]:
        return {"teacher": self.teacher}

    def optimizers(self) -> list[OptimizerSpec]:
        return [OptimizerSpec("student", list(self.student.parameters()), kind="adam", lr=self.lr)]

    def init_from(self, networks: dict[str, dict[str, torch.Tensor]]) -> list[str]:
        """Load the stored teacher (or the stored model's first network) into student and teacher."""
        loaded = load_stored(networks, "teacher", self.student, self.teacher)
        return ["student", "teacher"] if loaded else []

    def teacher_target(self, x: torch.Tensor) -> torch.Tensor:
        """Teacher softmax on the noised input, without gradient (the consistency target)."""
        with torch.no_grad():
            return torch.softmax(self.teacher(input_noise(x)).float(), dim=1)

    def consistency_loss(
        self, p_student: torch.Tensor, p_teacher: torch.Tensor, x_u: torch.Tensor, step: int
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Mean squared softmax difference over voxels and classes."""
        return ((p_student - p_teacher) ** 2).mean(), {}

    def compute_losses(self, stage: str, batch: Batch, step: int) -> dict[str, torch.Tensor]:
        if batch.unlabeled_image is None:
            raise ValueError(f"{self.name} needs an unlabelled half in every mini-batch")
        n = batch.labeled_image.shape[0]
        logits = self.student(torch.cat([batch.labeled_image, batch.unlabeled_image]))
        sup = self.loss_fn(logits[:n], batch.labeled_label)
        p_student = torch.softmax(logits[n:].float(), dim=1)
        p_teacher = self.teacher_target(batch.unlabeled_image)
        cons, extra = self.consistency_loss(p_student, p_teacher, batch.unlabeled_image, step)
        weight = self.consistency * ramp(step, self.ramp_steps)
        return {
            "loss": sup + weight * cons,
            "sup": sup.detach(),
            "consistency": cons.detach(),
            "consistency_weight": torch.tensor(weight),
            **extra,
        }

    def after_iteration(self, step: int) -> None:
        update_ema(self.teacher, self.student, ema_decay(step, self.max_decay))
