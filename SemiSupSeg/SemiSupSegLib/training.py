"""The training loop. It knows nothing about any particular method.

It owns data preparation, optimisers and their schedules, fixed seeds, periodic validation,
atomic checkpoints and resume, cancellation on SIGINT/SIGTERM, progress reporting, and writing
the final model folder. The method (see :mod:`SemiSupSegLib.methods`) owns its networks and
computes its losses. In a job of several processes (:mod:`SemiSupSegLib.distributed`) the loop is the
same: it calls the method through DistributedDataParallel, and only rank 0 touches the output folder.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from . import checkpoints
from .augmentation import DEFAULT_AUGMENTATION, augmentation_level
from .checkpoints import checkpoint_path, read_checkpoint, stop_on_signals, write_checkpoint
from .dataset import Case, load_dataset
from .distributed import Distributed, rank_seed
from .errors import InputError, ModelError, TrainingCancelled, TrainingDiverged
from .imageio import read_image
from .inference import resolve_precision
from .methods import Batch, Method, OptimizerSpec, get_method
from .model_store import LoadedModel, load_model, read_model_json, resolve_model, save_model
from .networks import ARCHITECTURES, NetworkConfig, size_divisor
from .patches import PatchSampler, PreparedCase, batch_stream, prepare_case
from .preprocessing import NORMALIZATIONS, Preprocessing, median_spacing
from .progress import Reporter
from .runlock import RunLock

DEFAULT_NETWORK = "compact-unet"
MAX_LOADER_WORKERS = 64  # processes cutting patches; more only exhausts the machine
MAX_BATCH_VOXELS = 16 * 256**3  # voxels of one step's labelled patches; beyond it memory runs out, slowly


@dataclass
class TrainConfig:
    """Everything a run depends on; stored in the checkpoint and summarised in ``model.json``."""

    data: str
    out: str
    method: str = "supervised"
    steps: int = 2000
    batch: int = 2
    patch_size: tuple[int, int, int] = (48, 48, 48)
    width: float = 1.0
    dropout: float | None = None  # None: the method's default (0.5; embedding-matching 0.15)
    network: str | None = None  # None: the --init model's backbone, else DEFAULT_NETWORK
    lr: float | None = None
    seed: int = 0
    val_cases: int | None = None
    val_every: int = 200
    checkpoint_every: int = 100
    target_spacing: tuple[float, float, float] | None = None
    normalization: str | None = None  # preprocessing.NORMALIZATIONS; None: the --init model's, else the first
    translation: int = 32
    augment: str = DEFAULT_AUGMENTATION  # augmentation.AUGMENTATIONS; a bool in configs stored before
    loader_workers: int = 0  # processes cutting patches (patches.batch_stream); 0: this process
    device: str = "auto"
    precision: str = "fp32"
    init: str | None = None
    name: str | None = None
    description: str = ""
    method_options: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.augment = augmentation_level(self.augment)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> TrainConfig:
        data = json.loads(text)
        for key in ("patch_size", "target_spacing"):
            if data.get(key) is not None:
                data[key] = tuple(data[key])
        return cls(**data)


def resolve_device(device: str) -> torch.device:
    """ "auto" picks CUDA when torch sees a GPU, otherwise the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("device 'cuda' was asked for but torch sees no GPU; use --device cpu or auto")
    try:
        chosen = torch.device(device)
    except (RuntimeError, TypeError):
        raise InputError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from None
    count = torch.cuda.device_count() if chosen.type == "cuda" else 0
    if chosen.type == "cuda" and chosen.index is not None and chosen.index >= count:
        raise InputError(
            f"GPU {device!r} does not exist: torch sees {count} GPU(s), cuda:0 to cuda:{count - 1}"
        )
    return chosen


def resume_seed(seed: int, step: int) -> int:
    """The random streams' seed of a run continued at ``step`` without stored states (an old checkpoint,
    or loader workers): ``seed * 1_000_003 + step``."""
    return seed * 1_000_003 + step


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


@dataclass
class ValidationCase:
    name: str
    image: sitk.Image
    label: sitk.Image
    center: tuple[float, float, float] | None


