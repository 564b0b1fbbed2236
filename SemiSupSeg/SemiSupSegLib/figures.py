"""Pictures of a segmented case: three orthogonal slices through a centre, with contours.

``write_case_figure`` draws, for one volume, the slices through a centre voxel ``(k, j, i)`` along the
three array axes (numpy ``(z, y, x)``: the axial slice ``image[k]``, the coronal ``image[:, j]`` and the
sagittal ``image[:, :, i]``). Each panel shows the image in grey, the reference contour (green), the
predicted contour (magenta) and the centre (yellow cross); with an uncertainty map a second row shows it
as a heat map with the same contours. Panels are drawn in millimetres along the grid axes (voxel index
x spacing), so anisotropic voxels keep their physical aspect; depth (z) runs downwards, as on an
ultrasound screen.

matplotlib is imported only when a figure is drawn, and only its object-oriented Agg canvas is used:
the process-wide backend (pyplot, Slicer's Qt) is never touched.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import SimpleITK as sitk

from .atomic import atomic_path
from .errors import InputError

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

DPI = 100
PANEL_INCHES = 4.0
TITLE_INCHES = 0.5
TRUTH_COLOR = "#00ff00"
CENTRE_COLOR = "#ffd000"
PREDICTION_COLOR = "#ff00ff"
UNCERTAINTY_CMAP = "magma"
CONTOUR_WIDTH = 1.5

# (name, array axis held fixed, (vertical axis, horizontal axis)) of the three panels
VIEWS = (("axial", 0, (1, 2)), ("coronal", 1, (0, 2)), ("sagittal", 2, (0, 1)))
AXIS_NAMES = ("z", "y", "x")


def figure_pixels(with_uncertainty: bool) -> tuple[int, int]:
    """Width and height (pixels) of a case figure: 3 panels wide, 1 or 2 rows high.

    Args:
        with_uncertainty: whether the figure has the uncertainty row.

    Returns:
        ``(width, height)`` of the PNG that ``write_case_figure`` writes.
    """
    rows = 2 if with_uncertainty else 1
    return round(3 * PANEL_INCHES * DPI), round((rows * PANEL_INCHES + TITLE_INCHES) * DPI)


def _array(image: sitk.Image | None, reference: sitk.Image, what: str) -> np.ndarray | None:
    """The image's voxels as a ``(z, y, x)`` array, refused when it is not on the reference grid."""
    if image is None:
        return None
    if image.GetSize() != reference.GetSize():
        raise InputError(f"the {what} has size {image.GetSize()}, the image {reference.GetSize()}")
    return sitk.GetArrayFromImage(image)


def slice_centre(
    image: sitk.Image, center_lps: Sequence[float] | None, masks: Sequence[np.ndarray | None]
) -> tuple[int, int, int]:
    """The voxel ``(k, j, i)`` the slices go through.

    Args:
        image: the volume (its geometry converts the point).
        center_lps: a point in LPS mm, or None.
        masks: ``(z, y, x)`` masks tried in order when no point is given (e.g. truth, then prediction).

    Returns:
        The point's nearest voxel (clipped into the volume), else the centroid of the first non-empty
        mask, else the middle voxel.
    """
    shape = np.array(image.GetSize()[::-1])
    if center_lps is not None:
        index_xyz = image.TransformPhysicalPointToContinuousIndex(tuple(float(c) for c in center_lps))
        zyx = np.rint(np.array(index_xyz[::-1]))
    else:
        filled = [m for m in masks if m is not None and m.any()]
        zyx = np.rint(np.argwhere(filled[0]).mean(axis=0)) if filled else (shape - 1) / 2
    return tuple(int(v) for v in np.clip(np.rint(zyx), 0, shape - 1))


def _plane(volume: np.ndarray, axis: int, index: int) -> np.ndarray:
    """The 2D slice of ``volume`` at ``index`` along ``axis`` (remaining axes in increasing order)."""
    return np.take(volume, index, axis=axis)


def _extent(shape: tuple[int, int], spacing_zyx: Sequence[float], axes: tuple[int, int]) -> tuple:
    """imshow extent (left, right, bottom, top) in mm of a plane whose rows run along ``axes[0]``."""
    rows, cols = shape
    dv, dh = spacing_zyx[axes[0]], spacing_zyx[axes[1]]
    return (-0.5 * dh, (cols - 0.5) * dh, (rows - 0.5) * dv, -0.5 * dv)


def _contour(ax: Axes, mask: np.ndarray | None, spacing: tuple[float, float], color: str) -> None:
    """Draw the 0.5 level of a 2D mask (rows: vertical) in mm, if the slice crosses its border."""
    if mask is None or mask.min() == mask.max():
        return
    rows, cols = mask.shape
    ax.contour(
        np.arange(cols) * spacing[1],
        np.arange(rows) * spacing[0],
        mask.astype(np.float32),
        levels=[0.5],
        colors=[color],
        linewidths=CONTOUR_WIDTH,
    )


def _display_range(image: np.ndarray) -> tuple[float, float]:
    """Grey-level window: the 1st to 99.5th percentile of the volume (a subsample)."""
    sample = image[::2, ::2, ::2].astype(np.float32)
    low, high = (float(v) for v in np.percentile(sample, [1.0, 99.5]))
    return (low, high) if high > low else (low, low + 1.0)


