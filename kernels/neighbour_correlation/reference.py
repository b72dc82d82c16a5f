"""Plain-PyTorch reference of the neighbour correlation (the input of PatchmatchNet's feature
weights, Wang et al., CVPR 2021, Sec. 3.4)."""

from __future__ import annotations

import torch

from .._bilinear_reference import border_samples


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
    sampled = border_samples(feature, offsets).view(B, num_groups, C // num_groups, -1, H, W)
    return (sampled * feature.view(B, num_groups, C // num_groups, 1, H, W)).mean(dim=2)
