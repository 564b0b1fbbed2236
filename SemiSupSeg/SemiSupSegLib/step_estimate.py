"""The time per training step, measured on a short dry run of random tensors (imports torch when called)."""

from __future__ import annotations

import time
from collections.abc import Sequence

from .errors import InputError
from .train_commands import device_argument, patch_triple


def estimate_seconds_per_step(
    method: str | None = None,
    patch: Sequence[int] | int | None = None,
    batch: int | None = None,
    width: float | None = None,
    device: str = "auto",
    steps: int = 3,
    options: dict | None = None,
    precision: str | None = None,
) -> dict:
    """Seconds per training step, measured on a short dry run of random tensors.

    The method is built exactly as the training builds it (its networks, all its optimiser stages,
    its losses and its unlabelled batch) and runs one untimed warm-up step then ``steps`` timed
    steps of ``compute_losses`` + backward + optimiser step on random patches of the chosen size.
    Data loading and augmentation (small next to a 3D network's backward) and validation are not
    included, and the first real steps are often a little slower. Reading no data makes the estimate
    take seconds, not minutes, whatever the size of the pool. On CUDA the peak memory is reported
    too, so the panel can suggest a lighter setting before a run fails. A setting left None is
    :class:`~SemiSupSegLib.training.TrainConfig`'s default.
    """
    import torch

    from .methods import Batch, get_method
    from .networks import NetworkConfig
    from .training import TrainConfig, Trainer, resolve_device

    method = method or TrainConfig.method
    patch = patch_triple(TrainConfig.patch_size if patch is None else patch)
    batch = TrainConfig.batch if batch is None else batch
    width = TrainConfig.width if width is None else width
    precision = precision or TrainConfig.precision
    if any(p % 4 for p in patch):
        raise InputError(f"patch size {patch} must be divisible by 4 on every axis")
    if batch < 1 or steps < 1 or width <= 0:
        raise InputError("batch and steps must be at least 1 and width positive")
    dev = resolve_device(device_argument(device))
    try:
        cls = get_method(method)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    generator = torch.Generator().manual_seed(0)
    model = cls(NetworkConfig(width=float(width)), max(steps + 1, 100), **(options or {})).to(dev)
    model.train()
    stages = [(spec, Trainer._optimizer(spec)) for spec in model.optimizers()]
    shape = (batch, 1, *patch)
    images = torch.randn(shape, generator=generator)
    labels = (torch.rand(shape, generator=generator) > 0.9).long()
    unlabeled = torch.randn(shape, generator=generator) if cls.uses_unlabeled else None
    data = Batch(images, labels, unlabeled).to(dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)

    def one_step(step: int) -> None:
        for spec, optimizer in stages:
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                loss = model.compute_losses(spec.stage, data, step)["loss"]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        model.after_iteration(step)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    t0 = time.perf_counter()
    one_step(0)
    warmup = time.perf_counter() - t0
    t0 = time.perf_counter()
    for step in range(1, steps + 1):
        one_step(step)
    per_step = (time.perf_counter() - t0) / steps
    result = {
        "method": method,
        "patch": list(patch),
        "batch": int(batch),
        "width": float(width),
        "device": str(dev),
        "steps_timed": int(steps),
        "seconds_per_step": per_step,
        "warmup_seconds": warmup,
        "parameters": int(sum(p.numel() for p in model.parameters())),
    }
    if dev.type == "cuda":
        result["peak_memory_mb"] = torch.cuda.max_memory_allocated(dev) / 2**20
        result["gpu_memory_mb"] = torch.cuda.get_device_properties(dev).total_memory / 2**20
    return result


def estimate_text(result: dict, steps: int) -> str:
    """The panel's line for an estimate, e.g. ``"0.52 s per step on cpu: about 17:20 for 2000 steps"``.

    Args:
        result: :func:`estimate_seconds_per_step`'s answer (``seconds_per_step``, ``device``, and on
            CUDA ``peak_memory_mb`` and ``gpu_memory_mb``).
        steps: the steps the run would take.

    Returns:
        One line; above 80 % of the GPU's memory it advises a lighter setting.
    """
    from .run_state import format_seconds

    total = result["seconds_per_step"] * steps
    text = (
        f"{result['seconds_per_step']:.2f} s per step on {result['device']}: about "
        f"{format_seconds(total)} for {steps} steps"
    )
    peak, memory = result.get("peak_memory_mb"), result.get("gpu_memory_mb")
    if peak and memory:
        text += f"; GPU memory {peak:.0f} of {memory:.0f} MB"
        if peak > 0.8 * memory:
            text += " - lower the batch or the patch size"
    return text
