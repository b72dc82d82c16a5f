"""Synthetic camera rigs (arcs of views around the scene) and the OPENCV lens model.

Pixel convention (COLMAP): the centre of pixel (row i, col j) is (x, y) = (j + 0.5, i + 0.5).
"""

from __future__ import annotations

import numpy as np


def look_at(centre: np.ndarray, target: np.ndarray, up: np.ndarray, roll: float = 0.0) -> np.ndarray:
    """``cam_from_world`` (3, 4) of a camera at ``centre`` looking at ``target`` (x right, y down)."""
    forward = target - centre
    forward = forward / np.linalg.norm(forward)
    right = np.cross(forward, up)
    right = right / np.linalg.norm(right)
    down = np.cross(forward, right)
    rotation = np.stack([right, down, forward])  # rows: camera axes in world coordinates
    if roll:
        c, s = np.cos(roll), np.sin(roll)
        rotation = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]) @ rotation
    return np.concatenate([rotation, (-rotation @ centre)[:, None]], axis=1)


def arc_rig(
    rng: np.random.Generator,
    num_views: int,
    target: np.ndarray,
    radius: float,
    elevation_deg: float,
    step_deg: float,
    views_per_row: int,
    row_step_deg: float,
    jitter: float,
) -> np.ndarray:
    """Cameras on arcs in front of the scene (at -y), one row per elevation, serpentine order.

    Neighbouring views in a row are ``step_deg`` apart in azimuth; rows ``row_step_deg`` apart in
    elevation, centred on ``elevation_deg``. ``jitter`` perturbs radius (relative), angles and roll
    (in units of the steps) so the rig is not perfectly regular.

    Returns:
        (num_views, 3, 4) cam_from_world.
    """
    num_rows = -(-num_views // views_per_row)
    poses = []
    for view in range(num_views):
        row, col = divmod(view, views_per_row)
        in_row = min(views_per_row, num_views - row * views_per_row)
        if row % 2 == 1:
            col = in_row - 1 - col
        azimuth = np.deg2rad((col - 0.5 * (in_row - 1)) * step_deg + jitter * step_deg * rng.uniform(-0.2, 0.2))
        elevation = np.deg2rad(
            max(elevation_deg + (row - 0.5 * (num_rows - 1)) * row_step_deg, 3.0) + jitter * rng.uniform(-1.0, 1.0)
        )
        distance = radius * (1.0 + jitter * rng.uniform(-0.05, 0.05))
        centre = target + distance * np.array(
            [np.sin(azimuth) * np.cos(elevation), -np.cos(azimuth) * np.cos(elevation), np.sin(elevation)]
        )
        aim = target + jitter * rng.uniform(-0.1, 0.1, size=3)
        roll = np.deg2rad(jitter * rng.uniform(-2.0, 2.0))
        poses.append(look_at(centre, aim, np.array([0.0, 0.0, 1.0]), roll))
    return np.stack(poses)


def distort_normalized(xy: np.ndarray, dist: np.ndarray) -> np.ndarray:
    """OPENCV model (k1, k2, p1, p2) applied to normalised image coordinates.

    Shape:
        xy: (N, 2) undistorted normalised coordinates; returns (N, 2) distorted ones.
    """
    k1, k2, p1, p2 = dist
    x, y = xy[:, 0], xy[:, 1]
    r2 = x * x + y * y
    radial = 1.0 + k1 * r2 + k2 * r2 * r2
    xd = x * radial + 2.0 * p1 * x * y + p2 * (r2 + 2.0 * x * x)
    yd = y * radial + p1 * (r2 + 2.0 * y * y) + 2.0 * p2 * x * y
    return np.stack([xd, yd], axis=1)


def undistort_normalized(xy_distorted: np.ndarray, dist: np.ndarray, iterations: int = 20) -> np.ndarray:
    """Invert :func:`distort_normalized` by Newton iterations (vectorised, numeric Jacobian).

    Converges to machine precision within a few steps for moderate distortion.
    """
    xy = xy_distorted.copy()
    step = 1e-7
    for _ in range(iterations):
        residual = distort_normalized(xy, dist) - xy_distorted
        if residual.size == 0 or np.max(np.abs(residual)) < 1e-13:
            break
        jx = (distort_normalized(xy + [step, 0.0], dist) - distort_normalized(xy - [step, 0.0], dist)) / (2 * step)
        jy = (distort_normalized(xy + [0.0, step], dist) - distort_normalized(xy - [0.0, step], dist)) / (2 * step)
        a, c = jx[:, 0], jx[:, 1]
        b, d = jy[:, 0], jy[:, 1]
        det = a * d - b * c
        # Newton step: solve the 2x2 system J step = residual per point (Cramer's rule).
        step_x = (d * residual[:, 0] - b * residual[:, 1]) / det
        step_y = (-c * residual[:, 0] + a * residual[:, 1]) / det
        xy = xy - np.stack([step_x, step_y], axis=1)
    return xy


def pixel_rays(
    pixels: np.ndarray, K: np.ndarray, cam_from_world: np.ndarray, dist: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """World rays through pixels; ``d`` has camera z-component 1 so the hit ``t`` is the z-depth.

    With ``dist`` the pixel is in the distorted image and the ray goes through its undistorted
    position.

    Shape:
        pixels: (N, 2) (x, y); returns origin (3,) and directions (N, 3).
    """
    normalized = np.stack([(pixels[:, 0] - K[0, 2]) / K[0, 0], (pixels[:, 1] - K[1, 2]) / K[1, 1]], axis=1)
    if dist is not None:
        normalized = undistort_normalized(normalized, dist)
    rotation, translation = cam_from_world[:, :3], cam_from_world[:, 3]
    directions_cam = np.concatenate([normalized.T, np.ones((1, len(pixels)))], axis=0)
    return -rotation.T @ translation, (rotation.T @ directions_cam).T


def project(
    points: np.ndarray, K: np.ndarray, cam_from_world: np.ndarray, dist: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates and z-depth of world points (through the lens when ``dist`` is given).

    Shape:
        points: (N, 3); returns pixels (N, 2) and depth (N,).
    """
    # (3, 3) @ (3, N) goes to BLAS; (N, 3) @ (3, 3) does not and is ten times slower.
    cam = cam_from_world[:, :3] @ np.asarray(points, dtype=np.float64).T + cam_from_world[:, 3:]
    depth = cam[2]
    with np.errstate(divide="ignore", invalid="ignore"):
        normalized = np.stack([cam[0] / depth, cam[1] / depth], axis=1)
    if dist is not None:
        normalized = distort_normalized(normalized, dist)
    pixels = np.stack([normalized[:, 0] * K[0, 0] + K[0, 2], normalized[:, 1] * K[1, 1] + K[1, 2]], axis=1)
    return pixels, depth