class Trainer:
    """Runs one training; ``run()`` returns the model folder."""

    def __init__(self, config: TrainConfig, reporter: Reporter | None = None) -> None:
        self.config = config
        self.dist = Distributed.from_environment()
        self.reporter = (reporter or Reporter()) if self.dist.is_main else Reporter()  # rank 0 reports
        self.out = Path(config.out)
        self.device = resolve_device(self.dist.device_name(config.device))
        self.precision = resolve_precision(config.precision, self.device)
        self._stop_requested = False
        self.history: list[dict] = []

    # --- setup ------------------------------------------------------------------------------
    def _split(self, cases: list[Case]) -> tuple[list[Case], list[Case]]:
        if not cases:
            raise InputError("no labelled training cases to train on")
        n_val = self.config.val_cases
        if n_val is None:
            n_val = max(1, round(0.2 * len(cases))) if len(cases) >= 3 else 0
        if n_val >= len(cases):
            raise InputError(
                f"{len(cases)} labelled case(s) cannot give {n_val} validation case(s) and still train"
            )
        return cases[: len(cases) - n_val], cases[len(cases) - n_val :]

    def _architecture(self) -> str:
        """The backbone that will train: the ``--init`` model's, else ``network`` (default compact-unet).

        Raises:
            InputError: an unknown network, or a ``network`` other than the ``--init`` model's.
        """
        chosen = self.config.network
        if chosen is not None and chosen not in ARCHITECTURES:
            raise InputError(f"unknown network {chosen!r}; known: {', '.join(sorted(ARCHITECTURES))}")
        if not self.config.init:
            return chosen or DEFAULT_NETWORK
        first = next(iter(read_model_json(resolve_model(self.config.init))["networks"].values()))
        stored = first.get("architecture", DEFAULT_NETWORK) if isinstance(first, dict) else DEFAULT_NETWORK
        if chosen is not None and chosen != stored:
            raise InputError(f"--network {chosen} differs from the {stored} network of the --init model")
        return stored if stored in ARCHITECTURES else DEFAULT_NETWORK

    def _initial_model(self) -> LoadedModel | None:
        return load_model(self.config.init) if self.config.init else None

    def _preprocessing(self, train_images: list[sitk.Image], init: LoadedModel | None) -> Preprocessing:
        """The parent's preprocessing when fine-tuning (a fine-tuned model must see data as its parent did),
        unless ``normalization`` asks for another intensity normalisation: the weights then adapt to it."""
        normalization = self.config.normalization
        if init is not None:
            if normalization is None:
                return init.preprocessing
            return replace(init.preprocessing, normalization=normalization)
        spacing = self.config.target_spacing or median_spacing(train_images)
        return Preprocessing(
            target_spacing=tuple(float(s) for s in spacing), normalization=normalization or NORMALIZATIONS[0]
        )

    def _network_config(self, init: LoadedModel | None) -> NetworkConfig:
        """The networks' configuration: the ``--init`` model's, else the configured backbone with one output
        channel per class of ``dataset.json``'s ``labels`` (K = 2 without labels).

        Raises:
            InputError: the ``--init`` model has another number of classes than the dataset.
        """
        if init is not None:
            first = NetworkConfig.from_dict(next(iter(init.meta["networks"].values())))
            if first.num_classes != self._num_classes():
                raise InputError(
                    f"the --init model has {first.num_classes} classes but the dataset's labels declare "
                    f"{self._num_classes()}; fine-tune on data with the same classes"
                )
            return first
        dropout = self.config.dropout
        if dropout is None:
            dropout = get_method(self.config.method).default_dropout
        network = self.config.network or DEFAULT_NETWORK
        return NetworkConfig(
            architecture=network, width=self.config.width, dropout=dropout, num_classes=self._num_classes()
        )

    def _num_classes(self) -> int:
        """K: the classes of the dataset's ``labels`` (0..K-1, checked by the dataset), at least 2."""
        dataset = getattr(self, "dataset", None)
        return max(2, dataset.num_classes) if dataset is not None else 2

    def _prepare(self, cases: list[Case], preprocessing: Preprocessing, labeled: bool) -> list[PreparedCase]:
        prepared = []
        for i, case in enumerate(cases):
            self.reporter.emit("preparing", case=case.name, index=i + 1, total=len(cases))
            image = read_image(case.image)
            label = read_image(case.label, what="label") if labeled and case.label else None
            prepared.append(prepare_case(case.name, image, label, case.center, preprocessing))
        return prepared

    def _build_method(self, network: NetworkConfig, init: LoadedModel | None) -> Method:
        options = dict(self.config.method_options)
        if self.config.lr is not None:
            options["lr"] = self.config.lr
        method = get_method(self.config.method)(network, self.config.steps, **options)
        if init is not None:
            state = {name: net.state_dict() for name, net in init.networks.items()}
            method.init_from(state)
        return method.to(self.device)

    # --- optimisation -----------------------------------------------------------------------
    @staticmethod
    def _optimizer(spec: OptimizerSpec) -> torch.optim.Optimizer:
        if spec.kind == "adam":
            return torch.optim.Adam(
                spec.parameters, lr=spec.lr, betas=spec.betas, weight_decay=spec.weight_decay
            )
        if spec.kind == "sgd":
            return torch.optim.SGD(
                spec.parameters,
                lr=spec.lr,
                momentum=spec.momentum,
                nesterov=spec.nesterov,
                weight_decay=spec.weight_decay,
            )
        raise ValueError(f"unknown optimiser kind {spec.kind!r}")

    def _scheduler(self, spec: OptimizerSpec, optimizer: torch.optim.Optimizer):
        total = max(1, self.config.steps)
        if spec.schedule == "constant":
            return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
        if spec.schedule == "poly":
            power = spec.schedule_options.get("power", 0.9)
            return torch.optim.lr_scheduler.LambdaLR(
                optimizer, lambda step: (1 - min(step, total - 1) / total) ** power
            )
        if spec.schedule == "step":
            return torch.optim.lr_scheduler.StepLR(
                optimizer,
                spec.schedule_options.get("step_size", 2500),
                spec.schedule_options.get("gamma", 0.1),
            )
        raise ValueError(f"unknown schedule {spec.schedule!r}")

    def _batches(self, sampler: PatchSampler, method: Method, start: int) -> Iterator[Batch]:
        """Batches on the device, cut here or by ``loader_workers`` processes (seeded by seed and step)."""
        cfg = self.config
        stream = batch_stream(
            sampler,
            cfg.batch,
            method.uses_unlabeled,
            workers=cfg.loader_workers,
            seed=rank_seed(resume_seed(cfg.seed, start), self.dist.rank),
            pin=self.device.type == "cuda",
        )
        return (Batch(*tensors).to(self.device) for tensors in stream)

    def _iteration(
        self, model: torch.nn.Module, method: Method, stages: list, batch: Batch, step: int
    ) -> dict[str, float]:
        """One step of every stage through ``model``: the method, or DDP around it."""
        logged: dict[str, float] = {}
        for spec, optimizer, scheduler in stages:
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
                losses = model(spec.stage, batch, step)
            loss = losses["loss"]
            if self.dist.any(not bool(torch.isfinite(loss)), self.device):  # every rank stops together
                raise TrainingDiverged(
                    f"the {spec.stage} loss became {loss.item()} at step {step}; try a lower --lr"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            prefix = "" if len(stages) == 1 else f"{spec.stage}/"
            logged.update({prefix + k: float(v.detach()) for k, v in losses.items()})
        method.after_iteration(step)
        return logged

    # --- checkpoints ------------------------------------------------------------------------
    def _checkpoint_path(self) -> Path:
        return checkpoint_path(self.out)

    def _save_checkpoint(self, method: Method, stages: list, sampler: PatchSampler, step: int) -> Path:
        """Everything the next step depends on: networks, optimisers, schedules and every random stream
        (rank 0's; every other rank only returns the path)."""
        path = self._checkpoint_path()
        if not self.dist.is_main:
            return path
        state = {
            "step": step,
            "config": self.config.to_json(),
            "history": json.dumps(self.history),
            "method": method.state_dict(),
            "optimizers": {spec.stage: opt.state_dict() for spec, opt, _ in stages},
            "schedulers": {spec.stage: sch.state_dict() for spec, _, sch in stages},
            "random": checkpoints.capture_random_state({"sampler": sampler.random_state()}),
            "world_size": self.dist.world_size,
        }
        write_checkpoint(path, state, self.reporter)
        return path

    def _load_checkpoint(self, method: Method, stages: list, sampler: PatchSampler) -> int:
        """Restore a checkpoint; return its step. The run then continues bit for bit as if never stopped.

        A checkpoint written before random states were stored (no ``"random"`` key) still resumes: the
        sampler and torch are then reseeded with ``seed * 1_000_003 + step``, so that run is reproducible
        but differs from an uninterrupted one. So does a run with ``loader_workers`` > 0: its workers'
        streams restart from ``seed * 1_000_003 + step`` (see :func:`~SemiSupSegLib.patches.batch_stream`),
        and a job of several processes (or resumed from one): rank 0 reads the checkpoint and sends it to
        the others, and every rank reseeds from the seed, the step and its rank (:func:`rank_seed`), so
        the job may resume with another number of processes.
        """
        path = self._checkpoint_path()
        state = self.dist.from_main(read_checkpoint(path, self.device) if self.dist.is_main else None)
        try:
            method.load_state_dict(state["method"])
            for spec, optimizer, scheduler in stages:
                optimizer.load_state_dict(state["optimizers"][spec.stage])
                scheduler.load_state_dict(state["schedulers"][spec.stage])
            step = int(state["step"])
            if "random" in state and not self.dist.active and state.get("world_size", 1) == 1:
                extra = checkpoints.restore_random_state(state["random"])
                sampler.set_random_state(extra["sampler"])
            else:
                seed = rank_seed(resume_seed(self.config.seed, step), self.dist.rank)
                sampler.reseed(seed)
                torch.manual_seed(seed)
        except (KeyError, RuntimeError, ValueError, TypeError) as exc:
            raise ModelError(f"checkpoint {path} is from another configuration: {exc}") from None
        self.history = json.loads(state.get("history", "[]"))
        return step

    @staticmethod
    def stored_config(out: str | Path) -> TrainConfig:
        """The configuration of an interrupted run, read from its checkpoint (for ``--resume``)."""
        return checkpoints.stored_config(out, TrainConfig.from_json)

    # --- validation -------------------------------------------------------------------------
    def _validate(self, method: Method, val: list[ValidationCase], preprocessing: Preprocessing) -> dict:
        from .inference import segment
        from .metrics import class_dice, segmentation_metrics, summarize

        method.eval()
        model = LoadedModel(
            path=self.out,
            meta=self._model_meta(method, preprocessing, {}),
            networks={n: method.networks()[n] for n in method.inference_network_names()},
            device=self.device,
            owns_networks=False,
        )
        rows = []
        for case in val:
            result = segment(model, case.image, case.center)
            pred = sitk.GetArrayViewFromImage(result.label)
            ref = sitk.GetArrayViewFromImage(case.label)
            row = segmentation_metrics(pred > 0, ref > 0, case.image.GetSpacing()[::-1])
            if model.num_classes > 2:  # Dice: the mean over the foreground classes (issue 15)
                row = {**row, **class_dice(pred, ref, model.num_classes)}
                row["dice"] = row["dice_mean"]
            rows.append(row)
        method.train()
        summary = summarize(rows)
        return {k: summary[k]["mean"] for k in ("dice", "hd95_mm") if k in summary}

    # --- the run ------------------------------------------------------------------------------
    def _model_meta(self, method: Method, preprocessing: Preprocessing, extra: dict) -> dict:
        dataset = getattr(self, "dataset", None)
        labels = dataset.labels if dataset is not None else {0: "background", 1: "foreground"}
        modality = dataset.modality if dataset is not None else ""
        return {
            "name": self.config.name or self.out.name,
            "description": self.config.description,
            "method": method.name,
            "modality": modality,
            "target": labels.get(1, "foreground"),
            "classes": {str(k): v for k, v in labels.items()},
            "patch_size": list(self.config.patch_size),
            "preprocessing": preprocessing.to_dict(),
            **extra,
        }

    def request_stop(self) -> None:
        self._stop_requested = True

    def run(self, resume: bool = False) -> Path:
        """Train (or continue with ``resume``) holding the lock on the output folder throughout."""
        network = self._architecture()
        divisor = size_divisor(network)
        if any(s % divisor for s in self.config.patch_size):
            raise InputError(
                f"patch size {self.config.patch_size} must be divisible by {divisor} on every axis "
                f"for the {network} network"
            )
        if not 0 <= self.config.loader_workers <= MAX_LOADER_WORKERS:
            raise InputError(
                f"--loader-workers must be 0 to {MAX_LOADER_WORKERS}, got {self.config.loader_workers}"
            )
        voxels = self.config.batch * math.prod(self.config.patch_size)
        if voxels > MAX_BATCH_VOXELS:
            raise InputError(
                f"--batch {self.config.batch} of {'x'.join(map(str, self.config.patch_size))} patches is "
                f"{voxels:.3g} voxels per step, above {MAX_BATCH_VOXELS:.3g} (16 patches of 256^3): no "
                "computer holds its activations; lower --batch or --patch"
            )
        created = self.dist.start(self.device)
        try:
            lock = self._acquire_lock()
            try:
                return self._run_locked(resume)
            finally:
                if lock is not None:
                    lock.release()
        finally:
            Distributed.finish(created)

    def _acquire_lock(self) -> RunLock | None:
        """Rank 0 locks the output folder before any data is read; every rank learns whether it could.

        Raises:
            InputError: another run writes this folder (on every rank, so that none waits for the others).
        """
        lock, refusal = None, None
        if self.dist.is_main:
            lock = RunLock(self.out)
            try:
                lock.acquire()
            except InputError as exc:
                refusal = str(exc)
        refusal = self.dist.from_main(refusal)
        if refusal is not None:
            raise InputError(refusal)
        return lock

    def _run_locked(self, resume: bool) -> Path:
        cfg = self.config
        seed_everything(rank_seed(cfg.seed, self.dist.rank))
        self.dataset = load_dataset(cfg.data)
        train_cases, val_cases = self._split(self.dataset.training)
        init = self._initial_model()
        train_images = [read_image(c.image) for c in train_cases]
        preprocessing = self._preprocessing(train_images, init)
        del train_images
        labeled = self._prepare(train_cases, preprocessing, labeled=True)
        method = self._build_method(self._network_config(init), init)
        unlabeled = (
            self._prepare(self.dataset.unlabeled, preprocessing, False) if method.uses_unlabeled else []
        )
        val = [  # validated by rank 0 alone
            ValidationCase(c.name, read_image(c.image), read_image(c.label, what="label"), c.center)
            for c in (val_cases if self.dist.is_main else [])
        ]
        sampler = PatchSampler(
            labeled,
            unlabeled,
            cfg.patch_size,
            rank_seed(cfg.seed, self.dist.rank),
            cfg.translation,
            augment=cfg.augment,
        )
        stages = [
            (spec, opt := self._optimizer(spec), self._scheduler(spec, opt)) for spec in method.optimizers()
        ]
        start = self._load_checkpoint(method, stages, sampler) if resume else 0
        model = self.dist.wrap(method)  # after the checkpoint: DDP starts every rank from rank 0's weights
        summary = {
            "method": method.name,
            "labeled": len(labeled),
            "unlabeled": len(unlabeled),
            "validation": len(val),
            "steps": cfg.steps,
            "start_step": start,
            "device": str(self.device),
            "precision": self.precision,
            "target_spacing": list(preprocessing.target_spacing or []),
            "world_size": self.dist.world_size,
            "global_batch": cfg.batch * self.dist.world_size,
        }
        self.reporter.emit("started", task="training", summary=summary, total=cfg.steps, step=start)
        method.train()
        t0 = time.monotonic()
        last_val: dict = self.history[-1]["metrics"] if self.history else {}
        report_every = max(1, cfg.steps // 200)
        batches = self._batches(sampler, method, start)
        with stop_on_signals(self.request_stop):
            for step in range(start, cfg.steps):
                losses = self._iteration(model, method, stages, next(batches), step)
                done = step + 1
                if done % report_every == 0 or done == cfg.steps:
                    rate = (time.monotonic() - t0) / (done - start)
                    self.reporter.emit(
                        "progress",
                        step=done,
                        total=cfg.steps,
                        losses=losses,
                        seconds_per_step=rate,
                        eta_seconds=rate * (cfg.steps - done),
                    )
                if val and (done % cfg.val_every == 0 or done == cfg.steps):
                    last_val = self._validate(method, val, preprocessing)
                    self.history.append({"step": done, "metrics": last_val})
                    self.reporter.emit("validation", step=done, total=cfg.steps, metrics=last_val)
                if self.dist.any(self._stop_requested, self.device):  # a signal on any rank stops all
                    self._save_checkpoint(method, stages, sampler, done)
                    self.reporter.emit(
                        "cancelled", step=done, message=f"stopped at step {done}; resume with --resume"
                    )
                    raise TrainingCancelled(f"training stopped at step {done}; the checkpoint is usable")
                if done % cfg.checkpoint_every == 0 and done < cfg.steps:
                    self._save_checkpoint(method, stages, sampler, done)
        elapsed = time.monotonic() - t0
        extra = {
            "training": {
                "dataset": str(Path(cfg.data).resolve()),
                "labeled_cases": [c.name for c in train_cases],
                "unlabeled_cases": len(unlabeled),
                "validation_cases": [c.name for c in val_cases],
                "world_size": self.dist.world_size,
                "global_batch": cfg.batch * self.dist.world_size,
                "config": json.loads(cfg.to_json()),
                "history": self.history,
            },
            "metrics": {"validation": last_val},
            "timings": {
                "train_seconds": round(elapsed, 1),
                "seconds_per_step": round(elapsed / max(1, cfg.steps - start), 4),
                "device": str(self.device),
            },
        }
        method.eval()
        if not self.dist.is_main:
            return self.out
        folder = save_model(
            self.out,
            method.networks(),
            self._model_meta(method, preprocessing, extra),
            method.inference_network_names(),
        )
        checkpoint = self._checkpoint_path()
        if checkpoint.exists():
            checkpoint.unlink()
        self.reporter.emit(
            "finished",
            step=cfg.steps,
            total=cfg.steps,
            model=str(folder),
            metrics=last_val,
            message=f"model written to {folder}",
        )
        return folder
