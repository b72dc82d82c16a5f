"""PatchmatchNet's adaptive spatial cost aggregation.

Public: :func:`adaptive_aggregation`; reference twin: :func:`adaptive_aggregation_reference` (plain
torch, ``grid_sample``, materialises the ``(B, K, D, H, W)`` samples). The public function checks
its inputs and runs one ``torch.autograd.Function`` that dispatches by device to ``cpu.py``
(numba ``parallel=True``) or ``cuda.py`` (numba.cuda; why numba.cuda: see that module); neither
stores the sampled costs.
"""

from __future__ import annotations

import torch

from .reference import (
    adaptive_aggregation_reference,
    depth_weighted_aggregation_reference,
    depth_weights_reference,
    neighbour_correlation_reference,
)

__all__ = [
    "adaptive_aggregation",
    "adaptive_aggregation_reference",
    "depth_weighted_aggregation",
    "depth_weighted_aggregation_reference",
    "depth_weights_reference",
    "neighbour_correlation",
    "neighbour_correlation_reference",
]


def _backend(device: torch.device):
    """The kernel module for a device (imported lazily: CUDA code never loads on a CPU run)."""
    if device.type == "cpu":
        from . import cpu

        return cpu
    if device.type == "cuda":
        from . import cuda

        return cuda
    return None


def _cpu_forwards():
    """The module with the inference-only CPU forwards: the native library's where it is built
    (no numba in the process), else numba's."""
    from .. import _native

    if _native.library() is not None:
        from . import native

        return native
    from . import cpu

    return cpu


class _AdaptiveAggregation(torch.autograd.Function):
    """Fused sample + weighted mean; saves inputs and output, never the sampled (B, K, D, H, W)."""

    @staticmethod
    def forward(ctx, cost, offsets, weights, eps):
        backend = _backend(cost.device)
        out, saved = backend.forward(cost, offsets, weights, eps)
        ctx.backend = backend
        ctx.eps = eps
        ctx.save_for_backward(*saved)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        need = ctx.needs_input_grad[:3]
        if not any(need):
            return None, None, None, None
        grads = ctx.backend.backward(ctx.saved_tensors, grad_out, ctx.eps, *need)
        return (*grads, None)


def _check_offsets(op: str, offsets: torch.Tensor, B: int, H: int, W: int) -> None:
    if offsets.dim() != 4 or offsets.shape[0] != B or offsets.shape[2:] != (H, W) or offsets.shape[1] % 2 or offsets.shape[1] == 0:
        raise ValueError(f"{op}: expected offsets ({B}, 2K, {H}, {W}) with K >= 1, got {tuple(offsets.shape)}")


def _check_inputs(cost, offsets, weights, eps):
    for name, value in (("cost", cost), ("offsets", offsets), ("weights", weights)):
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"adaptive_aggregation: {name} must be a torch.Tensor, got {type(value).__name__}")
        if value.dtype not in (torch.float32, torch.float64):
            raise TypeError(f"adaptive_aggregation: {name} must be float32 or float64, got {value.dtype}")
        if value.dtype != cost.dtype:
            raise TypeError(f"adaptive_aggregation: {name} has dtype {value.dtype}, cost has {cost.dtype}")
        if value.device != cost.device:
            raise ValueError(f"adaptive_aggregation: {name} is on {value.device}, cost is on {cost.device}")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps >= 0:
        raise ValueError(f"adaptive_aggregation: eps must be a float >= 0, got {eps!r}")
    if cost.dim() != 4 or 0 in cost.shape:
        raise ValueError(f"adaptive_aggregation: expected cost (B, D, H, W), got {tuple(cost.shape)}")
    B, D, H, W = cost.shape
    _check_offsets("adaptive_aggregation", offsets, B, H, W)
    K = offsets.shape[1] // 2
    if tuple(weights.shape) != (B, K, D, H, W):
        raise ValueError(f"adaptive_aggregation: expected weights {(B, K, D, H, W)}, got {tuple(weights.shape)}")


