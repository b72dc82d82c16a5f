"""Offline sweep of ``infer.plane_fill`` settings on depth maps inferred once without the in-fill.

Inference is the expensive part; the in-fill is post-processing of each view with its reference
image. So each scene is inferred once with ``selfmvs infer ... --no-plane-fill`` and this script
applies :func:`pipeline.inference.fill_low_texture` (RANSAC seeded by the image id, as in
``selfmvs infer``) with each setting to the cached maps and scores them against the rendered ground
truth (``pipeline.evaluation.depth_errors``, pooled over the views; a pixel without an estimate
counts as wrong, as in ``bench/quality_heldout.py``). Per setting and scene: the share of pixels
within 0.5 / 1 / 2 %, the share of pixels the fill changed, and of those the share that end within
1 % (``fill_precision_1pct``) and that were within 1 % before and are not after (``fill_broke_1pct``).

    .venv/bin/python experiments/plane_fill_sweep.py \\
        --scene /tmp/w/indoor_s3200.h5:/tmp/w/indoor_s3200_nofill.h5:/tmp/w/indoor_s3200/gt/depth.h5 ... \\
        --setting '{}' --setting '{"ring": 12, "min_inlier_fraction": 0.3}' --json bench/results/....json

``--setting`` is a JSON object of ``infer.plane_fill`` fields replacing the defaults (``{}``: the
defaults; ``null``: no fill).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from anywhere: the pipeline package of this checkout

THRESHOLDS = (0.005, 0.01, 0.02)


def load_scene(spec: str) -> tuple[str, list]:
    """``scene.h5:nofill_depth.h5:gt_depth.h5`` -> (name, [(reference view, estimate, gt depth at the
    estimate's pixels)])."""
    from pipeline.evaluation.metrics import resample_nearest
    from pipeline.formats.depth_file import list_depth_views, read_depth_view
    from pipeline.formats.scene_file import read_view

    parts = spec.split(":")
    if len(parts) != 3:
        raise SystemExit(f"--scene {spec!r}: expected scene.h5:depth.h5:gt_depth.h5")
    scene_h5, depth_h5, gt_h5 = (Path(p) for p in parts)
    for path in (scene_h5, depth_h5, gt_h5):
        if not path.is_file():
            raise SystemExit(f"{path}: no such file")
    views = []
    for image_id in list_depth_views(depth_h5):
        estimate = read_depth_view(depth_h5, image_id)
        if estimate.filled is not None and estimate.filled.any():
            raise SystemExit(f"{depth_h5}: view {image_id} already has filled pixels (infer with --no-plane-fill)")
        gt = read_depth_view(gt_h5, image_id)
        gt_depth = resample_nearest(gt.depth, *estimate.depth.shape, gt.K, estimate.K)
        views.append((read_view(scene_h5, image_id), estimate, gt_depth))
    return depth_h5.stem, views


def score(views: list, setting: dict | None) -> dict:
    from pipeline.config import PlaneFillConfig
    from pipeline.inference import fill_low_texture

    config = None if setting is None else dataclasses.replace(PlaneFillConfig(), **setting)
    with_gt = changed = changed_good = broke = 0
    within = dict.fromkeys(THRESHOLDS, 0)
    started = time.perf_counter()
    for ref, estimate, gt in views:
        before = np.where(np.isfinite(estimate.depth), estimate.depth, 0.0)
        after = before if config is None else np.where(
            np.isfinite(d := fill_low_texture(estimate, ref, config).depth), d, 0.0)
        has_gt = gt > 0
        safe_gt = np.where(has_gt, gt, 1.0)
        rel_after = np.where(has_gt & (after > 0), np.abs(after - gt) / safe_gt, np.inf)
        rel_before = np.where(has_gt & (before > 0), np.abs(before - gt) / safe_gt, np.inf)
        with_gt += int(has_gt.sum())
        for tau in THRESHOLDS:
            within[tau] += int((has_gt & (rel_after < tau)).sum())
        moved = has_gt & (after != before)
        changed += int(moved.sum())
        changed_good += int((moved & (rel_after < 0.01)).sum())
        broke += int((moved & (rel_before < 0.01) & (rel_after >= 0.01)).sum())
    row = {f"within_{tau:g}": within[tau] / max(with_gt, 1) for tau in THRESHOLDS}
    row.update(pixels_with_gt=with_gt, changed_fraction=changed / max(with_gt, 1),
               fill_precision_1pct=changed_good / changed if changed else None,
               fill_broke_1pct=broke / changed if changed else None,
               fill_s_per_view=(time.perf_counter() - started) / max(len(views), 1))
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scene", action="append", required=True, metavar="SCENE_H5:DEPTH_H5:GT_H5")
    parser.add_argument("--setting", action="append", required=True, metavar="JSON",
                        help="infer.plane_fill fields replacing the defaults ({}: defaults, null: no fill)")
    parser.add_argument("--json", type=Path, help="write the rows here")
    args = parser.parse_args(argv)
    settings = [json.loads(text) for text in args.setting]
    scenes = [load_scene(spec) for spec in args.scene]
    rows = []
    for setting in settings:
        for name, views in scenes:
            row = {"scene": name, "setting": setting, **score(views, setting)}
            rows.append(row)
            print(f"{name:>24} {json.dumps(setting):>60}: within 0.5/1/2 %: "
                  + " / ".join(f"{100 * row[f'within_{t:g}']:.2f}" for t in THRESHOLDS)
                  + f"  changed {100 * row['changed_fraction']:.1f} %"
                  + (f", of which within 1 % {100 * row['fill_precision_1pct']:.1f} %, broke {100 * row['fill_broke_1pct']:.1f} %"
                     if row["fill_precision_1pct"] is not None else ""), flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
