"""Training the DQN locator (``semisupseg train-locator``): recognition from masks, search from points.

**[decision] (locator II, issue 11).** With ``recognition`` (the default) a small instrument-likelihood
network is first trained on the voxel masks of the labelled (``training``) cases
(:mod:`.recognition`); its map becomes state channels of the DQN. The DQN learns the search from the
centre points of every case with a ``center``, labelled and unlabelled. ``recognition=False`` is the
paper's points-only agent (labels never read). ``test`` is left for evaluation.

Every case with a ``center`` in the ``training`` and ``unlabeled`` sections of the given datasets is
used for the search. A few are held out to report the
localisation error as training goes. ``agents`` episodes run in parallel: each picks a volume and a
scale; at the coarsest scale it starts anywhere, at finer scales mostly near the target (within 3
steps of the coarser scale, where the coarser search leaves it), as in the multi-scale search. Every
step moves all agents ε-greedily (one batched forward), stores the transitions (positions only) and
does one Huber-loss update on a replay batch whose crops are re-cut. Rewards are divided by the
step length in mm (so ±1 is a whole step towards/away from the target at every scale); a refused
move stays ``-1``.

With ``keep_best`` (default) the locator written is the network of the validation with the lowest mean
error (the DQN's greedy policy fluctuates a lot between validations); ``locator.json`` records the step.

Checkpoints (networks, optimiser, replay memory) are written atomically to ``OUT/.training``; SIGINT
or SIGTERM writes one and raises :class:`TrainingCancelled`; ``resume=True`` continues.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from .. import checkpoints
from ..checkpoints import checkpoint_path, read_checkpoint, stop_on_signals, write_checkpoint
from ..dataset import Case, load_dataset
from ..errors import InputError, ModelError, TrainingCancelled, TrainingDiverged
from ..imageio import read_image
from ..progress import Reporter
from ..runlock import RunLock
from ..training import resolve_device, seed_everything
from .agent import DQNAgent, EpsilonSchedule, QNetworkConfig, ReplayMemory
from .environment import (
    ACTIONS,
    DEFAULT_CROP,
    DEFAULT_GRID,
    DEFAULT_SCALES,
    HISTORY,
    CropSampler,
    GridVolume,
    check_levels,
    check_volume,
    move,
    prepare_volume,
    reward,
)
from .locate import search_volume
from .recognition import (
    MULTIPLE,
    TRAINING_BY_STRIDE,
    RecognitionConfig,
    RecognitionNet,
    confidence_threshold,
    grid_mask,
    mask_overlap,
    point_confidence,
    recognizer,
    train_recognition,
)
from .store import DEFAULT_SEARCH, save_locator

NEAR_PROBABILITY = 0.85
HIT_VOXELS = 10.0  # a located point within this many grid voxels of the centre is a hit (confidence)
RECOGNITION_CHANNELS = 2  # likelihood crops at the agent's scale and one coarser
# Augmentation: each volume also appears mirrored along y, x or both (the probe stays on top, along z).
VARIANTS = 4


@dataclass
class LocatorTrainConfig:
    """Everything a locator training depends on; stored in the checkpoint and in ``locator.json``."""

    data: list[str]
    out: str
    steps: int = 8000
    agents: int = 8
    batch: int = 32
    lr: float = 3e-4
    gamma: float = 0.9
    double: bool = True
    dueling: bool = True
    all_actions: bool = False
    grid: int = DEFAULT_GRID
    crop: int = DEFAULT_CROP
    scales: tuple[int, ...] = DEFAULT_SCALES
    levels: str = "box"
    context: bool = False
    recognition: bool = True
    recognition_steps: int = 3000
    recognition_width: int = 12
    recognition_stride: int = 2  # 1: the likelihood network at the grid's resolution (recognition.py)
    # None: the stride's measured setting (recognition.TRAINING_BY_STRIDE)
    recognition_lr: float | None = None
    recognition_patch: int | None = None
    refine: bool = True
    width: int = 16
    memory: int = 100_000
    warmup: int = 1000
    target_every: int = 250
    episode_steps: int = 20
    epsilon_end: float = 0.1
    epsilon_fraction: float = 0.4
    augment: bool = True
    keep_best: bool = True
    starts: int = DEFAULT_SEARCH["starts"]
    val_cases: int | None = None
    val_every: int = 500
    checkpoint_every: int = 500
    seed: int = 0
    device: str = "auto"
    name: str | None = None
    description: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> LocatorTrainConfig:
        data = json.loads(text)
        data["scales"] = tuple(data["scales"])
        data.setdefault("recognition", False)  # runs started before locator II were points-only
        return cls(**data)

    def check(self) -> None:
        check_levels(self.levels)
        if self.crop % 2 == 0 or self.crop < 5:
            raise InputError(f"crop size {self.crop} must be odd and at least 5")
        if self.grid < self.crop:
            raise InputError(f"grid {self.grid} must be at least the crop size {self.crop}")
        if list(self.scales) != sorted(self.scales, reverse=True) or min(self.scales) < 1:
            raise InputError(f"scales {self.scales} must be decreasing positive integers, e.g. 9,3,1")
        if self.steps < 1 or self.agents < 1 or self.batch < 1:
            raise InputError("steps, agents and batch must be positive")
        if not 1 <= self.starts <= 9:
            raise InputError(f"starts must be between 1 and 9, not {self.starts}")
        if self.refine and not self.recognition:
            self.refine = False  # refinement needs the likelihood map
        if self.recognition_stride not in TRAINING_BY_STRIDE:
            raise InputError(f"recognition stride {self.recognition_stride} must be 1 or 2")
        training = self.recognition_training()
        if training["patch"] % MULTIPLE or training["patch"] < MULTIPLE:  # above the grid: the grid is used
            raise InputError(
                f"recognition patch {training['patch']} must be a positive multiple of {MULTIPLE}"
            )
        if not 0.0 < training["lr"] <= 1.0:
            raise InputError(f"recognition learning rate {training['lr']} must be in (0, 1]")

    def recognition_training(self) -> dict:
        """The likelihood network's Adam learning rate and training crop: the flags, else the stride's
        measured setting (:data:`~.recognition.TRAINING_BY_STRIDE`)."""
        measured = TRAINING_BY_STRIDE[self.recognition_stride]
        lr = measured["lr"] if self.recognition_lr is None else self.recognition_lr
        patch = measured["patch"] if self.recognition_patch is None else self.recognition_patch
        return {"lr": float(lr), "patch": int(patch)}


@dataclass
class PreparedCase:
    name: str
    volume: GridVolume
    target: np.ndarray  # continuous grid index (z, y, x)


def centre_cases(data: list[str]) -> list[Case]:
    """Every ``training`` and ``unlabeled`` case with a centre, over all datasets; error if none."""
    cases: list[Case] = []
    for path in data:
        dataset = load_dataset(path)
        cases += [c for c in (*dataset.training, *dataset.unlabeled) if c.center is not None]
    if not cases:
        raise InputError(
            f"no case with a 'center' in the training or unlabeled sections of {', '.join(data)}; "
            "the locator learns from centre points (LPS mm)"
        )
    return cases


def split_cases(cases: list[Case], n_val: int | None) -> tuple[list[Case], list[Case]]:
    """Hold out ``n_val`` cases spread evenly over the list (so over every dataset given).

    Default: 10 %, at least 1, when there are 3 cases or more.
    """
    if n_val is None:
        n_val = max(1, round(0.1 * len(cases))) if len(cases) >= 3 else 0
    if n_val >= len(cases):
        raise InputError(f"{len(cases)} case(s) with a centre cannot give {n_val} validation case(s)")
    held = set(np.linspace(len(cases) - 1, 0, n_val).round().astype(int).tolist()) if n_val else set()
    return [c for i, c in enumerate(cases) if i not in held], [c for i, c in enumerate(cases) if i in held]


def validation_errors(rows: list[dict]) -> dict[str, float]:
    """Summary of per-case localisation errors (grid voxels and mm)."""
    vox = np.array([r["error_vox"] for r in rows])
    mm = np.array([r["error_mm"] for r in rows])
    return {
        "median_vox": float(np.median(vox)),
        "mean_vox": float(vox.mean()),
        "mean_mm": float(mm.mean()),
        "within10_pct": float(100.0 * np.mean(vox <= 10.0)),
    }


def step_reward(
    previous: np.ndarray,
    new: np.ndarray,
    targets: np.ndarray,
    spacing_zyx: np.ndarray,
    refused: np.ndarray,
    step: np.ndarray,
) -> np.ndarray:
    """The training reward: ``d(previous) - d(new)`` in mm divided by the step length in mm, in [-1, 1].

    Dividing by the step makes +-1 a whole step towards/away from the target at every scale; a refused
    move keeps its ``-1``.
    """
    gain = reward(previous, new, targets, spacing_zyx, refused)
    step_mm = np.asarray(step) * np.asarray(spacing_zyx).mean(axis=1)
    return np.where(refused, gain, np.clip(gain / step_mm, -1.0, 1.0))


def all_action_outcomes(
    positions: np.ndarray, step: np.ndarray, targets: np.ndarray, spacing_zyx: np.ndarray, grid: int
) -> tuple[np.ndarray, np.ndarray]:
    """Next positions ``[N, 6, 3]`` and training rewards ``[N, 6]`` of every action from ``positions``.

    The dynamics are known during training, so all 6 outcomes are computed, not only the action taken.
    """
    n, n_actions = len(positions), len(ACTIONS)
    each = lambda a: np.repeat(np.asarray(a), n_actions, axis=0)  # noqa: E731  one row per (sample, action)
    actions = np.tile(np.arange(n_actions), n)
    new, refused = move(each(positions), actions, each(step), grid)
    rewards = step_reward(each(positions), new, each(targets), each(spacing_zyx), refused, each(step))
    return new.reshape(n, n_actions, 3), rewards.reshape(n, n_actions)


def decode_variant(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Volume index and mirror flags ([N, 3] z, y, x) of augmented volume ids ``volume * 4 + variant``."""
    ids = np.asarray(ids, dtype=np.int64)
    variant = ids % VARIANTS
    flips = np.stack([np.zeros_like(variant, bool), variant & 1 > 0, variant & 2 > 0], axis=-1)
    return ids // VARIANTS, flips


