"""Inference: segment a volume with a loaded model, coarse-to-fine around a point or by sliding window.

Pipeline (see :func:`segment`):

1. Intensity statistics of the whole input volume (the model's recorded normalisation).
2. With a centre point: a region of ``roi_patches`` x patch size voxels at the model's target spacing
   (no larger than the volume allows, :func:`region_size`), centred on the point and clamped inside the
   volume, is resampled *directly* from the input (the whole volume is never resampled), normalised and
   put through the fully convolutional networks as ONE window, so no patch border, seam or zero padding
   falls inside it (issue 12: the former 2x2x2 non-overlapping patches met exactly at the centre point,
   and a region larger than a small volume was mostly padding). A region too big for the memory budget
   falls back to half-overlapping patches with Gaussian blending. Without a centre point: the whole
   volume is resampled to the target spacing, normalised and segmented with MONAI's
   ``sliding_window_inference``.
3. The softmax probabilities of the model's inference networks are averaged; the foreground probability
   (1 - background) is resampled linearly onto exactly the input's grid (0 outside the region) and
   thresholded into the label. Multi-class models (K > 2, issue 15): every foreground class's probability
   is resampled the same way and the label is the class of largest probability (background
   ``1 - sum_k P(k)``; ``threshold`` does not apply); the probability output stays ``1 - P(background)``.

Optional uncertainty map, by one of :data:`UNCERTAINTY_METHODS` (issue 20; measured side by side by
``benchmarks/uncertainty.py``). Every method runs in the same predictor as the deterministic probability
(one sliding-window / region call returns both), its passes batched and chunked to at most
:data:`UNCERTAINTY_MEMORY_BUDGET_BYTES` of activations per forward:

- ``mc-dropout``: Monte-Carlo dropout as before issue 20 (dropout active, BatchNorm in eval, input noise
  ``clamp(N(0, 0.1^2), -0.2, 0.2)``, T full passes); the predictive entropy ``-sum_c P log(P + 1e-6)`` of
  the mean softmax. Reproducible: the passes draw from torch's generator seeded with ``uncertainty_seed``.
- ``decoder-mc``: the encoder runs once without dropout and its features are reused by T decoder passes
  with dropout (plus the deterministic decoder pass, which gives the probability); entropy of the MC mean.
- ``last-block-mc``: everything up to the last 3^3 convolution block runs once; T passes of that block
  (its dropout) and the 1x1 head; entropy of the MC mean.
- ``flips``: test-time flips (identity, then all three axes, x, y, z, ...; at most 8); entropy of the
  mean softmax over the flipped passes, each flipped back.
- ``entropy``: the entropy of the deterministic mean softmax (for a two-network model: the entropy of the
  networks' mean); no extra pass.
- ``disagreement``: two-network models: total-variation distance ``0.5 sum_c |P_a - P_b|`` between the
  networks' softmax (mean over pairs); no extra pass.

Precision: ``"fp32"``, ``"bf16"`` (autocast) or ``"auto"``: :data:`AUTO_PRECISION` for the device when it
supports bfloat16, else fp32. The convolutions run in ``channels_last_3d`` memory format where
:data:`AUTO_CHANNELS_LAST` says it is faster (measured by ``benchmarks/inference.py``).

Arrays are ``[z, y, x]``; SimpleITK sizes, spacings, indices and points are ``(x, y, z)``; points are LPS mm.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from torch import nn

from .errors import InputError, ModelError
from .imageio import check_contrast, check_point_inside
from .model_store import LoadedModel
from .networks import set_mc_dropout
from .preprocessing import Preprocessing, check_resampled_size

__all__ = [
    "AUTO_CHANNELS_LAST",
    "AUTO_PRECISION",
    "DEFAULT_UNCERTAINTY",
    "MEMORY_BUDGET_BYTES",
    "SegmentationResult",
    "UNCERTAINTY_MEMORY_BUDGET_BYTES",
    "UNCERTAINTY_METHODS",
    "UncertaintyMethod",
    "argmax_label",
    "bf16_supported",
    "entropy",
    "foreground_maps",
    "foreground_probability",
    "mc_entropy",
    "mc_inputs",
    "mc_probabilities",
    "predict_batch",
    "region_size",
    "resolve_precision",
    "roi_grid",
    "roi_start",
    "segment",
    "to_input_grid",
    "uncertainty_method",
    "use_channels_last",
]

PRECISIONS = ("auto", "fp32", "bf16")
# Chosen with benchmarks/inference.py on a 2-core AVX512-BF16 CPU, full-width network, 8 patches of 48^3:
# bf16 autocast + channels_last_3d was the fastest path (forward 4.1 s vs 15.8 s fp32, whole ROI call
# 6.6 s vs 17.1 s; channels_last alone helped fp32 too). Its agreement with fp32 (the 0.5 Dice-point rule)
# was checked on random weights only; re-run the benchmark with --model on a trained model to confirm.
AUTO_PRECISION = {"cpu": "bf16", "cuda": "bf16"}
AUTO_CHANNELS_LAST = {"cpu": True, "cuda": False}
MEMORY_BUDGET_BYTES = 3 * 1024**3
# Activations of one chunk of uncertainty passes: one full-width 96^3 region pass (about 0.9 GB in bf16 by
# _bytes_per_patch) per chunk, so the passes add no more than the plain pass to the peak (issue 20: the
# former single batch of T = 8 passes peaked at 3.9 GB against the 2 GB inference budget).
UNCERTAINTY_MEMORY_BUDGET_BYTES = 1024**3
MC_NOISE_STD = 0.1
MC_NOISE_CLIP = 0.2
ENTROPY_EPS = 1e-6
REGION_BLEND_OVERLAP = 0.5

ProgressCallback = Callable[[str, float], None]


@dataclass
class SegmentationResult:
    """The output of :func:`segment`; every image is on exactly the input's grid."""

    label: sitk.Image
    probability: sitk.Image
    uncertainty: sitk.Image | None
    mode: str
    center: tuple[float, float, float] | None
    seconds: float
    precision: str = "fp32"
    uncertainty_method: str | None = None
    centers: tuple[tuple[float, float, float], ...] = ()


# --------------------------------------------------------------------------- precision and layout


def bf16_supported(device: torch.device | str) -> bool:
    """Whether ``device`` computes bfloat16 natively (CPU: oneDNN with AVX512-BF16/AMX)."""
    device = torch.device(device)
    if device.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if device.type != "cpu":
        return False
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def bf16_native(device: torch.device | str) -> bool:
    """Whether ``device`` has bfloat16 arithmetic in hardware, so that ``"auto"`` may choose it.

    On the CPU oneDNN also runs bf16 on AVX-512 processors without bf16 instructions, emulated and slower
    than fp32 (measured on a Xeon with avx512f/bw/vl only: a width-0.25 training step of 4 patches of 48^3
    took 8.1 s in bf16 against 3.9 s in fp32), so the instructions themselves must be there:
    ``avx512_bf16`` or ``amx_bf16`` among the processor flags (Linux). Without ``/proc/cpuinfo`` (macOS,
    Windows) oneDNN's answer is kept.
    """
    device = torch.device(device)
    if not bf16_supported(device):
        return False
    if device.type != "cpu":
        return True
    flags = _cpu_flags()
    return flags is None or bool({"avx512_bf16", "amx_bf16"} & flags)


