"""CPU kernels of adaptive cost aggregation (numba, ``parallel=True``).

The cost is copied once into a zero-bordered map (one zero column each side, one zero row above
and two below, :func:`_padded_cost`): every sample position inside ``(-1, W) x (-1, H)`` then has
its four bilinear corners at ``base, base + 1, base + Wp, base + Wp + 1`` of the padded plane
with no bounds test in the inner loops, and a sample entirely outside the map points at the two
all-zero bottom rows with coefficient 0. Per row and neighbour the kernels keep one ``int32``
base index and the coefficients (in the cost's dtype) laid out ``(4, W)``, so the loops over
``x`` read them contiguously. The corner terms are summed in the same order and with the same
coefficient values as without the border (a corner outside the map contributes ``coef * 0``), so
the results are those of the unpadded formulation.

LLVM does not vectorise loops with gathers, so the forward and the rows backward first copy the
four corner values of a row's samples into contiguous ``(4, W)`` rows (a scalar loop of loads and
stores), then do their arithmetic on contiguous rows, which LLVM vectorises; each element's
arithmetic is unchanged. (The same split of the cost gradient's scatter, and a branch-free
coefficient loop, measured slower or no faster.)

Forward: one parallel task per output row ``(b, y)``, neighbours outer, hypotheses, then ``x``
inner; it also saves ``sum_k w_k + eps`` (one ``(B, D, H, W)`` tensor) so the backward does not
re-read the ``(B, K, D, H, W)`` weights to recompute it. The sampled costs are never stored.

Backward, two kernels: the offset and weight gradients per row (gathers only), and the cost
gradient per batch item and block of hypotheses (a sample of plane d reads plane d only, so each
task scatters into its own planes of a padded gradient map: no atomics and no per-thread copy, so
the backward's memory does not grow with the thread count, and each plane is summed in one fixed
order whatever the thread count).

Measured (bench/results/adaptive-aggregation-cpu-2core-2026-12-07.json): forward + backward
(gradients to all three inputs) against :func:`adaptive_aggregation_reference` at the benchmark's
four stage sizes (batch 1, 640x512 image, K=9), reference, this kernel and the kernel before the
zero border interleaved round by round on the shared 2-core machine (load average ~8). Wall time
with 2 threads, median of per-round ratios reference / kernel: 3.5x (stage 3, D=48), 4.1x
(stage 3, D=16), 3.6x (stage 2), 3.1x (stage 1); before 3.4x, 3.5x, 3.3x, 2.6x. Most of those
rounds fell in a phase where the reference's 2-thread torch calls stall, which inflates the
ratios. CPU time with 1 thread (the work done, less sensitive to the other jobs): 1.4x, 1.07x,
1.9x, 1.9x (before 1.3x, 0.9x, 1.5x, 1.4x; about 20% spread between runs): half the reference's
work is not reached at any stage, and at stage 3 with D=16 the kernel does about as much work as
the reference. What remains is the scalar gathers and the scatter of the cost gradient.
"""

from __future__ import annotations

import math

import numba
import numpy as np
import torch

from .._backend import numba_threads, prefer_workqueue_threading

prefer_workqueue_threading()  # see its docstring: ~15x less call overhead next to torch's OpenMP


