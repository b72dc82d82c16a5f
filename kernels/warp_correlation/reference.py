"""Plain-PyTorch reference of the fused warp + group-wise correlation.

This is the way PatchmatchNet computes it (Wang et al., CVPR 2021, Sec. 3.3, eq. 2-3): warp the
whole source feature map to every depth hypothesis with ``grid_sample`` (which materialises the
``(B, C, D, H, W)`` warped volume) and take the mean of ``ref * warped`` over each channel group.
It is the ground truth of the tests and the baseline of the benchmarks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..geometry import invert_intrinsics

# A point whose source-camera depth is at or below this is "behind the camera" (same rule as
# kernels.warp_image).
MIN_SRC_DEPTH = 1e-6


def projection_matrices(
    ref_K: torch.Tensor, src_K: torch.Tensor, src_from_ref: torch.Tensor, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """Compose the ref-pixel -> src-pixel map ``p_src ~ depth * M @ (x, y, 1) + T``.

    ``M = src_K @ R @ ref_K^-1`` and ``T = src_K @ t`` with ``[R|t] = src_from_ref``. Composed in
    float64 (whatever the input dtype) and then cast to ``dtype``, so every implementation
    (reference, CPU, CUDA) starts from the very same numbers. ``ref_K^-1`` is the closed-form
    upper-triangular inverse (:func:`kernels.geometry.invert_intrinsics`): batched, on the input's
    device, and without ``torch.linalg.inv``'s singularity check, which waits for the GPU.

    Shape:
        ref_K, src_K: (B, 3, 3); src_from_ref: (B, 4, 4) -> M: (B, 3, 3), T: (B, 3)
    """
    ref_K64 = ref_K.detach().to(torch.float64)
    src_K64 = src_K.detach().to(torch.float64)
    pose64 = src_from_ref.detach().to(torch.float64)
    rot, trans = pose64[:, :3, :3], pose64[:, :3, 3]
    M = src_K64 @ rot @ invert_intrinsics(ref_K64)
    T = (src_K64 @ trans.unsqueeze(-1)).squeeze(-1)
    return M.to(dtype), T.to(dtype)


def source_sample_positions(
    M: torch.Tensor, T: torch.Tensor, depth: torch.Tensor, src_height: int, src_width: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Source sample positions (pixel-index units: pixel (i, j) at (j, i)) and validity.

    The arithmetic order here is the one the CPU/CUDA kernels use, term by term.

    Shape:
        M: (B, 3, 3), T: (B, 3), depth: (B, D, H, W) -> x, y: (B, D, H, W), valid (B, D, H, W) bool
    """
    B, _, H, W = depth.shape
    dtype, device = depth.dtype, depth.device
    # COLMAP pixel convention: the centre of pixel (i, j) is (j + 0.5, i + 0.5).
    px = (torch.arange(W, device=device, dtype=dtype) + 0.5).view(1, 1, W)
    py = (torch.arange(H, device=device, dtype=dtype) + 0.5).view(1, H, 1)
    rays = []
    for r in range(3):
        m0 = M[:, r, 0].view(B, 1, 1)
        m1 = M[:, r, 1].view(B, 1, 1)
        m2 = M[:, r, 2].view(B, 1, 1)
        rays.append((m0 * px + m1 * py) + m2)  # (B, H, W)
    u = rays[0].unsqueeze(1) * depth + T[:, 0].view(B, 1, 1, 1)
    v = rays[1].unsqueeze(1) * depth + T[:, 1].view(B, 1, 1, 1)
    z = rays[2].unsqueeze(1) * depth + T[:, 2].view(B, 1, 1, 1)
    in_front = z > MIN_SRC_DEPTH
    safe_z = torch.where(in_front, z, torch.ones_like(z))
    x = u / safe_z - 0.5
    y = v / safe_z - 0.5
    valid = in_front & (x >= 0) & (x <= src_width - 1) & (y >= 0) & (y <= src_height - 1)
    return x, y, valid


def warp_correlation_reference(
    ref_feature: torch.Tensor,
    src_feature: torch.Tensor,
    ref_K: torch.Tensor,
    src_K: torch.Tensor,
    src_from_ref: torch.Tensor,
    depth_hypotheses: torch.Tensor,
    num_groups: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Group-wise correlation of the reference features with the warped source features.

    Precision policy: every step runs in the input dtype (float32 or float64) except the 3x3
    projection composition (float64, then cast; see :func:`projection_matrices`). Bilinear
    sampling is ``grid_sample(align_corners=False, padding_mode="zeros")``; the normalised grid
    round trip costs about ``1e-7 * width`` pixels in float32. Gradients flow to both feature
    maps; the depth hypotheses are detached. Inputs are not validated (the public
    :func:`kernels.warp_correlation` does that).

    Shape:
        ref_feature: (B, C, H, W); src_feature: (B, C, Hs, Ws); ref_K, src_K: (B, 3, 3);
        src_from_ref: (B, 4, 4); depth_hypotheses: (B, D, H, W)
        -> correlation (B, G, D, H, W), valid (B, D, H, W) bool
    """
    B, C, H, W = ref_feature.shape
    Hs, Ws = src_feature.shape[-2:]
    D = depth_hypotheses.shape[1]
    G = num_groups
    dtype = ref_feature.dtype
    M, T = projection_matrices(ref_K, src_K, src_from_ref, dtype)
    x, y, valid = source_sample_positions(M, T, depth_hypotheses.detach(), Hs, Ws)
    # grid_sample(align_corners=False) maps the normalised g to the index ((g + 1) * size - 1) / 2.
    grid_x = torch.where(valid, (2 * x + 1) / Ws - 1, torch.zeros_like(x))
    grid_y = torch.where(valid, (2 * y + 1) / Hs - 1, torch.zeros_like(y))
    grid = torch.stack((grid_x, grid_y), dim=-1).view(B, D * H, W, 2)
    warped = F.grid_sample(src_feature, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    warped = warped.view(B, G, C // G, D, H, W)
    correlation = (warped * ref_feature.view(B, G, C // G, 1, H, W)).mean(dim=2)
    correlation = correlation * valid.unsqueeze(1).to(dtype)
    return correlation, valid
