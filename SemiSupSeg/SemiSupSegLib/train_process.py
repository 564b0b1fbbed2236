"""Everything the Slicer training panel needs that does not need Slicer: it is tested with pytest.

* **Commands** for a training or locator-training child process: ``[python, "-m",
  "SemiSupSegLib.cli", "train", ...]``, always an argument list, never a shell string
  (:func:`training_command`, :func:`resume_command`, :func:`locator_command`), and its environment
  (:func:`child_environment`: the engine on ``PYTHONPATH``; CPU mode hides the GPUs with
  ``CUDA_VISIBLE_DEVICES=-1``).
* **The run state** (:class:`RunState`): step, total, ETA, current losses, the loss and validation
  histories, the checkpoint, the result; what the panel renders.
* The child process itself, its protocol reader and the tree kill live in :mod:`.childprocess`.
* **Data** (:func:`summarize_data`, :func:`build_run_dataset`): the labelled pool's
  ``dataset.json`` plus folders of unlabelled scans merged into one ``dataset.json`` for the run,
  with the validation cases (automatic or chosen) and every validation problem.
* **The time per step** (:func:`estimate_seconds_per_step`), measured on a short dry run.
* **The comparison** of a new model with the current one on the validation cases
  (:func:`compare_models`); the **default model** setting is :func:`.model_index.set_default_model`.

Long work (the estimate, the comparison) also runs as a child process speaking the same protocol:
``python -m SemiSupSegLib.train_process estimate|compare ...`` (see :func:`main`), so Slicer's GUI
never waits on torch. This module imports torch only inside the functions that need it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from . import model_index
from .childprocess import TERMINAL_EVENTS
from .errors import InputError, SemiSupSegError
from .model_index import home_dir

ENGINE_DIR = Path(__file__).resolve().parents[1]  # the folder that holds the SemiSupSegLib package
RUN_DATASET = "dataset.json"  # written into OUT/.training/ by build_run_dataset
_LABEL_SUFFIXES = ("-label", "_label", "-labels", "_labels", "_seg", "-seg", "_mask", "-mask")


# ============================================================================ commands and environment
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
    name: str | None = None
    description: str = ""
    options: dict = field(default_factory=dict)

    def arguments(self) -> list[str]:
        """The command-line arguments: the given fields only."""
        args = ["--data", str(self.data), "--out", str(self.out), "--device", _device(self.device)]
        optional = {
            "--method": self.method,
            "--steps": _integer(self.steps),
            "--batch": _integer(self.batch),
            "--patch": None if self.patch is None else ",".join(str(p) for p in _triple(self.patch)),
            "--width": None if self.width is None else _number(self.width),
            "--seed": _integer(self.seed),
            "--init": self.init,
            "--val-cases": _integer(self.val_cases),
            "--val-every": _integer(self.val_every),
            "--checkpoint-every": _integer(self.checkpoint_every),
            "--lr": None if self.lr is None else _number(self.lr),
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


def _triple(values) -> tuple[int, int, int]:
    values = tuple(values) if not isinstance(values, int) else (values,) * 3
    if len(values) == 1:
        values = values * 3
    if len(values) != 3:
        raise InputError(f"a patch size needs 3 values, got {values}")
    return tuple(int(v) for v in values)  # type: ignore[return-value]


def _number(value: float) -> str:
    return repr(float(value)) if not float(value).is_integer() else str(float(value))


def _device(device: str) -> str:
    device = (device or "auto").strip().lower()
    if device in ("gpu", "cuda"):
        return "cuda"
    if device not in ("auto", "cpu") and not device.startswith("cuda:"):
        raise InputError(f"unknown device {device!r}; use auto, cpu or cuda")
    return device


def python_command(python: str | None = None) -> list[str]:
    """The interpreter to run the engine with: ``python`` (e.g. Slicer's PythonSlicer) or this one."""
    return [str(python or sys.executable)]


def cli_command(subcommand: Sequence[str], arguments: Sequence[str], python: str | None = None) -> list[str]:
    command = [*python_command(python), "-m", "SemiSupSegLib.cli", *subcommand, *arguments]
    return [str(a) for a in command]


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
) -> list[str]:
    """``semisupseg train-locator`` from the centre points of the given datasets."""
    if not data:
        raise InputError("the locator needs at least one dataset.json with centre points")
    args: list[str] = []
    for path in data:
        args += ["--data", str(path)]
    args += ["--out", str(out), "--steps", str(int(steps)), "--device", _device(device)]
    if val_cases is not None:
        args += ["--val-cases", str(int(val_cases))]
    if checkpoint_every is not None:
        args += ["--checkpoint-every", str(int(checkpoint_every))]
    return cli_command(["train-locator"], [*args, "--progress", "json"], python)


