"""Symmetric multi-view depth consistency with a forward-backward occlusion check (MVS^2).

MVS^2 (Dai, Zhu, Rao and Li, "MVS^2: Deep Unsupervised Multi-view Stereo with Multi-View
Symmetry", 3DV 2019) predicts a depth map for *every* view of a set, each view the reference of
its own forward pass (the feature maps of the set are computed once and shared), and asks every
ordered pair of these depth maps (i, j) to describe the same surface. The paper's own equation
numbers are not reproduced here; the numbers below are this module's.

For a pixel p of view i (pixel centres at col + 0.5, row + 0.5, as in COLMAP) and a view j != i,
with ``j_from_i = [R | t]`` the rigid transform camera i -> camera j:

    (1)  X_i   = D_i(p) K_i^-1 [p, 1]                        back-projection into camera i
    (2)  X_ij  = R X_i + t,   z_ij = [X_ij]_z,   p' = pi(K_j X_ij)     the point seen from j
    (3)  D^_j  = D_j(p')                                     j's depth sampled there (bilinear)
    (4)  X'_i  = j_from_i^-1 (D^_j K_j^-1 [p', 1]),   p'' = pi(K_i X'_i)   and back into i
    (5)  e_ij  = |z_ij - D^_j| / z_ij                         relative depth disagreement
         r_ij  = || p'' - p ||_2                              forward-backward reprojection error
    (6)  O_ij  = [r_ij > tau_px] or [e_ij > tau_rel] or [p' outside j] or [D^_j <= 0]
                 or [the bilinear support of p' in D_j straddles a depth step > tau_rel]
    (7)  L     = sum_{i != j} sum_p (1 - O_ij) e_ij  /  sum_{i != j} sum_p (1 - O_ij)

A surface seen by i and hidden in j behind something nearer (an occluder, or a surface that only
j sees) makes j's depth at p' much smaller than z_ij: the pair fails the forward-backward check
and the pixel is masked as occluded (6) instead of pulling the two depths together. The masks are
computed without gradient; the loss (7) reaches D_i through z_ij and p' and D_j through the
sampled value, so every view's depth gets a gradient from every pair it takes part in.

MVS^2 learns its occlusion maps; here they are this geometric check (the fusion test of
MVSNet-style pipelines), so no extra network output is needed.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

import kernels
from kernels.geometry import invert_intrinsics, invert_rigid
from pipeline.losses.cross_view import pixel_rays
from pipeline.losses.view_synthesis import check_image


def _project(K: torch.Tensor, points: torch.Tensor, eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel coordinates (x, y) and depth z of camera-frame points.

    Shape:
        - K: (B, 3, 3); points: (B, 3, H, W) -> pixels (B, 2, H, W), z (B, 1, H, W)
    """
    batch, _, height, width = points.shape
    image = (K @ points.reshape(batch, 3, -1)).reshape(batch, 3, height, width)
    z = image[:, 2:3]
    return image[:, :2] / z.clamp(min=eps), z


