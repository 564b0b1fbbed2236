"""A second, independent 3D ultrasound generator: test data the models were never shaped on (issue 12).

Every scanner profile of ``SemiSupSegLib.phantom`` comes from one generator, so a model tuned on its
profiles can still lean on that generator's habits (a sector fan with a zero background, speckle as
correlated log-normal noise, a tube drawn with a bright rim facing the apex). Reviewers test on volumes
of *another* generator. This script is our stand-in for one: written separately, sharing no code with
``phantom.py``, and built on a different physical model, so that a score on it measures generalisation
rather than fit to our own phantom. It is a benchmark input, not a product feature.

The model (a linear-array probe at the top face, beams along +z, every voxel inside the field of view):

- **Anatomy** as a scattering-amplitude map: a textured myocardium (smoothed log-normal field), 1–3
  ellipsoidal blood pools, 1–3 thin bright planar interfaces at random orientations, a few calcified
  spheres.
- **Instrument**: a catheter as a hollow tube along a quadratic Bézier curve entering through a side
  face (outer diameter 2–3.4 mm, wall 0.3–0.5 mm), or a solid guide-wire (0.8–1.2 mm) along such a
  curve; it scatters strongly, most where it faces the probe (specular); an acoustic shadow below it
  along each beam; comet-tail reverberation copies below.
- **Image formation**: complex Gaussian scatterers weighted by the amplitude map, convolved (FFT) with a
  point-spread function's Gaussian envelope, at baseband; envelope detection |·|; depth attenuation
  with partial time-gain compensation; electronic noise; log compression to 8 bits.
- **Geometry**: isotropic spacing 0.5–0.8 mm, a random rotation as the direction matrix and a random
  origin (so an axis-order or direction slip in the reader shows).

The label is the tube's outer volume; ``center`` is the arc-length midpoint of the tube's part inside
the volume, in LPS millimetres, as ``semisupseg phantom`` writes it.

Usage: ``python benchmarks/other_generator.py OUT [--cases 8] [--size 128] [--seed 0] [--kind catheter]``;
writes ``OUT/images``, ``OUT/labels`` and ``OUT/dataset.json`` (every case under ``test``), for ``semisupseg
evaluate --data OUT/dataset.json`` and ``benchmarks/cross_profile.py``-style comparisons;
``--figure PNG`` draws one case of each instrument instead (``docs/images/other_generator.png``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk

CURVE_SAMPLES = 240
ABLATIONS = ("solid", "bright", "no-interfaces", "no-texture")
"""Probes of what a model relies on, each removing one difference from our phantom while drawing the
same random numbers (so the case is otherwise identical): ``solid`` fills the catheter with its wall's
echo (our phantom's catheter is a filled bright bar), ``bright`` triples the instrument's echo,
``no-interfaces`` drops the bright planar interfaces, ``no-texture`` the blotchy tissue texture."""
CHUNK = 16384  # voxels per distance block: CHUNK x CURVE_SAMPLES x 3 doubles, 94 MB


def _smooth_field(rng: np.random.Generator, shape: tuple[int, ...], sigma_vox: float) -> np.ndarray:
    """Unit-variance Gaussian random field with correlation ``sigma_vox`` (FFT filtering of white noise)."""
    white = rng.standard_normal(shape)
    freqs = np.meshgrid(*[np.fft.fftfreq(n) for n in shape], indexing="ij")
    gain = np.exp(-2 * (np.pi * sigma_vox) ** 2 * sum(f**2 for f in freqs))
    field = np.real(np.fft.ifftn(np.fft.fftn(white) * gain))
    return (field - field.mean()) / (field.std() + 1e-12)


def _random_unit(rng: np.random.Generator) -> np.ndarray:
    v = rng.standard_normal(3)
    return v / np.linalg.norm(v)


def _anatomy(rng: np.random.Generator, zyx_mm: np.ndarray, extent: float, ablate: frozenset) -> np.ndarray:
    """Scattering amplitude of the tissue (no instrument), [z, y, x]."""
    shape = zyx_mm.shape[1:]
    texture = 0.0 if "no-texture" in ablate else 0.5
    amplitude = np.exp(texture * _smooth_field(rng, shape, rng.uniform(2.0, 5.0)))  # myocardium texture
    for _ in range(rng.integers(1, 4)):  # blood pools
        centre = rng.uniform(0.1, 0.9, 3) * extent
        radii = rng.uniform(0.12, 0.3, 3) * extent
        inside = sum(((zyx_mm[i] - centre[i]) / radii[i]) ** 2 for i in range(3)) < 1
        amplitude[inside] *= rng.uniform(0.05, 0.2)
    for _ in range(rng.integers(1, 4)):  # specular interfaces
        normal, through = _random_unit(rng), rng.uniform(0.2, 0.8, 3) * extent
        distance = np.abs(np.tensordot(normal, zyx_mm, axes=1) - normal @ through)
        brightness = rng.uniform(1.5, 4.0) * ("no-interfaces" not in ablate)
        amplitude += brightness * (distance < rng.uniform(0.4, 0.8))
    for _ in range(rng.integers(0, 4)):  # calcifications
        centre, radius = rng.uniform(0.1, 0.9, 3) * extent, rng.uniform(0.8, 2.0)
        amplitude += rng.uniform(3.0, 6.0) * (
            np.sqrt(((zyx_mm - centre[:, None, None, None]) ** 2).sum(0)) < radius
        )
    return amplitude


def _catheter_curve(rng: np.random.Generator, extent: float) -> np.ndarray:
    """[CURVE_SAMPLES, 3] points (z, y, x mm) of a Bézier curve entering through a side face."""
    entry = rng.uniform(0.3, 0.75, 3) * extent
    axis = rng.choice([1, 2])
    entry[axis] = rng.choice([-0.1, 1.1]) * extent  # outside a side face: the tube enters the volume
    tip = rng.uniform(0.3, 0.7, 3) * extent
    control = (entry + tip) / 2 + rng.normal(0, 0.12 * extent, 3)
    t = np.linspace(0, 1, CURVE_SAMPLES)[:, None]
    return (1 - t) ** 2 * entry + 2 * (1 - t) * t * control + t**2 * tip


def _distance_to_curve(zyx_mm: np.ndarray, curve: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distance of every voxel to the curve and the unit vector from the nearest curve point, chunked."""
    points = zyx_mm.reshape(3, -1).T
    distance = np.empty(len(points))
    direction = np.empty_like(points)
    for start in range(0, len(points), CHUNK):
        chunk = points[start : start + CHUNK]
        d2 = ((chunk[:, None, :] - curve[None, :, :]) ** 2).sum(-1)
        nearest = d2.argmin(1)
        offset = chunk - curve[nearest]
        distance[start : start + CHUNK] = np.sqrt(d2[np.arange(len(chunk)), nearest])
        direction[start : start + CHUNK] = offset / np.maximum(distance[start : start + CHUNK, None], 1e-6)
    shape = zyx_mm.shape[1:]
    return distance.reshape(shape), direction.T.reshape(3, *shape)


def _visible_midpoint(curve: np.ndarray, extent: float) -> np.ndarray:
    inside = np.all((curve >= 0) & (curve <= extent), axis=1)
    visible = curve[inside]
    steps = np.linalg.norm(np.diff(visible, axis=0), axis=1)
    arc = np.concatenate([[0], np.cumsum(steps)])
    return visible[np.searchsorted(arc, arc[-1] / 2)]


def _instrument(rng, zyx_mm, extent, spacing, kind, ablate=frozenset()):
    """(curve, label, echo amplitude) of a hollow catheter or a solid guide-wire."""
    curve = _catheter_curve(rng, extent)
    distance, direction = _distance_to_curve(zyx_mm, curve)
    facing = 0.25 + 0.75 * np.clip(-direction[0], 0, 1)  # the surface's normal points up, to the probe
    facing = facing * (3.0 if "bright" in ablate else 1.0)
    if kind == "guidewire":  # 0.8-1.2 mm; the label at least 0.6 voxel wide, so that it has no gaps
        tube = distance <= max(rng.uniform(0.4, 0.6), 0.6 * spacing)
        return curve, tube, tube * rng.uniform(15.0, 35.0) * facing
    radius, wall = rng.uniform(1.0, 1.7), rng.uniform(0.3, 0.5)
    tube = distance <= radius
    shell = tube if "solid" in ablate else tube & (distance >= radius - max(wall, spacing))
    return curve, tube, shell * rng.uniform(10.0, 25.0) * facing


def _shadow_and_reverb(rng, amplitude, tube, wall_echo, spacing):
    below = np.cumsum(tube, axis=0) > 0
    below &= ~tube
    amplitude = np.where(below, amplitude * (1 - rng.uniform(0.4, 0.85)), amplitude)
    amplitude = np.where(tube, 0.15 * amplitude, amplitude) + wall_echo
    gap = max(1, int(round(rng.uniform(1.5, 3.0) / spacing)))
    decay = rng.uniform(0.25, 0.5)
    for k in range(1, 4):
        amplitude[k * gap :] += decay**k * wall_echo[: -k * gap]
    return amplitude


def _image_formation(rng, amplitude, spacing):
    """Baseband speckle: the carrier (2-4 cycles/mm) is far above these voxels' Nyquist frequency, so
    the echo is simulated as its complex envelope, convolved with the PSF's Gaussian envelope."""
    shape = amplitude.shape
    scatter = (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)) / np.sqrt(2) * amplitude
    fz, fy, fx = np.meshgrid(*[np.fft.fftfreq(n, d=spacing) for n in shape], indexing="ij")  # cycles/mm
    axial_sigma, lateral_sigma = rng.uniform(0.25, 0.6), rng.uniform(0.5, 1.2)
    elevation_sigma = lateral_sigma * rng.uniform(1.0, 1.8)
    psf_spectrum = np.exp(
        -2 * np.pi**2 * (axial_sigma**2 * fz**2 + lateral_sigma**2 * fy**2 + elevation_sigma**2 * fx**2)
    )
    envelope = np.abs(np.fft.ifftn(np.fft.fftn(scatter) * psf_spectrum))
    depth = np.arange(shape[0])[:, None, None] * spacing
    envelope *= np.exp(-(rng.uniform(0.02, 0.06) - rng.uniform(0.0, 0.03)) * depth)  # attenuation - TGC
    median = np.median(envelope)
    noise = np.abs(rng.standard_normal(shape) + 1j * rng.standard_normal(shape)) * median
    envelope += rng.uniform(0.02, 0.15) * noise
    decibels = 20 * np.log10(envelope / median + 1e-9)  # tissue median at 0 dB
    dynamic_range, white = rng.uniform(40, 60), rng.uniform(15, 30)  # the display: white at +white dB
    return np.clip((decibels - white + dynamic_range) / dynamic_range * 255, 0, 255).astype(np.uint8)


