"""Plain-PyTorch inverse warp of a source image into the reference view: the kernels' reference."""

from __future__ import annotations

import torch

from ..geometry import invert_intrinsics

#: Smallest source-camera z (homogeneous w) counted as in front of the camera.
MIN_DEPTH = 1e-6


def projection_matrix(
    ref_K: torch.Tensor, src_K: torch.Tensor, src_from_ref: torch.Tensor, dtype: torch.dtype
) -> torch.Tensor:
    """[K_src R K_ref^-1 | K_src t] per batch, composed in float64 and returned in ``dtype``.

    No gradient flows to the cameras (the ops differentiate w.r.t. image and depth only).
    ``K_ref^-1`` is the closed-form upper-triangular inverse
    (:func:`kernels.geometry.invert_intrinsics`): no ``torch.linalg.inv`` check waiting for the GPU.

    Shape:
        - ref_K, src_K: (B, 3, 3)
        - src_from_ref: (B, 4, 4) or (B, 3, 4)
        - output: (B, 3, 4)
    """
    with torch.no_grad():
        ref_K = ref_K.detach().to(torch.float64)
        src_K = src_K.detach().to(torch.float64)
        pose = src_from_ref.detach().to(torch.float64)
        rot = pose[:, :3, :3]
        trans = pose[:, :3, 3:4]
        m = src_K @ rot @ invert_intrinsics(ref_K)
        k = src_K @ trans
        return torch.cat([m, k], dim=2).to(dtype).contiguous()


def warp_image_reference(
    src_image: torch.Tensor,
    ref_depth: torch.Tensor,
    ref_K: torch.Tensor,
    src_K: torch.Tensor,
    src_from_ref: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Bilinearly sample ``src_image`` where each reference pixel, at its depth, projects.

    Reference pixel (row i, col j) has centre (u, v) = (j + 0.5, i + 0.5) (COLMAP convention);
    it is lifted to z * K_ref^-1 [u, v, 1], moved by ``src_from_ref`` and projected by ``src_K``;
    the sample (x, y) is read at pixel-index position (x - 0.5, y - 0.5). A pixel is invalid (value
    0, ``valid`` False) when the point is behind the source camera (z_src <= 1e-6) or the sample
    centre is outside the source image (x - 0.5 not in [0, Ws - 1] or y - 0.5 not in [0, Hs - 1]).

    Precision policy: the 3x4 projection [K_src R K_ref^-1 | K_src t] is composed in float64 and
    cast to the image dtype; all per-pixel arithmetic runs in the image dtype with torch ops, in
    the same order as the kernels (see ``_formulas.py``). Gradients (autograd) reach
    ``src_image`` and ``ref_depth``, not the cameras.

    Args:
        src_image: source image.
        ref_depth: z-depth of every reference pixel.
        ref_K: reference intrinsics in pixels at the depth map's resolution.
        src_K: source intrinsics in pixels at the source image's resolution.
        src_from_ref: rigid transform from reference to source camera coordinates.

    Returns:
        (warped, valid).

    Shape:
        - src_image: (B, C, Hs, Ws)
        - ref_depth: (B, 1, H, W)
        - ref_K, src_K: (B, 3, 3)
        - src_from_ref: (B, 4, 4)
        - warped: (B, C, H, W); valid: (B, 1, H, W) bool
    """
    batch, channels, src_h, src_w = src_image.shape
    height, width = ref_depth.shape[-2:]
    dtype = src_image.dtype
    proj = projection_matrix(ref_K, src_K, src_from_ref, dtype)
    p = [[proj[:, r, c].view(batch, 1, 1, 1) for c in range(4)] for r in range(3)]
    u = (torch.arange(width, device=src_image.device, dtype=dtype) + 0.5).view(1, 1, 1, width)
    v = (torch.arange(height, device=src_image.device, dtype=dtype) + 0.5).view(1, 1, height, 1)
    z = ref_depth
    rx = p[0][0] * u + p[0][1] * v + p[0][2]
    ry = p[1][0] * u + p[1][1] * v + p[1][2]
    rz = p[2][0] * u + p[2][1] * v + p[2][2]
    hx = z * rx + p[0][3]
    hy = z * ry + p[1][3]
    hz = z * rz + p[2][3]
    valid = hz > MIN_DEPTH
    hz_safe = torch.where(valid, hz, torch.ones_like(hz))  # keeps NaN/inf out of the gradient
    fx = hx / hz_safe - 0.5
    fy = hy / hz_safe - 0.5
    valid = valid & (fx >= 0) & (fx <= src_w - 1) & (fy >= 0) & (fy <= src_h - 1)
    fx = torch.where(valid, fx, torch.zeros_like(fx))
    fy = torch.where(valid, fy, torch.zeros_like(fy))
    x0 = torch.floor(fx).clamp(0, max(src_w - 2, 0)).detach()
    y0 = torch.floor(fy).clamp(0, max(src_h - 2, 0)).detach()
    ax = fx - x0
    ay = fy - y0
    x1 = (x0 + 1).clamp(max=src_w - 1)
    y1 = (y0 + 1).clamp(max=src_h - 1)
    flat = src_image.reshape(batch, channels, src_h * src_w)

    def tap(yi: torch.Tensor, xi: torch.Tensor) -> torch.Tensor:
        index = (yi * src_w + xi).long().reshape(batch, 1, height * width).expand(batch, channels, -1)
        return torch.gather(flat, 2, index).reshape(batch, channels, height, width)

    i00, i01, i10, i11 = tap(y0, x0), tap(y0, x1), tap(y1, x0), tap(y1, x1)
    value = (1 - ay) * ((1 - ax) * i00 + ax * i01) + ay * ((1 - ax) * i10 + ax * i11)
    warped = torch.where(valid, value, torch.zeros_like(value))
    return warped, valid