def _draw_row(
    axes: Sequence[Axes],
    volume: np.ndarray,
    layers: dict,
    centre: tuple[int, int, int],
    spacing_zyx: Sequence[float],
) -> object:
    """One row of the three views of ``volume``; returns the last image artist (for a colour bar)."""
    artist = None
    for ax, (name, fixed, plane_axes) in zip(axes, VIEWS, strict=True):
        plane = _plane(volume, fixed, centre[fixed])
        extent = _extent(plane.shape, spacing_zyx, plane_axes)
        artist = ax.imshow(plane, extent=extent, interpolation="nearest", **layers["style"])
        step = (spacing_zyx[plane_axes[0]], spacing_zyx[plane_axes[1]])
        for key, color in (("truth", TRUTH_COLOR), ("prediction", PREDICTION_COLOR)):
            mask = layers[key]
            _contour(ax, None if mask is None else _plane(mask, fixed, centre[fixed]), step, color)
        v, h = (centre[a] * spacing_zyx[a] for a in plane_axes)
        ax.plot([h], [v], marker="+", markersize=9, color=CENTRE_COLOR, linestyle="none")
        ax.set_title(f"{name}, {AXIS_NAMES[fixed]} = {centre[fixed]}", fontsize=9)
        ax.set_xlabel(f"{AXIS_NAMES[plane_axes[1]]} (mm)", fontsize=8)
        ax.set_ylabel(f"{AXIS_NAMES[plane_axes[0]]} (mm)", fontsize=8)
        ax.tick_params(labelsize=7)
    return artist


def render_case_figure(
    image: sitk.Image,
    truth: sitk.Image | None = None,
    prediction: sitk.Image | None = None,
    uncertainty: sitk.Image | None = None,
    center_lps: Sequence[float] | None = None,
    title: str = "",
) -> Figure:
    """Draw a case: three orthogonal slices through the centre, contours, optional uncertainty row.

    Args:
        image: the volume.
        truth: reference label on the image's grid (green contour), or None.
        prediction: predicted label on the image's grid (magenta contour), or None.
        uncertainty: uncertainty map on the image's grid (second row, heat map, and with ``prediction``
            the line saying what fraction of the predicted instrument is uncertain), or None.
        center_lps: the point the slices go through (LPS mm); None: the truth's, else the
            prediction's centroid, else the middle of the volume.
        title: the figure's title.

    Returns:
        A matplotlib Figure on an Agg canvas, of ``figure_pixels(uncertainty is not None)`` pixels at
        ``DPI``, already drawn (its axes' transforms are final).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    volume = sitk.GetArrayFromImage(image).astype(np.float32)
    if volume.ndim != 3:
        raise InputError(f"a figure needs a 3D scalar image, got an array of shape {volume.shape}")
    layers = {
        "truth": _array(truth, image, "reference"),
        "prediction": _array(prediction, image, "prediction"),
    }
    entropy = _array(uncertainty, image, "uncertainty")
    centre = slice_centre(image, center_lps, (layers["truth"], layers["prediction"]))
    spacing_zyx = image.GetSpacing()[::-1]
    width, height = figure_pixels(entropy is not None)
    fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    FigureCanvasAgg(fig)
    rows = 2 if entropy is not None else 1
    axes = np.atleast_2d(fig.subplots(rows, 3))
    fig.subplots_adjust(left=0.05, right=0.91, bottom=0.1 / rows, top=1 - 0.14 / rows, wspace=0.3, hspace=0.3)
    low, high = _display_range(volume)
    grey = {"cmap": "gray", "vmin": low, "vmax": high}
    _draw_row(axes[0], volume, {**layers, "style": grey}, centre, spacing_zyx)
    if entropy is not None:
        heat = {"cmap": UNCERTAINTY_CMAP, "vmin": 0.0, "vmax": max(float(entropy.max()), 1e-6)}
        artist = _draw_row(axes[1], entropy, {**layers, "style": heat}, centre, spacing_zyx)
        fig.colorbar(artist, cax=fig.add_axes((0.935, 0.08, 0.012, 0.36)), label="uncertainty")
        if layers["prediction"] is not None:  # the panel's one line, under the uncertainty row (issue 19)
            from .suggest import uncertainty_summary

            fig.text(0.5, 0.005, uncertainty_summary(entropy, layers["prediction"]), ha="center", fontsize=8)
    legend = "green: reference, magenta: prediction" if layers["truth"] is not None else "magenta: prediction"
    fig.suptitle(f"{title}  ({legend})" if title else legend, fontsize=10)
    fig.canvas.draw()
    return fig


def write_case_figure(path: str | Path, image: sitk.Image, **layers) -> Path:
    """Draw a case with :func:`render_case_figure` and write it as a PNG (atomically).

    Args:
        path: the PNG to write; its folder is created.
        image: the volume.
        **layers: ``truth``, ``prediction``, ``uncertainty``, ``center_lps``, ``title`` as in
            :func:`render_case_figure`.

    Returns:
        The path written.
    """
    from matplotlib.image import imsave

    target = Path(path)
    fig = render_case_figure(image, **layers)
    pixels = np.asarray(fig.canvas.buffer_rgba())  # drawn once by render_case_figure: no second draw
    with atomic_path(target) as tmp:
        imsave(tmp, pixels, format="png")
    return target