@numba.njit(inline="always")
def _row_corners(offsets, b, k, i, H, W, base, value_coef, fractions, with_fractions):
    """Row i, neighbour k: for every x the flat index ``base[x]`` of the top-left corner in the
    padded plane (row stride ``W + 2``) and the corner coefficients (00, 01, 10, 11) of the
    sample, ``value_coef`` (4, W); with ``with_fractions`` also ``fractions`` (4, W) = (1 - wx,
    wx, 1 - wy, wy), from which d sample / d x = (1 - wy)(c01 - c00) + wy (c11 - c10) and
    d sample / d y likewise. A position outside ``(-1, W) x (-1, H)`` (or NaN) gets coefficients
    and fractions 0 and the base of the all-zero bottom rows."""
    Wp = W + 2
    outside = (H + 1) * Wp
    for j in range(W):
        sx = j + offsets[b, 2 * k, i, j]
        sy = i + offsets[b, 2 * k + 1, i, j]
        if not (sx > -1 and sx < W and sy > -1 and sy < H):  # also rejects NaN
            base[j] = outside
            for n in range(4):
                value_coef[n, j] = 0
                if with_fractions:
                    fractions[n, j] = 0
            continue
        x0 = int(math.floor(sx))
        y0 = int(math.floor(sy))
        wx = sx - x0
        wy = sy - y0
        base[j] = (y0 + 1) * Wp + x0 + 1
        value_coef[0, j] = (1 - wx) * (1 - wy)
        value_coef[1, j] = wx * (1 - wy)
        value_coef[2, j] = (1 - wx) * wy
        value_coef[3, j] = wx * wy
        if with_fractions:
            fractions[0, j] = 1 - wx
            fractions[1, j] = wx
            fractions[2, j] = 1 - wy
            fractions[3, j] = wy


@numba.njit(inline="always")
def _gather_corners(plane, base, Wp, corners):
    """The four corner values of every sample of a row into ``corners`` (4, W), so the arithmetic
    that follows runs on contiguous rows (which LLVM vectorises; it does not vectorise gathers)."""
    for j in range(base.shape[0]):
        p = base[j]
        corners[0, j] = plane[p]
        corners[1, j] = plane[p + 1]
        corners[2, j] = plane[p + Wp]
        corners[3, j] = plane[p + Wp + 1]


@numba.njit(parallel=True, cache=True)
def _adaptive_aggregation_fwd(cost, offsets, weights, eps, out, denominator):
    """cost (B, D, (H+3)*(W+2)) padded, offsets (B, 2K, H, W), weights (B, K, D, H, W)
    -> out (B, D, H, W) and denominator = sum_k w_k + eps (B, D, H, W)."""
    B, K, D, H, W = weights.shape
    Wp = W + 2
    for row in numba.prange(B * H):
        b = row // H
        i = row - b * H
        base = np.empty(W, dtype=np.int32)
        value_coef = np.empty((4, W), dtype=cost.dtype)
        numerator = np.zeros((D, W), dtype=cost.dtype)
        weight_sum = np.zeros((D, W), dtype=cost.dtype)
        corners = np.empty((4, W), dtype=cost.dtype)
        for k in range(K):
            _row_corners(offsets, b, k, i, H, W, base, value_coef, value_coef, False)
            for d in range(D):
                _gather_corners(cost[b, d], base, Wp, corners)
                w_row = weights[b, k, d, i]
                num_row = numerator[d]
                sum_row = weight_sum[d]
                for j in range(W):
                    sample = (
                        value_coef[0, j] * corners[0, j]
                        + value_coef[1, j] * corners[1, j]
                        + value_coef[2, j] * corners[2, j]
                        + value_coef[3, j] * corners[3, j]
                    )
                    weight = w_row[j]
                    num_row[j] += weight * sample
                    sum_row[j] += weight
        for d in range(D):
            for j in range(W):
                total = weight_sum[d, j] + eps
                denominator[b, d, i, j] = total
                out[b, d, i, j] = numerator[d, j] / total


