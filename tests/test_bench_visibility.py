"""experiments/quality_by_visibility.py: which sources see a reference pixel, from the ground truth."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
from conftest import load_experiment

visibility = load_experiment("quality_by_visibility")

K = np.array([[20.0, 0.0, 10.0], [0.0, 20.0, 8.0], [0.0, 0.0, 1.0]])
H, W = 16, 20


def _camera(cam_from_world: np.ndarray, depth: np.ndarray) -> SimpleNamespace:
    return SimpleNamespace(K=K, cam_from_world=cam_from_world, depth=depth)


def _plane_points(z: float) -> np.ndarray:
    """World points of a reference camera at the origin seeing the plane z = const."""
    return visibility.pixel_rays(K, H, W) * z


def test_pixel_rays_pass_through_the_pixel_centres():
    rays = visibility.pixel_rays(K, H, W)
    assert rays.shape == (H, W, 3)
    np.testing.assert_allclose(rays[8, 10], [(10.5 - 10.0) / 20.0, (8.5 - 8.0) / 20.0, 1.0])


def test_a_source_sees_the_plane_it_looks_at():
    points = _plane_points(4.0)
    shifted = np.hstack([np.eye(3), [[-0.2], [0.0], [0.0]]])  # moved 0.2 along x
    sees, outside = visibility.source_status(points, _camera(shifted, np.full((H, W), 4.0)))
    # 0.2 at depth 4 with f = 20 is one pixel: the reference's first column leaves the source's frame
    assert not sees[:, 0].any() and outside[:, 0].all()
    assert sees[:, 1:].all() and not outside[:, 1:].any()


def test_a_source_facing_away_sees_nothing_and_it_is_out_of_frame():
    points = _plane_points(4.0)
    turned = np.hstack([np.diag([-1.0, 1.0, -1.0]), np.zeros((3, 1))])
    sees, outside = visibility.source_status(points, _camera(turned, np.full((H, W), 4.0)))
    assert not sees.any() and outside.all()


def test_an_occluder_in_the_source_hides_the_plane():
    points = _plane_points(4.0)
    source_depth = np.full((H, W), 4.0)
    source_depth[:, :5] = 2.0  # something nearer covers the source's left quarter
    sees, outside = visibility.source_status(points, _camera(np.hstack([np.eye(3), np.zeros((3, 1))]), source_depth))
    assert not outside.any()
    assert not sees[:, :5].any() and sees[:, 5:].all()


def test_depth_edges_mark_both_sides_of_a_jump():
    depth = np.full((4, 6), 2.0)
    depth[:, 3:] = 3.0
    edges = visibility.depth_edges(depth)
    assert edges[:, 2:4].all() and not edges[:, :2].any() and not edges[:, 4:].any()
