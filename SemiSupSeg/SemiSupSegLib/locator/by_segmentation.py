"""The segmentation locator: find the instrument with the segmentation model itself.

**[decision]** (issue 11, 2026-12-02). Neither DQN agent (the paper's points-only agent, nor locator
II with a recognition map learnt from masks) beat answering the grid centre on unseen phantoms
(docs/BENCHMARKS.md, "Locators"); the only row of the locator benchmark that found catheters was
the centroid of the segmentation model's output, and the recognition probes showed why: a small
network does not learn to recognise the instrument from a few dozen masks, while the segmentation
model, trained on many more patches at full resolution, does. So this locator runs the segmentation
model once over the whole volume (:func:`~SemiSupSegLib.inference.volume_probability`: one window at
the model's spacing, 1.5-3 s per volume on one CPU thread; running it at 1.5x or 2x the model's
spacing to save time lost the instrument, ``benchmarks/locator_spacing.py``), takes the connected
component of ``probability > 0.5`` with the largest summed probability, and answers its middle along
its length (:func:`geodesic_middle`; until 2026-12-02 its probability-weighted centroid, which lies
inside the bend of a curved tube). The annotated centre is the middle of the visible instrument along
its centre line (``phantom._pick_center``); the model segments what is visible, so the middle of what
it finds approximates that point.

Confidence: ``v / (v + V_min)`` with ``v`` the component's volume (mm³) and ``V_min`` the locator's
``min_volume_mm3``, so 0.5 at ``V_min``. **[decision]** ``V_min`` = 250 mm³ by default, chosen on the
probe cases (the first 4 of each set of ``benchmarks/locator.py``: 12 catheters of 128³-160³, default
and cluttered profiles, and 12 guide-wires; ``docs/benchmark_results/locator_spacing.json``, factor 1):
every component that landed within 10 grid voxels of the centre had 268-679 mm³, every miss 17-261
mm³. On the benchmark's other 36 cases, 10 of the 11 points it trusted were within 10 grid voxels.
Below it the located component is not trusted: the answer is the volume's centre (a wrong component
lay a median 40 grid voxels from the guide-wires, the grid centre 17-21) and ``low_confidence`` tells the
clinician to place the point by hand. A locator is a folder with a ``locator.json`` of kind
``segmentation-locator`` naming its model; it needs no training (:func:`save_segmentation_locator`).

Several instruments, one locator: a locator may name several models, each with its own ``V_min``
(a guide-wire of 0.9 mm holds a few tens of mm³ where a catheter holds hundreds) and its own
``pick``: ``heaviest`` (above) or ``all``, every voxel above 0.5 and their total volume, answered at
their middle along their principal axis (:func:`axis_middle`: fragments have no path between them).
**[decision]** (2026-12-02) ``all`` for the shipped guide-wire model: it segments a guide-wire in
fragments, and on the first 6 guide-wires of each set of ``benchmarks/locator.py`` the heaviest
fragment's centroid lay a median 16-31 grid voxels from the centre, every confident voxel's 8-22; its
minimum volume is 25 mm³ (its confident voxels held 0.2-20 mm³ on catheters, 33-68 on default-profile
guide-wires). ``benchmarks/locator_pick.py``, ``docs/benchmark_results/locator_pick.json``.

The models run in the listed order and the first trusted find answers (named in ``found_by``);
when none is trusted the answer is the volume's centre with low confidence. **[decision]**
(2026-12-02) first-trusted rather than most-confident: running every model costs their sum
(``semisupseg demo``, four 160³ catheters, one run each on the same idle machine: 86 s wall with both
shipped models run on every volume, 28 s first-trusted, 23 s with the catheter model alone), and on
the 60 cases of ``benchmarks/locator.py`` the catheter model was never trusted on a guide-wire volume,
so the two rules answer the same points there.
A one-model locator is written in format 1 (``"model"``), so earlier versions still read it; a
several-model one in format 2 (``"models": [{"model", "min_volume_mm3"}, ...]``), which they refuse
by its format number.
"""

from __future__ import annotations