def _transform(pose: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """``R X + t`` for (B, 4, 4) poses and (B, 3, H, W) points."""
    batch, _, height, width = points.shape
    moved = pose[:, :3, :3] @ points.reshape(batch, 3, -1) + pose[:, :3, 3:]
    return moved.reshape(batch, 3, height, width)


def _support_spread(depth: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
    """``max / min - 1`` of the 2x2 pixels of ``depth`` that a bilinear sample at ``pixels`` reads.

    A bilinear sample whose support straddles a depth step mixes two surfaces and is the depth of
    neither; this spread flags it (inf where the support holds a 0 = no depth).

    Shape:
        - depth: (B, 1, Hj, Wj) with Hj, Wj >= 2; pixels: (B, 2, H, W) (x, y) -> (B, 1, H, W)
    """
    batch, _, height_j, width_j = depth.shape
    largest = F.max_pool2d(depth, 2, stride=1)  # block (r, c) = pixels r..r+1, c..c+1
    smallest = -F.max_pool2d(-depth, 2, stride=1)
    spread = torch.where(smallest > 0, largest / smallest.clamp(min=1e-12) - 1, torch.full_like(largest, float("inf")))
    # the sample at x reads columns floor(x - 0.5) and the next (pixel centres at col + 0.5)
    cols = (pixels[:, 0] - 0.5).floor().clamp(0, width_j - 2).long()
    rows = (pixels[:, 1] - 0.5).floor().clamp(0, height_j - 2).long()
    flat = (rows * (width_j - 1) + cols).reshape(batch, 1, -1)
    return torch.gather(spread.reshape(batch, 1, -1), 2, flat).reshape(batch, 1, *pixels.shape[2:])


def pair_consistency(
    depth_i: torch.Tensor,
    depth_j: torch.Tensor,
    K_i: torch.Tensor,
    K_j: torch.Tensor,
    j_from_i: torch.Tensor,
    *,
    max_relative_error: float = 0.05,
    max_reprojection_error: float = 2.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Relative depth error of view i against view j (5) and where the pair is not occluded (6).

    Args:
        depth_i: depth predicted with view i as the reference (differentiable).
        depth_j: depth predicted with view j as the reference (differentiable), 0 = no depth.
        K_i, K_j: intrinsics at each depth map's resolution.
        j_from_i: rigid transform camera i -> camera j.
        max_relative_error: tau_rel of (6).
        max_reprojection_error: tau_px of (6), in pixels of view i's depth map.

    Returns:
        ``(error, keep)``: e_ij at every pixel of view i (meaningful where ``keep``) and the
        non-occluded, valid pixels (no gradient).

    Shape:
        - depth_i: (B, 1, H, W); depth_j: (B, 1, Hj, Wj); K_i, K_j: (B, 3, 3); j_from_i: (B, 4, 4)
        - error: (B, 1, H, W); keep: (B, 1, H, W) bool
    """
    check_image("depth_i", depth_i, 1)
    check_image("depth_j", depth_j, 1)
    batch, _, height, width = depth_i.shape
    for name, value, shape in (("K_i", K_i, (batch, 3, 3)), ("K_j", K_j, (batch, 3, 3)), ("j_from_i", j_from_i, (batch, 4, 4))):
        if tuple(value.shape) != shape:
            raise ValueError(f"{name}: expected {shape}, got {tuple(value.shape)}")
    K_i, K_j, j_from_i = K_i.to(depth_i.dtype), K_j.to(depth_i.dtype), j_from_i.to(depth_i.dtype)
    points_i = pixel_rays(K_i, height, width) * depth_i  # (1)
    z_ij = _transform(j_from_i, points_i)[:, 2:3]  # (2), differentiable in depth_i
    sampled, inside = kernels.warp_image(depth_j, depth_i, K_i, K_j, j_from_i)  # (3)
    error = (z_ij - sampled).abs() / z_ij.abs().clamp(min=1e-6)  # (5)
    with torch.no_grad():
        pixels_j, _ = _project(K_j, _transform(j_from_i, points_i))
        straddles = _support_spread(depth_j.detach(), pixels_j) > max_relative_error
        homogeneous = torch.cat([pixels_j, torch.ones_like(pixels_j[:, :1])], 1)
        rays_j = (invert_intrinsics(K_j) @ homogeneous.reshape(batch, 3, -1)).reshape(batch, 3, height, width)
        back_in_i = _transform(invert_rigid(j_from_i), rays_j * sampled)  # (4)
        pixels_back, z_back = _project(K_i, back_in_i)
        ys, xs = torch.meshgrid(
            torch.arange(height, dtype=depth_i.dtype, device=depth_i.device) + 0.5,
            torch.arange(width, dtype=depth_i.dtype, device=depth_i.device) + 0.5,
            indexing="ij",
        )
        reprojection = (pixels_back - torch.stack([xs, ys])).norm(dim=1, keepdim=True)
        keep = (  # not occluded, by (6)
            inside
            & (depth_i > 0)
            & (z_ij > 0)
            & (sampled > 0)
            & ~straddles
            & (z_back > 0)
            & (reprojection <= max_reprojection_error)
            & (error <= max_relative_error)
        )
    return error, keep


def multi_view_consistency_loss(
    depths: Sequence[torch.Tensor],
    K: torch.Tensor,
    cam_from_world: torch.Tensor,
    *,
    max_relative_error: float = 0.05,
    max_reprojection_error: float = 2.0,
    masks: Sequence[torch.Tensor | None] | None = None,
) -> tuple[torch.Tensor, list[list[torch.Tensor | None]]]:
    """Symmetric depth consistency (7) over every ordered pair of views of a set.

    Args:
        depths: the depth map predicted for each view with that view as the reference (each at
            its own resolution; ``K[:, v]`` at that resolution).
        K: intrinsics of the views at their depth maps' resolutions.
        cam_from_world: world -> camera of each view.
        max_relative_error: tau_rel of (6).
        max_reprojection_error: tau_px of (6), in pixels of the depth map of view i.
        masks: optional valid pixels of each view (None = all), e.g. the undistortion masks.

    Returns:
        ``(loss, keep)``: the pooled mean of e_ij over the non-occluded (pair, pixel)s (0 when
        there are none) and the non-occluded pixels of view i in each ordered pair (i, j).

    Shape:
        - depths: V >= 2 tensors (B, 1, H_v, W_v); K: (B, V, 3, 3); cam_from_world: (B, V, 4, 4)
        - masks: V tensors (B, 1, H_v, W_v) or None
        - loss: (); keep: V lists of V entries, keep[i][j] (B, 1, H_i, W_i) bool, None for i == j
    """
    depths = list(depths)
    views = len(depths)
    if views < 2:
        raise ValueError(f"depths: expected the depth maps of at least 2 views, got {views}")
    for view, depth in enumerate(depths):
        check_image(f"depths[{view}]", depth, 1)
    batch = depths[0].shape[0]
    if tuple(K.shape) != (batch, views, 3, 3) or tuple(cam_from_world.shape) != (batch, views, 4, 4):
        raise ValueError(
            f"K / cam_from_world: expected ({batch}, {views}, 3, 3) / ({batch}, {views}, 4, 4), "
            f"got {tuple(K.shape)} / {tuple(cam_from_world.shape)}"
        )
    if masks is not None and len(masks) != views:
        raise ValueError(f"masks: expected {views} (one per view), got {len(masks)}")
    world_from_cam = invert_rigid(cam_from_world)
    dtype = depths[0].dtype
    total = depths[0].new_zeros(())
    count = depths[0].new_zeros(())
    keeps: list[list[torch.Tensor | None]] = [[None] * views for _ in range(views)]
    for i in range(views):
        for j in range(views):
            if i == j:
                continue
            j_from_i = cam_from_world[:, j] @ world_from_cam[:, i]
            error, keep = pair_consistency(
                depths[i], depths[j].to(dtype), K[:, i], K[:, j], j_from_i,
                max_relative_error=max_relative_error, max_reprojection_error=max_reprojection_error,
            )
            if masks is not None and masks[i] is not None:
                keep = keep & masks[i].bool()
            weight = keep.to(error.dtype)
            # where(): a masked pixel's error may be inf or nan (a depth of 0) and 0 * nan is nan.
            total = total + torch.where(keep, error, torch.zeros_like(error)).sum()
            count = count + weight.sum()
            keeps[i][j] = keep
    return total / count.clamp(min=1), keeps