def render_case(
    seed: int, size: int, kind: str = "catheter", ablate: frozenset[str] = frozenset()
) -> tuple[sitk.Image, sitk.Image, list[float]]:
    """One case: (image, label, centre LPS mm).

    Args:
        seed: the case's random seed (the whole case depends on it alone).
        size: voxels per axis.
        kind: ``catheter`` (hollow tube) or ``guidewire`` (solid thin wire).
        ablate: names from :data:`ABLATIONS` (probes; none for the benchmark's cases).

    Returns:
        The 8-bit image and the uint8 label on the same rotated grid, and the instrument centre.
    """
    ablate = frozenset(ablate)
    unknown = ablate - set(ABLATIONS)
    if unknown:
        raise ValueError(f"unknown ablation(s) {sorted(unknown)}; known: {', '.join(ABLATIONS)}")
    rng = np.random.default_rng(seed)
    spacing = float(rng.uniform(0.5, 0.8))
    extent = size * spacing
    zyx_mm = np.stack(np.meshgrid(*[np.arange(size) * spacing] * 3, indexing="ij"))
    amplitude = _anatomy(rng, zyx_mm, extent, ablate)
    curve, tube, wall_echo = _instrument(rng, zyx_mm, extent, spacing, kind, ablate)
    amplitude = _shadow_and_reverb(rng, amplitude, tube, wall_echo, spacing)
    pixels = _image_formation(rng, amplitude, spacing)
    rotation = sitk.VersorTransform(tuple(_random_unit(rng)), float(rng.uniform(-np.pi, np.pi)))
    direction = rotation.GetMatrix()
    origin = tuple(float(v) for v in rng.uniform(-60, 60, 3))
    images = []
    for array in (pixels, tube.astype(np.uint8)):
        image = sitk.GetImageFromArray(array)
        image.SetSpacing((spacing,) * 3)
        image.SetDirection(direction)
        image.SetOrigin(origin)
        images.append(image)
    mid_zyx = _visible_midpoint(curve, extent) / spacing
    centre = images[0].TransformContinuousIndexToPhysicalPoint(tuple(float(v) for v in mid_zyx[::-1]))
    return images[0], images[1], [float(v) for v in centre]


