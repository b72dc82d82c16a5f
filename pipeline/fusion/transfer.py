"""Depth carried from other views into a view: the labels the view's own fusion could not give.

A pixel that some of a view's sources do not see (behind an object, outside their frame) rarely
passes that view's consistency check, but the same surface is often seen and kept from other views.
Their kept depth, back-projected to 3-D and projected into the target view, labels it:

1. each other view's kept pixels (depth > 0; pixel centres at j + 0.5, i + 0.5) are back-projected
   and projected into the target; per target pixel (the one containing the projection) the nearest
   of a view's points is kept (a z-buffer, so a view's points behind the visible surface are hidden
   by its own points in front);
2. per pixel the label is the candidate that most other views agree with (their candidates within
   ``rel_tolerance`` of it, its own view included), at least ``support`` of them, so that a lone
   point of a surface that leaks through a gap of the one in front does not become a label; the
   nearest of equally supported candidates wins.
"""

from __future__ import annotations

import numpy as np
import torch


def _as_matrix(cam_from_world: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(np.asarray(cam_from_world, dtype=np.float64)[:3, :4])


def world_points(depth: np.ndarray, K: np.ndarray, cam_from_world: np.ndarray) -> torch.Tensor:
    """(N, 3) world points of the pixels with depth > 0."""
    depth = torch.as_tensor(np.asarray(depth), dtype=torch.float64)
    rows, cols = torch.nonzero(depth > 0, as_tuple=True)
    z = depth[rows, cols]
    pixels = torch.stack([cols + 0.5, rows + 0.5, torch.ones_like(z)])
    cam = torch.linalg.solve(torch.as_tensor(np.asarray(K, dtype=np.float64)), pixels) * z
    pose = _as_matrix(cam_from_world)
    rotation, translation = pose[:, :3], pose[:, 3:]
    return (rotation.T @ (cam - translation)).T


def _project(points: torch.Tensor, K: np.ndarray, cam_from_world: np.ndarray) -> tuple[torch.Tensor, ...]:
    """Pixel coordinates x, y and z-depth of world points in a camera (only z > 0 is meaningful)."""
    pose = _as_matrix(cam_from_world)
    cam = points @ pose[:, :3].T + pose[:, 3]
    projected = cam @ torch.as_tensor(np.asarray(K, dtype=np.float64)).T
    z = cam[:, 2].clamp_min(1e-9)
    return projected[:, 0] / z, projected[:, 1] / z, cam[:, 2]


def zbuffer(points: torch.Tensor, K: np.ndarray, cam_from_world: np.ndarray, shape: tuple[int, int]) -> torch.Tensor:
    """Nearest z-depth per pixel of world points seen by a camera, 0 where none lands. Shape: (H, W)."""
    height, width = shape
    x, y, z = _project(points, K, cam_from_world)
    in_front = z > 1e-9
    cols, rows, z = torch.floor(x[in_front]).long(), torch.floor(y[in_front]).long(), z[in_front]
    inside = (cols >= 0) & (cols < width) & (rows >= 0) & (rows < height)
    flat = torch.full((height * width,), float("inf"), dtype=torch.float64)
    flat.scatter_reduce_(0, rows[inside] * width + cols[inside], z[inside], reduce="amin")
    flat[torch.isinf(flat)] = 0.0
    return flat.view(height, width)


def overlap(points: torch.Tensor, K: np.ndarray, cam_from_world: np.ndarray, shape: tuple[int, int]) -> float:
    """Share of the points that fall in front of a camera and inside its frame."""
    if len(points) == 0:
        return 0.0
    x, y, z = _project(points, K, cam_from_world)
    seen = (z > 1e-9) & (x >= 0) & (x < shape[1]) & (y >= 0) & (y < shape[0])
    return float(seen.double().mean())


def transfer_depth(
    candidates: torch.Tensor, support: int = 2, rel_tolerance: float = 0.01
) -> torch.Tensor:
    """Per pixel, the candidate depth that most candidates agree with, at least ``support`` (0: none).

    Agreement is within ``rel_tolerance`` of the candidate (itself included); of equally supported
    candidates the nearest wins. (Taking the nearest supported candidate instead labels more pixels
    with a foreground that spills over occluding edges: on held-out synthetic scenes 63-64 % of the
    carried labels were within 1 % of the truth that way, 68-70 % this way.)

    Shape:
        candidates: (S, H, W), one z-buffered map per other view (0 = no point) -> (H, W).
    """
    if support < 1:
        raise ValueError(f"support must be at least 1, got {support}")
    ordered = torch.where(candidates > 0, candidates, torch.full_like(candidates, float("inf")))
    ordered, _ = torch.sort(ordered, dim=0)
    label = torch.zeros(candidates.shape[1:], dtype=candidates.dtype)
    votes = torch.full(candidates.shape[1:], support - 1, dtype=torch.long)
    for k in range(ordered.shape[0]):
        depth = ordered[k]
        finite = torch.isfinite(depth)
        if not bool(finite.any()):
            break  # sorted: every later row is empty too
        agree = (torch.abs(ordered - depth) <= rel_tolerance * depth).sum(0)
        better = finite & (agree > votes)
        label = torch.where(better, depth, label)
        votes = torch.where(better, agree, votes)
    return label


def transfer_labels(
    depths: dict[int, np.ndarray],
    cameras: dict[int, tuple[np.ndarray, np.ndarray]],
    neighbours: int = 10,
    support: int = 2,
    rel_tolerance: float = 0.01,
) -> dict[int, np.ndarray]:
    """Each view's depth where it has one, else depth transferred from its ``neighbours`` views.

    Args:
        depths: image_id -> (H, W) kept depth (0 where the view has no label of its own).
        cameras: image_id -> (K (3, 3) at that map's resolution, cam_from_world (3, 4)).
        neighbours: other views that give depth to a view: those that see most of its kept points.
    Returns:
        image_id -> (H, W) float32 labels (0 where neither the view nor its neighbours give one).
    """
    labels = {}
    for target, own in depths.items():
        K, pose = cameras[target]
        shape = own.shape
        # Rank the others by how much of the target's own surface they see (a subsample suffices);
        # points are made per target, not kept for all views (memory: a view's points are 24 B a pixel).
        mine = world_points(own, K, pose)
        sample = mine[:: max(1, len(mine) // 4000)]
        others = sorted((i for i in depths if i != target),
                        key=lambda i: -overlap(sample, cameras[i][0], cameras[i][1], depths[i].shape))[:neighbours]
        if not others:
            labels[target] = np.asarray(own, dtype=np.float32)
            continue
        candidates = torch.stack([zbuffer(world_points(depths[i], *cameras[i]), K, pose, shape) for i in others])
        carried = transfer_depth(candidates, support, rel_tolerance).numpy()
        labels[target] = np.where(own > 0, own, carried).astype(np.float32)
    return labels