def tool_command(subcommand: str, arguments: Sequence[str], python: str | None = None) -> list[str]:
    """``python -m SemiSupSegLib.train_process estimate|compare ...`` (JSON lines on stdout)."""
    command = [*python_command(python), "-m", "SemiSupSegLib.train_process", subcommand, *arguments]
    return [str(a) for a in command]


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
    if _device(device) == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = "-1"
    return env


# ============================================================================ the run state
@dataclass
class RunState:
    """What the panel shows about one run; :meth:`update` applies each protocol event."""

    task: str = ""
    status: str = "idle"  # idle starting preparing running stopping finished cancelled error
    step: int = 0
    total: int = 0
    start_step: int = 0
    seconds_per_step: float | None = None
    eta_seconds: float | None = None
    losses: dict = field(default_factory=dict)
    loss_history: list = field(default_factory=list)  # [(step, {name: value})]
    validation_history: list = field(default_factory=list)  # [(step, {metric: value})]
    summary: dict = field(default_factory=dict)
    preparing: tuple = ()  # (case, index, total)
    checkpoint: str | None = None
    checkpoint_step: int | None = None
    model: str | None = None
    metrics: dict = field(default_factory=dict)
    result: dict | None = None
    message: str = ""
    returncode: int | None = None

    def begin(self, task: str, keep_history: bool = False) -> None:
        """A new process starts (``keep_history`` when it resumes the same run)."""
        losses, validations = (self.loss_history, self.validation_history) if keep_history else ([], [])
        checkpoint = (self.checkpoint, self.checkpoint_step) if keep_history else (None, None)
        self.__init__(task=task, status="starting", loss_history=losses, validation_history=validations)
        self.checkpoint, self.checkpoint_step = checkpoint

    @property
    def done(self) -> bool:
        return self.status in TERMINAL_EVENTS

    @property
    def active(self) -> bool:
        return self.status in ("starting", "preparing", "running", "stopping")

    @property
    def fraction(self) -> float:
        return min(1.0, max(0.0, self.step / self.total)) if self.total else 0.0

    def update(self, event: dict) -> None:
        kind = event.get("event")
        handler = getattr(self, f"_on_{kind}", None)
        if handler is not None:
            handler(event)

    def _on_preparing(self, e: dict) -> None:
        self.status = "preparing" if self.status != "stopping" else self.status
        self.preparing = (str(e.get("case", "")), int(e.get("index") or 0), int(e.get("total") or 0))

    def _on_started(self, e: dict) -> None:
        if self.status != "stopping":
            self.status = "running"
        self.task = str(e.get("task") or self.task)
        self.step = self.start_step = int(e.get("step") or 0)
        self.total = int(e.get("total") or 0)
        self.summary = dict(e.get("summary") or {})
        # A resumed run restarts the histories at its first step.
        self.loss_history = [h for h in self.loss_history if h[0] <= self.start_step]
        self.validation_history = [h for h in self.validation_history if h[0] <= self.start_step]

    def _on_progress(self, e: dict) -> None:
        if self.status not in ("stopping",):
            self.status = "running"
        self.step = int(e.get("step") or self.step)
        self.total = int(e.get("total") or self.total)
        self.seconds_per_step = e.get("seconds_per_step")
        self.eta_seconds = e.get("eta_seconds")
        losses = {k: v for k, v in (e.get("losses") or {}).items()}
        self.losses = losses
        if losses:
            self.loss_history.append((self.step, losses))

    def _on_validation(self, e: dict) -> None:
        metrics = dict(e.get("metrics") or {})
        self.validation_history.append((int(e.get("step") or self.step), metrics))

    def _on_checkpoint(self, e: dict) -> None:
        self.checkpoint = e.get("path")
        self.checkpoint_step = int(e.get("step") or 0)

    def _on_finished(self, e: dict) -> None:
        self.status = "finished"
        self.step = int(e.get("step") or self.total or self.step)
        self.total = int(e.get("total") or self.total)
        self.eta_seconds = 0.0
        self.model = e.get("model")
        self.metrics = dict(e.get("metrics") or {})
        self.result = e.get("result")
        self.message = str(e.get("message") or "finished")

    def _on_cancelled(self, e: dict) -> None:
        self.status = "cancelled"
        self.step = int(e.get("step") or self.step)
        self.checkpoint_step = self.step
        self.message = str(e.get("message") or "stopped")

    def _on_error(self, e: dict) -> None:
        self.status = "error"
        self.message = str(e.get("message") or "the process reported an error")

    def stopping(self) -> None:
        if self.active:
            self.status = "stopping"

    def process_ended(self, returncode: int | None, log_tail: Sequence[str] = ()) -> None:
        """The child exited: without a final event, say why (its exit status and last output)."""
        self.returncode = returncode
        if self.done:
            return
        if self.status == "stopping":
            self.status = "cancelled"
            step = self.checkpoint_step
            where = f"; the checkpoint of step {step} is usable" if step else ""
            self.message = f"stopped (the process was ended){where}"
            return
        self.status = "error"
        tail = "\n".join(list(log_tail)[-8:])
        self.message = f"the process ended with status {returncode} without finishing" + (
            f":\n{tail}" if tail else ""
        )

    # --- what the panel shows -------------------------------------------------------------------
    def eta_text(self) -> str:
        return format_seconds(self.eta_seconds) if self.eta_seconds is not None else "--:--"

    def losses_text(self, digits: int = 4) -> str:
        return "  ".join(f"{k} {_fmt(v, digits)}" for k, v in self.losses.items())

    def status_text(self) -> str:
        if self.status == "preparing" and self.preparing:
            case, index, total = self.preparing
            return f"preparing case {index}/{total} ({case})"
        if self.status in ("running", "stopping"):
            speed = f", {self.seconds_per_step:.2f} s/step" if self.seconds_per_step else ""
            text = f"step {self.step}/{self.total}{speed}, ETA {self.eta_text()}"
            return text + (" - stopping, writing a checkpoint" if self.status == "stopping" else "")
        if self.status in TERMINAL_EVENTS:
            return self.message
        return self.status

    def loss_key(self) -> str | None:
        """``loss``, or with several optimiser stages the first stage's (``segmenters/loss``)."""
        for _, losses in self.loss_history:
            if "loss" in losses:
                return "loss"
            staged = [k for k in losses if k.endswith("/loss")]
            if staged:
                return staged[0]
        return None

    def loss_series(self, key: str | None = None) -> tuple[list[int], list[float]]:
        key = key or self.loss_key()
        if key is None:
            return [], []
        pairs = [(s, v[key]) for s, v in self.loss_history if isinstance(v.get(key), (int, float))]
        return [p[0] for p in pairs], [float(p[1]) for p in pairs]

    def validation_key(self) -> str | None:
        for _, metrics in self.validation_history:
            for key in ("dice", "median_vox", "mean_mm"):
                if key in metrics:
                    return key
        return None

    def validation_series(self, key: str | None = None) -> tuple[list[int], list[float]]:
        key = key or self.validation_key()
        if key is None:
            return [], []
        pairs = [(s, m[key]) for s, m in self.validation_history if isinstance(m.get(key), (int, float))]
        return [p[0] for p in pairs], [float(p[1]) for p in pairs]


