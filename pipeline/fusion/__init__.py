"""Depth-map fusion into a point cloud (photometric + geometric consistency, point averaging)."""

from pipeline.fusion.core import (
    FusedView,
    FusionInputError,
    FusionView,
    dynamic_agreement_level,
    fuse_view,
    fuse_views,
    sample_depth,
)

__all__ = [
    "FusedView",
    "FusionInputError",
    "FusionView",
    "dynamic_agreement_level",
    "fuse_view",
    "fuse_views",
    "sample_depth",
]
