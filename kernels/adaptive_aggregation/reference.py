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


def depth_weights_reference(
    inverse: torch.Tensor, offsets: torch.Tensor, feature_weight: torch.Tensor, scale: torch.Tensor
) -> torch.Tensor:
    """PatchmatchNet's aggregation weights (eq. 7): feature weight x depth weight.

    The depth weight of neighbour k and hypothesis d is ``sigmoid(4 - min(|inv_k - inv| * scale,
    8))`` with ``inv_k`` the bilinear sample of ``inverse`` at the neighbour's position, clamped
    into the map (border padding), and ``scale`` per batch item. Precision policy: input dtype,
    ``grid_sample`` with ``align_corners=True`` (exact pixel positions).

    Shape:
        inverse (B, D, H, W), offsets (B, 2K, H, W), feature_weight (B, K, H, W), scale (B,)
        -> (B, K, D, H, W)
    """
    B = inverse.shape[0]
    sampled = _border_samples(inverse, offsets).transpose(1, 2)  # (B, K, D, H, W)
    distance = ((sampled - inverse.unsqueeze(1)).abs() * scale.view(B, 1, 1, 1, 1)).clamp(max=8.0)
    return torch.sigmoid(4.0 - distance) * feature_weight.unsqueeze(2)


def depth_weighted_aggregation_reference(
    cost: torch.Tensor,
    offsets: torch.Tensor,
    inverse: torch.Tensor,
    feature_weight: torch.Tensor,
    scale: torch.Tensor,
    eps: float = 1e-8,
) -> torch.Tensor:
    """:func:`adaptive_aggregation_reference` with the weights of :func:`depth_weights_reference`.

    Shape:
        cost, inverse (B, D, H, W), offsets (B, 2K, H, W), feature_weight (B, K, H, W), scale (B,)
        -> (B, D, H, W)
    """
    weights = depth_weights_reference(inverse, offsets, feature_weight, scale)
    return adaptive_aggregation_reference(cost, offsets, weights, eps)


def neighbour_correlation_reference(feature: torch.Tensor, offsets: torch.Tensor, num_groups: int) -> torch.Tensor:
    """Group-wise correlation of each pixel's feature with the features at its K offset neighbours.

    ``out[b, g, k, y, x] = mean over the channels c of group g of feature[b, c, y, x] *
    bilinear(feature[b, c], (x + dx_k, y + dy_k))``, the neighbour's position clamped into the map
    (border padding): the input of PatchmatchNet's feature weights (Sec. 3.4). Precision policy:
    input dtype, ``grid_sample`` with ``align_corners=True``.

    Shape:
        feature (B, C, H, W) with C divisible by num_groups, offsets (B, 2K, H, W) -> (B, G, K, H, W)
    """
    B, C, H, W = feature.shape
    sampled = _border_samples(feature, offsets).view(B, num_groups, C // num_groups, -1, H, W)
    return (sampled * feature.view(B, num_groups, C // num_groups, 1, H, W)).mean(dim=2)


def _border_samples(values: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """``values`` sampled bilinearly at every pixel's K offset neighbours, positions clamped into
    the map (``grid_sample``, border padding, ``align_corners=True``: exact pixel positions).

    Shape: values (B, C, H, W), offsets (B, 2K, H, W) -> (B, C, K, H, W)
    """
    B, C, H, W = values.shape
    K = offsets.shape[1] // 2
    dtype, device = values.dtype, values.device
    cols = torch.arange(W, device=device, dtype=dtype).view(1, 1, 1, W)
    rows = torch.arange(H, device=device, dtype=dtype).view(1, 1, H, 1)
    x = (cols + offsets[:, 0::2]) * (2.0 / max(W - 1, 1)) - 1.0  # (B, K, H, W)
    y = (rows + offsets[:, 1::2]) * (2.0 / max(H - 1, 1)) - 1.0
    grid = torch.stack((x, y), dim=-1).view(B, K * H, W, 2)
    sampled = F.grid_sample(values, grid, mode="bilinear", padding_mode="border", align_corners=True)
    return sampled.view(B, C, K, H, W)
