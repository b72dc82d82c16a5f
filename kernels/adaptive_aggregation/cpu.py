"""CPU kernels of adaptive cost aggregation (numba, ``parallel=True``).

Layout. The offsets do not depend on the hypothesis, so one sample position (row, neighbour, x)
serves all D hypotheses: the cost is copied once into a zero-bordered channels-last map
``(B, (H+3)*(W+2), D)`` (:func:`_channels_last_padded`; one zero column each side, one zero row
above and two below). A sample inside ``(-1, W) x (-1, H)`` then reads its four corners as four
contiguous runs of D values at ``base, base + 1, base + Wp, base + Wp + 1`` with no bounds test,
and a sample entirely outside points at the all-zero bottom rows with coefficient 0; the loops
over hypotheses are innermost. Per row and neighbour the corner indices and coefficients are
computed once (:func:`_row_corners`) in the offsets' dtype, as the reference does, and without a
branch, so LLVM vectorises that loop (about 10x cheaper than the float64 loop with a branch it
replaces). The weights ``(B, K, D, H, W)`` and their gradient keep the op's layout: the forward
transposes a row's ``(D, W)`` block of weights to ``(W, D)`` in a scalar loop; the backward instead
forms ``w_k * grad_out / (sum_k w_k + eps)`` while transposing, and stores the gathered samples
``(W, D)`` and forms the weight gradient while transposing them back. Corner indices are read as
unsigned integers, which spares numba's test for negative indices at every sample (measured 3-7%
faster in the forward, 2-4% in the scatter).

Forward: one task per output row; it also saves ``sum_k w_k + eps`` (one ``(B, D, H, W)``
tensor) so the backward does not re-read the weights for it. The sampled costs are never stored.

Backward: one kernel for all three gradients (:func:`_backward_kernel`), one task per batch item
and band of rows, ``_BANDS`` = 2 bands whatever the thread count. The samples of a band scatter
their cost gradient into a channels-last map of the band's own (a sample may land in any row),
and :func:`_sum_bands` adds the maps band by band: no atomics, no per-thread copies, memory of two
cost-sized maps (one more than the split kernels before) whatever the thread count, and every sum
in one fixed order, so the gradients are equal bit for bit at any thread count. The sums over
hypotheses of the offset gradients run under ``fastmath={"reassoc"}`` so that LLVM vectorises
them; every task runs the same code, which keeps that property. The kernel is compiled per
hypothesis count of the networks (8, 16, 32, 48: ``_SPECIALISED_COUNTS``; ``functools.lru_cache``,
and numba's disk cache keeps each), its scatter loop for the exact count; from 16 hypotheses on its
gather loop too (measured faster), below it reads the count at run time (measured faster at 8).
Every other count shares one backward with both loops reading the count at run time, so that
unusual counts cost one compilation in all (about 10 s each on a 2-core CPU), not one each.

Tried and not kept (1-thread CPU time, slower or no faster): separate backward kernels for the
offset and weight gradients (one task per row) and for the cost gradient (one task per block of
hypotheses), which the single pass beats by 5-12%; the forward compiled for the exact count
(slower at 16); the weight sum inside the sample loop; strided weight reads instead of the
transposes; the scatter as one loop per corner; FMA contraction; scratch rows on the stack;
neighbours innermost; later (2026-12-07c): the forward saving channels-last weights for the
backward (8% slower in all), the forward storing its samples and weighting them while transposing
back (22% slower), the weight sum fused into the forward's transpose (20% slower), row views of the
four corners in the forward (5% slower), the scatter as eight-wide load-then-store blocks or per
corner with the count at run time, the gradients asked for as compile-time constants, and the
forward's scratch rows allocated per thread outside the parallel loop (none faster). What limits
the kernel: numba cannot tell LLVM that scratch rows and inputs do not alias, so a loop over 8 or 16 hypotheses pays run-time alias checks at every sample
position (or, compiled for the exact count, stays scalar), and each transpose of the weights costs
about a scalar load and store per sample.

Measured (bench/results/adaptive-aggregation-cpu-1thread-2026-12-07c.json,
experiments/diag_aggregation_ab.py): forward + backward (gradients to all three inputs) against
:func:`adaptive_aggregation_reference` at the benchmark's four stage sizes (batch 1, 640x512 image,
K=9), reference, this kernel and the kernel before (a683d02) interleaved round by round on the
shared 2-core machine, CPU time with 1 thread (torch and numba), median of 21 per-round ratios
reference / kernel, two runs: 3.04 / 2.89x (stage 3, D=48), 2.17 / 2.03x (stage 3, D=16),
2.65 / 2.41x (stage 2), 2.25 / 2.55x (stage 1); the kernel before, in the same rounds: 2.69 / 2.57x,
2.09 / 1.81x, 2.41 / 2.10x, 2.17 / 2.25x (the machine's other job moves every ratio by ~10% from
run to run). At stage 3 with D=16 half the reference's work is reached only narrowly (kernel
3.9 / 4.0 ms, reference 8.1 ms; a run before the last change, the row views of the padded copy
and the band sum: 1.96x, the kernel before 1.78x). Where the ~4 ms go there
(1 thread): forward kernel 0.8 ms, padded copy 0.1, backward kernel 2.1 (of it the cost-gradient
scatter ~0.8, the weight and offset gathers ~0.6), band sum 0.1; per-call costs (allocations, numba
dispatch, autograd, the loss) ~0.35 ms in all, so the compute dominates. The kernel before
(54e340d, file 2026-12-07b) measured 1.74 / 1.85x at stage 3, D=16, then.
"""

