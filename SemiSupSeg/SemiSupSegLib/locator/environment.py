"""The DQN locator's environment: a volume on a fixed grid, crops, actions, reward, multi-scale search.

Conventions (see ``docs/`` and ``METHODS.md``, "DQN instrument pre-selection"):

* A volume is resampled linearly onto a ``grid³`` grid (96³ by default) covering the same physical
  extent, then normalised (percentile clipping + z-score, as
  :class:`~SemiSupSegLib.preprocessing.Preprocessing` does).
* Agent positions are integer grid voxels in **array order (z, y, x)**; ITK order (x, y, z) is used only
  where points leave this module.
* The state is the last :data:`HISTORY` crops of ``crop³`` voxels centred on the agent, sampled with a
  stride equal to the current scale; voxels outside the grid are zero. For scales above 1 the crop is
  sampled from a box-filtered copy of the volume (filter width = scale), so a 1-voxel guide-wire does not
  vanish between the samples of a coarse crop (anti-aliasing).
* 6 actions move the agent by ± one scale step along z, y or x. The reward is ``d(previous) - d(next)``
  in millimetres; a move that would leave the grid is refused (the agent stays) and costs ``-1``.
* ``levels`` chooses what a coarse crop samples. ``"box"``: the box-filtered volume (above).
  ``"peak"``: a band-pass (box 3 minus box 9: thin bright structures kept, slow tissue shading removed)
  followed by a running maximum of width ``scale``, so an instrument crossing a coarse sample's block
  still lights that sample instead of being averaged into the speckle (measured in docs/BENCHMARKS.md).
* With ``context`` the state has one more channel: the crop at the agent's position sampled at the next
  coarser scale, so an agent at scale 1 or 3 also sees the surroundings of its crop (where along the
  instrument it stands). At the coarsest scale the context is the current-scale crop itself.
* With ``recognition`` (locator II) the volume also carries an instrument-likelihood map (see
  :mod:`.recognition`) and the state has two more channels: the likelihood crop at the agent's
  position and scale, and the same one scale coarser (so the agent sees the whole instrument around
  it and where along it it stands). The crops sample a running maximum of width ``scale``.
* Multi-scale search (step 9 → 3 → 1): when an agent oscillates (a position seen :data:`OSC_REPEATS`
  times in the last :data:`OSC_WINDOW`) or exhausts its steps at a scale, it jumps to the position of
  its history at that scale with the lowest max-Q (the state from which it expects the least further
  approach, i.e. closest to the target), then goes down a scale; at the finest scale that ends its search.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from ..errors import InputError
from ..imageio import check_contrast
from ..preprocessing import Preprocessing

DEFAULT_GRID = 96
DEFAULT_CROP = 21
DEFAULT_SCALES = (9, 3, 1)
LEVEL_KINDS = ("box", "peak")
HISTORY = 4
OSC_WINDOW = 20
OSC_REPEATS = 4
REFUSED_REWARD = -1.0
# Action k moves along array axis k // 2 by +1 (even k) or -1 (odd k): +z, -z, +y, -y, +x, -x.
ACTIONS = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]], dtype=np.int64)


# --------------------------------------------------------------------------------------------- grid


@dataclass(frozen=True)
class GridGeometry:
    """Where a ``size³`` grid lies in physical space (ITK conventions, LPS mm)."""

    origin: np.ndarray  # (x, y, z) mm
    spacing: np.ndarray  # (x, y, z) mm
    direction: np.ndarray  # 3 x 3
    size: int

    @property
    def spacing_zyx(self) -> np.ndarray:
        return self.spacing[::-1].copy()

    def to_physical(self, index_zyx: Sequence[float]) -> np.ndarray:
        """LPS point (mm) of a (continuous) grid index in array order (z, y, x)."""
        index_xyz = np.asarray(index_zyx, dtype=float)[::-1]
        return self.origin + self.direction @ (index_xyz * self.spacing)

    def to_index(self, point_lps: Sequence[float]) -> np.ndarray:
        """Continuous grid index (z, y, x) of an LPS point (mm)."""
        local = np.linalg.solve(self.direction, np.asarray(point_lps, dtype=float) - self.origin)
        return (local / self.spacing)[::-1]


def grid_geometry(image: sitk.Image, size: int) -> GridGeometry:
    """The ``size³`` grid covering the same physical extent (voxel edges) as ``image``."""
    spacing = np.asarray(image.GetSpacing(), dtype=float)
    extent = spacing * np.asarray(image.GetSize(), dtype=float)
    new_spacing = extent / size
    direction = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
    origin = np.asarray(image.GetOrigin(), dtype=float) + direction @ ((new_spacing - spacing) / 2)
    return GridGeometry(origin=origin, spacing=new_spacing, direction=direction, size=int(size))


def check_volume(image: sitk.Image, crop: int, grid: int) -> None:
    """:class:`InputError` if the image is smaller than a crop along an axis, or the grid is, or if it is
    constant (the agent would wander over a blank grid and answer a point anyway)."""
    size = tuple(int(s) for s in image.GetSize())
    if grid < crop:
        raise InputError(f"locator grid {grid}³ is smaller than its crop {crop}³")
    small = [axis for axis, n in zip("xyz", size, strict=True) if n < crop]
    if small:
        raise InputError(
            f"image of size {size} is smaller than the locator's crop of {crop}³ voxels along "
            f"{', '.join(small)}; the agent needs at least a crop's worth of context"
        )
    check_contrast(image, "find")


def resample_to_grid(image: sitk.Image, geometry: GridGeometry) -> np.ndarray:
    """The image resampled linearly onto the grid, as a [z, y, x] float32 array."""
    size = [geometry.size] * 3
    resampled = sitk.Resample(
        sitk.Cast(image, sitk.sitkFloat32),
        size,
        sitk.Transform(),
        sitk.sitkLinear,
        tuple(geometry.origin),
        tuple(geometry.spacing),
        tuple(geometry.direction.ravel()),
        0.0,
        sitk.sitkFloat32,
    )
    return sitk.GetArrayFromImage(resampled)


def check_levels(levels: str) -> str:
    if levels not in LEVEL_KINDS:
        raise InputError(f"unknown locator levels {levels!r}; use one of {', '.join(LEVEL_KINDS)}")
    return levels


def band_pass(array: np.ndarray) -> np.ndarray:
    """Box mean of width 3 minus box mean of width 9: thin bright structures kept, slow shading removed."""
    smooth = lambda w: ndimage.uniform_filter(array, size=w, mode="nearest")  # noqa: E731
    return smooth(3) - smooth(9)


def scale_levels(array: np.ndarray, scales: Sequence[int], levels: str = "box") -> np.ndarray:
    """[n_scales, z, y, x]: one array per scale (scale 1: unchanged); see the module notes on ``levels``.

    Hand-written from scipy's separable filters: MONAI's smoothing transforms work on channel-first
    tensors and have no running maximum. Preparing a 96³ grid (resampling included) takes about 0.05 s
    with ``box`` and 0.1 s with ``peak`` (``benchmarks/locator_diagnostics.py contrast``).
    """
    check_levels(levels)
    if levels == "box":
        coarse = lambda s: ndimage.uniform_filter(array, size=s, mode="nearest")  # noqa: E731
    else:
        band = band_pass(array)
        coarse = lambda s: ndimage.maximum_filter(band, size=s, mode="nearest")  # noqa: E731
    stack = [array if s <= 1 else coarse(int(s)) for s in scales]
    return np.stack(stack).astype(np.float32, copy=False)


@dataclass
class GridVolume:
    """A volume prepared for the agent: its grid geometry and one normalised array per scale.

    With a recognition network, also the instrument likelihood on the grid and its per-scale levels.
    """

    geometry: GridGeometry
    levels: np.ndarray  # [n_scales, g, g, g] float32 or float16
    likelihood: np.ndarray | None = None  # [g, g, g] in [0, 1]
    recognition: np.ndarray | None = None  # [n_scales, g, g, g]: running maxima of the likelihood


Recognizer = Callable[[np.ndarray], np.ndarray]  # normalised grid [g, g, g] -> likelihood [g, g, g]


def prepare_volume(
    image: sitk.Image,
    grid: int,
    scales: Sequence[int],
    levels: str = "box",
    recognizer: Recognizer | None = None,
) -> GridVolume:
    """Resample ``image`` onto a ``grid³`` grid, normalise it and build its per-scale levels.

    Args:
        image: the volume (any size, spacing and direction).
        grid: voxels per axis of the locator's grid.
        scales: the search's step sizes, coarse to fine.
        levels: what coarse crops sample (``"box"`` or ``"peak"``).
        recognizer: the instrument-likelihood function of a locator with recognition, else None.

    Returns:
        The prepared volume (with its likelihood and recognition levels when ``recognizer`` is given).
    """
    from .recognition import likelihood_levels

    geometry = grid_geometry(image, grid)
    array = Preprocessing().normalize(resample_to_grid(image, geometry))
    volume = GridVolume(geometry=geometry, levels=scale_levels(array, scales, levels))
    if recognizer is not None:
        volume.likelihood = recognizer(array)
        volume.recognition = likelihood_levels(volume.likelihood, scales)
    return volume


# --------------------------------------------------------------------------------------------- crops


class CropSampler:
    """Cuts crops from one or many prepared volumes with one vectorised gather (no per-voxel Python).

    All levels of all volumes are concatenated into one flat array; a crop of volume ``v`` at scale
    index ``k`` reads the block ``v * n_scales + k``. With ``recognition`` the volumes' likelihood
    levels are held the same way in a second flat array.
    """

    def __init__(
        self,
        volumes: Sequence[GridVolume],
        scales: Sequence[int],
        crop: int,
        dtype=np.float32,
        context: bool = False,
        recognition: bool = False,
    ):
        if not volumes:
            raise InputError("no volume to sample crops from")
        self.grid = int(volumes[0].levels.shape[-1])
        self.scales = np.asarray(scales, dtype=np.int64)
        self.crop = int(crop)
        self.context = bool(context)
        self.recognition = bool(recognition)
        self.flat = np.concatenate([v.levels.astype(dtype, copy=False).reshape(-1) for v in volumes])
        self.flat_recognition: np.ndarray | None = None
        if self.recognition:
            if any(v.recognition is None for v in volumes):
                raise InputError("a volume lacks the likelihood map its locator's recognition needs")
            self.flat_recognition = np.concatenate(
                [v.recognition.astype(dtype, copy=False).reshape(-1) for v in volumes]
            )
        self.block = self.grid**3
        self._offsets = np.arange(self.crop, dtype=np.int64) - self.crop // 2

    def crops(
        self,
        volume: np.ndarray,
        positions: np.ndarray,
        scale_index: np.ndarray,
        flips: np.ndarray | None = None,
        source: np.ndarray | None = None,
    ) -> np.ndarray:
        """``[N, crop, crop, crop]`` float32 crops centred on ``positions`` ([N, 3] z, y, x).

        ``flips`` ([N, 3] bool, optional) mirrors the volume along those axes (augmentation): positions
        are then in the mirrored frame. ``source``: the flat array to cut from (default: the image
        levels; :meth:`add_channels` passes the likelihood levels).
        """
        positions = np.asarray(positions, dtype=np.int64).reshape(-1, 3)
        scale_index = np.asarray(scale_index, dtype=np.int64).reshape(-1)
        stride = self.scales[scale_index]
        coords = positions[:, :, None] + stride[:, None, None] * self._offsets[None, None, :]  # [N, 3, c]
        valid = (coords >= 0) & (coords < self.grid)
        coords = np.clip(coords, 0, self.grid - 1)
        if flips is not None:
            coords = np.where(
                np.asarray(flips, bool).reshape(-1, 3)[:, :, None], self.grid - 1 - coords, coords
            )
        g = self.grid
        flat = (
            coords[:, 0, :, None, None] * (g * g)
            + coords[:, 1, None, :, None] * g
            + coords[:, 2, None, None, :]
        )
        base = (np.asarray(volume, dtype=np.int64).reshape(-1) * len(self.scales) + scale_index) * self.block
        values = np.take(self.flat if source is None else source, flat + base[:, None, None, None])
        inside = valid[:, 0, :, None, None] & valid[:, 1, None, :, None] & valid[:, 2, None, None, :]
        return np.where(inside, values, 0).astype(np.float32, copy=False)

    def frames(
        self,
        volume: np.ndarray,
        history: np.ndarray,
        scale_index: np.ndarray,
        flips: np.ndarray | None = None,
    ) -> np.ndarray:
        """``[N, H, c, c, c]``: the crops of position histories ``[N, H, 3]`` (oldest first)."""
        n, h = history.shape[:2]
        flips = None if flips is None else np.repeat(np.asarray(flips).reshape(-1, 3), h, axis=0)
        crops = self.crops(np.repeat(volume, h), history.reshape(-1, 3), np.repeat(scale_index, h), flips)
        return crops.reshape(n, h, self.crop, self.crop, self.crop)

    def add_channels(
        self,
        frames: np.ndarray,
        volume: np.ndarray,
        positions: np.ndarray,
        scale_index: np.ndarray,
        flips: np.ndarray | None = None,
    ) -> np.ndarray:
        """``frames`` plus the extra channels of the state (see the module notes), in this order:

        with ``context``, the image crop at ``positions`` one scale coarser; with ``recognition``, the
        likelihood crop at the current scale and the one a scale coarser.
        """
        scale_index = np.asarray(scale_index, dtype=np.int64).reshape(-1)
        coarser = np.maximum(scale_index - 1, 0)
        extra = []
        if self.context:
            extra.append(self.crops(volume, positions, coarser, flips))
        if self.recognition:
            for k in (scale_index, coarser):
                extra.append(self.crops(volume, positions, k, flips, source=self.flat_recognition))
        if not extra:
            return frames
        return np.concatenate([frames, np.stack(extra, axis=1)], axis=1)

    def states(
        self,
        volume: np.ndarray,
        history: np.ndarray,
        scale_index: np.ndarray,
        flips: np.ndarray | None = None,
    ) -> np.ndarray:
        """``[N, H + extra channels, c, c, c]`` states from position histories ``[N, H, 3]``."""
        frames = self.frames(volume, history, scale_index, flips)
        return self.add_channels(frames, volume, np.asarray(history)[:, -1], scale_index, flips)


# --------------------------------------------------------------------------------------------- dynamics


def move(
    positions: np.ndarray, actions: np.ndarray, steps: np.ndarray, grid: int
) -> tuple[np.ndarray, np.ndarray]:
    """New positions after the actions and a mask of refused moves (which would leave the grid)."""
    positions = np.asarray(positions, dtype=np.int64).reshape(-1, 3)
    target = positions + ACTIONS[np.asarray(actions).reshape(-1)] * np.asarray(steps).reshape(-1, 1)
    refused = np.any((target < 0) | (target >= grid), axis=1)
    return np.where(refused[:, None], positions, target), refused


def distance_mm(positions: np.ndarray, targets: np.ndarray, spacing_zyx: np.ndarray) -> np.ndarray:
    """Physical distance between grid positions and targets ([N, 3] z, y, x; spacing [N, 3] or [3])."""
    return np.linalg.norm((np.asarray(positions, float) - np.asarray(targets, float)) * spacing_zyx, axis=-1)


def reward(
    previous: np.ndarray, new: np.ndarray, targets: np.ndarray, spacing_zyx: np.ndarray, refused: np.ndarray
) -> np.ndarray:
    """``d(previous) - d(new)`` in mm (positive when the agent gets closer); ``-1`` for a refused move."""
    gain = distance_mm(previous, targets, spacing_zyx) - distance_mm(new, targets, spacing_zyx)
    return np.where(np.asarray(refused, bool), REFUSED_REWARD, gain)


def is_oscillating(
    visits: Sequence[Sequence[int]], window: int = OSC_WINDOW, repeats: int = OSC_REPEATS
) -> bool:
    """True if a position occurs at least ``repeats`` times among the last ``window`` visits."""
    recent = [tuple(int(v) for v in p) for p in list(visits)[-window:]]
    return any(recent.count(p) >= repeats for p in set(recent))


# --------------------------------------------------------------------------------------------- search

QFunction = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (states [N,H,c,c,c], scale index [N]) -> [N, 6]


def start_positions(grid: int, count: int) -> np.ndarray:
    """``count`` start points: the grid centre, then the 8 octant centres (``[count, 3]`` z, y, x)."""
    centre = [(grid - 1) // 2] * 3
    lo, hi = grid // 4, (3 * grid) // 4
    corners = [[z, y, x] for z in (lo, hi) for y in (lo, hi) for x in (lo, hi)]
    points = np.array([centre, *corners], dtype=np.int64)
    if not 1 <= count <= len(points):
        raise InputError(f"the locator supports 1 to {len(points)} starts, not {count}")
    return points[:count]


@dataclass
class SearchResult:
    """Final grid positions (z, y, x), their max-Q, and the number of network evaluations."""

    positions: np.ndarray  # [K, 3]
    q_values: np.ndarray  # [K]
    steps: int


class _Agents:
    """Book-keeping of K agents searching one volume together.

    ``frames`` caches each agent's last crops, so a step cuts one new crop per agent, not four.
    """

    def __init__(self, starts: np.ndarray, sampler: CropSampler | None = None, volume_index: int = 0) -> None:
        k = len(starts)
        self.sampler, self.volume_index = sampler, volume_index
        self.pos = np.asarray(starts, dtype=np.int64).copy()
        self.history = np.repeat(self.pos[:, None, :], HISTORY, axis=1)
        self.scale = np.zeros(k, dtype=np.int64)
        self.active = np.ones(k, dtype=bool)
        self.final_q = np.full(k, np.nan)
        self.visits: list[list[tuple]] = [[] for _ in range(k)]
        self.trail_q: list[list[float]] = [[] for _ in range(k)]
        self.frames: np.ndarray | None = None
        if sampler is not None:
            crop = sampler.crop
            self.frames = np.zeros((k, HISTORY, crop, crop, crop), np.float32)
            self.refresh([], list(range(k)))

    def jump(self, i: int, position: np.ndarray) -> None:
        self.pos[i] = position
        self.history[i] = position
        self.visits[i], self.trail_q[i] = [], []

    def states(self, idx: np.ndarray) -> np.ndarray:
        """The Q-network input of agents ``idx``: their cached frames (plus the context crop)."""
        volume = np.full(len(idx), self.volume_index)
        return self.sampler.add_channels(self.frames[idx], volume, self.pos[idx], self.scale[idx])

    def _cut(self, agents: list[int]) -> np.ndarray:
        volume = np.full(len(agents), self.volume_index)
        return self.sampler.crops(volume, self.pos[agents], self.scale[agents])

    def refresh(self, moved: list[int], restarted: list[int]) -> None:
        """Append the crop at the new position of ``moved`` agents; refill the frames of ``restarted``."""
        if self.frames is None:
            return
        if moved:
            self.frames[moved] = np.concatenate(
                [self.frames[moved][:, 1:], self._cut(moved)[:, None]], axis=1
            )
        if restarted:
            self.frames[restarted] = self._cut(restarted)[:, None]


def _settle(agents: _Agents, i: int, n_scales: int) -> None:
    """Jump agent ``i`` to its lowest-Q position at this scale; go down a scale or finish."""
    best = int(np.argmin(agents.trail_q[i]))
    q, position = agents.trail_q[i][best], np.array(agents.visits[i][best])
    agents.jump(i, position)
    if agents.scale[i] + 1 >= n_scales:
        agents.active[i], agents.final_q[i] = False, q
    else:
        agents.scale[i] += 1


def _step_agents(agents: _Agents, idx: np.ndarray, q: np.ndarray, n_scales: int, max_steps: int, grid: int):
    """Record the Q of each active agent, settle those that oscillate, move the others greedily."""
    moving, restarted = [], []
    for row, i in enumerate(idx):
        agents.visits[i].append(tuple(agents.pos[i]))
        agents.trail_q[i].append(float(q[row].max()))
        if is_oscillating(agents.visits[i]) or len(agents.visits[i]) >= max_steps:
            _settle(agents, i, n_scales)
            if agents.active[i]:
                restarted.append(i)
        else:
            moving.append((row, i))
    if moving:
        rows, ids = (list(v) for v in zip(*moving, strict=True))
        steps = agents.sampler.scales[agents.scale[ids]] if agents.sampler is not None else 1
        new, _ = move(agents.pos[ids], q[rows].argmax(axis=1), steps, grid)
        agents.pos[ids] = new
        agents.history[ids] = np.concatenate([agents.history[ids][:, 1:], new[:, None]], axis=1)
    agents.refresh([i for _, i in moving], restarted)


def multiscale_search(
    q_function: QFunction,
    sampler: CropSampler,
    starts: np.ndarray,
    max_steps: int = 40,
    volume_index: int = 0,
) -> SearchResult:
    """Greedy multi-scale search of K agents at once (one batched Q evaluation per step)."""
    agents = _Agents(starts, sampler, volume_index)
    n_scales, steps = len(sampler.scales), 0
    while agents.active.any():
        idx = np.flatnonzero(agents.active)
        q = q_function(agents.states(idx), agents.scale[idx])
        steps += 1
        _step_agents(agents, idx, q, n_scales, max_steps, sampler.grid)
    return SearchResult(positions=agents.pos.copy(), q_values=agents.final_q, steps=steps)


def combine(result: SearchResult, how: str = "q") -> tuple[np.ndarray, float]:
    """One point from K agents: ``"q"`` the agent with the lowest final Q, ``"median"`` the median point."""
    if how == "q":
        best = int(np.nanargmin(result.q_values))
        return result.positions[best].astype(float), float(result.q_values[best])
    if how == "median":
        return np.median(result.positions, axis=0), float(np.nanmedian(result.q_values))
    raise InputError(f"unknown way to combine agents {how!r}; use 'q' or 'median'")
