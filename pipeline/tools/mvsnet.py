"""``selfmvs export-mvsnet SCENE_H5 OUT_DIR`` and ``selfmvs import-mvsnet IN_DIR SCENE_H5``.

Conversions between a prepared scene and the MVSNet folder layout (images/, cams/, pair.txt) that
MVSNet, CasMVSNet and PatchmatchNet read; see :mod:`pipeline.formats.mvsnet` and docs/formats.md.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

#: The principal-point conventions ``pipeline.formats.mvsnet`` knows (its ``PIXEL_CENTRES``; a test
#: keeps the two equal), named here so that the command line lists them without importing numpy.
PIXEL_CENTRE_NAMES = ("colmap", "integer")


def run_export_mvsnet(scene: str | os.PathLike, out_dir: str | os.PathLike, *, image_format: str,
                      jpeg_quality: int, pixel_centre: str) -> Path:
    """Write ``out_dir/{images,cams,pair.txt}`` from ``scene`` (scene.h5); returns ``out_dir``."""
    from pipeline.formats.mvsnet import export_mvsnet

    out = export_mvsnet(scene, out_dir, image_format=image_format, jpeg_quality=jpeg_quality,
                        pixel_centre=pixel_centre)
    log.info("wrote the MVSNet layout of %s to %s", scene, out)
    return out


def run_import_mvsnet(in_dir: str | os.PathLike, scene: str | os.PathLike, *, num_depth: int | None,
                      intrinsics_scale: float, pixel_centre: str | None) -> Path:
    """Write ``scene`` (scene.h5) from the MVSNet layout in ``in_dir``; returns its path.

    ``num_depth``: depth hypotheses where a cam file gives only depth_min and depth_interval (None:
    ``pipeline.formats.mvsnet.DEFAULT_NUM_DEPTH``).

    Raises:
        ValueError: ``num_depth`` below 2, or a bad file of the layout (naming it).
    """
    from pipeline.formats.mvsnet import DEFAULT_NUM_DEPTH, import_mvsnet

    num_depth = DEFAULT_NUM_DEPTH if num_depth is None else num_depth
    if num_depth < 2:
        raise ValueError(f"--num-depth must be >= 2, got {num_depth}")
    out = import_mvsnet(in_dir, scene, num_depth=num_depth, intrinsics_scale=intrinsics_scale,
                        pixel_centre=pixel_centre)
    log.info("wrote %s from the MVSNet layout in %s", out, Path(in_dir))
    return out