from __future__ import annotations

import functools

import numba
import numpy as np
import torch

from .._backend import numba_threads, prefer_workqueue_threading

prefer_workqueue_threading()  # see its docstring: ~15x less call overhead next to torch's OpenMP

#: hypothesis counts from which the backward's gather loop is compiled for the exact count (measured
#: faster from 16 on; at 8 the loop with the count left to run time measured faster)
_FIXED_GATHER_FROM = 16

#: hypothesis counts of the networks (PatchmatchNet's and the shipped settings' per stage) whose
#: backward is compiled for the exact count; any other count shares one backward that reads it at
#: run time, so odd counts (tests, unusual settings) cost one compilation in all, not one each
_SPECIALISED_COUNTS = frozenset({8, 16, 32, 48})

#: row bands of the backward: each band is one task and scatters its cost gradient into a padded
#: map of its own; the maps are summed band by band. A fixed count, so the memory and the order of
#: every sum do not depend on the thread count.
_BANDS = 2


@numba.njit(inline="always")
def _row_corners(offsets, b, k, i, H, W, columns, base, value_coef, fractions, with_fractions):
    """Row i, neighbour k: for every x the flat index ``base[x]`` of the top-left corner in the
    padded map (row stride ``W + 2``) and the corner coefficients (00, 01, 10, 11) of the
    sample, ``value_coef`` (4, W); with ``with_fractions`` also ``fractions`` (2, W) = (wx, wy),
    the sample's position within its cell. A position outside ``(-1, W) x (-1, H)`` (or NaN)
    gets coefficients and fractions 0 and the base of the all-zero bottom rows.

    ``columns`` is ``0, 1, ..., W`` in the offsets' dtype: positions are computed in that dtype
    (as the reference does) and the loop has no branch, so LLVM vectorises it."""
    Wp = W + 2
    outside = (H + 1) * Wp
    real = offsets.dtype.type
    zero, one = real(0), real(1)
    row = real(i)
    width, height = columns[W], real(H)
    dx_row = offsets[b, 2 * k, i]
    dy_row = offsets[b, 2 * k + 1, i]
    for j in range(W):
        sx = columns[j] + dx_row[j]
        sy = row + dy_row[j]
        inside = sx > -one and sx < width and sy > -one and sy < height  # also rejects NaN
        sx = sx if inside else zero  # keeps the integer conversion below defined
        sy = sy if inside else zero
        fx = np.floor(sx)
        fy = np.floor(sy)
        wx = sx - fx
        wy = sy - fy
        base[j] = (np.int32(fy) + 1) * Wp + np.int32(fx) + 1 if inside else outside
        value_coef[0, j] = (one - wx) * (one - wy) if inside else zero
        value_coef[1, j] = wx * (one - wy) if inside else zero
        value_coef[2, j] = (one - wx) * wy if inside else zero
        value_coef[3, j] = wx * wy if inside else zero
        if with_fractions:
            fractions[0, j] = wx if inside else zero
            fractions[1, j] = wy if inside else zero


