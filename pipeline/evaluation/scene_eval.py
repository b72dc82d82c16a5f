"""A scene's evaluation: cloud metrics, depth-map errors pooled over views, sparse-point agreement.

:func:`reference_scales` fixes the scene's scale and the thresholds derived from it;
:func:`cloud_section` scores the fused cloud against GT points; :class:`DepthPools` takes the views
one at a time (memory: one view) and pools their depth errors; :func:`settings_section` documents
the numbers used. Every number is an entry ``{"value", "unit", "definition", ...}`` (:func:`metric`).
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

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
from pipeline.formats.scene_file import same_pose

log = logging.getLogger(__name__)


class NothingToEvaluateError(ValueError):
    """Depth maps without a single usable pixel; names the file."""


def metric(value, unit: str, definition: str, **extra) -> dict:
    """One number of eval.json with its unit and definition (and e.g. ``tau``)."""
    entry = {"value": value, "unit": unit, "definition": definition}
    entry.update(extra)
    return entry


@dataclasses.dataclass
class Scales:
    """The scene's reference scale and what follows from it (scene units)."""

    scale: float
    source: str
    thresholds: list[float]
    cap: float
    voxel: float
    tau_sparse: float


def reference_scales(config, gt_points: np.ndarray | None, sparse_xyz: np.ndarray, fused_all: np.ndarray) -> Scales:
    """Scale from the GT points, else the sparse points' 1-99 % box, else the fused cloud; thresholds from it.

    Shape:
        gt_points: (G, 3) or None; sparse_xyz: (P, 3); fused_all: (F, 3).
    """
    if gt_points is not None and len(gt_points):
        scale, source = bounding_box_diagonal(gt_points), "diagonal of the GT points' bounding box"
    elif len(sparse_xyz) >= 2:
        scale = bounding_box_diagonal(sparse_xyz, percentile=1.0)
        source = "diagonal of the 1-99 percentile box of the sparse points"
    else:
        scale, source = bounding_box_diagonal(fused_all), "diagonal of the fused points' bounding box"
    if not scale > 0:
        scale, source = 1.0, "no points to measure: 1 scene unit"
    thresholds = sorted(set([float(t) for t in config.thresholds] + [f * scale for f in config.threshold_fractions]))
    cap = config.distance_cap if config.distance_cap is not None else config.distance_cap_fraction * scale
    voxel = config.voxel_size if config.voxel_size is not None else config.voxel_fraction * scale
    tau_sparse = config.sparse_tau if config.sparse_tau is not None else config.sparse_tau_fraction * scale
    return Scales(scale, source, thresholds, cap, voxel, tau_sparse)


def cloud_section(
    fused_all: np.ndarray, gt_points: np.ndarray | None, scales: Scales, config, rng: np.random.Generator
) -> tuple[np.ndarray, dict]:
    """The fused cloud as evaluated (downsampled, subsampled) and its metrics against the GT points."""
    fused = random_subsample(voxel_downsample(fused_all, scales.voxel), config.max_points, rng)
    metrics: dict[str, dict] = {
        "num_fused_points": metric(len(fused_all), "points", "points in the fused PLY"),
        "num_fused_points_evaluated": metric(len(fused), "points", "fused points after voxel downsampling and subsampling"),
    }
    if gt_points is None:
        return fused, metrics
    gt = random_subsample(voxel_downsample(gt_points, scales.voxel), config.max_points, rng)
    metrics["num_gt_points"] = metric(len(gt_points), "points", "points in gt/points.ply")
    metrics["num_gt_points_evaluated"] = metric(len(gt), "points", "GT points after downsampling and subsampling")
    cloud = cloud_metrics(fused, gt, scales.thresholds, scales.cap)
    for name in ("accuracy_mean", "accuracy_median", "completeness_mean", "completeness_median", "overall"):
        metrics[name] = metric(cloud[name], "scene units", DEFINITIONS[name])
    for name in ("accuracy_outlier_fraction", "completeness_outlier_fraction"):
        metrics[name] = metric(cloud[name], "fraction", DEFINITIONS[name])
    for row in cloud["per_threshold"]:
        tau = row["tau"]
        for name in ("precision", "recall", "fscore"):
            metrics[f"{name}@{tau:.6g}"] = metric(
                row[name], "fraction", DEFINITIONS[name], tau=tau, tau_fraction_of_scale=tau / scales.scale
            )
    return fused, metrics


@dataclasses.dataclass
class _Pool:
    """Depth errors of several views pooled: :func:`depth_errors`' three results, added up."""

    rel: list = dataclasses.field(default_factory=list)
    with_gt: int = 0
    covered: int = 0

    def add(self, rel: np.ndarray, with_gt: int, covered: int) -> None:
        self.rel.append(rel)
        self.with_gt += with_gt
        self.covered += covered

    def summary(self, thresholds) -> dict:
        rel = np.concatenate(self.rel) if self.rel else np.zeros(0)
        return depth_summary(rel, self.with_gt, self.covered, list(thresholds))


