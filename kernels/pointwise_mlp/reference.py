"""Torch reference of :func:`kernels.pointwise_mlp`."""

from __future__ import annotations

import torch


def pointwise_mlp_reference(x: torch.Tensor, weights: list[torch.Tensor], biases: list[torch.Tensor]) -> torch.Tensor:
    """A per-position MLP over the channels of ``x``: ReLU after every layer but the last.

    Each layer is one batched matrix product with the weight expanded over the batch (``baddbmm``:
    several times faster than ``conv3d`` with 1x1x1 kernels on CPU, forward and backward).
    Precision policy: the input dtype throughout. Differentiable in all inputs.

    Shape:
        x (B, C_0, *S), weights[l] (C_{l+1}, C_l), biases[l] (C_{l+1},) -> (B, C_L, *S)
    """
    batch, channels = x.shape[:2]
    flat = x.reshape(batch, channels, -1)
    last = len(weights) - 1
    for index, (weight, bias) in enumerate(zip(weights, biases)):
        matrix = weight.expand(batch, -1, -1)
        flat = torch.baddbmm(bias.view(1, -1, 1).expand(batch, -1, 1), matrix, flat)
        if index < last:
            flat = torch.relu(flat)
    return flat.view(batch, flat.shape[1], *x.shape[2:])
