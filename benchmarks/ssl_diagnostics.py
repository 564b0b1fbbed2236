"""Diagnostics behind "What the tables say" in docs/BENCHMARKS.md (a script, not a test).

- ``mc-bias --model M --data D``: how far the Dual-UNet's L_intra target P^ (the mean of ``T`` = 8
  Monte-Carlo passes) lies from the training forward y^ it pulls, for each BatchNorm mode of the passes
  (``mc_batchnorm``: ``batch``, the default since issue 13, and ``running``, before) in fp32 and bf16,
  side by side. The batches are drawn as training draws them (the model's patch size and translation,
  augmentation on): ``--batch`` labelled + as many unlabelled patches; y^ is the training forward of that
  whole batch (train mode: dropout, BatchNorm on the batch's statistics) and P^ the passes over its
  unlabelled half, exactly as ``DualUNet`` calls them. Means are compared with means: y^ is averaged over
  ``T`` dropout draws. The running statistics are restored after every training forward, so the
  ``running`` passes read the model's own. One more column runs the passes over the whole labelled +
  unlabelled batch (``batch`` mode) and keeps the unlabelled half: the part of the gap due to the batch
  composition. Reported per variant, pooled over all batches: the relative difference of P^ against y^
  in foreground probability mass and in voxels above 0.5, the per-batch range of the former, and the mean
  absolute foreground difference; ``single draw`` is one training forward against the mean of ``T``
  (the noise floor). Raw JSON with ``--out``; ``--write DOC`` replaces the block ``[ssl_mc_bias]``;
  ``--tabulate JSON`` renders it again without measuring.
- ``volume-ratio --runs DIR --data D``: for every ``DIR/<row>/seed0`` model of an ``ssl_table.py`` run,
  predicted / true foreground voxels on the first 4 test cases of ``D``, recall, precision, Dice and the
  Dice of the largest connected component alone (means over the cases), and the mean maximum probability.

Usage: ``OMP_NUM_THREADS=1 PYTHONPATH=SemiSupSeg python benchmarks/ssl_diagnostics.py mc-bias --model M
--data D --out docs/benchmark_results/ssl_mc_bias.json --write docs/BENCHMARKS.md``;
``... volume-ratio --runs "ssl_runs/phantom/runs/phantom_(L,U)=(4,12)" --data
ssl_runs/phantom/phantom-L4-U12/dataset.json``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

PACKAGE = Path(__file__).resolve().parents[1] / "SemiSupSeg"
if str(PACKAGE) not in sys.path:
    sys.path.insert(0, str(PACKAGE))

from _report import (  # noqa: E402
    command_line,
    display_path,
    fail,
    markdown_table,
    provenance,
    read_json,
    write_block,
    write_json,
)

from SemiSupSegLib.dataset import load_dataset  # noqa: E402
from SemiSupSegLib.imageio import read_image  # noqa: E402
from SemiSupSegLib.inference import foreground_probability, segment  # noqa: E402
from SemiSupSegLib.methods.common import mc_prediction  # noqa: E402
from SemiSupSegLib.model_store import load_model  # noqa: E402
from SemiSupSegLib.patches import PatchSampler, prepare_case  # noqa: E402

SCRIPT = "benchmarks/ssl_diagnostics.py"
BLOCK = "ssl_mc_bias"
MC_SAMPLES = 8
# (column, BatchNorm mode of the passes, precision, passes over the whole labelled + unlabelled batch)
VARIANTS = (
    ("batch, fp32", "batch", "fp32", False),
    ("batch, bf16", "batch", "bf16", False),
    ("running, fp32", "running", "fp32", False),
    ("running, bf16", "running", "bf16", False),
    ("batch, fp32, passes over l+u", "batch", "fp32", True),
)


def _prepared(cases: list, preprocessing, labeled: bool) -> list:
    label = lambda case: read_image(case.label, what="label") if labeled else None  # noqa: E731
    return [prepare_case(c.name, read_image(c.image), label(c), c.center, preprocessing) for c in cases]


def _training_forward(net: torch.nn.Module, x: torch.Tensor, draws: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and first draw of ``draws`` train-mode forwards of ``x``; BatchNorm buffers restored after."""
    saved = {k: v.clone() for k, v in net.named_buffers()}
    with torch.no_grad():
        probs = [torch.softmax(net.train()(x).float(), dim=1) for _ in range(draws)]
    net.load_state_dict(saved, strict=False)
    return torch.stack(probs).mean(dim=0), probs[0]


