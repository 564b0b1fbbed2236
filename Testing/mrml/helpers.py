"""Scene builders shared by the MRML tests: oblique, anisotropic, non-cubic volumes under transforms."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
import slicer
from SemiSupSegMRML.volumes import volume_from_image

SIZE_XYZ = (14, 11, 9)  # non-cubic: every axis differs
SPACING = (0.7, 1.1, 1.6)  # anisotropic


def rotation(degrees_z: float, degrees_x: float) -> np.ndarray:
    """A rotation about z, then about x (3x3)."""
    a, b = np.deg2rad(degrees_z), np.deg2rad(degrees_x)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return rx @ rz


def oblique_image(seed: int = 0) -> sitk.Image:
    """A random float image with an oblique direction, anisotropic spacing and a non-cubic size (LPS)."""
    array = np.random.default_rng(seed).random(SIZE_XYZ[::-1]).astype(np.float32)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(SPACING)
    image.SetOrigin((-3.0, 7.5, 12.0))
    image.SetDirection(rotation(25.0, 10.0).flatten().tolist())
    return image


def rigid_transform_node(name: str = "probe pose"):
    """A linear transform: a rotation (about z then x) and a shift."""
    matrix = np.eye(4)
    matrix[:3, :3] = rotation(20.0, -15.0)
    matrix[:3, 3] = [5.0, -3.0, 2.0]
    node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode", name)
    node.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(matrix))
    return node, matrix


def transformed_volume(seed: int = 0, name: str = "oblique"):
    """``(image, volume node, 4x4 local->world matrix)``: the oblique image under a rigid transform."""
    image = oblique_image(seed)
    transform, matrix = rigid_transform_node()
    return image, volume_from_image(image, name, transform), matrix


def grid_transform_node():
    """A non-linear (grid) transform node."""
    return slicer.mrmlScene.AddNewNodeByClass("vtkMRMLGridTransformNode", "warp")


def instrument_label(image: sitk.Image) -> sitk.Image:
    """A thin line of ones along x in the middle of the image's grid, on its geometry."""
    array = np.zeros(sitk.GetArrayViewFromImage(image).shape, np.uint8)
    k, j = array.shape[0] // 2, array.shape[1] // 2
    array[k, j, 2:-2] = 1
    array[k + 1, j, 3] = 1  # asymmetric: a flipped axis shows
    label = sitk.GetImageFromArray(array)
    label.CopyInformation(image)
    return label


def node_count() -> int:
    return slicer.mrmlScene.GetNumberOfNodes()
