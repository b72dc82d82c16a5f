"""Cross-view consensus of per-view depth maps: each view's depth where the other views agree with it,
else the depth most of them agree on (ACMM's multi-view geometric consistency, offline).

Per reference view, the depth maps of its ``--sources`` best-ranked source views (``scene.h5``'s
view selection) are back-projected and z-buffered into it (``pipeline.fusion.transfer.zbuffer``).
With the reference's own depth that gives up to 1 + S candidates per pixel; a candidate's support is
the number of candidates within ``--tolerance`` (relative) of it, itself included.

* ``--mode replace``: a pixel whose own depth has less than ``--keep-support`` support takes the
  best-supported candidate (``pipeline.fusion.transfer.transfer_depth``) when that one has at least
  ``--min-support``; the depth file written is then scored like a workflow's.
* ``--mode filter``: the depth stays, and a pixel gets confidence 0 (fusion no longer uses it as a
  reference) when another candidate has at least ``--margin`` more support than its own depth.

    .venv/bin/python experiments/cross_view_consensus.py SCENE_H5 DEPTH_H5 OUT_H5 [--mode replace|filter]
        [--sources 10] [--tolerance 0.01] [--keep-support 3] [--min-support 2] [--margin 1]

then, as for any depth file: ``experiments/dtu_plane_fill.py``'s ``sparse_within`` (DTU sparse pairs),
``selfmvs fuse`` + ``selfmvs evaluate`` (cloud) and ``bench/quality_heldout.py``'s ``depth_quality``
(rendered ground truth). Figures: docs/benchmarks.md, history of 2026-12-07.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def candidates(reference, others) -> torch.Tensor:
    """(1 + S, H, W) float64: the reference's depth, then each other view's z-buffered into it (0: none)."""
    from pipeline.fusion.transfer import world_points, zbuffer

    shape = reference.depth.shape
    own = torch.as_tensor(np.asarray(reference.depth), dtype=torch.float64)
    carried = [zbuffer(world_points(view.depth, view.K, view.cam_from_world), reference.K, reference.cam_from_world,
                       shape) for view in others]
    return torch.stack([own, *carried])


def agreeing(stack: torch.Tensor, depth: torch.Tensor, tolerance: float) -> torch.Tensor:
    """(H, W) long: the candidates of ``stack`` within ``tolerance`` of ``depth``; 0 where ``depth`` is none."""
    return ((torch.abs(stack - depth) <= tolerance * depth) & (stack > 0)).sum(0) * (depth > 0)


def consensus(reference, others, mode: str, tolerance: float, keep_support: int, min_support: int, margin: int):
    """``reference`` (a DepthView) after the consensus of ``others``; and the share of its pixels changed."""
    from pipeline.fusion.transfer import transfer_depth

    stack = candidates(reference, others)
    own = agreeing(stack, stack[0], tolerance)  # the vote below needs no other candidate's support
    if mode == "filter":
        contradicted = torch.zeros_like(own, dtype=torch.bool)
        for candidate in stack[1:]:  # each other candidate's support counts every candidate, the own one too
            contradicted |= (stack[0] > 0) & (agreeing(stack, candidate, tolerance) >= own + margin)
        confidence = np.where(contradicted.numpy(), 0.0, reference.confidence).astype(np.float32)
        return dataclasses.replace(reference, confidence=confidence), float(contradicted.double().mean())
    voted = transfer_depth(stack, min_support, tolerance)
    replace = (own < keep_support) & (voted > 0) & (voted != stack[0])
    depth = torch.where(replace, voted, stack[0]).numpy().astype(np.float32)
    return dataclasses.replace(reference, depth=depth), float(replace.double().mean())


def main(argv: list[str] | None = None) -> int:
    from pipeline.formats.depth_file import DepthWriter, read_depth_attrs, read_depth_file
    from pipeline.formats.scene_file import read_scene

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scene", type=Path, help="scene.h5 (its view selection ranks the sources)")
    parser.add_argument("depth", type=Path, help="depth.h5 of `selfmvs infer`")
    parser.add_argument("out", type=Path, help="depth file to write")
    parser.add_argument("--mode", choices=("replace", "filter"), default="replace")
    parser.add_argument("--sources", type=int, default=10, help="other views per reference, best-ranked first")
    parser.add_argument("--tolerance", type=float, default=0.01, help="relative depth difference of agreement")
    parser.add_argument("--keep-support", type=int, default=3, help="replace: support that keeps a pixel's own depth")
    parser.add_argument("--min-support", type=int, default=2, help="replace: support the taken candidate needs")
    parser.add_argument("--margin", type=int, default=1, help="filter: extra support of the contradicting candidate")
    parser.add_argument("--json", type=Path, help="write the settings, time and share of pixels changed here")
    args = parser.parse_args(argv)

    scene = read_scene(args.scene, load_images=False)
    views = read_depth_file(args.depth)
    started, changed = time.perf_counter(), []
    with DepthWriter(args.out, dict(read_depth_attrs(args.depth))) as writer:
        for image_id in sorted(views):
            if image_id not in scene.views:
                raise SystemExit(f"{args.depth}: view {image_id} is not in {args.scene}")
            sources = [int(s) for s in scene.views[image_id].source_ids[: args.sources] if int(s) in views]
            view, share = consensus(views[image_id], [views[s] for s in sources], args.mode, args.tolerance,
                                    args.keep_support, args.min_support, args.margin)
            writer.write(view)
            changed.append(share)
    summary = {**{k: v for k, v in vars(args).items() if k not in ("scene", "depth", "out", "json")},
               "views": len(changed), "seconds": time.perf_counter() - started,
               "changed_share": float(np.mean(changed)) if changed else 0.0}
    print(json.dumps(summary))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