@functools.cache  # read once: resolve_precision runs at every segmentation and every training MC pass
def _cpu_flags() -> frozenset[str] | None:
    """The processor's feature flags from ``/proc/cpuinfo``, or None where there is no such file."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    return frozenset(
        flag for line in text.splitlines() if line.startswith("flags") for flag in line.split(":")[-1].split()
    )


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """``"fp32"`` or ``"bf16"`` for a requested precision; ``"auto"`` is bf16 only where the device has it in
    hardware (:func:`bf16_native`), else fp32."""
    if precision not in PRECISIONS:
        raise InputError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    device = torch.device(device)
    if precision != "auto":
        return precision
    chosen = AUTO_PRECISION.get(device.type, "fp32")
    return chosen if chosen == "fp32" or bf16_native(device) else "fp32"


def use_channels_last(device: torch.device | str, channels_last: bool | None = None) -> bool:
    """``channels_last`` if given, else the measured default for the device type."""
    if channels_last is not None:
        return bool(channels_last)
    return AUTO_CHANNELS_LAST.get(torch.device(device).type, False)


def _autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _prepare_networks(
    networks: Sequence[nn.Module], channels_last: bool, in_place: bool = False
) -> list[nn.Module]:
    """The networks as given, or in channels_last_3d layout.

    Borrowed networks (``in_place=False``) are copied, so the caller's modules never change. A loaded
    model's own networks are converted in place once: converting on every call costs as much as the
    convolutions themselves save (oneDNN re-packs fresh weights).
    """
    if not networks:
        raise ModelError("the model has no inference networks")
    if not channels_last:
        return list(networks)
    if in_place:
        return [net.to(memory_format=torch.channels_last_3d) for net in networks]
    return [copy.deepcopy(net).to(memory_format=torch.channels_last_3d) for net in networks]


def fuse_batch_norms(net: nn.Module) -> nn.Module:
    """A copy of ``net`` for inference in eval mode: every BatchNorm that directly follows a convolution in
    an ``nn.Sequential`` (our conv blocks: dropout, conv, BatchNorm, ReLU) is folded into that
    convolution's weights and bias and replaced by an identity.

    Exact in eval mode (BatchNorm then applies a fixed affine map of its running statistics), Monte-Carlo
    dropout included (it acts on the convolution's input); it saves a read and a write of every
    activation. ``benchmarks/fold_batchnorm.py`` (``phantom-catheter``, a 128³ input, one CPU thread):
    1.43 → 1.15 s in bf16 with channels_last_3d (this CPU's default), 0.88-0.97× in the other three
    variants, fp32 logits within 5e-6 (docs/BENCHMARKS.md, "Inference"). Folding with
    :func:`torch.nn.utils.fusion.fuse_conv_bn_eval`; BatchNorms elsewhere (MONAI's VNet blocks put them
    inside a nested norm-dropout-activation block) are kept.

    Args:
        net: a network; it is not changed.

    Returns:
        The folded copy, in eval mode; ``net`` itself when it has nothing to fold.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    if not any(isinstance(m, nn.BatchNorm3d) for m in net.modules()):
        return net
    folded = copy.deepcopy(net).eval()
    for module in folded.modules():
        if not isinstance(module, nn.Sequential):
            continue
        names = list(module._modules)
        for first, second in zip(names, names[1:], strict=False):
            conv, norm = module._modules[first], module._modules[second]
            if isinstance(conv, nn.Conv3d) and isinstance(norm, nn.BatchNorm3d) and norm.track_running_stats:
                module._modules[first] = fuse_conv_bn_eval(conv, norm)
                module._modules[second] = nn.Identity()
    return folded


def _owned_inference_networks(model: LoadedModel, channels_last: bool) -> list[nn.Module]:
    """A loaded model's inference networks with their BatchNorms folded (:func:`fuse_batch_norms`), in the
    layout asked, made once per model and layout; the model's own networks stay as loaded (training
    from it, ``--init``, reads their BatchNorm state)."""
    key = ("folded", bool(channels_last))
    if key not in model.inference_cache:
        folded = [fuse_batch_norms(net) for net in model.inference_networks]
        model.inference_cache[key] = _prepare_networks(folded, channels_last, in_place=True)
    return model.inference_cache[key]


def _borrowed_inference_networks(networks: Sequence[nn.Module], channels_last: bool) -> list[nn.Module]:
    """Folded copies of networks borrowed from a running training (its validation), so that it measures
    exactly what the saved model will compute; a network with nothing to fold is copied only where its
    layout changes (the training's modules are never converted)."""
    prepared = []
    for net in networks:
        folded = fuse_batch_norms(net)
        prepared += _prepare_networks([folded], channels_last, in_place=folded is not net)
    return prepared


@contextlib.contextmanager
def _inference_state(networks: Sequence[nn.Module], mc_dropout: bool) -> Iterator[None]:
    """Eval mode (dropout active for Monte-Carlo passes); every module's train flag is restored after."""
    saved = [(m, m.training) for net in networks for m in net.modules()]
    try:
        for net in networks:
            net.eval()
            set_mc_dropout(net, mc_dropout)
        yield
    finally:
        for module, training in saved:
            module.training = training


# --------------------------------------------------------------------------- batched prediction


def _bytes_per_patch(networks: Sequence[nn.Module], voxels: int, precision: str) -> int:
    """Rough peak activation memory of one patch in one forward (about 8 full-resolution 64-channel maps)."""
    channels = max(int(getattr(net, "feature_channels", {}).get("enc1", 64)) for net in networks)
    itemsize = 2 if precision == "bf16" else 4
    return voxels * channels * 8 * itemsize + voxels * 16


def _chunk_size(networks: Sequence[nn.Module], batch: torch.Tensor, precision: str, budget: int) -> int:
    per_patch = _bytes_per_patch(networks, int(np.prod(batch.shape[2:])), precision)
    return max(1, int(budget // per_patch))


def _forward_softmax(net: nn.Module, x: torch.Tensor, precision: str) -> torch.Tensor:
    """Softmax probabilities (float32) of one network; a torch failure becomes a :class:`ModelError`."""
    try:
        with _autocast(precision, x.device):
            logits = net(x)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(
            f"network {type(net).__name__} failed on a batch of shape {tuple(x.shape)}: {first[:300]}"
        ) from None
    if logits.dim() != x.dim() or logits.shape[2:] != x.shape[2:] or logits.shape[1] < 2:
        raise ModelError(
            f"network {type(net).__name__} returned shape {tuple(logits.shape)} for input {tuple(x.shape)}; "
            "expected [B, K>=2, Z, Y, X] logits of the input's spatial size"
        )
    return torch.softmax(logits.float(), dim=1)


def _mean_probabilities(
    networks: Sequence[nn.Module],
    batch: torch.Tensor,
    precision: str,
    chunk: int,
    groups: int = 1,
    channels_last: bool = False,
) -> torch.Tensor:
    """Mean softmax over networks and over ``groups`` consecutive copies of ``n = len(batch) // groups``."""
    n = batch.shape[0] // groups
    total: torch.Tensor | None = None
    layout = torch.channels_last_3d if channels_last else torch.contiguous_format
    for net in networks:
        for start in range(0, batch.shape[0], chunk):
            x = batch[start : start + chunk].contiguous(memory_format=layout)
            probs = _forward_softmax(net, x, precision)
            if total is None:
                total = torch.zeros((n, *probs.shape[1:]), dtype=torch.float32, device=batch.device)
            rows = torch.arange(start, start + x.shape[0], device=batch.device) % n
            total.index_add_(0, rows, probs)
    assert total is not None
    return (total / (len(networks) * groups)).contiguous()


def _check_batch(batch: torch.Tensor) -> None:
    if not isinstance(batch, torch.Tensor) or batch.dim() != 5:
        shape = tuple(batch.shape) if isinstance(batch, torch.Tensor) else type(batch).__name__
        raise InputError(f"expected a [B, C, Z, Y, X] tensor, got {shape}")


def predict_batch(
    networks: Sequence[nn.Module],
    batch: torch.Tensor,
    precision: str = "fp32",
    *,
    channels_last: bool | None = None,
    memory_budget: int = MEMORY_BUDGET_BYTES,
) -> torch.Tensor:
    """Mean softmax probabilities ``[B, K, Z, Y, X]`` (float32) of ``networks`` on ``batch``.

    One batched forward per network under ``torch.inference_mode()`` (split into chunks only if the batch
    would exceed ``memory_budget`` bytes); the networks are run in eval mode and left as they were.
    """
    _check_batch(batch)
    precision = resolve_precision(precision, batch.device)
    channels_last = use_channels_last(batch.device, channels_last)
    nets = _prepare_networks(networks, channels_last)
    chunk = _chunk_size(nets, batch, precision, memory_budget)
    with torch.inference_mode(), _inference_state(nets, mc_dropout=False):
        return _mean_probabilities(nets, batch, precision, chunk, channels_last=channels_last)


def mc_inputs(batch: torch.Tensor, samples: int, generator: torch.Generator | None) -> torch.Tensor:
    """The batch repeated ``samples`` times with input noise clamp(N(0, 0.1^2), -0.2, 0.2) (MC passes)."""
    repeated = batch.repeat(samples, *([1] * (batch.dim() - 1)))
    noise = torch.randn(repeated.shape, generator=generator, device=batch.device, dtype=batch.dtype)
    return repeated + (noise * MC_NOISE_STD).clamp_(-MC_NOISE_CLIP, MC_NOISE_CLIP)


def mc_probabilities(
    networks: Sequence[nn.Module],
    batch: torch.Tensor,
    samples: int,
    generator: torch.Generator | None = None,
    *,
    precision: str = "fp32",
    channels_last: bool | None = None,
    memory_budget: int = MEMORY_BUDGET_BYTES,
) -> torch.Tensor:
    """Mean Monte-Carlo softmax ``[B, K, ...]`` over ``samples`` noisy dropout passes and all networks.

    The batch is repeated ``samples`` times and run as one forward per network (chunked only above
    ``memory_budget``) under ``torch.no_grad()``, with dropout active and BatchNorm in eval mode. The input
    noise is drawn from ``generator``; dropout masks come from torch's global generator.
    """
    _check_batch(batch)
    if int(samples) < 1:
        raise InputError(f"Monte-Carlo samples must be >= 1, got {samples}")
    precision = resolve_precision(precision, batch.device)
    channels_last = use_channels_last(batch.device, channels_last)
    nets = _prepare_networks(networks, channels_last)
    return _mc_mean(nets, batch, int(samples), generator, precision, memory_budget, channels_last)


def _mc_mean(
    nets: Sequence[nn.Module],
    batch: torch.Tensor,
    samples: int,
    generator: torch.Generator | None,
    precision: str,
    memory_budget: int,
    channels_last: bool = False,
) -> torch.Tensor:
    """Mean softmax of ``samples`` noisy Monte-Carlo dropout passes of prepared networks."""
    inputs = mc_inputs(batch, samples, generator)
    chunk = _chunk_size(nets, batch, precision, memory_budget)
    with torch.no_grad(), _inference_state(nets, mc_dropout=True):
        return _mean_probabilities(nets, inputs, precision, chunk, samples, channels_last)


def entropy(probabilities: torch.Tensor) -> torch.Tensor:
    """Predictive entropy ``-sum_c P log(P + 1e-6)`` over dim 1, in ``[0, ln K]``."""
    p = probabilities.float()
    return (-(p * torch.log(p + ENTROPY_EPS)).sum(dim=1)).clamp_(min=0.0)


def mc_entropy(
    networks: Sequence[nn.Module],
    batch: torch.Tensor,
    samples: int,
    generator: torch.Generator | None = None,
    **kwargs,
) -> torch.Tensor:
    """Predictive entropy ``[B, Z, Y, X]`` of :func:`mc_probabilities` (same keyword options)."""
    return entropy(mc_probabilities(networks, batch, samples, generator, **kwargs))


def foreground_maps(probabilities: torch.Tensor) -> torch.Tensor:
    """What is carried to the input grid: ``P(1)`` ``[B, ...]`` for two classes, else ``P(1..K-1)``
    ``[B, K-1, ...]`` (the label of a multi-class model is their argmax against the background)."""
    if probabilities.shape[1] == 2:
        return probabilities[:, 1]
    return probabilities[:, 1:]


def foreground_probability(probabilities: torch.Tensor) -> torch.Tensor:
    """Foreground probability ``1 - P(background)`` over dim 1 (``P(1)`` for two classes)."""
    if probabilities.shape[1] == 2:
        return probabilities[:, 1]
    return (1.0 - probabilities[:, 0]).clamp_(0.0, 1.0)


# --------------------------------------------------------------------------- uncertainty estimators


def _tile(x: torch.Tensor, repeats: int, layout: torch.memory_format) -> torch.Tensor:
    """``x`` repeated ``repeats`` times along the batch axis (pass-major), in ``layout``."""
    tiled = x.repeat(repeats, *([1] * (x.dim() - 1))) if repeats > 1 else x
    return tiled.contiguous(memory_format=layout)


def _passes_per_chunk(ctx: _Context, batch: torch.Tensor) -> int:
    """How many uncertainty passes of ``batch`` fit one forward within the uncertainty memory budget."""
    per_pass = batch.shape[0] * _bytes_per_patch(ctx.nets, int(np.prod(batch.shape[2:])), ctx.precision)
    return max(1, int(ctx.uncertainty_budget // per_pass))


def _pass_chunks(passes: int, per_chunk: int) -> Iterator[range]:
    """Consecutive ranges of pass indices, ``per_chunk`` passes each (the last one shorter)."""
    for first in range(0, passes, per_chunk):
        yield range(first, min(passes, first + per_chunk))


def _sum_over_passes(probs: torch.Tensor, count: int) -> torch.Tensor:
    """Sum of ``[count * B, K, ...]`` pass-major probabilities over the passes: ``[B, K, ...]``."""
    return probs.reshape(count, probs.shape[0] // count, *probs.shape[1:]).sum(dim=0)


def _network_probabilities(ctx: _Context, batch: torch.Tensor) -> list[torch.Tensor]:
    """Deterministic softmax of each inference network (eval state is the caller's)."""
    return [
        _mean_probabilities([net], batch, ctx.precision, ctx.chunk, 1, ctx.channels_last) for net in ctx.nets
    ]


def _plain_entropy(ctx: _Context, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``entropy``: the deterministic mean softmax, twice (its entropy is taken after blending)."""
    plain = ctx.probabilities(batch)
    return plain, plain


def _disagreement(ctx: _Context, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``disagreement``: mean softmax and ``[B, 1, ...]`` total-variation distance, mean over pairs."""
    probs = _network_probabilities(ctx, batch)
    pairs = [(a, b) for i, a in enumerate(probs) for b in probs[i + 1 :]]
    distance = sum(0.5 * (a - b).abs().sum(dim=1, keepdim=True) for a, b in pairs) / len(pairs)
    return torch.stack(probs).mean(dim=0), distance


def _mc_dropout(ctx: _Context, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``mc-dropout``: deterministic mean softmax and the mean of T noisy full dropout passes."""
    plain = ctx.probabilities(batch)
    mc = _mc_mean(ctx.nets, batch, ctx.passes, None, ctx.precision, ctx.uncertainty_budget, ctx.channels_last)
    return plain, mc


FLIPS: tuple[tuple[int, ...], ...] = ((), (2, 3, 4), (4,), (3,), (2,), (3, 4), (2, 4), (2, 3))
"""Axes of a ``[B, C, Z, Y, X]`` tensor flipped in test-time-flip pass t (pass 0 is the identity)."""


def _flips(ctx: _Context, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``flips``: deterministic mean softmax and the mean over the first T :data:`FLIPS`, flipped back.

    Pass 0 (the identity) is the deterministic pass itself; the others run batched, chunked by passes.
    """
    plain = ctx.probabilities(batch)
    total = plain.clone()
    for passes in _pass_chunks(ctx.passes - 1, _passes_per_chunk(ctx, batch)):
        axes = [FLIPS[1 + t] for t in passes]
        flipped = torch.cat([batch.flip(dims) for dims in axes])
        probs = _mean_probabilities(ctx.nets, flipped, ctx.precision, len(flipped), 1, ctx.channels_last)
        for i, dims in enumerate(axes):
            total += probs[i * batch.shape[0] : (i + 1) * batch.shape[0]].flip(dims)
    return plain, total / ctx.passes


def _check_compact_unet(net: nn.Module, method: str) -> None:
    parts = ("enc1", "enc2", "enc3", "pool", "up2", "dec2", "up1", "dec1", "head")
    if not all(hasattr(net, part) for part in parts):
        raise ModelError(
            f"uncertainty method {method!r} needs Compact-UNet networks (enc1 ... head); "
            f"{type(net).__name__} has no such parts: use --uncertainty-method mc-dropout"
        )


def _decoder_input(net: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The encoder (seed 000, Table I) up to the first decoder block's input: ``(cat(up2(e3), e2), e1)``."""
    e1 = net.enc1(x)
    e2 = net.enc2(net.pool(e1))
    e3 = net.enc3(net.pool(e2))
    return torch.cat([net.up2(e3), e2], dim=1), e1


def _output(net: nn.Module, d1: torch.Tensor) -> torch.Tensor:
    """Logits from the last decoder feature: the head block (CoraNet's main head), if any, and the 1x1."""
    head_block = getattr(net, "head_block", None)
    return net.head(head_block(d1) if head_block is not None else d1)


def _decoder_output(net: nn.Module, state: tuple, repeats: int, layout) -> torch.Tensor:
    """Logits of ``repeats`` decoder passes (pass-major) from :func:`_decoder_input`'s state."""
    u2, e1 = state
    d2 = net.dec2(_tile(u2, repeats, layout))
    return _output(net, net.dec1(torch.cat([net.up1(d2), _tile(e1, repeats, layout)], dim=1)))


def _has_head_block(net: nn.Module) -> bool:
    return isinstance(getattr(net, "head_block", None), nn.Sequential)


def _last_block_input(net: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Everything before the last 3^3 block, whose dropout comes first: the input of the head block where
    the network has one, else of ``dec1[1]``."""
    u2, e1 = _decoder_input(net, x)
    d2 = net.dec2(u2)
    decoded = torch.cat([net.up1(d2), e1], dim=1)
    return (net.dec1(decoded),) if _has_head_block(net) else (net.dec1[0](decoded),)


def _last_block_output(net: nn.Module, state: tuple, repeats: int, layout) -> torch.Tensor:
    """Logits of ``repeats`` passes of the last 3^3 block and the 1x1 head."""
    tiled = _tile(state[0], repeats, layout)
    return _output(net, tiled) if _has_head_block(net) else _output(net, net.dec1[1](tiled))


def _split_mc(ctx: _Context, batch: torch.Tensor, stem: Callable, tail: Callable, method: str):
    """Deterministic mean softmax and the mean of T dropout passes of the network's tail only.

    The stem runs once per network without dropout; its output feeds the deterministic tail pass (the
    probability, identical to the plain forward) and T tail passes with dropout, chunked by passes. No input
    noise: the stem, where the noise would act, is shared by the passes.
    """
    layout = torch.channels_last_3d if ctx.channels_last else torch.contiguous_format
    per_chunk = _passes_per_chunk(ctx, batch)
    plain, mc = 0.0, 0.0
    for net in ctx.nets:
        _check_compact_unet(net, method)
        with _autocast(ctx.precision, batch.device):
            with _inference_state([net], mc_dropout=False):
                state = stem(net, batch.contiguous(memory_format=layout))
                plain = plain + torch.softmax(tail(net, state, 1, layout).float(), dim=1)
            with _inference_state([net], mc_dropout=True):
                for passes in _pass_chunks(ctx.passes, per_chunk):
                    logits = tail(net, state, len(passes), layout)
                    mc = mc + _sum_over_passes(torch.softmax(logits.float(), dim=1), len(passes))
    return plain / len(ctx.nets), mc / (len(ctx.nets) * ctx.passes)


def _decoder_mc(ctx: _Context, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``decoder-mc``: the encoder once, T decoder passes with dropout (:func:`_split_mc`)."""
    return _split_mc(ctx, batch, _decoder_input, _decoder_output, "decoder-mc")


def _last_block_mc(ctx: _Context, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``last-block-mc``: all but the last 3^3 block once, T passes of that block (:func:`_split_mc`)."""
    return _split_mc(ctx, batch, _last_block_input, _last_block_output, "last-block-mc")


def _first_channel(extra: torch.Tensor) -> torch.Tensor:
    return extra[:, 0].float()


@dataclass(frozen=True)
class UncertaintyMethod:
    """One uncertainty estimator: how to predict, and how the blended prediction becomes the map.

    ``predict(ctx, batch)`` returns the deterministic mean softmax ``[B, K, ...]`` and the method's
    extra channels; ``to_map(extra)`` (after blending) gives the ``[B, Z, Y, X]`` uncertainty.
    """

    name: str
    passes: int
    min_networks: int
    predict: Callable
    to_map: Callable = entropy
    max_passes: int | None = None
    summary: str = ""


UNCERTAINTY_METHODS: dict[str, UncertaintyMethod] = {
    m.name: m
    for m in (
        UncertaintyMethod("mc-dropout", 8, 1, _mc_dropout, summary="T full MC-dropout passes, input noise"),
        UncertaintyMethod("decoder-mc", 8, 1, _decoder_mc, summary="encoder once, T decoder dropout passes"),
        UncertaintyMethod(
            "last-block-mc", 8, 1, _last_block_mc, summary="all but the last block once, T passes of it"
        ),
        UncertaintyMethod("flips", 2, 1, _flips, max_passes=len(FLIPS), summary="T test-time flips"),
        UncertaintyMethod("entropy", 0, 1, _plain_entropy, summary="entropy of the plain prediction"),
        UncertaintyMethod(
            "disagreement", 0, 2, _disagreement, _first_channel, summary="the networks' disagreement"
        ),
    )
}
DEFAULT_UNCERTAINTY = "flips"
"""Chosen with benchmarks/uncertainty.py (docs/BENCHMARKS.md, issue 20), with its default of T = 2 passes
(the plain prediction and one mirrored along every axis). Three runs: 8 phantom catheters of 4 profiles
with two catheter models, and the 10 held-out LA2018 cases with a VNet. T = 2 was the only estimator with
passes that stayed within the issue's 2.5x the plain time in all three (1.26x, 1.80x, 2.42x; T = 4 flips
2.16x-3.83x, T = 8 MC dropout 6.7x-24x), at most 1.23 GiB peak (a full-width network), and it detects
the voxel errors as well as T = 8 MC dropout: error AUROC per case 0.948 / 0.981 / 0.863 against
0.951 / 0.981 / 0.846."""


def uncertainty_method(name: str | None, networks: int = 1) -> UncertaintyMethod:
    """The estimator called ``name`` (``None``: :data:`DEFAULT_UNCERTAINTY`) for a model of ``networks``.

    Args:
        name: a key of :data:`UNCERTAINTY_METHODS`, or None.
        networks: the model's number of inference networks.

    Returns:
        The method; raises :class:`InputError` for an unknown name or too few networks.
    """
    name = DEFAULT_UNCERTAINTY if name is None else name
    if name not in UNCERTAINTY_METHODS:
        raise InputError(f"uncertainty method {name!r} is not one of {', '.join(UNCERTAINTY_METHODS)}")
    method = UNCERTAINTY_METHODS[name]
    if networks < method.min_networks:
        raise InputError(
            f"uncertainty method {name!r} needs a model with at least {method.min_networks} inference "
            f"networks; this model has {networks}"
        )
    return method


# --------------------------------------------------------------------------- geometry


def _target_size(image: sitk.Image, spacing: Sequence[float]) -> np.ndarray:
    """Size of ``image`` resampled to ``spacing`` (the grid of :func:`resample_to_spacing`)."""
    if np.allclose(image.GetSpacing(), spacing, rtol=1e-4):
        return np.asarray(image.GetSize(), dtype=int)
    return np.asarray(check_resampled_size(image, spacing), dtype=int)


def roi_start(
    image: sitk.Image, center: Sequence[float], spacing: Sequence[float], size: Sequence[int]
) -> np.ndarray:
    """First voxel ``(x, y, z)`` of the ROI in the grid of ``image`` resampled to ``spacing``.

    The ROI is centred on ``center`` (to the nearest voxel of that grid) and clamped inside it; along an
    axis where the resampled volume is shorter than the ROI, the ROI is centred on the volume (a negative
    start: the region is padded). Raises :class:`InputError` if the point is outside the volume.
    """
    index = check_point_inside(image, center, what="centre point")
    spacing = np.asarray(spacing, dtype=float)
    size = np.asarray(size, dtype=int)
    n_target = _target_size(image, spacing)
    target_index = index * np.asarray(image.GetSpacing()) / spacing
    start = np.round(target_index - (size - 1) / 2.0).astype(int)
    start = np.clip(start, 0, np.maximum(n_target - size, 0))
    return np.where(n_target < size, (n_target - size) // 2, start)


def roi_grid(
    image: sitk.Image, center: Sequence[float], spacing: Sequence[float], size: Sequence[int]
) -> sitk.Image:
    """Reference grid (an empty uint8 image) of the ROI: ``size`` voxels ``(x, y, z)`` at ``spacing`` mm.

    It has the input's direction, lies on the grid of the input resampled to ``spacing`` (so both modes
    see the same samples) and is placed by :func:`roi_start`.
    """
    spacing = tuple(float(s) for s in spacing)
    size = tuple(int(s) for s in size)
    start = roi_start(image, center, spacing, size)
    input_index = start * np.asarray(spacing) / np.asarray(image.GetSpacing())
    grid = sitk.Image(size, sitk.sitkUInt8)
    grid.SetSpacing(spacing)
    grid.SetDirection(image.GetDirection())
    grid.SetOrigin(image.TransformContinuousIndexToPhysicalPoint(tuple(float(i) for i in input_index)))
    return grid


def _resample_onto(image: sitk.Image, reference: sitk.Image, default: float) -> np.ndarray:
    """``image`` resampled linearly onto ``reference`` as a float32 ``[z, y, x]`` array."""
    out = sitk.Resample(image, reference, sitk.Transform(), sitk.sitkLinear, float(default), sitk.sitkFloat32)
    return sitk.GetArrayFromImage(out)


def _input_maps(
    foreground: np.ndarray, grid: sitk.Image, image: sitk.Image
) -> tuple[sitk.Image, list[sitk.Image] | None]:
    """The foreground probability on the input grid, and each foreground class's (K > 2; else None).

    Args:
        foreground: :func:`foreground_maps` of one region, ``[Z, Y, X]`` or ``[K-1, Z, Y, X]``.
        grid: the region's grid.
        image: the input volume.

    Returns:
        ``1 - P(background)`` and, for a multi-class model, ``P(k)`` for k = 1..K-1, all on ``image``'s grid.
    """
    if foreground.ndim == 3:
        return to_input_grid(foreground, grid, image), None
    probability = to_input_grid(np.clip(foreground.sum(axis=0), 0.0, 1.0), grid, image)
    return probability, [to_input_grid(p, grid, image) for p in foreground]


def argmax_label(classes: Sequence[sitk.Image]) -> sitk.Image:
    """The class of largest probability (uint8, 0..K-1) from the foreground classes' maps ``P(1..K-1)``;
    the background's is ``1 - sum_k P(k)`` (1 outside every region). Ties go to the lower class.

    Args:
        classes: ``P(k)`` for k = 1..K-1 on one grid.

    Returns:
        The label on that grid.
    """
    stacked = np.stack([sitk.GetArrayViewFromImage(p) for p in classes])
    background = 1.0 - stacked.sum(axis=0)
    label = np.argmax(np.concatenate([background[None], stacked]), axis=0).astype(np.uint8)
    out = sitk.GetImageFromArray(label)
    out.CopyInformation(classes[0])
    return out


def to_input_grid(array_zyx: np.ndarray, grid: sitk.Image, image: sitk.Image) -> sitk.Image:
    """A float32 map on ``grid`` (size, spacing, origin, direction) resampled linearly onto exactly the
    grid of ``image``; 0 outside ``grid``."""
    source = sitk.GetImageFromArray(np.ascontiguousarray(array_zyx, dtype=np.float32))
    source.SetSpacing(grid.GetSpacing())
    source.SetOrigin(grid.GetOrigin())
    source.SetDirection(grid.GetDirection())
    out = sitk.Resample(source, image, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    out.CopyInformation(image)
    return out


# --------------------------------------------------------------------------- validation


def _check_image(image: sitk.Image) -> None:
    if not isinstance(image, sitk.Image):
        raise InputError(f"expected a SimpleITK image, got {type(image).__name__}")
    if image.GetDimension() != 3:
        raise InputError(f"image is {image.GetDimension()}D (size {tuple(image.GetSize())}); expected 3D")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(
            f"image has {image.GetNumberOfComponentsPerPixel()} components per voxel; "
            "expected a scalar volume"
        )
    if min(image.GetSize()) < 2:
        raise InputError(f"image of size {tuple(image.GetSize())} is really 2D; expected a 3D volume")
    array = sitk.GetArrayViewFromImage(image)
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        raise InputError("image has NaN or infinite voxels; fix or mask them before segmenting")
    check_contrast(image, "segment")


def _check_patch_size(model: LoadedModel) -> tuple[int, int, int]:
    try:
        patch = tuple(int(p) for p in model.patch_size)
    except (TypeError, ValueError):
        raise ModelError(f"model patch size {model.meta.get('patch_size')!r} is not 3 integers") from None
    if len(patch) != 3 or any(p < 4 or p % 4 for p in patch):
        raise ModelError(
            f"model patch size {patch} is invalid: expected 3 sizes divisible by 4 (the network pools twice)"
        )
    return patch  # type: ignore[return-value]


def _check_options(mc_samples: int, threshold: float, roi_patches: int, overlap: float) -> None:
    if int(mc_samples) < 0:
        raise InputError(f"mc_samples must be >= 0, got {mc_samples}")
    if not 0.0 <= float(threshold) <= 1.0:
        raise InputError(f"threshold must be in [0, 1], got {threshold}")
    if int(roi_patches) < 1:
        raise InputError(f"roi_patches must be >= 1, got {roi_patches}")
    if not 0.0 <= float(overlap) < 1.0:
        raise InputError(f"overlap must be in [0, 1), got {overlap}")


# --------------------------------------------------------------------------- segmentation


@dataclass
class _Context:
    """What both modes need: prepared networks, precision, normalisation and spacing."""

    nets: list[nn.Module]
    device: torch.device
    precision: str
    preprocessing: Preprocessing
    statistics: tuple[float, float, float, float]
    spacing: tuple[float, float, float]
    patch: tuple[int, int, int]
    passes: int
    chunk: int
    channels_last: bool
    uncertainty: UncertaintyMethod | None = None
    uncertainty_seed: int = 0
    uncertainty_budget: int = UNCERTAINTY_MEMORY_BUDGET_BYTES

    def probabilities(self, batch: torch.Tensor) -> torch.Tensor:
        """Deterministic mean softmax of the networks (call under ``inference_mode`` and eval state)."""
        return _mean_probabilities(self.nets, batch, self.precision, self.chunk, 1, self.channels_last)

    def predict(self, batch: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """The deterministic mean softmax, and the uncertainty method's extra channels when one is set."""
        if self.uncertainty is None:
            return self.probabilities(batch)
        return self.uncertainty.predict(self, batch)

    def outputs(self, predicted) -> tuple[np.ndarray, np.ndarray | None]:
        """:func:`foreground_maps` (``[Z, Y, X]``, or ``[K-1, Z, Y, X]`` for K > 2) and the uncertainty map
        ``[Z, Y, X]`` of one blended :meth:`predict`."""
        if self.uncertainty is None:
            return foreground_maps(predicted)[0].cpu().numpy(), None
        probs, extra = predicted
        uncertainty = self.uncertainty.to_map(extra)[0].cpu().numpy()
        return foreground_maps(probs)[0].cpu().numpy(), uncertainty

    @contextlib.contextmanager
    def seeded(self) -> Iterator[None]:
        """Torch's generators seeded with ``uncertainty_seed`` for the passes, restored after."""
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.uncertainty_seed)
            yield

    @property
    def background(self) -> float:
        """Raw intensity used outside the volume: the lower clip bound (normalised minimum)."""
        return self.statistics[0]

    def tensor(self, array_zyx: np.ndarray) -> torch.Tensor:
        normalized = self.preprocessing.normalize(array_zyx, self.statistics, self.spacing[::-1])
        return torch.from_numpy(normalized).to(self.device)


def _window_fits(ctx: _Context, shape_zyx: Sequence[int]) -> bool:
    """Whether one forward of a window of ``shape_zyx`` voxels stays within the memory budget."""
    return _bytes_per_patch(ctx.nets, int(np.prod(shape_zyx)), ctx.precision) <= MEMORY_BUDGET_BYTES


def _region_probabilities(ctx: _Context, region: torch.Tensor, predictor: Callable) -> torch.Tensor:
    """Mean softmax ``[1, K, Z, Y, X]`` of a ``[1, 1, Z, Y, X]`` region, without seams.

    The networks are fully convolutional, so the whole region goes through them as ONE window: every
    voxel sees its full context and no patch border (or its zero padding) falls inside the region.
    A region too big for the memory budget is covered by patch-sized windows overlapping by half,
    blended with MONAI's Gaussian weights (sigma = patch / 8), so no seam falls on the centre either.
    """
    if _window_fits(ctx, region.shape[2:]):
        return predictor(region)
    from monai.inferers import sliding_window_inference

    return sliding_window_inference(
        region,
        roi_size=ctx.patch,
        sw_batch_size=max(1, min(ctx.chunk, 8)),
        predictor=predictor,
        overlap=REGION_BLEND_OVERLAP,
        mode="gaussian",
    )


def region_size(
    image: sitk.Image, spacing: Sequence[float], patch_zyx: Sequence[int], roi_patches: int
) -> tuple[int, int, int]:
    """Size ``(x, y, z)`` of the coarse-to-fine region: ``roi_patches`` x patch along each axis, but no
    larger than the volume resampled to ``spacing`` allows (rounded down to a multiple of 4, as the
    networks pool twice), and never smaller than one patch (a volume shorter than a patch is padded).

    Args:
        image: the input volume.
        spacing: the model's target spacing (x, y, z) mm.
        patch_zyx: the model's patch size (z, y, x).
        roi_patches: patches per axis wanted.

    Returns:
        The region size in voxels, (x, y, z).
    """
    patch_xyz = np.asarray(patch_zyx, dtype=int)[::-1]
    fitted = (np.minimum(roi_patches * patch_xyz, _target_size(image, spacing)) // 4) * 4
    return tuple(int(n) for n in np.maximum(fitted, patch_xyz))  # type: ignore[return-value]


def _segment_roi(
    ctx: _Context, image: sitk.Image, center: Sequence[float], roi_patches: int, progress: ProgressCallback
) -> tuple[np.ndarray, np.ndarray | None, sitk.Image]:
    grid = roi_grid(image, center, ctx.spacing, region_size(image, ctx.spacing, ctx.patch, roi_patches))
    region = ctx.tensor(_resample_onto(image, grid, ctx.background))[None, None]
    progress("predict", 0.2)
    with torch.inference_mode(), _inference_state(ctx.nets, mc_dropout=False), ctx.seeded():
        predicted = _region_probabilities(ctx, region, ctx.predict)
    return (*ctx.outputs(predicted), grid)


def _sliding_window(ctx: _Context, volume: torch.Tensor, predictor: Callable, overlap: float) -> torch.Tensor:
    from monai.inferers import sliding_window_inference

    background = (0.0 - ctx.statistics[2]) / (ctx.statistics[3] if ctx.statistics[3] > 1e-8 else 1.0)
    return sliding_window_inference(
        volume[None, None],
        roi_size=ctx.patch,
        sw_batch_size=max(1, min(ctx.chunk, 8)),
        predictor=predictor,
        overlap=overlap,
        padding_mode="constant",
        cval=float(background),
    )


def _segment_whole(
    ctx: _Context, image: sitk.Image, overlap: float, progress: ProgressCallback
) -> tuple[np.ndarray, np.ndarray | None, sitk.Image]:
    grid = ctx.preprocessing.resample(image)
    volume = ctx.tensor(sitk.GetArrayViewFromImage(grid))
    progress("predict", 0.2)
    with torch.inference_mode(), _inference_state(ctx.nets, mc_dropout=False), ctx.seeded():
        predicted = _sliding_window(ctx, volume, ctx.predict, overlap)
    return (*ctx.outputs(predicted), grid)


def _size_divisor(nets: Sequence[nn.Module]) -> int:
    """What every input side must be a multiple of for all ``nets`` (their pooling depth)."""
    return max(int(getattr(net, "size_divisor", 4)) for net in nets)


def volume_probability(
    model: LoadedModel, image: sitk.Image, *, precision: str = "auto", channels_last: bool | None = None
) -> tuple[np.ndarray, sitk.Image]:
    """Foreground probability of the whole volume at the model's spacing, without seams.

    Like the coarse-to-fine region, the whole resampled volume goes through the networks as ONE window
    when it fits the memory budget (padded with the background intensity to the networks' size
    divisor), else as Gaussian-blended windows (:func:`_region_probabilities`). Measured on 24 phantoms
    of 128³-160³ (one thread): 2-7 s per volume, where the sliding window of :func:`segment` without a
    centre took 38-146 s on the same machine under load. Used by the segmentation locator.

    Args:
        model: a loaded segmentation model.
        image: the volume (checked like :func:`segment` does).
        precision: "fp32", "bf16" or "auto".
        channels_last: convolution layout (None: the device's measured default).

    Returns:
        ``[Z, Y, X]`` float32 foreground probability (``1 - P(background)``) on the model's grid, and
        that grid (the volume resampled to the model's spacing, same origin and direction).
    """
    _check_image(image)
    ctx = _make_context(model, image, precision, 0, channels_last)
    grid = ctx.preprocessing.resample(image)
    array = sitk.GetArrayViewFromImage(grid)
    divisor = _size_divisor(ctx.nets)
    padded_shape = [-(-n // divisor) * divisor for n in array.shape]
    padded = np.full(padded_shape, ctx.background, dtype=np.float32)
    padded[: array.shape[0], : array.shape[1], : array.shape[2]] = array
    with torch.inference_mode(), _inference_state(ctx.nets, mc_dropout=False):
        probabilities = _region_probabilities(ctx, ctx.tensor(padded)[None, None], ctx.probabilities)
    foreground = foreground_probability(probabilities)[0].float().cpu().numpy()
    return foreground[: array.shape[0], : array.shape[1], : array.shape[2]], grid


def predict_uncertainty(
    networks: Sequence[nn.Module],
    batch: torch.Tensor,
    method: str | None = None,
    passes: int = 0,
    *,
    seed: int = 0,
    precision: str = "fp32",
    channels_last: bool | None = None,
    memory_budget: int = UNCERTAINTY_MEMORY_BUDGET_BYTES,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic mean softmax and uncertainty map of ``method`` on ``batch``, as :func:`segment` does.

    Args:
        networks: the inference networks (left in the state they were in).
        batch: ``[B, C, Z, Y, X]`` normalised input.
        method: a key of :data:`UNCERTAINTY_METHODS` (None: :data:`DEFAULT_UNCERTAINTY`).
        passes: the method's passes (0: its default).
        seed: seeds torch's generators for the passes (restored after).
        precision: "fp32", "bf16" or "auto".
        channels_last: convolution layout (None: the device's measured default).
        memory_budget: activation bytes of one chunk of passes.

    Returns:
        ``[B, K, Z, Y, X]`` float32 probabilities and the ``[B, Z, Y, X]`` uncertainty.
    """
    _check_batch(batch)
    chosen = uncertainty_method(method, len(networks))
    precision = resolve_precision(precision, batch.device)
    channels_last = use_channels_last(batch.device, channels_last)
    nets = _prepare_networks(networks, channels_last)
    ctx = _Context(
        nets, batch.device, precision, Preprocessing(), (0.0, 1.0, 0.0, 1.0), (1.0, 1.0, 1.0),
        tuple(batch.shape[2:]), _passes(chosen, int(passes)),
        _chunk_size(nets, batch[:1], precision, MEMORY_BUDGET_BYTES), channels_last, chosen, int(seed),
        int(memory_budget),
    )  # fmt: skip
    with torch.inference_mode(), _inference_state(nets, mc_dropout=False), ctx.seeded():
        probs, extra = ctx.predict(batch)
    return probs, chosen.to_map(extra)


def _make_context(
    model: LoadedModel,
    image: sitk.Image,
    precision: str,
    mc_samples: int,
    channels_last: bool | None,
    uncertainty: UncertaintyMethod | None = None,
    uncertainty_seed: int = 0,
) -> _Context:
    """What both modes need; ``mc_samples`` (0: the method's default) is the uncertainty's passes."""
    patch = _check_patch_size(model)
    device = torch.device(model.device)
    precision = resolve_precision(precision, device)
    preprocessing = model.preprocessing
    spacing = preprocessing.target_spacing or tuple(image.GetSpacing())
    try:
        statistics = preprocessing.intensity_statistics(sitk.GetArrayViewFromImage(image))
    except ValueError as exc:
        raise ModelError(f"model preprocessing cannot be applied: {exc}") from None
    channels_last = use_channels_last(device, channels_last)
    if model.owns_networks:
        nets = _owned_inference_networks(model, channels_last)
    else:  # borrowed from a running training: its weights change between calls, so folded afresh
        nets = _borrowed_inference_networks(model.inference_networks, channels_last)
    probe = torch.empty((1, 1, *patch))
    chunk = _chunk_size(nets, probe, precision, MEMORY_BUDGET_BYTES)
    spacing = tuple(float(s) for s in spacing)
    return _Context(
        nets,
        device,
        precision,
        preprocessing,
        statistics,
        spacing,
        patch,
        _passes(uncertainty, int(mc_samples)),
        chunk,
        channels_last,
        uncertainty,
        int(uncertainty_seed),
    )


def _passes(method: UncertaintyMethod | None, mc_samples: int) -> int:
    """The passes of ``method``: ``mc_samples`` when given (> 0), else the method's default."""
    if method is None or method.passes == 0:
        return 0
    passes = mc_samples or method.passes
    if method.max_passes is not None and passes > method.max_passes:
        raise InputError(f"uncertainty method {method.name!r} takes at most {method.max_passes} passes")
    return passes


def _wanted_uncertainty(model: LoadedModel, mc_samples: int, method: str | None) -> UncertaintyMethod | None:
    """The uncertainty method to run: ``method``, or the default one when only ``mc_samples > 0`` asks."""
    if method is None and int(mc_samples) == 0:
        return None
    return uncertainty_method(method, len(model.inference_networks))


def segment(
    model: LoadedModel,
    image: sitk.Image,
    center: Sequence[float] | None = None,
    *,
    mc_samples: int = 0,
    precision: str = "auto",
    threshold: float = 0.5,
    roi_patches: int = 2,
    overlap: float = 0.25,
    progress: ProgressCallback | None = None,
    channels_last: bool | None = None,
    uncertainty_method: str | None = None,
    uncertainty_seed: int = 0,
    centers: Sequence[Sequence[float]] | None = None,
) -> SegmentationResult:
    """Segment ``image`` with ``model``; every output is on exactly the input's grid.

    With ``center`` (LPS mm, inside the volume): coarse-to-fine ``"roi"`` mode, a region of
    ``roi_patches`` x patch size voxels at the model's spacing around the point (no larger than the
    volume allows), predicted as one window without seams. With ``centers`` (several points, issue 19):
    that region at every point, the probabilities (and uncertainties) merged by their voxel-wise maximum.
    Without: ``"sliding-window"`` mode over the whole volume with ``overlap``. ``label`` is
    ``probability > threshold`` for a two-class model; for K > 2 classes the class of largest probability
    (:func:`argmax_label`, labels 0..K-1; ``threshold`` does not apply) and ``probability`` is
    ``1 - P(background)``. ``channels_last=None`` uses the measured default for the device.
    ``progress(stage, fraction)`` is called at "preprocess", "predict", "map back", "done".

    Uncertainty: with ``uncertainty_method`` (a key of :data:`UNCERTAINTY_METHODS`), or with
    ``mc_samples > 0`` alone (then :data:`DEFAULT_UNCERTAINTY`), the result carries that method's map,
    computed with ``mc_samples`` passes (0: the method's default) and torch's generator seeded with
    ``uncertainty_seed``; the probability stays the deterministic one.

    Raises :class:`InputError` (bad image, point outside the volume, bad option) or :class:`ModelError`.
    """
    started = time.perf_counter()
    report = progress or (lambda stage, fraction: None)
    _check_options(mc_samples, threshold, roi_patches, overlap)
    _check_image(image)
    report("preprocess", 0.0)
    method = _wanted_uncertainty(model, mc_samples, uncertainty_method)
    ctx = _make_context(model, image, precision, mc_samples, channels_last, method, uncertainty_seed)
    points = _center_points(image, center, centers)
    if points:
        maps = _segment_points(ctx, image, points, int(roi_patches), report)
        probability, classes, uncertainty_image = maps
    else:
        foreground, uncertainty, grid = _segment_whole(ctx, image, float(overlap), report)
        report("map back", 0.9)
        probability, classes = _input_maps(foreground, grid, image)
        uncertainty_image = to_input_grid(uncertainty, grid, image) if uncertainty is not None else None
    if classes is None:
        label = sitk.Cast(probability > float(threshold), sitk.sitkUInt8)
    else:
        label = argmax_label(classes)
    label.CopyInformation(image)
    report("done", 1.0)
    return SegmentationResult(
        label=label,
        probability=probability,
        uncertainty=uncertainty_image,
        mode="roi" if points else "sliding-window",
        center=points[0] if points else None,
        seconds=time.perf_counter() - started,
        precision=ctx.precision,
        uncertainty_method=method.name if method is not None else None,
        centers=tuple(points),
    )


def _center_points(
    image: sitk.Image, center: Sequence[float] | None, centers: Sequence[Sequence[float]] | None
) -> list[tuple[float, float, float]]:
    """The centre points asked for (``center`` or ``centers``, not both), each checked inside ``image``."""
    if center is not None and centers is not None:
        raise InputError("give either one centre point or a list of centre points, not both")
    points = [center] if center is not None else list(centers or [])
    for point in points:
        check_point_inside(image, point, what="centre point")
    return [tuple(float(c) for c in point) for point in points]  # type: ignore[misc]


def _segment_points(
    ctx: _Context,
    image: sitk.Image,
    points: Sequence[tuple[float, float, float]],
    roi_patches: int,
    progress: ProgressCallback,
) -> tuple[sitk.Image, list[sitk.Image] | None, sitk.Image | None]:
    """Probability, the classes' maps (K > 2, else None) and uncertainty on the input grid: the
    coarse-to-fine region at every point, merged by the voxel-wise maximum where regions overlap
    (issue 19), so every one-point result is kept."""
    probability: sitk.Image | None = None
    classes: list[sitk.Image] | None = None
    uncertainty: sitk.Image | None = None
    for i, point in enumerate(points):
        silent = progress if i == 0 else (lambda stage, fraction: None)
        foreground, region_uncertainty, grid = _segment_roi(ctx, image, point, roi_patches, silent)
        if i == 0:
            progress("map back", 0.9)
        region_probability, region_classes = _input_maps(foreground, grid, image)
        probability = _maximum(probability, region_probability)
        if region_classes is not None:
            merged = classes or [None] * len(region_classes)
            classes = [_maximum(old, new) for old, new in zip(merged, region_classes, strict=True)]
        if region_uncertainty is not None:
            uncertainty = _maximum(uncertainty, to_input_grid(region_uncertainty, grid, image))
    assert probability is not None
    return probability, classes, uncertainty


def _maximum(merged: sitk.Image | None, new: sitk.Image) -> sitk.Image:
    """The voxel-wise maximum of two maps on the same grid (``new`` alone when nothing is merged yet)."""
    return new if merged is None else sitk.Maximum(merged, new)
