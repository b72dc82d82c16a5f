"""What ``selfmvs prepare`` logs about the scene it wrote."""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)


def log_prepare_summary(views: list[tuple], scene_dir, out_path, seconds: float, num_points: int, fallbacks) -> None:
    """Log one line on a prepared scene: image sizes, sources per view, depth ranges, sparse points.

    ``views``: (width, height, depth_range, number of sources) of each view written -- not the
    images, so that the summary holds no view's pixels.
    """
    sizes: dict[tuple[int, int], int] = {}
    for width, height, _, _ in views:
        sizes[(width, height)] = sizes.get((width, height), 0) + 1
    near = [v[2][0] for v in views]
    far = [v[2][1] for v in views]
    num_sources = np.array([v[3] for v in views])
    log.info(
        "prepared %d views of %s -> %s in %.1f s: sizes %s; %.1f sources per view on average "
        "(%d without any); depth ranges near %.4g..%.4g, far %.4g..%.4g; %d sparse points%s",
        len(views), scene_dir, out_path, seconds, ", ".join(f"{w}x{h} ({n})" for (w, h), n in sizes.items()),
        float(np.mean(num_sources)), int(np.sum(num_sources == 0)), min(near), max(near), min(far), max(far),
        num_points, f"; depth-range fallback for views {fallbacks}" if fallbacks else "",
    )
