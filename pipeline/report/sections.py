"""The sections of a scene's report page, each built from one input file.

Each function writes its figures into ``out_dir`` and returns the :class:`Section` that shows them;
problems that do not stop the report (unusable ground truth, missing benchmark files) are appended to
``notes``, which the page lists.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from pipeline.config import ReportConfig
from pipeline.formats.depth_file import list_depth_views, read_depth_view
from pipeline.formats.ply import read_ply
from pipeline.formats.scene_file import list_scene_views, read_view
from pipeline.report.cloud import CameraPose, cloud_page
from pipeline.report.figures import (
    read_benchmarks,
    scores_figure,
    shared_depth_range,
    timings_figure,
    training_figure,
    view_figure,
)
from pipeline.report.page import Embedded, Figure, Section, table

log = logging.getLogger(__name__)

# Metrics shown first in the table (the rest follow in file order).
_HEADLINE = ("accuracy_mean", "completeness_mean", "overall", "depth_abs_rel_mean", "depth_coverage",
             "sparse_rel_error_median", "sparse_support", "num_fused_points")


def _pick(ids: list[int], count: int) -> list[int]:
    if len(ids) <= count:
        return ids
    return [ids[i] for i in np.linspace(0, len(ids) - 1, count).round().astype(int)]


def _masks(path: Path | None) -> dict[int, np.ndarray]:
    if path is None or not path.is_file():
        return {}
    import h5py

    try:
        with h5py.File(path, "r") as handle:
            return {int(k): handle["views"][k]["mask"][()] > 0 for k in handle["views"]}
    except (OSError, KeyError) as error:
        log.warning("%s: unreadable fusion masks (%s)", path, error)
        return {}


def depth_maps_section(scene_h5: Path, depth_h5: Path, out_dir: Path, config: ReportConfig, notes: list[str], *,
                       fused_ply: Path | None = None, scene_dir: Path | None = None) -> Section:
    """Depth / confidence / error maps of ``config.max_views`` views, evenly spaced, on one shared depth
    scale; error maps where ``scene_dir/gt/depth.h5`` has the view, fusion masks from beside ``fused_ply``."""
    depth_ids = list_depth_views(depth_h5)
    scene_ids = set(list_scene_views(scene_h5))
    shown = _pick(depth_ids, config.max_views)
    depth_views = {i: read_depth_view(depth_h5, i) for i in shown}
    depth_range = shared_depth_range([v.depth for v in depth_views.values()])
    gt_path = Path(scene_dir) / "gt" / "depth.h5" if scene_dir else None
    gt_ids: set[int] = set()
    if gt_path is not None and gt_path.is_file():
        try:
            gt_ids = set(list_depth_views(gt_path))
        except ValueError as error:
            notes.append(f"{gt_path}: not usable as GT depth ({error}); no error maps")
    masks = _masks(Path(fused_ply).with_name(Path(fused_ply).stem + "_masks.h5") if fused_ply else None)
    views_section = Section("Depth maps")
    for image_id in shown:
        view = depth_views[image_id]
        depth = np.where(np.isfinite(view.depth), view.depth, 0.0)
        image = None
        if image_id in scene_ids:
            image = read_view(scene_h5, image_id).image
            if image is not None and image.shape[:2] != depth.shape:
                from PIL import Image

                image = np.asarray(Image.fromarray(image).resize(depth.shape[::-1], Image.BILINEAR))
        error = None
        if image_id in gt_ids:
            from pipeline.evaluation import resample_nearest

            gt_view = read_depth_view(gt_path, image_id)
            gt = resample_nearest(gt_view.depth, *depth.shape, gt_view.K, view.K)
            with np.errstate(divide="ignore", invalid="ignore"):
                error = np.where((gt > 0) & (depth > 0), np.abs(depth - gt) / gt, np.nan)
        mask = masks.get(image_id)
        mask = mask if mask is not None and mask.shape == depth.shape else None
        name = f"view_{image_id}.png"
        view_figure(out_dir / name, f"view {image_id} ({view.name})", depth, depth_range, image=image,
                    confidence=view.confidence, relative_error=error, mask=mask, filled=view.filled, dpi=config.dpi)
        caption = (
            f"View {image_id} ({view.name}): depth on the scale shared by all views shown "
            f"[{depth_range[0]:.4g}, {depth_range[1]:.4g}] scene units (2nd-98th percentile), grey = no estimate"
        )
        if view.confidence is not None:
            caption += "; confidence in [0, 1]"
        if error is not None:
            caption += "; relative depth error against gt/depth.h5, clipped at 0.05"
        if mask is not None:
            caption += "; pixels kept by fusion (white)"
        if view.filled is not None:
            caption += (f"; pixels whose depth is the plane of a low-texture region's surroundings (white, "
                        f"{100 * view.filled.mean():.1f} %; infer.plane_fill)")
        views_section.figures.append(Figure(name, caption + "."))
    if len(depth_ids) > len(shown):
        views_section.html_body = f"<p>{len(shown)} of {len(depth_ids)} views shown, evenly spaced in file order.</p>"
    return views_section


def cloud_section(scene_h5: Path, fused_ply: Path, out_dir: Path, config: ReportConfig) -> Section:
    """``cloud.html``: the fused cloud (subsampled) and the cameras of ``scene_h5`` in 3-D."""
    cloud = read_ply(fused_ply)
    cameras = []
    for image_id in sorted(list_scene_views(scene_h5)):
        view = read_view(scene_h5, image_id, load_image=False)
        cameras.append(CameraPose(f"view {image_id} ({view.name})", view.K, view.cam_from_world,
                                  view.width, view.height))
    drawn = min(len(cloud), config.cloud_points)
    colours = "by the reference image" if cloud.rgb is not None else "by height"
    cloud_page(out_dir / "cloud.html", cloud.xyz, cloud.rgb, cameras, max_points=config.cloud_points,
               viewpoints=config.viewpoints)
    return Section("Fused point cloud", [Embedded(
        "cloud.html",
        f"Fused cloud: {drawn} of {len(cloud)} points drawn (a uniform random subsample, fixed seed), coloured "
        f"{colours}, and the {len(cameras)} cameras of scene.h5 as pyramids (the top edge marked). "
        f"Drag to turn, scroll to zoom; axes in scene units, one scale; the first view looks the photos' way "
        f"and the buttons turn it about their up direction.",
    )])


def evaluation_section(eval_json: Path, out_dir: Path, config: ReportConfig, notes: list[str]) -> Section:
    """The metrics and settings tables of ``eval.json`` and the precision / recall / F-score curve."""
    result = json.loads(Path(eval_json).read_text(encoding="utf-8"))
    metrics = result.get("metrics", {})
    order = [n for n in _HEADLINE if n in metrics] + [n for n in metrics if n not in _HEADLINE]
    rows = [[name, metrics[name].get("value"), metrics[name].get("unit", ""), metrics[name].get("definition", "")]
            for name in order]
    settings = result.get("settings", {})
    setting_rows = [[name, json.dumps(entry.get("value")), entry.get("unit", ""), entry.get("definition", "")]
                    for name, entry in settings.items()]
    body = table(["metric", "value", "unit", "definition"], rows, numeric={1})
    body += "<h3>Settings</h3>" + table(["setting", "value", "unit", "definition"], setting_rows)
    for warning in result.get("warnings", []):
        notes.append(f"evaluation: {warning}")
    section = Section("Evaluation", html_body=body)
    if scores_figure(out_dir / "scores.png", metrics, dpi=config.dpi) is not None:
        section.figures.append(Figure(
            "scores.png", "Precision, recall and F-score of the fused cloud against the GT points, by threshold tau."
        ))
    return section


def training_section(training_csv: Path, out_dir: Path, config: ReportConfig) -> Section:
    """Training curves of a loss log (``losses.csv`` of ``selfmvs train``)."""
    training_figure(out_dir / "training.png", training_csv, dpi=config.dpi)
    return Section("Training", [Figure("training.png", f"Training curves from {Path(training_csv).name}.")])


def timings_section(benchmarks: Sequence[str | os.PathLike], out_dir: Path, config: ReportConfig,
                    notes: list[str]) -> Section | None:
    """Wall time and peak memory per stage from Snakemake benchmark files; None when none exists yet."""
    present = [b for b in benchmarks if Path(b).is_file()]
    for missing in sorted(set(map(str, benchmarks)) - set(map(str, present))):
        notes.append(f"benchmark file {missing} not found (stage not run yet?)")
    if not present:
        return None
    stages = read_benchmarks(present)
    timings_figure(out_dir / "timings.png", stages, dpi=config.dpi)
    rows = [[s["stage"], s["seconds"], s.get("max_rss"), s.get("cpu_time")] for s in stages]
    return Section(
        "Stage timings",
        [Figure("timings.png", "Wall time and peak memory of each workflow stage (Snakemake benchmark files).")],
        table(["stage", "wall time (s)", "max RSS (MB)", "CPU time (s)"], rows, numeric={1, 2, 3}),
    )