import datetime as _dt
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from scipy import ndimage

from ..atomic import atomic_write_json
from ..errors import InputError, ModelError, checked_number
from ..model_store import LoadedModel, load_model, software_versions

SEGMENTATION_KIND = "segmentation-locator"
SEGMENTATION_FORMAT = 2  # 1: one "model"; 2: a list of "models"
DEFAULT_MIN_VOLUME_MM3 = 250.0
REPORT_GRID = 96  # the grid on which LocateResult.grid_index_zyx is reported, as for the DQN locators
PROBABILITY_THRESHOLD = 0.5


@dataclass
class LocatorModel:
    """One model of a segmentation locator and the component volume it must find to be trusted."""

    model: LoadedModel
    min_volume_mm3: float = DEFAULT_MIN_VOLUME_MM3
    pick: str = "heaviest"  # or "all" (module docstring)

    @property
    def name(self) -> str:
        return str(self.model.meta.get("name") or self.model.path.name)


@dataclass
class SegmentationLocator:
    """A segmentation locator ready for use: its description and its loaded segmentation model(s)."""

    path: Path
    meta: dict
    models: list[LocatorModel]
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def name(self) -> str:
        return self.meta.get("name", self.path.name)

    @property
    def grid(self) -> int:
        return REPORT_GRID

    @property
    def confidence_threshold(self) -> float:
        return 0.5

    recognizer = None  # no recognition network: the benchmark's "search only" row does not apply


@dataclass
class SegmentationFind:
    """What the segmentation locator found: the point (LPS mm), its confidence and its component."""

    point_lps: tuple[float, float, float]
    confidence: float
    low_confidence: bool
    volume_mm3: float
    found_by: str | None = None  # the model whose component this is (None: nothing trusted)


def heaviest_component(
    probability_zyx: np.ndarray, spacing_zyx: Sequence[float], threshold: float = PROBABILITY_THRESHOLD
) -> tuple[tuple[float, float, float], float] | None:
    """The component of ``probability > threshold`` with the largest summed probability, and its middle.

    Args:
        probability_zyx: ``[Z, Y, X]`` foreground probability.
        spacing_zyx: the voxel size in mm along z, y, x.
        threshold: the probability above which a voxel is instrument.

    Returns:
        The component's :func:`geodesic_middle` (continuous index z, y, x) and its volume (mm³), or None
        when no voxel is above ``threshold``.
    """
    components, count = ndimage.label(probability_zyx > threshold)
    if count == 0:
        return None
    labels = np.arange(1, count + 1)
    heaviest = int(labels[np.argmax(ndimage.sum(probability_zyx, components, labels))])
    inside = components == heaviest
    return geodesic_middle(probability_zyx, inside, spacing_zyx), _volume(inside, spacing_zyx)


def all_components(
    probability_zyx: np.ndarray, spacing_zyx: Sequence[float], threshold: float = PROBABILITY_THRESHOLD
) -> tuple[tuple[float, float, float], float] | None:
    """Every voxel of ``probability > threshold`` taken as the instrument (a thin one found in fragments).

    Args:
        probability_zyx: ``[Z, Y, X]`` foreground probability.
        spacing_zyx: the voxel size in mm along z, y, x.
        threshold: the probability above which a voxel is instrument.

    Returns:
        The :func:`axis_middle` (continuous index z, y, x; fragments have no path between them) of their
        :func:`heaviest_group`, and the total volume of every such voxel (mm³, the confidence's), or None
        when no voxel is above ``threshold``.
    """
    inside = probability_zyx > threshold
    if not inside.any():
        return None
    group = heaviest_group(probability_zyx, inside, spacing_zyx)
    return axis_middle(probability_zyx, group, spacing_zyx), _volume(inside, spacing_zyx)


FRAGMENT_REACH_MM = 15.0
"""Fragments closer than this (mm) belong to one instrument (:func:`heaviest_group`)."""
MAX_FRAGMENTS = 64
""":func:`heaviest_group` groups only this many fragments, the heaviest."""


