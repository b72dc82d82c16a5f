"""Spatial propagation on CUDA with numba.cuda (imported only when a CUDA tensor reaches the op).

``spn_fwd_step_kernel``: one step, one thread per pixel (the eight neighbours come through L1/L2;
a 3x3 stencil gains little from shared-memory tiling). Launched once per step: step t + 1 reads
step t's neighbours, a dependency across the whole grid.

``spn_bwd_step_kernel``: one step back, one thread per pixel, the gather of the package docstring
(pixel r reads a_k(r - n_k) G(r - n_k) and writes only its own gradient and its own eight
affinity gradients): no atomics, so the result does not depend on thread scheduling.

Kernels take C-contiguous arrays of one float dtype, depth-like maps (B, H, W) and affinity
(B, 8, H, W), and run on torch's current stream; each is compiled once per (device, dtype) by
``kernels._backend.numba_cuda_kernel`` with the signatures below.
"""

from __future__ import annotations

import torch
from numba import cuda

from .._backend import (
    as_numba_array,
    device_index,
    launch_config_1d,
    numba_cuda_kernel,
    numba_device,
    numba_stream,
)
from . import _formulas

_neighbour_row = cuda.jit(device=True, inline="always")(_formulas.neighbour_row)
_neighbour_col = cuda.jit(device=True, inline="always")(_formulas.neighbour_col)

#: numba signatures per dtype: (forward step, backward step).
SIGNATURES = {
    dtype: (
        f"void({dtype}[:, :, ::1], {dtype}[:, :, :, ::1], {dtype}[:, :, ::1])",
        f"void({dtype}[:, :, ::1], {dtype}[:, :, :, ::1], {dtype}[:, :, ::1], {dtype}[:, :, ::1], {dtype}[:, :, :, ::1])",
    )
    for dtype in ("float32", "float64")
}


def spn_fwd_step_kernel(src, affinity, dst):  # pragma: no cover - compiled
    batch, height, width = src.shape
    idx = cuda.grid(1)
    if idx >= batch * height * width:
        return
    j = idx % width
    i = (idx // width) % height
    b = idx // (width * height)
    t = src.dtype.type
    centre = src[b, i, j]
    acc = t(0.0)
    for k in range(8):
        qi = i + _neighbour_row(k)
        qj = j + _neighbour_col(k)
        if qi >= 0 and qi < height and qj >= 0 and qj < width:
            acc += affinity[b, k, i, j] * (src[b, qi, qj] - centre)
    dst[b, i, j] = centre + acc


def spn_bwd_step_kernel(state, affinity, grad_next, grad_prev, grad_affinity):  # pragma: no cover - compiled
    batch, height, width = state.shape
    idx = cuda.grid(1)
    if idx >= batch * height * width:
        return
    j = idx % width
    i = (idx // width) % height
    b = idx // (width * height)
    g = grad_next[b, i, j]
    centre = state[b, i, j]
    acc = g
    for k in range(8):
        di = _neighbour_row(k)
        dj = _neighbour_col(k)
        qi = i + di
        qj = j + dj
        if qi >= 0 and qi < height and qj >= 0 and qj < width:
            grad_affinity[b, k, i, j] += g * (state[b, qi, qj] - centre)
            acc -= affinity[b, k, i, j] * g
        pi = i - di
        pj = j - dj
        if pi >= 0 and pi < height and pj >= 0 and pj < width:
            acc += affinity[b, k, pi, pj] * grad_next[b, pi, pj]
    grad_prev[b, i, j] = acc


def _kernels(tensor: torch.Tensor):
    signatures = SIGNATURES[str(tensor.dtype).replace("torch.", "")]
    index = device_index(tensor.device)
    return (
        numba_cuda_kernel(__name__, "spn_fwd_step_kernel", signatures[0], index),
        numba_cuda_kernel(__name__, "spn_bwd_step_kernel", signatures[1], index),
    )


def spn_forward(depth: torch.Tensor, affinity: torch.Tensor, steps: int, keep_history: bool):
    """Same contract as ``cpu.spn_forward`` for CUDA tensors."""
    history = torch.empty((steps, *depth.shape), dtype=depth.dtype, device=depth.device) if keep_history and steps else None
    if steps == 0:
        return depth.clone(), history
    forward, _ = _kernels(depth)
    grid, block = launch_config_1d(depth.numel())
    with numba_device(depth.device):  # device arrays, stream and launches all in the tensors' context
        stream = numba_stream(depth.device)
        aff = as_numba_array(affinity)
        if history is not None:
            history[0].copy_(depth)
            out = torch.empty_like(depth)
            for step in range(steps):
                dst = history[step + 1] if step + 1 < steps else out
                forward[grid, block, stream](as_numba_array(history[step]), aff, as_numba_array(dst))
        else:
            buffers = (depth.clone(), torch.empty_like(depth))
            views = tuple(as_numba_array(buffer) for buffer in buffers)
            for step in range(steps):
                forward[grid, block, stream](views[step % 2], aff, views[(step + 1) % 2])
            out = buffers[steps % 2]
    return out, history


def spn_backward(history: torch.Tensor | None, affinity: torch.Tensor, grad_out: torch.Tensor):
    """Same contract as ``cpu.spn_backward`` for CUDA tensors."""
    grad_affinity = torch.zeros_like(affinity)
    grad = grad_out.clone()
    if history is None:
        return grad, grad_affinity
    _, backward = _kernels(grad)
    spare = torch.empty_like(grad)
    grid, block = launch_config_1d(grad.numel())
    with numba_device(grad.device):  # device arrays, stream and launches all in the tensors' context
        stream = numba_stream(grad.device)
        aff = as_numba_array(affinity)
        ga = as_numba_array(grad_affinity)
        for step in range(history.shape[0] - 1, -1, -1):
            backward[grid, block, stream](
                as_numba_array(history[step]), aff, as_numba_array(grad), as_numba_array(spare), ga
            )
            grad, spare = spare, grad
    return grad, grad_affinity


__all__ = ["spn_forward", "spn_backward", "SIGNATURES"]
