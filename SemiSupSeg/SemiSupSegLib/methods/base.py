"""The interface every training method implements.

A method owns its networks and computes its losses. The training loop
(:mod:`SemiSupSegLib.training`) owns optimisation, schedules, checkpoints, logging and progress,
and never branches on which method it runs.

Each iteration, for every :class:`OptimizerSpec` the method declares, in order, the loop calls
``method(stage, batch, step)`` (``forward`` is ``compute_losses``, so that DistributedDataParallel can wrap
the method: :mod:`SemiSupSegLib.distributed`), back-propagates ``losses["loss"]`` and steps that
stage's optimiser. Then it calls ``method.after_iteration(step)`` (EMA teachers update there).
A method with an adversarial classifier thus declares two stages, "segmenters" then
"classifier", and the classifier is updated after the segmenters in each iteration.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from ..networks import NetworkConfig
from .common import OptionParser, check_options


@dataclass
class Batch:
    """One mini-batch. Images are [B, 1, Z, Y, X] float; labels [B, 1, Z, Y, X] long."""

    labeled_image: torch.Tensor
    labeled_label: torch.Tensor
    unlabeled_image: torch.Tensor | None = None

    def to(self, device: torch.device) -> Batch:
        move = lambda t: None if t is None else t.to(device, non_blocking=True)  # noqa: E731
        return Batch(move(self.labeled_image), move(self.labeled_label), move(self.unlabeled_image))


@dataclass
class OptimizerSpec:
    """One optimisation stage: which parameters, which optimiser, which schedule."""

    stage: str
    parameters: list[nn.Parameter]
    kind: str = "adam"  # "adam" | "sgd"
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    schedule: str = "constant"  # "constant" | "poly" | "step"
    schedule_options: dict = field(default_factory=dict)


class Method(nn.Module):
    """Base class of training methods.

    Subclasses set ``name``, ``description`` and ``uses_unlabeled``, declare their options in
    ``option_parsers``, build their networks in ``__init__`` from a :class:`NetworkConfig` and keyword
    options (each converted with :meth:`option`, unknown ones refused), and implement
    :meth:`optimizers` and :meth:`compute_losses`.
    """

    name: ClassVar[str] = "base"
    description: ClassVar[str] = ""
    uses_unlabeled: ClassVar[bool] = False
    default_dropout: ClassVar[float] = 0.5  # the networks' dropout when --dropout is not given
    #: Every option (``--option KEY=VALUE``) the method accepts, with the parser that checks its value.
    option_parsers: ClassVar[dict[str, OptionParser]] = {}

    @classmethod
    def parse_options(cls, options: Mapping[str, object]) -> dict[str, object]:
        """``options`` checked and converted without building anything (the CLI calls it before any data
        is read): :class:`InputError` names an unknown option or a bad value.

        Args:
            options: option name -> value as given (JSON values or text).

        Returns:
            The options with their values converted (numbers as int or float).
        """
        check_options(cls.name, options, cls.option_parsers)
        return {name: cls.option(name, value) for name, value in options.items()}

    @classmethod
    def option(cls, name: str, value: object) -> object:
        """One option's value through its parser (``__init__`` converts each option with this)."""
        return cls.option_parsers[name](name, value)

    def __init__(self, network: NetworkConfig, total_steps: int, **options) -> None:
        super().__init__()
        self.network_config = network
        self.total_steps = total_steps
        self.options = options

    # --- what the loop and the model store need -------------------------------------------
    def networks(self) -> dict[str, nn.Module]:
        """Networks saved into the final model (by name)."""
        raise NotImplementedError

    def inference_network_names(self) -> list[str]:
        """Networks whose probabilities are averaged at inference."""
        return list(self.networks())

    def optimizers(self) -> list[OptimizerSpec]:
        raise NotImplementedError

    def compute_losses(self, stage: str, batch: Batch, step: int) -> dict[str, torch.Tensor]:
        """Return named scalar losses for one stage; ``"loss"`` is the one back-propagated."""
        raise NotImplementedError

    def forward(self, stage: str, batch: Batch, step: int) -> dict[str, torch.Tensor]:
        """:meth:`compute_losses`: calling the method is what DistributedDataParallel wraps (issue 18)."""
        return self.compute_losses(stage, batch, step)

    def after_iteration(self, step: int) -> None:
        """Called once per iteration after every stage has stepped (EMA updates go here)."""

    def init_from(self, networks: dict[str, dict[str, torch.Tensor]]) -> list[str]:
        """Fine-tuning: load weights of an existing model into matching networks; return their names.

        The default copies the first stored network into every network of this method (two
        Dual-UNet branches start from one supervised model); methods may override.
        """
        if not networks:
            return []
        ours = self.networks()
        loaded = []
        for name, net in ours.items():
            state = networks.get(name) or next(iter(networks.values()))
            net.load_state_dict(state)
            loaded.append(name)
        return loaded
