"""``selfmvs render-scene``: render the synthetic demo scene (or any seed) into a scene folder.

The ``demo`` section of the config says what to render (the command line overrides its options).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from pipeline.config import DemoConfig

log = logging.getLogger(__name__)


def run_render(out_dir: str | Path, config: DemoConfig, varied: bool = False, family: str = "object") -> Path:
    """Render the scene described by ``config`` into ``out_dir`` (images/, sparse/, gt/).

    With ``varied`` the object counts, textures and camera rig are drawn from the seed too
    (``pipeline.synth.random_scene_options``): the training scenes of the shipped checkpoint.
    ``family="indoor"`` renders a furnished room seen by a hand-held camera instead
    (``pipeline.synth.indoor``; ``varied`` then draws ``random_indoor_options``).
    """
    from pipeline.synth import random_indoor_options, random_scene_options, render_scene

    started = time.perf_counter()
    if not varied:
        options = {}
    elif family == "indoor":
        options = random_indoor_options(config.seed)
    else:
        options = random_scene_options(config.seed)
    out = render_scene(
        out_dir,
        seed=config.seed,
        num_views=config.num_views,
        width=config.width,
        height=config.height,
        distortion=config.distortion,
        family=family,
        **options,
    )
    log.info("%s: %s seed %d, %d views %dx%d%s in %.1f s", out, family, config.seed, config.num_views, config.width,
             config.height, " (OPENCV lens)" if config.distortion else "", time.perf_counter() - started)
    return out
