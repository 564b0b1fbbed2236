"""Seconds per training step of each method relative to supervised steps (a script, not a test).

Every method runs the training loop's own iteration (``Trainer._optimizer`` for every stage, then
compute_losses, zero_grad, backward, step, ``after_iteration``) on the same random mini-batch of
``batch`` labelled + ``batch`` unlabelled patches, at the same width and patch size. References:

- ``supervised``: the supervised method (one network, the labelled half only), as it trains;
- ``supervised x2 (same batch)``: two networks, each a supervised forward + backward + Adam step on the
  whole mini-batch (labelled + unlabelled patches, treated as labelled). The issue's goal is
  ``dual-unet`` <= 2.6x this reference ("a supervised step of its two networks on the same batch").

Usage: ``OMP_NUM_THREADS=1 PYTHONPATH=SemiSupSeg python benchmarks/step_cost.py [--width 0.25]
[--patch 32] [--steps 5] [--threads 1] [--out step_cost.json]``
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

PACKAGE = Path(__file__).resolve().parents[1] / "SemiSupSeg"
if str(PACKAGE) not in sys.path:
    sys.path.insert(0, str(PACKAGE))

from SemiSupSegLib.losses import supervised_loss  # noqa: E402
from SemiSupSegLib.methods import METHODS, Batch, Method  # noqa: E402
from SemiSupSegLib.networks import NetworkConfig, build_network  # noqa: E402
from SemiSupSegLib.training import Trainer  # noqa: E402


def make_batch(batch: int, patch: int, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    shape = (batch, 1, patch, patch, patch)
    label = (torch.rand(shape, generator=g) > 0.95).long()
    return Batch(torch.randn(shape, generator=g), label, torch.randn(shape, generator=g))


def time_method(method: Method, batch: Batch, steps: int, step0: int) -> float:
    """Median seconds of one loop iteration (after one warm-up iteration)."""
    stages = [(spec, Trainer._optimizer(spec)) for spec in method.optimizers()]
    method.train()
    times = []
    for i in range(steps + 1):
        t0 = time.perf_counter()
        for spec, optimizer in stages:
            loss = method.compute_losses(spec.stage, batch, step0 + i)["loss"]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        method.after_iteration(step0 + i)
        times.append(time.perf_counter() - t0)
    return sorted(times[1:])[len(times[1:]) // 2]


def time_two_supervised(config: NetworkConfig, batch: Batch, steps: int) -> float:
    """Two networks, each a supervised step on the whole mini-batch (labelled + unlabelled patches)."""
    nets = [build_network(config).train() for _ in range(2)]
    optimizers = [torch.optim.Adam(n.parameters(), lr=1e-4) for n in nets]
    x = torch.cat([batch.labeled_image, batch.unlabeled_image])
    y = torch.cat([batch.labeled_label, batch.labeled_label])
    loss_fn = supervised_loss()
    times = []
    for _ in range(steps + 1):
        t0 = time.perf_counter()
        for net, opt in zip(nets, optimizers, strict=True):
            loss = loss_fn(net(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        times.append(time.perf_counter() - t0)
    return sorted(times[1:])[len(times[1:]) // 2]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--width", type=float, default=0.25)
    p.add_argument("--patch", type=int, default=32)
    p.add_argument("--batch", type=int, default=2, help="labelled patches (and as many unlabelled)")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = NetworkConfig(width=args.width)
    batch = make_batch(args.batch, args.patch)
    total = 10000
    step0 = 5000  # ramps and thresholds in their working range
    seconds = {
        name: time_method(cls(config, total), batch, args.steps, step0) for name, cls in METHODS.items()
    }
    seconds["supervised x2 (same batch)"] = time_two_supervised(config, batch, args.steps)
    sup, sup2 = seconds["supervised"], seconds["supervised x2 (same batch)"]
    rows = {
        name: {
            "seconds": round(s, 4),
            "x_supervised": round(s / sup, 2),
            "x_supervised_x2_same_batch": round(s / sup2, 2),
        }
        for name, s in seconds.items()
    }
    result = {
        "settings": {**vars(args), "out": str(args.out) if args.out else None, "torch": torch.__version__},
        "steps": rows,
    }
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
