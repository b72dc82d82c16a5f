"""Depth ranges from sparse points and the one-pixel-parallax hypothesis count."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from pipeline.config import PrepareConfig
from pipeline.scene.depth_range import (
    DepthRangeError,
    point_depths,
    suggest_num_depth,
    view_depth_range,
)


def _pose(angle_deg=20.0, t=(0.3, -0.2, 4.0)):
    a = np.radians(angle_deg)
    R = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
    return np.hstack([R, np.array(t)[:, None]])


def test_point_depths_are_z_in_the_camera():
    pose = _pose()
    points = np.random.default_rng(0).normal(size=(10, 3))
    expected = (points @ pose[:, :3].T + pose[:, 3])[:, 2]
    np.testing.assert_allclose(point_depths(pose, points), expected)


def test_range_brackets_the_points():
    pose = _pose()
    points = np.random.default_rng(1).uniform(-1, 1, size=(500, 3))
    depths = point_depths(pose, points)
    plain, fallback = view_depth_range(pose, points, points, PrepareConfig(depth_stretch=(1.0, 1.0)))
    assert not fallback
    np.testing.assert_allclose(plain, np.percentile(depths, [1, 99]))
    inside = (depths >= plain[0]) & (depths <= plain[1])
    assert 0.97 <= inside.mean() <= 0.99
    stretched, _ = view_depth_range(pose, points, points)
    np.testing.assert_allclose(stretched, plain * [0.75, 1.25])
    assert np.all((depths >= stretched[0]) & (depths <= stretched[1]))


def test_points_behind_the_camera_are_ignored():
    pose = _pose()
    points = np.random.default_rng(2).normal(size=(100, 3))
    behind = np.array([[0.0, 0.0, -50.0]]) @ pose[:, :3]  # z = -50 - t_z in the camera
    near_far, _ = view_depth_range(pose, np.vstack([points, behind]), points, PrepareConfig(depth_stretch=(1, 1)))
    np.testing.assert_allclose(near_far, np.percentile(point_depths(pose, points), [1, 99]))


def test_fallback_uses_all_points_in_front_and_warns(caplog):
    pose = _pose()
    all_points = np.random.default_rng(3).normal(size=(200, 3))
    with caplog.at_level(logging.WARNING):
        near_far, fallback = view_depth_range(pose, all_points[:3], all_points, view_name="17 (a.png)")
    assert fallback and "17 (a.png)" in caplog.text
    np.testing.assert_allclose(near_far, np.percentile(point_depths(pose, all_points), [1, 99]) * [0.75, 1.25])
    with pytest.raises(DepthRangeError, match="view 17: no sparse point lies in front"):
        view_depth_range(pose, np.zeros((0, 3)), np.array([[0.0, 0.0, -100.0]]) @ pose[:, :3], view_name="17")


def test_bad_options_are_reported():
    pose = _pose()
    points = np.ones((20, 3))
    with pytest.raises(ValueError, match="percentiles"):
        view_depth_range(pose, points, points, PrepareConfig(depth_percentiles=(99, 1)))
    with pytest.raises(ValueError, match="stretch"):
        view_depth_range(pose, points, points, PrepareConfig(depth_stretch=(1.2, 0.8)))


def test_num_depth_gives_one_pixel_steps():
    # Reference at the origin looking along +z, source shifted by b along x (fronto-parallel).
    K = np.array([[500.0, 0, 160], [0, 500.0, 120], [0, 0, 1]])
    ref = np.hstack([np.eye(3), np.zeros((3, 1))])
    baseline = 0.2
    src = np.hstack([np.eye(3), [[-baseline], [0], [0]]])  # centre at (b, 0, 0)
    near, far = 2.0, 10.0
    options = PrepareConfig(num_depth_min=1, num_depth_max=10_000)
    count = suggest_num_depth(K, ref, src, np.array([near, far]), options)
    # Disparity f b / z: from 50 px at z = 2 to 10 px at z = 10, so 40 one-pixel steps.
    assert count == 41
    inverse = np.linspace(1 / near, 1 / far, count)
    np.testing.assert_allclose(np.diff(500 * baseline * inverse), -1.0)
    # A baseline along the optical axis gives no parallax at the centre: only its perpendicular part counts.
    forward = np.hstack([np.eye(3), [[-baseline], [0], [-5.0]]])
    assert suggest_num_depth(K, ref, forward, np.array([near, far]), options) == 41
    # Clamped, and the minimum without a source.
    assert suggest_num_depth(K, ref, src, np.array([near, far]), PrepareConfig(num_depth_max=16)) == 16
    assert suggest_num_depth(K, ref, None, np.array([near, far])) == PrepareConfig().num_depth_min
