"""Structural similarity term (Unsup_MVS Eq. 4; Monodepth's (1 - SSIM) / 2).

``kernels.ssim`` (3x3 box window) compares the reference with each warped source on images in
[0, 1] (not z-scored: SSIM's constants C1, C2 assume that range). A pixel counts for a view only
where its whole 3x3 window is valid, since invalid warped samples are zeros.

Our choice for combining the views: the same per-pixel best-k mean as the photometric term, on
the SSIM error itself (Unsup_MVS sums a masked SSIM over all views; per-pixel best-k keeps the
occlusion handling of the photometric term here too). ``top_k=1`` gives the best view per pixel.
"""

from __future__ import annotations

import torch

import kernels
from pipeline.losses.view_synthesis import best_k_mean, check_image, erode


def ssim_error_maps(
    ref_image: torch.Tensor, warped: torch.Tensor, valid: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-view, per-pixel ``(1 - SSIM) / 2`` (channel mean, clamped to [0, 1]) and its validity.

    Shape:
        - ref_image: (B, C, H, W); warped: (B, V, C, H, W); valid: (B, V, 1, H, W) bool
        - returns errors (B, V, H, W) and valid (B, V, H, W) bool
    """
    check_image("ref_image", ref_image)
    if warped.dim() != 5 or warped.shape[:1] + warped.shape[2:] != ref_image.shape:
        raise ValueError(f"warped: expected (B, V, *{tuple(ref_image.shape[1:])}), got {tuple(warped.shape)}")
    batch, views = warped.shape[:2]
    ref = ref_image.unsqueeze(1).expand_as(warped).reshape(batch * views, *warped.shape[2:])
    similarity = kernels.ssim(warped.reshape(batch * views, *warped.shape[2:]), ref)
    errors = ((1.0 - similarity) / 2.0).clamp(0.0, 1.0).mean(1).reshape(batch, views, *warped.shape[3:])
    return errors, erode(valid[:, :, 0], 1)


def ssim_loss(
    ref_image: torch.Tensor,
    warped: torch.Tensor,
    valid: torch.Tensor,
    *,
    top_k: int = 3,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """SSIM term: per-pixel mean of the ``top_k`` smallest ``(1 - SSIM) / 2`` over the views.

    Shape:
        - ref_image: (B, C, H, W) in [0, 1]; warped: (B, V, C, H, W); valid: (B, V, 1, H, W);
          mask: (B, 1, H, W)
    """
    errors, valid_views = ssim_error_maps(ref_image, warped, valid)
    if mask is not None:
        valid_views = valid_views & mask.bool()
    loss, _, _ = best_k_mean(errors, valid_views, top_k)
    return loss
