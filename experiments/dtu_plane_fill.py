"""The planar in-fill's settings on the real DTU scene: sparse-point agreement and mask precision of the cloud.

DTU scan 24 (``../shared/data/dtu_scan24``) has no ground-truth depth, only sparse points and object
masks. Inference is the expensive part, so the scene is inferred once without the in-fill and each
setting is applied offline (:func:`pipeline.inference.fill_low_texture`, as ``selfmvs infer`` does);
each variant is fused (``selfmvs fuse``, with the ``fuse`` fields of ``--fuse`` if given) and scored by
``selfmvs evaluate`` (sparse points) and by the share of fused points that project inside the object mask
in at least 90 % of the views whose frame they fall in (in front of the camera and inside the image;
occlusion is not modelled).

A rendered scene folder (``gt/depth.h5``, no masks) is scored the same way, with the cloud's precision,
recall and F-score (``bench/quality_heldout.py``'s ``cloud_quality``) and the depth map's share of pixels
within 0.5 / 1 / 2 % (``depth_quality``) in place of the mask figure.

    selfmvs prepare ../shared/data/dtu_scan24 /tmp/dtu/scene.h5
    selfmvs infer /tmp/dtu/scene.h5 pipeline/checkpoints/selfmvs_synthetic.pt /tmp/dtu/nofill.h5 --no-plane-fill
    .venv/bin/python experiments/dtu_plane_fill.py /tmp/dtu ../shared/data/dtu_scan24 \\
        --setting '{}' --setting '{"min_inlier_fraction": 0.5}' --fuse '{"min_consistent_views": 2}' --json out.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def write_variant(work: Path, setting: dict, name: str) -> Path:
    from pipeline.config import PlaneFillConfig
    from pipeline.formats.depth_file import DepthWriter, list_depth_views, read_depth_attrs, read_depth_view
    from pipeline.formats.scene_file import read_view
    from pipeline.inference import fill_low_texture

    config = dataclasses.replace(PlaneFillConfig(), **setting)
    out = work / f"{name}.h5"
    attrs = dict(read_depth_attrs(work / "nofill.h5"))
    with DepthWriter(out, attrs) as writer:
        for image_id in list_depth_views(work / "nofill.h5"):
            view = read_depth_view(work / "nofill.h5", image_id)
            writer.write(fill_low_texture(view, read_view(work / "scene.h5", image_id), config))
    return out


def mask_precision(cloud: Path, scene_h5: Path, scene_dir: Path, threshold: float = 0.9) -> dict:
    from PIL import Image

    from pipeline.formats.ply import read_ply
    from pipeline.formats.scene_file import read_scene

    xyz = read_ply(cloud).xyz.astype(np.float64)
    scene = read_scene(scene_h5, load_images=False)
    inside = np.zeros(len(xyz))
    seen = np.zeros(len(xyz))
    for image_id, view in scene.views.items():
        mask = np.asarray(Image.open(scene_dir / "gt" / f"mask_{image_id - 1:03d}.png")) > 127
        cam = xyz @ np.asarray(view.cam_from_world)[:3, :3].T + np.asarray(view.cam_from_world)[:3, 3]
        in_front = cam[:, 2] > 1e-6
        uv = cam[:, :2] / np.where(in_front, cam[:, 2], 1.0)[:, None] * np.diag(view.K)[:2] + view.K[:2, 2]
        # masks are at the photos' size; K is at the stored view's size
        sx, sy = mask.shape[1] / view.width, mask.shape[0] / view.height
        col, row = np.floor(uv[:, 0] * sx).astype(int), np.floor(uv[:, 1] * sy).astype(int)
        framed = in_front & (col >= 0) & (col < mask.shape[1]) & (row >= 0) & (row < mask.shape[0])
        seen += framed
        inside[framed] += mask[row[framed], col[framed]]
    ratio = inside / np.maximum(seen, 1)
    counted = seen > 0
    return {"points": int(len(xyz)), "inside_masks_90pct": float(np.mean(ratio[counted] >= threshold))}


def sparse_within(depth_h5: Path, scene_h5: Path, tolerance: float = 0.01) -> float:
    """Share of (view, observed sparse point) pairs whose depth-map depth is within ``tolerance``
    (relative); a point without an estimate counts as wrong."""
    from pipeline.evaluation import sparse_depth_errors
    from pipeline.formats.depth_file import list_depth_views, read_depth_view
    from pipeline.formats.scene_file import read_scene

    scene = read_scene(scene_h5, load_images=False)
    index = {int(i): n for n, i in enumerate(scene.points3D_ids)}
    inferred = set(list_depth_views(depth_h5))  # selfmvs infer leaves out a view without source views
    good = total = 0
    for image_id, view in scene.views.items():
        rows = [index[int(i)] for i in view.point3D_ids if int(i) in index]
        if image_id not in inferred:
            total += len(rows)
            continue
        estimate = read_depth_view(depth_h5, image_id)
        errors = sparse_depth_errors(estimate.depth, estimate.K, estimate.cam_from_world, scene.points3D_xyz[rows])
        good += int(np.sum(errors <= tolerance))
        total += len(rows)
    return good / max(total, 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("work", type=Path, help="folder with scene.h5 and nofill.h5")
    parser.add_argument("scene_dir", type=Path, help="the DTU scene folder (gt/mask_*.png, sparse/)")
    parser.add_argument("--setting", action="append", default=[], help="JSON of infer.plane_fill fields; null: no fill")
    parser.add_argument("--fuse", type=json.loads, default={}, help="JSON of fuse fields for every variant (default: none)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    selfmvs = str(Path(sys.executable).parent / "selfmvs")
    fuse_config = args.work / "fuse.yaml"
    fuse_config.write_text(json.dumps({"fuse": args.fuse}) + "\n")  # JSON is YAML
    rendered = (args.scene_dir / "gt" / "depth.h5").is_file()
    if rendered:
        sys.path.insert(0, str(REPO / "bench"))
        from quality_heldout import cloud_quality, depth_quality
    rows = []
    for index, text in enumerate(args.setting):
        setting = json.loads(text)
        name = f"variant{index}"
        depth = args.work / "nofill.h5" if setting is None else write_variant(args.work, setting, name)
        cloud, scores = args.work / f"{name}.ply", args.work / f"{name}.json"
        subprocess.run([selfmvs, "fuse", "--config", str(fuse_config), str(args.work / "scene.h5"), str(depth),
                        str(cloud)], check=True)
        subprocess.run([selfmvs, "evaluate", str(args.scene_dir), str(args.work / "scene.h5"), str(depth), str(cloud),
                        str(scores)], check=True)
        metrics = json.loads(scores.read_text())["metrics"]
        sparse = {k: v["value"] for k, v in metrics.items() if k.startswith("sparse")}
        row = {"setting": setting, "fuse": args.fuse, "sparse_within_1pct": sparse_within(depth, args.work / "scene.h5"),
               **sparse}
        if rendered:
            row.update(depth_quality(depth, args.scene_dir / "gt" / "depth.h5"), **cloud_quality(scores))
        else:
            row.update(mask_precision(cloud, args.work / "scene.h5", args.scene_dir))
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.json:
        args.json.write_text(json.dumps({"rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
