"""Synthetic 3D cardiac-ultrasound volumes with an interventional instrument: the built-in demo/test data.

``generate_phantom`` draws one case (image, instrument label, a centre point on the instrument) from a
seed; the same seed always gives identical arrays (only ``numpy.random.default_rng(seed)`` is used).
``write_phantom_dataset`` writes a Medical-Segmentation-Decathlon style folder of such cases.

Imaging model (array axes are numpy ``(z, y, x)``, i.e. SimpleITK ``(x, y, z)`` reversed):

* the probe sits above the first slice (``z`` index 0) and images a pyramid-shaped sector whose fan opens
  along ``x`` and ``y``; the bottom of the sector is spherical. Voxels outside this field of view (FOV)
  are exactly 0, voxels inside are 1..255 (log-compressed B-mode, uint8);
* tissue is a smooth random echogenicity field with dark blood pools (chambers); the chamber borders are
  bright specular walls, and there are bright valve-leaflet-like sheets and bright tubular fibres that are
  as bright as the instrument, so that no global threshold isolates it;
* the instrument is a tube around a cubic Bezier centre line: a catheter (diameter 2.3-3.3 mm, bright rim
  facing the probe, dimmer core) or a guide-wire (about 0.9 mm, bright line). Behind it along the beam there
  is an acoustic shadow and a few faint reverberation copies; its visibility is modulated along its length
  (weak stretches down to near-background, and weaker where it runs along the beam);
* everything is multiplied by spatially correlated Rayleigh speckle and log-compressed.

The label is the full tube (voxel centres within the radius, plus the voxels of the centre line so thin
guide-wires stay connected), restricted to the FOV, whatever the visibility. Kind ``mixed`` (issue 15,
multi-class) draws a catheter (label 1) and a guide-wire (label 2) on separate paths in the same volume;
its ``dataset.json`` labels are ``{"0": "background", "1": "catheter", "2": "guidewire"}``.
"""

from __future__ import annotations

import concurrent.futures
import functools
import math
import multiprocessing
import pathlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np
import SimpleITK as sitk
from scipy import ndimage
from scipy.spatial import cKDTree

from SemiSupSegLib.atomic import atomic_path, atomic_write_json
from SemiSupSegLib.errors import InputError

KINDS = ("catheter", "guidewire", "mixed")
"""``mixed``: a catheter (label 1) and a guide-wire (label 2) in the same volume (issue 15, multi-class)."""
MIXED = "mixed"
MIXED_LABELS = {0: "background", 1: "catheter", 2: "guidewire"}
MIN_SIZE = 32
MAX_SIZE = 1024  # 1024^3 float32 is 4 GiB per field; larger sizes only run out of memory, slowly
MAX_CASES_PER_SPLIT = 25000
SEED_STRIDE = 100003
SPLIT_SEED_OFFSET = {"training": 0, "unlabeled": 50000, "test": 75000}


@dataclass
class PhantomCase:
    """One synthetic case: B-mode-like image, instrument label, centre point (LPS mm) and instrument kind."""

    image: sitk.Image
    label: sitk.Image
    center: tuple[float, float, float]
    kind: str
    profile: PhantomProfile | None = None


@dataclass
class _Geometry:
    """Volume and probe geometry, in array order ``(z, y, x)`` and millimetres from the first voxel."""

    shape: tuple[int, int, int]
    spacing: np.ndarray
    apex: np.ndarray
    tan_u: float
    tan_v: float
    r_max: float

    @property
    def extent(self) -> np.ndarray:
        return (np.array(self.shape) - 1) * self.spacing


@dataclass
class _Curve:
    """A densely sampled centre line (mm, array order) with per-sample arc length and visibility."""

    points: np.ndarray
    arc: np.ndarray
    visibility: np.ndarray


# ----------------------------------------------------------------------------------------------------------
# Scanner profiles
# ----------------------------------------------------------------------------------------------------------

Range = tuple[float, float]


@dataclass(frozen=True)
class PhantomProfile:
    """Every physical parameter of the phantom: one "scanner". Ranges ``(low, high)`` are drawn per case.

    Amplitudes are in dB relative to a unit reflector; the B-mode grey value is
    ``255 * (20 log10(echo) + tgc + fan edge + dynamic_range_db - white_level_db) / dynamic_range_db``.
    Integer ranges (``fibre_count``) include both ends.
    """

    name: str
    description: str
    # geometry: spacing, probe and sector
    spacing_mm: Range = field(metadata={"doc": "isotropic voxel spacing (mm), unless --spacing is given"})
    apex_standoff: Range = field(metadata={"doc": "probe apex above the first slice (fraction of the depth)"})
    sector_half_angle_deg: Range = field(metadata={"doc": "half opening angle of the fan, each direction"})
    sector_depth: Range = field(metadata={"doc": "sector radius / distance from the apex to the last slice"})
    # point-spread function and noise
    speckle_axial_mm: float = field(metadata={"doc": "speckle correlation (Gaussian sigma) along the beam"})
    speckle_lateral_mm: float = field(metadata={"doc": "the same across the beam"})
    instrument_speckle: float = field(metadata={"doc": "fraction of the speckle contrast on the instrument"})
    noise_floor_db: float = field(metadata={"doc": "electronic noise floor (SNR: tissue level minus this)"})
    # display: gain, time-gain compensation, log compression
    dynamic_range_db: Range = field(metadata={"doc": "log-compression dynamic range mapped onto 1..255"})
    white_level_db: Range = field(metadata={"doc": "echo level shown as 255: the overall gain is minus this"})
    tgc_db: Range = field(metadata={"doc": "residual depth gain at the sector bottom (quadratic in range)"})
    fan_edge_db: float = field(metadata={"doc": "gain at the lateral fan edges (quartic fall-off)"})
    # tissue texture, blood pools and bright sheets
    chamber_corr_mm: Range = field(metadata={"doc": "correlation length of the blood-pool (chamber) field"})
    texture_corr_mm: Range = field(metadata={"doc": "correlation length of the tissue texture and sheets"})
    texture_db: float = field(metadata={"doc": "std of the fine tissue texture"})
    envelope_db: float = field(metadata={"doc": "std of the coarse tissue brightness envelope"})
    blood_fraction: Range = field(metadata={"doc": "fraction of the volume that is blood pool"})
    tissue_db: Range = field(metadata={"doc": "mean tissue echogenicity"})
    blood_db: Range = field(metadata={"doc": "blood echogenicity"})
    wall_width: Range = field(metadata={"doc": "width of the specular chamber walls (field units)"})
    wall_db: Range = field(metadata={"doc": "brightness of the chamber walls"})
    sheet_width: Range = field(metadata={"doc": "width of the leaflet-like bright sheets (field units)"})
    sheet_cut: Range = field(metadata={"doc": "envelope threshold removing sheets (higher: fewer sheets)"})
    sheet_db: Range = field(metadata={"doc": "brightness of the bright sheets"})
    fibre_count: tuple[int, int] = field(metadata={"doc": "number of bright tubular tissue fibres"})
    fibre_db: Range = field(metadata={"doc": "brightness of the fibres"})
    # instrument
    catheter_diameter_mm: Range = field(metadata={"doc": "catheter outer diameter"})
    guidewire_diameter_mm: Range = field(metadata={"doc": "guide-wire diameter"})
    catheter_rim_db: Range = field(metadata={"doc": "echo of the catheter wall facing the probe"})
    catheter_core_db: Range = field(metadata={"doc": "echo of the catheter lumen"})
    guidewire_db: Range = field(metadata={"doc": "echo of the guide-wire"})
    shadow: Range = field(metadata={"doc": "acoustic shadow depth behind the instrument (0: none, 1: black)"})
    reverb_below_rim_db: Range = field(metadata={"doc": "first reverberation copy, dB below the instrument"})
    reverb_decay: float = field(metadata={"doc": "amplitude ratio of successive reverberation copies"})

    def parameters(self) -> dict[str, Any]:
        """The physical parameters as JSON-ready values (tuples as lists), without name and description."""
        return {
            f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v
            for f in fields(self)
            if f.name not in ("name", "description")
        }


