"""Volume <-> image and markup <-> LPS point under parent transforms, on the real MRML core."""

import numpy as np
import pytest
import SimpleITK as sitk
import slicer
from helpers import grid_transform_node, node_count, transformed_volume
from SemiSupSegMRML import markups, volumes

from SemiSupSegLib.errors import InputError

RAS_FROM_LPS = np.diag([-1.0, -1.0, 1.0])


def test_volume_to_image_is_the_volume_in_its_own_frame_under_a_parent_transform(scene):
    image, volume, _ = transformed_volume()
    back = volumes.volume_to_image(volume)
    np.testing.assert_allclose(back.GetOrigin(), image.GetOrigin(), atol=1e-5)
    np.testing.assert_allclose(back.GetSpacing(), image.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(back.GetDirection(), image.GetDirection(), atol=1e-6)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(back), sitk.GetArrayViewFromImage(image))


def test_grid_transform_is_a_clear_error_and_changes_nothing(scene):
    _, volume, _ = transformed_volume()
    volume.SetAndObserveTransformNodeID(grid_transform_node().GetID())
    before = node_count()
    with pytest.raises(InputError, match="non-linear transform.*Harden"):
        volumes.volume_to_image(volume)
    assert node_count() == before


def test_markup_world_position_is_the_transformed_lps_point(scene):
    image, volume, matrix = transformed_volume()
    point = markups.create_point_node()
    lps = image.TransformContinuousIndexToPhysicalPoint((3.0, 8.0, 5.0))
    markups.set_center_lps(point, volume, lps)
    world = [0.0, 0.0, 0.0]
    point.GetNthControlPointPositionWorld(0, world)
    expected = matrix[:3, :3] @ (RAS_FROM_LPS @ np.asarray(lps)) + matrix[:3, 3]
    np.testing.assert_allclose(world, expected, atol=1e-4)
    np.testing.assert_allclose(markups.center_lps(point, volume), lps, atol=1e-4)


def test_markup_placed_in_the_world_reads_back_on_the_same_voxel(scene):
    image, volume, matrix = transformed_volume()
    ijk = (9, 2, 6)
    ras_local = np.asarray(slicer.util.arrayFromVTKMatrix(_ijk_to_ras(volume))) @ np.array([*ijk, 1.0])
    world = matrix @ ras_local
    point = markups.create_point_node()
    point.AddControlPointWorld(*world[:3], "placed")
    center = markups.center_lps(point, volume)
    assert image.TransformPhysicalPointToIndex(center) == ijk


def test_no_point_reads_as_none_and_a_second_set_moves_the_only_point(scene):
    image, volume, _ = transformed_volume()
    point = markups.create_point_node()
    assert markups.center_lps(point, volume) is None and not markups.has_point(point)
    markups.set_center_lps(point, volume, image.GetOrigin())
    other = image.TransformIndexToPhysicalPoint((4, 4, 4))
    markups.set_center_lps(point, volume, other)
    assert point.GetNumberOfControlPoints() == 1
    np.testing.assert_allclose(markups.center_lps(point, volume), other, atol=1e-4)


def _ijk_to_ras(volume):
    import vtk

    matrix = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(matrix)
    return matrix
