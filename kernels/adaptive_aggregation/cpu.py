"""CPU kernels of adaptive cost aggregation (numba, ``parallel=True``).

One parallel task per output row ``(b, y)``: the K sample positions of the row are computed once
(corner indices and coefficients with the zero padding folded in) and reused for every depth
hypothesis; the inner loop runs along ``x`` so ``weights``, ``grad_weights`` and the output stay
contiguous. (A hypotheses-innermost variant on a channels-last cost was tried: no faster here.) The
``(B, K, D, H, W)`` sampled costs are never stored. Backward recomputes the samples; the cost
gradient is scattered into one private buffer per parallel chunk, summed afterwards (no atomics).
"""

from __future__ import annotations

import math

import numba
import numpy as np
import torch

from .._backend import numba_threads, prefer_workqueue_threading
from ._layout import depth_weighted_inputs

prefer_workqueue_threading()  # see its docstring: ~15x less call overhead next to torch's OpenMP


@numba.njit(inline="always")
def _row_coefficients(offsets, b, k, i, H, W, corner_index, value_coef, dx_coef, dy_coef):
    """For every x of row i and neighbour k: flat indices of the 4 bilinear corners (00, 01, 10,
    11) and their coefficients in the sample, d sample / d x and d sample / d y. Corners outside
    the map get coefficient 0 (and index 0), which is the zero padding."""
    for j in range(W):
        sx = j + offsets[b, 2 * k, i, j]
        sy = i + offsets[b, 2 * k + 1, i, j]
        if not (sx > -1 and sx < W and sy > -1 and sy < H):  # also rejects NaN
            for n in range(4):
                corner_index[j, n] = 0
                value_coef[j, n] = 0
                dx_coef[j, n] = 0
                dy_coef[j, n] = 0
            continue
        x0 = int(math.floor(sx))
        y0 = int(math.floor(sy))
        wx = sx - x0
        wy = sy - y0
        for n in range(4):
            right = n & 1
            down = n >> 1
            xc = x0 + right
            yc = y0 + down
            inside = xc >= 0 and xc < W and yc >= 0 and yc < H
            corner_index[j, n] = yc * W + xc if inside else 0
            fx = wx if right else 1 - wx
            fy = wy if down else 1 - wy
            sign_x = 1 if right else -1
            sign_y = 1 if down else -1
            value_coef[j, n] = fx * fy if inside else 0
            dx_coef[j, n] = sign_x * fy if inside else 0
            dy_coef[j, n] = sign_y * fx if inside else 0


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
            _row_coefficients(offsets, b, k, i, H, W, corner_index, value_coef, dx_coef, dy_coef)
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
def _adaptive_aggregation_bwd(
    grad_out, out, cost, offsets, weights, eps, need_cost, need_offsets, need_weights,
    grad_cost_chunks, grad_offsets, grad_weights,
):
    """Gradients; grad_cost_chunks (N, B, D, H*W) zeroed by the caller."""
    B, K, D, H, W = weights.shape
    num_chunks = grad_cost_chunks.shape[0]
    rows = B * H
    for chunk in numba.prange(num_chunks):
        corner_index = np.empty((W, 4), dtype=np.uint32)
        value_coef = np.empty((W, 4), dtype=cost.dtype)
        dx_coef = np.empty((W, 4), dtype=cost.dtype)
        dy_coef = np.empty((W, 4), dtype=cost.dtype)
        scaled_grad = np.empty((D, W), dtype=cost.dtype)
        grad_x = np.empty(W, dtype=cost.dtype)
        grad_y = np.empty(W, dtype=cost.dtype)
        for row in range(chunk * rows // num_chunks, (chunk + 1) * rows // num_chunks):
            b = row // H
            i = row - b * H
            # scaled_grad = grad_out / (sum_k w_k + eps)
            for d in range(D):
                for j in range(W):
                    scaled_grad[d, j] = eps
            for k in range(K):
                for d in range(D):
                    for j in range(W):
                        scaled_grad[d, j] += weights[b, k, d, i, j]
            for d in range(D):
                for j in range(W):
                    scaled_grad[d, j] = grad_out[b, d, i, j] / scaled_grad[d, j]
            for k in range(K):
                _row_coefficients(offsets, b, k, i, H, W, corner_index, value_coef, dx_coef, dy_coef)
                grad_x[:] = 0
                grad_y[:] = 0
                for d in range(D):
                    for j in range(W):
                        g = scaled_grad[d, j]
                        c0 = cost[b, d, corner_index[j, 0]]
                        c1 = cost[b, d, corner_index[j, 1]]
                        c2 = cost[b, d, corner_index[j, 2]]
                        c3 = cost[b, d, corner_index[j, 3]]
                        if need_weights:
                            sample = value_coef[j, 0] * c0 + value_coef[j, 1] * c1 + value_coef[j, 2] * c2 + value_coef[j, 3] * c3
                            # d out / d w_k = (sample_k - out) / (sum_k w_k + eps)
                            grad_weights[b, k, d, i, j] = g * (sample - out[b, d, i, j])
                        a = g * weights[b, k, d, i, j]
                        if need_offsets:
                            grad_x[j] += a * (dx_coef[j, 0] * c0 + dx_coef[j, 1] * c1 + dx_coef[j, 2] * c2 + dx_coef[j, 3] * c3)
                            grad_y[j] += a * (dy_coef[j, 0] * c0 + dy_coef[j, 1] * c1 + dy_coef[j, 2] * c2 + dy_coef[j, 3] * c3)
                        if need_cost:
                            grad_cost_chunks[chunk, b, d, corner_index[j, 0]] += value_coef[j, 0] * a
                            grad_cost_chunks[chunk, b, d, corner_index[j, 1]] += value_coef[j, 1] * a
                            grad_cost_chunks[chunk, b, d, corner_index[j, 2]] += value_coef[j, 2] * a
                            grad_cost_chunks[chunk, b, d, corner_index[j, 3]] += value_coef[j, 3] * a
                if need_offsets:
                    for j in range(W):
                        grad_offsets[b, 2 * k, i, j] = grad_x[j]
                        grad_offsets[b, 2 * k + 1, i, j] = grad_y[j]


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
    """Gradients (grad_cost, grad_offsets, grad_weights), each None where not needed."""
    cost, offsets, weights, out = saved
    B, D, H, W = out.shape
    np_dtype = cost.numpy().dtype
    grad_out = grad_out.contiguous()
    grad_offsets = torch.empty(offsets.shape if need_offsets else (1, 1, 1, 1), dtype=out.dtype)
    grad_weights = torch.empty(weights.shape if need_weights else (1, 1, 1, 1, 1), dtype=out.dtype)
    with numba_threads() as num_threads:
        num_chunks = max(1, min(num_threads, B * H))
        grad_cost_chunks = torch.zeros((num_chunks, B, D, H * W) if need_cost else (num_chunks, 1, 1, 1), dtype=out.dtype)
        _adaptive_aggregation_bwd(
            grad_out.numpy(), out.numpy(), cost.numpy(), offsets.numpy(), weights.numpy(),
            np_dtype.type(eps), need_cost, need_offsets, need_weights,
            grad_cost_chunks.numpy(), grad_offsets.numpy(), grad_weights.numpy(),
        )
    grad_cost = grad_cost_chunks.sum(dim=0).view(B, D, H, W) if need_cost else None
    return grad_cost, (grad_offsets if need_offsets else None), (grad_weights if need_weights else None)


@numba.njit(inline="always")
def _border_corners(offsets, b, k, i, j, H, W):
    """Pixel (i, j)'s neighbour k with its position clamped into the map (``grid_sample``'s border
    padding with ``align_corners=True``; NaN reads pixel 0): corners x0, y0, x1, y1 and the
    fractions wx, wy."""
    sx = j + offsets[b, 2 * k, i, j]
    sy = i + offsets[b, 2 * k + 1, i, j]
    sx = min(max(sx, 0.0), W - 1.0) if sx == sx else 0.0
    sy = min(max(sy, 0.0), H - 1.0) if sy == sy else 0.0
    x0 = int(math.floor(sx))
    y0 = int(math.floor(sy))
    return x0, y0, min(x0 + 1, W - 1), min(y0 + 1, H - 1), sx - x0, sy - y0


@numba.njit(inline="always")
def _border_coefficients(offsets, b, k, i, H, W, border_index, border_coef):
    """For every x of row i and neighbour k: the 4 bilinear corners of the border-clamped sample
    position (:func:`_border_corners`) as flat indices, and their coefficients."""
    for j in range(W):
        x0, y0, x1, y1, wx, wy = _border_corners(offsets, b, k, i, j, H, W)
        border_index[j, 0] = y0 * W + x0
        border_index[j, 1] = y0 * W + x1
        border_index[j, 2] = y1 * W + x0
        border_index[j, 3] = y1 * W + x1
        border_coef[j, 0] = (1 - wx) * (1 - wy)
        border_coef[j, 1] = wx * (1 - wy)
        border_coef[j, 2] = (1 - wx) * wy
        border_coef[j, 3] = wx * wy


@numba.njit(inline="always")
def _sigmoid_4_minus(x):
    """sigmoid(4 - x) for x in [0, 8] without a call to exp (so that the loop around it
    vectorises): e^(x - 4) = (e^y)^16 with y = (x - 4) / 16 in [-1/4, 1/4], e^y by its Taylor
    series to y^6 (relative error < 1.3e-8, < 2.1e-7 after the four squarings)."""
    y = (x - 4.0) * 0.0625
    e = 1.0 + y * (1.0 + y * 0.5 * (1.0 + y * (1.0 / 3.0) * (1.0 + y * 0.25 * (1.0 + y * 0.2 * (1.0 + y * (1.0 / 6.0))))))
    e = e * e
    e = e * e
    e = e * e
    e = e * e
    return 1.0 / (1.0 + e)


@numba.njit(parallel=True, cache=True)
def _depth_weighted_fwd(cost, offsets, inverse, feature_weight, scale, eps, out):
    """cost, inverse (B, D, H*W); offsets (B, 2K, H, W); feature_weight (B, K, H, W); scale (B,)
    -> out (B, D, H, W). The depth weight of neighbour k and hypothesis d is computed here from
    the border-clamped bilinear sample of ``inverse`` at the neighbour's position. Per (k, d) the
    row runs three passes: the gathers (cost sample, distance), the weight (pure arithmetic, which
    LLVM vectorises), the sums."""
    B, K, H, W = feature_weight.shape
    D = cost.shape[1]
    for row in numba.prange(B * H):
        b = row // H
        i = row - b * H
        corner_index = np.empty((W, 4), dtype=np.uint32)
        value_coef = np.empty((W, 4), dtype=cost.dtype)
        dx_coef = np.empty((W, 4), dtype=cost.dtype)
        dy_coef = np.empty((W, 4), dtype=cost.dtype)
        border_index = np.empty((W, 4), dtype=np.uint32)
        border_coef = np.empty((W, 4), dtype=cost.dtype)
        samples = np.empty(W, dtype=cost.dtype)
        distance = np.empty(W, dtype=np.float64)
        numerator = np.zeros((D, W), dtype=cost.dtype)
        denominator = np.zeros((D, W), dtype=cost.dtype)
        s = np.float64(scale[b])
        centre = i * W
        for k in range(K):
            _row_coefficients(offsets, b, k, i, H, W, corner_index, value_coef, dx_coef, dy_coef)
            _border_coefficients(offsets, b, k, i, H, W, border_index, border_coef)
            for d in range(D):
                for j in range(W):
                    samples[j] = (
                        value_coef[j, 0] * cost[b, d, corner_index[j, 0]]
                        + value_coef[j, 1] * cost[b, d, corner_index[j, 1]]
                        + value_coef[j, 2] * cost[b, d, corner_index[j, 2]]
                        + value_coef[j, 3] * cost[b, d, corner_index[j, 3]]
                    )
                    neighbour = (
                        border_coef[j, 0] * inverse[b, d, border_index[j, 0]]
                        + border_coef[j, 1] * inverse[b, d, border_index[j, 1]]
                        + border_coef[j, 2] * inverse[b, d, border_index[j, 2]]
                        + border_coef[j, 3] * inverse[b, d, border_index[j, 3]]
                    )
                    distance[j] = abs(neighbour - inverse[b, d, centre + j])
                for j in range(W):
                    weight = feature_weight[b, k, i, j] * _sigmoid_4_minus(min(distance[j] * s, 8.0))
                    numerator[d, j] += weight * samples[j]
                    denominator[d, j] += weight
        for d in range(D):
            for j in range(W):
                out[b, d, i, j] = numerator[d, j] / (denominator[d, j] + eps)


def depth_weighted_forward(cost, offsets, inverse, feature_weight, scale, eps):
    """Inference-only forward of :func:`kernels.adaptive_aggregation.depth_weighted_aggregation`
    on CPU tensors (no autograd)."""
    cost, offsets, inverse, feature_weight, scale, out = depth_weighted_inputs(cost, offsets, inverse, feature_weight, scale)
    eps_typed = cost.numpy().dtype.type(eps)
    with numba_threads():
        _depth_weighted_fwd(
            cost.numpy(), offsets.numpy(), inverse.numpy(), feature_weight.numpy(), scale.numpy(), eps_typed, out.numpy()
        )
    return out


@numba.njit(parallel=True, cache=True)
def _neighbour_correlation_fwd(feature, offsets, num_groups, out):
    """feature (B, H, W, C) channels-last, offsets (B, 2K, H, W) -> out (B, G, K, H, W). Per pixel
    and neighbour: the 4 border-clamped corners blended channel by channel and multiplied by the
    centre (one flat loop over C that vectorises), then the group means."""
    B, H, W, C = feature.shape
    K = offsets.shape[1] // 2
    group_size = C // num_groups
    inv_group_size = feature.dtype.type(1.0 / group_size)
    for row in numba.prange(B * H):
        b = row // H
        i = row - b * H
        products = np.empty(C, dtype=feature.dtype)
        for j in range(W):
            for k in range(K):
                x0, y0, x1, y1, wx, wy = _border_corners(offsets, b, k, i, j, H, W)
                w00 = feature.dtype.type((1 - wx) * (1 - wy))
                w01 = feature.dtype.type(wx * (1 - wy))
                w10 = feature.dtype.type((1 - wx) * wy)
                w11 = feature.dtype.type(wx * wy)
                for c in range(C):
                    products[c] = feature[b, i, j, c] * (
                        w00 * feature[b, y0, x0, c]
                        + w01 * feature[b, y0, x1, c]
                        + w10 * feature[b, y1, x0, c]
                        + w11 * feature[b, y1, x1, c]
                    )
                for g in range(num_groups):
                    acc = products[g * group_size]
                    for c in range(g * group_size + 1, (g + 1) * group_size):
                        acc += products[c]
                    out[b, g, k, i, j] = acc * inv_group_size


def neighbour_correlation_forward(feature, offsets, num_groups):
    """Inference-only forward of :func:`kernels.adaptive_aggregation.neighbour_correlation` on CPU."""
    B, C, H, W = feature.shape
    K = offsets.shape[1] // 2
    channels_last = feature.detach().permute(0, 2, 3, 1).contiguous()
    offsets = offsets.detach().contiguous()
    out = torch.empty((B, num_groups, K, H, W), dtype=feature.dtype)
    with numba_threads():
        _neighbour_correlation_fwd(channels_last.numpy(), offsets.numpy(), num_groups, out.numpy())
    return out