def _sums(foreground: torch.Tensor) -> dict[str, float]:
    return {"mass": float(foreground.sum()), "voxels": int((foreground > 0.5).sum())}


def _batch_row(net: torch.nn.Module, labeled: torch.Tensor, unlabeled: torch.Tensor) -> dict:
    """Foreground mass and voxels above 0.5 of y^ (mean and one draw) and of every variant's P^."""
    n = labeled.shape[0]
    x = torch.cat([labeled, unlabeled])
    mean, single = _training_forward(net, x, MC_SAMPLES)
    fg_mean = foreground_probability(mean[n:])
    row = {"y_mean": _sums(fg_mean), "single draw": _sums(foreground_probability(single[n:]))}
    row["single draw"]["mean_abs"] = float((foreground_probability(single[n:]) - fg_mean).abs().mean())
    for name, batchnorm, precision, whole in VARIANTS:
        p_hat = mc_prediction(net, x if whole else unlabeled, MC_SAMPLES, precision, batchnorm)[0]
        fg = foreground_probability(p_hat[n:] if whole else p_hat)
        row[name] = {**_sums(fg), "mean_abs": float((fg - fg_mean).abs().mean())}
    return row


def _summary(rows: list[dict]) -> dict[str, dict[str, float]]:
    """Per variant: pooled relative mass and voxel differences against y^ (%), per-batch mass range."""
    total = lambda key, name: sum(r[name][key] for r in rows)  # noqa: E731
    out = {}
    for name in ["single draw", *(v[0] for v in VARIANTS)]:
        per_batch = [100 * (r[name]["mass"] / r["y_mean"]["mass"] - 1) for r in rows]
        out[name] = {
            "mass_pct": 100 * (total("mass", name) / total("mass", "y_mean") - 1),
            "voxels_pct": 100 * (total("voxels", name) / max(1, total("voxels", "y_mean")) - 1),
            "mass_pct_min": min(per_batch),
            "mass_pct_max": max(per_batch),
            "mean_abs": float(np.mean([r[name]["mean_abs"] for r in rows])),
        }
    return out


