"""CPU kernel of the depth-weighted aggregation (numba, ``parallel=True``), inference only.

One parallel task per output row ``(b, y)``, as ``kernels/adaptive_aggregation/cpu.py``: the
PatchmatchNet eq. 7 weight of each neighbour and hypothesis is computed where it is used, so the
``(B, K, D, H, W)`` weights and the K ``grid_sample`` passes over ``inverse`` never exist.
"""

from __future__ import annotations

import numba
import numpy as np

from .._backend import numba_threads, prefer_workqueue_threading
from .._bilinear_cpu import border_coefficients, row_coefficients
from ._layout import depth_weighted_inputs

prefer_workqueue_threading()  # see its docstring: ~15x less call overhead next to torch's OpenMP


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
            row_coefficients(offsets, b, k, i, H, W, corner_index, value_coef, dx_coef, dy_coef)
            border_coefficients(offsets, b, k, i, H, W, border_index, border_coef)
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
    """Inference-only forward of :func:`kernels.depth_weighted_aggregation`
    on CPU tensors (no autograd)."""
    cost, offsets, inverse, feature_weight, scale, out = depth_weighted_inputs(cost, offsets, inverse, feature_weight, scale)
    eps_typed = cost.numpy().dtype.type(eps)
    with numba_threads():
        _depth_weighted_fwd(
            cost.numpy(), offsets.numpy(), inverse.numpy(), feature_weight.numpy(), scale.numpy(), eps_typed, out.numpy()
        )
    return out
