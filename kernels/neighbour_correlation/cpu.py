"""CPU kernel of ``neighbour_correlation`` (numba, ``parallel=True``), inference only.

One parallel task per row ``(b, y)``; the features are read channels-last so the blend of the 4
border-clamped corners and the product with the centre run as one flat loop over C.
"""

from __future__ import annotations

import numba
import numpy as np
import torch

from .._backend import numba_threads, prefer_workqueue_threading
from .._bilinear_cpu import border_corners

prefer_workqueue_threading()  # see its docstring: ~15x less call overhead next to torch's OpenMP


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
                x0, y0, x1, y1, wx, wy = border_corners(offsets, b, k, i, j, H, W)
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
    """Inference-only forward of :func:`kernels.neighbour_correlation` on CPU."""
    B, C, H, W = feature.shape
    K = offsets.shape[1] // 2
    channels_last = feature.detach().permute(0, 2, 3, 1).contiguous()
    offsets = offsets.detach().contiguous()
    out = torch.empty((B, num_groups, K, H, W), dtype=feature.dtype)
    with numba_threads():
        _neighbour_correlation_fwd(channels_last.numpy(), offsets.numpy(), num_groups, out.numpy())
    return out