@numba.njit(parallel=True, cache=True)
def _adaptive_aggregation_bwd_rows(
    grad_out, denominator, out, cost, offsets, weights, need_offsets, need_weights, grad_offsets, grad_weights
):
    """Offset and weight gradients, one parallel task per row (b, y); nothing is scattered.

    grad_out, denominator, out (B, D, H, W); cost (B, D, (H+3)*(W+2)) padded. The x-derivative
    of a sample is summed as ``-(1-wy) c00 + (1-wy) c01 - wy c10 + wy c11``, left to right (and
    the y-derivative ``-(1-wx) c00 - wx c01 + (1-wx) c10 + wx c11``): the same products and order
    as with per-corner signed coefficients, in fewer loads."""
    B, K, D, H, W = weights.shape
    Wp = W + 2
    for row in numba.prange(B * H):
        b = row // H
        i = row - b * H
        base = np.empty(W, dtype=np.int32)
        value_coef = np.empty((4, W), dtype=cost.dtype)
        fractions = np.empty((4, W), dtype=cost.dtype)
        grad_x = np.empty(W, dtype=cost.dtype)
        grad_y = np.empty(W, dtype=cost.dtype)
        corners = np.empty((4, W), dtype=cost.dtype)
        scaled_grad = np.empty((D, W), dtype=cost.dtype)
        for d in range(D):
            for j in range(W):
                scaled_grad[d, j] = grad_out[b, d, i, j] / denominator[b, d, i, j]
        for k in range(K):
            _row_corners(offsets, b, k, i, H, W, base, value_coef, fractions, need_offsets)
            grad_x[:] = 0
            grad_y[:] = 0
            for d in range(D):
                _gather_corners(cost[b, d], base, Wp, corners)
                g_row = scaled_grad[d]
                out_row = out[b, d, i]
                w_row = weights[b, k, d, i]
                gw_row = grad_weights[b, k, d, i] if need_weights else grad_x
                if need_offsets and need_weights:
                    for j in range(W):
                        g = g_row[j]
                        c0, c1, c2, c3 = corners[0, j], corners[1, j], corners[2, j], corners[3, j]
                        sample = value_coef[0, j] * c0 + value_coef[1, j] * c1 + value_coef[2, j] * c2 + value_coef[3, j] * c3
                        # d out / d w_k = (sample_k - out) / (sum_k w_k + eps)
                        gw_row[j] = g * (sample - out_row[j])
                        a = g * w_row[j]
                        left, right, top, bottom = fractions[0, j], fractions[1, j], fractions[2, j], fractions[3, j]
                        grad_x[j] += a * (-(top * c0) + top * c1 - bottom * c2 + bottom * c3)
                        grad_y[j] += a * (-(left * c0) - right * c1 + left * c2 + right * c3)
                elif need_weights:
                    for j in range(W):
                        sample = (
                            value_coef[0, j] * corners[0, j]
                            + value_coef[1, j] * corners[1, j]
                            + value_coef[2, j] * corners[2, j]
                            + value_coef[3, j] * corners[3, j]
                        )
                        gw_row[j] = g_row[j] * (sample - out_row[j])
                else:
                    for j in range(W):
                        c0, c1, c2, c3 = corners[0, j], corners[1, j], corners[2, j], corners[3, j]
                        a = g_row[j] * w_row[j]
                        left, right, top, bottom = fractions[0, j], fractions[1, j], fractions[2, j], fractions[3, j]
                        grad_x[j] += a * (-(top * c0) + top * c1 - bottom * c2 + bottom * c3)
                        grad_y[j] += a * (-(left * c0) - right * c1 + left * c2 + right * c3)
            if need_offsets:
                for j in range(W):
                    grad_offsets[b, 2 * k, i, j] = grad_x[j]
                    grad_offsets[b, 2 * k + 1, i, j] = grad_y[j]


@numba.njit(parallel=True, cache=True)
def _adaptive_aggregation_bwd_cost(grad_out, denominator, offsets, weights, num_blocks, grad_cost):
    """Cost gradient, one parallel task per (b, block of hypotheses): a sample of plane d reads
    plane d only, so each task scatters into its own planes of ``grad_cost`` (B, D, (H+3)*(W+2)),
    padded and zeroed by the caller; no per-thread copies, no atomics. A task computes each row's
    coefficients once for its whole block."""
    B, K, D, H, W = weights.shape
    Wp = W + 2
    for task in numba.prange(B * num_blocks):
        b = task // num_blocks
        block = task - b * num_blocks
        first, stop = block * D // num_blocks, (block + 1) * D // num_blocks
        base = np.empty(W, dtype=np.int32)
        value_coef = np.empty((4, W), dtype=grad_cost.dtype)
        scaled_grad = np.empty((stop - first, W), dtype=grad_cost.dtype)
        for i in range(H):
            for d in range(first, stop):
                for j in range(W):
                    scaled_grad[d - first, j] = grad_out[b, d, i, j] / denominator[b, d, i, j]
            for k in range(K):
                _row_corners(offsets, b, k, i, H, W, base, value_coef, value_coef, False)
                for d in range(first, stop):
                    plane = grad_cost[b, d]
                    for j in range(W):
                        a = scaled_grad[d - first, j] * weights[b, k, d, i, j]
                        p = base[j]
                        plane[p] += value_coef[0, j] * a
                        plane[p + 1] += value_coef[1, j] * a
                        plane[p + Wp] += value_coef[2, j] * a
                        plane[p + Wp + 1] += value_coef[3, j] * a