def adaptive_aggregation(
    cost: torch.Tensor, offsets: torch.Tensor, weights: torch.Tensor, eps: float = 1e-8
) -> torch.Tensor:
    """Weighted mean of costs sampled bilinearly at K offset neighbours (PatchmatchNet eq. 6).

    ``out[b, d, y, x] = sum_k w_k * cost[b, d](x + offsets[b, 2k, y, x], y + offsets[b, 2k + 1, y, x])
    / (sum_k w_k + eps)`` with ``w_k = weights[b, k, d, y, x]``; offsets in pixel-index units
    (offset 0 is the pixel itself); samples outside the map read zeros.

    Args:
        cost: per-hypothesis matching cost.
        offsets: (dx_k, dy_k) interleaved per neighbour, fixed pattern plus learned offsets.
        weights: per-neighbour, per-hypothesis weights (PatchmatchNet: feature x depth weights).
        eps: added to the sum of weights.

    Returns:
        The aggregated cost; differentiable w.r.t. cost, offsets and weights.

    Shape:
        cost (B, D, H, W), offsets (B, 2K, H, W), weights (B, K, D, H, W) -> (B, D, H, W)
    """
    _check_inputs(cost, offsets, weights, eps)
    if _backend(cost.device) is None:
        return adaptive_aggregation_reference(cost, offsets, weights, eps)
    return _AdaptiveAggregation.apply(cost, offsets, weights, float(eps))


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
        _check_inputs(cost, offsets, cost.new_empty(1).expand(B, K, D, H, W), eps)
        return _cpu_forwards().depth_weighted_forward(cost, offsets, inverse, feature_weight, scale, eps)
    weights = depth_weights_reference(inverse, offsets, feature_weight, scale)
    return adaptive_aggregation(cost, offsets, weights, eps)


def neighbour_correlation(feature: torch.Tensor, offsets: torch.Tensor, num_groups: int) -> torch.Tensor:
    """Group-wise correlation of each pixel's feature with its K offset neighbours' features.

    ``out[b, g, k, y, x]`` = mean over group g's channels of ``feature(p) * feature(p + offset_k)``,
    the neighbour sampled bilinearly with its position clamped into the map: what PatchmatchNet's
    feature weights of the aggregation are computed from. On CPU without autograd one numba
    kernel (no sampled (B, C, H, W) map per neighbour); otherwise
    :func:`neighbour_correlation_reference` (``grid_sample``; differentiable).

    Shape:
        feature (B, C, H, W), offsets (B, 2K, H, W) -> (B, G, K, H, W)
    """
    for name, value in (("feature", feature), ("offsets", offsets)):
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"neighbour_correlation: {name} must be a torch.Tensor, got {type(value).__name__}")
        if value.dtype not in (torch.float32, torch.float64):
            raise TypeError(f"neighbour_correlation: {name} must be float32 or float64, got {value.dtype}")
    if feature.dim() != 4 or 0 in feature.shape:
        raise ValueError(f"neighbour_correlation: expected feature (B, C, H, W), got {tuple(feature.shape)}")
    B, C, H, W = feature.shape
    _check_offsets("neighbour_correlation", offsets, B, H, W)
    if offsets.dtype != feature.dtype or offsets.device != feature.device:
        raise TypeError(
            f"neighbour_correlation: offsets are {offsets.dtype} on {offsets.device}, feature {feature.dtype} on {feature.device}"
        )
    if isinstance(num_groups, bool) or not isinstance(num_groups, int) or num_groups < 1 or C % num_groups:
        raise ValueError(f"neighbour_correlation: num_groups must divide the {C} channels, got {num_groups!r}")
    grad = torch.is_grad_enabled() and (feature.requires_grad or offsets.requires_grad)
    if feature.device.type == "cpu" and not grad:
        return _cpu_forwards().neighbour_correlation_forward(feature, offsets, num_groups)
    return neighbour_correlation_reference(feature, offsets, num_groups)
