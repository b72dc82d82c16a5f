"""What ``selfmvs fuse`` checks and prepares before fusing: settings, device, matching cameras."""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from pipeline.formats.scene_file import same_pose



class CameraMismatchError(ValueError):
    """A depth map whose size or camera is not that of its scene view; names both files and the view."""


@contextlib.contextmanager
def torch_threads(num_threads: int):
    """Limit torch's CPU threads inside the block (``num_threads`` <= 0: leave them)."""
    previous = torch.get_num_threads()
    if num_threads > 0:
        torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def check_camera(scene_h5, depth_h5, scene_view, depth_view) -> None:
    """The depth map must belong to the scene view: same pose, K equal up to the resolution."""
    where = f"{scene_h5} / {depth_h5}: view {scene_view.image_id}"
    height, width = depth_view.depth.shape
    if height == 0 or width == 0:
        raise CameraMismatchError(f"{where}: empty depth map {depth_view.depth.shape}")
    if (height, width) != (scene_view.height, scene_view.width):
        sx, sy = width / scene_view.width, height / scene_view.height
        scaled = scene_view.K * np.array([[sx], [sy], [1.0]])
        if not np.allclose(depth_view.K, scaled, rtol=1e-3, atol=1e-3):
            raise CameraMismatchError(
                f"{where}: depth map is {width}x{height} but the scene image is "
                f"{scene_view.width}x{scene_view.height}, and K does not scale between them"
            )
    if not same_pose(scene_view.cam_from_world, depth_view.cam_from_world):
        raise CameraMismatchError(f"{where}: cam_from_world of depth.h5 and scene.h5 differ")


def colours_at(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """A view's colours at the depth map's resolution (bilinear when it differs).

    Shape:
        image: (H0, W0, 3) uint8 -> (height, width, 3) uint8.
    """
    if image.shape[:2] == (height, width):
        return image
    from PIL import Image

    return np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))