def _padded_cost(cost: torch.Tensor) -> torch.Tensor:
    """(B, D, H, W) -> (B, D, (H+3)*(W+2)): one zero column left and right, one zero row above,
    two below (the last one holds the corners of samples outside the map)."""
    B, D, H, W = cost.shape
    padded = cost.new_zeros((B, D, H + 3, W + 2))
    padded[:, :, 1 : H + 1, 1 : W + 1] = cost
    return padded.view(B, D, (H + 3) * (W + 2))


def forward(cost, offsets, weights, eps):
    """Forward on CPU tensors; returns (out, saved) with saved for :func:`backward`.

    Shape:
        cost (B, D, H, W), offsets (B, 2K, H, W), weights (B, K, D, H, W) -> out (B, D, H, W)
    """
    B, D, H, W = cost.shape
    padded = _padded_cost(cost.detach())
    offsets = offsets.detach().contiguous()
    weights = weights.detach().contiguous()
    out = torch.empty((B, D, H, W), dtype=cost.dtype)
    denominator = torch.empty((B, D, H, W), dtype=cost.dtype)
    eps_typed = padded.numpy().dtype.type(eps)
    with numba_threads():
        _adaptive_aggregation_fwd(padded.numpy(), offsets.numpy(), weights.numpy(), eps_typed, out.numpy(), denominator.numpy())
    return out, (padded, offsets, weights, out, denominator)


def backward(saved, grad_out, eps, need_cost: bool, need_offsets: bool, need_weights: bool):
    """Gradients (grad_cost, grad_offsets, grad_weights), each None where not needed.

    Memory beyond the gradients: the padded cost gradient (``(H+3)*(W+2)`` per plane, cropped to
    the result), whatever the thread count."""
    padded, offsets, weights, out, denominator = saved
    B, D, H, W = out.shape
    grad_out = grad_out.contiguous()
    grad_offsets = torch.empty(offsets.shape if need_offsets else (1, 1, 1, 1), dtype=out.dtype)
    grad_weights = torch.empty(weights.shape if need_weights else (1, 1, 1, 1, 1), dtype=out.dtype)
    grad_padded = torch.zeros((B, D, (H + 3) * (W + 2)), dtype=out.dtype) if need_cost else None
    with numba_threads() as num_threads:
        if need_offsets or need_weights:
            _adaptive_aggregation_bwd_rows(
                grad_out.numpy(), denominator.numpy(), out.numpy(), padded.numpy(), offsets.numpy(), weights.numpy(),
                need_offsets, need_weights, grad_offsets.numpy(), grad_weights.numpy(),
            )
        if need_cost:
            # as many tasks as threads where the hypotheses allow: fewer row-coefficient recomputations
            num_blocks = max(1, min(D, -(-num_threads // B)))
            _adaptive_aggregation_bwd_cost(
                grad_out.numpy(), denominator.numpy(), offsets.numpy(), weights.numpy(), num_blocks, grad_padded.numpy()
            )
    grad_cost = grad_padded.view(B, D, H + 3, W + 2)[:, :, 1 : H + 1, 1 : W + 1].contiguous() if need_cost else None
    return (
        grad_cost,
        grad_offsets if need_offsets else None,
        grad_weights if need_weights else None,
    )
