"""Volume nodes <-> SimpleITK images, with the volume's parent transform.

The engine works in a volume's own frame (LPS, ITK's convention); Slicer places a volume in the world
through an optional chain of parent transforms. Only linear chains are supported: a grid (non-linear)
transform raises an :class:`~SemiSupSegLib.errors.InputError` that says how to harden it.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
import slicer
import vtk

from SemiSupSegLib import slicer_bridge as bridge
from SemiSupSegLib.errors import InputError


def check_volume(volume_node) -> None:
    """Raise a named :class:`InputError` when no volume is chosen or it holds no voxels.

    Args:
        volume_node: a ``vtkMRMLScalarVolumeNode`` or None.
    """
    if volume_node is None:
        raise InputError("choose an input volume first")
    if volume_node.GetImageData() is None:
        raise InputError(f"volume '{volume_node.GetName()}' has no voxels")


def volume_to_world(volume_node) -> np.ndarray | None:
    """The 4x4 local RAS -> world RAS matrix of the volume's parent transforms.

    Args:
        volume_node: any transformable node (volume, segmentation).

    Returns:
        The matrix as a numpy array, or None when the node has no parent transform.

    Raises:
        InputError: the parent transform chain is not linear (a grid or B-spline transform).
    """
    transform_node = volume_node.GetParentTransformNode()
    if transform_node is None:
        return None
    if not transform_node.IsTransformToWorldLinear():
        raise InputError(
            f"volume '{volume_node.GetName()}' is under a non-linear transform; harden the transform "
            "(Data module, right-click the volume, 'Harden transform') before segmenting"
        )
    matrix = vtk.vtkMatrix4x4()
    transform_node.GetMatrixTransformToWorld(matrix)
    return slicer.util.arrayFromVTKMatrix(matrix)


def ijk_to_ras(volume_node) -> np.ndarray:
    """The volume's own IJK -> RAS matrix (without parent transforms) as a 4x4 numpy array."""
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    return slicer.util.arrayFromVTKMatrix(matrix)


def volume_to_image(volume_node) -> sitk.Image:
    """The volume as a SimpleITK image in its own frame (LPS), voxels copied.

    Args:
        volume_node: a scalar volume node; its parent transform must be linear.

    Returns:
        The image with the volume's origin, spacing and direction converted to LPS.
    """
    check_volume(volume_node)
    volume_to_world(volume_node)  # a non-linear parent transform is named here, before any work
    return bridge.image_from_array(
        slicer.util.arrayFromVolume(volume_node),
        ijk_to_ras(volume_node),
        name=f"volume '{volume_node.GetName()}'",
    )


def image_to_volume(image: sitk.Image, reference_node, output_node=None, name: str = "output"):
    """A float scalar volume with the image's voxels and grid, under the reference's parent transform.

    Args:
        image: a SimpleITK image in the reference volume's own frame (LPS).
        reference_node: the input volume whose parent transform the output follows.
        output_node: a volume node to update, or None to add a new one.
        name: the new node's name.

    Returns:
        The output volume node.
    """
    array, matrix = bridge.array_from_image(image)
    if output_node is None:
        output_node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    output_node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(matrix))
    slicer.util.updateVolumeFromArray(output_node, array.astype(np.float32))
    output_node.SetAndObserveTransformNodeID(reference_node.GetTransformNodeID())
    output_node.CreateDefaultDisplayNodes()
    return output_node


def volume_from_image(image: sitk.Image, name: str, transform_node=None):
    """Add a new scalar volume node holding a SimpleITK image (LPS) at its own geometry.

    Args:
        image: the image.
        name: the node's name.
        transform_node: an optional parent transform node.

    Returns:
        The new volume node.
    """
    array, matrix = bridge.array_from_image(image)
    node = slicer.util.addVolumeFromArray(array, matrix, name=name)
    if transform_node is not None:
        node.SetAndObserveTransformNodeID(transform_node.GetID())
    return node
