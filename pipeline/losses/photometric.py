"""Robust photometric consistency (Unsup_MVS, Khot et al. 2019, Eq. 2-3).

Per source view and pixel: a robust error between the reference colour and the warped source
colour, plus the same error between their image gradients (which tolerates the brightness
changes between photos); then the per-pixel mean of the best ``top_k`` views
(:func:`pipeline.losses.view_synthesis.best_k_mean`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pipeline.losses.view_synthesis import best_k_mean, check_image, gradient_valid, image_gradients

ROBUST_KINDS = ("l1", "huber")


def robust_error(difference: torch.Tensor, kind: str = "l1", huber_delta: float = 0.05) -> torch.Tensor:
    """Element-wise robust penalty of a difference: ``|d|`` (l1) or Huber with ``huber_delta``."""
    if kind == "l1":
        return difference.abs()
    if kind == "huber":
        return F.huber_loss(difference, torch.zeros_like(difference), reduction="none", delta=huber_delta)
    raise ValueError(f"robust: expected one of {ROBUST_KINDS}, got {kind!r}")


def photometric_error_maps(
    ref_image: torch.Tensor,
    warped: torch.Tensor,
    valid: torch.Tensor,
    *,
    gradient_weight: float = 1.0,
    robust: str = "l1",
    huber_delta: float = 0.05,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-view, per-pixel photometric error (colour + ``gradient_weight`` x gradient).

    Colour and gradient errors are averaged over the channels; the gradient error is counted only
    where both pixels of the difference are valid.

    Shape:
        - ref_image: (B, C, H, W); warped: (B, V, C, H, W); valid: (B, V, 1, H, W) bool
        - returns errors (B, V, H, W) and valid (B, V, H, W) bool
    """
    check_image("ref_image", ref_image)
    if warped.dim() != 5 or warped.shape[:1] + warped.shape[2:] != ref_image.shape:
        raise ValueError(
            f"warped: expected (B, V, {ref_image.shape[1]}, {ref_image.shape[2]}, {ref_image.shape[3]}), "
            f"got {tuple(warped.shape)}"
        )
    ref = ref_image.unsqueeze(1)
    colour = robust_error(warped - ref, robust, huber_delta).mean(2)
    errors = colour
    if gradient_weight:
        ref_gx, ref_gy = image_gradients(ref)
        src_gx, src_gy = image_gradients(warped)
        valid_x, valid_y = gradient_valid(valid)
        grad_x = robust_error(src_gx - ref_gx, robust, huber_delta).mean(2) * valid_x[:, :, 0]
        grad_y = robust_error(src_gy - ref_gy, robust, huber_delta).mean(2) * valid_y[:, :, 0]
        errors = errors + gradient_weight * (grad_x + grad_y)
    return errors, valid[:, :, 0]


def photometric_loss(
    ref_image: torch.Tensor,
    warped: torch.Tensor,
    valid: torch.Tensor,
    *,
    top_k: int = 3,
    gradient_weight: float = 1.0,
    robust: str = "l1",
    huber_delta: float = 0.05,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Photometric consistency: per-pixel mean of the ``top_k`` best views, over valid pixels.

    Args:
        ref_image: reference image in [0, 1].
        warped: the source images warped into the reference (``warp_sources``).
        valid: where each warped sample is valid.
        top_k: how many of the best views each pixel averages (Unsup_MVS: 3).
        gradient_weight: weight of the image-gradient error against the colour error.
        robust: ``"l1"`` or ``"huber"``.
        huber_delta: the Huber threshold (image units).
        mask: optional reference pixels to use (e.g. the undistortion mask).

    Returns:
        The scalar loss (0 when no pixel is valid).

    Shape:
        - ref_image: (B, C, H, W); warped: (B, V, C, H, W); valid: (B, V, 1, H, W); mask: (B, 1, H, W)
    """
    errors, valid_views = photometric_error_maps(
        ref_image, warped, valid, gradient_weight=gradient_weight, robust=robust, huber_delta=huber_delta
    )
    if mask is not None:
        valid_views = valid_views & mask.bool()
    loss, _, _ = best_k_mean(errors, valid_views, top_k)
    return loss
