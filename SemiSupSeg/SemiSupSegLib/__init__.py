"""SemiSupSeg engine: semi-supervised 3D segmentation of interventional instruments.

Plain Python (torch, MONAI, numpy, SimpleITK); it never imports Slicer, so it runs in the
Slicer panels, in a separate training process, and from the ``semisupseg`` command line.
"""

__version__ = "0.1.0"