def _fmt(value, digits: int) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) else str(value)


def format_seconds(seconds: float | None) -> str:
    seconds = max(0, int(seconds or 0))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60:02d}:{rest % 60:02d}"


# ============================================================================ data for a run
@dataclass
class DataSummary:
    """The cases a run would use, and every problem found, shown before starting."""

    pool: str
    labeled: int = 0
    unlabeled_pool: int = 0
    unlabeled_extra: int = 0
    test: int = 0
    with_center: int = 0
    validation: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    dataset: str | None = None

    @property
    def unlabeled(self) -> int:
        return self.unlabeled_pool + self.unlabeled_extra

    @property
    def training(self) -> int:
        return self.labeled - len(self.validation)

    @property
    def ok(self) -> bool:
        return not self.problems and self.training >= 1

    def text(self) -> str:
        lines = [
            f"{self.labeled} labelled case(s): {self.training} for training, "
            f"{len(self.validation)} for validation ({', '.join(self.validation) or 'none'})",
            f"{self.unlabeled} unlabelled case(s) ({self.unlabeled_pool} in the pool, "
            f"{self.unlabeled_extra} from the folders); {self.with_center} case(s) with a centre point",
        ]
        if self.test:
            lines.append(f"{self.test} test case(s) (not used for training)")
        lines += [f"note: {n}" for n in self.notes]
        if self.problems:
            lines.append(f"{len(self.problems)} problem(s):")
            lines += [f"  - {p}" for p in self.problems[:20]]
            if len(self.problems) > 20:
                lines.append(f"  ... and {len(self.problems) - 20} more")
        elif self.training < 1:
            lines.append("problem: no labelled case is left for training")
        return "\n".join(lines)


