"""``selfmvs render-scene``: render the synthetic demo scene (or any seed) into a scene folder.

The ``demo`` section of the config gives the defaults; command-line flags override them.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from pipeline.config import DemoConfig, load_config, section, validate_config

log = logging.getLogger(__name__)


def run_render(out_dir: str | Path, config: DemoConfig, varied: bool = False, family: str = "object") -> Path:
    """Render the scene described by ``config`` into ``out_dir`` (images/, sparse/, gt/).

    With ``varied`` the object counts, textures and camera rig are drawn from the seed too
    (``pipeline.synth.random_scene_options``): the training scenes of the shipped checkpoint.
    ``family="indoor"`` renders a furnished room seen by a hand-held camera instead
    (``pipeline.synth.indoor``; ``varied`` then draws ``random_indoor_options``).
    """
    from pipeline.synth import random_indoor_options, random_scene_options, render_scene

    if not varied:
        options = {}
    elif family == "indoor":
        options = random_indoor_options(config.seed)
    else:
        options = random_scene_options(config.seed)
    return render_scene(
        out_dir,
        seed=config.seed,
        num_views=config.num_views,
        width=config.width,
        height=config.height,
        distortion=config.distortion,
        family=family,
        **options,
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out_dir", type=Path, help="scene folder to write (replaced if it is an earlier render)")
    parser.add_argument("--config", type=Path, default=None, help="YAML config; its 'demo' section gives defaults")
    parser.add_argument("--seed", type=int, default=None, help="random seed of the scene (default: config demo.seed)")
    parser.add_argument("--num-views", type=int, default=None, help="number of cameras (default: config)")
    parser.add_argument("--width", type=int, default=None, help="image width in pixels (default: config)")
    parser.add_argument("--height", type=int, default=None, help="image height in pixels (default: config)")
    parser.add_argument(
        "--distortion",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="render through an OPENCV lens and store an OPENCV camera (default: config)",
    )
    parser.add_argument(
        "--varied", action="store_true",
        help="draw object counts, textures and camera rig from the seed too (training scenes)",
    )
    parser.add_argument(
        "--family", choices=("object", "indoor"), default="object",
        help="object: objects on a ground plane seen from arcs of views (default); indoor: a furnished "
        "room with windows and lamps seen by a hand-held camera (use --width 640 --height 480)",
    )


def config_from_args(args: argparse.Namespace) -> DemoConfig:
    """The ``demo`` section of ``--config`` (or the defaults), overridden by the flags given."""
    demo = dict(load_config(args.config).get("demo", {}))
    for name in ("seed", "num_views", "width", "height", "distortion"):
        value = getattr(args, name)
        if value is not None:
            demo[name] = value
    # Validate the merged section against the schema (minimum sizes, types).
    source = f"{args.config or 'default config'} with command-line flags"
    return section(validate_config({"demo": demo}, source), "demo", DemoConfig)


def main(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    started = time.perf_counter()
    out = run_render(args.out_dir, config, varied=args.varied, family=args.family)
    log.info(
        "%s: %s seed %d, %d views %dx%d%s in %.1f s",
        out,
        args.family,
        config.seed,
        config.num_views,
        config.width,
        config.height,
        " (OPENCV lens)" if config.distortion else "",
        time.perf_counter() - started,
    )
    return 0