@numba.njit(parallel=True, cache=True)
def _channels_last_padded(cost, padded):
    """cost (B, D, H, W) -> padded (B, (H+3)*(W+2), D): the hypotheses of a pixel contiguous, one
    zero column left and right, one zero row above, two below."""
    B, D, H, W = cost.shape
    Wp = W + 2
    for task in numba.prange(B * (H + 3)):
        b = task // (H + 3)
        y = task - b * (H + 3)
        start = y * Wp
        rows = padded[b, start:start + Wp]  # a view: the loops below index from 0 (measured faster)
        if y == 0 or y > H:
            for x in range(Wp):
                for d in range(D):
                    rows[x, d] = 0
            continue
        for d in range(D):
            rows[0, d] = 0
            rows[Wp - 1, d] = 0
        for d in range(D):
            source = cost[b, d, y - 1]
            for j in range(W):
                rows[j + 1, d] = source[j]


@numba.njit(parallel=True, cache=True)
def _adaptive_aggregation_fwd(cost, offsets, weights, eps, out, denominator):
    """cost (B, (H+3)*(W+2), D) padded channels-last, offsets (B, 2K, H, W), weights
    (B, K, D, H, W) -> out (B, D, H, W) and denominator = sum_k w_k + eps (B, D, H, W).

    One task per output row; per neighbour the row's weights are transposed to (W, D) so that
    the loop over hypotheses (innermost, one sample position for all of them) runs on
    contiguous data."""
    B, K, D, H, W = weights.shape
    Wp = W + 2
    one, row_step = np.uintp(1), np.uintp(Wp)
    for row in numba.prange(B * H):
        b = row // H
        i = row - b * H
        columns = np.arange(W + 1).astype(offsets.dtype)
        base = np.empty(W, dtype=np.int32)
        value_coef = np.empty((4, W), dtype=cost.dtype)
        numerator = np.zeros((W, D), dtype=cost.dtype)
        weight_sum = np.zeros((D, W), dtype=cost.dtype)
        w_t = np.empty((W, D), dtype=cost.dtype)
        plane = cost[b]
        for k in range(K):
            _row_corners(offsets, b, k, i, H, W, columns, base, value_coef, value_coef, False)
            for d in range(D):
                w_row = weights[b, k, d, i]
                sum_row = weight_sum[d]
                for j in range(W):
                    sum_row[j] += w_row[j]
            for d in range(D):
                w_row = weights[b, k, d, i]
                for j in range(W):
                    w_t[j, d] = w_row[j]
            for j in range(W):
                p = np.uintp(base[j])  # unsigned: no test for negative indices in the loop below
                c0, c1, c2, c3 = value_coef[0, j], value_coef[1, j], value_coef[2, j], value_coef[3, j]
                for d in range(D):
                    sample = c0 * plane[p, d] + c1 * plane[p + one, d] + c2 * plane[p + row_step, d] + c3 * plane[p + row_step + one, d]
                    numerator[j, d] += w_t[j, d] * sample
        for d in range(D):
            for j in range(W):
                total = weight_sum[d, j] + eps
                denominator[b, d, i, j] = total
                out[b, d, i, j] = numerator[j, d] / total


