"""SSIM on the CPU: numba ``njit(parallel=True)`` twins of the CUDA kernels.

Forward (``_ssim_fwd``): one parallel pass over the B*C*Ho output rows. Each row first sums
x, y, x^2, y^2, xy over its three input rows (column sums into a row buffer), then takes the
3-tap horizontal sums, so a pixel costs a few adds instead of 45 loads. Nothing but x and y is
kept for backward.

Backward (``_ssim_bwd``): one parallel pass over blocks of input rows. dS_p/dx_q is affine in
(x_q, y_q) with per-window coefficients (a_x, a_y, b, c; ``_formulas.ssim_and_coefficients``),
so a block recomputes g_p * coefficients for the output rows touching it (plus a 2-row halo)
into a block-local buffer, then gathers: vertical weighted sums over the output rows that read
q, then horizontal. Gathering (instead of scattering) keeps the pass race-free under prange,
and recomputing the windows is cheaper than storing four coefficient maps in forward.
"""

from __future__ import annotations

import numpy as np
import torch
from numba import njit, prange

from .._backend import numba_threads, prefer_workqueue_threading
from . import _formulas

prefer_workqueue_threading()  # numba's OpenMP next to torch's spins; see its docstring

_inline = njit(inline="always", cache=True)
_ssim_and_coefficients = _inline(_formulas.ssim_and_coefficients)
_reflect_index = _inline(_formulas.reflect_index)
_tap_count = _inline(_formulas.tap_count)


@njit(cache=True)
def _window_row(x, y, img, row, valid, col_x, col_y, col_xx, col_yy, col_xy):  # pragma: no cover
    """Column sums of x, y, x^2, y^2, xy over the three input rows of output row ``row``."""
    height, width = x.shape[1], x.shape[2]
    t = x.dtype.type
    for j in range(width):
        col_x[j] = t(0.0)
        col_y[j] = t(0.0)
        col_xx[j] = t(0.0)
        col_yy[j] = t(0.0)
        col_xy[j] = t(0.0)
    for dr in range(3):
        r = row + dr if valid else _reflect_index(row + dr - 1, height)
        for j in range(width):
            a = x[img, r, j]
            b = y[img, r, j]
            col_x[j] += a
            col_y[j] += b
            col_xx[j] += a * a
            col_yy[j] += b * b
            col_xy[j] += a * b


@njit(inline="always", cache=True)
def _window_cols(j, width, valid):
    if valid:
        return j, j + 1, j + 2
    return _reflect_index(j - 1, width), j, _reflect_index(j + 1, width)


@njit(parallel=True, fastmath=False, cache=True)
def _ssim_fwd(x, y, out, valid):  # pragma: no cover - compiled
    """x, y: (N, H, W); out: (N, Ho, Wo)."""
    n_img, height, width = x.shape
    out_h, out_w = out.shape[1], out.shape[2]
    t = x.dtype.type
    inv_n = t(1.0) / t(9.0)
    c1 = t(0.01 * 0.01)
    c2 = t(0.03 * 0.03)
    two = t(2.0)
    for task in prange(n_img * out_h):
        img = task // out_h
        row = task % out_h
        cols = np.empty((5, width), x.dtype)
        _window_row(x, y, img, row, valid, cols[0], cols[1], cols[2], cols[3], cols[4])
        for j in range(out_w):
            j0, j1, j2 = _window_cols(j, width, valid)
            s, _, _, _, _ = _ssim_and_coefficients(
                cols[0, j0] + cols[0, j1] + cols[0, j2],
                cols[1, j0] + cols[1, j1] + cols[1, j2],
                cols[2, j0] + cols[2, j1] + cols[2, j2],
                cols[3, j0] + cols[3, j1] + cols[3, j2],
                cols[4, j0] + cols[4, j1] + cols[4, j2],
                inv_n, c1, c2, two,
            )
            out[img, row, j] = s


#: input rows per backward task; each task recomputes up to 4 halo rows of window coefficients.
_BWD_ROWS = 32


