"""Benchmark (not a test): a model's network forward with and without its BatchNorms folded into the
convolutions (``inference.fuse_batch_norms``), in each precision and memory layout, on one input.

    OMP_NUM_THREADS=1 python benchmarks/fold_batchnorm.py --model phantom-catheter --size 128 \\
        --out docs/benchmark_results/fold_batchnorm.json
    python benchmarks/fold_batchnorm.py --tabulate docs/benchmark_results/fold_batchnorm.json

Seconds are the minimum of ``--repeats`` forwards after one warm-up, under ``torch.inference_mode``;
the largest absolute difference of the fp32 logits tells that the folding changes nothing but rounding.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from _report import command_line, fail, markdown_table, provenance, read_json, write_json

from SemiSupSegLib.inference import fuse_batch_norms
from SemiSupSegLib.model_store import load_model


def _seconds(net, x: torch.Tensor, precision: str, repeats: int) -> float:
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")
    with torch.inference_mode(), autocast:
        net(x)
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            net(x)
            times.append(time.perf_counter() - started)
    return min(times)


def measure(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    plain = load_model(args.model).inference_networks[0].eval()
    folded = fuse_batch_norms(plain)
    x = torch.randn(1, 1, args.size, args.size, args.size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        difference = float((plain(x) - folded(x)).abs().max())
    rows = []
    for channels_last in (False, True):
        layout = torch.channels_last_3d if channels_last else torch.contiguous_format
        xs = x.to(memory_format=layout)
        nets = {"plain": plain.to(memory_format=layout), "folded": folded.to(memory_format=layout)}
        for precision in ("fp32", "bf16"):
            seconds = {name: _seconds(net, xs, precision, args.repeats) for name, net in nets.items()}
            rows.append({"channels_last": channels_last, "precision": precision, **seconds})
            print(rows[-1], flush=True)
    return {
        "setting": {
            "model": args.model,
            "size": args.size,
            "threads": args.threads,
            "command": command_line(),
        },
        "max_abs_logit_difference_fp32": difference,
        "rows": rows,
    }


def table(data: dict, source: Path | None) -> list[str]:
    header = ["layout", "precision", "plain (s)", "folded (s)", "folded / plain"]
    rows = [
        [
            "channels_last_3d" if r["channels_last"] else "contiguous",
            r["precision"],
            f"{r['plain']:.2f}",
            f"{r['folded']:.2f}",
            f"{r['folded'] / r['plain']:.2f}",
        ]
        for r in data["rows"]
    ]
    s = data["setting"]
    return [
        f"Model `{s['model']}`, one {s['size']}³ input, {s['threads']} thread(s); largest fp32 logit "
        f"difference {data['max_abs_logit_difference_fp32']:.1e}.",
        "",
        *markdown_table(header, rows),
        "",
        provenance(
            [source] if source else [], s["command"], "python benchmarks/fold_batchnorm.py --tabulate JSON"
        ),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="phantom-catheter")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, help="raw results (JSON)")
    parser.add_argument("--tabulate", type=Path, metavar="JSON", help="measure nothing: render this JSON")
    args = parser.parse_args(argv)
    try:
        data = read_json(args.tabulate) if args.tabulate else measure(args)
        if args.out and not args.tabulate:
            write_json(args.out, data)
        print("\n".join(table(data, args.tabulate or args.out)))
    except (KeyError, OSError) as error:
        raise fail(f"cannot render: {error}") from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
