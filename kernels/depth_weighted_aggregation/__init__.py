"""PatchmatchNet's adaptive aggregation with its eq. 7 weights built on the fly.

Public: :func:`depth_weighted_aggregation`; reference twin: :func:`depth_weighted_aggregation_reference`
(``reference.py``, with :func:`depth_weights_reference`). No ``torch.autograd.Function`` of its own
and no CUDA kernel: the CPU forward without autograd is one fused kernel (``native.cpp`` through
``kernels._native`` where it builds, else numba's ``cpu.py``); with gradients, or on CUDA, the
weights are built in torch and passed to :func:`kernels.adaptive_aggregation`, whose autograd
function and CUDA kernels do the rest.
"""

from __future__ import annotations

import torch

from ..adaptive_aggregation import adaptive_aggregation, check_inputs
from .reference import depth_weighted_aggregation_reference, depth_weights_reference

__all__ = ["depth_weighted_aggregation", "depth_weighted_aggregation_reference", "depth_weights_reference"]


def _cpu_forward():
    """The module with the inference-only CPU forward: the native library's where it is built
    (no numba in the process), else numba's."""
    from .. import _native

    if _native.library() is not None:
        from . import native

        return native
    from . import cpu

    return cpu


def depth_weighted_aggregation(
    cost: torch.Tensor,
    offsets: torch.Tensor,
    inverse: torch.Tensor,
    feature_weight: torch.Tensor,
    scale: torch.Tensor,
    eps: float = 1e-8,
) -> torch.Tensor:
    """:func:`adaptive_aggregation` with PatchmatchNet's weights (eq. 7) computed on the fly.

    ``w_kd = feature_weight_k * sigmoid(4 - min(|inv_d(p + offset_k) - inv_d(p)| * scale, 8))``,
    ``inv_d(p + offset_k)`` sampled bilinearly with the position clamped into the map. On CPU
    without autograd one fused kernel computes the weights while it aggregates: the
    ``(B, K, D, H, W)`` weights and the K ``grid_sample`` passes over ``inverse`` never exist.
    Otherwise (gradients needed, or CUDA) the weights are built by
    :func:`depth_weights_reference` and passed to :func:`adaptive_aggregation`.

    Shape:
        cost, inverse (B, D, H, W), offsets (B, 2K, H, W), feature_weight (B, K, H, W), scale (B,)
        -> (B, D, H, W)
    """
    if not (isinstance(inverse, torch.Tensor) and isinstance(feature_weight, torch.Tensor) and isinstance(scale, torch.Tensor)):
        raise TypeError("depth_weighted_aggregation: inverse, feature_weight and scale must be torch.Tensors")
    if cost.dim() != 4 or offsets.dim() != 4 or offsets.shape[1] % 2:
        raise ValueError(
            f"depth_weighted_aggregation: expected cost (B, D, H, W) and offsets (B, 2K, H, W), "
            f"got {tuple(cost.shape)} and {tuple(offsets.shape)}"
        )
    B, D, H, W = cost.shape
    K = offsets.shape[1] // 2
    for name, value, shape in (
        ("inverse", inverse, (B, D, H, W)),
        ("feature_weight", feature_weight, (B, K, H, W)),
        ("scale", scale.reshape(-1), (B,)),
    ):
        if tuple(value.shape) != shape:
            raise ValueError(f"depth_weighted_aggregation: expected {name} {shape}, got {tuple(value.shape)}")
        if value.device != cost.device or value.dtype != cost.dtype:
            raise TypeError(
                f"depth_weighted_aggregation: {name} is {value.dtype} on {value.device}, cost is {cost.dtype} on {cost.device}"
            )
    scale = scale.reshape(B)
    grad = torch.is_grad_enabled() and any(
        t.requires_grad for t in (cost, offsets, inverse, feature_weight, scale)
    )
    if cost.device.type == "cpu" and not grad:
        check_inputs(cost, offsets, cost.new_empty(1).expand(B, K, D, H, W), eps)
        return _cpu_forward().depth_weighted_forward(cost, offsets, inverse, feature_weight, scale, eps)
    weights = depth_weights_reference(inverse, offsets, feature_weight, scale)
    return adaptive_aggregation(cost, offsets, weights, eps)
