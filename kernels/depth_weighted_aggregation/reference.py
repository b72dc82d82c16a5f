"""Plain-PyTorch reference of the depth-weighted aggregation: PatchmatchNet's aggregation weights
(Wang et al., CVPR 2021, Sec. 3.4, eq. 7) passed to the adaptive aggregation (eq. 6)."""

from __future__ import annotations

import torch

from .._bilinear_reference import border_samples
from ..adaptive_aggregation.reference import adaptive_aggregation_reference


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
    sampled = border_samples(inverse, offsets).transpose(1, 2)  # (B, K, D, H, W)
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