def scan_image_folder(folder: str | os.PathLike, recursive: bool = False) -> list[Path]:
    """Images the engine reads (NRRD, NIfTI, MetaImage headers) in ``folder``, sorted.

    Slicer segmentation files (``.seg.nrrd``) and files whose name ends like a label
    (``-label``, ``_seg``, ``_mask``...) are left out.
    """
    from .imageio import image_extension, strip_image_extension

    root = Path(folder).expanduser()
    if not root.is_dir():
        raise InputError(f"unlabelled folder '{root}' does not exist")
    files = root.rglob("*") if recursive else root.iterdir()
    found = []
    for path in files:
        if not path.is_file() or not image_extension(path) or path.name.lower().endswith(".seg.nrrd"):
            continue
        if strip_image_extension(path).lower().endswith(_LABEL_SUFFIXES):
            continue
        found.append(path.absolute())
    return sorted(found)


def _auto_validation(names: list[str]) -> list[str]:
    """The training loop's default: the last 20 % (at least 1) when there are 3 cases or more."""
    n = max(1, round(0.2 * len(names))) if len(names) >= 3 else 0
    return names[len(names) - n :] if n else []


def _merged_raw(
    pool: str | os.PathLike, unlabeled_folders: Sequence[str | os.PathLike], validation: Sequence[str] | None
) -> tuple[dict, DataSummary]:
    from .dataset import load_dataset
    from .errors import DatasetError
    from .imageio import strip_image_extension

    summary = DataSummary(pool=str(pool))
    try:
        ds = load_dataset(pool, validate=False)
    except DatasetError as exc:
        summary.problems = list(exc.problems)
        return {}, summary

    def entry(case, with_label: bool) -> dict:
        item = {"image": case.image.as_posix(), **case.extra}
        if with_label and case.label is not None:
            item["label"] = case.label.as_posix()
        if case.center is not None:
            item["center"] = [float(v) for v in case.center]
        return item

    names = [c.name for c in ds.training]
    if validation is None:
        chosen = _auto_validation(names)
    else:
        chosen = [str(v) for v in validation]
        unknown = [v for v in chosen if v not in names]
        if unknown:
            summary.problems.append(f"validation case(s) {unknown} are not labelled cases of {ds.path}")
            chosen = [v for v in chosen if v in names]
    training = [c for c in ds.training if c.name not in chosen] + [
        c for name in chosen for c in ds.training if c.name == name
    ]
    unlabeled = [entry(c, False) for c in ds.unlabeled]
    known_paths = {os.path.normcase(str(c.image)) for c in ds.cases()}
    known_names = {c.name for c in ds.unlabeled}
    extra = 0
    for folder in unlabeled_folders:
        try:
            images = scan_image_folder(folder)
        except InputError as exc:
            summary.problems.append(str(exc))
            continue
        if not images:
            summary.notes.append(f"no image the engine reads in '{folder}'")
        for image in images:
            name = strip_image_extension(image)
            if os.path.normcase(str(image)) in known_paths:
                continue  # already in the pool
            if name in known_names:
                summary.notes.append(f"skipped {image}: an unlabelled case named '{name}' is already used")
                continue
            known_paths.add(os.path.normcase(str(image)))
            known_names.add(name)
            unlabeled.append({"image": image.as_posix()})
            extra += 1
    raw = {key: value for key, value in ds.raw.items() if key not in ("training", "unlabeled", "test")}
    raw.update(
        name=ds.name,
        labels={str(k): v for k, v in ds.labels.items()},
        training=[entry(c, True) for c in training],
        unlabeled=unlabeled,
        test=[entry(c, True) for c in ds.test],
        semisupseg_run={
            "pool": str(ds.path),
            "unlabeled_folders": [str(Path(f).expanduser().absolute()) for f in unlabeled_folders],
            "validation": chosen,
        },
    )
    summary.labeled = len(ds.training)
    summary.unlabeled_pool = len(ds.unlabeled)
    summary.unlabeled_extra = extra
    summary.test = len(ds.test)
    summary.with_center = sum(c.center is not None for c in (*ds.training, *ds.unlabeled))
    summary.validation = chosen
    if chosen and len(chosen) >= len(ds.training):
        summary.problems.append(
            f"{len(ds.training)} labelled case(s) cannot give {len(chosen)} validation case(s) "
            "and still train"
        )
    if not ds.training:
        summary.problems.append(f"the labelled pool {ds.path} has no labelled case")
    return raw, summary


