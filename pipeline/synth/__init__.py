"""Synthetic scenes with ground truth: the demo scene, training data and test fixtures.

    from pipeline.synth import render_scene, random_scene_options
    render_scene("results/demo/scene", seed=0)                       # the default demo
    render_scene(out, seed=7, num_views=20, **random_scene_options(7))  # varied training scene
"""

from pipeline.synth.render import (
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
    "GENERATOR",
    "GENERATOR_VERSION",
    "SceneOptions",
    "build_scene",
    "depth_for_camera",
    "load_scene",
    "random_scene_options",
    "render_scene",
]
