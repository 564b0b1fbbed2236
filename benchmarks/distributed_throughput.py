"""Training throughput on 1 and N processes (issue 18): ``semisupseg train --nproc N``, side by side.

Each (method, processes) pair trains the same tiny run (phantom data written once, ``--steps`` steps,
``--batch`` labelled patches per process and as many unlabelled) through the real command line and its
elastic launcher, and the model's recorded ``timings.seconds_per_step`` (the loop's steps only: start-up,
data preparation and the process-group rendezvous excluded) and the wall time of the whole command are
kept. Samples per second count the global batch (``batch × processes``). Runs are cached per pair in
``--work`` and the raw JSON is rewritten after each one. On a 2-core machine the processes share the cores
(gloo, ``--threads`` torch threads per process, 1 by default, whatever N): with N processes on N free
cores the figure shows how far the all-reduce keeps the ideal N-fold samples per second.

``--tabulate JSON`` renders the table without training; ``--write DOC`` replaces the
``[distributed_throughput]`` block of DOC.

Example (the figures in docs/BENCHMARKS.md): ``python benchmarks/distributed_throughput.py --work /tmp/dt
--out docs/benchmark_results/distributed_throughput.json --write docs/BENCHMARKS.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from _report import (
    ReportError,
    check_block,
    command_line,
    fail,
    markdown_table,
    provenance,
    read_json,
    write_block,
    write_json,
)

SCRIPT = "benchmarks/distributed_throughput.py"
BLOCK = "distributed_throughput"
ENGINE = Path(__file__).resolve().parents[1] / "SemiSupSeg"


def _cli(args: list[str], env: dict[str, str]) -> float:
    """Run ``python -m SemiSupSegLib.cli ARGS``; its wall time (a failure ends the benchmark)."""
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "SemiSupSegLib.cli", *args], env=env, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise ReportError(f"semisupseg {args[0]} failed ({done.returncode}): {done.stderr.strip()[-300:]}")
    return time.monotonic() - start


def run_pair(args, method: str, nproc: int, data: Path, env: dict[str, str]) -> dict:
    """One cached (method, processes) run."""
    out = args.work / f"{method}-nproc{nproc}"
    cached = out / "result.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    train = ["train", "--data", str(data / "dataset.json"), "--out", str(out), "--method", method]
    train += ["--steps", str(args.steps), "--batch", str(args.batch), "--patch", str(args.patch)]
    train += ["--width", str(args.width), "--val-cases", "0", "--device", "cpu", "--progress", "none"]
    train += ["--nproc", str(nproc), "--seed", "0"]
    if method in ("ua-mt", "dual-unet"):
        train += ["--option", "mc_samples=2"]
    wall = _cli(train, env)
    meta = json.loads((out / "model.json").read_text())
    per_step = float(meta["timings"]["seconds_per_step"])
    result = {
        "method": method,
        "processes": nproc,
        "world_size": meta["training"]["world_size"],
        "global_batch": meta["training"]["global_batch"],
        "seconds_per_step": per_step,
        "samples_per_second": meta["training"]["global_batch"] / per_step,
        "wall_seconds": round(wall, 1),
    }
    cached.write_text(json.dumps(result, indent=1))
    return result


def measure(args) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ENGINE), os.environ.get("PYTHONPATH", "")])}
    env["OMP_NUM_THREADS"] = str(args.threads)  # per process, the same for every process count
    data = args.work / "data"
    if not (data / "dataset.json").is_file():
        _cli(
            [
                "phantom",
                str(data),
                "--cases",
                "4",
                "--unlabeled",
                "4",
                "--size",
                str(args.size),
                "--seed",
                "5",
            ],
            env,
        )
    rows = []
    raw = {"command": command_line(), "setting": _setting(args), "rows": rows}
    for method in args.methods:
        for nproc in args.processes:
            rows.append(run_pair(args, method, nproc, data, env))
            print(json.dumps(rows[-1]), flush=True)
            if args.out:
                write_json(args.out, raw)
    return raw


def _setting(args) -> dict:
    return {
        "steps": args.steps,
        "batch_per_process": args.batch,
        "patch": args.patch,
        "width": args.width,
        "size": args.size,
        "threads_per_process": args.threads,
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d"),
    }


def table(raw: dict) -> list[str]:
    """Seconds per step, samples per second and their ratio to one process, per method."""
    one = {r["method"]: r for r in raw["rows"] if r["processes"] == 1}
    rows = []
    for r in raw["rows"]:
        base = one.get(r["method"])
        ratio = f"{r['samples_per_second'] / base['samples_per_second']:.2f}" if base else "-"
        rows.append(
            [
                r["method"],
                r["processes"],
                r["global_batch"],
                f"{r['seconds_per_step']:.3f}",
                f"{r['samples_per_second']:.2f}",
                ratio,
                f"{r['wall_seconds']:.0f}",
            ]
        )
    header = ["method", "processes", "global batch", "s / step", "samples / s", "× 1 process", "wall s"]
    return markdown_table(header, rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, default=Path("distributed_throughput"), help="data and cached runs")
    p.add_argument("--methods", default="supervised,dual-unet")
    p.add_argument("--processes", default="1,2", help="comma-separated process counts")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--batch", type=int, default=2, help="labelled patches per process")
    p.add_argument("--patch", type=int, default=32)
    p.add_argument("--width", type=float, default=0.25)
    p.add_argument("--size", type=int, default=64, help="phantom voxels per axis")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads per process, whatever the number of processes (on a shared machine more "
        "threads than free cores slow small convolutions down several times)",
    )
    p.add_argument("--out", type=Path, help="raw results (JSON)")
    p.add_argument("--tabulate", type=Path, metavar="JSON", help="measure nothing: render this JSON")
    p.add_argument("--write", type=Path, help="markdown file whose block is replaced")
    args = p.parse_args(argv)
    args.methods = [m for m in args.methods.split(",") if m]
    try:
        args.processes = [int(n) for n in args.processes.split(",") if n]
    except ValueError:
        raise fail(f"--processes must be whole numbers, got {args.processes!r}") from None
    try:
        if args.write:
            check_block(args.write, SCRIPT, BLOCK)
        source = args.tabulate or args.out
        if args.tabulate:
            raw = read_json(args.tabulate)
        else:
            args.work.mkdir(parents=True, exist_ok=True)
            raw = measure(args)
        body = table(raw)
        print("\n".join(body))
        if args.write:
            if source is None:
                raise fail("--write needs --out or --tabulate (the JSON the block is rendered from)")
            setting = raw["setting"]
            note = (
                f"*{setting['date']}, {setting['cores']} cores ({setting['cpu']}), width {setting['width']}, "
                f"{setting['patch']}³ patches, {setting['batch_per_process']} labelled (+ as many "
                "unlabelled) "
                f"per process, {setting.get('threads_per_process', '?')} thread(s) per process, "
                f"{setting['steps']} steps, gloo.*"
            )
            tabulate = f"python {SCRIPT} --tabulate {source} --write {args.write}"
            write_block(
                args.write,
                SCRIPT,
                BLOCK,
                [*body, "", note, "", provenance([source], raw["command"], tabulate)],
            )
            print(f"replaced the [{BLOCK}] block of {args.write}")
    except KeyError as error:
        raise fail(f"not raw results of {SCRIPT} (no {error})") from None
    except (ReportError, OSError) as error:
        raise fail(str(error)) from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