def build_run_dataset(
    pool: str | os.PathLike,
    unlabeled_folders: Sequence[str | os.PathLike] = (),
    out_json: str | os.PathLike | None = None,
    validation: Sequence[str] | None = None,
    check_images: bool = True,
) -> DataSummary:
    """Merge the labelled pool and the unlabelled folders into one ``dataset.json`` and check it.

    The labelled cases are ordered so that the validation cases (``validation`` names, or the
    training loop's automatic choice when None) come last: train with ``--val-cases
    len(summary.validation)``. Paths are absolute. With ``out_json`` the file is written there
    (atomically) and ``summary.dataset`` names it; otherwise it is only checked. The summary lists
    every problem ``validate_dataset`` finds (each naming its case).
    """
    from .atomic import atomic_write_json
    from .dataset import load_dataset, validate_dataset

    raw, summary = _merged_raw(pool, list(unlabeled_folders), validation)
    if not raw:
        return summary
    with tempfile.TemporaryDirectory(prefix="semisupseg-data-") as tmp:
        target = Path(out_json) if out_json else Path(tmp) / RUN_DATASET
        atomic_write_json(target, raw)
        dataset = load_dataset(target, validate=False)
        summary.problems += validate_dataset(dataset, check_images=check_images)
        if out_json:
            summary.dataset = str(Path(out_json).absolute())
    return summary


