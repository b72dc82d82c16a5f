"""SSIM on CUDA with numba.cuda (imported only when a CUDA tensor reaches the op).

``ssim_fwd_kernel``: one thread per output pixel, 9-tap window from global memory (the 3x3
stencil's reuse is served by L1/L2), writes only the map.

``ssim_bwd_kernel``: one 16x16 block per 16x16 tile of input pixels. The block first computes
g_p * (a_x, a_y, b, c) for the 20x20 output windows that touch its tile into shared memory
(``_formulas.ssim_and_coefficients``; a 2-pixel halo each side), synchronises, then every thread
gathers the taps of its input pixel: a single pass, no intermediate maps in global memory, no
atomics. Reflection padding enters through ``_formulas.tap_count`` (input rows/cols 1 and n-2
are read twice by the border windows).

Kernels take (N, H, W) C-contiguous arrays of one float dtype (N = B*C) and run on torch's current
stream; compiled once per (device, dtype) by ``kernels._backend.numba_cuda_kernel``.
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
    registry_signature,
)
from . import _formulas

# inline="always": inlined at numba-IR level, so compiling the kernels for a chosen compute
# capability (``cuda.compile_ptx``) never needs a GPU to resolve the device functions.
_ssim_and_coefficients = cuda.jit(device=True, inline="always")(_formulas.ssim_and_coefficients)
_reflect_index = cuda.jit(device=True, inline="always")(_formulas.reflect_index)
_tap_count = cuda.jit(device=True, inline="always")(_formulas.tap_count)

TILE = 16
HALO = TILE + 4


def ssim_fwd_kernel(x, y, out, valid):  # pragma: no cover - compiled
    n_img, height, width = x.shape
    out_h, out_w = out.shape[1], out.shape[2]
    idx = cuda.grid(1)
    if idx >= n_img * out_h * out_w:
        return
    j = idx % out_w
    i = (idx // out_w) % out_h
    n = idx // (out_w * out_h)
    t = x.dtype.type
    sx = t(0.0)
    sy = t(0.0)
    sxx = t(0.0)
    syy = t(0.0)
    sxy = t(0.0)
    for dr in range(3):
        r = i + dr if valid else _reflect_index(i + dr - 1, height)
        for dc in range(3):
            c = j + dc if valid else _reflect_index(j + dc - 1, width)
            a = x[n, r, c]
            b = y[n, r, c]
            sx += a
            sy += b
            sxx += a * a
            syy += b * b
            sxy += a * b
    s, _, _, _, _ = _ssim_and_coefficients(
        sx, sy, sxx, syy, sxy, t(1.0) / t(9.0), t(0.01 * 0.01), t(0.03 * 0.03), t(2.0)
    )
    out[n, i, j] = s


def ssim_bwd_kernel(x, y, grad_out, grad_x, grad_y, valid):  # pragma: no cover - compiled
    n_img, height, width = x.shape
    out_h, out_w = grad_out.shape[1], grad_out.shape[2]
    t = x.dtype.type
    gc = cuda.shared.array((4, HALO, HALO), dtype=x.dtype)
    n = cuda.blockIdx.z
    q_row0 = cuda.blockIdx.y * TILE
    q_col0 = cuda.blockIdx.x * TILE
    p_row0 = q_row0 - 2
    p_col0 = q_col0 - 2
    tr = cuda.threadIdx.y
    tc = cuda.threadIdx.x
    for e in range(tr * TILE + tc, HALO * HALO, TILE * TILE):
        er = e // HALO
        ec = e % HALO
        pr = p_row0 + er
        pc = p_col0 + ec
        if pr >= 0 and pr < out_h and pc >= 0 and pc < out_w:
            sx = t(0.0)
            sy = t(0.0)
            sxx = t(0.0)
            syy = t(0.0)
            sxy = t(0.0)
            for dr in range(3):
                r = pr + dr if valid else _reflect_index(pr + dr - 1, height)
                for dc in range(3):
                    c = pc + dc if valid else _reflect_index(pc + dc - 1, width)
                    a = x[n, r, c]
                    b = y[n, r, c]
                    sx += a
                    sy += b
                    sxx += a * a
                    syy += b * b
                    sxy += a * b
            _, a_x, a_y, b_, c_ = _ssim_and_coefficients(
                sx, sy, sxx, syy, sxy, t(1.0) / t(9.0), t(0.01 * 0.01), t(0.03 * 0.03), t(2.0)
            )
            g = grad_out[n, pr, pc]
            gc[0, er, ec] = g * a_x
            gc[1, er, ec] = g * a_y
            gc[2, er, ec] = g * b_
            gc[3, er, ec] = g * c_
        else:
            gc[0, er, ec] = t(0.0)
            gc[1, er, ec] = t(0.0)
            gc[2, er, ec] = t(0.0)
            gc[3, er, ec] = t(0.0)
    cuda.syncthreads()
    q_row = q_row0 + tr
    q_col = q_col0 + tc
    if q_row >= height or q_col >= width:
        return
    s_ax = t(0.0)
    s_ay = t(0.0)
    s_b = t(0.0)
    s_c = t(0.0)
    for pr in range(max(q_row - 2, 0), min(q_row + 2, out_h - 1) + 1):
        wr = _tap_count(q_row, pr, height, valid)
        if wr == 0:
            continue
        for pc in range(max(q_col - 2, 0), min(q_col + 2, out_w - 1) + 1):
            wc = _tap_count(q_col, pc, width, valid)
            if wc == 0:
                continue
            w = t(wr * wc)
            er = pr - p_row0
            ec = pc - p_col0
            s_ax += w * gc[0, er, ec]
            s_ay += w * gc[1, er, ec]
            s_b += w * gc[2, er, ec]
            s_c += w * gc[3, er, ec]
    a = x[n, q_row, q_col]
    b = y[n, q_row, q_col]
    grad_x[n, q_row, q_col] = s_ax + s_b * a + s_c * b
    grad_y[n, q_row, q_col] = s_ay + s_b * b + s_c * a


def bwd_launch_config(n_img: int, height: int, width: int) -> tuple[tuple[int, int, int], tuple[int, int]]:
    """(grid, block) of ``ssim_bwd_kernel``: one TILE x TILE block per tile of input pixels."""
    return ((width + TILE - 1) // TILE, (height + TILE - 1) // TILE, n_img), (TILE, TILE)


def ssim_forward(x: torch.Tensor, y: torch.Tensor, valid: bool) -> torch.Tensor:
    """Launch the forward on (N, H, W) contiguous CUDA tensors; returns the (N, Ho, Wo) map."""
    n_img, height, width = x.shape
    out_h, out_w = (height - 2, width - 2) if valid else (height, width)
    out = torch.empty((n_img, out_h, out_w), dtype=x.dtype, device=x.device)
    kernel = numba_cuda_kernel(__name__, "ssim_fwd_kernel", registry_signature("ssim_fwd", x.dtype),
                               device_index(x.device))
    grid, block = launch_config_1d(out.numel())
    with numba_device(x.device):
        kernel[grid, block, numba_stream(x.device)](as_numba_array(x), as_numba_array(y), as_numba_array(out), bool(valid))
    return out


def ssim_backward(x: torch.Tensor, y: torch.Tensor, grad_out: torch.Tensor, valid: bool):
    """Launch the backward; returns (grad_x, grad_y), each (N, H, W)."""
    grad_x = torch.empty_like(x)
    grad_y = torch.empty_like(y)
    kernel = numba_cuda_kernel(__name__, "ssim_bwd_kernel", registry_signature("ssim_bwd", x.dtype),
                               device_index(x.device))
    grid, block = bwd_launch_config(*x.shape)
    with numba_device(x.device):
        kernel[grid, block, numba_stream(x.device)](
            as_numba_array(x), as_numba_array(y), as_numba_array(grad_out), as_numba_array(grad_x),
            as_numba_array(grad_y), bool(valid),
        )
    return grad_x, grad_y