def variant_targets(targets: np.ndarray, grid: int) -> np.ndarray:
    """Targets ``[n * 4, 3]`` of every augmented volume id."""
    ids = np.arange(len(targets) * VARIANTS)
    base, flips = decode_variant(ids)
    return np.where(flips, grid - 1 - targets[base], targets[base])


class _Episodes:
    """The training agents' state: (augmented) volume, position, history, scale and episode step."""

    def __init__(self, cfg: LocatorTrainConfig, cases: list[PreparedCase], rng: np.random.Generator) -> None:
        self.cfg, self.cases, self.rng = cfg, cases, rng
        n = cfg.agents
        self.volume = np.zeros(n, np.int64)
        self.scale = np.zeros(n, np.int64)
        self.pos = np.zeros((n, 3), np.int64)
        self.history = np.zeros((n, HISTORY, 3), np.int64)
        self.t = np.zeros(n, np.int64)
        self.targets = variant_targets(np.stack([c.target for c in cases]), cfg.grid)
        self.spacing = np.repeat(np.stack([c.volume.geometry.spacing_zyx for c in cases]), VARIANTS, axis=0)
        self.reset(np.arange(n))

    def reset(self, idx: np.ndarray) -> None:
        cfg, rng, n = self.cfg, self.rng, len(idx)
        variants = VARIANTS if cfg.augment else 1
        self.volume[idx] = rng.integers(0, len(self.cases), n) * VARIANTS + rng.integers(0, variants, n)
        self.scale[idx] = rng.integers(0, len(cfg.scales), n)
        anywhere = rng.integers(0, cfg.grid, (n, 3))
        coarser = np.asarray(cfg.scales)[np.maximum(self.scale[idx] - 1, 0)]
        offset = rng.uniform(-1, 1, (n, 3)) * 3 * coarser[:, None]
        near = np.clip(np.rint(self.targets[self.volume[idx]] + offset), 0, cfg.grid - 1).astype(np.int64)
        use_near = (self.scale[idx] > 0) & (rng.random(n) < NEAR_PROBABILITY)
        self.pos[idx] = np.where(use_near[:, None], near, anywhere)
        self.history[idx] = self.pos[idx][:, None, :]
        self.t[idx] = 0


