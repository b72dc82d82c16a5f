"""Bilinear sampling at offset neighbours in plain PyTorch, shared by the references of
``depth_weighted_aggregation`` and ``neighbour_correlation``."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def border_samples(values: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
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
