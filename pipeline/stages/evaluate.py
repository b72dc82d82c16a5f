"""``selfmvs evaluate SCENE_DIR SCENE_H5 DEPTH_H5 FUSED_PLY OUT_JSON``: numbers of a reconstruction.

With ground truth (``SCENE_DIR/gt/points.ply`` and/or ``gt/depth.h5``, docs/formats.md): DTU-style
accuracy / completeness, precision / recall / F-score, and depth-map errors (also restricted to the
pixels fusion kept when ``fused_masks.h5`` lies beside the PLY). Always: the depth maps' agreement
with the sparse COLMAP points each view observes and the fraction of sparse points the fused cloud
covers. A ``gt/`` folder in another layout is reported as a warning and skipped, never an error.
Every number in ``eval.json`` comes with its unit and definition.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from pathlib import Path

import numpy as np

from pipeline.config import EvaluateConfig, load_config, section
from pipeline.evaluation import (
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
from pipeline.formats.atomic import atomic_path
from pipeline.formats.depth_file import list_depth_views, read_depth_view
from pipeline.formats.ply import read_ply
from pipeline.formats.scene_file import read_scene

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
KIND = "selfmvs.eval"


def _metric(value, unit: str, definition: str, **extra) -> dict:
    entry = {"value": value, "unit": unit, "definition": definition}
    entry.update(extra)
    return entry


def _load_gt(scene_dir: Path) -> tuple[np.ndarray | None, Path | None, list[str]]:
    """GT points and the GT depth file, each None when absent or not in the documented layout."""
    gt_dir = scene_dir / "gt"
    warnings: list[str] = []
    if not gt_dir.is_dir():
        return None, None, warnings
    points = None
    points_path = gt_dir / "points.ply"
    if points_path.exists():
        try:
            points = read_ply(points_path).xyz.astype(np.float64)
        except (ValueError, OSError) as error:
            warnings.append(f"{points_path}: not usable as GT points ({error}); point-cloud GT metrics skipped")
    else:
        warnings.append(f"{gt_dir}: no points.ply (expected layout: docs/formats.md); point-cloud GT metrics skipped")
    depth_path = gt_dir / "depth.h5"
    gt_depth = None
    if depth_path.exists():
        try:
            list_depth_views(depth_path)
            gt_depth = depth_path
        except (ValueError, OSError) as error:
            warnings.append(f"{depth_path}: not usable as GT depth ({error}); depth GT metrics skipped")
    else:
        warnings.append(f"{gt_dir}: no depth.h5; depth GT metrics skipped")
    for warning in warnings:
        log.warning(warning)
    return points, gt_depth, warnings


def _read_masks(path: Path | None) -> dict[int, np.ndarray]:
    if path is None or not path.is_file():
        return {}
    import h5py

    try:
        with h5py.File(path, "r") as handle:
            return {int(key): handle["views"][key]["mask"][()] > 0 for key in handle["views"]}
    except (OSError, KeyError) as error:
        log.warning("%s: fusion masks unreadable (%s); filtered depth metrics skipped", path, error)
        return {}


def _same_pose(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two 3x4 cam_from_world matrices are the same camera (to float32 round-off)."""
    a, b = np.asarray(a, dtype=np.float64)[:3], np.asarray(b, dtype=np.float64)[:3]
    scale = max(1.0, float(np.abs(a[:, 3]).max()))
    return bool(np.allclose(a[:, :3], b[:, :3], atol=1e-5) and np.allclose(a[:, 3], b[:, 3], atol=1e-5 * scale))