def heaviest_group(
    probability_zyx: np.ndarray,
    inside: np.ndarray,
    spacing_zyx: Sequence[float],
    reach_mm: float = FRAGMENT_REACH_MM,
) -> np.ndarray:
    """The fragments of ``inside`` that chain together with gaps under ``reach_mm``, the group with the
    largest summed probability: one instrument found in pieces, without the false positives elsewhere.

    **[decision]** (2026-12-02) 15 mm: on the shipped guide-wire model's output for the 30 guide-wires
    of ``benchmarks/locator.py`` the wire's fragments lay a few mm apart and the false positives that
    pulled the middle away 30-45 mm from the wire. With the group, the shipped locator's median error
    on the default-profile guide-wires went from 9.6 / 7.7 to 4.7 / 5.4 grid voxels and the worst from
    51.1 / 38.7 to 24.6 / 29.5 (128³ / 160³), 17.4 to 17.9 on the cluttered profile (docs/BENCHMARKS.md,
    "Locators"; the reach was chosen on those same cases).
    Gaps: the nearest voxel of each fragment to every voxel of the others (:class:`scipy.spatial.cKDTree`,
    one tree per fragment, so the cost grows with voxels × fragments, not with the pairs within reach);
    groups: :func:`scipy.sparse.csgraph.connected_components`. Only the :data:`MAX_FRAGMENTS` heaviest
    fragments are grouped (a map of scattered single voxels would otherwise cost fragments²).

    Args:
        probability_zyx: ``[Z, Y, X]`` foreground probability.
        inside: ``[Z, Y, X]`` bool, the voxels taken as the instrument.
        spacing_zyx: the voxel size in mm along z, y, x.
        reach_mm: the largest gap between fragments of one instrument.

    Returns:
        ``[Z, Y, X]`` bool, the voxels of the heaviest group.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial import cKDTree

    fragments, count = ndimage.label(inside, structure=np.ones((3, 3, 3)))
    if count <= 1:
        return inside
    masses = ndimage.sum(probability_zyx, fragments, np.arange(1, count + 1))
    kept = np.argsort(-masses)[:MAX_FRAGMENTS] + 1  # fragment labels, heaviest first
    index = np.argwhere(inside)
    label_of = fragments[tuple(index.T)]
    points = [index[label_of == label] * np.asarray(spacing_zyx, dtype=float) for label in kept]
    sources, targets = [], []
    for i, tree in enumerate(cKDTree(p) for p in points):
        for j in range(i + 1, len(points)):
            if np.min(tree.query(points[j], distance_upper_bound=reach_mm)[0]) <= reach_mm:
                sources.append(i)
                targets.append(j)
    links = coo_matrix((np.ones(len(sources)), (sources, targets)), shape=(len(kept), len(kept)))
    _, group_of = connected_components(links, directed=False)
    group_mass = np.bincount(group_of, weights=masses[kept - 1])
    return np.isin(fragments, kept[group_of == int(np.argmax(group_mass))])


def _volume(inside: np.ndarray, spacing_zyx: Sequence[float]) -> float:
    return float(inside.sum()) * float(np.prod(spacing_zyx))


def _weighted_mean_index(probability_zyx: np.ndarray, index_zyx: np.ndarray) -> tuple[float, float, float]:
    """The probability-weighted mean of the voxel indices ``index_zyx`` ([N, 3])."""
    weights = probability_zyx[tuple(index_zyx.T)].astype(np.float64)
    mean = (index_zyx * weights[:, None]).sum(axis=0) / max(float(weights.sum()), 1e-12)
    return tuple(float(v) for v in mean)  # type: ignore[return-value]


def geodesic_middle(
    probability_zyx: np.ndarray, inside: np.ndarray, spacing_zyx: Sequence[float]
) -> tuple[float, float, float]:
    """The middle of a connected instrument along its length: the voxels as far (within one voxel, along
    paths inside it) from both ends of its longest path, averaged with the probability as weight.

    The annotated centre is the middle of the visible instrument *along its centre line*
    (``phantom._pick_center``); the centroid of a curved tube lies inside its bend, off the tube.
    **[decision]** (2026-12-02): the ends are found by a double sweep (the voxel farthest from any
    voxel, then the voxel farthest from that one), exact for a tube without branches. On the trusted
    finds of the locator benchmark's catheter sets this moved the median error from 4.5 / 4.2 / 8.7 to
    2.9 / 2.7 / 7.9 grid voxels (128³, 160³, cluttered; docs/BENCHMARKS.md, "Locators").
    Shortest paths: :func:`scipy.sparse.csgraph.dijkstra` on the component's 26-neighbour graph, the
    edges weighted by their length in mm.

    Args:
        probability_zyx: ``[Z, Y, X]`` foreground probability.
        inside: ``[Z, Y, X]`` bool, one connected component (26-connectivity is used for the paths).
        spacing_zyx: the voxel size in mm along z, y, x.

    Returns:
        The middle as a continuous index (z, y, x).
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import dijkstra

    index = np.argwhere(inside)
    number = -np.ones(inside.shape, dtype=np.int64)
    number[tuple(index.T)] = np.arange(len(index))
    sources, targets, lengths = [], [], []
    for step in _HALF_NEIGHBOURHOOD:
        neighbour = index + step
        within = np.all((neighbour >= 0) & (neighbour < inside.shape), axis=1)
        target = np.full(len(index), -1)
        target[within] = number[tuple(neighbour[within].T)]
        linked = np.flatnonzero(target >= 0)
        sources.append(linked)
        targets.append(target[linked])
        lengths.append(
            np.full(len(linked), float(np.linalg.norm(step * np.asarray(spacing_zyx, dtype=float))))
        )
    graph = coo_matrix(
        (np.concatenate(lengths), (np.concatenate(sources), np.concatenate(targets))), shape=(len(index),) * 2
    ).tocsr()

    def farthest(distances: np.ndarray) -> int:
        return int(np.argmax(np.where(np.isfinite(distances), distances, -1.0)))

    end_a = farthest(dijkstra(graph, directed=False, indices=0))
    from_a = dijkstra(graph, directed=False, indices=end_a)
    from_b = dijkstra(graph, directed=False, indices=farthest(from_a))
    middle = np.isfinite(from_a) & (np.abs(from_a - from_b) <= float(max(spacing_zyx)))
    return _weighted_mean_index(probability_zyx, index[middle])


