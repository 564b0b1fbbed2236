"""Locators are folders, like models: ``locator.json`` (what it is) plus ``weights.pt`` (plain tensors).

``weights.pt`` maps ``"q_network"`` to the Q-network's state dict (and, for a locator with
recognition, ``"recognition"`` to the likelihood network's) and is loaded with
``torch.load(..., weights_only=True)``. ``locator.json`` records the grid size, crop size, scales,
history length, the network configuration, the search defaults, the training summary, software
versions and the creation date; with recognition also ``recognition`` (network shape, training,
mask overlap) and ``confidence`` (the threshold calibrated on validation cases). Locators written
before recognition existed (points-only, format 1) load unchanged; a newer format is refused by name.
Locators live in ``$SEMISUPSEG_HOME/locators``; shipped ones in
``SemiSupSegLib/pretrained`` (a folder there with a ``locator.json``).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..atomic import atomic_torch_save, atomic_write_json
from ..errors import InputError, ModelError, checked_number
from ..model_store import PRETRAINED_DIR, home_dir, refused_load_reason, software_versions
from .agent import QNetwork, QNetworkConfig
from .by_segmentation import SEGMENTATION_KIND, SegmentationLocator, load_segmentation_locator
from .environment import LEVEL_KINDS
from .recognition import RecognitionConfig, RecognitionNet

LOCATOR_JSON = "locator.json"
WEIGHTS = "weights.pt"
FORMAT_VERSION = 2  # 2: optional recognition network (locator II); 1: points-only
KIND = "dqn-locator"
DEFAULT_SEARCH = {"starts": 9, "combine": "q", "max_steps": 40, "refine": False}
DEFAULT_CONFIDENCE_THRESHOLD = 0.5


def locators_dir() -> Path:
    return home_dir() / "locators"


@dataclass
class Locator:
    """A locator ready for use: its description and its Q-network in eval mode on ``device``."""

    path: Path
    meta: dict
    network: QNetwork
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    recognizer: RecognitionNet | None = None

    @property
    def name(self) -> str:
        return self.meta.get("name", self.path.name)

    @property
    def grid(self) -> int:
        return int(self.meta["grid_size"])

    @property
    def crop(self) -> int:
        return int(self.meta["crop_size"])

    @property
    def scales(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.meta["scales"])

    @property
    def levels(self) -> str:
        """What the coarse crops sample (``"box"`` for locators written before the choice existed)."""
        return str(self.meta.get("levels", "box"))

    @property
    def context(self) -> bool:
        """Whether the state carries the coarser-scale context crop (read from the network itself)."""
        return bool(self.network.config.context)

    @property
    def search(self) -> dict:
        return {**DEFAULT_SEARCH, **self.meta.get("search", {})}

    @property
    def confidence_threshold(self) -> float:
        """Below this likelihood at the found point, the point is reported as doubtful."""
        return float((self.meta.get("confidence") or {}).get("threshold", DEFAULT_CONFIDENCE_THRESHOLD))


def save_locator(
    out_dir: str | os.PathLike, network: QNetwork, meta: dict, recognition: RecognitionNet | None = None
) -> Path:
    """Write ``weights.pt`` then ``locator.json`` atomically; return the folder."""
    for key in ("name", "grid_size", "crop_size", "scales"):
        if key not in meta:
            raise ModelError(f"locator description lacks {key!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plain = lambda net: {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}  # noqa: E731
    state = {"q_network": plain(network)}
    if recognition is not None:
        state["recognition"] = plain(recognition)
        meta = {
            **meta,
            "recognition": {**meta.get("recognition", {}), "config": recognition.config.to_dict()},
        }
    full = {
        "format": FORMAT_VERSION,
        "kind": KIND,
        **meta,
        "network": network.config.to_dict(),
        "software": software_versions(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    # locator.json is written before the new weights replace the old ones: a failure leaves the old pair
    atomic_torch_save(out / WEIGHTS, state, before_rename=lambda: atomic_write_json(out / LOCATOR_JSON, full))
    return out


def resolve_locator(locator: str | os.PathLike) -> Path:
    """A locator folder from a path, or a name in the locators folder or the shipped ones."""
    path = Path(locator).expanduser()
    candidates = [path, locators_dir() / str(locator), PRETRAINED_DIR / str(locator)]
    for candidate in candidates:
        if (candidate / LOCATOR_JSON).is_file():
            return candidate
    if path.is_dir():
        raise ModelError(f"locator folder {path} has no {LOCATOR_JSON}")
    raise ModelError(
        f"locator {str(locator)!r} not found (not a folder with {LOCATOR_JSON}, nor a name in "
        f"{locators_dir()} or the shipped locators)"
    )


def read_locator_json(folder: Path) -> dict:
    """The locator's description; :class:`ModelError` if missing, corrupt or not a locator."""
    path = folder / LOCATOR_JSON
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"{path} is missing") from None
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:  # ValueError: JSON, huge ints
        raise ModelError(f"{path} is corrupt: {type(exc).__name__}: {str(exc)[:200]}") from None
    if not isinstance(meta, dict) or meta.get("kind") not in (KIND, SEGMENTATION_KIND):
        raise ModelError(f"{path} does not describe a locator")
    if meta["kind"] == SEGMENTATION_KIND:
        return meta
    if not isinstance(meta.get("format", 1), int) or meta.get("format", 1) > FORMAT_VERSION:
        raise ModelError(
            f"{path} has locator format {meta.get('format')!r}; this SemiSupSeg reads up to "
            f"{FORMAT_VERSION}: update SemiSupSeg"
        )
    missing = [k for k in ("grid_size", "crop_size", "scales", "network") if k not in meta]
    if missing:
        raise ModelError(f"{path} lacks {', '.join(missing)}")
    _check_geometry(path, meta)
    return meta


