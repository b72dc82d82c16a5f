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
