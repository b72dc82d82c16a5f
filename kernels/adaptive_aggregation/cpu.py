"""CPU kernels of adaptive cost aggregation (numba, ``parallel=True``).

One parallel task per output row ``(b, y)``: the K sample positions of the row are computed once
(corner indices and coefficients with the zero padding folded in) and reused for every depth
hypothesis; the inner loop runs along ``x`` so ``weights``, ``grad_weights`` and the output stay
contiguous. (A hypotheses-innermost variant on a channels-last cost was tried: no faster here.) The
``(B, K, D, H, W)`` sampled costs are never stored. Backward recomputes the samples in two
kernels: the offset and weight gradients per row (gathers only), the cost gradient per batch item
and block of hypotheses (a sample of plane d reads plane d only, so each task scatters into its own
planes: no atomics, and no per-thread copy of the cost gradient, so the backward's memory does not
grow with the thread count).
"""

from __future__ import annotations

import numba
import numpy as np
import torch

from .._backend import numba_threads, prefer_workqueue_threading
from .._bilinear_cpu import row_coefficients, row_value_coefficients

prefer_workqueue_threading()  # see its docstring: ~15x less call overhead next to torch's OpenMP


@numba.njit(parallel=True, cache=True)
def _adaptive_aggregation_fwd(cost, offsets, weights, eps, out):
    """cost (B, D, H*W), offsets (B, 2K, H, W), weights (B, K, D, H, W) -> out (B, D, H, W)."""
    B, K, D, H, W = weights.shape
    for row in numba.prange(B * H):
        b = row // H
        i = row - b * H
        corner_index = np.empty((W, 4), dtype=np.uint32)
        value_coef = np.empty((W, 4), dtype=cost.dtype)
        dx_coef = np.empty((W, 4), dtype=cost.dtype)
        dy_coef = np.empty((W, 4), dtype=cost.dtype)
        numerator = np.zeros((D, W), dtype=cost.dtype)
        denominator = np.zeros((D, W), dtype=cost.dtype)
        for k in range(K):
            row_coefficients(offsets, b, k, i, H, W, corner_index, value_coef, dx_coef, dy_coef)
            for d in range(D):
                for j in range(W):
                    sample = (
                        value_coef[j, 0] * cost[b, d, corner_index[j, 0]]
                        + value_coef[j, 1] * cost[b, d, corner_index[j, 1]]
                        + value_coef[j, 2] * cost[b, d, corner_index[j, 2]]
                        + value_coef[j, 3] * cost[b, d, corner_index[j, 3]]
                    )
                    weight = weights[b, k, d, i, j]
                    numerator[d, j] += weight * sample
                    denominator[d, j] += weight
        for d in range(D):
            for j in range(W):
                out[b, d, i, j] = numerator[d, j] / (denominator[d, j] + eps)


@numba.njit(parallel=True, cache=True)
def _adaptive_aggregation_bwd_rows(
    scaled_grad, out, cost, offsets, weights, need_offsets, need_weights, grad_offsets, grad_weights
):
    """Offset and weight gradients, one parallel task per row (b, y); nothing is scattered.

    scaled_grad (B, D, H, W) = grad_out / (sum_k w_k + eps); cost (B, D, H*W)."""
    B, K, D, H, W = weights.shape
    for row in numba.prange(B * H):
        b = row // H
        i = row - b * H
        corner_index = np.empty((W, 4), dtype=np.uint32)
        value_coef = np.empty((W, 4), dtype=cost.dtype)
        dx_coef = np.empty((W, 4), dtype=cost.dtype)
        dy_coef = np.empty((W, 4), dtype=cost.dtype)
        grad_x = np.empty(W, dtype=cost.dtype)
        grad_y = np.empty(W, dtype=cost.dtype)
        for k in range(K):
            row_coefficients(offsets, b, k, i, H, W, corner_index, value_coef, dx_coef, dy_coef)
            grad_x[:] = 0
            grad_y[:] = 0
            for d in range(D):
                for j in range(W):
                    g = scaled_grad[b, d, i, j]
                    c0 = cost[b, d, corner_index[j, 0]]
                    c1 = cost[b, d, corner_index[j, 1]]
                    c2 = cost[b, d, corner_index[j, 2]]
                    c3 = cost[b, d, corner_index[j, 3]]
                    if need_weights:
                        sample = value_coef[j, 0] * c0 + value_coef[j, 1] * c1 + value_coef[j, 2] * c2 + value_coef[j, 3] * c3
                        # d out / d w_k = (sample_k - out) / (sum_k w_k + eps)
                        grad_weights[b, k, d, i, j] = g * (sample - out[b, d, i, j])
                    if need_offsets:
                        a = g * weights[b, k, d, i, j]
                        grad_x[j] += a * (dx_coef[j, 0] * c0 + dx_coef[j, 1] * c1 + dx_coef[j, 2] * c2 + dx_coef[j, 3] * c3)
                        grad_y[j] += a * (dy_coef[j, 0] * c0 + dy_coef[j, 1] * c1 + dy_coef[j, 2] * c2 + dy_coef[j, 3] * c3)
            if need_offsets:
                for j in range(W):
                    grad_offsets[b, 2 * k, i, j] = grad_x[j]
                    grad_offsets[b, 2 * k + 1, i, j] = grad_y[j]


