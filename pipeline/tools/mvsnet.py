"""``selfmvs export-mvsnet SCENE_H5 OUT_DIR`` and ``selfmvs import-mvsnet IN_DIR SCENE_H5``.

Conversions between a prepared scene and the MVSNet folder layout (images/, cams/, pair.txt) that
MVSNet, CasMVSNet and PatchmatchNet read; see :mod:`pipeline.formats.mvsnet` and docs/formats.md.
"""

from __future__ import annotations

import logging
from pathlib import Path

from pipeline.formats.mvsnet import DEFAULT_NUM_DEPTH, PIXEL_CENTRES, export_mvsnet, import_mvsnet

log = logging.getLogger(__name__)


def add_arguments(parser, verb: str) -> None:
    centre_help = ("principal-point convention of the MVSNet files: 'colmap' (centre of the top-left pixel at "
                   "(0.5, 0.5), as ours; default) or 'integer' (at (0, 0))")
    if verb == "export-mvsnet":
        parser.add_argument("scene", help="scene.h5 written by `selfmvs prepare` (or import-mvsnet)")
        parser.add_argument("out_dir", help="folder to write images/, cams/, pair.txt into")
        parser.add_argument("--image-format", choices=("jpg", "png"), default="jpg",
                            help="jpg (what MVSNet code expects, lossy) or png (lossless); default jpg")
        parser.add_argument("--jpeg-quality", type=int, default=95, help="JPEG quality 1..100 (default 95)")
        parser.add_argument("--pixel-centre", choices=sorted(PIXEL_CENTRES), default="colmap", help=centre_help)
    elif verb == "import-mvsnet":
        parser.add_argument("in_dir", help="MVSNet folder with images/, cams/ and pair.txt")
        parser.add_argument("scene", help="scene.h5 to write")
        parser.add_argument("--num-depth", type=int, default=DEFAULT_NUM_DEPTH,
                            help="depth hypotheses where a cam file gives only depth_min and depth_interval "
                                 f"(default {DEFAULT_NUM_DEPTH})")
        parser.add_argument("--intrinsics-scale", type=float, default=1.0,
                            help="multiply fx, fy, cx, cy by this (4 for MVSNet's DTU training cams); default 1")
        parser.add_argument("--pixel-centre", choices=sorted(PIXEL_CENTRES), default=None,
                            help=centre_help.replace("; default)", "; default: what selfmvs_views.json records, "
                                                     "else colmap)"))
    else:
        raise ValueError(f"pipeline.stages.mvsnet_io handles export-mvsnet and import-mvsnet, not {verb!r}")


def main(args) -> int:
    if args.verb == "export-mvsnet":
        out = export_mvsnet(args.scene, args.out_dir, image_format=args.image_format,
                            jpeg_quality=args.jpeg_quality, pixel_centre=args.pixel_centre)
        log.info("wrote the MVSNet layout of %s to %s", args.scene, out)
    else:
        if args.num_depth < 2:
            raise ValueError(f"--num-depth must be >= 2, got {args.num_depth}")
        out = import_mvsnet(args.in_dir, args.scene, num_depth=args.num_depth,
                            intrinsics_scale=args.intrinsics_scale, pixel_centre=args.pixel_centre)
        log.info("wrote %s from the MVSNet layout in %s", out, Path(args.in_dir))
    return 0