DEFAULT_PROFILE = PhantomProfile(
    name="default",
    description="the original phantom: mid-frequency 3D TEE-like probe, moderate clutter",
    spacing_mm=(0.4, 0.7),
    apex_standoff=(0.06, 0.1),
    sector_half_angle_deg=(33.0, 39.0),
    sector_depth=(1.06, 1.12),
    speckle_axial_mm=0.45,
    speckle_lateral_mm=0.7,
    instrument_speckle=0.5,
    noise_floor_db=-54.0,
    dynamic_range_db=(48.0, 55.0),
    white_level_db=(-1.0, 1.0),
    tgc_db=(-5.0, -1.0),
    fan_edge_db=-5.0,
    chamber_corr_mm=(11.0, 15.0),
    texture_corr_mm=(4.0, 6.0),
    texture_db=3.0,
    envelope_db=2.0,
    blood_fraction=(0.3, 0.45),
    tissue_db=(-31.0, -27.0),
    blood_db=(-52.0, -47.0),
    wall_width=(0.5, 0.9),
    wall_db=(-7.0, -3.0),
    sheet_width=(0.35, 0.6),
    sheet_cut=(0.0, 0.6),
    sheet_db=(-6.0, -2.0),
    fibre_count=(4, 7),
    fibre_db=(-8.0, -3.0),
    catheter_diameter_mm=(2.3, 3.3),
    guidewire_diameter_mm=(0.8, 1.0),
    catheter_rim_db=(-5.0, -1.5),
    catheter_core_db=(-16.0, -12.0),
    guidewire_db=(-3.0, 0.0),
    shadow=(0.6, 0.8),
    reverb_below_rim_db=(9.0, 13.0),
    reverb_decay=0.55,
)

PROFILES: dict[str, PhantomProfile] = {
    p.name: p
    for p in (
        DEFAULT_PROFILE,
        replace(
            DEFAULT_PROFILE,
            name="fine",
            description="high-frequency matrix probe: fine speckle, high SNR, narrow shallow sector, "
            "fine voxels, bright instrument with a dark shadow, weak reverberation",
            spacing_mm=(0.3, 0.42),
            sector_half_angle_deg=(27.0, 31.0),
            sector_depth=(1.02, 1.06),
            speckle_axial_mm=0.25,
            speckle_lateral_mm=0.4,
            noise_floor_db=-62.0,
            dynamic_range_db=(56.0, 62.0),
            tgc_db=(-2.0, 0.0),
            texture_corr_mm=(3.0, 4.0),
            catheter_rim_db=(-3.0, 0.0),
            shadow=(0.85, 0.95),
            reverb_below_rim_db=(15.0, 19.0),
        ),
        replace(
            DEFAULT_PROFILE,
            name="coarse",
            description="low-frequency deep adult probe: coarse speckle, low SNR, strong depth fall-off, "
            "wide deep sector, coarse voxels, dim instrument with a weak shadow and strong reverberation",
            spacing_mm=(0.7, 0.9),
            apex_standoff=(0.03, 0.06),
            sector_half_angle_deg=(40.0, 44.0),
            sector_depth=(1.12, 1.18),
            speckle_axial_mm=0.9,
            speckle_lateral_mm=1.6,
            instrument_speckle=0.8,
            noise_floor_db=-44.0,
            dynamic_range_db=(40.0, 45.0),
            white_level_db=(-4.0, -2.0),
            tgc_db=(-10.0, -7.0),
            texture_corr_mm=(6.0, 8.0),
            catheter_rim_db=(-13.0, -10.0),
            catheter_core_db=(-22.0, -19.0),
            guidewire_db=(-9.0, -6.0),
            shadow=(0.3, 0.45),
            reverb_below_rim_db=(4.0, 7.0),
            reverb_decay=0.7,
        ),
        replace(
            DEFAULT_PROFILE,
            name="cluttered",
            description="high gain on bright, busy tissue: strong fine texture, bright thick walls, "
            "many sheets and fibres as bright as the instrument, blood pools less dark",
            white_level_db=(-6.0, -4.0),
            texture_corr_mm=(2.0, 3.0),
            texture_db=6.0,
            envelope_db=3.0,
            tissue_db=(-27.0, -24.0),
            blood_db=(-44.0, -40.0),
            wall_width=(0.9, 1.2),
            wall_db=(-3.0, 0.0),
            sheet_width=(0.6, 0.9),
            sheet_cut=(0.0, 0.15),
            sheet_db=(-2.0, 0.0),
            fibre_count=(9, 12),
            fibre_db=(-4.0, 0.0),
            catheter_rim_db=(-8.0, -5.0),
        ),
    )
}
RANDOM = "random"

# Wide bounds of ``--profile random``: each case draws every parameter uniformly within them.
RANDOM_BOUNDS: dict[str, Range] = {
    "spacing_mm": (0.3, 0.9),
    "apex_standoff": (0.03, 0.15),
    "sector_half_angle_deg": (25.0, 45.0),
    "sector_depth": (0.98, 1.2),
    "speckle_axial_mm": (0.25, 0.9),
    "speckle_lateral_mm": (0.4, 1.8),
    "instrument_speckle": (0.3, 1.0),
    "noise_floor_db": (-62.0, -40.0),
    "dynamic_range_db": (38.0, 62.0),
    "white_level_db": (-7.0, 4.0),
    "tgc_db": (-11.0, 2.0),
    "fan_edge_db": (-10.0, -1.0),
    "chamber_corr_mm": (8.0, 18.0),
    "texture_corr_mm": (2.0, 8.0),
    "texture_db": (1.0, 7.0),
    "envelope_db": (1.0, 4.0),
    "blood_fraction": (0.15, 0.5),
    "tissue_db": (-34.0, -23.0),
    "blood_db": (-58.0, -40.0),
    "wall_width": (0.3, 1.2),
    "wall_db": (-12.0, 0.0),
    "sheet_width": (0.25, 0.9),
    "sheet_cut": (0.0, 0.8),
    "sheet_db": (-10.0, 0.0),
    "fibre_count": (2, 12),
    "fibre_db": (-12.0, 0.0),
    "catheter_diameter_mm": (1.8, 4.0),
    "guidewire_diameter_mm": (0.6, 1.2),
    "catheter_rim_db": (-14.0, 0.0),
    "catheter_core_db": (-24.0, -8.0),
    "guidewire_db": (-9.0, 2.0),
    "shadow": (0.2, 0.95),
    "reverb_below_rim_db": (4.0, 20.0),
    "reverb_decay": (0.3, 0.75),
}
RANDOM_PROFILE_STREAM = 0x50F11E  # second SeedSequence word: the profile draw never touches the case stream


