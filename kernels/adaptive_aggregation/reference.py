"""Plain-PyTorch reference of PatchmatchNet's adaptive spatial cost aggregation.

PatchmatchNet (Wang et al., CVPR 2021, Sec. 3.4, eq. 6): the cost of a pixel is the weighted mean
of the costs bilinearly sampled at K adaptively offset neighbours,
``out = sum_k w_k * cost(p + p_k + dp_k) / (sum_k w_k + eps)``. The caller folds the fixed
(dilated) pattern ``p_k`` and the learned offsets ``dp_k`` into ``offsets``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def adaptive_aggregation_reference(
    cost: torch.Tensor, offsets: torch.Tensor, weights: torch.Tensor, eps: float = 1e-8
) -> torch.Tensor:
    """Weighted mean of bilinearly sampled costs at offset neighbours (zero outside the map).

    Precision policy: runs in the input dtype (float32 or float64) with ``grid_sample``
    (``align_corners=False``, ``padding_mode="zeros"``); the normalised grid round trip costs
    about ``1e-7 * width`` pixels in float32. Materialises the ``(B, D, K, H, W)`` sampled costs.
    Gradients flow to cost, offsets and weights. Inputs are not validated (the public
    :func:`kernels.adaptive_aggregation` does that).

    Shape:
        cost: (B, D, H, W); offsets: (B, 2K, H, W) as (dx_0, dy_0, dx_1, dy_1, ...) in pixels;
        weights: (B, K, D, H, W) -> (B, D, H, W)
    """
    B, D, H, W = cost.shape
    K = offsets.shape[1] // 2
    dtype, device = cost.dtype, cost.device
    cols = torch.arange(W, device=device, dtype=dtype).view(1, 1, 1, W)
    rows = torch.arange(H, device=device, dtype=dtype).view(1, 1, H, 1)
    x = cols + offsets[:, 0::2]  # (B, K, H, W), pixel-index units
    y = rows + offsets[:, 1::2]
    grid = torch.stack(((2 * x + 1) / W - 1, (2 * y + 1) / H - 1), dim=-1).view(B, K * H, W, 2)
    sampled = F.grid_sample(cost, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    sampled = sampled.view(B, D, K, H, W).transpose(1, 2)  # (B, K, D, H, W)
    return (weights * sampled).sum(dim=1) / (weights.sum(dim=1) + eps)


def depth_weighted_aggregation_reference(
    cost: torch.Tensor,
    offsets: torch.Tensor,
    inverse_depth: torch.Tensor,
    feature_weight: torch.Tensor,
    scale: torch.Tensor,
    eps: float = 1e-8,
) -> torch.Tensor:
    """Adaptive aggregation with PatchmatchNet's weights formed from depth and features (eq. 7).

    ``w_k = sigmoid(4 - min(|inv_k - inv| * scale, 8)) * feature_weight_k`` where ``inv_k`` is the
    inverse-depth hypothesis bilinearly sampled at the k-th offset position with the border
    clamped (``padding_mode="border"``) and ``inv`` the pixel's own; then
    :func:`adaptive_aggregation_reference` with those weights. Gradients flow as through the
    composed torch ops.

    Shape:
        cost, inverse_depth: (B, D, H, W); offsets: (B, 2K, H, W) in pixels; feature_weight:
        (B, K, H, W); scale: (B,) -> (B, D, H, W)
    """
    B, D, H, W = cost.shape
    K = offsets.shape[1] // 2
    dtype, device = cost.dtype, cost.device
    cols = torch.arange(W, device=device, dtype=dtype).view(1, 1, W)
    rows = torch.arange(H, device=device, dtype=dtype).view(1, H, 1)
    weights = []
    for k in range(K):
        x = (cols + offsets[:, 2 * k]) * (2.0 / max(W - 1, 1)) - 1.0
        y = (rows + offsets[:, 2 * k + 1]) * (2.0 / max(H - 1, 1)) - 1.0
        grid = torch.stack((x, y), dim=-1)
        sampled = F.grid_sample(inverse_depth, grid, mode="bilinear", padding_mode="border", align_corners=True)
        distance = ((sampled - inverse_depth).abs() * scale.view(B, 1, 1, 1)).clamp(0.0, 8.0)
        weights.append(torch.sigmoid(4.0 - distance) * feature_weight[:, k : k + 1])
    return adaptive_aggregation_reference(cost, offsets, torch.stack(weights, dim=1), eps)
