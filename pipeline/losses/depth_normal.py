"""Depth-normal consistency (M3VSNet, Huang et al. 2021, Sec. 3.3).

Normals are computed from the depth (cross product of the central differences of the
back-projected points); each interior pixel's tangent plane then predicts the depth of its eight
neighbours along their rays, ``d' = (n . P_c) / (n . r_nb)``, and the predicted depth should match
the depth map there. The error is zero on any plane (fronto-parallel or slanted) and grows with
non-planar noise; it is divided by the per-sample mean depth (unit-free) and weighted by
``exp(-|I_nb - I_c|)`` so depth may bend at image edges. Neighbours seen at grazing angles
(``|n . r| < min_cosine |r|``) are skipped.
"""

from __future__ import annotations

import torch

from pipeline.losses.cross_view import pixel_rays
from pipeline.losses.view_synthesis import check_image

_NEIGHBOURS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]


def depth_to_normals(depth: torch.Tensor, K: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Camera-frame points and unit normals (interior pixels) of a depth map.

    Shape:
        - depth: (B, 1, H, W); K: (B, 3, 3) -> points (B, 3, H, W), normals (B, 3, H-2, W-2)
    """
    check_image("depth", depth, 1)
    points = pixel_rays(K, depth.shape[2], depth.shape[3]) * depth
    along_x = points[..., 1:-1, 2:] - points[..., 1:-1, :-2]
    along_y = points[..., 2:, 1:-1] - points[..., :-2, 1:-1]
    normals = torch.linalg.cross(along_x, along_y, dim=1)
    normals = normals / normals.norm(dim=1, keepdim=True).clamp(min=1e-12)
    return points, normals


def depth_normal_loss(
    depth: torch.Tensor,
    K: torch.Tensor,
    image: torch.Tensor | None = None,
    *,
    min_cosine: float = 0.1,
    eps: float = 1e-7,
) -> torch.Tensor:
    """Disagreement between the depth and the depth its own normals predict for the neighbours.

    Args:
        depth: predicted z-depth (> 0).
        K: intrinsics at the depth's resolution.
        image: optional reference image at that resolution for the edge-aware weights.

    Shape:
        - depth: (B, 1, H, W) with H, W >= 3; K: (B, 3, 3); image: (B, C, H, W)
    """
    check_image("depth", depth, 1)
    batch, _, height, width = depth.shape
    if height < 3 or width < 3:
        raise ValueError(f"depth: at least 3x3 pixels needed, got {tuple(depth.shape)}")
    if K.shape != (batch, 3, 3):
        raise ValueError(f"K: expected ({batch}, 3, 3), got {tuple(K.shape)}")
    rays = pixel_rays(K, height, width)
    points, normals = depth_to_normals(depth, K)
    centre = points[..., 1:-1, 1:-1]
    offset = (normals * centre).sum(1, keepdim=True)
    scale = depth.mean(dim=(2, 3), keepdim=True).clamp(min=eps)
    total = depth.new_zeros(())
    count = depth.new_zeros(())
    for dy, dx in _NEIGHBOURS:
        rows, cols = slice(1 + dy, height - 1 + dy), slice(1 + dx, width - 1 + dx)
        ray = rays[..., rows, cols]
        along = (normals * ray).sum(1, keepdim=True)
        usable = along.abs() >= min_cosine * ray.norm(dim=1, keepdim=True)
        predicted = offset / torch.where(usable, along, torch.ones_like(along))
        error = (predicted - depth[..., rows, cols]).abs() / scale
        if image is not None:
            error = error * torch.exp(-(image[..., rows, cols] - image[..., 1:-1, 1:-1]).abs().mean(1, keepdim=True))
        weight = usable.to(error.dtype)
        total = total + (error * weight).sum()
        count = count + weight.sum()
    return total / count.clamp(min=1)
