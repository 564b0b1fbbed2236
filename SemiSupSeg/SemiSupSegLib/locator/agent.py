"""The DQN agent: a compact 3D CNN Q-network, its target network, ε-greedy, replay memory, updates."""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .environment import ACTIONS, DEFAULT_CROP, DEFAULT_SCALES, HISTORY


@dataclass(frozen=True)
class QNetworkConfig:
    """Shape of the Q-network; stored in ``locator.json``."""

    crop: int = DEFAULT_CROP
    history: int = HISTORY
    n_scales: int = len(DEFAULT_SCALES)
    width: int = 16
    hidden: int = 128
    actions: int = len(ACTIONS)
    dueling: int = 1  # 1: Q = V + A - mean(A) (dueling heads); 0: one head
    context: int = 0  # 1: one more input channel, the crop one scale coarser (see environment)
    recognition: int = 0  # 2: the likelihood crops at this scale and one coarser (locator II); 0: points only

    @property
    def channels(self) -> int:
        """Input channels: the history crops plus the context and recognition channels."""
        return self.history + self.context + self.recognition

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> QNetworkConfig:
        values = {k: int(v) for k, v in data.items() if k in cls.__dataclass_fields__}
        values.setdefault("dueling", 0)  # locators written before dueling heads existed
        return cls(**values)


class QNetwork(nn.Module):
    """Q-values of the 6 actions from the last crops (channels) and the current scale (one-hot).

    Three stride-2 convolutions (about 3.5x faster on a CPU than conv + max-pool stages), then two
    fully connected layers; the one-hot scale joins the flattened features, since crops at different
    strides look different. With ``dueling`` the last layer gives a state value and 6 advantages
    (Wang et al. 2016), so the small differences between actions need not be learnt on top of the
    large common value.
    """

    def __init__(self, config: QNetworkConfig) -> None:
        super().__init__()
        self.config = config
        w = config.width
        self.features = nn.Sequential(
            nn.Conv3d(config.channels, w, 3, stride=2),
            nn.LeakyReLU(0.01),
            nn.Conv3d(w, 2 * w, 3, stride=2, padding=1),
            nn.LeakyReLU(0.01),
            nn.Conv3d(2 * w, 4 * w, 3, stride=2, padding=1),
            nn.LeakyReLU(0.01),
            nn.Flatten(),
        )
        with torch.no_grad():
            n = self.features(torch.zeros(1, config.channels, *(config.crop,) * 3)).shape[1]
        self.head = nn.Sequential(
            nn.Linear(n + config.n_scales, config.hidden),
            nn.LeakyReLU(0.01),
            nn.Linear(config.hidden, config.actions + (1 if config.dueling else 0)),
        )

    def forward(self, states: torch.Tensor, scale_index: torch.Tensor) -> torch.Tensor:
        scale = F.one_hot(scale_index.long(), self.config.n_scales).to(states.dtype)
        out = self.head(torch.cat([self.features(states), scale], dim=1))
        if not self.config.dueling:
            return out
        value, advantage = out[:, :1], out[:, 1:]
        return value + advantage - advantage.mean(dim=1, keepdim=True)


def q_values(
    network: QNetwork, states: np.ndarray, scale_index: np.ndarray, device: torch.device
) -> np.ndarray:
    """Q-values ``[N, 6]`` of numpy states, without gradients."""
    with torch.no_grad():
        x = torch.from_numpy(states).to(device)
        s = torch.from_numpy(np.asarray(scale_index, dtype=np.int64)).to(device)
        return network(x, s).float().cpu().numpy()


# --------------------------------------------------------------------------------------------- replay


