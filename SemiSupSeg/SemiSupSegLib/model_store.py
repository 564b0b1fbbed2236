"""Models are folders: ``model.json`` (what the model is) plus ``weights.pt`` (plain tensors).

Weights are a ``{network name: state_dict}`` mapping of tensors only, loaded with
``torch.load(..., weights_only=True)`` so that opening a model never executes pickled code.

Models live in ``$SEMISUPSEG_HOME/models`` (default ``~/.SemiSupSeg/models``). Models shipped
with the package (``SemiSupSegLib/pretrained``) are listed too.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from . import __version__
from .atomic import atomic_torch_save, atomic_write_json
from .errors import InputError, ModelError, checked_number
from .model_index import MODEL_JSON, PRETRAINED_DIR, home_dir, list_models, models_dir, read_model_json
from .networks import NetworkConfig, build_network
from .preprocessing import Preprocessing

WEIGHTS = "weights.pt"
FORMAT_VERSION = 1

__all__ = [
    "LoadedModel",
    "home_dir",
    "models_dir",
    "save_model",
    "load_model",
    "refused_load_reason",
    "resolve_model",
    "list_models",
    "read_model_json",
    "software_versions",
]


def software_versions() -> dict[str, str]:
    import monai
    import numpy
    import SimpleITK

    return {
        "semisupseg": __version__,
        "torch": torch.__version__,
        "monai": monai.__version__,
        "numpy": numpy.__version__,
        "SimpleITK": SimpleITK.Version_VersionString(),
        "python": platform.python_version(),
    }


@dataclass
class LoadedModel:
    """A model ready for inference: its description and its networks in eval mode on ``device``."""

    path: Path
    meta: dict
    networks: dict[str, nn.Module]
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    # True when the networks belong to this object alone (a loaded model), so inference may convert
    # them in place (e.g. to channels_last once); False when they are borrowed from a running training.
    owns_networks: bool = True
    # inference's prepared copies of the networks (inference._owned_inference_networks), made once
    inference_cache: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def name(self) -> str:
        return self.meta.get("name", self.path.name)

    @property
    def preprocessing(self) -> Preprocessing:
        return Preprocessing.from_dict(self.meta.get("preprocessing", {}))

    @property
    def patch_size(self) -> tuple[int, int, int]:
        return tuple(int(v) for v in self.meta.get("patch_size", (48, 48, 48)))

    @property
    def num_classes(self) -> int:
        return len(self.meta.get("classes", {"0": "background", "1": "foreground"}))

    @property
    def inference_networks(self) -> list[nn.Module]:
        """The networks whose probabilities are averaged at inference."""
        names = self.meta.get("inference_networks") or list(self.networks)
        return [self.networks[n] for n in names]


def save_model(
    out_dir: str | os.PathLike,
    networks: dict[str, nn.Module],
    meta: dict,
    inference_networks: list[str] | None = None,
) -> Path:
    """Write ``weights.pt`` and ``model.json`` atomically; return the folder.

    ``meta`` must hold at least ``name``, ``method``, ``classes``, ``patch_size`` and
    ``preprocessing``; network configurations, software versions and the creation date are added.
    The weights are written first under a temporary name and renamed only after ``model.json``, so a
    failed write (a :class:`~SemiSupSegLib.atomic.WriteError`) leaves an existing model whole.
    """
    for key in ("name", "method", "classes", "patch_size", "preprocessing"):
        if key not in meta:
            raise ModelError(f"model description lacks {key!r}")
    out = Path(out_dir)
    state = {name: _plain_state_dict(net) for name, net in networks.items()}
    full = {
        "format": FORMAT_VERSION,
        **meta,
        "networks": {name: _network_config(net) for name, net in networks.items()},
        "inference_networks": inference_networks or list(networks),
        "software": software_versions(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    atomic_torch_save(out / WEIGHTS, state, before_rename=lambda: atomic_write_json(out / MODEL_JSON, full))
    return out


def _plain_state_dict(net: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}


def _network_config(net: nn.Module) -> dict:
    config = getattr(net, "config", None)
    if not isinstance(config, NetworkConfig):
        raise ModelError(f"network {type(net).__name__} has no NetworkConfig; cannot describe it")
    return config.to_dict()


def resolve_model(model: str | os.PathLike) -> Path:
    """A folder path, or the name of a model in the models folder or among the shipped ones."""
    candidates = [Path(model).expanduser()]
    if os.sep not in str(model):
        candidates += [models_dir() / str(model), PRETRAINED_DIR / str(model)]
    for path in candidates:
        if path.is_dir():
            return path
    available = ", ".join(entry["name"] for entry in list_models()) or "none"
    raise ModelError(
        f"model {str(model)!r} not found: not a folder, and no model of that name in "
        f"{models_dir()} or among the shipped models (available: {available})"
    )


def load_model(model: str | os.PathLike, device: str | torch.device = "cpu") -> LoadedModel:
    """Load a model folder (or name) for inference, with ``weights_only=True``."""
    folder = resolve_model(model)
    meta = read_model_json(folder)
    _check_format(folder / MODEL_JSON, meta)
    state = _load_weights(folder / WEIGHTS)
    device = torch.device(device)
    networks = {}
    for name, config in meta["networks"].items():
        if name not in state:
            raise ModelError(f"{folder / WEIGHTS} has no weights for network {name!r}")
        _check_network_config(folder / MODEL_JSON, name, config)
        try:
            net = build_network(config)
            net.load_state_dict(state[name])
        except (ValueError, TypeError, RuntimeError) as exc:
            reason = _first_reason(exc)
            raise ModelError(f"network {name!r} of {folder} does not match its weights: {reason}") from None
        networks[name] = net.to(device).eval()
    chosen = meta.get("inference_networks", [])
    if not isinstance(chosen, list) or not all(isinstance(n, str) for n in chosen):
        raise ModelError(f"{folder / MODEL_JSON}: 'inference_networks' is not a list of network names")
    missing = [n for n in chosen if n not in networks]
    if missing:
        raise ModelError(f"{folder / MODEL_JSON} names unknown inference networks {missing}")
    _check_description(folder / MODEL_JSON, meta, networks)
    return LoadedModel(path=folder, meta=meta, networks=networks, device=device)


_CONFIG_LIMITS = {"in_channels": (int, 1, 64), "num_classes": (int, 2, 1000), "width": (float, 0, 16)}


def _check_network_config(meta_path: Path, name: str, config: object) -> None:
    """:class:`ModelError` unless ``config`` describes a network that can be built (before building it:
    a damaged width of 1e9 would otherwise try to allocate terabytes)."""
    if not isinstance(config, dict):
        raise ModelError(f"{meta_path}: network {name!r} is not described by an object")
    try:
        for key, (kind, low, high) in _CONFIG_LIMITS.items():
            if key in config:
                what = f"network {name!r} {key}"
                checked_number(what, config[key], kind, low, high, low_open=kind is float)
        if "dropout" in config:
            checked_number(f"network {name!r} dropout", config["dropout"], float, 0, 1, high_open=True)
    except InputError as exc:
        raise ModelError(f"{meta_path}: {exc}") from None


def _check_format(meta_path: Path, meta: dict) -> None:
    """:class:`ModelError` for a ``model.json`` written by a newer SemiSupSeg (its fields may mean more)."""
    version = meta.get("format", FORMAT_VERSION)
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= FORMAT_VERSION:
        raise ModelError(
            f"{meta_path} has model format {version!r}; this SemiSupSeg reads format 1 to {FORMAT_VERSION}: "
            "update SemiSupSeg"
        )


MAX_PATCH = 1024
"""Largest patch side a model may name: a 1024^3 patch is already 4.3 GB per feature map."""


def _check_description(meta_path: Path, meta: dict, networks: dict[str, nn.Module]) -> None:
    """:class:`ModelError` unless the classes, patch size and preprocessing of ``model.json`` can be used:
    a damaged file would otherwise give a traceback, or a silently wrong segmentation."""
    classes = meta.get("classes", {"0": "background", "1": "foreground"})
    if not isinstance(classes, dict) or sorted(map(str, classes)) != sorted(map(str, range(len(classes)))):
        raise ModelError(f"{meta_path}: classes {classes!r} are not an object with keys 0..K-1")
    for name, net in networks.items():
        if net.config.num_classes != len(classes):
            raise ModelError(
                f"{meta_path}: network {name!r} has {net.config.num_classes} output classes but "
                f"'classes' names {len(classes)}"
            )
    try:
        patch = meta.get("patch_size", (48, 48, 48))
        if not isinstance(patch, (list, tuple)) or len(patch) != 3:
            raise InputError(f"patch_size {patch!r} is not 3 integers")
        for side in patch:
            checked_number("patch_size", side, int, 4, MAX_PATCH)
        Preprocessing.from_dict(meta.get("preprocessing", {}))
    except InputError as exc:
        raise ModelError(f"{meta_path}: {exc}") from None


def _first_reason(exc: BaseException) -> str:
    """One line from torch's many-line ``load_state_dict`` error: the first mismatch and how many more."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    details = [ln for ln in lines[1:] if not ln.endswith(":")] or lines or [type(exc).__name__]
    more = f" (and {len(details) - 1} more)" if len(details) > 1 else ""
    return f"{details[0][:300]}{more}"


def refused_load_reason(exc: BaseException) -> str:
    """One line on why ``torch.load(..., weights_only=True)`` refused a file.

    Torch's own message spans many lines (with terminal escapes) and advises ``weights_only=False``,
    which would run whatever code the file holds; the CLI and the panels show one line instead.

    Args:
        exc: what ``torch.load`` raised.

    Returns:
        The reason, naming the exception type, for a message such as "cannot load ... {path}: {reason}".
    """
    return f"damaged, or holds more than plain tensors ({type(exc).__name__}); refused without running it"


def _load_weights(path: Path) -> dict:
    if not path.is_file():
        raise ModelError(f"model weights {path} are missing")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a corrupt or unsafe file
        raise ModelError(f"cannot load model weights {path}: {refused_load_reason(exc)}") from None
    if not isinstance(state, dict):
        raise ModelError(f"model weights {path} are not a mapping of network name to tensors")
    return state
