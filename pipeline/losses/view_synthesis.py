"""View synthesis shared by the photometric terms, and the per-pixel best-k reduction.

Every photometric term compares the reference image with each source image warped into the
reference by the predicted depth (``kernels.warp_image``). Warping once and handing the warped
stack to each term keeps one warp per source and stage.

The reduction follows Unsup_MVS (Khot et al. 2019, "Learning Unsupervised Multi-View Stereopsis
via Robust Photometric Consistency", Sec. 3.2): at *each pixel* only the k source views with the
smallest error count, so a source that is occluded (or out of view) at that pixel is ignored
there and still used elsewhere. Reducing each view to one number first (as several PyTorch ports
do) loses exactly this occlusion handling.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

import kernels


def check_image(name: str, image: torch.Tensor, channels: int | None = None) -> None:
    """Raise ValueError unless ``image`` is a (B, C, H, W) tensor (with ``channels`` channels)."""
    if not isinstance(image, torch.Tensor) or image.dim() != 4 or (channels is not None and image.shape[1] != channels):
        got = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        want = f"(B, {channels}, H, W)" if channels is not None else "(B, C, H, W)"
        raise ValueError(f"{name}: expected a {want} tensor, got {got}")


def warp_sources(
    src_images: torch.Tensor,
    ref_depth: torch.Tensor,
    ref_K: torch.Tensor,
    src_K: torch.Tensor,
    src_from_ref: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Warp every source image into the reference view by the reference depth.

    Args:
        src_images: source images (or any per-pixel maps, e.g. segmentations).
        ref_depth: z-depth of the reference view, differentiable.
        ref_K: reference intrinsics at the depth map's resolution (pixels, COLMAP convention).
        src_K: source intrinsics at the source maps' resolution.
        src_from_ref: rigid transforms reference camera -> source camera.

    Returns:
        ``(warped, valid)``: the sources seen from the reference and where each sample is valid.

    Shape:
        - src_images: (B, V, C, Hs, Ws)
        - ref_depth: (B, 1, H, W)
        - ref_K: (B, 3, 3); src_K: (B, V, 3, 3); src_from_ref: (B, V, 4, 4)
        - warped: (B, V, C, H, W); valid: (B, V, 1, H, W) bool
    """
    if src_images.dim() != 5:
        raise ValueError(f"src_images: expected (B, V, C, Hs, Ws), got {tuple(src_images.shape)}")
    check_image("ref_depth", ref_depth, 1)
    batch, num_views = src_images.shape[:2]
    if src_K.shape != (batch, num_views, 3, 3) or src_from_ref.shape != (batch, num_views, 4, 4):
        raise ValueError(
            f"src_K / src_from_ref: expected ({batch}, {num_views}, 3, 3) / ({batch}, {num_views}, 4, 4), "
            f"got {tuple(src_K.shape)} / {tuple(src_from_ref.shape)}"
        )
    if ref_K.shape != (batch, 3, 3):
        raise ValueError(f"ref_K: expected ({batch}, 3, 3), got {tuple(ref_K.shape)}")
    warped, valid = [], []
    for view in range(num_views):
        image, ok = kernels.warp_image(
            src_images[:, view], ref_depth, ref_K, src_K[:, view], src_from_ref[:, view]
        )
        warped.append(image)
        valid.append(ok)
    return torch.stack(warped, 1), torch.stack(valid, 1)


