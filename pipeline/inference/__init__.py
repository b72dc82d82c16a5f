"""Depth inference below the ``infer`` stage: the view cache, the mirrored pass, the forward as a
CUDA graph, memory settings, resumption of a partial depth.h5 and the loop over a scene's views
(:func:`run_inference`)."""

from pipeline.inference.cache import PreparedView, ViewCache, prepare_view
from pipeline.inference.estimate import estimate_view, fill_low_texture
from pipeline.inference.graph import GraphedForward
from pipeline.inference.memory import MAX_MMAP_THRESHOLD_KIB, set_mmap_threshold
from pipeline.inference.mirror import MIRROR_AGREEMENT, combine_mirrored
from pipeline.inference.resume import plane_fill_setting
from pipeline.inference.runner import run_inference, validate_config, warm_up

__all__ = [
    "GraphedForward", "MAX_MMAP_THRESHOLD_KIB", "MIRROR_AGREEMENT", "PreparedView", "ViewCache", "combine_mirrored",
    "estimate_view", "fill_low_texture", "plane_fill_setting", "prepare_view", "run_inference", "set_mmap_threshold",
    "validate_config", "warm_up",
]
