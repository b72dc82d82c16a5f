"""Where the depth maps of a workflow run miss the DTU sparse points: per view, by track length, near depth edges.

A (view, sparse point) pair is a miss when the depth map, read at the point's nearest pixel, is more than
``--tolerance`` (relative) from the point's depth in that view (``experiments/dtu_plane_fill.py``'s
``sparse_within`` counts the same pairs). The printout splits the pairs by the COLMAP track length of
their point and by the depth map's own local jump (max - min over a 5 x 5 window, relative): a large jump
marks a depth edge of the estimate. ``--picture`` draws the worst views with each pair marked: green
within the tolerance, yellow estimate too near, cyan too far.

    .venv/bin/python experiments/dtu_sparse_misses.py RUN ../shared/data/dtu_scan24 [--picture misses.png]

RUN is a workflow run's ``results/<scene>`` folder (``scene.h5``, ``depth.h5``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def local_jump(depth: np.ndarray, radius: int = 2) -> np.ndarray:
    """(max - min) / depth over a (2 radius + 1)^2 window, edges replicated."""
    height, width = depth.shape
    padded = np.pad(depth, radius, mode="edge")
    lo, hi = depth.copy(), depth.copy()
    for dy in range(2 * radius + 1):
        for dx in range(2 * radius + 1):
            window = padded[dy:dy + height, dx:dx + width]
            np.minimum(lo, window, out=lo)
            np.maximum(hi, window, out=hi)
    return (hi - lo) / np.maximum(depth, 1e-6)


def view_pairs(scene, depth_h5: Path):
    """Yield (image_id, view name, pixel columns, rows, relative error, point track lengths, local jump)."""
    from pipeline.evaluation.metrics import project
    from pipeline.formats.depth_file import read_depth_view

    index = {int(i): n for n, i in enumerate(scene.points3D_ids)}
    track = {}
    for view in scene.views.values():
        for point_id in view.point3D_ids:
            track[int(point_id)] = track.get(int(point_id), 0) + 1
    for image_id, view in sorted(scene.views.items()):
        ids = [int(i) for i in view.point3D_ids if int(i) in index]
        estimate = read_depth_view(depth_h5, image_id)
        depth = estimate.depth
        height, width = depth.shape
        pixels, z = project(scene.points3D_xyz[[index[i] for i in ids]], estimate.K, estimate.cam_from_world)
        cols = np.clip(np.floor(pixels[:, 0]).astype(np.int64), 0, width - 1)
        rows = np.clip(np.floor(pixels[:, 1]).astype(np.int64), 0, height - 1)
        values = depth[rows, cols]
        signed = np.where(values > 0, (values - z) / z, -np.inf)  # no estimate: a miss
        yield (image_id, view.name, cols, rows, signed, np.array([track[i] for i in ids]),
               local_jump(depth)[rows, cols], (height, width))


def main(argv: list[str] | None = None) -> int:
    from pipeline.formats.scene_file import read_scene

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a workflow run's results/<scene> folder (scene.h5, depth.h5)")
    parser.add_argument("scene_dir", type=Path, help="the scene folder (images/), for --picture")
    parser.add_argument("--tolerance", type=float, default=0.01)
    parser.add_argument("--picture", type=Path, help="PNG of the worst views with their pairs marked")
    parser.add_argument("--worst", type=int, default=6, help="views named (and drawn) as the worst")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    scene = read_scene(args.run / "scene.h5", load_images=False)
    per_view, pooled, marks = [], [], {}
    for image_id, name, cols, rows, signed, tracks, jump, size in view_pairs(scene, args.run / "depth.h5"):
        marks[image_id] = (name, cols, rows, signed, size)
        miss = ~(np.abs(signed) <= args.tolerance)
        per_view.append({"image_id": image_id, "name": name, "pairs": int(len(miss)),
                         "within": float(1 - miss.mean()) if len(miss) else 1.0,
                         "too_near": float(np.mean(signed < -args.tolerance)) if len(miss) else 0.0})
        pooled.append(np.stack([miss, tracks, jump], 1))
    miss, tracks, jump = np.concatenate(pooled).T
    miss = miss > 0
    print(f"{len(miss)} pairs, {100 * (1 - miss.mean()):.2f} % within {100 * args.tolerance:g} %")
    # half-open bins [lo, hi): track lengths 2-3, 4-5, 6-10, 11 and more; jumps below 1 %, 1-5 %, over 5 %
    splits = [("track 2-3", tracks, 2, 4), ("track 4-5", tracks, 4, 6), ("track 6-10", tracks, 6, 11),
              ("track 11+", tracks, 11, np.inf),
              ("jump 0-0.01", jump, 0, 0.01), ("jump 0.01-0.05", jump, 0.01, 0.05), ("jump 0.05+", jump, 0.05, np.inf)]
    summary = {"within": float(1 - miss.mean()), "views": per_view, "splits": {}}
    for label, values, lo, hi in splits:
        part = (values >= lo) & (values < hi)
        if part.any():
            row = {"share_of_pairs": float(part.mean()), "within": float(1 - miss[part].mean()),
                   "share_of_misses": float(miss[part].sum() / max(miss.sum(), 1))}
            summary["splits"][label] = row
            print(f"{label}: {100 * row['share_of_pairs']:.1f} % of pairs, {100 * row['within']:.1f} % within, "
                  f"{100 * row['share_of_misses']:.1f} % of the misses")
    worst = sorted(per_view, key=lambda v: v["within"])[: args.worst]
    worst_misses = sum(round(v["pairs"] * (1 - v["within"])) for v in worst)
    rest = [v for v in per_view if v not in worst]
    rest_within = sum(v["pairs"] * v["within"] for v in rest) / max(sum(v["pairs"] for v in rest), 1)
    summary["worst"] = {"views": [v["image_id"] for v in worst], "share_of_misses": worst_misses / max(miss.sum(), 1),
                        "within_without_them": rest_within}
    print("worst views: " + ", ".join(f"{v['name']} {100 * v['within']:.1f} % ({100 * v['too_near']:.0f} % too near)"
                                       for v in worst))
    print(f"they hold {100 * summary['worst']['share_of_misses']:.1f} % of the misses; the other views: "
          f"{100 * rest_within:.2f} % within")
    if args.picture:
        draw_worst([marks[i] for i in sorted(v["image_id"] for v in worst)], args)
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1) + "\n")
    return 0


def draw_worst(views, args) -> None:
    """One tile per (name, cols, rows, signed error, (height, width)) of ``views``, 3 tiles a row."""
    from PIL import Image, ImageDraw

    tiles = []
    for name, cols, rows, signed, (height, width) in views:
        image = Image.open(args.scene_dir / "images" / name).convert("L").convert("RGB").resize((width, height))
        pen = ImageDraw.Draw(image)
        for x, y, error in zip(cols, rows, signed):
            colour = (0, 255, 0) if abs(error) <= args.tolerance else ((255, 255, 0) if error < 0 else (0, 255, 255))
            pen.ellipse((int(x) - 2, int(y) - 2, int(x) + 2, int(y) + 2), fill=colour)
        tiles.append(np.asarray(image.resize((400, 300))))
    columns = 3
    while len(tiles) % columns:
        tiles.append(np.zeros_like(tiles[0]))
    grid = np.concatenate([np.concatenate(tiles[i:i + columns], 1) for i in range(0, len(tiles), columns)], 0)
    Image.fromarray(grid).save(args.picture)


if __name__ == "__main__":
    raise SystemExit(main())
