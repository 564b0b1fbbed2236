"""``semisupseg models list`` and ``methods``: what is installed and what can be trained."""

from __future__ import annotations

import argparse
import json


def cmd_models(args: argparse.Namespace) -> int:
    from ..model_store import list_models, models_dir

    models = list_models()
    if args.json:
        print(json.dumps(models, indent=2))
        return 0
    print(f"models folder: {models_dir()}")
    if not models:
        print("no models found")
    for m in models:
        dice = (m.get("metrics") or {}).get("validation", {}).get("dice")
        dice_text = f"  val Dice {dice:.3f}" if isinstance(dice, (int, float)) else ""
        print(f"{m['name']:<28} {m['method']:<14} {m['origin']:<8}{dice_text}  {m['path']}")
        if m.get("description"):  # what the model covers (instruments, profiles), as its model.json says
            print(f"    {m['description']}")
    return 0


def cmd_methods(args: argparse.Namespace) -> int:
    from ..methods import describe_methods

    methods = describe_methods()
    if args.json:
        print(json.dumps(methods, indent=2))
    else:
        for m in methods:
            print(f"{m['name']:<16} {m['description']}")
    return 0


def _add_catalogue(sub) -> None:
    models = sub.add_parser("models", help="list the models").add_subparsers(dest="action", required=True)
    listing = models.add_parser("list", help="list the models in the models folder and the shipped ones")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(func=cmd_models)
    methods = sub.add_parser("methods", help="list the training methods")
    methods.add_argument("--json", action="store_true")
    methods.set_defaults(func=cmd_methods)