@njit(parallel=True, fastmath=False, cache=True)
def _ssim_bwd(x, y, grad_out, grad_x, grad_y, valid):  # pragma: no cover - compiled
    """Gradients of sum(grad_out * ssim) w.r.t. x and y (each (N, H, W)).

    Each task owns a block of input rows; it recomputes g_p * (a_x, a_y, b, c) for the output rows
    whose windows touch the block (into a block-local buffer), then gathers them.
    """
    n_img, height, width = x.shape
    out_h, out_w = grad_out.shape[1], grad_out.shape[2]
    t = x.dtype.type
    inv_n = t(1.0) / t(9.0)
    c1 = t(0.01 * 0.01)
    c2 = t(0.03 * 0.03)
    two = t(2.0)
    n_blocks = (height + _BWD_ROWS - 1) // _BWD_ROWS
    for task in prange(n_img * n_blocks):
        img = task // n_blocks
        q0 = (task % n_blocks) * _BWD_ROWS
        q1 = min(q0 + _BWD_ROWS, height)
        p0 = max(q0 - 2, 0)
        p1 = min(q1 + 1, out_h - 1)
        cols = np.empty((5, width), x.dtype)
        gc = np.empty((p1 - p0 + 1, 4, out_w), x.dtype)
        for p_row in range(p0, p1 + 1):
            _window_row(x, y, img, p_row, valid, cols[0], cols[1], cols[2], cols[3], cols[4])
            k = p_row - p0
            for j in range(out_w):
                j0, j1, j2 = _window_cols(j, width, valid)
                _, a_x, a_y, b, c = _ssim_and_coefficients(
                    cols[0, j0] + cols[0, j1] + cols[0, j2],
                    cols[1, j0] + cols[1, j1] + cols[1, j2],
                    cols[2, j0] + cols[2, j1] + cols[2, j2],
                    cols[3, j0] + cols[3, j1] + cols[3, j2],
                    cols[4, j0] + cols[4, j1] + cols[4, j2],
                    inv_n, c1, c2, two,
                )
                g = grad_out[img, p_row, j]
                gc[k, 0, j] = g * a_x
                gc[k, 1, j] = g * a_y
                gc[k, 2, j] = g * b
                gc[k, 3, j] = g * c
        vert = np.empty((4, out_w), x.dtype)
        # Columns whose taps all have weight one: reflect q in [2, W-3] reads p in [q-1, q+1];
        # valid q in [2, W-3] reads p in [q-2, q].
        lo_col = 2
        hi_col = width - 3
        for q_row in range(q0, q1):
            for m in range(4):
                for j in range(out_w):
                    vert[m, j] = t(0.0)
            for p_row in range(max(q_row - 2, 0), min(q_row + 2, out_h - 1) + 1):
                count = _tap_count(q_row, p_row, height, valid)
                if count == 0:
                    continue
                w = t(count)
                k = p_row - p0
                for m in range(4):
                    for j in range(out_w):
                        vert[m, j] += w * gc[k, m, j]
            for q_col in range(width):
                if q_col >= lo_col and q_col <= hi_col:
                    j0 = q_col - 2 if valid else q_col - 1
                    s_ax = vert[0, j0] + vert[0, j0 + 1] + vert[0, j0 + 2]
                    s_ay = vert[1, j0] + vert[1, j0 + 1] + vert[1, j0 + 2]
                    s_b = vert[2, j0] + vert[2, j0 + 1] + vert[2, j0 + 2]
                    s_c = vert[3, j0] + vert[3, j0 + 1] + vert[3, j0 + 2]
                else:
                    s_ax = t(0.0)
                    s_ay = t(0.0)
                    s_b = t(0.0)
                    s_c = t(0.0)
                    for p_col in range(max(q_col - 2, 0), min(q_col + 2, out_w - 1) + 1):
                        count = _tap_count(q_col, p_col, width, valid)
                        if count == 0:
                            continue
                        w = t(count)
                        s_ax += w * vert[0, p_col]
                        s_ay += w * vert[1, p_col]
                        s_b += w * vert[2, p_col]
                        s_c += w * vert[3, p_col]
                a = x[img, q_row, q_col]
                b = y[img, q_row, q_col]
                grad_x[img, q_row, q_col] = s_ax + s_b * a + s_c * b
                grad_y[img, q_row, q_col] = s_ay + s_b * b + s_c * a


def ssim_forward(x, y, valid: bool):
    """Run the CPU forward on (N, H, W) contiguous tensors; returns the (N, Ho, Wo) map."""
    n_img, height, width = x.shape
    out_h, out_w = (height - 2, width - 2) if valid else (height, width)
    out = torch.empty((n_img, out_h, out_w), dtype=x.dtype)
    with numba_threads():
        _ssim_fwd(x.numpy(), y.numpy(), out.numpy(), bool(valid))
    return out


def ssim_backward(x, y, grad_out, valid: bool):
    """Run the CPU backward; returns (grad_x, grad_y), each (N, H, W)."""
    grad_x = torch.empty_like(x)
    grad_y = torch.empty_like(y)
    with numba_threads():
        _ssim_bwd(x.numpy(), y.numpy(), grad_out.numpy(), grad_x.numpy(), grad_y.numpy(), bool(valid))
    return grad_x, grad_y


__all__ = ["ssim_forward", "ssim_backward"]
