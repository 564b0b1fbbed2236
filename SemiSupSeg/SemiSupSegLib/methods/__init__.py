"""The method registry: every training method, by name, with a one-line description."""

from __future__ import annotations

from .base import Batch, Method, OptimizerSpec
from .coranet import CoraNet
from .crln import CRLN
from .dual_unet import DualUNet
from .embedding_matching import EmbeddingMatching
from .mean_teacher import MeanTeacher
from .supervised import Supervised
from .ua_mt import UAMT
from .voxel_adversarial import VoxelAdversarial

METHODS: dict[str, type[Method]] = {
    cls.name: cls
    for cls in (Supervised, MeanTeacher, UAMT, DualUNet, EmbeddingMatching, CoraNet, CRLN, VoxelAdversarial)
}


def get_method(name: str) -> type[Method]:
    try:
        return METHODS[name]
    except KeyError:
        known = ", ".join(sorted(METHODS))
        raise ValueError(f"unknown method {name!r}; known methods: {known}") from None


def describe_methods() -> list[dict[str, str]]:
    return [{"name": n, "description": c.description} for n, c in sorted(METHODS.items())]


__all__ = ["Batch", "Method", "OptimizerSpec", "METHODS", "get_method", "describe_methods"]
