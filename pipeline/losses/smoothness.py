"""Edge-aware depth smoothness (Unsup_MVS Eq. 5; first-order form as in Monodepth).

Depth gradients are penalised with weights ``exp(-|grad I|)`` (channel mean), so depth may jump
where the image has an edge. Unsup_MVS uses the *second-order* form (default here): it leaves
slanted planes (nearly) free, where a first-order penalty would flatten them toward
fronto-parallel. Exactly free only for the inverse depth (``inverse=True``, the workflow's default
through ``train.loss.smoothness_inverse``): a plane's inverse depth is affine in the pixel
coordinates, its depth is not (a floor's depth curves toward the horizon).

The depth is divided by its per-sample mean first (Monodepth2's normalisation) so the term does
not depend on the scene's unit and cannot be lowered by shrinking the depth; ``inverse=True``
uses the mean-normalised inverse depth instead.
"""

from __future__ import annotations

import torch

from pipeline.losses.view_synthesis import check_image


def _first_x(t: torch.Tensor) -> torch.Tensor:
    return t[..., :, 1:] - t[..., :, :-1]


def _first_y(t: torch.Tensor) -> torch.Tensor:
    return t[..., 1:, :] - t[..., :-1, :]


def _masked_mean(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return values.mean()
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1)


def smoothness_loss(
    depth: torch.Tensor,
    image: torch.Tensor,
    *,
    order: int = 2,
    inverse: bool = False,
    mask: torch.Tensor | None = None,
    eps: float = 1e-7,
) -> torch.Tensor:
    """Edge-aware smoothness of a (mean-normalised) depth map.

    Args:
        depth: predicted z-depth (> 0).
        image: the reference image at the depth's resolution, in [0, 1].
        order: 1 (first differences) or 2 (second differences, Unsup_MVS).
        inverse: penalise the mean-normalised inverse depth instead of the depth.
        mask: optional valid pixels; a difference counts where all its pixels are valid.

    Returns:
        The scalar loss: mean over x and y differences of ``weight * |difference|``.

    Shape:
        - depth: (B, 1, H, W); image: (B, C, H, W); mask: (B, 1, H, W) bool
    """
    check_image("depth", depth, 1)
    check_image("image", image)
    if image.shape[0] != depth.shape[0] or image.shape[2:] != depth.shape[2:]:
        raise ValueError(f"image: expected (B, C, {depth.shape[2]}, {depth.shape[3]}) like depth, got {tuple(image.shape)}")
    if order not in (1, 2):
        raise ValueError(f"order: expected 1 or 2, got {order}")
    if min(depth.shape[2:]) < order + 1:
        raise ValueError(f"depth: at least {order + 1} pixels per side needed, got {tuple(depth.shape)}")
    value = 1.0 / depth.clamp(min=eps) if inverse else depth
    value = value / value.mean(dim=(2, 3), keepdim=True).clamp(min=eps)
    weight_x = torch.exp(-_first_x(image).abs().mean(1, keepdim=True))
    weight_y = torch.exp(-_first_y(image).abs().mean(1, keepdim=True))
    if order == 1:
        grad_x, grad_y = _first_x(value), _first_y(value)
        mask_x = mask_y = None
        if mask is not None:
            mask_x = mask[..., :, 1:] & mask[..., :, :-1]
            mask_y = mask[..., 1:, :] & mask[..., :-1, :]
    else:
        # Second differences centred on pixel x+1 weighted by the image gradient between x and x+1
        # (Unsup_MVS crops the first-order weights the same way).
        grad_x, grad_y = _first_x(_first_x(value)), _first_y(_first_y(value))
        weight_x, weight_y = weight_x[..., :, :-1], weight_y[..., :-1, :]
        mask_x = mask_y = None
        if mask is not None:
            mask_x = mask[..., :, 2:] & mask[..., :, 1:-1] & mask[..., :, :-2]
            mask_y = mask[..., 2:, :] & mask[..., 1:-1, :] & mask[..., :-2, :]
    return _masked_mean(weight_x * grad_x.abs(), mask_x) + _masked_mean(weight_y * grad_y.abs(), mask_y)
