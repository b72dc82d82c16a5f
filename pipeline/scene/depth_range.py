"""Depth ranges per view from the sparse points, and a suggested number of depth hypotheses.

The range of a view is a pair of percentiles (default 1st / 99th) of the z-depths of the sparse
points it observes, optionally stretched as COLMAP's PatchMatch stereo does (near * 0.75,
far * 1.25). A view that observes fewer than ``min_points`` points falls back to the points of the
whole model in front of it (logged with a warning naming the view).

The hypothesis count follows the one-pixel-parallax rule: sampling inverse depth uniformly between
1 / far and 1 / near, neighbouring hypotheses should move a point by about one pixel in the best
source view. For a baseline b (its part perpendicular to the reference's optical axis) and focal
length f (pixels) the disparity of depth z is about f b / z, so
``num_depth = ceil(f b (1 / near - 1 / far)) + 1``, clamped to [num_depth_min, num_depth_max].
"""

from __future__ import annotations

import logging

import numpy as np

from pipeline.config import PrepareConfig

LOGGER = logging.getLogger(__name__)
_MIN_DEPTH = 1e-9  # points with a z-depth at or below this are behind (or on) the camera


class DepthRangeError(ValueError):
    """No sparse point in front of a view: its depth range cannot be estimated."""


def point_depths(cam_from_world: np.ndarray, points_xyz: np.ndarray) -> np.ndarray:
    """z-depths of world points in a camera.

    Shape:
        cam_from_world: (3, 4); points_xyz: (P, 3) -> (P,)
    """
    cam_from_world = np.asarray(cam_from_world, dtype=np.float64)
    return np.asarray(points_xyz, dtype=np.float64) @ cam_from_world[2, :3] + cam_from_world[2, 3]


def view_depth_range(
    cam_from_world: np.ndarray,
    visible_xyz: np.ndarray,
    all_xyz: np.ndarray,
    options: PrepareConfig = PrepareConfig(),
    view_name: str = "",
) -> tuple[np.ndarray, bool]:
    """Depth range [near, far] of one view.

    Args:
        cam_from_world: the view's pose [R | t].
        visible_xyz: sparse points this view observes.
        all_xyz: all sparse points (for the fallback).
        options: percentiles, stretch, minimum point count.
        view_name: for log and error messages.

    Returns:
        (range (2,) float64, used_fallback).

    Shape:
        cam_from_world: (3, 4); visible_xyz: (P, 3); all_xyz: (N, 3)

    Raises:
        DepthRangeError: naming the view when no sparse point at all lies in front of it.
    """
    low, high = options.depth_percentiles
    if not 0.0 <= low < high <= 100.0:
        raise ValueError(f"percentiles must satisfy 0 <= low < high <= 100, got {options.depth_percentiles}")
    near_factor, far_factor = options.depth_stretch
    if not 0.0 < near_factor <= 1.0 <= far_factor:
        raise ValueError(f"stretch must satisfy 0 < near <= 1 <= far, got {options.depth_stretch}")
    depths = point_depths(cam_from_world, visible_xyz)
    depths = depths[depths > _MIN_DEPTH]
    fallback = depths.size < options.min_points
    if fallback:
        depths = point_depths(cam_from_world, all_xyz)
        depths = depths[depths > _MIN_DEPTH]
        LOGGER.warning(
            "view %s observes fewer than %d sparse points in front of it: depth range taken from the "
            "%d points of the whole model in front of it",
            view_name, options.min_points, depths.size,
        )
        if depths.size == 0:
            raise DepthRangeError(f"view {view_name}: no sparse point lies in front of the camera")
    near, far = np.percentile(depths, [low, high])
    near, far = near * near_factor, far * far_factor
    if far <= near:
        # All points at one depth: widen symmetrically so that the range is not empty.
        near, far = near * 0.9, far * 1.1
    return np.array([near, far], dtype=np.float64), bool(fallback)


def suggest_num_depth(
    K: np.ndarray,
    ref_cam_from_world: np.ndarray,
    src_cam_from_world: np.ndarray | None,
    depth_range: np.ndarray,
    options: PrepareConfig = PrepareConfig(),
) -> int:
    """Number of inverse-depth hypotheses for about one pixel of parallax per step.

    Args:
        K: the reference view's intrinsics at its stored resolution.
        ref_cam_from_world, src_cam_from_world: poses of the reference and its best source
            (None: no source, the minimum count is returned).
        depth_range: [near, far].

    Shape:
        K: (3, 3); *_cam_from_world: (3, 4); depth_range: (2,)
    """
    if src_cam_from_world is None:
        return int(options.num_depth_min)
    ref = np.asarray(ref_cam_from_world, dtype=np.float64)
    src = np.asarray(src_cam_from_world, dtype=np.float64)
    ref_center = -ref[:, :3].T @ ref[:, 3]
    src_center = -src[:, :3].T @ src[:, 3]
    baseline = src_center - ref_center
    axis = ref[2, :3]  # the optical axis in the world frame
    perpendicular = np.linalg.norm(baseline - (baseline @ axis) * axis)
    focal = max(float(K[0, 0]), float(K[1, 1]))
    near, far = float(depth_range[0]), float(depth_range[1])
    count = int(np.ceil(focal * perpendicular * (1.0 / near - 1.0 / far))) + 1
    return int(np.clip(count, options.num_depth_min, options.num_depth_max))