class ReplayMemory:
    """A bounded ring buffer of transitions that stores **positions, not crops**.

    One transition is the volume index, the last ``history`` positions, the scale index, the action,
    the (normalised) reward and the next position: 36 bytes for a history of 4, whatever the crop
    size. The crops of a sampled batch are re-cut by :class:`~.environment.CropSampler`.
    """

    def __init__(self, capacity: int, history: int = HISTORY) -> None:
        self.capacity = int(capacity)
        self.volume = np.zeros(self.capacity, np.int32)
        self.history = np.zeros((self.capacity, history, 3), np.int16)
        self.scale = np.zeros(self.capacity, np.int8)
        self.action = np.zeros(self.capacity, np.int8)
        self.reward = np.zeros(self.capacity, np.float32)
        self.next = np.zeros((self.capacity, 3), np.int16)
        self.size = 0
        self.cursor = 0

    def _arrays(self) -> dict[str, np.ndarray]:
        names = ("volume", "history", "scale", "action", "reward", "next")
        return {n: getattr(self, n) for n in names}

    @property
    def nbytes(self) -> int:
        """Bytes held by the buffer (fixed at construction)."""
        return sum(a.nbytes for a in self._arrays().values())

    def __len__(self) -> int:
        return self.size

    def push(self, **batch: np.ndarray) -> None:
        """Append ``n`` transitions given as arrays named like the buffer's fields."""
        n = len(batch["action"])
        slots = (self.cursor + np.arange(n)) % self.capacity
        for name, array in self._arrays().items():
            array[slots] = batch[name]
        self.cursor = int((self.cursor + n) % self.capacity)
        self.size = min(self.capacity, self.size + n)

    def sample(self, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """``n`` transitions drawn uniformly (with replacement)."""
        rows = rng.integers(0, self.size, n)
        return {name: array[rows] for name, array in self._arrays().items()}

    def state_dict(self) -> dict[str, torch.Tensor]:
        state = {name: torch.from_numpy(a[: self.size].copy()) for name, a in self._arrays().items()}
        state["meta"] = torch.tensor([self.size, self.cursor], dtype=torch.int64)
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        size, cursor = (int(v) for v in state["meta"])
        size = min(size, self.capacity)
        for name, array in self._arrays().items():
            array[:size] = state[name].numpy()[:size]
        self.size, self.cursor = size, cursor % self.capacity


# --------------------------------------------------------------------------------------------- agent


@dataclass(frozen=True)
class EpsilonSchedule:
    """ε decays linearly from ``start`` to ``end`` over the first ``fraction`` of ``total`` steps."""

    total: int
    start: float = 1.0
    end: float = 0.1
    fraction: float = 0.4

    def __call__(self, step: int) -> float:
        span = max(1.0, self.fraction * self.total)
        return float(self.end + (self.start - self.end) * max(0.0, 1.0 - step / span))


class DQNAgent:
    """Online and target Q-networks with an Adam optimiser; Huber-loss TD updates, optional Double DQN."""

    def __init__(
        self,
        config: QNetworkConfig,
        device: torch.device,
        lr: float = 3e-4,
        gamma: float = 0.9,
        double: bool = True,
    ) -> None:
        self.device = device
        self.online = QNetwork(config).to(device)
        self.target = copy.deepcopy(self.online).eval()
        for p in self.target.parameters():
            p.requires_grad_(False)
        self.optimizer = torch.optim.Adam(self.online.parameters(), lr=lr)
        self.gamma = gamma
        self.double = double

    def act(self, states: np.ndarray, scale_index: np.ndarray, epsilon: float, rng: np.random.Generator):
        """ε-greedy actions ``[N]`` and the greedy max-Q ``[N]``."""
        q = q_values(self.online, states, scale_index, self.device)
        greedy = q.argmax(axis=1)
        explore = rng.random(len(greedy)) < epsilon
        actions = np.where(explore, rng.integers(0, q.shape[1], len(greedy)), greedy)
        return actions, q.max(axis=1)

    def _td_target(
        self, next_states: torch.Tensor, scale: torch.Tensor, rewards: torch.Tensor
    ) -> torch.Tensor:
        with torch.no_grad():
            q_next = self.target(next_states, scale)
            if self.double:
                choice = self.online(next_states, scale).argmax(dim=1, keepdim=True)
                best = q_next.gather(1, choice).squeeze(1)
            else:
                best = q_next.max(dim=1).values
            return rewards + self.gamma * best

    def update(
        self, states: np.ndarray, next_states: np.ndarray, batch: dict[str, np.ndarray]
    ) -> dict[str, float]:
        """One gradient step on a replay batch; returns the loss and mean Q."""
        to = lambda a, dtype: torch.as_tensor(np.asarray(a), dtype=dtype, device=self.device)  # noqa: E731
        scale = to(batch["scale"], torch.int64)
        target = self._td_target(to(next_states, torch.float32), scale, to(batch["reward"], torch.float32))
        q = self.online(to(states, torch.float32), scale)
        chosen = q.gather(1, to(batch["action"], torch.int64)[:, None]).squeeze(1)
        loss = F.smooth_l1_loss(chosen, target)
        self._descend(loss)
        return {"loss": float(loss.detach()), "q": float(chosen.detach().mean())}

    def update_all_actions(
        self,
        states: np.ndarray,
        next_states: np.ndarray,
        rewards: np.ndarray,
        scale_index: np.ndarray,
    ) -> dict[str, float]:
        """One gradient step with a TD target for **every** action of each replayed state.

        During training the dynamics are known (a move is deterministic and the target is annotated), so
        the reward and next state of all 6 actions can be computed instead of only the one taken:
        ``Q(s, a) <- r(s, a) + gamma * Q_target(s'_a, argmax_b Q_online(s'_a, b))`` for every ``a``.
        This gives 6 Huber terms per sample instead of one, and the differences between actions — all
        the greedy policy depends on — are learnt directly rather than from one action at a time.

        ``states`` [B, H, c, c, c]; ``next_states`` [B * 6, H, c, c, c] (action-major within a sample);
        ``rewards`` [B, 6]; ``scale_index`` [B].
        """
        to = lambda a, dtype: torch.as_tensor(np.asarray(a), dtype=dtype, device=self.device)  # noqa: E731
        scale = to(scale_index, torch.int64)
        r = to(rewards, torch.float32)
        n_actions = r.shape[1]
        if self.gamma > 0:
            next_scale = scale.repeat_interleave(n_actions)
            future = self._td_target(to(next_states, torch.float32), next_scale, torch.zeros_like(next_scale))
            target = r + future.to(torch.float32).view(-1, n_actions)
        else:  # gamma 0: the immediate rewards are the whole target; no next state is needed
            target = r
        q = self.online(to(states, torch.float32), scale)
        loss = F.smooth_l1_loss(q, target)
        self._descend(loss)
        return {"loss": float(loss.detach()), "q": float(q.detach().max(dim=1).values.mean())}

    def _descend(self, loss: torch.Tensor) -> None:
        """One clipped Adam step of the online network on ``loss``."""
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(self.online.parameters(), 10.0)
        self.optimizer.step()

    def sync_target(self) -> None:
        self.target.load_state_dict(self.online.state_dict())
