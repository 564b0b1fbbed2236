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
from .store import Locator


@dataclass
class LocateResult:
    """Where the locator puts the instrument centre.

    ``point_lps``: physical point (LPS mm); ``index_xyz``: continuous voxel index (x, y, z) in the
    input image; ``grid_index_zyx``: the point on the locator's grid; ``q_value``: the agent's final
    max-Q, its confidence (near 0 or below: the agent expects no further approach, as at the target;
    clearly positive: it still expected to move); ``seconds``: wall time including resampling.
    """

    point_lps: tuple[float, float, float]
    index_xyz: tuple[float, float, float]
    q_value: float
    seconds: float
    grid_index_zyx: tuple[float, float, float] = (0.0, 0.0, 0.0)
    agents: int = 1


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
) -> tuple[np.ndarray, float]:
    """Grid point (z, y, x) and final Q of a multi-agent multi-scale search on a prepared volume."""
    sampler = CropSampler([volume], scales, crop, context=context)
    result = multiscale_search(
        lambda s, k: q_values(network, s, k, device),
        sampler,
        start_positions(sampler.grid, starts),
        max_steps=max_steps,
    )
    return combine(result, how)


def locate(
    locator: Locator,
    image: sitk.Image,
    *,
    starts: int | None = None,
    how: str | None = None,
    max_steps: int | None = None,
) -> LocateResult:
    """Find the instrument centre in ``image``; search options default to the locator's ``search``."""
    t0 = time.monotonic()
    search = locator.search
    starts = int(search["starts"] if starts is None else starts)
    check_volume(image, locator.crop, locator.grid)
    volume = prepare_volume(image, locator.grid, locator.scales, locator.levels)
    with torch.inference_mode(), _one_thread(locator.device):
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
        )
    point = volume.geometry.to_physical(grid_point)
    index = image.TransformPhysicalPointToContinuousIndex(tuple(float(v) for v in point))
    return LocateResult(
        point_lps=tuple(float(v) for v in point),
        index_xyz=tuple(float(v) for v in index),
        q_value=q,
        seconds=time.monotonic() - t0,
        grid_index_zyx=tuple(float(v) for v in grid_point),
        agents=starts,
    )


def grid_index_of(locator: Locator, image: sitk.Image, point_lps) -> tuple[float, float, float]:
    """The continuous index (z, y, x) of an LPS point on the locator's grid for ``image``."""
    return tuple(float(v) for v in grid_geometry(image, locator.grid).to_index(point_lps))
