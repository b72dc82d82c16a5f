"""Input layouts of the CPU forwards, shared by the numba (``cpu.py``) and native (``native.py``) paths."""

from __future__ import annotations

import torch


def depth_weighted_inputs(cost, offsets, inverse, feature_weight, scale):
    """Detached, contiguous inputs of the depth-weighted aggregation kernels and its empty output.

    Shape:
        cost, inverse (B, D, H, W) -> (B, D, H*W); offsets (B, 2K, H, W); feature_weight (B, K, H, W);
        scale -> (B,) in the cost's dtype; out (B, D, H, W)
    """
    B, D, H, W = cost.shape
    cost = cost.detach().reshape(B, D, H * W).contiguous()
    inverse = inverse.detach().reshape(B, D, H * W).contiguous()
    offsets = offsets.detach().contiguous()
    feature_weight = feature_weight.detach().contiguous()
    scale = scale.detach().reshape(B).to(cost.dtype).contiguous()
    out = torch.empty((B, D, H, W), dtype=cost.dtype)
    return cost, offsets, inverse, feature_weight, scale, out