_HALF_NEIGHBOURHOOD = np.array(
    [(z, y, x) for z in (-1, 0, 1) for y in (-1, 0, 1) for x in (-1, 0, 1) if (z, y, x) > (0, 0, 0)]
)
"""One of each pair of opposite 26-neighbour steps (the graph is undirected)."""


def axis_middle(
    probability_zyx: np.ndarray, inside: np.ndarray, spacing_zyx: Sequence[float]
) -> tuple[float, float, float]:
    """The middle of an instrument found in fragments: the probability-weighted median of its voxels
    along their first principal axis (in mm), and the mean of the voxels within one voxel of it.

    **[decision]** (2026-12-02) for the ``all`` pick (of its :func:`heaviest_group`): fragments have no
    path between them for :func:`geodesic_middle`. On the trusted finds of the locator benchmark's
    guide-wire sets it moved the median error from 9.8 / 7.8 to 6.9 / 5.7 grid voxels (128³, 160³)
    against the centroid (of every confident voxel, before the grouping).

    Args:
        probability_zyx: ``[Z, Y, X]`` foreground probability.
        inside: ``[Z, Y, X]`` bool, the voxels taken as the instrument.
        spacing_zyx: the voxel size in mm along z, y, x.

    Returns:
        The middle as a continuous index (z, y, x).
    """
    index = np.argwhere(inside)
    if len(index) < 3:  # no axis to speak of
        return _weighted_mean_index(probability_zyx, index)
    weights = probability_zyx[tuple(index.T)].astype(np.float64)
    position = index * np.asarray(spacing_zyx, dtype=float)
    centred = position - (position * weights[:, None]).sum(axis=0) / weights.sum()
    axis = np.linalg.eigh(np.cov(centred.T, aweights=weights))[1][:, -1]  # the largest eigenvalue's
    along = centred @ axis
    order = np.argsort(along)
    cumulative = np.cumsum(weights[order])
    median = along[order][np.searchsorted(cumulative, cumulative[-1] / 2)]
    near = np.abs(along - median) <= float(max(spacing_zyx))
    return _weighted_mean_index(probability_zyx, index[near])


