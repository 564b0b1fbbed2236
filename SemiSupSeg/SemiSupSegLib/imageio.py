"""Reading and writing 3D volumes with SimpleITK, and point/index conversions.

Supported formats: NRRD (``.nrrd``, ``.nhdr``), NIfTI (``.nii``, ``.nii.gz``) and MetaImage
(``.mha``, ``.mhd``).

Conventions used throughout the engine:

* Points are physical coordinates in millimetres in the LPS frame, as ITK uses them. 3D Slicer
  shows RAS coordinates: convert with :func:`ras_to_lps` / :func:`lps_to_ras`.
* ITK's NIfTI reader turns NaN voxels into 0, so only NRRD/MetaImage files can be rejected for
  NaN values.
* Indices are ``(x, y, z)`` (ITK order). Arrays from ``sitk.GetArrayFromImage`` are indexed
  ``[z, y, x]`` (the reverse), so voxel ``(i, j, k)`` is ``array[k, j, i]``.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .atomic import atomic_path
from .errors import InputError

SUPPORTED_EXTENSIONS = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
# Formats whose header names a separate data file: written in a temporary folder, then moved.
_DETACHED_HEADER = (".mhd", ".nhdr")
_AXES = "xyz"


def image_extension(path: str | os.PathLike) -> str:
    """The supported extension of ``path`` (lower case, e.g. ``.nii.gz``), or ``""`` if none."""
    name = Path(path).name.lower()
    for ext in SUPPORTED_EXTENSIONS:
        if name.endswith(ext):
            return ext
    return ""


def strip_image_extension(path: str | os.PathLike) -> str:
    """The file name of ``path`` without its image extension (``a.nii.gz`` -> ``a``)."""
    name = Path(path).name
    ext = image_extension(name)
    return name[: -len(ext)] if ext else Path(name).stem


def _fmt(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{float(v):.6g}" for v in values) + ")"


def _itk_reason(err: RuntimeError) -> str:
    """A one-line reason from a SimpleITK exception, without the C++ source location."""
    text = str(err)
    if "Unable to determine ImageIO reader" in text:
        return "not a readable image file (corrupt, truncated or of another format)"
    if "ERROR:" in text:  # ITK's message follows "ITK ERROR: Image(0x...): " and may span lines
        text = re.sub(r"^\w+\(0x[0-9a-fA-F]+\):\s*", "", text.split("ERROR:", 1)[1].strip())
        return " ".join(text.split())[:200] or "unknown error"
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return (lines[-1] if lines else "unknown error")[:200]


def _check_file(path: Path, what: str) -> None:
    if not path.exists():
        if path.is_symlink():
            raise InputError(f"{what} file '{path}' is a symbolic link to nothing (broken, or a loop)")
        raise InputError(f"{what} file '{path}' does not exist")
    if not path.is_file():
        raise InputError(f"{what} path '{path}' is not a file")
    if not image_extension(path):
        raise InputError(
            f"{what} file '{path}' has an unsupported extension; "
            f"expected one of {', '.join(SUPPORTED_EXTENSIONS)}"
        )


def _check_shape(image: sitk.Image, path: Path, what: str) -> None:
    dim = image.GetDimension()
    ncomp = image.GetNumberOfComponentsPerPixel()
    if dim != 3:
        raise InputError(
            f"{what} file '{path}' is {dim}D (size {tuple(image.GetSize())}); expected a scalar 3D volume"
        )
    if ncomp != 1:
        raise InputError(
            f"{what} file '{path}' has {ncomp} components per voxel (4D or vector image); "
            "expected a scalar 3D volume"
        )
    for axis, size in enumerate(image.GetSize()):
        if size <= 1:
            raise InputError(
                f"{what} file '{path}' is 2D (size 1 along axis {axis} ({_AXES[axis]}), "
                f"size {tuple(image.GetSize())}); expected a 3D volume"
            )


def _check_geometry(image: sitk.Image, path: Path, what: str) -> None:
    """Positive finite spacing and an orthonormal direction (a rotation, maybe with a reflection)."""
    spacing = np.asarray(image.GetSpacing(), dtype=float)
    if not np.all(np.isfinite(spacing) & (spacing > 0)):
        raise InputError(f"{what} file '{path}' has spacing {_fmt(spacing)}; every spacing must be > 0 mm")
    _check_origin(np.asarray(image.GetOrigin(), dtype=float), float(spacing.min()), path, what)
    direction = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
    if not np.allclose(direction.T @ direction, np.eye(3), atol=1e-3):
        raise InputError(
            f"{what} file '{path}' has a direction matrix {_fmt(direction.ravel())} that is not orthonormal "
            "(its axes are not unit length and perpendicular); the header is damaged"
        )


def _check_pixel_type(image: sitk.Image, path: Path, what: str) -> None:
    """Real voxels: a complex image (an MRI raw reconstruction, a Fourier transform) has no intensity."""
    if image.GetPixelID() in (sitk.sitkComplexFloat32, sitk.sitkComplexFloat64):
        raise InputError(
            f"{what} file '{path}' has complex voxels ({image.GetPixelIDTypeAsString()}); "
            "expected real numbers (save the magnitude instead)"
        )


_MAX_ORIGIN_VOXELS = 1e12
"""How far from 0 an origin may lie, in voxels: beyond it double precision (2.2e-16 relative) places voxels
to worse than 1e-3 voxel; at 1e300 mm every voxel is at one point and centre points lose their meaning."""


def _check_origin(origin: np.ndarray, spacing: float, path: Path, what: str) -> None:
    """A finite origin, within :data:`_MAX_ORIGIN_VOXELS` voxels of 0."""
    if not np.all(np.isfinite(origin)):
        raise InputError(
            f"{what} file '{path}' has origin {_fmt(origin)} that is not finite; the header is damaged"
        )
    if np.max(np.abs(origin)) > _MAX_ORIGIN_VOXELS * spacing:
        raise InputError(
            f"{what} file '{path}' has origin {_fmt(origin)} mm, more than {_MAX_ORIGIN_VOXELS:.0e} voxels "
            "from 0: its voxels' positions cannot be told apart; the header is damaged"
        )


def _check_finite(image: sitk.Image, path: Path, what: str) -> None:
    array = sitk.GetArrayViewFromImage(image)
    if not np.issubdtype(array.dtype, np.floating):
        return
    bad = int(array.size - np.count_nonzero(np.isfinite(array)))
    if bad:
        n_nan = int(np.count_nonzero(np.isnan(array)))
        raise InputError(
            f"{what} file '{path}' has {bad} non-finite voxel(s) "
            f"({n_nan} NaN, {bad - n_nan} infinite); fix or mask them before use"
        )
    _check_float32_range(array, path, what)


def check_contrast(image: sitk.Image, task: str) -> None:
    """Refuse a constant image: z-scoring would divide by 0 and a network would answer on a blank input.

    Args:
        image: a scalar volume (already read and checked by :func:`read_image`).
        task: what could not be done, ending the message ("segment", "find").

    Raises:
        InputError: "image is constant (every voxel is V); there is nothing to ``task``".
    """
    array = sitk.GetArrayViewFromImage(image)
    low, high = array.min(), array.max()
    if low == high:
        raise InputError(f"image is constant (every voxel is {low.item():g}); there is nothing to {task}")


_FLOAT32_MAX = float(np.finfo(np.float32).max)


def _check_float32_range(array: np.ndarray, path: Path, what: str) -> None:
    """Values whose range float32 (the engine's working precision) holds: beyond it, resampling gives
    infinities and normalisation NaN, so the network would answer on garbage."""
    low, high = float(array.min()), float(array.max())
    if high - low > _FLOAT32_MAX:
        raise InputError(
            f"{what} file '{path}' has values from {low:.4g} to {high:.4g}, a range beyond what float32 "
            f"holds ({_FLOAT32_MAX:.4g}); the file's data type or scaling is damaged"
        )


def read_image(path: str | os.PathLike, *, what: str = "image") -> sitk.Image:
    """Read a scalar 3D volume, or raise :class:`InputError` with a message naming the file.

    Rejected: a missing file, an unsupported extension, a corrupt file, a 2D or 4D image, a
    vector image (more than one component per voxel), a complex image, a 3D image with a size-1 axis
    (really 2D), a spacing that is not positive, an origin not finite or too far from 0 for double
    precision, a direction matrix that is not orthonormal, and images
    with NaN or infinite values or a range of values float32 cannot hold. ``what`` ("image",
    "label"...) starts the messages.
    """
    path = Path(path)
    _check_file(path, what)
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as err:
        raise InputError(f"{what} file '{path}' cannot be read: {_itk_reason(err)}") from None
    _check_shape(image, path, what)
    _check_pixel_type(image, path, what)
    _check_geometry(image, path, what)
    _check_finite(image, path, what)
    return image


def _write_detached(image: sitk.Image, target: Path, compress: bool) -> None:
    """Write a header + data file pair (``.mhd``/``.nhdr``); the header is moved into place last."""
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        sitk.WriteImage(image, str(tmp_dir / target.name), compress)
        header = tmp_dir / target.name
        for data_file in tmp_dir.iterdir():
            if data_file != header:
                os.replace(data_file, target.parent / data_file.name)
        os.replace(header, target)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def write_image(image: sitk.Image, path: str | os.PathLike, *, compress: bool = True) -> None:
    """Write ``image`` atomically: a failed write leaves any existing file at ``path`` intact."""
    path = Path(path)
    if not image_extension(path):
        raise InputError(
            f"cannot write '{path}': unsupported extension; expected one of {', '.join(SUPPORTED_EXTENSIONS)}"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        if image_extension(path) in _DETACHED_HEADER:
            _write_detached(image, path, compress)
            return
        with atomic_path(path) as tmp:
            sitk.WriteImage(image, str(tmp), compress)
    except RuntimeError as err:
        raise InputError(f"cannot write '{path}': {_itk_reason(err)}") from None


def write_images(items: Sequence[tuple[sitk.Image, str | os.PathLike]], *, compress: bool = True) -> None:
    """Write several images (a case's image and label) so that either every file is replaced or none.

    Each is first written under a temporary name next to its target; the renames follow only once every
    write has succeeded, so a full disk or a refused write (an :class:`InputError` or a
    :class:`~SemiSupSegLib.atomic.WriteError`) leaves all the previous files as they were. Formats
    with a separate data file (``.mhd``, ``.nhdr``) are written one after the other instead.

    Args:
        items: ``(image, path)`` pairs.
        compress: compress the data where the format allows it.
    """
    staged = [(image, Path(path)) for image, path in items if image_extension(path) not in _DETACHED_HEADER]
    detached = [(image, Path(path)) for image, path in items if image_extension(path) in _DETACHED_HEADER]
    with contextlib.ExitStack() as renames:
        for image, path in staged:
            if not image_extension(path):
                write_image(image, path)  # raises the unsupported-extension error
            tmp = renames.enter_context(atomic_path(path))
            try:
                sitk.WriteImage(image, str(tmp), compress)
            except RuntimeError as err:
                raise InputError(f"cannot write '{path}': {_itk_reason(err)}") from None
    for image, path in detached:
        write_image(image, path, compress=compress)


def same_geometry(a: sitk.Image, b: sitk.Image, tol: float = 1e-4) -> str | None:
    """``None`` if ``a`` and ``b`` share size, spacing, origin and direction, else what differs.

    The message describes ``a`` against ``b`` (the reference, called "image"), e.g.
    ``"size (10, 10, 9) differs from image size (10, 10, 10)"``. Spacing, origin and direction
    compare with absolute and relative tolerance ``tol``.
    """
    if tuple(a.GetSize()) != tuple(b.GetSize()):
        return f"size {tuple(a.GetSize())} differs from image size {tuple(b.GetSize())}"
    for name, getter in (
        ("spacing", sitk.Image.GetSpacing),
        ("origin", sitk.Image.GetOrigin),
        ("direction", sitk.Image.GetDirection),
    ):
        va, vb = getter(a), getter(b)
        if len(va) != len(vb) or not np.allclose(va, vb, rtol=tol, atol=tol):
            return f"{name} {_fmt(va)} differs from image {name} {_fmt(vb)}"
    return None


def _as_point(point: Sequence[float], what: str = "point") -> tuple[float, float, float]:
    try:
        values = tuple(float(v) for v in point)
    except (TypeError, ValueError):
        raise InputError(f"{what} {point!r} is not 3 numbers") from None
    if len(values) != 3 or not all(np.isfinite(values)):
        raise InputError(f"{what} {point!r} is not 3 finite numbers")
    return values  # type: ignore[return-value]


def physical_to_index(image: sitk.Image, point_lps: Sequence[float]) -> np.ndarray:
    """Continuous index ``(x, y, z)`` of an LPS point in mm (voxel centres are integers)."""
    point = _as_point(point_lps)
    return np.asarray(image.TransformPhysicalPointToContinuousIndex(point), dtype=float)


def index_to_physical(image: sitk.Image, index_xyz: Sequence[float]) -> tuple[float, float, float]:
    """LPS point in mm of a (continuous) index ``(x, y, z)``."""
    index = _as_point(index_xyz, "index")
    return tuple(float(v) for v in image.TransformContinuousIndexToPhysicalPoint(index))  # type: ignore[return-value]


def point_inside(image: sitk.Image, point_lps: Sequence[float]) -> bool:
    """True if the LPS point lies within the volume: continuous index in ``[-0.5, size - 0.5]``."""
    index = physical_to_index(image, point_lps)
    size = np.asarray(image.GetSize(), dtype=float)
    eps = 1e-6
    return bool(np.all(index >= -0.5 - eps) and np.all(index <= size - 0.5 + eps))


def check_point_inside(
    image: sitk.Image, point_lps: Sequence[float], *, what: str = "centre point"
) -> np.ndarray:
    """Continuous index ``(x, y, z)`` of the LPS point; :class:`InputError` if outside the volume."""
    point = _as_point(point_lps, what)
    index = physical_to_index(image, point)
    if not point_inside(image, point):
        raise InputError(
            f"{what} {_fmt(point)} mm is outside the volume "
            f"(index {_fmt(np.round(index, 2))}; size {tuple(image.GetSize())})"
        )
    return index


def ras_to_lps(p: Sequence[float]) -> tuple[float, float, float]:
    """Convert a RAS point (3D Slicer) to LPS (ITK): flip the sign of x and y."""
    return (-float(p[0]), -float(p[1]), float(p[2]))


def lps_to_ras(p: Sequence[float]) -> tuple[float, float, float]:
    """Convert an LPS point (ITK) to RAS (3D Slicer): flip the sign of x and y."""
    return (-float(p[0]), -float(p[1]), float(p[2]))
