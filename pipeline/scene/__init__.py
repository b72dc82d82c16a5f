"""Scene preparation (numpy, vectorised): COLMAP camera models and undistortion, source-view
selection (MVSNet score), depth ranges from sparse points, and resizing with exact intrinsics.

Used by the ``prepare`` stage (:mod:`pipeline.stages.prepare`), which writes ``scene.h5``.
"""

from pipeline.scene.camera_models import (
    LENS_MODELS,
    Intrinsics,
    UnsupportedCameraModelError,
    distort_normalized,
    undistort_normalized,
)
from pipeline.scene.depth_range import DepthRangeError, suggest_num_depth, view_depth_range
from pipeline.scene.resize import ResizePlan, plan_resize
from pipeline.scene.undistort import UNDISTORT_MODES, Undistorter, make_undistorter
from pipeline.scene.view_selection import (
    ViewSelection,
    angle_weight,
    select_views,
    tracks_from_model,
)

__all__ = [
    "LENS_MODELS", "Intrinsics", "UnsupportedCameraModelError", "distort_normalized", "undistort_normalized",
    "DepthRangeError", "suggest_num_depth", "view_depth_range",
    "ResizePlan", "plan_resize", "UNDISTORT_MODES", "Undistorter", "make_undistorter",
    "ViewSelection", "angle_weight", "select_views", "tracks_from_model",
]
