"""Tests of SemiSupSegLib.imageio: reading checks, atomic writes, geometry and point conversions."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import SimpleITK as sitk

from SemiSupSegLib import imageio
from SemiSupSegLib.errors import InputError


def make_image(size_xyz=(10, 12, 14), spacing=(0.5, 0.7, 1.2), origin=(10.0, -5.0, 3.0), rotate=True):
    """A float image with a ramp, anisotropic spacing and (by default) a rotated direction."""
    array = np.arange(np.prod(size_xyz), dtype=np.float32).reshape(size_xyz[::-1])
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    if rotate:
        c, s = math.cos(math.radians(30)), math.sin(math.radians(30))
        image.SetDirection((c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0))
    return image


@pytest.mark.parametrize("ext", [".nrrd", ".nii.gz", ".nii", ".mha", ".mhd"])
def test_write_read_round_trip_preserves_geometry(tmp_path, ext):
    image = make_image()
    path = tmp_path / f"vol{ext}"
    imageio.write_image(image, path)
    back = imageio.read_image(path)
    assert imageio.same_geometry(back, image) is None
    np.testing.assert_allclose(back.GetDirection(), image.GetDirection(), atol=1e-5)
    np.testing.assert_allclose(back.GetOrigin(), (10.0, -5.0, 3.0), atol=1e-5)
    np.testing.assert_allclose(back.GetSpacing(), (0.5, 0.7, 1.2), atol=1e-5)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(image))
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_atomic_write_keeps_old_file_when_writer_fails(tmp_path, monkeypatch):
    path = tmp_path / "vol.nii.gz"
    imageio.write_image(make_image(), path)
    before = path.read_bytes()

    def failing_writer(image, filename, *args, **kwargs):
        with open(filename, "wb") as f:
            f.write(b"half written")
        raise RuntimeError("disk full")

    monkeypatch.setattr(sitk, "WriteImage", failing_writer)
    with pytest.raises(InputError, match="disk full"):
        imageio.write_image(make_image(size_xyz=(4, 4, 4)), path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vol.nii.gz"]


def test_write_rejects_unknown_extension(tmp_path):
    with pytest.raises(InputError, match="unsupported extension"):
        imageio.write_image(make_image(), tmp_path / "vol.png")


def test_read_missing_file(tmp_path):
    with pytest.raises(InputError, match=r"label file '.*nope\.nrrd' does not exist"):
        imageio.read_image(tmp_path / "nope.nrrd", what="label")


def test_read_unsupported_extension(tmp_path):
    path = tmp_path / "vol.txt"
    path.write_text("hello")
    with pytest.raises(InputError, match="unsupported extension"):
        imageio.read_image(path)


def test_read_corrupt_file_gives_short_message(tmp_path):
    path = tmp_path / "corrupt.nii.gz"
    path.write_bytes(os.urandom(2000))
    with pytest.raises(InputError) as info:
        imageio.read_image(path)
    message = str(info.value)
    assert "corrupt.nii.gz" in message and "cannot be read" in message
    assert ".cxx" not in message and "\n" not in message


def test_read_2d_file(tmp_path):
    path = tmp_path / "slice.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((8, 9), np.float32)), str(path))
    with pytest.raises(InputError, match=r"is 2D \(size \(9, 8\)\)"):
        imageio.read_image(path)


def test_read_size_one_axis_is_2d(tmp_path):
    path = tmp_path / "flat.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((1, 8, 9), np.float32)), str(path))
    with pytest.raises(InputError, match=r"is 2D \(size 1 along axis 2"):
        imageio.read_image(path)


def test_read_4d_file(tmp_path):
    path = tmp_path / "series.nii.gz"
    series = sitk.JoinSeries([sitk.Image(5, 6, 7, sitk.sitkFloat32)] * 3)
    sitk.WriteImage(series, str(path))
    with pytest.raises(InputError, match="is 4D"):
        imageio.read_image(path)


def test_read_vector_file(tmp_path):
    path = tmp_path / "vector.nrrd"
    vector = sitk.GetImageFromArray(np.zeros((5, 6, 7, 3), np.float32), isVector=True)
    sitk.WriteImage(vector, str(path))
    with pytest.raises(InputError, match=r"has 3 components per voxel \(4D or vector image\)"):
        imageio.read_image(path)


def test_read_nan_and_inf_counted(tmp_path):
    array = np.zeros((6, 6, 6), np.float32)
    array[1, 2, 3] = np.nan
    array[2, 2, 2] = np.nan
    array[0, 0, 0] = np.inf
    path = tmp_path / "nan.mha"
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
    with pytest.raises(InputError, match=r"3 non-finite voxel\(s\) \(2 NaN, 1 infinite\)"):
        imageio.read_image(path)


def test_read_accepts_integer_label(tmp_path):
    path = tmp_path / "label.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(np.ones((4, 5, 6), np.uint8)), str(path))
    image = imageio.read_image(path, what="label")
    assert image.GetSize() == (6, 5, 4)


def test_same_geometry_messages():
    ref = make_image(size_xyz=(10, 10, 10))
    assert imageio.same_geometry(make_image(size_xyz=(10, 10, 10)), ref) is None
    assert (
        imageio.same_geometry(make_image(size_xyz=(10, 10, 9)), ref)
        == "size (10, 10, 9) differs from image size (10, 10, 10)"
    )
    spacing = make_image(size_xyz=(10, 10, 10), spacing=(0.5, 0.7, 1.3))
    assert imageio.same_geometry(spacing, ref).startswith("spacing (0.5, 0.7, 1.3) differs")
    origin = make_image(size_xyz=(10, 10, 10), origin=(10.0, -5.0, 4.0))
    assert imageio.same_geometry(origin, ref).startswith("origin")
    direction = make_image(size_xyz=(10, 10, 10), rotate=False)
    assert imageio.same_geometry(direction, ref).startswith("direction")


def test_index_physical_round_trip_with_rotation():
    image = make_image()
    point = imageio.index_to_physical(image, (2.0, 3.5, 4.0))
    np.testing.assert_allclose(imageio.physical_to_index(image, point), (2.0, 3.5, 4.0), atol=1e-9)
    # Index (1, 0, 0) is one x-spacing along the first direction column from the origin.
    p1 = imageio.index_to_physical(image, (1, 0, 0))
    np.testing.assert_allclose(p1, (10.0 + 0.5 * math.cos(math.radians(30)), -5.0 + 0.25, 3.0), atol=1e-9)


def test_point_inside_bounds():
    image = make_image(rotate=False, origin=(0.0, 0.0, 0.0), spacing=(1.0, 1.0, 1.0))
    assert imageio.point_inside(image, (-0.5, 0.0, 0.0))
    assert imageio.point_inside(image, (9.5, 11.5, 13.5))
    assert not imageio.point_inside(image, (-0.6, 0.0, 0.0))
    assert not imageio.point_inside(image, (0.0, 0.0, 13.6))


def test_check_point_inside_raises_outside():
    image = make_image(rotate=False, origin=(0.0, 0.0, 0.0), spacing=(1.0, 1.0, 2.0))
    np.testing.assert_allclose(imageio.check_point_inside(image, (1.0, 2.0, 4.0)), (1.0, 2.0, 2.0))
    with pytest.raises(
        InputError, match=r"centre point \(50, 2, 4\) mm is outside the volume .*size \(10, 12, 14\)"
    ):
        imageio.check_point_inside(image, (50.0, 2.0, 4.0))
    with pytest.raises(InputError, match="not 3 finite numbers"):
        imageio.check_point_inside(image, (1.0, float("nan"), 4.0))


def test_ras_lps_round_trip():
    assert imageio.ras_to_lps((1.0, -2.0, 3.0)) == (-1.0, 2.0, 3.0)
    assert imageio.lps_to_ras((-1.0, 2.0, 3.0)) == (1.0, -2.0, 3.0)
    p = (12.5, -7.25, 100.0)
    assert imageio.lps_to_ras(imageio.ras_to_lps(p)) == p


def test_strip_image_extension():
    assert imageio.strip_image_extension("a/case_001.nii.gz") == "case_001"
    assert imageio.strip_image_extension("b.NRRD") == "b"
    assert imageio.strip_image_extension("c.mha") == "c"