@numba.njit(parallel=True, cache=True)
def _adaptive_aggregation_bwd_cost(scaled_grad, offsets, weights, num_blocks, grad_cost):
    """Cost gradient, one parallel task per (b, block of hypotheses): a sample of plane d reads
    plane d only, so each task scatters into its own planes of ``grad_cost`` (B, D, H*W), zeroed
    by the caller; no per-thread copies, no atomics. A task computes each row's coefficients once
    for its whole block."""
    B, K, D, H, W = weights.shape
    for task in numba.prange(B * num_blocks):
        b = task // num_blocks
        block = task - b * num_blocks
        first, stop = block * D // num_blocks, (block + 1) * D // num_blocks
        corner_index = np.empty((W, 4), dtype=np.uint32)
        value_coef = np.empty((W, 4), dtype=grad_cost.dtype)
        for i in range(H):
            for k in range(K):
                row_value_coefficients(offsets, b, k, i, H, W, corner_index, value_coef)
                for d in range(first, stop):
                    for j in range(W):
                        a = scaled_grad[b, d, i, j] * weights[b, k, d, i, j]
                        grad_cost[b, d, corner_index[j, 0]] += value_coef[j, 0] * a
                        grad_cost[b, d, corner_index[j, 1]] += value_coef[j, 1] * a
                        grad_cost[b, d, corner_index[j, 2]] += value_coef[j, 2] * a
                        grad_cost[b, d, corner_index[j, 3]] += value_coef[j, 3] * a


def forward(cost, offsets, weights, eps):
    """Forward on CPU tensors; returns (out, saved) with saved for :func:`backward`.

    Shape:
        cost (B, D, H, W), offsets (B, 2K, H, W), weights (B, K, D, H, W) -> out (B, D, H, W)
    """
    B, D, H, W = cost.shape
    cost = cost.detach().reshape(B, D, H * W).contiguous()
    offsets = offsets.detach().contiguous()
    weights = weights.detach().contiguous()
    out = torch.empty((B, D, H, W), dtype=cost.dtype)
    eps_typed = cost.numpy().dtype.type(eps)
    with numba_threads():
        _adaptive_aggregation_fwd(cost.numpy(), offsets.numpy(), weights.numpy(), eps_typed, out.numpy())
    return out, (cost, offsets, weights, out)


def backward(saved, grad_out, eps, need_cost: bool, need_offsets: bool, need_weights: bool):
    """Gradients (grad_cost, grad_offsets, grad_weights), each None where not needed.

    Memory beyond the gradients: one (B, D, H, W) tensor (the scaled output gradient), whatever
    the thread count."""
    cost, offsets, weights, out = saved
    B, D, H, W = out.shape
    scaled_grad = (grad_out / (weights.sum(dim=1) + eps)).contiguous()
    grad_offsets = torch.empty(offsets.shape if need_offsets else (1, 1, 1, 1), dtype=out.dtype)
    grad_weights = torch.empty(weights.shape if need_weights else (1, 1, 1, 1, 1), dtype=out.dtype)
    grad_cost = torch.zeros((B, D, H * W), dtype=out.dtype) if need_cost else None
    with numba_threads() as num_threads:
        if need_offsets or need_weights:
            _adaptive_aggregation_bwd_rows(
                scaled_grad.numpy(), out.numpy(), cost.numpy(), offsets.numpy(), weights.numpy(),
                need_offsets, need_weights, grad_offsets.numpy(), grad_weights.numpy(),
            )
        if need_cost:
            # as many tasks as threads where the hypotheses allow: fewer row-coefficient recomputations
            num_blocks = max(1, min(D, -(-num_threads // B)))
            _adaptive_aggregation_bwd_cost(scaled_grad.numpy(), offsets.numpy(), weights.numpy(), num_blocks, grad_cost.numpy())
    return (
        grad_cost.view(B, D, H, W) if need_cost else None,
        grad_offsets if need_offsets else None,
        grad_weights if need_weights else None,
    )
