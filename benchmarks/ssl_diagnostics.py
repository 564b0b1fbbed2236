"""Diagnostics behind "What the tables say" in docs/BENCHMARKS.md (a script, not a test).

- ``mc-bias --model M --data D``: on 24³ patches around the centres of the first 8 unlabelled cases of
  ``D``, the foreground probability mass and the voxels above 0.5 of the eval forward, the training
  forward (dropout on) and the mean of 8 Monte-Carlo passes (the Dual-UNet's L_intra target), in fp32 and
  bf16.
- ``volume-ratio --runs DIR --data D``: for every ``DIR/<row>/seed0`` model of an ``ssl_table.py`` run,
  predicted / true instrument voxels on the first 4 test cases of ``D``, and the mean maximum probability.

Usage: ``OMP_NUM_THREADS=1 PYTHONPATH=SemiSupSeg python benchmarks/ssl_diagnostics.py volume-ratio
--runs "ssl_runs/phantom/runs/phantom_(L,U)=(4,12)" --data ssl_runs/phantom/phantom-L4-U12/dataset.json``.
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

from SemiSupSegLib.dataset import load_dataset  # noqa: E402
from SemiSupSegLib.imageio import read_image  # noqa: E402
from SemiSupSegLib.inference import segment  # noqa: E402
from SemiSupSegLib.methods.common import mc_prediction  # noqa: E402
from SemiSupSegLib.model_store import load_model  # noqa: E402
from SemiSupSegLib.patches import prepare_case  # noqa: E402

PATCH = 24


def mc_bias(args) -> None:
    model = load_model(args.model)
    net = next(iter(model.networks.values())).float()
    patches = []
    for case in load_dataset(args.data).unlabeled[:8]:
        prepared = prepare_case(case.name, read_image(case.image), None, case.center, model.preprocessing)
        z, y, x = np.rint(prepared.center_zyx).astype(int) - PATCH // 2
        patches.append(prepared.image[z : z + PATCH, y : y + PATCH, x : x + PATCH])
    x = torch.from_numpy(np.stack(patches)[:, None].astype(np.float32))
    torch.manual_seed(0)
    with torch.no_grad():
        evaluated = torch.softmax(net.eval()(x), 1)[:, 1]
        trained = torch.softmax(net.train()(x), 1)[:, 1]
    for precision in ("fp32", "bf16"):
        mean = mc_prediction(net, x, 8, precision)[0][:, 1]
        print(
            f"{precision}: foreground mass eval {evaluated.sum():.0f}, training forward {trained.sum():.0f}, "
            f"MC mean {mean.sum():.0f}; voxels > 0.5: {int((evaluated > 0.5).sum())}, "
            f"{int((trained > 0.5).sum())}, {int((mean > 0.5).sum())}"
        )


def volume_ratio(args) -> None:
    test = load_dataset(args.data).test[:4]
    for run in sorted(Path(args.runs).glob("*/seed0")):
        if not (run / "weights.pt").is_file():
            continue
        model, ratios, peaks = load_model(run), [], []
        for case in test:
            truth = sitk.GetArrayFromImage(sitk.ReadImage(str(case.label))) > 0
            result = segment(model, read_image(case.image), case.center)
            ratios.append((sitk.GetArrayFromImage(result.label) > 0).sum() / max(1, truth.sum()))
            peaks.append(float(sitk.GetArrayFromImage(result.probability).max()))
        ratio, peak = np.mean(ratios), np.mean(peaks)
        print(f"{run.parent.name:32s} predicted/true voxels {ratio:.2f}, max prob {peak:.2f}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["mc-bias", "volume-ratio"])
    p.add_argument("--data", required=True, help="the split's dataset.json")
    p.add_argument("--model", help="mc-bias: model folder")
    p.add_argument("--runs", help="volume-ratio: a setting's folder under <ssl_table out>/runs")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    {"mc-bias": mc_bias, "volume-ratio": volume_ratio}[args.what](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