def _check_geometry(path: Path, meta: dict) -> None:
    """grid_size, crop_size and every scale integers in [1, 1024] (ModelError otherwise)."""
    scales = meta["scales"]
    values = [("grid_size", meta["grid_size"]), ("crop_size", meta["crop_size"])]
    if not isinstance(scales, list) or not scales:
        raise ModelError(f"{path}: scales must be a non-empty list of integers, got {scales!r}")
    values += [("scales", s) for s in scales]
    for name, value in values:
        try:
            checked_number(name, value, int, 1, 1024)
        except InputError as exc:
            raise ModelError(f"{path}: {exc}") from None


def _load_weights(path: Path) -> dict:
    if not path.is_file():
        raise ModelError(f"locator weights {path} are missing")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a corrupt or unsafe file
        raise ModelError(f"cannot load locator weights {path}: {refused_load_reason(exc)}") from None
    if not isinstance(state, dict) or not isinstance(state.get("q_network"), dict):
        raise ModelError(f"locator weights {path} hold no 'q_network' state dict")
    return state


def _recognizer(folder: Path, meta: dict, state: dict) -> RecognitionNet | None:
    """The recognition network of a locator II, None for a points-only locator."""
    if "recognition" not in meta:
        return None
    if not isinstance(state.get("recognition"), dict):
        raise ModelError(f"locator {folder} describes a recognition network but its weights hold none")
    net = RecognitionNet(RecognitionConfig.from_dict(meta["recognition"].get("config", {})))
    net.load_state_dict(state["recognition"])
    return net


def load_locator(
    locator: str | os.PathLike, device: str | torch.device = "cpu"
) -> Locator | SegmentationLocator:
    """Load a locator folder (or name) for inference, with ``weights_only=True``: a DQN locator, or a
    segmentation locator (:mod:`.by_segmentation`) with the model it names."""
    folder = resolve_locator(locator)
    meta = read_locator_json(folder)
    if meta["kind"] == SEGMENTATION_KIND:
        return load_segmentation_locator(folder, meta, device)
    state = _load_weights(folder / WEIGHTS)
    try:
        network = QNetwork(QNetworkConfig.from_dict(meta["network"]))
        network.load_state_dict(state["q_network"])
        recognizer = _recognizer(folder, meta, state)
    except (TypeError, ValueError, RuntimeError, AttributeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"locator {folder} does not match its weights: {first[:300]}") from None
    if network.config.crop != int(meta["crop_size"]) or network.config.n_scales != len(meta["scales"]):
        raise ModelError(f"{folder / LOCATOR_JSON}: crop size or scales disagree with the network")
    if bool(network.config.recognition) != (recognizer is not None):
        raise ModelError(f"{folder / LOCATOR_JSON}: the Q-network and the recognition network disagree")
    if meta.get("levels", "box") not in LEVEL_KINDS:
        raise ModelError(f"{folder / LOCATOR_JSON}: unknown levels {meta.get('levels')!r}")
    device = torch.device(device)
    if recognizer is not None:
        recognizer = recognizer.to(device).eval()
    return Locator(
        path=folder, meta=meta, network=network.to(device).eval(), device=device, recognizer=recognizer
    )
