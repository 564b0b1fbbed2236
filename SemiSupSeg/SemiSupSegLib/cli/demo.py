"""``semisupseg demo``: fresh phantom volumes segmented with the shipped model and locator."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from .arguments import _AMOUNT, _COUNT, _device
from .evaluate import _evaluate_cases
from .locator import _load_locator
from .phantom import _add_profile_flag

DEMO_MODEL = "phantom-catheter"


DEMO_LOCATOR = "phantom-locator"


def _demo_locator(args: argparse.Namespace, device):
    """The demo's locator: ``--locator``, else the shipped one if present; none with ``--true-center``."""
    from ..locator.store import LOCATOR_JSON
    from ..model_store import PRETRAINED_DIR

    if args.true_center:
        return None
    if args.locator:
        return _load_locator(args.locator, device)
    shipped = PRETRAINED_DIR / DEMO_LOCATOR
    return _load_locator(str(shipped), device) if (shipped / LOCATOR_JSON).is_file() else None


def cmd_demo(args: argparse.Namespace) -> int:
    from ..atomic import atomic_write_json
    from ..dataset import load_dataset
    from ..metrics import summarize
    from ..model_store import load_model
    from ..phantom import write_phantom_dataset
    from ..training import resolve_device

    out = Path(args.out)
    t0 = time.monotonic()
    print(
        f"generating {args.cases} phantom catheter volumes ({args.size}^3, seed {args.seed}, "
        f"profile {args.profile}) in {out}"
    )
    data = write_phantom_dataset(
        out / "data", cases=0, test=args.cases, seed=args.seed, size=args.size, profile=args.profile
    )
    device = resolve_device(args.device)
    model = load_model(args.model, device)
    locator = _demo_locator(args, device)
    where = f"centre points found by locator '{locator.name}'" if locator else "the true centre points"
    print(f"segmenting with model '{model.name}' ({model.meta.get('method')}) from {where}")
    rows = _evaluate_cases(
        model, load_dataset(data).test, True, args.precision, out / "segmentations", locator, out / "figures"
    )
    summary = summarize(rows)
    if locator is not None:
        loc = summary["loc_vox"]
        print(f"localisation error {loc['mean']:.1f} ± {loc['std']:.1f} voxels (no centre given)")
    atomic_write_json(out / "results.json", {"model": str(model.path), "cases": rows, "summary": summary})
    print(
        f"Dice {summary['dice']['mean']:.3f} ± {summary['dice']['std']:.3f} over {len(rows)} unseen volumes; "
        f"{summary['seconds']['mean']:.2f} s per volume; total {time.monotonic() - t0:.1f} s"
    )
    print(f"results in {out} (segmentations/, figures/, results.json)")
    return 0


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="segment fresh phantom volumes with the shipped model")
    p.add_argument("--out", default="semisupseg-demo")
    p.add_argument("--cases", type=_COUNT, default=4)
    p.add_argument(
        "--seed", type=_AMOUNT, default=2026, help="phantom seed (the shipped model never saw 2026)"
    )
    p.add_argument("--size", type=_COUNT, default=160)
    _add_profile_flag(p)
    p.add_argument("--model", default=DEMO_MODEL)
    p.add_argument("--locator", help=f"locator finding the centres (default: the shipped '{DEMO_LOCATOR}')")
    p.add_argument("--true-center", action="store_true", help="use the phantoms' true centres, no locator")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto")
    p.add_argument("--device", type=_device, default="auto")
    p.set_defaults(func=cmd_demo)
