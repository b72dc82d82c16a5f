"""Spatial propagation on the CPU: numba ``njit(parallel=True)`` twins of the CUDA kernels.

Forward (``_spn_fwd_step``): one step, parallel over the B*H rows; called ``steps`` times,
writing step t + 1 into its own slot of the history when gradients are needed (backward reads
every step's input) and ping-ponging two buffers otherwise.

Backward (``_spn_bwd_step``): one step in reverse, parallel over rows, as a per-pixel gather
(formula in ``kernels.spn_propagation``'s docstring): pixel r reads the upstream gradient and
affinities of its eight neighbours r - n_k and writes only its own gradient and its own eight
affinity gradients, so threads never write the same cell (no atomics, deterministic).
Interior pixels take a branch-free path; border rows and columns check each neighbour.
"""

from __future__ import annotations

import torch
from numba import njit, prange

from .._backend import numba_threads, prefer_workqueue_threading
from . import _formulas

prefer_workqueue_threading()  # numba's OpenMP next to torch's spins; see its docstring

_neighbour_row = njit(inline="always", cache=True)(_formulas.neighbour_row)
_neighbour_col = njit(inline="always", cache=True)(_formulas.neighbour_col)


@njit(parallel=True, fastmath=False, cache=True)
def _spn_fwd_step(src, affinity, dst):  # pragma: no cover - compiled
    """dst = one propagation step of src. src, dst: (B, H, W); affinity: (B, 8, H, W)."""
    batch, height, width = src.shape
    t = src.dtype.type
    for task in prange(batch * height):
        b = task // height
        i = task % height
        interior_row = i > 0 and i < height - 1
        for j in range(width):
            centre = src[b, i, j]
            acc = t(0.0)
            if interior_row and j > 0 and j < width - 1:
                for k in range(8):
                    acc += affinity[b, k, i, j] * (src[b, i + _neighbour_row(k), j + _neighbour_col(k)] - centre)
            else:
                for k in range(8):
                    qi = i + _neighbour_row(k)
                    qj = j + _neighbour_col(k)
                    if qi >= 0 and qi < height and qj >= 0 and qj < width:
                        acc += affinity[b, k, i, j] * (src[b, qi, qj] - centre)
            dst[b, i, j] = centre + acc


@njit(parallel=True, fastmath=False, cache=True)
def _spn_bwd_step(state, affinity, grad_next, grad_prev, grad_affinity):  # pragma: no cover - compiled
    """One step back: state (B, H, W) is the step's input, grad_next the gradient of its output.

    Writes grad_prev (gradient of the step's input) and adds this step's share to grad_affinity.
    """
    batch, height, width = state.shape
    for task in prange(batch * height):
        b = task // height
        i = task % height
        interior_row = i > 0 and i < height - 1
        for j in range(width):
            g = grad_next[b, i, j]
            centre = state[b, i, j]
            acc = g
            if interior_row and j > 0 and j < width - 1:
                for k in range(8):
                    di = _neighbour_row(k)
                    dj = _neighbour_col(k)
                    a = affinity[b, k, i, j]
                    grad_affinity[b, k, i, j] += g * (state[b, i + di, j + dj] - centre)
                    acc += affinity[b, k, i - di, j - dj] * grad_next[b, i - di, j - dj] - a * g
            else:
                for k in range(8):
                    di = _neighbour_row(k)
                    dj = _neighbour_col(k)
                    qi = i + di
                    qj = j + dj
                    if qi >= 0 and qi < height and qj >= 0 and qj < width:
                        grad_affinity[b, k, i, j] += g * (state[b, qi, qj] - centre)
                        acc -= affinity[b, k, i, j] * g
                    # r = (i, j) is neighbour k of p = r - n_k (p inside <=> r is inside for p).
                    pi = i - di
                    pj = j - dj
                    if pi >= 0 and pi < height and pj >= 0 and pj < width:
                        acc += affinity[b, k, pi, pj] * grad_next[b, pi, pj]
            grad_prev[b, i, j] = acc


def spn_forward(depth: torch.Tensor, affinity: torch.Tensor, steps: int, keep_history: bool):
    """Run ``steps`` steps on (B, H, W) depth and (B, 8, H, W) affinity (contiguous, one dtype).

    Returns (output (B, H, W), history (steps, B, H, W) holding each step's input, or None).
    """
    history = torch.empty((steps, *depth.shape), dtype=depth.dtype) if keep_history and steps else None
    if steps == 0:
        return depth.clone(), history
    aff = affinity.numpy()
    with numba_threads():
        if history is not None:
            history[0].copy_(depth)
            for step in range(steps - 1):
                _spn_fwd_step(history[step].numpy(), aff, history[step + 1].numpy())
            out = torch.empty_like(depth)
            _spn_fwd_step(history[steps - 1].numpy(), aff, out.numpy())
        else:
            buffers = (depth.clone(), torch.empty_like(depth))
            for step in range(steps):
                _spn_fwd_step(buffers[step % 2].numpy(), aff, buffers[(step + 1) % 2].numpy())
            out = buffers[steps % 2]
    return out, history


def spn_backward(history: torch.Tensor, affinity: torch.Tensor, grad_out: torch.Tensor):
    """Gradients from the forward's history; returns (grad_depth (B, H, W), grad_affinity (B, 8, H, W))."""
    grad_affinity = torch.zeros_like(affinity)
    grad = grad_out.clone()
    if history is None:  # zero steps
        return grad, grad_affinity
    spare = torch.empty_like(grad)
    aff = affinity.numpy()
    ga = grad_affinity.numpy()
    with numba_threads():
        for step in range(history.shape[0] - 1, -1, -1):
            _spn_bwd_step(history[step].numpy(), aff, grad.numpy(), spare.numpy(), ga)
            grad, spare = spare, grad
    return grad, grad_affinity


__all__ = ["spn_forward", "spn_backward"]