def summarize_data(
    pool: str | os.PathLike,
    unlabeled_folders: Sequence[str | os.PathLike] = (),
    validation: Sequence[str] | None = None,
    check_images: bool = True,
) -> DataSummary:
    """Counts and problems of a run's data, without writing anything."""
    return build_run_dataset(pool, unlabeled_folders, None, validation, check_images)


def models_folder() -> Path:
    return home_dir() / "models"


def locators_folder() -> Path:
    return home_dir() / "locators"


def scan_models(root: str | os.PathLike | None = None, include_shipped: bool = True) -> list[dict]:
    """Models in the models folder (then the shipped ones) from their ``model.json`` alone, without
    torch (see :func:`SemiSupSegLib.model_index.list_models`)."""
    return model_index.list_models(root, include_shipped)


def default_pool() -> Path:
    """The labelled pool the segmentation panel writes by default."""
    return home_dir() / "pool" / "dataset.json"


def run_dataset_path(out: str | os.PathLike) -> Path:
    return Path(out) / ".training" / RUN_DATASET


def new_run_folder(name: str, root: str | os.PathLike | None = None) -> Path:
    """A folder for a new model in the models folder (``root``): ``name``, or ``name-2``... if taken."""
    root = Path(root) if root is not None else models_folder()
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in name.strip()).strip(".-") or "model"
    candidate, n = root / safe, 1
    while candidate.exists():
        n += 1
        candidate = root / f"{safe}-{n}"
    return candidate


def checkpoint_path(out: str | os.PathLike) -> Path:
    return Path(out) / ".training" / "checkpoint.pt"


def resumable_runs(root: str | os.PathLike | None = None) -> list[dict]:
    """Interrupted runs in the models (or locators) folder: a checkpoint and no live lock."""
    from .runlock import is_locked

    root = Path(root) if root is not None else models_folder()
    runs = []
    if not root.is_dir():
        return runs
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        checkpoint = checkpoint_path(folder)
        if checkpoint.is_file():
            holder = is_locked(folder)
            runs.append(
                {
                    "out": str(folder),
                    "checkpoint": str(checkpoint),
                    "modified": checkpoint.stat().st_mtime,
                    "locked": holder is not None,
                    "holder": holder,
                }
            )
    return runs


# ============================================================================ time per step
def estimate_seconds_per_step(
    method: str | None = None,
    patch: Sequence[int] | int | None = None,
    batch: int | None = None,
    width: float | None = None,
    device: str = "auto",
    steps: int = 3,
    options: dict | None = None,
    precision: str | None = None,
) -> dict:
    """Seconds per training step, measured on a short dry run of random tensors.

    The method is built exactly as the training builds it (its networks, all its optimiser stages,
    its losses and its unlabelled batch) and runs one untimed warm-up step then ``steps`` timed
    steps of ``compute_losses`` + backward + optimiser step on random patches of the chosen size.
    Data loading and augmentation (small next to a 3D network's backward) and validation are not
    included, and the first real steps are often a little slower. Reading no data makes the estimate
    take seconds, not minutes, whatever the size of the pool. On CUDA the peak memory is reported
    too, so the panel can suggest a lighter setting before a run fails. A setting left None is
    :class:`~SemiSupSegLib.training.TrainConfig`'s default.
    """
    import torch

    from .methods import Batch, get_method
    from .networks import NetworkConfig
    from .training import TrainConfig, Trainer, resolve_device

    method = method or TrainConfig.method
    patch = _triple(TrainConfig.patch_size if patch is None else patch)
    batch = TrainConfig.batch if batch is None else batch
    width = TrainConfig.width if width is None else width
    precision = precision or TrainConfig.precision
    if any(p % 4 for p in patch):
        raise InputError(f"patch size {patch} must be divisible by 4 on every axis")
    if batch < 1 or steps < 1 or width <= 0:
        raise InputError("batch and steps must be at least 1 and width positive")
    dev = resolve_device(_device(device))
    try:
        cls = get_method(method)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    generator = torch.Generator().manual_seed(0)
    model = cls(NetworkConfig(width=float(width)), max(steps + 1, 100), **(options or {})).to(dev)
    model.train()
    stages = [(spec, Trainer._optimizer(spec)) for spec in model.optimizers()]
    shape = (batch, 1, *patch)
    images = torch.randn(shape, generator=generator)
    labels = (torch.rand(shape, generator=generator) > 0.9).long()
    unlabeled = torch.randn(shape, generator=generator) if cls.uses_unlabeled else None
    data = Batch(images, labels, unlabeled).to(dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)

    def one_step(step: int) -> None:
        for spec, optimizer in stages:
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                loss = model.compute_losses(spec.stage, data, step)["loss"]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        model.after_iteration(step)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    t0 = time.perf_counter()
    one_step(0)
    warmup = time.perf_counter() - t0
    t0 = time.perf_counter()
    for step in range(1, steps + 1):
        one_step(step)
    per_step = (time.perf_counter() - t0) / steps
    result = {
        "method": method,
        "patch": list(patch),
        "batch": int(batch),
        "width": float(width),
        "device": str(dev),
        "steps_timed": int(steps),
        "seconds_per_step": per_step,
        "warmup_seconds": warmup,
        "parameters": int(sum(p.numel() for p in model.parameters())),
    }
    if dev.type == "cuda":
        result["peak_memory_mb"] = torch.cuda.max_memory_allocated(dev) / 2**20
        result["gpu_memory_mb"] = torch.cuda.get_device_properties(dev).total_memory / 2**20
    return result


