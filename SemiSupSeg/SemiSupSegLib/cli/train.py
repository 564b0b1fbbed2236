"""``semisupseg train``: train or fine-tune a segmentation model, new or resumed (shared with the locator)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path

from ..errors import InputError
from .arguments import _AMOUNT, _COUNT, _POSITIVE, _default, _device, _method_option, _number, _shown, _triple

# Config fields whose flag is not ``--`` + the field's name.
_FLAGS = {
    "patch_size": "--patch",
    "method_options": "--option",
    "double": "--no-double",
    "dueling": "--no-dueling",
    "keep_best": "--keep-last",
}


_MAY_CHANGE_ON_RESUME = ("steps", "loader_workers")


def _given(fields: dict[str, object]) -> dict[str, object]:
    """The config fields given on the command line: argparse leaves every other one ``None``."""
    return {k: v for k, v in fields.items() if v is not None}


def _unless(flag: bool | None) -> bool | None:
    """The config value of a ``--no-X`` flag: False when given, None (the config's default) when not."""
    return None if flag is None else not flag


def _train_fields(args: argparse.Namespace) -> dict[str, object]:
    """The :class:`~SemiSupSegLib.training.TrainConfig` fields given on the command line."""
    return _given(
        {
            "data": args.data,
            "method": args.method,
            "steps": args.steps,
            "batch": args.batch,
            "patch_size": args.patch,
            "width": args.width,
            "dropout": args.dropout,
            "network": args.network,
            "lr": args.lr,
            "seed": args.seed,
            "val_cases": args.val_cases,
            "val_every": args.val_every,
            "checkpoint_every": args.checkpoint_every,
            "target_spacing": args.target_spacing,
            "normalization": args.normalization,
            "translation": args.translation,
            "augment": args.augment,
            "loader_workers": getattr(args, "loader_workers", None),
            "device": args.device,
            "precision": args.precision,
            "init": args.init,
            "name": args.name,
            "description": args.description,
            "method_options": dict(args.option) if args.option else None,
        }
    )


def _same(field: str, given: object, stored: object) -> bool:
    """Whether a flag's value equals the stored configuration's (tuples and lists alike)."""
    if field == "data":  # paths: the same file however it is written
        as_list = lambda v: [v] if isinstance(v, str) else list(v)  # noqa: E731
        return [Path(p).resolve() for p in as_list(given)] == [Path(p).resolve() for p in as_list(stored)]
    return json.loads(json.dumps(given)) == json.loads(json.dumps(stored))


def _resume_folder(args: argparse.Namespace) -> str:
    if not args.out:
        raise InputError("--resume needs --out, the folder of the interrupted run")
    return args.out


def _resumed_config(
    args: argparse.Namespace, stored, fields: dict[str, object], flags: dict[str, str] = _FLAGS
):
    """The stored configuration of the run in ``--out`` with ``--steps`` and ``--loader-workers`` applied.

    ``--steps`` extends or shortens the run (not below the step the checkpoint reached);
    ``--loader-workers`` may change (only where the patches are cut); any other flag given with a value
    other than the stored one is refused, naming it (``flags``: the flags of fields not named ``--field``).
    """
    from ..checkpoints import checkpoint_path, read_checkpoint

    differing = [
        f"{flags.get(k, '--' + k.replace('_', '-'))} {_shown(v)} (stored: {_shown(getattr(stored, k))})"
        for k, v in fields.items()
        if k not in _MAY_CHANGE_ON_RESUME and not _same(k, v, getattr(stored, k))
    ]
    if differing:
        raise InputError(
            f"--resume continues the run in {args.out} as it was configured; only --steps may change, "
            f"but {', '.join(differing)} differ from it"
        )
    steps = fields.get("steps", stored.steps)
    if steps < stored.steps:
        done = int(read_checkpoint(checkpoint_path(args.out))["step"])
        if steps < done:
            raise InputError(
                f"--steps {steps} is below step {done}, where the checkpoint in {args.out} stands"
            )
    runtime = {k: fields[k] for k in _MAY_CHANGE_ON_RESUME if k in fields and k != "steps"}
    return dataclasses.replace(stored, steps=steps, out=str(args.out), **runtime)


def _new_train_config(args: argparse.Namespace, fields: dict[str, object]):
    """A new run's configuration: the flags given, the dataclass's defaults for the others."""
    from ..dataset import labelled_cases, load_dataset
    from ..model_store import models_dir, resolve_model
    from ..training import TrainConfig

    if "data" not in fields:
        raise InputError("train needs --data dataset.json")
    if "init" in fields:
        resolve_model(fields["init"])
    labelled_cases(load_dataset(fields["data"], validate=False), "training", "to train on")
    method = fields.get("method", TrainConfig.method)
    out = args.out or str(models_dir() / (args.name or f"{method}-{time.strftime('%Y%m%d-%H%M%S')}"))
    return TrainConfig(out=out, **fields)


def refuse_interrupted_run(args: argparse.Namespace, trainer_cls, out: str) -> None:
    """Refuse a new run into a folder that holds an interrupted run's checkpoint.

    Without this, a repeated command without ``--resume`` started over and overwrote the checkpoint
    (hours of training) at its first checkpoint step. Processes started by ``--nproc`` skip the check:
    their launcher made it, and rank 0 may already have written the new run's first checkpoint.
    """
    from ..checkpoints import checkpoint_path, read_checkpoint
    from ..distributed import LAUNCHED

    path = checkpoint_path(out)
    if args.resume or os.environ.get(LAUNCHED) or not path.exists():
        return
    try:
        where = f" (step {int(read_checkpoint(path)['step'])} of {trainer_cls.stored_config(out).steps})"
    except Exception:  # an unreadable checkpoint is still a run not to overwrite; the step is a courtesy
        where = ""
    raise InputError(
        f"{out} holds an interrupted run{where}; continue it with --resume, or give another --out "
        f"(delete {path.parent} to start over)"
    )


def _run_trainer(args: argparse.Namespace, trainer_cls, config, what: str) -> int:
    """Shared by ``train`` and ``train-locator``: run a checked configuration, new or resumed."""
    from ..distributed import Distributed

    folder = trainer_cls(config, args.reporter).run(resume=args.resume)
    if args.progress != "json" and Distributed.from_environment().is_main:
        print(f"{what} written to {folder}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from ..methods import get_method
    from ..training import TrainConfig, Trainer

    fields = _train_fields(args)
    stored = Trainer.stored_config(_resume_folder(args)) if args.resume else None
    method = get_method(fields.get("method") or (stored.method if stored else TrainConfig.method))
    if "method_options" in fields:
        fields["method_options"] = method.parse_options(fields["method_options"])
    config = _resumed_config(args, stored, fields) if stored else _new_train_config(args, fields)
    refuse_interrupted_run(args, Trainer, config.out)
    if _launches(args, config.device):
        from ..distributed import launch

        return launch(args.nproc, args.argv)
    return _run_trainer(args, Trainer, config, "model")


def _launches(args: argparse.Namespace, device: str) -> bool:
    """Whether this process starts ``--nproc`` processes of the job (after checking the command line),
    rather than training itself: not when ``--nproc`` is 1, nor inside a job already started."""
    from ..distributed import LAUNCHED, Distributed, check_nproc

    nproc = args.nproc or 1
    check_nproc(nproc, device)
    return nproc > 1 and not os.environ.get(LAUNCHED) and not Distributed.from_environment().active


TRAIN_HELP = """Train a segmentation model, or continue an interrupted run with --resume.

--resume continues the run in --out exactly as it was configured (read from its checkpoint). --steps
may change its length: more steps extend it, fewer shorten it, but not below the step its checkpoint
reached; schedules that scale with the run length (learning-rate decay, ramps without an explicit
option) follow the new length from there on. Any other flag given with --resume must repeat the stored
value: a different one is refused and named.
"""


def _add_train(sub) -> None:
    sub.add_parser(
        "train",
        help="train or fine-tune a segmentation model",
        description=TRAIN_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        populate=_train_arguments,  # on first use: its imports take seconds (arguments._Parser)
    )


def _train_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of ``semisupseg train``, with choices and defaults read from the engine."""
    from ..augmentation import AUGMENTATIONS
    from ..methods import METHODS
    from ..networks import ARCHITECTURES
    from ..preprocessing import NORMALIZATIONS
    from ..training import TrainConfig as C

    p.add_argument("--data", help="dataset.json (training + unlabeled sections)")
    p.add_argument("--method", choices=sorted(METHODS), help=_default(C, "method"))
    p.add_argument("--out", help="model folder to write (default: the models folder / NAME)")
    p.add_argument("--name", help="model name (default: the folder name)")
    p.add_argument("--description")
    p.add_argument("--steps", type=_COUNT, help=f"training steps ({_default(C, 'steps')})")
    p.add_argument(
        "--batch", type=_COUNT, help=f"labelled patches per step, as many unlabelled ({_default(C, 'batch')})"
    )
    p.add_argument(
        "--patch",
        type=_triple(int, "z,y,x", positive=True),
        help=f"patch size z,y,x ({_default(C, 'patch_size')})",
    )
    p.add_argument(
        "--width", type=_POSITIVE, help=f"channel width multiplier, 1.0 = paper ({_default(C, 'width')})"
    )
    p.add_argument(
        "--dropout",
        type=_number(float, 0.0, 1.0, high_open=True),
        help="dropout rate of the networks (default: the method's, 0.5; embedding-matching 0.15)",
    )
    p.add_argument(
        "--network",
        choices=sorted(ARCHITECTURES),
        help="backbone; patch sides must be multiples of 4 (compact-unet) or 16 (vnet) "
        "(default: compact-unet, or the --init model's)",
    )
    p.add_argument("--lr", type=_POSITIVE, help="learning rate (default: the method's)")
    p.add_argument("--seed", type=_AMOUNT, help=_default(C, "seed"))
    p.add_argument("--val-cases", type=_AMOUNT, help="labelled cases held out (default 20%%)")
    p.add_argument("--val-every", type=_COUNT, help=_default(C, "val_every"))
    p.add_argument("--checkpoint-every", type=_COUNT, help=_default(C, "checkpoint_every"))
    p.add_argument(
        "--target-spacing",
        type=_triple(float, "x,y,z", positive=True),
        help="x,y,z mm (default: median spacing of the training images)",
    )
    p.add_argument(
        "--normalization",
        choices=NORMALIZATIONS,
        help="intensity normalisation (default: the --init model's, else percentile-zscore); "
        "fov-percentile-zscore takes the statistics inside the field of view only; fov-local-zscore "
        "standardises each voxel by its 3 mm neighbourhood in view (docs/ARCHITECTURE.md)",
    )
    p.add_argument(
        "--translation",
        type=_AMOUNT,
        help=f"random shift of patches around the centre, voxels ({_default(C, 'translation')})",
    )
    augment = p.add_mutually_exclusive_group()
    augment.add_argument(
        "--augment",
        choices=AUGMENTATIONS,
        help="standard: seed 000's rotation, mirroring and intensity scaling; scanner: also zoom, blur, "
        "noise, bias field, gamma and histogram shifts and a dimmer instrument, for other scanners; "
        "contrast: standard plus a dimmer instrument (docs/ARCHITECTURE.md); "
        f"none ({_default(C, 'augment')})",
    )
    augment.add_argument(
        "--no-augment", dest="augment", action="store_const", const="none", help="the same as --augment none"
    )
    p.add_argument(
        "--loader-workers",
        type=_AMOUNT,
        help="processes cutting and augmenting patches, to keep a GPU fed (default 0: the training "
        "process; a run is reproducible for a given number, bit-exact resume needs 0)",
    )
    p.add_argument("--device", type=_device, help=f"auto, cpu, cuda ({_default(C, 'device')})")
    p.add_argument(
        "--precision",
        choices=("fp32", "bf16", "auto"),
        help=f"bf16 autocast halves a CPU step on CPUs with AVX512-BF16/AMX ({_default(C, 'precision')})",
    )
    p.add_argument(
        "--nproc",
        type=_COUNT,
        help="processes on this machine, one per GPU (NCCL) or sharing the CPU cores (gloo), through "
        "torch's elastic launcher; --batch is per process (default 1; under torchrun leave it out)",
    )
    p.add_argument("--init", help="fine-tune from this model (folder or name)")
    p.add_argument("--option", type=_method_option, action="append", help="method option KEY=VALUE")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the interrupted run in --out (only --steps may change)",
    )
    p.add_argument("--progress", choices=("human", "json", "none"), default="human")
    p.set_defaults(func=cmd_train)