def profile_names() -> tuple[str, ...]:
    """Names accepted by ``--profile``: the named profiles, then ``random``."""
    return (*PROFILES, RANDOM)


def check_profile(profile: str | PhantomProfile) -> str | PhantomProfile:
    """Return ``profile`` if it is a PhantomProfile or a known name, else raise InputError listing them."""
    if isinstance(profile, PhantomProfile) or profile in profile_names():
        return profile
    raise InputError(f"Unknown phantom profile {profile!r}: expected one of {', '.join(profile_names())}.")


def draw_random_profile(seed: int) -> PhantomProfile:
    """A profile drawn uniformly within ``RANDOM_BOUNDS`` for case seed ``seed`` (domain randomisation).

    Each parameter becomes a single value (a range ``(v, v)``), so the profile fully describes the case.
    The draw uses its own stream ``default_rng([seed, RANDOM_PROFILE_STREAM])``: deterministic per case.
    """
    rng = np.random.default_rng([int(seed), RANDOM_PROFILE_STREAM])
    drawn: dict[str, Any] = {}
    for f in fields(PhantomProfile):
        if f.name not in RANDOM_BOUNDS:
            continue
        low, high = RANDOM_BOUNDS[f.name]
        default = getattr(DEFAULT_PROFILE, f.name)
        if isinstance(low, int) and isinstance(high, int):
            value = int(rng.integers(low, high + 1))
        else:
            value = round(float(rng.uniform(low, high)), 4)
        drawn[f.name] = (value, value) if isinstance(default, tuple) else value
    return replace(DEFAULT_PROFILE, name=RANDOM, description="drawn per case (domain randomisation)", **drawn)


def resolve_profile(profile: str | PhantomProfile, seed: int) -> PhantomProfile:
    """The concrete profile of case ``seed``: a named one, the given instance, or a random draw."""
    check_profile(profile)
    if isinstance(profile, PhantomProfile):
        return profile
    return draw_random_profile(seed) if profile == RANDOM else PROFILES[profile]


# ----------------------------------------------------------------------------------------------------------
# Argument checking
# ----------------------------------------------------------------------------------------------------------


def _check_kind(kind: str) -> str:
    """Return ``kind`` if it is a known instrument kind, else raise InputError."""
    if kind not in KINDS:
        raise InputError(f"Unknown phantom kind {kind!r}: expected one of {', '.join(KINDS)}.")
    return kind


def _check_size(size: int | tuple[int, int, int]) -> tuple[int, int, int]:
    """Return the size in SimpleITK order ``(x, y, z)``."""
    try:
        values = (size, size, size) if isinstance(size, (int, np.integer)) else tuple(size)
    except TypeError as exc:
        raise InputError(f"Phantom size must be an integer or 3 integers, got {size!r}.") from exc
    if len(values) != 3 or not all(
        isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values
    ):
        raise InputError(f"Phantom size must be an integer or 3 integers, got {size!r}.")
    if min(values) < MIN_SIZE or max(values) > MAX_SIZE:
        raise InputError(
            f"Phantom size must be {MIN_SIZE} to {MAX_SIZE} voxels along every axis, got {size!r}."
        )
    return tuple(int(v) for v in values)


def _check_spacing(spacing: float | tuple[float, float, float] | None) -> tuple[float, float, float] | None:
    """Return the spacing in SimpleITK order ``(x, y, z)``, or None to draw it per case."""
    if spacing is None:
        return None
    try:
        values = (float(spacing),) * 3 if np.isscalar(spacing) else tuple(float(v) for v in spacing)
    except (TypeError, ValueError) as exc:
        raise InputError(f"Phantom spacing must be a number or 3 numbers (mm), got {spacing!r}.") from exc
    if len(values) != 3 or not all(math.isfinite(v) and v > 0 for v in values):
        raise InputError(f"Phantom spacing must be 1 or 3 positive finite numbers (mm), got {spacing!r}.")
    return values


def _check_seed(seed: int) -> int:
    """Return the seed as an int if it is a non-negative integer, else raise InputError."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputError(f"seed must be a non-negative integer, got {seed!r}.")
    return int(seed)


def _check_count(name: str, value: int) -> int:
    """Return a number of cases if it is a non-negative integer (at most MAX_CASES_PER_SPLIT)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise InputError(f"{name} must be a non-negative integer, got {value!r}.")
    if value > MAX_CASES_PER_SPLIT:
        raise InputError(f"{name} must be at most {MAX_CASES_PER_SPLIT}, got {value}.")
    return int(value)


# ----------------------------------------------------------------------------------------------------------
# Geometry and smooth random fields
# ----------------------------------------------------------------------------------------------------------


def _make_geometry(
    rng: np.random.Generator, shape: tuple[int, int, int], spacing: np.ndarray, profile: PhantomProfile
) -> _Geometry:
    """Place the probe apex above the centre of the first slice and choose the sector angles."""
    extent = (np.array(shape) - 1) * spacing
    apex = np.array([-rng.uniform(*profile.apex_standoff) * extent[0], extent[1] / 2, extent[2] / 2])
    depth = extent[0] - apex[0]
    tan_u = math.tan(math.radians(rng.uniform(*profile.sector_half_angle_deg)))
    tan_v = math.tan(math.radians(rng.uniform(*profile.sector_half_angle_deg)))
    corner = float(np.linalg.norm([depth, extent[1] / 2, extent[2] / 2]))
    r_max = min(rng.uniform(*profile.sector_depth) * depth, 0.97 * corner)
    return _Geometry(shape, spacing, apex, tan_u, tan_v, r_max=r_max)


def _axes(geom: _Geometry) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Broadcastable coordinates (mm) relative to the apex: z (nz,1,1), y (1,ny,1), x (1,1,nx)."""
    nz, ny, nx = geom.shape
    z = (np.arange(nz, dtype=np.float32) * geom.spacing[0] - geom.apex[0]).reshape(-1, 1, 1)
    y = (np.arange(ny, dtype=np.float32) * geom.spacing[1] - geom.apex[1]).reshape(1, -1, 1)
    x = (np.arange(nx, dtype=np.float32) * geom.spacing[2] - geom.apex[2]).reshape(1, 1, -1)
    return z, y, x


def _beam_coordinates(geom: _Geometry) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Ray coordinates u = x/z (nz,1,nx), v = y/z (nz,ny,1), range r (full) and the FOV mask (full)."""
    z, y, x = _axes(geom)
    u = x / z
    v = y / z
    r = z * np.sqrt(1.0 + u * u + v * v, dtype=np.float32)
    fov = (np.abs(u) < geom.tan_u) & (np.abs(v) < geom.tan_v) & (r < geom.r_max)
    return u, v, r, fov


