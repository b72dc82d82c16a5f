"""Evaluation metrics of point clouds and depth maps (DTU / Tanks-and-Temples protocols)."""

from pipeline.evaluation.metrics import (
    DEFINITIONS,
    bounding_box_diagonal,
    cloud_metrics,
    depth_errors,
    depth_summary,
    nearest_distances,
    random_subsample,
    resample_nearest,
    sparse_depth_errors,
    voxel_downsample,
)

__all__ = [
    "DEFINITIONS",
    "bounding_box_diagonal",
    "cloud_metrics",
    "depth_errors",
    "depth_summary",
    "nearest_distances",
    "random_subsample",
    "resample_nearest",
    "sparse_depth_errors",
    "voxel_downsample",
]