def mc_bias(args) -> dict:
    model = load_model(args.model)
    net = next(iter(model.networks.values())).float()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    dataset, preprocessing = load_dataset(args.data), model.preprocessing
    labeled = _prepared(dataset.training, preprocessing, labeled=True)
    unlabeled = _prepared(dataset.unlabeled, preprocessing, labeled=False)
    translation = int(model.meta.get("training", {}).get("config", {}).get("translation", 32))
    sampler = PatchSampler(labeled, unlabeled, model.patch_size, args.seed, translation, augment=True)
    torch.manual_seed(args.seed)
    rows = []
    for _ in range(args.batches):
        images, _labels = sampler.labeled_batch(args.batch)
        rows.append(_batch_row(net, images, sampler.unlabeled_batch(args.batch)))
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in before.items()), "the model changed"
    setting = {
        "model": display_path(args.model),
        "model_method": model.meta.get("method"),
        "data": display_path(args.data),
        "patch_size": list(model.patch_size),
        "translation": translation,
        "batch": f"{args.batch} labelled + {args.batch} unlabelled",
        "batches": args.batches,
        "mc_samples": MC_SAMPLES,
        "seed": args.seed,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    return {"command": command_line(), "setting": setting, "summary": _summary(rows), "batches": rows}


def mc_bias_table(results: dict) -> list[str]:
    """The markdown block: one row per variant, P^ against the mean training forward y^."""
    s = results["setting"]
    rows = [
        [
            name,
            f"{v['mass_pct']:+.1f}",
            f"{v['mass_pct_min']:+.1f} to {v['mass_pct_max']:+.1f}",
            f"{v['voxels_pct']:+.1f}",
            f"{v['mean_abs']:.4f}",
        ]
        for name, v in results["summary"].items()
    ]
    header = ["P^ (BatchNorm, precision)", "mass vs y^ %", "per batch %", "voxels > 0.5 %", "mean abs diff"]
    intro = (
        f"Model `{s['model']}` ({s['model_method']}), data `{s['data']}`: {s['batches']} batches of "
        f"{s['batch']} {'x'.join(map(str, s['patch_size']))} patches drawn as in training (translation "
        f"±{s['translation']}, augmentation), T = {s['mc_samples']}, seed {s['seed']}, torch {s['torch']}."
    )
    return [intro, "", *markdown_table(header, rows)]


def _write(results: dict, json_path: Path, doc: Path | None) -> None:
    lines = mc_bias_table(results)
    print("\n".join(lines))
    if doc is not None:
        tabulate = f"python {SCRIPT} mc-bias --tabulate {display_path(json_path)} --write {display_path(doc)}"
        footer = provenance([json_path], results.get("command"), tabulate)
        write_block(doc, SCRIPT, BLOCK, [*lines, "", footer])


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = a.sum() + b.sum()
    return float(2 * (a & b).sum() / total) if total else 1.0


def _largest_component(label: sitk.Image) -> np.ndarray:
    components = sitk.RelabelComponent(sitk.ConnectedComponent(label), sortByObjectSize=True)
    return sitk.GetArrayFromImage(components) == 1


def volume_ratio(args) -> None:
    test = load_dataset(args.data).test[:4]
    for run in sorted(Path(args.runs).glob("*/seed0")):
        if not (run / "weights.pt").is_file():
            continue
        model, rows, peaks = load_model(run), [], []
        for case in test:
            truth = sitk.GetArrayFromImage(sitk.ReadImage(str(case.label))) > 0
            result = segment(model, read_image(case.image), case.center)
            predicted = sitk.GetArrayFromImage(result.label) > 0
            overlap = (predicted & truth).sum()
            rows.append([predicted.sum() / max(1, truth.sum()), overlap / max(1, truth.sum()),
                         overlap / max(1, predicted.sum()), _dice(predicted, truth),
                         _dice(_largest_component(result.label), truth)])  # fmt: skip
            peaks.append(float(sitk.GetArrayFromImage(result.probability).max()))
        ratio, recall, precision, dice, largest = np.mean(rows, axis=0)
        print(f"{run.parent.name:32s} predicted/true voxels {ratio:.2f}, recall {recall:.2f}, "
              f"precision {precision:.2f}, Dice {dice:.3f}, largest component's Dice {largest:.3f}, "
              f"max prob {np.mean(peaks):.2f}")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["mc-bias", "volume-ratio"])
    p.add_argument("--data", help="the split's dataset.json")
    p.add_argument("--model", help="mc-bias: model folder")
    p.add_argument("--batches", type=int, default=8, help="mc-bias: training-like batches")
    p.add_argument("--batch", type=int, default=2, help="mc-bias: labelled (= unlabelled) patches")
    p.add_argument("--seed", type=int, default=0, help="mc-bias: patch sampling, noise and dropout")
    p.add_argument("--out", type=Path, help="mc-bias: raw results (JSON)")
    p.add_argument("--tabulate", type=Path, help="mc-bias: render this JSON, measure nothing")
    p.add_argument("--write", type=Path, help="mc-bias: markdown file whose [ssl_mc_bias] block is replaced")
    p.add_argument("--runs", help="volume-ratio: a setting's folder under <ssl_table out>/runs")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    if args.what == "volume-ratio":
        if not (args.runs and args.data):
            raise fail("volume-ratio needs --runs and --data")
        volume_ratio(args)
        return 0
    if args.tabulate:
        _write(read_json(args.tabulate), args.tabulate, args.write)
        return 0
    if not (args.model and args.data):
        raise fail("mc-bias needs --model and --data (or --tabulate JSON)")
    if args.write and not args.out:
        raise fail("--write needs --out (the JSON the block is rendered from)")
    results = mc_bias(args)
    if args.out:
        write_json(args.out, results)
    _write(results, args.out, args.write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