def _gaussian_basis(n: int, step: float, corr: float) -> np.ndarray:
    """Rows: samples (voxel centres, mm), columns: Gaussian bumps every ``corr`` mm covering the axis."""
    length = (n - 1) * step
    nodes = np.arange(-2 * corr, length + 2 * corr + 1e-6, corr)
    pos = np.arange(n) * step
    return np.exp(-0.5 * ((pos[:, None] - nodes[None, :]) / (0.8 * corr)) ** 2).astype(np.float32)


def _smooth_fields(rng: np.random.Generator, geom: _Geometry, corr: float, channels: int) -> np.ndarray:
    """``channels`` smooth Gaussian random fields (zero mean, unit std) with correlation length ``corr`` mm.

    Each is a sum of separable Gaussian bumps with random weights on a coarse node grid, evaluated with
    three small matrix products (much cheaper than filtering a full-resolution noise volume).
    """
    nz, ny, nx = geom.shape
    wz, wy, wx = (_gaussian_basis(n, s, corr) for n, s in zip(geom.shape, geom.spacing, strict=True))
    coef = rng.standard_normal((channels, wz.shape[1], wy.shape[1], wx.shape[1]), dtype=np.float32)
    field = np.matmul(wy, coef @ wx.T)
    field = np.matmul(wz, field.reshape(channels, wz.shape[1], ny * nx)).reshape(channels, nz, ny, nx)
    sub = field[:, ::4, ::4, ::4]
    mean = sub.mean(axis=(1, 2, 3)).reshape(-1, 1, 1, 1)
    std = sub.std(axis=(1, 2, 3)).reshape(-1, 1, 1, 1) + 1e-6
    field -= mean
    field /= std
    return field


def _level_gradient(field: np.ndarray, level: float, spacing: np.ndarray) -> float:
    """Typical |grad field| (per mm) near ``field == level``, estimated on a 1/4 subsample."""
    sub = field[::4, ::4, ::4]
    grads = np.gradient(sub, *(4 * spacing))
    mag = np.sqrt(sum(g * g for g in grads))
    near = np.abs(sub - level) < 0.3
    typical = float(np.median(mag[near])) if near.any() else float(np.median(mag))
    return max(typical, 1e-6)


# ----------------------------------------------------------------------------------------------------------
# Curves and tubes
# ----------------------------------------------------------------------------------------------------------


def _pyramid_point(geom: _Geometry, a: float, b: float, f: float) -> np.ndarray:
    """Point (mm) at relative lateral positions a (x), b (y) in [-1, 1] of the fan and depth fraction f."""
    z = -geom.apex[0] + f * geom.extent[0]
    return geom.apex + np.array([z, b * geom.tan_v * z, a * geom.tan_u * z])


def _bezier(control: np.ndarray, step: float) -> tuple[np.ndarray, np.ndarray]:
    """Cubic Bezier through 4 control points, resampled every ``step`` mm; returns points and arc length."""
    t = np.linspace(0.0, 1.0, 2048)[:, None]
    p0, p1, p2, p3 = control
    dense = (1 - t) ** 3 * p0 + 3 * (1 - t) ** 2 * t * p1 + 3 * (1 - t) * t**2 * p2 + t**3 * p3
    seg = np.linalg.norm(np.diff(dense, axis=0), axis=1)
    arc = np.concatenate([[0.0], np.cumsum(seg)])
    new_arc = np.arange(0.0, arc[-1], step)
    points = np.stack([np.interp(new_arc, arc, dense[:, k]) for k in range(3)], axis=1)
    return points, new_arc


def _smooth_profile(rng: np.random.Generator, arc: np.ndarray, corr: float) -> np.ndarray:
    """Smooth 1D random function of the arc length, zero mean and unit std (approximately)."""
    nodes = np.arange(-2 * corr, arc[-1] + 2 * corr + 1e-6, corr)
    weights = rng.standard_normal(nodes.size)
    basis = np.exp(-0.5 * ((arc[:, None] - nodes[None, :]) / (0.8 * corr)) ** 2)
    return basis @ weights / 1.6


def _visibility(
    rng: np.random.Generator, arc: np.ndarray, points: np.ndarray, apex: np.ndarray
) -> np.ndarray:
    """Visibility along the instrument: weak stretches, slow modulation, dimmer when parallel to the beam."""
    vis = np.clip(1.0 + 0.12 * _smooth_profile(rng, arc, 8.0), 0.75, 1.25)
    for _ in range(1 + int(rng.integers(0, 2)) + int(arc[-1] > 70.0)):
        centre = rng.uniform(0.05, 0.95) * arc[-1]
        half = rng.uniform(3.0, 6.0)
        dip = rng.uniform(0.7, 0.92)
        x = np.clip(np.abs(arc - centre) / half, 0.0, 1.0)
        vis *= 1.0 - dip * 0.5 * (1.0 + np.cos(np.pi * x))
    tangent = np.gradient(points, axis=0)
    tangent /= np.linalg.norm(tangent, axis=1, keepdims=True) + 1e-9
    beam = points - apex
    beam /= np.linalg.norm(beam, axis=1, keepdims=True)
    along = np.abs(np.sum(tangent * beam, axis=1))
    return vis * (1.0 - 0.45 * along**2)


def _instrument_curve(rng: np.random.Generator, geom: _Geometry, step: float) -> _Curve:
    """Random smooth instrument path entering the sector from one side; the tip is inside or it exits."""
    side = rng.choice([-1.0, 1.0])
    lateral_x = rng.random() < 0.5
    enter = (side * 1.2, rng.uniform(-0.6, 0.6))
    tip_inside = rng.random() < 0.5
    leave = (
        (rng.uniform(-0.5, 0.5), rng.uniform(-0.5, 0.5))
        if tip_inside
        else (-side * 1.2, rng.uniform(-0.6, 0.6))
    )
    if not lateral_x:
        enter, leave = enter[::-1], leave[::-1]
    p0 = _pyramid_point(geom, *enter, rng.uniform(0.2, 0.55))
    p3 = _pyramid_point(geom, *leave, rng.uniform(0.35, 0.85))
    wiggle = 0.2 * float(np.min(geom.extent))
    p1 = p0 + (p3 - p0) / 3 + rng.normal(0.0, wiggle, 3)
    p2 = p0 + 2 * (p3 - p0) / 3 + rng.normal(0.0, wiggle, 3)
    control = np.stack([p0, p1, p2, p3])
    control[1:3] = np.clip(control[1:3], 0.1 * geom.extent, 0.9 * geom.extent)
    points, arc = _bezier(control, step)
    return _Curve(points, arc, _visibility(rng, arc, points, geom.apex))


def _ball_offsets(radius: float, spacing: np.ndarray) -> np.ndarray:
    """Integer voxel offsets within ``radius`` mm (plus one voxel diagonal) of the origin."""
    half = np.ceil(radius / spacing).astype(np.int64) + 1
    axes = (np.arange(-h, h + 1) for h in half)
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    return grid[np.linalg.norm(grid * spacing, axis=1) <= radius + float(np.linalg.norm(spacing))]


