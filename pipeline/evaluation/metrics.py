"""Metrics of a reconstruction: point cloud vs ground-truth points, depth maps vs ground-truth depth,
and, without ground truth, agreement with the sparse COLMAP points.

Point clouds follow the DTU protocol (Aanaes et al., IJCV 2016; the Python port of its MATLAB
script): distances from each fused point to the nearest GT point (accuracy) and from each GT point to
the nearest fused point (completeness), both computed after downsampling, and with distances above an
outlier cap (DTU: 20 mm) left out of the means; overall = (accuracy + completeness) / 2. Precision,
recall and F-score at a threshold tau follow Knapitsch et al. (Tanks and Temples, 2017).
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

DEFINITIONS = {
    "accuracy_mean": "mean distance from a fused point to its nearest GT point, over distances below the outlier cap",
    "accuracy_median": "median of the same distances (below the cap)",
    "accuracy_outlier_fraction": "fraction of fused points farther than the outlier cap from every GT point",
    "completeness_mean": "mean distance from a GT point to its nearest fused point, over distances below the cap",
    "completeness_median": "median of the same distances (below the cap)",
    "completeness_outlier_fraction": "fraction of GT points farther than the outlier cap from every fused point",
    "overall": "(accuracy_mean + completeness_mean) / 2 (DTU 'overall')",
    "precision": "fraction of fused points within tau of a GT point",
    "recall": "fraction of GT points within tau of a fused point",
    "fscore": "2 * precision * recall / (precision + recall), 0 when both are 0",
    "depth_abs_rel_mean": "mean of |d - d_gt| / d_gt over pixels where both depths exist (pooled over views)",
    "depth_abs_rel_median": "median of |d - d_gt| / d_gt over the same pixels",
    "depth_within": "fraction of those pixels with |d - d_gt| / d_gt <= the threshold",
    "depth_coverage": "fraction of pixels with a GT depth that also have an estimate (d > 0)",
    "sparse_rel_error_median": "median over views of each view's median |d(p) - z| / z, z the z-depth of a "
    "sparse point the view observes and d(p) the estimated depth at its projection p (nearest pixel)",
    "sparse_rel_error_pooled_median": "median of |d(p) - z| / z over all (view, sparse point) pairs",
    "sparse_support": "fraction of sparse points with a fused point within tau",
}


def bounding_box_diagonal(points: np.ndarray, percentile: float = 0.0) -> float:
    """Length of the diagonal of the points' axis-aligned box (optionally of the p..100-p percentiles)."""
    if len(points) == 0:
        return 0.0
    if percentile > 0:
        low, high = np.percentile(points, [percentile, 100 - percentile], axis=0)
    else:
        low, high = points.min(axis=0), points.max(axis=0)
    return float(np.linalg.norm(high - low))


def voxel_downsample(points: np.ndarray, voxel_size: float) -> np.ndarray:
    """Keep one point (the first in file order) per cubic voxel of side ``voxel_size``; 0 keeps all.

    Shape:
        points: (N, 3) -> (M, 3), M <= N.
    """
    if voxel_size <= 0 or len(points) == 0:
        return points
    cells = np.floor((points - points.min(axis=0)) / voxel_size).astype(np.int64)
    extent = cells.max(axis=0) + 1
    if float(extent[0]) * float(extent[1]) * float(extent[2]) < 2.0**62:
        # One integer key per voxel: a 1-D unique is much faster than a row-wise one.
        keys = (cells[:, 2] * extent[1] + cells[:, 1]) * extent[0] + cells[:, 0]
        _, first = np.unique(keys, return_index=True)
    else:
        _, first = np.unique(cells, axis=0, return_index=True)
    return points[np.sort(first)]


def random_subsample(points: np.ndarray, max_points: int, rng: np.random.Generator) -> np.ndarray:
    """At most ``max_points`` points drawn without replacement (all of them if fewer)."""
    if len(points) <= max_points:
        return points
    return points[np.sort(rng.choice(len(points), size=max_points, replace=False))]