# ============================================================================ comparison and default
COMPARED_METRICS = ("dice", "jaccard", "hd95_mm", "asd_mm")


def comparison_cases(model: str | os.PathLike, data: str | os.PathLike | None = None) -> tuple[list, str]:
    """The validation cases recorded in the model's ``model.json`` (names in its training data),
    else the labelled test cases of that data; and which of the two they are."""
    from .dataset import load_dataset
    from .model_store import read_model_json, resolve_model

    meta = read_model_json(resolve_model(model))
    training = meta.get("training") or {}
    data = data or training.get("dataset")
    if not data:
        raise InputError(f"model {model} records no training data; give the dataset to compare on")
    dataset = load_dataset(data)
    names = list(training.get("validation_cases") or [])
    cases = [c for c in dataset.training if c.name in names and c.label is not None]
    if cases:
        return cases, "validation"
    cases = [c for c in dataset.test if c.label is not None]
    if cases:
        return cases, "test"
    raise InputError(f"{dataset.path} has no validation or labelled test case to compare the models on")


def compare_models(
    new: str | os.PathLike,
    current: str | os.PathLike | None,
    data: str | os.PathLike | None = None,
    device: str = "auto",
    precision: str = "auto",
    on_case: Callable[[int, int, str], None] | None = None,
) -> dict:
    """Segment the validation cases with the new and the current model; rows side by side.

    Returns ``{"cases_from", "new": {name, path}, "current": {...} | None, "rows": [{"case",
    "new": {metric: value}, "current": {...}}], "summary": {"new": {metric: mean}, "current":
    {...}}, "better": bool | None}``; ``better`` compares the mean Dice.
    """
    import SimpleITK as sitk

    from .imageio import read_image
    from .inference import segment
    from .metrics import segmentation_metrics
    from .model_store import load_model
    from .training import resolve_device

    cases, cases_from = comparison_cases(new, data)
    dev = resolve_device(_device(device))
    models = {"new": load_model(new, dev)}
    if current:
        models["current"] = load_model(current, dev)
    rows = []
    for i, case in enumerate(cases):
        if on_case is not None:
            on_case(i, len(cases), case.name)
        image = read_image(case.image)
        reference = sitk.GetArrayViewFromImage(read_image(case.label, what="label")) > 0
        row: dict = {"case": case.name}
        for key, model in models.items():
            result = segment(model, image, case.center, precision=precision)
            pred = sitk.GetArrayViewFromImage(result.label) > 0
            metrics = segmentation_metrics(pred, reference, image.GetSpacing()[::-1])
            row[key] = {m: float(metrics[m]) for m in COMPARED_METRICS} | {"seconds": result.seconds}
        rows.append(row)
    summary = {
        key: {m: float(sum(r[key][m] for r in rows) / len(rows)) for m in (*COMPARED_METRICS, "seconds")}
        for key in models
    }
    better = summary["new"]["dice"] >= summary["current"]["dice"] if "current" in summary else None
    described = {key: {"name": m.name, "path": str(m.path)} for key, m in models.items()}
    return {
        "cases_from": cases_from,
        "new": described["new"],
        "current": described.get("current"),
        "rows": rows,
        "summary": summary,
        "better": better,
    }