def _split_ids(ids: np.ndarray, history: np.ndarray, scale: np.ndarray) -> tuple:
    """Arguments of :meth:`CropSampler.states` for augmented volume ids."""
    base, flips = decode_variant(ids)
    return base, history, scale, flips


class LocatorTrainer:
    """Runs one locator training; ``run()`` returns the locator folder."""

    def __init__(self, config: LocatorTrainConfig, reporter: Reporter | None = None) -> None:
        config.check()
        self.config = config
        self.reporter = reporter or Reporter()
        self.out = Path(config.out)
        self.device = resolve_device(config.device)
        self.history: list[dict] = []
        self.best: dict | None = None  # {"step", "metrics", "state"}: the best validation so far
        self.recognizer: RecognitionNet | None = None
        self.recognition_summary: dict = {}
        self._t_start = time.monotonic()
        self._seconds_before = 0.0  # wall time of the sessions before a resume (from the checkpoint)
        self._stop_requested = False

    def request_stop(self) -> None:
        self._stop_requested = True

    # --- data -------------------------------------------------------------------------------
    def _prepare(self, cases: list[Case], recognizer=None) -> list[PreparedCase]:
        cfg, prepared = self.config, []
        for i, case in enumerate(cases):
            self.reporter.emit("preparing", case=case.name, index=i + 1, total=len(cases))
            image = read_image(case.image)
            check_volume(image, cfg.crop, cfg.grid)
            volume = prepare_volume(image, cfg.grid, cfg.scales, cfg.levels, recognizer)
            prepared.append(PreparedCase(case.name, volume, volume.geometry.to_index(case.center)))
        return prepared

    # --- recognition (locator II) ---------------------------------------------------------------------
    def _masked_grids(self, cases: list[Case]) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Normalised grids and grid masks of the labelled cases (those with a ``label``)."""
        cfg, volumes, masks = self.config, [], []
        labelled = [c for c in cases if c.label is not None]
        if not labelled:
            raise InputError(
                "locator recognition learns from voxel masks, but no training case has a label; "
                "label some cases or train the points-only locator (--points-only)"
            )
        for i, case in enumerate(labelled):
            self.reporter.emit("preparing", case=case.name, index=i + 1, total=len(labelled), stage="masks")
            image = read_image(case.image)
            check_volume(image, cfg.crop, cfg.grid)
            volume = prepare_volume(image, cfg.grid, (1,), "box")
            volumes.append(volume.levels[0])
            masks.append(grid_mask(read_image(case.label, what="label"), volume.geometry))
        return volumes, masks

    def _recognition_config(self) -> RecognitionConfig:
        """The likelihood network's shape from this run's settings (training, resume and locator.json)."""
        return RecognitionConfig(width=self.config.recognition_width, stride=self.config.recognition_stride)

    def _train_recognition(self, cases: list[Case]) -> RecognitionNet:
        cfg = self.config
        volumes, masks = self._masked_grids(cases)
        t0 = time.monotonic()

        def progress(step: int, loss: float) -> None:
            if self._stop_requested:
                raise TrainingCancelled(
                    "locator training stopped during recognition training; start it again"
                )
            if step % max(1, cfg.recognition_steps // 100) == 0 or step == cfg.recognition_steps:
                rate = (time.monotonic() - t0) / step
                self.reporter.emit(
                    "progress",
                    stage="recognition",
                    step=step,
                    total=cfg.recognition_steps,
                    losses={"recognition": loss},
                    seconds_per_step=rate,
                    eta_seconds=rate * (cfg.recognition_steps - step),
                )

        with stop_on_signals(self.request_stop):
            net, losses = train_recognition(
                volumes,
                masks,
                config=self._recognition_config(),
                steps=cfg.recognition_steps,
                device=self.device,
                seed=cfg.seed,
                progress=progress,
                **cfg.recognition_training(),
            )
        tail = losses[-max(1, len(losses) // 10) :]
        self.recognition_summary = {
            "labelled_cases": len(volumes),
            "steps": cfg.recognition_steps,
            "first_loss": round(float(np.mean(losses[: len(tail)])), 4),
            "final_loss": round(float(np.mean(tail)), 4),
            "train_seconds": round(time.monotonic() - t0, 1),
        }
        return net

    def _recognition(self, cases: list[Case], state: dict | None) -> RecognitionNet | None:
        """The recognition network: read from the checkpoint when resuming, else trained now."""
        if not self.config.recognition:
            return None
        if state is not None and "recognition" in state:
            net = RecognitionNet(self._recognition_config())
            net.load_state_dict(state["recognition"])
            self.recognition_summary = json.loads(state.get("recognition_summary", "{}"))
            return net.to(self.device).eval()
        return self._train_recognition(cases)

    # --- one step -------------------------------------------------------------------------------
    def _act(
        self, agent: DQNAgent, episodes: _Episodes, sampler: CropSampler, memory: ReplayMemory, eps: float
    ):
        e, scales = episodes, np.asarray(self.config.scales)
        states = sampler.states(*_split_ids(e.volume, e.history, e.scale))
        actions, _ = agent.act(states, e.scale, eps, e.rng)
        step = scales[e.scale]
        new, refused = move(e.pos, actions, step, self.config.grid)
        scaled = step_reward(e.pos, new, e.targets[e.volume], e.spacing[e.volume], refused, step)
        memory.push(
            volume=e.volume, history=e.history, scale=e.scale, action=actions, reward=scaled, next=new
        )
        e.pos = new
        e.history = np.concatenate([e.history[:, 1:], new[:, None, :]], axis=1)
        e.t += 1
        done = np.flatnonzero(e.t >= self.config.episode_steps)
        if done.size:
            e.reset(done)

    def _learn(
        self, agent: DQNAgent, sampler: CropSampler, memory: ReplayMemory, episodes: _Episodes
    ) -> dict[str, float]:
        batch = memory.sample(self.config.batch, episodes.rng)
        if self.config.all_actions:
            losses = self._learn_all_actions(agent, sampler, batch, episodes)
        else:
            losses = agent.update(*self._replayed_states(sampler, batch), batch)
        if not np.isfinite(losses["loss"]):
            raise TrainingDiverged(f"the locator loss became {losses['loss']}; try a lower --lr")
        return losses

    @staticmethod
    def _replayed_states(sampler: CropSampler, batch: dict) -> tuple[np.ndarray, np.ndarray]:
        """States before and after the replayed moves; the H + 1 positions share their crops."""
        positions = np.concatenate([batch["history"], batch["next"][:, None, :]], axis=1).astype(np.int64)
        base, _, scale, flips = _split_ids(batch["volume"], positions, batch["scale"].astype(np.int64))
        frames = sampler.frames(base, positions, scale, flips)
        before = sampler.add_channels(frames[:, :-1], base, positions[:, -2], scale, flips)
        after = sampler.add_channels(frames[:, 1:], base, positions[:, -1], scale, flips)
        return before, after

    def _learn_all_actions(self, agent: DQNAgent, sampler: CropSampler, batch: dict, episodes) -> dict:
        """TD update on all 6 actions of each replayed state (see :meth:`DQNAgent.update_all_actions`)."""
        cfg, n_actions = self.config, len(ACTIONS)
        history, scale = batch["history"].astype(np.int64), batch["scale"].astype(np.int64)
        ids = batch["volume"].astype(np.int64)
        step = np.asarray(cfg.scales)[scale]
        new, rewards = all_action_outcomes(
            history[:, -1], step, episodes.targets[ids], episodes.spacing[ids], cfg.grid
        )
        base, _, _, flips = _split_ids(ids, history, scale)
        frames = sampler.frames(base, history, scale, flips)
        states = sampler.add_channels(frames, base, history[:, -1], scale, flips)
        next_states = None
        if cfg.gamma > 0:
            each = lambda a: np.repeat(a, n_actions, axis=0)  # noqa: E731  one row per (sample, action)
            at = (each(base), new.reshape(-1, 3), each(scale), each(flips))  # every (sample, action)
            next_frames = np.concatenate([each(frames[:, 1:]), sampler.crops(*at)[:, None]], axis=1)
            next_states = sampler.add_channels(next_frames, *at)
        return agent.update_all_actions(states, next_states, rewards, scale)

    # --- validation ---------------------------------------------------------------------------
    def _validation_rows(self, agent: DQNAgent, val: list[PreparedCase]) -> list[dict]:
        """Per validation case: the error of the located point and its confidence (with recognition)."""
        cfg, rows = self.config, []
        agent.online.eval()
        for case in val:
            point, _ = search_volume(
                agent.online,
                case.volume,
                cfg.scales,
                cfg.crop,
                context=cfg.context,
                starts=cfg.starts,
                how=DEFAULT_SEARCH["combine"],
                max_steps=DEFAULT_SEARCH["max_steps"],
                device=self.device,
                refine=cfg.refine,
            )
            diff = point - case.target
            row = {
                "case": case.name,
                "error_vox": float(np.linalg.norm(diff)),
                "error_mm": float(np.linalg.norm(diff * case.volume.geometry.spacing_zyx)),
            }
            if case.volume.likelihood is not None:
                row["confidence"] = point_confidence(case.volume.likelihood, point)
            rows.append(row)
        agent.online.train()
        return rows

    def _validate(self, agent: DQNAgent, val: list[PreparedCase]) -> dict[str, float]:
        return validation_errors(self._validation_rows(agent, val))

    def _calibration(self, agent: DQNAgent, val: list[PreparedCase]) -> dict:
        """The confidence threshold separating hits (within :data:`HIT_VOXELS`) from misses on validation."""
        if not self.config.recognition or not val:
            return {}
        rows = self._validation_rows(agent, val)
        conf = [r["confidence"] for r in rows]
        hits = [r["error_vox"] <= HIT_VOXELS for r in rows]
        return {
            "threshold": round(confidence_threshold(conf, hits), 4),
            "hit_voxels": HIT_VOXELS,
            "validation": [
                {
                    "case": r["case"],
                    "confidence": round(r["confidence"], 4),
                    "error_vox": round(r["error_vox"], 2),
                }
                for r in rows
            ],
        }

    # --- checkpoints ------------------------------------------------------------------------------
    def _checkpoint_path(self) -> Path:
        return checkpoint_path(self.out)

    def _save_checkpoint(self, agent: DQNAgent, memory: ReplayMemory, step: int) -> None:
        state = {
            "step": step,
            "config": self.config.to_json(),
            "history": json.dumps(self.history),
            "online": agent.online.state_dict(),
            "target": agent.target.state_dict(),
            "optimizer": agent.optimizer.state_dict(),
            "memory": memory.state_dict(),
        }
        if self.best is not None:
            state["best_state"] = self.best["state"]
            state["best"] = json.dumps({k: v for k, v in self.best.items() if k != "state"})
        if self.recognizer is not None:
            state["recognition"] = self.recognizer.state_dict()
            state["recognition_summary"] = json.dumps(self.recognition_summary)
        state["wall_seconds"] = self._wall_seconds()
        write_checkpoint(self._checkpoint_path(), state, self.reporter)

    def _load_checkpoint(self, agent: DQNAgent, memory: ReplayMemory, state: dict) -> int:
        try:
            agent.online.load_state_dict(state["online"])
            agent.target.load_state_dict(state["target"])
            agent.optimizer.load_state_dict(state["optimizer"])
            memory.load_state_dict(state["memory"])
        except (KeyError, RuntimeError, ValueError) as exc:
            raise ModelError(
                f"checkpoint {self._checkpoint_path()} is from another configuration: {exc}"
            ) from None
        self.history = json.loads(state.get("history", "[]"))
        self._seconds_before = float(state.get("wall_seconds", 0.0))
        if "best_state" in state:
            self.best = {**json.loads(state["best"]), "state": state["best_state"]}
        return int(state["step"])

    @staticmethod
    def stored_config(out: str | Path) -> LocatorTrainConfig:
        """The configuration of an interrupted run, read from its checkpoint (for ``--resume``)."""
        return checkpoints.stored_config(out, LocatorTrainConfig.from_json)

    # --- the run --------------------------------------------------------------------------------
    def _setup(
        self, state: dict | None
    ) -> tuple[list[PreparedCase], list[PreparedCase], list[Case], list[Case]]:
        """Split the cases, get the recognition network (trained or resumed), prepare every volume."""
        train_cases, val_cases = split_cases(centre_cases(self.config.data), self.config.val_cases)
        self.recognizer = self._recognition(train_cases, state)
        recognize = None if self.recognizer is None else recognizer(self.recognizer, self.device)
        train, val = self._prepare(train_cases, recognize), self._prepare(val_cases, recognize)
        return train, val, train_cases, val_cases

    def _network_config(self) -> QNetworkConfig:
        cfg = self.config
        return QNetworkConfig(
            crop=cfg.crop,
            history=HISTORY,
            n_scales=len(cfg.scales),
            width=cfg.width,
            dueling=int(cfg.dueling),
            context=int(cfg.context),
            recognition=RECOGNITION_CHANNELS if cfg.recognition else 0,
        )

    def run(self, resume: bool = False) -> Path:
        """Train (or continue with ``resume``) holding the lock on the output folder throughout."""
        with RunLock(self.out):
            return self._run_locked(resume)

    def _run_locked(self, resume: bool) -> Path:
        cfg = self.config
        self._t_start = time.monotonic()
        seed_everything(cfg.seed)
        state = read_checkpoint(self._checkpoint_path()) if resume else None
        trained_recognition = self.config.recognition and (state is None or "recognition" not in state)
        train, val, train_cases, val_cases = self._setup(state)
        sampler = CropSampler(
            [c.volume for c in train],
            cfg.scales,
            cfg.crop,
            dtype=np.float16,
            context=cfg.context,
            recognition=cfg.recognition,
        )
        for case in train:  # the sampler holds the only copy
            case.volume.levels = case.volume.recognition = case.volume.likelihood = None
        agent = DQNAgent(self._network_config(), self.device, lr=cfg.lr, gamma=cfg.gamma, double=cfg.double)
        memory = ReplayMemory(cfg.memory)
        start = self._load_checkpoint(agent, memory, state) if state is not None else 0
        if trained_recognition:  # a stop from here on resumes without training recognition again
            self._save_checkpoint(agent, memory, start)
        rng = np.random.default_rng(cfg.seed * 1_000_003 + start)
        torch.manual_seed(cfg.seed * 1_000_003 + start)
        episodes = _Episodes(cfg, train, rng)
        summary = {
            "cases": len(train),
            "validation": len(val),
            "steps": cfg.steps,
            "start_step": start,
            "device": str(self.device),
            "grid": cfg.grid,
            "crop": cfg.crop,
            "scales": list(cfg.scales),
            "levels": cfg.levels,
            "context": cfg.context,
            "replay_bytes": memory.nbytes,
        }
        self.reporter.emit("started", task="locator training", summary=summary, total=cfg.steps, step=start)
        last_val, elapsed = self._loop(agent, episodes, sampler, memory, val, start)
        return self._finish(agent, memory, (train_cases, val_cases, val), last_val, elapsed, start)

    def _loop(self, agent, episodes, sampler, memory, val, start) -> tuple[dict, float]:
        cfg = self.config
        schedule = EpsilonSchedule(cfg.steps, end=cfg.epsilon_end, fraction=cfg.epsilon_fraction)
        last_val: dict = self.history[-1]["metrics"] if self.history else {}
        report_every, t0 = max(1, cfg.steps // 200), time.monotonic()
        losses = {"loss": float("nan"), "q": float("nan")}
        with stop_on_signals(self.request_stop):
            for step in range(start, cfg.steps):
                self._act(agent, episodes, sampler, memory, schedule(step))
                if len(memory) >= max(cfg.batch, cfg.warmup):
                    losses = self._learn(agent, sampler, memory, episodes)
                done = step + 1
                if done % cfg.target_every == 0:
                    agent.sync_target()
                if done % report_every == 0 or done == cfg.steps:
                    rate = (time.monotonic() - t0) / (done - start)
                    self.reporter.emit(
                        "progress",
                        step=done,
                        total=cfg.steps,
                        losses={**losses, "epsilon": schedule(step)},
                        seconds_per_step=rate,
                        eta_seconds=rate * (cfg.steps - done),
                    )
                if val and (done % cfg.val_every == 0 or done == cfg.steps):
                    last_val = self._validate(agent, val)
                    self.history.append({"step": done, "metrics": last_val})
                    self.reporter.emit("validation", step=done, total=cfg.steps, metrics=last_val)
                    self._remember_if_best(agent, done, last_val)
                if self._stop_requested:
                    self._save_checkpoint(agent, memory, done)
                    self.reporter.emit(
                        "cancelled", step=done, message=f"stopped at step {done}; resume with --resume"
                    )
                    raise TrainingCancelled(
                        f"locator training stopped at step {done}; the checkpoint is usable"
                    )
                if done % cfg.checkpoint_every == 0 and done < cfg.steps:
                    self._save_checkpoint(agent, memory, done)
        return last_val, time.monotonic() - t0

    def _remember_if_best(self, agent: DQNAgent, step: int, metrics: dict) -> None:
        """Keep a copy of the online network at the lowest mean validation error (``keep_best``)."""
        if not self.config.keep_best or not metrics:
            return
        if self.best is None or metrics["mean_vox"] < self.best["metrics"]["mean_vox"]:
            state = {k: v.detach().clone() for k, v in agent.online.state_dict().items()}
            self.best = {"step": step, "metrics": metrics, "state": state}

    def _wall_seconds(self) -> float:
        """Wall time of the whole run so far (preparation and recognition included, over resumes)."""
        return self._seconds_before + time.monotonic() - self._t_start

    def _recognition_meta(self, val: list[PreparedCase], val_cases: list[Case]) -> dict:
        """What ``locator.json`` records about recognition: shape, training, mask overlap on validation."""
        overlaps = []
        for case, prepared in zip(val_cases, val, strict=True):
            if case.label is not None and prepared.volume.likelihood is not None:
                mask = grid_mask(read_image(case.label, what="label"), prepared.volume.geometry)
                overlaps.append(mask_overlap(prepared.volume.likelihood, mask))
        return {
            "config": self._recognition_config().to_dict(),
            "training": self.recognition_summary,
            "validation_mask_dice": [round(v, 4) for v in overlaps],
        }

    def _finish(self, agent, memory, cases, last_val, elapsed, start) -> Path:
        cfg = self.config
        train_cases, val_cases, val = cases
        selected = {"step": cfg.steps, "metrics": last_val}
        if self.best is not None:
            agent.online.load_state_dict(self.best["state"])
            selected = {"step": self.best["step"], "metrics": self.best["metrics"]}
        extra = {}
        if self.recognizer is not None:
            extra = {
                "recognition": self._recognition_meta(val, val_cases),
                "confidence": self._calibration(agent, val),
            }
        meta = {
            "name": cfg.name or self.out.name,
            "description": cfg.description,
            "grid_size": cfg.grid,
            "crop_size": cfg.crop,
            "scales": list(cfg.scales),
            "levels": cfg.levels,
            "context": bool(cfg.context),
            "history": HISTORY,
            "actions": ["+z", "-z", "+y", "-y", "+x", "-x"],
            "search": {**DEFAULT_SEARCH, "starts": cfg.starts, "refine": bool(cfg.refine)},
            "training": {
                "datasets": [str(Path(d).resolve()) for d in cfg.data],
                "cases": len(train_cases),
                "validation_cases": [c.name for c in val_cases],
                "config": json.loads(cfg.to_json()),
                "history": self.history,
                "replay_bytes": memory.nbytes,
            },
            "metrics": {"validation": selected["metrics"], "last_validation": last_val},
            "selected_step": selected["step"],
            "timings": {
                "train_seconds": round(elapsed, 1),
                "seconds_per_step": round(elapsed / max(1, cfg.steps - start), 4),
                "wall_seconds_total": round(self._wall_seconds(), 1),
                "device": str(self.device),
            },
            **extra,
        }
        folder = save_locator(self.out, agent.online.eval(), meta, recognition=self.recognizer)
        checkpoint = self._checkpoint_path()
        if checkpoint.exists():
            checkpoint.unlink()
        self.reporter.emit(
            "finished",
            step=cfg.steps,
            total=cfg.steps,
            model=str(folder),
            metrics=selected["metrics"],
            message=f"locator written to {folder} (network of step {selected['step']})",
        )
        return folder
