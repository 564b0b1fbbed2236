"""The training panel's child-process commands and their environment (torch-free).

``[python, "-m", "SemiSupSegLib.cli", "train", ...]``, always an argument list, never a shell string
(:func:`training_command`, :func:`resume_command`, :func:`locator_command`, :func:`suggest_command`,
:func:`tool_command`, :func:`cli_command`), and the child's environment (:func:`child_environment`: the
engine on ``PYTHONPATH``; CPU mode hides the GPUs with ``CUDA_VISIBLE_DEVICES=-1``).
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .errors import InputError

ENGINE_DIR = Path(__file__).resolve().parents[1]  # the folder that holds the SemiSupSegLib package


@dataclass
class TrainRequest:
    """One training run, as the panel describes it; :meth:`arguments` are ``semisupseg train``'s.

    A field left None is not passed, so ``semisupseg train`` uses its own default: the one source of
    the training defaults is :class:`SemiSupSegLib.training.TrainConfig` (imported by the child
    only; this module stays torch-free).
    """

    data: str
    out: str
    method: str | None = None
    steps: int | None = None
    batch: int | None = None
    patch: tuple[int, int, int] | int | None = None
    width: float | None = None
    device: str = "auto"
    init: str | None = None
    val_cases: int | None = None
    val_every: int | None = None
    checkpoint_every: int | None = None
    seed: int | None = None
    lr: float | None = None
    augment: str | None = None  # augmentation.AUGMENTATIONS
    name: str | None = None
    description: str = ""
    options: dict = field(default_factory=dict)

    def arguments(self) -> list[str]:
        """The command-line arguments: the given fields only."""
        args = ["--data", str(self.data), "--out", str(self.out), "--device", device_argument(self.device)]
        optional = {
            "--method": self.method,
            "--steps": _integer(self.steps),
            "--batch": _integer(self.batch),
            "--patch": None if self.patch is None else ",".join(str(p) for p in patch_triple(self.patch)),
            "--width": None if self.width is None else _number(self.width),
            "--seed": _integer(self.seed),
            "--init": self.init,
            "--val-cases": _integer(self.val_cases),
            "--val-every": _integer(self.val_every),
            "--checkpoint-every": _integer(self.checkpoint_every),
            "--lr": None if self.lr is None else _number(self.lr),
            "--augment": self.augment,
            "--name": self.name,
        }
        for flag, value in optional.items():
            if value not in (None, ""):
                args += [flag, str(value)]
        if self.description:
            args += ["--description", str(self.description)]
        for key, value in sorted(self.options.items()):
            args += ["--option", f"{key}={json.dumps(value)}"]
        return args


def _integer(value: int | None) -> int | None:
    return None if value is None else int(value)


def patch_triple(values) -> tuple[int, int, int]:
    values = tuple(values) if not isinstance(values, int) else (values,) * 3
    if len(values) == 1:
        values = values * 3
    if len(values) != 3:
        raise InputError(f"a patch size needs 3 values, got {values}")
    return tuple(int(v) for v in values)  # type: ignore[return-value]


def _number(value: float) -> str:
    return repr(float(value)) if not float(value).is_integer() else str(float(value))


_GPU_LABEL = re.compile(r"gpu\s*(\d+)(:.*)?")
"""A panel's GPU entry, ``"GPU i: name (N GiB)"`` (``slicer_bridge.device_choices``), lower-cased."""


def device_argument(device: str) -> str:
    """The `--device` value for a device choice: auto, cpu, cuda, cuda:N, or a panel's GPU or "GPU i: ...".

    Raises:
        InputError: for anything else.
    """
    device = (device or "auto").strip().lower()
    if device in ("gpu", "cuda"):
        return "cuda"
    label = _GPU_LABEL.fullmatch(device)
    if label:
        return f"cuda:{int(label.group(1))}"
    if device not in ("auto", "cpu") and not re.fullmatch(r"cuda:\d+", device):
        raise InputError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N")
    return device


def python_command(python: str | None = None) -> list[str]:
    """The interpreter to run the engine with: ``python`` (e.g. Slicer's PythonSlicer) or this one."""
    return [str(python or sys.executable)]


def _module_command(module: str, arguments: Sequence, python: str | None) -> list[str]:
    return [str(a) for a in (*python_command(python), "-m", module, *arguments)]


def cli_command(subcommand: Sequence[str], arguments: Sequence[str], python: str | None = None) -> list[str]:
    return _module_command("SemiSupSegLib.cli", [*subcommand, *arguments], python)


def training_command(request: TrainRequest, python: str | None = None) -> list[str]:
    """``[python, -m, SemiSupSegLib.cli, train, ..., --progress, json]``."""
    return cli_command(["train"], [*request.arguments(), "--progress", "json"], python)


def resume_command(out: str | os.PathLike, python: str | None = None, locator: bool = False) -> list[str]:
    """Continue the interrupted run in ``out`` (its configuration is read from its checkpoint)."""
    sub = "train-locator" if locator else "train"
    return cli_command([sub], ["--out", str(out), "--resume", "--progress", "json"], python)


def locator_command(
    data: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    steps: int = 8000,
    device: str = "auto",
    val_cases: int | None = None,
    checkpoint_every: int | None = 250,
    python: str | None = None,
    points_only: bool = False,
) -> list[str]:
    """``semisupseg train-locator``: recognition from the datasets' masks, search from their centre points.

    ``points_only``: the paper's agent, from the centre points alone (no masks needed).
    """
    if not data:
        raise InputError("the locator needs at least one dataset.json with centre points")
    args: list[str] = []
    for path in data:
        args += ["--data", str(path)]
    args += ["--out", str(out), "--steps", str(int(steps)), "--device", device_argument(device)]
    if val_cases is not None:
        args += ["--val-cases", str(int(val_cases))]
    if checkpoint_every is not None:
        args += ["--checkpoint-every", str(int(checkpoint_every))]
    if points_only:
        args.append("--points-only")
    return cli_command(["train-locator"], [*args, "--progress", "json"], python)


def suggest_command(
    model: str | os.PathLike,
    data: str | os.PathLike,
    device: str = "auto",
    top: int | None = None,
    python: str | None = None,
) -> list[str]:
    """``semisupseg suggest --json --progress json``: the unlabelled cases of ``data`` ranked by the
    model's doubt; the ranking arrives in the ``finished`` event's ``result["ranking"]``."""
    args = ["--model", str(model), "--data", str(data), "--device", device_argument(device)]
    if top is not None:
        args += ["--top", str(int(top))]
    return cli_command(["suggest"], [*args, "--json", "--progress", "json"], python)


def tool_command(subcommand: str, arguments: Sequence[str], python: str | None = None) -> list[str]:
    """``python -m SemiSupSegLib.train_process estimate|compare ...`` (JSON lines on stdout)."""
    return _module_command("SemiSupSegLib.train_process", [subcommand, *arguments], python)


def child_environment(
    device: str = "auto", base: dict | None = None, engine_dir: str | os.PathLike = ENGINE_DIR
) -> dict[str, str]:
    """The child's environment: ``base`` (default: this process's) with the engine importable,
    unbuffered output, and on CPU no visible GPU (``CUDA_VISIBLE_DEVICES=-1``)."""
    env = {str(k): str(v) for k, v in (os.environ if base is None else base).items()}
    paths = [str(engine_dir)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONIOENCODING"] = "utf-8"
    if device_argument(device) == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = "-1"
    return env
