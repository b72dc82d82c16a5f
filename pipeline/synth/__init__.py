"""Synthetic scenes with ground truth: the demo scene, training data and test fixtures.

    from pipeline.synth import render_scene, random_scene_options
    render_scene("results/demo/scene", seed=0)                       # the default demo
    render_scene(out, seed=7, num_views=20, **random_scene_options(7))  # varied training scene
    render_scene(out, seed=3000, num_views=20, width=640, height=480, family="indoor")  # a room
"""

from pipeline.synth.indoor import IndoorOptions, random_indoor_options
from pipeline.synth.render import (
    FAMILIES,
    GENERATOR,
    GENERATOR_VERSION,
    SceneOptions,
    build_scene,
    depth_for_camera,
    load_scene,
    random_scene_options,
    render_scene,
)

__all__ = [
    "FAMILIES",
    "GENERATOR",
    "GENERATOR_VERSION",
    "IndoorOptions",
    "SceneOptions",
    "build_scene",
    "depth_for_camera",
    "load_scene",
    "random_indoor_options",
    "random_scene_options",
    "render_scene",
]
