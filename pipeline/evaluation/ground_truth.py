"""The optional inputs of an evaluation: ground truth in ``SCENE_DIR/gt/`` and fusion masks.

Both are optional: what is absent or unusable is skipped with a warning naming the file.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from pipeline.formats.depth_file import list_depth_views
from pipeline.formats.fused_masks import FusedMasksError, read_fused_masks
from pipeline.formats.ply import read_ply

log = logging.getLogger(__name__)


def load_ground_truth(scene_dir: Path) -> tuple[np.ndarray | None, Path | None, list[str]]:
    """GT points and the GT depth file of ``scene_dir/gt``, each None when absent or not in the
    documented layout (docs/formats.md), and a warning for each (also logged): a ``gt/`` folder in
    another layout is skipped, never an error.

    Shape:
        points: (N, 3) float64, scene units.
    """
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


def read_masks(path: Path) -> dict[int, np.ndarray]:
    """The fusion masks of ``path`` by view id; empty (with a warning) when absent or unreadable."""
    if not path.is_file():
        return {}
    try:
        return read_fused_masks(path)
    except (OSError, FusedMasksError) as error:
        log.warning("%s: fusion masks unreadable (%s); filtered depth metrics skipped", path, error)
        return {}
