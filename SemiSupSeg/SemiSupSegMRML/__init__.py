"""SemiSupSegMRML: everything the two panels do with the MRML scene, without Qt.

It imports slicer (the MRML core), vtk, numpy, SimpleITK and the engine ``SemiSupSegLib``, never qt,
ctk or ``slicer.ScriptedLoadableModule``: it runs in a full Slicer and on the Qt-free ``slicer-core``
wheel, where ``Testing/mrml`` tests it. One module per concept:

- :mod:`.volumes` - volume node <-> SimpleITK image (LPS, own frame), parent transforms;
- :mod:`.markups` - the centre point list <-> an LPS point;
- :mod:`.segments` - the instrument segment <-> a label; results -> segmentation/probability/uncertainty;
- :mod:`.pool` - writing the pool from nodes;
- :mod:`.models` - which model the segmentation panel selects (honours the default model);
- :mod:`.segmentation` - locate, segment in-process or in a child process, read its outputs back;
- :mod:`.suggested` - load the next suggested (most doubted) unlabelled case with its centre, segment it;
- :mod:`.refine` - "Refine here": the region around a point added to the result as a union, undoable;
- :mod:`.overlay` - the uncertainty volume as a coloured slice overlay, legend, opacity, one-line summary;
- :mod:`.training` - the training panel's child processes and the default model;
- :mod:`.auto_retrain` - start a fine-tuning by itself once the pool has gained N new labelled cases;
- :mod:`.plots` - table and chart nodes of the training curves;
- :mod:`.dependencies` - the one installer of torch/MONAI/SciPy for both panels.
"""