def write_dataset(out: Path, cases: int, size: int, seed: int, kind: str = "catheter") -> Path:
    """Write ``cases`` cases under ``test`` of ``out/dataset.json``; returns its path."""
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "labels").mkdir(exist_ok=True)
    entries = []
    for i in range(cases):
        image, label, centre = render_case(seed * 1000 + i, size, kind)
        name = f"other_{kind}_{i:03d}.nii.gz"
        sitk.WriteImage(image, str(out / "images" / name), useCompression=True)
        sitk.WriteImage(label, str(out / "labels" / name), useCompression=True)
        entries.append({"image": f"images/{name}", "label": f"labels/{name}", "center": centre})
        print(f"case {i + 1}/{cases}", flush=True)
    dataset = {
        "name": f"other-generator-{kind}",
        "description": "benchmarks/other_generator.py: an independent linear-array ultrasound simulator",
        "modality": {"0": "US"},
        "labels": {"0": "background", "1": "instrument"},
        "numTraining": 0,
        "numTest": cases,
        "training": [],
        "test": entries,
        "generator": {"script": "benchmarks/other_generator.py", "seed": seed, "size": size, "kind": kind},
    }
    path = out / "dataset.json"
    path.write_text(json.dumps(dataset, indent=1))
    return path


def figure(path: Path, size: int = 128, seed: int = 0) -> None:
    """Three orthogonal slices through the centre of one catheter and one guide-wire case (label in red)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(10, 7))
    for row, kind in enumerate(("catheter", "guidewire")):
        image, label, centre = render_case(seed * 1000, size, kind)
        pixels, mask = sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(label)
        index = np.round(image.TransformPhysicalPointToContinuousIndex(centre)[::-1]).astype(int)
        names = ("across the beams (z cut)", "depth x elevation (y cut)", "depth x lateral (x cut)")
        for axis, name in enumerate(names):
            cut = [slice(None)] * 3
            cut[axis] = int(index[axis])
            ax = axes[row, axis]
            ax.imshow(pixels[tuple(cut)], cmap="gray", vmin=0, vmax=255)
            ax.contour(mask[tuple(cut)], [0.5], colors="r", linewidths=0.6)
            ax.set_title(f"{kind}, {name}", fontsize=9)
            ax.axis("off")
    fig.suptitle(f"benchmarks/other_generator.py, seed {seed}, {size}^3 (array axes; probe at the top)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path, nargs="?", help="dataset folder to write")
    parser.add_argument("--cases", type=int, default=8)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kind", choices=("catheter", "guidewire"), default="catheter")
    parser.add_argument("--figure", type=Path, help="draw one case of each instrument (PNG) instead")
    args = parser.parse_args()
    if args.figure:
        figure(args.figure, args.size, args.seed)
        print(f"wrote {args.figure}")
    elif args.out is None:
        parser.error("give OUT (a dataset folder) or --figure PNG")
    else:
        print(f"wrote {write_dataset(args.out, args.cases, args.size, args.seed, args.kind)}")


if __name__ == "__main__":
    main()
