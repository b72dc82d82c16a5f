"""One-way cross-view depth consistency of a reference with one source (after MVS^2, Dai et al. 2019).

The objective uses the symmetric, occlusion-checked form of :mod:`pipeline.losses.multi_view`;
this one-way form (no forward-backward check) stays for callers that compare one pair.

The depth predicted for the reference and the depth predicted for a source (with that source as
the reference of its own forward pass) must describe the same surface: a reference pixel,
back-projected by its depth and moved into the source camera, has a z-depth there that should
equal the source depth map sampled where it projects. The source depth map is sampled with
``kernels.warp_image``; the error is relative, ``|z - d_src| / z``, and counted where the warp is
valid and the error is below ``max_relative_error`` (larger errors are taken to be occlusions).
"""

from __future__ import annotations

import torch

import kernels
from kernels.geometry import invert_intrinsics
from pipeline.losses.view_synthesis import check_image


def pixel_rays(K: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``K^-1 [x, y, 1]`` at every pixel centre (x = col + 0.5, y = row + 0.5): rays with z = 1.

    Shape:
        - K: (B, 3, 3) -> (B, 3, H, W)
    """
    dtype, device = K.dtype, K.device
    y, x = torch.meshgrid(
        torch.arange(height, dtype=dtype, device=device) + 0.5,
        torch.arange(width, dtype=dtype, device=device) + 0.5,
        indexing="ij",
    )
    pixels = torch.stack([x, y, torch.ones_like(x)]).view(1, 3, -1).expand(K.shape[0], -1, -1)
    return (invert_intrinsics(K) @ pixels).view(K.shape[0], 3, height, width)


def cross_view_loss(
    ref_depth: torch.Tensor,
    src_depth: torch.Tensor,
    ref_K: torch.Tensor,
    src_K: torch.Tensor,
    src_from_ref: torch.Tensor,
    *,
    max_relative_error: float = 0.05,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Relative disagreement of the reference depth with a source's predicted depth.

    Args:
        ref_depth: depth predicted with the reference as reference.
        src_depth: depth predicted with the source as reference.
        ref_K, src_K: intrinsics at the two depth maps' resolutions.
        src_from_ref: reference camera -> source camera.
        max_relative_error: larger errors are treated as occlusions and not counted.
        mask: optional reference pixels to use.

    Shape:
        - ref_depth: (B, 1, H, W); src_depth: (B, 1, Hs, Ws); ref_K, src_K: (B, 3, 3); src_from_ref: (B, 4, 4)
    """
    check_image("ref_depth", ref_depth, 1)
    check_image("src_depth", src_depth, 1)
    batch, _, height, width = ref_depth.shape
    points = pixel_rays(ref_K, height, width) * ref_depth
    # (B, 1, 3) @ (B, 3, HW): the third row of each batch element's rotation, batch by batch.
    z_in_src = (src_from_ref[:, 2:3, :3] @ points.view(batch, 3, -1)).view(batch, 1, height, width) + src_from_ref[
        :, 2, 3
    ].view(batch, 1, 1, 1)
    sampled, valid = kernels.warp_image(src_depth, ref_depth, ref_K, src_K, src_from_ref)
    relative = (z_in_src - sampled).abs() / z_in_src.abs().clamp(min=1e-6)
    keep = valid & (sampled > 0) & (relative.detach() < max_relative_error)
    if mask is not None:
        keep = keep & mask.bool()
    weight = keep.to(relative.dtype)
    return (relative * weight).sum() / weight.sum().clamp(min=1)