def best_k_mean(
    errors: torch.Tensor, valid: torch.Tensor, top_k: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pixel mean of the ``top_k`` smallest valid errors over the views.

    Invalid (view, pixel) pairs count as +inf, so they are chosen last and never averaged in; a
    pixel with fewer than ``top_k`` valid views averages those it has; a pixel with none is
    excluded. The scalar is normalised by the number of pixels with at least one valid view.

    Returns:
        ``(loss, per_pixel, pixel_valid)``: the scalar, the per-pixel mean (0 where no view is
        valid) and where at least one view is valid.

    Shape:
        - errors: (B, V, H, W); valid: (B, V, H, W) bool
        - loss: (); per_pixel: (B, 1, H, W); pixel_valid: (B, 1, H, W) bool
    """
    if errors.dim() != 4 or valid.shape != errors.shape:
        raise ValueError(f"errors / valid: expected equal (B, V, H, W) shapes, got {tuple(errors.shape)} / {tuple(valid.shape)}")
    if top_k < 1:
        raise ValueError(f"top_k: expected >= 1, got {top_k}")
    k = min(top_k, errors.shape[1])
    ranked = torch.where(valid, errors, torch.full_like(errors, float("inf")))
    chosen, index = torch.topk(ranked, k, dim=1, largest=False)
    chosen_valid = torch.gather(valid, 1, index)
    chosen = torch.where(chosen_valid, chosen, torch.zeros_like(chosen))
    count = chosen_valid.sum(1, keepdim=True)
    pixel_valid = count > 0
    per_pixel = chosen.sum(1, keepdim=True) / count.clamp(min=1).to(chosen.dtype)
    loss = per_pixel.sum() / pixel_valid.sum().clamp(min=1).to(chosen.dtype)
    return loss, per_pixel, pixel_valid


def image_gradients(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward differences I(x+1) - I(x), zero in the last column / row (same size as the input).

    Shape:
        - image: (..., H, W); returns two (..., H, W)
    """
    grad_x = F.pad(image[..., :, 1:] - image[..., :, :-1], (0, 1, 0, 0))
    grad_y = F.pad(image[..., 1:, :] - image[..., :-1, :], (0, 0, 0, 1))
    return grad_x, grad_y


def gradient_valid(valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Where both pixels of a forward difference are valid (False in the last column / row)."""
    valid_x = F.pad(valid[..., :, 1:] & valid[..., :, :-1], (0, 1, 0, 0))
    valid_y = F.pad(valid[..., 1:, :] & valid[..., :-1, :], (0, 0, 0, 1))
    return valid_x, valid_y


def erode(valid: torch.Tensor, radius: int = 1) -> torch.Tensor:
    """Binary erosion with a (2r+1)^2 square: True where the whole window is True.

    Shape:
        - valid: (..., H, W) bool -> same
    """
    shape = valid.shape
    flat = (~valid).reshape(-1, 1, shape[-2], shape[-1]).float()
    grown = F.max_pool2d(flat, 2 * radius + 1, stride=1, padding=radius)
    return (grown == 0).reshape(shape)


def downsample(image: torch.Tensor, factor: int) -> torch.Tensor:
    """Average ``factor`` x ``factor`` blocks (exact in the pixel-centre convention: K scales by 1/factor).

    Shape:
        - image: (..., H, W) with H, W divisible by ``factor`` -> (..., H/factor, W/factor)
    """
    if factor == 1:
        return image
    shape = image.shape
    if shape[-1] % factor or shape[-2] % factor:
        raise ValueError(f"downsample: size {shape[-2]}x{shape[-1]} is not divisible by {factor}")
    flat = image.reshape(-1, 1, shape[-2], shape[-1])
    out = F.avg_pool2d(flat, factor)
    return out.reshape(*shape[:-2], shape[-2] // factor, shape[-1] // factor)


def scale_intrinsics(K: torch.Tensor, scale_x: float, scale_y: float | None = None) -> torch.Tensor:
    """Intrinsics of the image resized by (scale_x, scale_y): rows 0 and 1 scale (exact, COLMAP pixels).

    Shape:
        - K: (..., 3, 3) -> same
    """
    scale_y = scale_x if scale_y is None else scale_y
    # Row by row, without a tensor of factors (a host-to-device copy per call).
    return torch.cat((K[..., :1, :] * scale_x, K[..., 1:2, :] * scale_y, K[..., 2:, :]), dim=-2)