def nearest_distances(queries: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Distance from each query to its nearest target (inf when there is no target)."""
    if len(queries) == 0:
        return np.zeros(0)
    if len(targets) == 0:
        return np.full(len(queries), np.inf)
    distances, _ = cKDTree(targets).query(queries, k=1, workers=-1)
    return distances


def _capped_stats(distances: np.ndarray, cap: float) -> tuple[float | None, float | None, float | None]:
    if len(distances) == 0:
        return None, None, None
    inside = distances[distances <= cap]
    outliers = float(1.0 - len(inside) / len(distances))
    if len(inside) == 0:
        return None, None, outliers
    return float(inside.mean()), float(np.median(inside)), outliers


def cloud_metrics(fused: np.ndarray, gt: np.ndarray, thresholds: list[float], cap: float) -> dict:
    """DTU-style accuracy / completeness and precision / recall / F-score.

    Args:
        fused: (N, 3) reconstructed points (already downsampled as wanted).
        gt: (M, 3) ground-truth points.
        thresholds: tau values in scene units.
        cap: outlier cap in scene units.

    Returns:
        ``{"accuracy_mean": ..., ..., "per_threshold": [{"tau", "precision", "recall", "fscore"}]}``;
        values are None where undefined (e.g. accuracy of an empty cloud).
    """
    to_gt = nearest_distances(fused, gt)
    to_fused = nearest_distances(gt, fused)
    acc_mean, acc_median, acc_out = _capped_stats(to_gt, cap)
    comp_mean, comp_median, comp_out = _capped_stats(to_fused, cap)
    overall = None if acc_mean is None or comp_mean is None else (acc_mean + comp_mean) / 2
    per_threshold = []
    for tau in thresholds:
        precision = float((to_gt <= tau).mean()) if len(to_gt) else None
        recall = float((to_fused <= tau).mean()) if len(to_fused) else None
        p, r = precision or 0.0, recall or 0.0
        fscore = 2 * p * r / (p + r) if p + r > 0 else 0.0
        per_threshold.append({"tau": float(tau), "precision": precision, "recall": recall, "fscore": fscore})
    return {
        "accuracy_mean": acc_mean,
        "accuracy_median": acc_median,
        "accuracy_outlier_fraction": acc_out,
        "completeness_mean": comp_mean,
        "completeness_median": comp_median,
        "completeness_outlier_fraction": comp_out,
        "overall": overall,
        "per_threshold": per_threshold,
    }


def resample_nearest(
    depth: np.ndarray,
    height: int,
    width: int,
    source_K: np.ndarray | None = None,
    target_K: np.ndarray | None = None,
) -> np.ndarray:
    """A depth map read at the pixel centres of a (height, width) camera with the same pose.

    With both intrinsics given, the target's pixel centres are mapped into the source image
    through ``source_K @ inv(target_K)`` (COLMAP convention: the centre of pixel j is at j + 0.5)
    and the source pixel containing each is read; target pixels that fall outside the source
    read 0 (no depth). This is exact for the centred crop ``prepare`` makes and for any scaling,
    and right for undistortion to a new pinhole K. Without intrinsics the two maps are assumed to
    cover the same image (pure scaling). Z-depth does not change with the intrinsics, so values
    are copied, never interpolated across surfaces.

    Shape:
        depth: (Hs, Ws); source_K, target_K: (3, 3); returns (height, width).
    """
    if (source_K is None) != (target_K is None):
        raise ValueError("give both source_K and target_K, or neither")
    if source_K is None:
        if depth.shape == (height, width):
            return depth
        rows = np.minimum(((np.arange(height) + 0.5) * depth.shape[0] / height).astype(np.int64), depth.shape[0] - 1)
        cols = np.minimum(((np.arange(width) + 0.5) * depth.shape[1] / width).astype(np.int64), depth.shape[1] - 1)
        return depth[rows[:, None], cols[None, :]]
    source_K = np.asarray(source_K, dtype=np.float64)
    target_K = np.asarray(target_K, dtype=np.float64)
    if depth.shape == (height, width) and np.allclose(source_K, target_K, rtol=0.0, atol=1e-9):
        return depth
    mapping = source_K @ np.linalg.inv(target_K)
    u, v = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    w = mapping[2, 0] * u + mapping[2, 1] * v + mapping[2, 2]
    # floor(x) is the pixel whose extent [j, j + 1) holds x; the epsilon keeps exact pixel
    # centres of a crop or an integer scaling from flipping between neighbours by rounding.
    x = np.floor((mapping[0, 0] * u + mapping[0, 1] * v + mapping[0, 2]) / w + 1e-9).astype(np.int64)
    y = np.floor((mapping[1, 0] * u + mapping[1, 1] * v + mapping[1, 2]) / w + 1e-9).astype(np.int64)
    inside = (x >= 0) & (x < depth.shape[1]) & (y >= 0) & (y < depth.shape[0])
    out = np.zeros((height, width), dtype=depth.dtype)
    out[inside] = depth[y[inside], x[inside]]
    return out


def depth_errors(
    estimate: np.ndarray,
    gt: np.ndarray,
    mask: np.ndarray | None = None,
    gt_K: np.ndarray | None = None,
    estimate_K: np.ndarray | None = None,
) -> tuple[np.ndarray, int, int]:
    """Relative errors where both depths exist (and ``mask``), and the coverage counts.

    The GT is read at the estimate's pixels with :func:`resample_nearest` (give both intrinsics
    whenever the estimate's camera may be a crop or an undistortion of the GT's; pixels the GT
    does not cover count as having no GT).

    Returns:
        (abs_rel (K,), pixels with GT (within mask), of those pixels with an estimate).
    """
    gt = resample_nearest(gt, *estimate.shape, gt_K, estimate_K)
    has_gt = gt > 0
    if mask is not None:
        has_gt &= mask
    has_estimate = (estimate > 0) & np.isfinite(estimate)
    both = has_gt & has_estimate
    rel = np.abs(estimate[both] - gt[both]) / gt[both]
    return rel.astype(np.float64), int(has_gt.sum()), int(both.sum())


def depth_summary(rel: np.ndarray, with_gt: int, covered: int, thresholds: list[float]) -> dict:
    """Mean / median abs rel, fractions within the thresholds, coverage."""
    summary = {
        "depth_abs_rel_mean": float(rel.mean()) if len(rel) else None,
        "depth_abs_rel_median": float(np.median(rel)) if len(rel) else None,
        "depth_coverage": covered / with_gt if with_gt else None,
        "pixels_with_gt": with_gt,
        "pixels_evaluated": int(len(rel)),
    }
    for tau in thresholds:
        summary[f"depth_within_{tau:g}"] = float((rel <= tau).mean()) if len(rel) else None
    return summary


def project(points_world: np.ndarray, K: np.ndarray, cam_from_world: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates (x, y) and z-depths of world points.

    Shape:
        points_world: (N, 3) -> ((N, 2), (N,)).
    """
    cam = points_world @ cam_from_world[:, :3].T + cam_from_world[:, 3]
    z = cam[:, 2]
    safe = np.where(np.abs(z) > 1e-12, z, 1e-12)
    pixels = (cam @ K.T)[:, :2] / safe[:, None]
    return pixels, z


def sparse_depth_errors(depth: np.ndarray, K: np.ndarray, cam_from_world: np.ndarray, points: np.ndarray) -> np.ndarray:
    """|d(p) - z| / z of sparse points seen by a view, d read at the nearest pixel (estimates > 0 only)."""
    if len(points) == 0:
        return np.zeros(0)
    pixels, z = project(points, K, cam_from_world)
    height, width = depth.shape
    cols = np.floor(pixels[:, 0]).astype(np.int64)
    rows = np.floor(pixels[:, 1]).astype(np.int64)
    inside = (z > 0) & (cols >= 0) & (cols < width) & (rows >= 0) & (rows < height)
    values = np.zeros(len(points))
    values[inside] = depth[rows[inside], cols[inside]]
    ok = inside & (values > 0) & np.isfinite(values)
    return np.abs(values[ok] - z[ok]) / z[ok]