def run_evaluate(
    scene_dir: str | os.PathLike,
    scene_h5: str | os.PathLike,
    depth_h5: str | os.PathLike,
    fused_ply: str | os.PathLike,
    out_json: str | os.PathLike,
    config: EvaluateConfig = EvaluateConfig(),
    masks_h5: str | os.PathLike | None = None,
) -> dict:
    """Evaluate a scene's depth maps and fused cloud; write ``out_json`` atomically and return it.

    Args:
        scene_dir: the scene folder (its ``gt/`` is used when present).
        masks_h5: fusion masks; default ``<fused stem>_masks.h5`` beside the PLY when it exists.
    """
    start = time.perf_counter()
    scene_dir, scene_h5, depth_h5 = Path(scene_dir), Path(scene_h5), Path(depth_h5)
    fused_ply, out_json = Path(fused_ply), Path(out_json)
    if masks_h5 is None:
        masks_h5 = fused_ply.with_name(fused_ply.stem + "_masks.h5")
    masks = _read_masks(Path(masks_h5))
    rng = np.random.default_rng(config.seed)

    scene = read_scene(scene_h5, load_images=False)
    fused_all = read_ply(fused_ply).xyz.astype(np.float64)
    gt_points, gt_depth_path, warnings = _load_gt(scene_dir)
    sparse_xyz = scene.points3D_xyz

    if gt_points is not None and len(gt_points):
        scale, scale_source = bounding_box_diagonal(gt_points), "diagonal of the GT points' bounding box"
    elif len(sparse_xyz) >= 2:
        scale = bounding_box_diagonal(sparse_xyz, percentile=1.0)
        scale_source = "diagonal of the 1-99 percentile box of the sparse points"
    else:
        scale, scale_source = bounding_box_diagonal(fused_all), "diagonal of the fused points' bounding box"
    if not scale > 0:
        scale, scale_source = 1.0, "no points to measure: 1 scene unit"
    thresholds = sorted(set([float(t) for t in config.thresholds] + [f * scale for f in config.threshold_fractions]))
    cap = config.distance_cap if config.distance_cap is not None else config.distance_cap_fraction * scale
    voxel = config.voxel_size if config.voxel_size is not None else config.voxel_fraction * scale
    tau_sparse = config.sparse_tau if config.sparse_tau is not None else config.sparse_tau_fraction * scale

    fused = random_subsample(voxel_downsample(fused_all, voxel), config.max_points, rng)
    metrics: dict[str, dict] = {
        "num_fused_points": _metric(len(fused_all), "points", "points in the fused PLY"),
        "num_fused_points_evaluated": _metric(len(fused), "points", "fused points after voxel downsampling and subsampling"),
    }
    if gt_points is not None:
        gt = random_subsample(voxel_downsample(gt_points, voxel), config.max_points, rng)
        metrics["num_gt_points"] = _metric(len(gt_points), "points", "points in gt/points.ply")
        metrics["num_gt_points_evaluated"] = _metric(len(gt), "points", "GT points after downsampling and subsampling")
        cloud = cloud_metrics(fused, gt, thresholds, cap)
        for name in ("accuracy_mean", "accuracy_median", "completeness_mean", "completeness_median", "overall"):
            metrics[name] = _metric(cloud[name], "scene units", DEFINITIONS[name])
        for name in ("accuracy_outlier_fraction", "completeness_outlier_fraction"):
            metrics[name] = _metric(cloud[name], "fraction", DEFINITIONS[name])
        for row in cloud["per_threshold"]:
            tau = row["tau"]
            for name in ("precision", "recall", "fscore"):
                metrics[f"{name}@{tau:.6g}"] = _metric(
                    row[name], "fraction", DEFINITIONS[name], tau=tau, tau_fraction_of_scale=tau / scale
                )

    # Depth maps, one view at a time.
    depth_ids = list_depth_views(depth_h5)
    gt_ids = set(list_depth_views(gt_depth_path)) if gt_depth_path is not None else set()
    sparse_index = {int(i): k for k, i in enumerate(scene.points3D_ids)}
    per_view: dict[str, dict] = {}
    pooled, filtered = _Pool(), _Pool()
    # infer.plane_fill: the pixels that took a plane, and the network's own (depth.h5's per-view `filled`).
    by_origin = {"filled": _Pool(), "network": _Pool()}
    pixels_filled = pixels_total = 0
    any_filled_mask = False
    sparse_pooled, sparse_medians = [], []
    missing_views = [i for i in scene.views if i not in set(depth_ids)]
    for image_id in depth_ids:
        estimate = read_depth_view(depth_h5, image_id)
        depth = np.where(np.isfinite(estimate.depth), estimate.depth, 0.0)
        row: dict = {"name": estimate.name, "pixels": int(depth.size), "pixels_with_estimate": int((depth > 0).sum())}
        if estimate.filled is not None:
            any_filled_mask = True
            row["pixels_filled"] = int(estimate.filled.sum())
            pixels_filled += row["pixels_filled"]
        pixels_total += depth.size
        gt_view = read_depth_view(gt_depth_path, image_id) if image_id in gt_ids else None
        if gt_view is not None and not _same_pose(gt_view.cam_from_world, estimate.cam_from_world):
            message = (f"{gt_depth_path}: view {image_id} has another camera pose than {depth_h5}'s "
                       "(a different reconstruction frame?); its depth GT metrics are skipped")
            log.warning(message)
            warnings.append(message)
            gt_view = None
        if gt_view is not None:
            # The GT on the estimate's pixels, once for both the raw and the fusion-filtered errors.
            gt_depth = resample_nearest(gt_view.depth, *depth.shape, gt_view.K, estimate.K)
            errors = depth_errors(depth, gt_depth)
            row.update(depth_summary(*errors, list(config.depth_thresholds)))
            pooled.add(*errors)
            if image_id in masks and masks[image_id].shape == depth.shape:
                errors = depth_errors(np.where(masks[image_id], depth, 0.0), gt_depth)
                row.update({f"fused_{k}": v for k, v in depth_summary(*errors, list(config.depth_thresholds)).items()})
                filtered.add(*errors)
            if estimate.filled is not None:
                for origin, pixels in (("filled", estimate.filled), ("network", ~estimate.filled)):
                    errors = depth_errors(depth, gt_depth, mask=pixels)
                    row[f"{origin}_depth_within_0.01"] = float((errors[0] <= 0.01).mean()) if len(errors[0]) else None
                    by_origin[origin].add(*errors)
        view = scene.views.get(image_id)
        if view is not None and len(view.point3D_ids):
            idx = [sparse_index[i] for i in view.point3D_ids.tolist() if i in sparse_index]
            errors = sparse_depth_errors(depth, estimate.K, estimate.cam_from_world, sparse_xyz[idx])
            row["sparse_points"] = len(idx)
            row["sparse_points_with_estimate"] = int(len(errors))
            row["sparse_rel_error_median"] = float(np.median(errors)) if len(errors) else None
            if len(errors):
                sparse_pooled.append(errors)
                sparse_medians.append(float(np.median(errors)))
        per_view[str(image_id)] = row

    if gt_depth_path is not None:
        for key, value in pooled.summary(config.depth_thresholds).items():
            metrics[key] = _depth_metric(key, value)
        if masks:
            for key, value in filtered.summary(config.depth_thresholds).items():
                entry = _depth_metric(key, value)
                entry["definition"] = "as " + key + ", on the pixels fusion kept (fused_masks.h5): " + entry["definition"]
                metrics["fused_" + key] = entry
        if any_filled_mask:
            for origin, pool in by_origin.items():
                where = ("on the pixels infer.plane_fill gave a plane's depth" if origin == "filled"
                         else "on the pixels that kept the network's depth (not plane-filled)")
                for key, value in pool.summary(config.depth_thresholds).items():
                    entry = _depth_metric(key, value)
                    entry["definition"] = f"as {key}, {where}: " + entry["definition"]
                    metrics[f"{origin}_{key}"] = entry
    if any_filled_mask:
        metrics["plane_filled_fraction"] = _metric(
            pixels_filled / pixels_total if pixels_total else None, "fraction",
            "share of the depth maps' pixels infer.plane_fill gave a low-texture region's plane (depth.h5 `filled`)",
        )
    metrics["sparse_rel_error_median"] = _metric(
        float(np.median(sparse_medians)) if sparse_medians else None, "relative", DEFINITIONS["sparse_rel_error_median"]
    )
    metrics["sparse_rel_error_pooled_median"] = _metric(
        float(np.median(np.concatenate(sparse_pooled))) if sparse_pooled else None,
        "relative",
        DEFINITIONS["sparse_rel_error_pooled_median"],
    )
    if len(sparse_xyz):
        support = float((nearest_distances(sparse_xyz, fused) <= tau_sparse).mean())
    else:
        support = None
    metrics["sparse_support"] = _metric(support, "fraction", DEFINITIONS["sparse_support"], tau=tau_sparse)

    result = {
        "format_version": FORMAT_VERSION,
        "kind": KIND,
        "scene": scene_dir.name,
        "inputs": {
            "scene_dir": str(scene_dir),
            "scene_h5": str(scene_h5),
            "depth_h5": str(depth_h5),
            "fused_ply": str(fused_ply),
            "fused_masks": str(masks_h5) if masks else None,
            "gt_points": str(scene_dir / "gt" / "points.ply") if gt_points is not None else None,
            "gt_depth": str(gt_depth_path) if gt_depth_path is not None else None,
        },
        "ground_truth": gt_points is not None or gt_depth_path is not None,
        "warnings": warnings + ([f"views {missing_views[:20]} of the scene have no depth map"] if missing_views else []),
        "settings": {
            "reference_scale": _metric(scale, "scene units", scale_source),
            "thresholds": _metric(thresholds, "scene units", "precision / recall / F-score thresholds tau"),
            "distance_cap": _metric(cap, "scene units", "outlier cap: distances above it are left out of the means"),
            "voxel_size": _metric(
                voxel, "scene units",
                "fused and GT clouds are downsampled to one point per voxel (the first in file order) "
                "before any distance; 0 = no downsampling",
            ),
            "max_points": _metric(
                config.max_points, "points",
                f"after downsampling, each cloud is subsampled uniformly at random to at most this (seed {config.seed})",
            ),
            "sparse_tau": _metric(tau_sparse, "scene units", "tau of sparse_support (full fused cloud after downsampling)"),
            "depth_thresholds": _metric(list(config.depth_thresholds), "relative", "thresholds of depth_within_*"),
        },
        "metrics": metrics,
        "per_view": per_view,
        "seconds": time.perf_counter() - start,
    }
    text = json.dumps(_json_safe(result), indent=2, allow_nan=False)
    with atomic_path(out_json, suffix=".json") as tmp:
        tmp.write_text(text + "\n", encoding="utf-8")
    log.info("evaluated %s in %.1f s -> %s", scene_dir.name, result["seconds"], out_json)
    return result


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
        return _metric(value, "fraction", DEFINITIONS["depth_within"], threshold=tau)
    if key in ("pixels_with_gt", "pixels_evaluated"):
        return _metric(value, "pixels", "pixels with a GT depth" if key == "pixels_with_gt" else "pixels with both depths")
    unit = "fraction" if key == "depth_coverage" else "relative"
    return _metric(value, unit, DEFINITIONS[key])


def _json_safe(value):
    """Non-finite floats -> None (JSON has no NaN); numpy scalars -> Python."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def add_arguments(parser) -> None:
    parser.add_argument("scene_dir", help="scene folder (its gt/ is used when present)")
    parser.add_argument("scene_h5", help="scene.h5 (cameras, sparse points)")
    parser.add_argument("depth_h5", help="depth.h5 to evaluate")
    parser.add_argument("fused_ply", help="fused.ply to evaluate")
    parser.add_argument("out_json", help="eval.json to write")
    parser.add_argument("--masks", help="fused_masks.h5 (default: beside the PLY)")
    parser.add_argument("--config", help="YAML config; its 'evaluate' section is used")


def main(args) -> int:
    config = section(load_config(args.config), "evaluate", EvaluateConfig)
    run_evaluate(args.scene_dir, args.scene_h5, args.depth_h5, args.fused_ply, args.out_json, config, args.masks)
    return 0