def _depth_metric(key: str, value) -> dict:
    if key.startswith("depth_within_"):
        tau = float(key.removeprefix("depth_within_"))
        return metric(value, "fraction", DEFINITIONS["depth_within"], threshold=tau)
    if key in ("pixels_with_gt", "pixels_evaluated"):
        return metric(value, "pixels", "pixels with a GT depth" if key == "pixels_with_gt" else "pixels with both depths")
    unit = "fraction" if key == "depth_coverage" else "relative"
    return metric(value, unit, DEFINITIONS[key])


class DepthPools:
    """Depth maps scored view by view against GT depth, fusion masks and the sparse points.

    Args:
        depth_thresholds: thresholds of ``depth_within_*`` (relative).
        sparse_xyz, sparse_ids: the scene's sparse points and their ids.
        masks: image id -> (H, W) bool pixels fusion kept (may be empty).
        depth_name, gt_name: the files, for warnings.
    """

    def __init__(self, depth_thresholds, sparse_xyz: np.ndarray, sparse_ids: np.ndarray,
                 masks: dict[int, np.ndarray], depth_name: str, gt_name: str | None) -> None:
        self.thresholds = list(depth_thresholds)
        self.sparse_xyz = sparse_xyz
        self.sparse_index = {int(i): k for k, i in enumerate(sparse_ids)}
        self.masks = masks
        self.depth_name, self.gt_name = depth_name, gt_name
        self.pooled, self.filtered = _Pool(), _Pool()
        # infer.plane_fill: the pixels that took a plane, and the network's own (depth.h5's per-view `filled`).
        self.by_origin = {"filled": _Pool(), "network": _Pool()}
        self.pixels_filled = self.pixels_total = self.pixels_with_estimate = 0
        self.any_filled_mask = False
        self.sparse_pooled: list[np.ndarray] = []
        self.sparse_medians: list[float] = []
        self.warnings: list[str] = []
        self.per_view: dict[str, dict] = {}

    def _warn(self, message: str) -> None:
        log.warning(message)
        self.warnings.append(message)

    def add_view(self, estimate, gt_view, point3D_ids: np.ndarray | None) -> dict:
        """Score one view (a ``DepthView``; its GT ``DepthView`` or None; the sparse ids it sees)."""
        image_id = estimate.image_id
        finite = np.isfinite(estimate.depth)
        num_nonfinite, num_negative = int((~finite).sum()), int((estimate.depth[finite] < 0).sum())
        if num_nonfinite or num_negative:
            # Both are read as "no estimate"; said aloud, since a scored map with holes looks better than it is.
            self._warn(f"{self.depth_name}: view {image_id} ({estimate.name}): {num_nonfinite} NaN/inf and "
                       f"{num_negative} negative depth pixels of {estimate.depth.size} dropped (scored as no estimate)")
        depth = np.where(finite, estimate.depth, 0.0)
        row: dict = {"name": estimate.name, "pixels": int(depth.size), "pixels_with_estimate": int((depth > 0).sum())}
        if num_nonfinite or num_negative:
            row["pixels_dropped"] = num_nonfinite + num_negative
        self.pixels_with_estimate += row["pixels_with_estimate"]
        if estimate.filled is not None:
            self.any_filled_mask = True
            row["pixels_filled"] = int(estimate.filled.sum())
            self.pixels_filled += row["pixels_filled"]
        self.pixels_total += depth.size
        if gt_view is not None and not same_pose(gt_view.cam_from_world, estimate.cam_from_world):
            self._warn(f"{self.gt_name}: view {image_id} has another camera pose than {self.depth_name}'s "
                       "(a different reconstruction frame?); its depth GT metrics are skipped")
            gt_view = None
        if gt_view is not None:
            self._add_gt(row, image_id, depth, estimate, gt_view)
        if point3D_ids is not None and len(point3D_ids):
            idx = [self.sparse_index[i] for i in point3D_ids.tolist() if i in self.sparse_index]
            errors = sparse_depth_errors(depth, estimate.K, estimate.cam_from_world, self.sparse_xyz[idx])
            row["sparse_points"] = len(idx)
            row["sparse_points_with_estimate"] = int(len(errors))
            row["sparse_rel_error_median"] = float(np.median(errors)) if len(errors) else None
            if len(errors):
                self.sparse_pooled.append(errors)
                self.sparse_medians.append(float(np.median(errors)))
        self.per_view[str(image_id)] = row
        return row

    def _add_gt(self, row: dict, image_id: int, depth: np.ndarray, estimate, gt_view) -> None:
        # The GT on the estimate's pixels, once for both the raw and the fusion-filtered errors.
        gt_depth = resample_nearest(gt_view.depth, *depth.shape, gt_view.K, estimate.K)
        errors = depth_errors(depth, gt_depth)
        row.update(depth_summary(*errors, self.thresholds))
        self.pooled.add(*errors)
        mask = self.masks.get(image_id)
        if mask is not None and mask.shape == depth.shape:
            errors = depth_errors(np.where(mask, depth, 0.0), gt_depth)
            row.update({f"fused_{k}": v for k, v in depth_summary(*errors, self.thresholds).items()})
            self.filtered.add(*errors)
        if estimate.filled is not None:
            for origin, pixels in (("filled", estimate.filled), ("network", ~estimate.filled)):
                errors = depth_errors(depth, gt_depth, mask=pixels)
                row[f"{origin}_depth_within_0.01"] = float((errors[0] <= 0.01).mean()) if len(errors[0]) else None
                self.by_origin[origin].add(*errors)

    def check_something_evaluated(self) -> None:
        """Raise when no view had a single finite positive depth: every number would be empty."""
        if self.pixels_with_estimate == 0:
            raise NothingToEvaluateError(
                f"{self.depth_name}: no pixel with a finite positive depth in {len(self.per_view)} view(s) "
                f"({self.pixels_total} pixels): nothing to evaluate"
            )

    def metrics(self, with_gt_depth: bool, fused: np.ndarray, tau_sparse: float) -> dict:
        """The pooled depth metrics, then the sparse-point metrics (``fused``: the evaluated cloud)."""
        metrics: dict[str, dict] = {}
        if with_gt_depth:
            if self.pooled.with_gt and not self.pooled.covered:
                self._warn(f"{self.depth_name}: no pixel with a GT depth has an estimate; depth GT metrics are empty")
            for key, value in self.pooled.summary(self.thresholds).items():
                metrics[key] = _depth_metric(key, value)
            if self.masks:
                for key, value in self.filtered.summary(self.thresholds).items():
                    entry = _depth_metric(key, value)
                    entry["definition"] = "as " + key + ", on the pixels fusion kept (fused_masks.h5): " + entry["definition"]
                    metrics["fused_" + key] = entry
            if self.any_filled_mask:
                for origin, pool in self.by_origin.items():
                    where = ("on the pixels infer.plane_fill gave a plane's depth" if origin == "filled"
                             else "on the pixels that kept the network's depth (not plane-filled)")
                    for key, value in pool.summary(self.thresholds).items():
                        entry = _depth_metric(key, value)
                        entry["definition"] = f"as {key}, {where}: " + entry["definition"]
                        metrics[f"{origin}_{key}"] = entry
        if self.any_filled_mask:
            metrics["plane_filled_fraction"] = metric(
                self.pixels_filled / self.pixels_total if self.pixels_total else None, "fraction",
                "share of the depth maps' pixels infer.plane_fill gave a low-texture region's plane (depth.h5 `filled`)",
            )
        metrics["sparse_rel_error_median"] = metric(
            float(np.median(self.sparse_medians)) if self.sparse_medians else None, "relative",
            DEFINITIONS["sparse_rel_error_median"],
        )
        metrics["sparse_rel_error_pooled_median"] = metric(
            float(np.median(np.concatenate(self.sparse_pooled))) if self.sparse_pooled else None,
            "relative",
            DEFINITIONS["sparse_rel_error_pooled_median"],
        )
        support = float((nearest_distances(self.sparse_xyz, fused) <= tau_sparse).mean()) if len(self.sparse_xyz) else None
        metrics["sparse_support"] = metric(support, "fraction", DEFINITIONS["sparse_support"], tau=tau_sparse)
        return metrics


def settings_section(scales: Scales, config) -> dict:
    """The scale, thresholds and sampling eval.json's numbers were made with."""
    return {
        "reference_scale": metric(scales.scale, "scene units", scales.source),
        "thresholds": metric(scales.thresholds, "scene units", "precision / recall / F-score thresholds tau"),
        "distance_cap": metric(scales.cap, "scene units", "outlier cap: distances above it are left out of the means"),
        "voxel_size": metric(
            scales.voxel, "scene units",
            "fused and GT clouds are downsampled to one point per voxel (the first in file order) "
            "before any distance; 0 = no downsampling",
        ),
        "max_points": metric(
            config.max_points, "points",
            f"after downsampling, each cloud is subsampled uniformly at random to at most this (seed {config.seed})",
        ),
        "sparse_tau": metric(scales.tau_sparse, "scene units", "tau of sparse_support (full fused cloud after downsampling)"),
        "depth_thresholds": metric(list(config.depth_thresholds), "relative", "thresholds of depth_within_*"),
    }
