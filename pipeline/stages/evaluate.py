"""``selfmvs evaluate SCENE_DIR SCENE_H5 DEPTH_H5 FUSED_PLY OUT_JSON``: numbers of a reconstruction.

With ground truth (``SCENE_DIR/gt/points.ply`` and/or ``gt/depth.h5``, docs/formats.md): DTU-style
accuracy / completeness, precision / recall / F-score, and depth-map errors (also restricted to the
pixels fusion kept when ``fused_masks.h5`` lies beside the PLY). Always: the depth maps' agreement
with the sparse COLMAP points each view observes and the fraction of sparse points the fused cloud
covers. A ``gt/`` folder in another layout is reported as a warning and skipped, never an error.
Every number in ``eval.json`` comes with its unit and definition.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from pipeline.config import EvaluateConfig
from pipeline.formats.paths import check_outputs_distinct

log = logging.getLogger(__name__)


def run_evaluate(
    scene_dir: str | os.PathLike,
    scene_h5: str | os.PathLike,
    depth_h5: str | os.PathLike,
    fused_ply: str | os.PathLike,
    out_json: str | os.PathLike,
    config: EvaluateConfig = EvaluateConfig(),
    masks_h5: str | os.PathLike | None = None,
    training_summary: str | os.PathLike | None = None,
) -> dict:
    """Evaluate a scene's depth maps and fused cloud; write ``out_json`` atomically and return it.

    Args:
        scene_dir: the scene folder (its ``gt/`` is used when present).
        masks_h5: fusion masks; default ``<fused stem>_masks.h5`` beside the PLY when it exists.
        training_summary: ``summary.json`` of the fine-tuning that made the weights, if any: its step
            counts go to ``training``, and a run the time limit cut short is a warning.

    Raises:
        NothingToEvaluateError: no depth map holds a single finite positive depth (nothing written).
    """
    # numpy, scipy and h5py are imported here, not at module level: ``selfmvs --help`` stays fast.
    import numpy as np

    from pipeline.evaluation.ground_truth import load_ground_truth, read_masks
    from pipeline.evaluation.scene_eval import DepthPools, cloud_section, reference_scales, settings_section
    from pipeline.formats.depth_file import list_depth_views, read_depth_view
    from pipeline.formats.eval_json import write_eval_json
    from pipeline.formats.fused_masks import default_masks_path
    from pipeline.formats.loss_log import read_run_summary
    from pipeline.formats.ply import read_ply
    from pipeline.formats.scene_file import read_scene

    start = time.perf_counter()
    scene_dir, scene_h5, depth_h5 = Path(scene_dir), Path(scene_h5), Path(depth_h5)
    fused_ply, out_json = Path(fused_ply), Path(out_json)
    masks_h5 = Path(masks_h5) if masks_h5 is not None else default_masks_path(fused_ply)
    inputs = {"scene": scene_h5, "depth": depth_h5, "cloud": fused_ply, "masks": masks_h5}
    check_outputs_distinct({**inputs, **({"training summary": training_summary} if training_summary else {})},
                           {"scores": out_json})
    training = read_run_summary(training_summary) if training_summary is not None else None
    masks = read_masks(masks_h5)
    rng = np.random.default_rng(config.seed)

    scene = read_scene(scene_h5, load_images=False)
    fused_all = read_ply(fused_ply).xyz.astype(np.float64)
    gt_points, gt_depth_path, warnings = load_ground_truth(scene_dir)
    scales = reference_scales(config, gt_points, scene.points3D_xyz, fused_all)
    fused, metrics = cloud_section(fused_all, gt_points, scales, config, rng)

    # Depth maps, one view at a time.
    depth_ids = list_depth_views(depth_h5)
    gt_ids = set(list_depth_views(gt_depth_path)) if gt_depth_path is not None else set()
    pools = DepthPools(config.depth_thresholds, scene.points3D_xyz, scene.points3D_ids, masks, str(depth_h5),
                       str(gt_depth_path) if gt_depth_path is not None else None)
    for image_id in depth_ids:
        gt_view = read_depth_view(gt_depth_path, image_id) if image_id in gt_ids else None
        view = scene.views.get(image_id)
        pools.add_view(read_depth_view(depth_h5, image_id), gt_view, view.point3D_ids if view is not None else None)
    pools.check_something_evaluated()
    metrics.update(pools.metrics(gt_depth_path is not None, fused, scales.tau_sparse))
    missing_views = [i for i in scene.views if i not in set(depth_ids)]

    result = write_eval_json(out_json, {
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
        "warnings": warnings + pools.warnings
        + ([f"views {missing_views[:20]} of the scene have no depth map"] if missing_views else [])
        + _stopped_early_warnings(training, training_summary),
        "training": training,
        "settings": settings_section(scales, config),
        "metrics": metrics,
        "per_view": pools.per_view,
        "seconds": time.perf_counter() - start,
    })
    log.info("evaluated %s in %.1f s -> %s", scene_dir.name, result["seconds"], out_json)
    return result


def _stopped_early_warnings(training: dict | None, path) -> list[str]:
    """A fine-tuning run the time limit cut short: said in eval.json (and the log), not only in train's log."""
    stopped = (training or {}).get("stopped_early")
    if not stopped:
        return []
    message = (f"{path}: fine-tuning STOPPED EARLY by its time limit ({stopped.get('reason')}): "
               f"{stopped.get('steps_done', training.get('steps_done'))} of "
               f"{stopped.get('steps_planned', training.get('steps_planned'))} planned steps; these weights are "
               "not those the step budget asks for")
    log.warning("%s", message)
    return [message]
