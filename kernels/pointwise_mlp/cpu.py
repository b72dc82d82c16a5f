"""CPU kernel of :func:`kernels.pointwise_mlp` (numba ``parallel=True``).

One parallel task per block of ``BLOCK`` positions: the block's hidden activations (H1 and H2
rows of ``BLOCK`` values) live in task-local buffers that stay in cache, so the (B, H1, N) hidden
volume that the matrix-product formulation writes and reads back three times (product, bias,
ReLU) never exists. Every inner loop runs over contiguous positions with no reduction, so LLVM
vectorises it without ``fastmath`` (the sums keep the reference's per-position order: bias, then
channel 0, 1, ...).
"""

from __future__ import annotations

import numba
import numpy as np
import torch

from .._backend import numba_threads, prefer_workqueue_threading

prefer_workqueue_threading()

BLOCK = 512


@numba.njit(parallel=True, cache=True)
def _mlp3(x, w1, b1, w2, b2, w3, b3, out, batch, channels, hidden1, hidden2):
    """x flat (B * C * N), weights flat row-major, out flat (B * N)."""
    positions = out.size // batch
    blocks = (positions + BLOCK - 1) // BLOCK
    for task in numba.prange(batch * blocks):
        b = task // blocks
        start = (task - b * blocks) * BLOCK
        count = min(BLOCK, positions - start)
        h1 = np.empty(hidden1 * BLOCK, dtype=x.dtype)
        h2 = np.empty(hidden2 * BLOCK, dtype=x.dtype)
        for o in range(hidden1):
            row = h1[o * BLOCK : o * BLOCK + count]
            row[:] = b1[o]
            for c in range(channels):
                base = (b * channels + c) * positions + start
                xs = x[base : base + count]
                w = w1[o * channels + c]
                for n in range(count):
                    row[n] += w * xs[n]
            for n in range(count):
                row[n] = max(row[n], 0)
        for o in range(hidden2):
            row = h2[o * BLOCK : o * BLOCK + count]
            row[:] = b2[o]
            for c in range(hidden1):
                hs = h1[c * BLOCK : c * BLOCK + count]
                w = w2[o * hidden1 + c]
                for n in range(count):
                    row[n] += w * hs[n]
            for n in range(count):
                row[n] = max(row[n], 0)
        result = out[b * positions + start : b * positions + start + count]
        result[:] = b3[0]
        for c in range(hidden2):
            hs = h2[c * BLOCK : c * BLOCK + count]
            w = w3[c]
            for n in range(count):
                result[n] += w * hs[n]


def forward(x, w1, b1, w2, b2, w3, b3) -> torch.Tensor:
    """Contiguous same-dtype CPU tensors (checked by the caller) -> (B, N)."""
    batch, channels, positions = x.shape
    out = torch.empty(batch, positions, dtype=x.dtype)
    flat = [t.detach().contiguous().reshape(-1).numpy() for t in (x, w1, b1, w2, b2, w3, b3)]
    with numba_threads():
        _mlp3(*flat, out.view(-1).numpy(), batch, channels, w1.shape[0], w2.shape[0])
    return out