PICKS = {"heaviest": heaviest_component, "all": all_components}


def volume_confidence(volume_mm3: float, min_volume_mm3: float) -> float:
    """``v / (v + V_min)``: 0 for nothing found, 0.5 at the locator's ``min_volume_mm3``, towards 1 above."""
    return float(volume_mm3) / (float(volume_mm3) + float(min_volume_mm3))


def volume_centre(image: sitk.Image) -> tuple[float, float, float]:
    """The physical point (LPS mm) at the middle of ``image``'s voxel grid."""
    middle = (np.asarray(image.GetSize(), dtype=float) - 1.0) / 2.0
    return tuple(float(v) for v in image.TransformContinuousIndexToPhysicalPoint(middle.tolist()))  # type: ignore[return-value]


def find_instrument(locator: SegmentationLocator, image: sitk.Image) -> SegmentationFind:
    """Run the locator's model(s) over ``image`` and locate the instrument (module docstring).

    Args:
        locator: a loaded segmentation locator.
        image: the volume (bad images raise :class:`InputError`, as for :func:`segment`).

    Returns:
        The first trusted find in the locator's model order (its point, confidence, volume and model),
        or, when no model is confident, the volume's centre with the highest confidence and
        ``low_confidence`` set.
    """
    from ..imageio import check_contrast

    check_contrast(image, "find")
    finds = []
    for member in locator.models:  # in the listed order; the first trusted find answers
        finds.append(_find_with(member, image, locator.confidence_threshold))
        if not finds[-1].low_confidence:
            return finds[-1]
    return max(finds, key=lambda f: f.confidence)  # none trusted: each already answers the volume's centre


def _find_with(member: LocatorModel, image: sitk.Image, threshold: float) -> SegmentationFind:
    """One model's find: the middle of what its pick takes, and the confidence of its volume."""
    from ..inference import volume_probability

    probability, grid = volume_probability(member.model, image)
    found = PICKS[member.pick](probability, grid.GetSpacing()[::-1])
    volume = 0.0 if found is None else found[1]
    confidence = volume_confidence(volume, member.min_volume_mm3)
    if found is None or confidence < threshold:
        return SegmentationFind(volume_centre(image), confidence, True, volume)
    point = grid.TransformContinuousIndexToPhysicalPoint(list(found[0][::-1]))
    return SegmentationFind(tuple(float(v) for v in point), confidence, False, volume, member.name)  # type: ignore[arg-type]


def _model_reference(folder: Path, model: object) -> str:
    """A model a locator names: a model name, or a path (relative ones from the locator folder)."""
    if not isinstance(model, str) or not model:
        raise ModelError(f"{folder / 'locator.json'}: a segmentation locator needs a 'model' (name or path)")
    if os.sep in model or "/" in model:
        path = Path(model).expanduser()
        return str(path if path.is_absolute() else (folder / path).resolve())
    return model


def _checked_entry(volume: object, pick: object) -> tuple[float, str]:
    """A model entry's minimum volume and pick, checked (:class:`InputError` naming the bad one)."""
    checked = checked_number("min_volume_mm3", volume, float, 0.0, 1e9)
    if pick not in PICKS:
        raise InputError(f"pick {pick!r} is none of {', '.join(PICKS)}")
    return float(checked), str(pick)


