"""``semisupseg phantom``: synthetic 3D-ultrasound instrument volumes."""

from __future__ import annotations

import argparse
import sys

from .arguments import _AMOUNT, _COUNT, _POSITIVE, _profile_name


# --- commands -----------------------------------------------------------------------------------
def cmd_phantom(args: argparse.Namespace) -> int:
    from ..phantom import write_phantom_dataset

    def progress(done: int, total: int) -> None:
        print(f"\rwriting phantom cases {done}/{total}", end="", file=sys.stderr, flush=True)

    path = write_phantom_dataset(
        args.out,
        cases=args.cases,
        seed=args.seed,
        kind=args.kind,
        size=args.size,
        unlabeled=args.unlabeled,
        test=args.test,
        spacing=args.spacing,
        progress=progress,
        profile=args.profile,
        workers=args.workers,
    )
    print(file=sys.stderr)
    print(f"wrote {path}")
    return 0


# --- parser -------------------------------------------------------------------------------------
def _add_phantom(sub) -> None:
    p = sub.add_parser("phantom", help="write synthetic 3D-ultrasound instrument volumes and a dataset.json")
    p.add_argument("out", help="output folder")
    p.add_argument("--cases", type=_AMOUNT, default=4, help="labelled training cases (default 4)")
    p.add_argument("--unlabeled", type=_AMOUNT, default=0, help="unlabelled cases (default 0)")
    p.add_argument("--test", type=_AMOUNT, default=0, help="labelled test cases (default 0)")
    p.add_argument("--seed", type=_AMOUNT, default=0)
    p.add_argument(
        "--kind",
        choices=("catheter", "guidewire", "mixed"),
        default="catheter",
        help="instrument (default catheter); mixed: a catheter (label 1) and a guide-wire (label 2)",
    )
    p.add_argument("--size", type=_COUNT, default=160, help="voxels per axis (default 160)")
    p.add_argument(
        "--spacing", type=_POSITIVE, default=None, help="mm per voxel (default: drawn per case by --profile)"
    )
    _add_profile_flag(p)
    p.add_argument(
        "--workers", type=_COUNT, default=1, help="cases rendered in parallel processes (default 1)"
    )
    p.set_defaults(func=cmd_phantom)


def _add_profile_flag(p) -> None:
    p.add_argument(
        "--profile",
        type=_profile_name,
        default="default",
        help="scanner profile (default 'default'; 'random' draws every parameter per case); "
        "the names and their parameters are in docs/PHANTOM_PROFILES.md",
    )
