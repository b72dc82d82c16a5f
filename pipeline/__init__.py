"""selfmvs: self-supervised multi-view stereo, from COLMAP-registered photos to fused point clouds.

Layers (see ARCHITECTURE): ``pipeline.colmap`` / ``pipeline.formats`` / ``pipeline.config`` (floor 0),
``pipeline.scene`` / ``pipeline.model`` / ``pipeline.losses`` / ``pipeline.synth`` (floor 1),
``pipeline.stages`` and ``pipeline.tools`` (floor 2), ``pipeline.cli`` (floor 3).
"""

__version__ = "0.1.0"