def _tube_band(
    points: np.ndarray, radius: float, geom: _Geometry
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Voxels within ``radius`` mm of the sampled centre line.

    Returns flat voxel indices, distance (mm) to the nearest sample and the index of that sample. The
    candidates are balls around centre-line samples about half a voxel apart (deduplicated with a boolean
    volume, in chunks to bound memory), then a KD-tree query against all samples gives the distances.
    """
    sp, shape = geom.spacing, np.array(geom.shape)
    gap = float(np.linalg.norm(points[1] - points[0])) if len(points) > 1 else 1.0
    every = max(1, int(0.5 * sp.min() / max(gap, 1e-9)))
    centres = np.rint(points[::every] / sp).astype(np.int64)
    ball = _ball_offsets(radius, sp)
    mark = np.zeros(geom.shape, bool)
    chunk = max(1, 2_000_000 // len(ball))
    for start in range(0, len(centres), chunk):
        cand = (centres[start : start + chunk, None, :] + ball[None]).reshape(-1, 3)
        cand = cand[np.all((cand >= 0) & (cand < shape), axis=1)]
        mark[cand[:, 0], cand[:, 1], cand[:, 2]] = True
    flat = np.flatnonzero(mark)
    dist, nearest = cKDTree(points).query(_voxel_mm(flat, geom), distance_upper_bound=radius)
    keep = np.isfinite(dist)
    return flat[keep], dist[keep], nearest[keep]


def _voxel_mm(flat: np.ndarray, geom: _Geometry) -> np.ndarray:
    """Positions (mm, array order) of voxels given by flat indices."""
    return np.stack(np.unravel_index(flat, geom.shape), axis=1) * geom.spacing


# ----------------------------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------------------------


def _db(value: float) -> float:
    """Amplitude ratio of ``value`` decibels."""
    return 10.0 ** (value / 20.0)


def _tissue(rng: np.random.Generator, geom: _Geometry, profile: PhantomProfile) -> np.ndarray:
    """Echogenicity (linear amplitude) of tissue, blood pools, specular walls and leaflet-like sheets.

    Computed in place on full-size float32 arrays to keep the number of temporaries small.
    """
    chamber, envelope = _smooth_fields(rng, geom, corr=rng.uniform(*profile.chamber_corr_mm), channels=2)
    texture, sheet = _smooth_fields(rng, geom, corr=rng.uniform(*profile.texture_corr_mm), channels=2)
    level = float(np.quantile(chamber[::4, ::4, ::4], 1.0 - rng.uniform(*profile.blood_fraction)))
    grad = _level_gradient(chamber, level, geom.spacing)
    chamber -= level
    blood = np.tanh(chamber * (1.0 / (0.8 * grad)))
    blood *= 0.5
    blood += 0.5
    to_amp = math.log(10.0) / 20.0
    echo = texture
    echo *= profile.texture_db * to_amp
    echo += envelope * (profile.envelope_db * to_amp)
    echo += rng.uniform(*profile.tissue_db) * to_amp
    np.exp(echo, out=echo)
    solid = 1.0 - blood
    echo *= solid
    blood *= _db(rng.uniform(*profile.blood_db))
    echo += blood
    brightness = np.clip(envelope * 0.35 + 0.8, 0.3, 1.3)
    wall_width = rng.uniform(*profile.wall_width) * grad
    echo += _thin_level_set(chamber, wall_width, brightness * _db(rng.uniform(*profile.wall_db)))
    sheet_w = rng.uniform(*profile.sheet_width) * _level_gradient(sheet, 0.0, geom.spacing)
    envelope -= rng.uniform(*profile.sheet_cut)
    np.clip(envelope, 0.0, 1.0, out=envelope)
    envelope *= np.sqrt(solid, out=solid)
    envelope *= _db(rng.uniform(*profile.sheet_db))
    echo += _thin_level_set(sheet, sheet_w, envelope)
    return echo


def _thin_level_set(field: np.ndarray, width: float, amplitude: np.ndarray) -> np.ndarray:
    """``amplitude * exp(-(field / width)^2)``: a thin bright sheet along the zero level of ``field``."""
    out = field * (1.0 / width)
    out *= out
    np.negative(out, out=out)
    np.exp(out, out=out)
    out *= amplitude
    return out


def _add_fibres(
    rng: np.random.Generator, geom: _Geometry, echo: np.ndarray, step: float, profile: PhantomProfile
) -> None:
    """Bright short tubular tissue structures (no shadow, no rim): tube-shaped distractors."""
    all_points, radius, amp = [], [], []
    low, high = profile.fibre_count
    for _ in range(rng.integers(low, high + 1)):
        start = _pyramid_point(geom, rng.uniform(-0.8, 0.8), rng.uniform(-0.8, 0.8), rng.uniform(0.15, 0.9))
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        length = rng.uniform(10.0, 30.0)
        bend = rng.normal(0.0, 0.2 * length, (2, 3))
        control = np.stack([start + direction * length * k / 3 for k in range(4)])
        control[1:3] += bend
        points, arc = _bezier(control, step)
        taper = np.sin(np.pi * np.clip(arc / arc[-1], 0.0, 1.0)) ** 0.5
        all_points.append(points)
        radius.append(np.full(len(points), rng.uniform(0.4, 1.7)))
        brightness = _db(rng.uniform(*profile.fibre_db))
        amp.append(brightness * taper * np.clip(1 + 0.2 * _smooth_profile(rng, arc, 5.0), 0.5, 1.5))
    points, radius, amp = np.concatenate(all_points), np.concatenate(radius), np.concatenate(amp)
    flat, dist, near = _tube_band(points, float(radius.max()) + 0.8, geom)
    value = amp[near] * np.exp(-((np.maximum(dist - radius[near], 0.0) / 0.35) ** 2))
    view = echo.reshape(-1)
    view[flat] = np.maximum(view[flat], value.astype(np.float32))


def _instrument_echo(
    kind: str, curve: _Curve, radius: float, geom: _Geometry, levels: dict[str, float]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Band voxels of the instrument: flat indices, weight of the replaced tissue and echo amplitude."""
    sigma = 0.35 if kind == "catheter" else max(radius * 1.2, 0.6)
    flat, dist, near = _tube_band(curve.points, radius + 2.5 * sigma, geom)
    vis = curve.visibility[near]
    occupancy = 1.0 / (1.0 + np.exp(-(radius + 0.05 - dist) / 0.12))
    if kind == "catheter":
        pos = _voxel_mm(flat, geom)
        offset = pos - curve.points[near]
        beam = pos - geom.apex
        facing = -np.sum(offset * beam, axis=1) / (np.linalg.norm(beam, axis=1) * np.maximum(dist, 1e-3))
        rim = levels["rim"] * (0.55 + 0.45 * facing) * np.exp(-(((dist - radius) / sigma) ** 2))
        core = levels["core"] * occupancy
        echo = np.maximum(rim, core)
    else:
        echo = levels["rim"] * np.exp(-((dist / sigma) ** 2))
    return flat, occupancy * vis, echo * vis


def _shadow_map(
    curve: _Curve, radius: float, geom: _Geometry, pixels: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For a (u, v) ray grid: lateral distance / radius to the instrument, its range and visibility."""
    rel = curve.points - geom.apex
    uv = np.stack([rel[:, 2] / rel[:, 0], rel[:, 1] / rel[:, 0]], axis=1)
    gu = np.linspace(-geom.tan_u, geom.tan_u, pixels)
    gv = np.linspace(-geom.tan_v, geom.tan_v, pixels)
    grid = np.stack(np.meshgrid(gu, gv, indexing="ij"), axis=-1).reshape(-1, 2)
    dist, near = cKDTree(uv).query(grid)
    q = dist * rel[near, 0] / radius
    rng_mm = np.linalg.norm(rel[near], axis=1)
    return q.astype(np.float32), rng_mm.astype(np.float32), curve.visibility[near].astype(np.float32)


def _shadow_and_reverb(
    rng: np.random.Generator,
    kind: str,
    curve: _Curve,
    radius: float,
    geom: _Geometry,
    beam: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    levels: dict[str, float],
    reverb_decay: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Voxels behind the instrument along the beam: flat indices, shadow factor and reverberation echo."""
    u, v, r, fov = beam
    pixels = 2 * max(geom.shape[1:])
    shadow_radius = max(radius, 0.6)
    q, r_centre, vis = _shadow_map(curve, shadow_radius, geom, pixels)
    iu = np.clip(np.rint((u + geom.tan_u) / (2 * geom.tan_u) * (pixels - 1)), 0, pixels - 1).astype(np.int32)
    iv = np.clip(np.rint((v + geom.tan_v) / (2 * geom.tan_v) * (pixels - 1)), 0, pixels - 1).astype(np.int32)
    pix = iu * pixels + iv
    hit = q < 1.0
    inside = hit[pix] & fov
    if hit.any():
        inside &= r > float(r_centre[hit].min())
    flat = np.flatnonzero(inside)
    if flat.size == 0:
        return flat, np.zeros(0, np.float32), np.zeros(0, np.float32)
    kz, ky, kx = np.unravel_index(flat, geom.shape)
    p = pix[kz, ky, kx]
    qq = q[p]
    half = shadow_radius * np.sqrt(np.clip(1.0 - qq * qq, 0.0, 1.0))
    behind = r.reshape(-1)[flat] - r_centre[p]
    lateral = np.sqrt(np.clip(1.0 - qq * qq, 0.0, 1.0)) ** 0.5
    onset = np.clip((behind - half) / 0.8, 0.0, 1.0)
    strength = levels["shadow"] * lateral * (0.4 + 0.6 * np.clip(vis[p], 0.0, 1.0))
    factor = 1.0 - strength * onset
    gap = rng.uniform(1.0, 1.3) * 2 * radius if kind == "catheter" else rng.uniform(0.9, 1.4)
    rev = np.zeros(flat.size, np.float32)
    for k in range(1, 5):
        rev += reverb_decay**k * np.exp(-(((behind + half - k * gap) / 0.3) ** 2))
    rev *= (behind > half) * levels["reverb"] * lateral * vis[p]
    return flat, factor.astype(np.float32), rev


def _speckle(rng: np.random.Generator, geom: _Geometry, profile: PhantomProfile) -> np.ndarray:
    """Rayleigh-like speckle amplitude (mean about 1): envelope of smoothed complex Gaussian noise.

    The correlation (Gaussian sigma of the point-spread function) is ``profile.speckle_axial_mm`` along
    the beam (z) and ``profile.speckle_lateral_mm`` across (y, x). A small constant is added to the
    intensity so that the zeros of the complex field do not become black threads after log compression.
    """
    psf_mm = np.array([profile.speckle_axial_mm, profile.speckle_lateral_mm, profile.speckle_lateral_mm])
    sigma = tuple(float(s) for s in psf_mm / geom.spacing)
    re = ndimage.gaussian_filter(rng.standard_normal(geom.shape, dtype=np.float32), sigma, truncate=3.0)
    im = ndimage.gaussian_filter(rng.standard_normal(geom.shape, dtype=np.float32), sigma, truncate=3.0)
    re *= re
    im *= im
    re += im
    re += 0.2 * float(re[::3, ::3, ::3].mean())
    amp = np.sqrt(re, out=re)
    amp *= 1.0 / float(amp[::3, ::3, ::3].mean())
    return amp


def _compress(
    rng: np.random.Generator,
    echo: np.ndarray,
    geom: _Geometry,
    beam: tuple[np.ndarray, ...],
    profile: PhantomProfile,
) -> np.ndarray:
    """Log compression with depth gain and fan-edge fall-off; exact 0 outside the FOV, 1..255 inside.

    ``echo`` is overwritten.
    """
    u, v, r, fov = beam
    dyn = rng.uniform(*profile.dynamic_range_db)
    top = rng.uniform(*profile.white_level_db)
    db = echo
    db += 1e-6
    np.log10(db, out=db)
    db *= 20.0
    gain = r * (1.0 / geom.r_max)
    gain *= gain
    gain *= rng.uniform(*profile.tgc_db)
    db += gain
    edge = profile.fan_edge_db
    db += np.minimum(edge * (np.abs(u) / geom.tan_u) ** 4, edge * (np.abs(v) / geom.tan_v) ** 4)
    db -= top - dyn
    db *= 255.0 / dyn
    np.clip(db, 1.0, 255.0, out=db)
    db *= fov
    return np.rint(db, out=db).astype(np.uint8)


def _levels(rng: np.random.Generator, kind: str, profile: PhantomProfile) -> dict[str, float]:
    """Instrument echo amplitudes (rim, core, reverberation) and shadow depth, drawn per case."""
    if kind == "catheter":
        rim, core = rng.uniform(*profile.catheter_rim_db), rng.uniform(*profile.catheter_core_db)
    else:
        rim, core = rng.uniform(*profile.guidewire_db), -60.0
    return {
        "rim": _db(rim),
        "core": _db(core),
        "shadow": rng.uniform(*profile.shadow),
        "reverb": _db(rim - rng.uniform(*profile.reverb_below_rim_db)),
    }


# ----------------------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------------------


def _pick_center(curve: _Curve, label: np.ndarray, geom: _Geometry) -> np.ndarray:
    """Centre-line sample near the middle of the visible, labelled part of the instrument (array index)."""
    index = np.rint(curve.points / geom.spacing).astype(np.int64)
    inside = np.all((index >= 0) & (index < np.array(geom.shape)), axis=1)
    ok = np.zeros(len(index), bool)
    ok[inside] = label[tuple(index[inside].T)] == 1
    candidates = np.flatnonzero(ok & (curve.visibility > 0.6))
    if candidates.size == 0:
        candidates = np.flatnonzero(ok)
    if candidates.size == 0:
        raise RuntimeError("The instrument does not cross the field of view.")
    middle = np.median(curve.arc[candidates])
    best = candidates[np.argmin(np.abs(curve.arc[candidates] - middle))]
    return curve.points[best] / geom.spacing


def _rasterize_label(curve: _Curve, radius: float, geom: _Geometry, fov: np.ndarray) -> np.ndarray:
    """Tube mask (voxel centres within ``radius``) plus the centre-line voxels, within the FOV."""
    label = np.zeros(geom.shape, np.uint8)
    flat, _, _ = _tube_band(curve.points, radius, geom)
    label.reshape(-1)[flat] = 1
    index = np.rint(curve.points / geom.spacing).astype(np.int64)
    index = index[np.all((index >= 0) & (index < np.array(geom.shape)), axis=1)]
    label[tuple(index.T)] = 1
    label &= fov
    return label


def _visible_length(curve: _Curve, geom: _Geometry) -> float:
    """Length (mm) of the centre line inside the volume and (slightly shrunk) sector."""
    rel = curve.points - geom.apex
    u, v = rel[:, 2] / rel[:, 0], rel[:, 1] / rel[:, 0]
    inside = (np.abs(u) < 0.95 * geom.tan_u) & (np.abs(v) < 0.95 * geom.tan_v)
    inside &= np.all((curve.points >= 0) & (curve.points <= geom.extent), axis=1)
    return float(inside.sum() * (curve.arc[1] - curve.arc[0])) if len(curve.arc) > 1 else 0.0


def generate_phantom(
    size: int | tuple[int, int, int] = 160,
    kind: str = "catheter",
    seed: int = 0,
    spacing: float | tuple[float, float, float] | None = None,
    profile: str | PhantomProfile = "default",
) -> PhantomCase:
    """Generate one synthetic 3D ultrasound case with a catheter, a guide-wire, or both (``"mixed"``).

    Args:
        size: voxels, one integer or 3 in SimpleITK order (x, y, z), at least ``MIN_SIZE``.
        kind: ``"catheter"``, ``"guidewire"`` or ``"mixed"`` (a catheter and a guide-wire, each on its
            own path; the draws of the single-instrument kinds are not affected by its existence).
        seed: the case seed; the same seed and profile always give identical arrays.
        spacing: mm per voxel (x, y, z); by default isotropic, drawn per case from ``profile.spacing_mm``.
        profile: a name of ``PROFILES``, ``"random"`` (parameters drawn per seed, see
            ``draw_random_profile``) or a ``PhantomProfile``.

    Returns:
        The case: uint8 image (0 outside the FOV, probe at the top of the z axis), uint8 label ({0, 1};
        ``"mixed"``: {0, 1 catheter, 2 guide-wire}, the catheter's label where the two tubes cross), origin
        centring the volume on (0, 0, 0), identity direction; ``center`` is a point of the instrument centre
        line in physical (LPS) mm (``"mixed"``: of the catheter's); ``profile`` the concrete profile used.
    """
    _check_kind(kind)
    size_xyz = _check_size(size)
    spacing_xyz = _check_spacing(spacing)
    _check_seed(seed)
    used = resolve_profile(profile, int(seed))
    rng = np.random.default_rng(int(seed))
    if spacing_xyz is None:
        spacing_xyz = (float(rng.uniform(*used.spacing_mm)),) * 3
    geom = _make_geometry(rng, size_xyz[::-1], np.array(spacing_xyz[::-1], dtype=float), used)
    instruments = [_draw_instrument(rng, geom, used, part) for part in _parts(kind)]
    beam = _beam_coordinates(geom)
    image = _render(rng, instruments, geom, beam, used)
    label = np.zeros(geom.shape, np.uint8)
    for value, (_, curve, radius) in reversed(list(enumerate(instruments, start=1))):
        label[_rasterize_label(curve, radius, geom, beam[3]) == 1] = value  # the first instrument wins
    _, first_curve, _ = instruments[0]
    center_index = _pick_center(first_curve, label, geom)
    return _make_case(image, label, center_index, spacing_xyz, kind, used)


def _parts(kind: str) -> tuple[str, ...]:
    """The instruments of a phantom kind, in label order (label ``i + 1`` for the ``i``-th)."""
    return ("catheter", "guidewire") if kind == MIXED else (kind,)


def _draw_instrument(
    rng: np.random.Generator, geom: _Geometry, profile: PhantomProfile, kind: str
) -> tuple[str, _Curve, float]:
    """One instrument: its kind, centre line and radius (mm), drawn in that order (radius, then path)."""
    diameter = profile.catheter_diameter_mm if kind == "catheter" else profile.guidewire_diameter_mm
    radius = rng.uniform(*diameter) / 2
    return kind, _place_instrument(rng, geom), radius


def _place_instrument(rng: np.random.Generator, geom: _Geometry) -> _Curve:
    """Draw instrument paths until one runs inside the sector for at least 40 % of the volume size."""
    for _ in range(50):
        curve = _instrument_curve(rng, geom, _curve_step(geom))
        if _visible_length(curve, geom) >= 0.4 * float(geom.extent.min()):
            return curve
    raise RuntimeError("Could not place the instrument inside the field of view.")


def _curve_step(geom: _Geometry) -> float:
    """Centre-line sampling step (mm): a quarter of the finest voxel spacing."""
    return 0.25 * float(geom.spacing.min())


def _render(
    rng: np.random.Generator,
    instruments: list[tuple[str, _Curve, float]],
    geom: _Geometry,
    beam: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    profile: PhantomProfile,
) -> np.ndarray:
    """B-mode image (uint8): tissue and distractors, shadows, instruments, reverberations, speckle, log.

    ``instruments`` holds ``(kind, centre line, radius)``; with one instrument the draws are exactly those
    of the single-instrument phantom (levels, tissue, fibres, shadow, speckle, compression).
    """
    levels = [_levels(rng, kind, profile) for kind, _, _ in instruments]
    echo = _tissue(rng, geom, profile)
    _add_fibres(rng, geom, echo, _curve_step(geom), profile)
    view = echo.reshape(-1)
    shadows = []
    for (kind, curve, radius), level in zip(instruments, levels, strict=True):
        flat_s, factor, reverb = _shadow_and_reverb(
            rng, kind, curve, radius, geom, beam, level, profile.reverb_decay
        )
        view[flat_s] *= factor
        shadows.append((flat_s, reverb))
    bands = []
    for (kind, curve, radius), level in zip(instruments, levels, strict=True):
        flat_i, weight, inst = _instrument_echo(kind, curve, radius, geom, level)
        view[flat_i] = view[flat_i] * (1.0 - weight) + inst
        bands.append(flat_i)
    for flat_s, reverb in shadows:
        view[flat_s] += reverb
    echo += _db(profile.noise_floor_db)  # electronic noise floor: shadows in blood do not turn pure black
    speckle = _speckle(rng, geom, profile)
    flat_speckle = speckle.reshape(-1)
    flat_i = np.unique(np.concatenate(bands)) if len(bands) > 1 else bands[0]
    flat_speckle[flat_i] = 1.0 + profile.instrument_speckle * (flat_speckle[flat_i] - 1.0)
    echo *= speckle
    return _compress(rng, echo, geom, beam, profile)


def _make_case(
    image: np.ndarray,
    label: np.ndarray,
    center_index: np.ndarray,
    spacing_xyz: tuple[float, ...],
    kind: str,
    profile: PhantomProfile,
) -> PhantomCase:
    """Wrap arrays into SimpleITK images centred on the origin; convert the centre to physical mm."""
    img = sitk.GetImageFromArray(image)
    img.SetSpacing(spacing_xyz)
    origin = tuple(-(n - 1) * s / 2 for n, s in zip(img.GetSize(), spacing_xyz, strict=True))
    img.SetOrigin(origin)
    lab = sitk.GetImageFromArray(label)
    lab.CopyInformation(img)
    center = img.TransformContinuousIndexToPhysicalPoint(tuple(float(c) for c in center_index[::-1]))
    center_lps = tuple(float(c) for c in center)
    return PhantomCase(image=img, label=lab, center=center_lps, kind=kind, profile=profile)


def case_seed(seed: int, index: int, split: str = "training") -> int:
    """Seed of case ``index`` of a split: ``seed * 100003 + offset + index`` (offset 0 / 50000 / 75000)."""
    return seed * SEED_STRIDE + SPLIT_SEED_OFFSET[split] + index


def _write_image(image: sitk.Image, target: pathlib.Path) -> None:
    with atomic_path(target) as tmp:
        sitk.WriteImage(image, str(tmp), useCompression=True)


_SPLIT_PREFIX = {"training": "", "unlabeled": "u", "test": "t"}


def _write_case(
    out: pathlib.Path,
    kind: str,
    seed: int,
    size_xyz: tuple[int, int, int],
    spacing: float | tuple[float, float, float] | None,
    profile: str | PhantomProfile,
    job: tuple[str, int],
) -> dict:
    """Render case ``i`` of ``split`` (``job``), write its files; its dataset.json entry."""
    split, i = job
    name = f"phantom_{kind}_{_SPLIT_PREFIX[split]}{i:03d}"
    case = generate_phantom(size_xyz, kind, case_seed(seed, i, split), spacing, profile)
    entry: dict = {"image": f"images/{name}.nii.gz"}
    _write_image(case.image, out / entry["image"])
    if split != "unlabeled":
        entry["label"] = f"labels/{name}.nii.gz"
        _write_image(case.label, out / entry["label"])
    entry["center"] = [float(c) for c in case.center]
    if profile == RANDOM:
        entry["profile"] = _profile_record(case.profile)
    return entry


def _map_cases(
    render: Callable[[tuple[str, int]], dict], jobs: list[tuple[str, int]], workers: int
) -> Iterator[tuple[tuple[str, int], dict]]:
    """``(job, render(job))`` for every job, in order of completion; in ``workers`` processes if > 1."""
    if workers <= 1 or len(jobs) <= 1:
        yield from ((job, render(job)) for job in jobs)
        return
    # spawn, not fork: the caller may hold threads (torch) that a forked child must not inherit.
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(min(workers, len(jobs)), mp_context=context) as pool:
        futures = {pool.submit(render, job): job for job in jobs}
        for future in concurrent.futures.as_completed(futures):
            yield futures[future], future.result()


def write_phantom_dataset(
    out_dir: str | pathlib.Path,
    cases: int,
    seed: int = 0,
    kind: str = "catheter",
    size: int | tuple[int, int, int] = 160,
    unlabeled: int = 0,
    test: int = 0,
    spacing: float | tuple[float, float, float] | None = None,
    progress: Callable[[int, int], None] | None = None,
    profile: str | PhantomProfile = "default",
    workers: int = 1,
) -> pathlib.Path:
    """Write images/ labels/ and dataset.json; return the dataset.json path.

    Training case ``i`` uses seed ``seed * 100003 + i``, unlabeled case ``i`` ``seed * 100003 + 50000 + i``
    and test case ``i`` ``seed * 100003 + 75000 + i`` (see ``case_seed``), so adding cases to one split
    never changes the others. Names are ``phantom_<kind>_000`` (training), ``..._u000`` (unlabeled, no label
    file) and ``..._t000`` (test, with a label so it can be evaluated). Every file is written atomically.
    ``progress(done, total)`` is called after each case. ``workers`` > 1 renders cases in that many
    processes; every case depends only on its own seed, so the files are identical to ``workers=1``.

    ``profile`` (see ``generate_phantom``) is recorded for traceability: its name and parameters under
    ``generator.profile``; with ``"random"`` each entry also has ``profile`` with its drawn parameters.
    """
    _check_kind(kind)
    check_profile(profile)
    size_xyz = _check_size(size)
    spacing_xyz = _check_spacing(spacing)
    counts = {
        "training": _check_count("cases", cases),
        "unlabeled": _check_count("unlabeled", unlabeled),
        "test": _check_count("test", test),
    }
    if not any(counts.values()):
        raise InputError("no cases to write: give --cases, --unlabeled or --test a number above 0")
    _check_seed(seed)
    if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or not 1 <= workers <= 64:
        raise InputError(f"workers must be an integer from 1 to 64, got {workers!r}.")
    out = pathlib.Path(out_dir)
    jobs = [(split, i) for split, count in counts.items() for i in range(count)]
    render = functools.partial(_write_case, out, kind, int(seed), size_xyz, spacing, profile)
    entries: dict[tuple[str, int], dict] = {}
    for done, (job, entry) in enumerate(_map_cases(render, jobs, workers), start=1):
        entries[job] = entry
        if progress is not None:
            progress(done, len(jobs))
    lists = {split: [entries[(split, i)] for i in range(count)] for split, count in counts.items()}
    generator = {
        "seed": int(seed),
        "kind": kind,
        "size": list(size_xyz),
        "spacing": None if spacing_xyz is None else list(spacing_xyz),
        "caseSeeds": "seed * 100003 + i (training), + 50000 + i (unlabeled), + 75000 + i (test)",
        "profile": _profile_summary(profile),
    }
    return _write_datalist(out, kind, generator, counts, lists)


def _profile_record(profile: PhantomProfile) -> dict[str, Any]:
    """The profile as dataset.json keeps it: name and every parameter."""
    return {"name": profile.name, **profile.parameters()}


def _profile_summary(profile: str | PhantomProfile) -> dict[str, Any]:
    """``generator.profile``: the full record of a fixed profile, or the random bounds and the stream."""
    if profile != RANDOM:
        return _profile_record(resolve_profile(profile, 0))
    return {
        "name": RANDOM,
        "bounds": {key: list(bounds) for key, bounds in RANDOM_BOUNDS.items()},
        "draw": f"per case: default_rng([case seed, {RANDOM_PROFILE_STREAM}]), see entries' 'profile'",
    }


_SINGLE_LABELS = {0: "background", 1: "instrument"}


def _described(kind: str) -> str:
    """The instruments of ``kind`` in words, for the dataset description."""
    return "catheter and a guidewire" if kind == MIXED else kind


def _write_datalist(
    out: pathlib.Path,
    kind: str,
    generator: dict,
    counts: dict[str, int],
    lists: dict[str, list[dict]],
) -> pathlib.Path:
    """Write the Decathlon-style ``dataset.json`` (paths relative to ``out``) and return its path."""
    data = {
        "name": f"phantom-{kind}",
        "description": f"Synthetic 3D cardiac ultrasound with a {_described(kind)} (SemiSupSegLib.phantom).",
        "modality": {"0": "US"},
        "labels": {str(k): v for k, v in (MIXED_LABELS if kind == MIXED else _SINGLE_LABELS).items()},
        "numTraining": counts["training"],
        "numUnlabeled": counts["unlabeled"],
        "numTest": counts["test"],
        "generator": generator,
        "training": lists["training"],
        "unlabeled": lists["unlabeled"],
        "test": lists["test"],
    }
    path = out / "dataset.json"
    atomic_write_json(path, data)
    return path