def _named_models(folder: Path, meta: dict) -> list[tuple[str, float, str]]:
    """The (model reference, minimum volume, pick) of a locator.json: format 1's one, format 2's list."""
    where = folder / "locator.json"
    if "models" not in meta:
        entries = [
            {"model": meta.get("model"), "min_volume_mm3": meta.get("min_volume_mm3", DEFAULT_MIN_VOLUME_MM3)}
        ]
    elif (
        isinstance(meta["models"], list)
        and meta["models"]
        and all(isinstance(e, dict) for e in meta["models"])
    ):
        entries = meta["models"]
    else:
        raise ModelError(f'{where}: \'models\' must be a non-empty list of {{"model", "min_volume_mm3"}}')
    named = []
    for entry in entries:
        try:
            volume, pick = _checked_entry(
                entry.get("min_volume_mm3", DEFAULT_MIN_VOLUME_MM3), entry.get("pick", "heaviest")
            )
        except InputError as exc:
            raise ModelError(f"{where}: {exc}") from None
        named.append((_model_reference(folder, entry.get("model")), volume, pick))
    return named


def check_segmentation_meta(path: Path, meta: dict) -> None:
    """Refuse a segmentation locator's description that this version cannot use (:class:`ModelError`)."""
    version = meta.get("format", 1)
    if not isinstance(version, int) or version > SEGMENTATION_FORMAT:
        raise ModelError(
            f"{path} has segmentation-locator format {version!r}; this SemiSupSeg reads up to "
            f"{SEGMENTATION_FORMAT}: update SemiSupSeg"
        )
    _named_models(path.parent, meta)


def load_segmentation_locator(folder: Path, meta: dict, device: str | torch.device) -> SegmentationLocator:
    """Load the model(s) a segmentation locator names (``weights_only=True``, as every model)."""
    check_segmentation_meta(folder / "locator.json", meta)
    members = []
    for reference, volume, pick in _named_models(folder, meta):
        try:
            members.append(LocatorModel(load_model(reference, device), volume, pick))
        except ModelError as exc:
            raise ModelError(f"segmentation locator {folder}: {exc}") from None
    return SegmentationLocator(path=folder, meta=meta, models=members, device=torch.device(device))


def save_segmentation_locator(
    folder: str | os.PathLike,
    models: str | list[str],
    *,
    name: str | None = None,
    description: str = "",
    min_volume_mm3: float | list[float] = DEFAULT_MIN_VOLUME_MM3,
    pick: str | list[str] = "heaviest",
) -> Path:
    """Write a segmentation locator folder (``locator.json`` only; the models stay where they are).

    Args:
        folder: the locator folder to write.
        models: the segmentation model, or several (one per instrument): names (models folder or
            shipped) or paths.
        name: the locator's name (default: the folder name).
        description: one line for the panels.
        min_volume_mm3: below this component volume a model's find is not trusted; one value for
            every model, or one per model.
        pick: ``heaviest`` or ``all`` (module docstring); one for every model, or one per model.

    Returns:
        The folder.
    """
    folder = Path(folder)
    models = [models] if isinstance(models, str) else list(models)
    volumes = (
        list(min_volume_mm3) if isinstance(min_volume_mm3, (list, tuple)) else [min_volume_mm3] * len(models)
    )
    picks = list(pick) if isinstance(pick, (list, tuple)) else [pick] * len(models)
    if not models or len(volumes) != len(models) or len(picks) != len(models):
        raise InputError(
            f"give one minimum volume and pick for all models or one per model ({len(models)}), "
            f"got {len(volumes)} and {len(picks)}"
        )
    entries = []
    for model, given_volume, given_pick in zip(models, volumes, picks, strict=True):
        volume, how = _checked_entry(given_volume, given_pick)
        load_model(model)  # refuse a model that cannot be loaded now rather than at the first locate
        if os.sep in str(model) or "/" in str(model):
            model = str(Path(model).expanduser().resolve())  # a path is recorded absolute
        entries.append({"model": str(model), "min_volume_mm3": volume, "pick": how})
    folder.mkdir(parents=True, exist_ok=True)
    meta = {"format": 1 if len(entries) == 1 else 2, "kind": SEGMENTATION_KIND, "name": name or folder.name}
    meta["description"] = description
    meta.update(entries[0] if len(entries) == 1 else {"models": entries})
    meta["created"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    meta["software"] = software_versions()
    atomic_write_json(folder / "locator.json", meta)
    return folder