def comparison_table(result: dict, metrics: Sequence[str] = ("dice", "hd95_mm")) -> list[list[str]]:
    """Rows of text for a side-by-side table: case, then each metric new / current."""
    has_current = result.get("current") is not None
    header = ["case"]
    for m in metrics:
        header += [f"{m} new"] + ([f"{m} current"] if has_current else [])
    table = [header]
    for row in [*result["rows"], {"case": "mean", **result["summary"]}]:
        cells = [row["case"]]
        for m in metrics:
            cells.append(f"{row['new'][m]:.3f}")
            if has_current:
                cells.append(f"{row['current'][m]:.3f}")
        table.append(cells)
    return table


# ============================================================================ child-process entry


def _parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m SemiSupSegLib.train_process", description="helpers of the training panel"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    est = sub.add_parser("estimate", help="seconds per training step, measured on a short dry run")
    est.add_argument("--method", default=None, help="default: semisupseg train's")
    est.add_argument("--patch", default=None)
    est.add_argument("--batch", type=int, default=None)
    est.add_argument("--width", type=float, default=None)
    est.add_argument("--device", default="auto")
    est.add_argument("--steps", type=int, default=3)
    cmp_ = sub.add_parser("compare", help="the new and the current model on the validation cases")
    cmp_.add_argument("--new", required=True)
    cmp_.add_argument("--current", default=None)
    cmp_.add_argument("--data", default=None)
    cmp_.add_argument("--device", default="auto")
    return parser.parse_args(list(argv))


def _patch_text(text: str | None) -> list[int] | None:
    """``"48,48,48"`` (or ``"48"``) -> the patch size; None stays None (the training default)."""
    return None if text is None else [int(p) for p in str(text).replace(";", ",").split(",") if p.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    """``estimate`` and ``compare`` as child processes: protocol lines with task "estimate" or
    "comparison"; ``finished`` carries the ``result``; a bad input gives ``error`` and status 2."""
    from .progress import JsonLinesReporter

    args = _parse_args(sys.argv[1:] if argv is None else argv)
    reporter = JsonLinesReporter()
    task = "estimate" if args.command == "estimate" else "comparison"
    try:
        if args.command == "estimate":
            reporter.emit("started", task=task, step=0, total=1, summary=vars(args))
            result = estimate_seconds_per_step(
                args.method, _patch_text(args.patch), args.batch, args.width, args.device, args.steps
            )
            message = f"{result['seconds_per_step']:.2f} s per step on {result['device']}"
        else:
            reporter.emit("started", task=task, step=0, total=0, summary=vars(args))

            def on_case(i: int, n: int, name: str) -> None:
                reporter.emit("progress", step=i, total=n, losses={}, case=name)

            result = compare_models(args.new, args.current, args.data, args.device, on_case=on_case)
            message = f"compared on {len(result['rows'])} {result['cases_from']} case(s)"
    except (SemiSupSegError, ValueError, OSError) as exc:
        reporter.emit("error", message=str(exc))
        print(f"semisupseg: error: {exc}", file=sys.stderr)
        return 2
    reporter.emit("finished", step=1, total=1, result=result, message=message)
    return 0


if __name__ == "__main__":
    sys.exit(main())
