"""Where the depth errors of a synthetic scene are: the share within 1 % by how many of each view's
source views actually see the pixel (from the ground truth), and why the others do not.

For every reference pixel with ground truth, the true surface point is projected into each of the
view's first N sources (the ones ``selfmvs infer --num-sources N`` uses). A source *sees* it when it
projects inside the source image in front of the camera and the source's own ground-truth depth
there agrees within 1 %; otherwise it is *out of frame* (outside the image or behind the camera) or
*occluded*. Rows: pixels by number of seeing sources; pixels that some source misses only because
they are out of its frame vs. those hidden from some source by other geometry; depth edges (a
ground-truth jump over 2 % to a 4-neighbour).

    .venv/bin/python experiments/quality_by_visibility.py SCENE_H5 DEPTH_H5 GT_DEPTH_H5 [--num-sources 4] [--json F]

(``bench/quality_heldout.py --work DIR`` leaves DIR/s2000.h5, DIR/s2000_base.h5 and
DIR/s2000/gt/depth.h5 behind.)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

AGREE = 0.01  # a source sees the point when its GT depth there agrees this well
WITHIN = 0.01  # the accuracy threshold reported
EDGE_JUMP = 0.02


def pixel_rays(K: np.ndarray, height: int, width: int) -> np.ndarray:
    """Camera-frame rays (z = 1) through the pixel centres (COLMAP: pixel j spans [j, j + 1)). (H, W, 3)."""
    u, v = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    return np.stack([u, v, np.ones_like(u)], axis=-1) @ np.linalg.inv(K).T


def source_status(world: np.ndarray, gt_src) -> tuple[np.ndarray, np.ndarray]:
    """(sees, out_of_frame) boolean maps of one source for world points (H, W, 3)."""
    from pipeline.evaluation.metrics import project

    pixels, z = project(world.reshape(-1, 3), gt_src.K, gt_src.cam_from_world)
    z = z.reshape(world.shape[:-1])
    x = np.floor(pixels[:, 0]).astype(np.int64).reshape(z.shape)
    y = np.floor(pixels[:, 1]).astype(np.int64).reshape(z.shape)
    height, width = gt_src.depth.shape
    inside = (z > 1e-9) & (x >= 0) & (x < width) & (y >= 0) & (y < height)
    depth_there = np.zeros_like(z)
    depth_there[inside] = gt_src.depth[y[inside], x[inside]]
    sees = inside & (depth_there > 0) & (np.abs(depth_there - z) < AGREE * z)
    return sees, ~inside


def depth_edges(gt: np.ndarray) -> np.ndarray:
    padded = np.pad(gt, 1, mode="edge")
    height, width = gt.shape
    edges = np.zeros(gt.shape, dtype=bool)
    for dy, dx in ((0, 1), (2, 1), (1, 0), (1, 2)):
        edges |= np.abs(padded[dy : dy + height, dx : dx + width] - gt) > EDGE_JUMP * np.maximum(gt, 1e-9)
    return edges


def breakdown(scene_h5: Path, depth_h5: Path, gt_h5: Path, num_sources: int) -> dict:
    from pipeline.evaluation.metrics import resample_nearest
    from pipeline.formats.depth_file import list_depth_views, read_depth_view
    from pipeline.formats.scene_file import read_scene

    scene = read_scene(scene_h5, load_images=False)
    gts = {image_id: read_depth_view(gt_h5, image_id) for image_id in list_depth_views(gt_h5)}
    total = np.zeros(num_sources + 1)
    good = np.zeros(num_sources + 1)
    groups = {name: [0, 0] for name in ("partly seen, misses only out of frame", "partly seen, some miss occluded",
                                          "depth edges")}
    for image_id in list_depth_views(depth_h5):
        estimate, view = read_depth_view(depth_h5, image_id), scene.views[image_id]
        height, width = estimate.depth.shape
        gt = resample_nearest(gts[image_id].depth, height, width, gts[image_id].K, estimate.K)
        has_gt = gt > 0
        cam = pixel_rays(estimate.K, height, width) * gt[..., None]
        rotation, translation = view.cam_from_world[:, :3], view.cam_from_world[:, 3]
        world = (cam - translation) @ rotation  # R^T (x - t)
        seeing = np.zeros((height, width), dtype=np.int64)
        out_of_frame = np.zeros((height, width), dtype=np.int64)
        sources = [int(s) for s in view.source_ids if int(s) in scene.views and int(s) != image_id][:num_sources]
        for source_id in sources:
            sees, outside = source_status(world, gts[source_id])
            seeing += sees
            out_of_frame += outside
        has_estimate = (estimate.depth > 0) & np.isfinite(estimate.depth)
        rel = np.full(gt.shape, np.inf)
        both = has_gt & has_estimate
        rel[both] = np.abs(estimate.depth[both] - gt[both]) / gt[both]
        within = rel < WITHIN
        for count in range(len(sources) + 1):
            mask = has_gt & (seeing == count)
            total[count] += mask.sum()
            good[count] += (mask & within).sum()
        partly = has_gt & (seeing < len(sources))
        only_frame = partly & (out_of_frame == len(sources) - seeing)
        for name, mask in (("partly seen, misses only out of frame", only_frame),
                           ("partly seen, some miss occluded", partly & ~only_frame),
                           ("depth edges", has_gt & depth_edges(gt))):
            groups[name][0] += int(mask.sum())
            groups[name][1] += int((mask & within).sum())
    pixels = total.sum()
    return {
        "pixels_with_gt": int(pixels),
        "within_1pct": float(good.sum() / max(pixels, 1)),
        "by_seeing_sources": [
            {"sources": count, "share": float(total[count] / max(pixels, 1)),
             "within_1pct": float(good[count] / total[count]) if total[count] else None}
            for count in range(num_sources + 1)
        ],
        "groups": {name: {"share": n / max(pixels, 1), "within_1pct": k / n if n else None}
                   for name, (n, k) in groups.items()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scene_h5", type=Path)
    parser.add_argument("depth_h5", type=Path)
    parser.add_argument("gt_depth_h5", type=Path)
    parser.add_argument("--num-sources", type=int, default=4, help="the sources infer used (default 4)")
    parser.add_argument("--json", type=Path, help="write the breakdown here")
    args = parser.parse_args(argv)
    for path in (args.scene_h5, args.depth_h5, args.gt_depth_h5):
        if not path.is_file():
            raise SystemExit(f"{path}: no such file")
    result = breakdown(args.scene_h5, args.depth_h5, args.gt_depth_h5, args.num_sources)
    print(f"{result['pixels_with_gt']} pixels with ground truth, {100 * result['within_1pct']:.1f} % within 1 %")
    for row in result["by_seeing_sources"]:
        rate = "-" if row["within_1pct"] is None else f"{100 * row['within_1pct']:.1f}"
        print(f"  seen by {row['sources']} of {args.num_sources} sources: {100 * row['share']:5.1f} % of pixels, {rate} % within 1 %")
    for name, row in result["groups"].items():
        rate = "-" if row["within_1pct"] is None else f"{100 * row['within_1pct']:.1f}"
        print(f"  {name}: {100 * row['share']:5.1f} % of pixels, {rate} % within 1 %")
    if args.json:
        args.json.write_text(json.dumps({"scene": str(args.scene_h5), "depth": str(args.depth_h5),
                                         "num_sources": args.num_sources, **result}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
