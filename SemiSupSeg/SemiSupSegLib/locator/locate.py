"""Locating the instrument in a volume with a trained locator."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
import torch

from .agent import QNetwork, q_values
from .by_segmentation import SegmentationLocator, find_instrument
from .environment import (
    CropSampler,
    GridVolume,
    check_volume,
    combine,
    grid_geometry,
    multiscale_search,
    prepare_volume,
    start_positions,
)
from .recognition import instrument_middle, point_confidence, recognizer
from .store import Locator


@dataclass
class LocateResult:
    """Where the locator puts the instrument centre.

    ``point_lps``: physical point (LPS mm); ``index_xyz``: continuous voxel index (x, y, z) in the
    input image; ``grid_index_zyx``: the point on the locator's grid; ``q_value``: the agent's final
    max-Q (it does not tell a good point from a bad one); ``seconds``: wall time including resampling.
    With recognition, ``confidence`` is the instrument likelihood at the point (:func:`point_confidence`)
    and ``low_confidence`` says it is below the threshold calibrated on the locator's validation cases
    (then a clinician should place the point by hand); both are None for a points-only locator.
    ``found_by``: for a segmentation locator, the model whose find it is (None when nothing was trusted).
    """

    point_lps: tuple[float, float, float]
    index_xyz: tuple[float, float, float]
    q_value: float
    seconds: float
    grid_index_zyx: tuple[float, float, float] = (0.0, 0.0, 0.0)
    agents: int = 1
    confidence: float | None = None
    low_confidence: bool | None = None
    found_by: str | None = None


@contextlib.contextmanager
def _one_thread(device: torch.device) -> Iterator[None]:
    """One intra-op CPU thread: the Q-network's batches are tiny (at most 9 crops); measured on the
    2-core benchmark machine under load, 2 threads were up to 100x slower than 1 and never faster."""
    if device.type != "cpu":
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def search_volume(
    network: QNetwork,
    volume: GridVolume,
    scales: tuple[int, ...],
    crop: int,
    *,
    context: bool = False,
    starts: int,
    how: str,
    max_steps: int,
    device: torch.device,
    refine: bool = False,
) -> tuple[np.ndarray, float]:
    """Grid point (z, y, x) and final Q of a multi-agent multi-scale search on a prepared volume.

    The network's input channels say whether it expects the recognition channels (the volume must then
    carry its likelihood); with ``refine`` the point moves to the middle of the recognised instrument
    nearest it (:func:`~.recognition.instrument_middle`), if there is one.
    """
    recognition = bool(network.config.recognition)
    sampler = CropSampler([volume], scales, crop, context=context, recognition=recognition)
    result = multiscale_search(
        lambda s, k: q_values(network, s, k, device),
        sampler,
        start_positions(sampler.grid, starts),
        max_steps=max_steps,
    )
    point, q = combine(result, how)
    if refine and volume.likelihood is not None:
        middle = instrument_middle(volume.likelihood, point)
        if middle is not None:
            point = middle
    return point, q


def locate(
    locator: Locator | SegmentationLocator,
    image: sitk.Image,
    *,
    starts: int | None = None,
    how: str | None = None,
    max_steps: int | None = None,
    refine: bool | None = None,
) -> LocateResult:
    """Find the instrument centre in ``image``; search options default to the locator's ``search``.

    Args:
        locator: a loaded locator (:func:`~.store.load_locator`).
        image: the volume.
        starts: agents (1-9); how: ``"q"`` or ``"median"``; max_steps: per agent and scale;
            refine: move the point to the recognised instrument's middle (default: the locator's).
            None of these apply to a segmentation locator (:mod:`.by_segmentation`).

    Returns:
        The point, its confidence (with recognition, or a segmentation locator's) and the time taken
        (file reading excluded).
    """
    t0 = time.monotonic()
    if isinstance(locator, SegmentationLocator):
        return _located_by_segmentation(locator, image, t0)
    search = locator.search
    starts = int(search["starts"] if starts is None else starts)
    check_volume(image, locator.crop, locator.grid)
    with torch.inference_mode(), _one_thread(locator.device):
        recognize = None if locator.recognizer is None else recognizer(locator.recognizer, locator.device)
        volume = prepare_volume(image, locator.grid, locator.scales, locator.levels, recognize)
        grid_point, q = search_volume(
            locator.network,
            volume,
            locator.scales,
            locator.crop,
            context=locator.context,
            starts=starts,
            how=how or search["combine"],
            max_steps=int(max_steps or search["max_steps"]),
            device=locator.device,
            refine=bool(search.get("refine", False) if refine is None else refine),
        )
    confidence = low = None
    if volume.likelihood is not None:
        confidence = point_confidence(volume.likelihood, grid_point)
        low = confidence < locator.confidence_threshold
    point = volume.geometry.to_physical(grid_point)
    index = image.TransformPhysicalPointToContinuousIndex(tuple(float(v) for v in point))
    return LocateResult(
        point_lps=tuple(float(v) for v in point),
        index_xyz=tuple(float(v) for v in index),
        q_value=q,
        seconds=time.monotonic() - t0,
        grid_index_zyx=tuple(float(v) for v in grid_point),
        agents=starts,
        confidence=confidence,
        low_confidence=low,
    )


def _located_by_segmentation(locator: SegmentationLocator, image: sitk.Image, t0: float) -> LocateResult:
    """:func:`locate` for a segmentation locator; ``q_value`` is NaN (there is no agent)."""
    found = find_instrument(locator, image)
    index = image.TransformPhysicalPointToContinuousIndex(found.point_lps)
    grid_point = grid_geometry(image, locator.grid).to_index(found.point_lps)
    return LocateResult(
        point_lps=found.point_lps,
        index_xyz=tuple(float(v) for v in index),
        q_value=float("nan"),
        seconds=time.monotonic() - t0,
        grid_index_zyx=tuple(float(v) for v in grid_point),
        agents=0,
        confidence=found.confidence,
        low_confidence=found.low_confidence,
        found_by=found.found_by,
    )


def grid_index_of(locator: Locator, image: sitk.Image, point_lps) -> tuple[float, float, float]:
    """The continuous index (z, y, x) of an LPS point on the locator's grid for ``image``."""
    return tuple(float(v) for v in grid_geometry(image, locator.grid).to_index(point_lps))