@functools.lru_cache(maxsize=None)
def _backward_kernel(num_hypotheses: int, fixed_gather: bool):
    """The backward compiled for ``num_hypotheses`` hypotheses: the scatter loop for that exact
    count, the gather loop too where ``fixed_gather`` (see ``_FIXED_GATHER_FROM``); 0: both loops
    read the count at run time (the counts outside ``_SPECIALISED_COUNTS``)."""

    @numba.njit(parallel=True, cache=True, fastmath={"reassoc"})
    def _adaptive_aggregation_bwd(
        grad_out, denominator, out, cost, offsets, weights, need_cost, need_offsets, need_weights,
        grad_offsets, grad_weights, grad_bands,
    ):
        """All three gradients, one task per (b, band of rows). grad_out, denominator, out
        (B, D, H, W); cost (B, (H+3)*(W+2), D) padded channels-last; grad_bands
        (bands, B, (H+3)*(W+2), D) zeroed. ``reassoc`` lets LLVM vectorise the sums over
        hypotheses of the offset gradients; every task runs the same code whatever the thread
        count, so the results do not depend on it."""
        B, K, D, H, W = weights.shape
        if fixed_gather:
            D = num_hypotheses
        num_bands = grad_bands.shape[0]
        Wp = W + 2
        one, row_step = np.uintp(1), np.uintp(Wp)
        real = cost.dtype.type
        for task in numba.prange(B * num_bands):
            b = task // num_bands
            band = task - b * num_bands
            columns = np.arange(W + 1).astype(offsets.dtype)
            base = np.empty(W, dtype=np.int32)
            value_coef = np.empty((4, W), dtype=cost.dtype)
            fractions = np.empty((2, W), dtype=cost.dtype)
            scaled_grad = np.empty((D, W), dtype=cost.dtype)
            sample_t = np.empty((W, D), dtype=cost.dtype)
            a_t = np.empty((W, D), dtype=cost.dtype)
            plane = cost[b]
            grad = grad_bands[band, b]
            for i in range(band * H // num_bands, (band + 1) * H // num_bands):
                for d in range(D):
                    for j in range(W):
                        scaled_grad[d, j] = grad_out[b, d, i, j] / denominator[b, d, i, j]
                for k in range(K):
                    _row_corners(offsets, b, k, i, H, W, columns, base, value_coef, fractions, True)
                    if need_offsets or need_cost:
                        # a separate pass (the gather loop below then stores only the samples) that also
                        # transposes: the sample's weight in d loss / d sample, w_k * grad_out / (sum_k w_k + eps)
                        for d in range(D):
                            w_row = weights[b, k, d, i]
                            scaled_row = scaled_grad[d]
                            for j in range(W):
                                a_t[j, d] = scaled_row[j] * w_row[j]
                    # the sample as interpolations along x in its top and bottom rows, then along y:
                    # sample = top + wy (bottom - top), d sample / d y = bottom - top,
                    # d sample / d x = (1 - wy)(c01 - c00) + wy (c11 - c10)
                    for j in range(W):
                        p = np.uintp(base[j])  # unsigned: no test for negative indices
                        top_left, top_right = plane[p], plane[p + one]
                        bottom_left, bottom_right = plane[p + row_step], plane[p + row_step + one]
                        wx, wy = fractions[0, j], fractions[1, j]
                        grad_x = real(0)
                        grad_y = real(0)
                        for d in range(D):
                            v0 = top_left[d]
                            top_step = top_right[d] - v0
                            v2 = bottom_left[d]
                            bottom_step = bottom_right[d] - v2
                            top = v0 + wx * top_step
                            bottom = v2 + wx * bottom_step
                            d_dy = bottom - top
                            if need_weights:
                                sample_t[j, d] = top + wy * d_dy
                            if need_offsets:
                                a = a_t[j, d]
                                grad_x += a * (top_step + wy * (bottom_step - top_step))
                                grad_y += a * d_dy
                        if need_offsets:
                            grad_offsets[b, 2 * k, i, j] = grad_x
                            grad_offsets[b, 2 * k + 1, i, j] = grad_y
                    if need_cost:
                        for j in range(W):
                            p = np.uintp(base[j])  # unsigned: no test for negative indices
                            c0, c1, c2, c3 = value_coef[0, j], value_coef[1, j], value_coef[2, j], value_coef[3, j]
                            top_left, top_right = grad[p], grad[p + one]
                            bottom_left, bottom_right = grad[p + row_step], grad[p + row_step + one]
                            for d in range(num_hypotheses if num_hypotheses > 0 else D):
                                a = a_t[j, d]
                                top_left[d] += c0 * a
                                top_right[d] += c1 * a
                                bottom_left[d] += c2 * a
                                bottom_right[d] += c3 * a
                    if need_weights:
                        for d in range(D):  # transposes the samples back
                            # d out / d w_k = (sample_k - out) / (sum_k w_k + eps)
                            gw_row = grad_weights[b, k, d, i]
                            scaled_row = scaled_grad[d]
                            out_row = out[b, d, i]
                            for j in range(W):
                                gw_row[j] = scaled_row[j] * (sample_t[j, d] - out_row[j])

    return _adaptive_aggregation_bwd


@numba.njit(parallel=True, cache=True)
def _sum_bands(grad_bands, grad_cost):
    """grad_cost (B, D, H, W) = the sum over bands, in band order, of the padded channels-last
    maps grad_bands (bands, B, (H+3)*(W+2), D), cropped; one task per row (b, y)."""
    num_bands = grad_bands.shape[0]
    B, D, H, W = grad_cost.shape
    Wp = W + 2
    for row in numba.prange(B * H):
        b = row // H
        y = row - b * H
        start = (y + 1) * Wp + 1
        total = np.empty((W, D), dtype=grad_cost.dtype)
        first = grad_bands[0, b, start:start + W]  # views: the loops below index from 0 (measured faster)
        for j in range(W):
            for d in range(D):
                total[j, d] = first[j, d]
        for band in range(1, num_bands):
            more = grad_bands[band, b, start:start + W]
            for j in range(W):
                for d in range(D):
                    total[j, d] += more[j, d]
        for d in range(D):
            target = grad_cost[b, d, y]
            for x in range(W):
                target[x] = total[x, d]


def forward(cost, offsets, weights, eps):
    """Forward on CPU tensors; returns (out, saved) with saved for :func:`backward`.

    Shape:
        cost (B, D, H, W), offsets (B, 2K, H, W), weights (B, K, D, H, W) -> out (B, D, H, W)
    """
    B, D, H, W = cost.shape
    cost = cost.detach().contiguous()
    offsets = offsets.detach().contiguous()
    weights = weights.detach().contiguous()
    padded = torch.empty((B, (H + 3) * (W + 2), D), dtype=cost.dtype)
    out = torch.empty((B, D, H, W), dtype=cost.dtype)
    denominator = torch.empty((B, D, H, W), dtype=cost.dtype)
    eps_typed = padded.numpy().dtype.type(eps)
    with numba_threads():
        _channels_last_padded(cost.numpy(), padded.numpy())
        _adaptive_aggregation_fwd(padded.numpy(), offsets.numpy(), weights.numpy(), eps_typed, out.numpy(), denominator.numpy())
    return out, (padded, offsets, weights, out, denominator)


def backward(saved, grad_out, eps, need_cost: bool, need_offsets: bool, need_weights: bool):
    """Gradients (grad_cost, grad_offsets, grad_weights), each None where not needed.

    Memory beyond the gradients: one padded channels-last cost gradient per band of rows
    (``_BANDS`` maps of ``(H+3)*(W+2)`` per hypothesis), whatever the thread count."""
    padded, offsets, weights, out, denominator = saved
    B, D, H, W = out.shape
    grad_out = grad_out.contiguous()
    grad_offsets = torch.empty(offsets.shape if need_offsets else (1, 1, 1, 1), dtype=out.dtype)
    grad_weights = torch.empty(weights.shape if need_weights else (1, 1, 1, 1, 1), dtype=out.dtype)
    grad_cost = torch.empty((B, D, H, W), dtype=out.dtype) if need_cost else None
    grad_bands = torch.zeros((_BANDS, B, (H + 3) * (W + 2), D) if need_cost else (_BANDS, B, 1, 1), dtype=out.dtype)
    with numba_threads():
        specialised = D in _SPECIALISED_COUNTS
        _backward_kernel(D if specialised else 0, specialised and D >= _FIXED_GATHER_FROM)(
            grad_out.numpy(), denominator.numpy(), out.numpy(), padded.numpy(), offsets.numpy(), weights.numpy(),
            need_cost, need_offsets, need_weights, grad_offsets.numpy(), grad_weights.numpy(), grad_bands.numpy(),
        )
        if need_cost:
            _sum_bands(grad_bands.numpy(), grad_cost.numpy())
    return (
        grad_cost,
        grad_offsets if need_offsets else None,
        grad_weights if need_weights else None,
    )
