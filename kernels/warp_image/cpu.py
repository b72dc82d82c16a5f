"""warp_image on the CPU: numba ``njit(parallel=True)`` twins of the CUDA kernels.

Forward: prange over the B*H reference rows; each pixel is projected once and all C channels
are sampled with the same four taps.

Backward: the image gradient is a scatter (several reference pixels can hit one source pixel),
so the B*H rows are cut into one contiguous chunk per thread and each chunk scatters into its own
copy of the source-image gradient (chunk 0 straight into the result); the copies are summed in a
parallel pass at the end (with 2 threads one extra image: cheaper than atomics, and
deterministic; channels-last copies were tried and measured slower). The depth gradient is per reference pixel and written directly.
"""

from __future__ import annotations

import torch
from numba import njit, prange

from .._backend import cpu_threads, numba_threads, prefer_workqueue_threading
from . import _formulas

prefer_workqueue_threading()  # numba's OpenMP next to torch's spins; see its docstring

_project_pixel = njit(inline="always", cache=True)(_formulas.project_pixel)
_bilinear_setup = njit(inline="always", cache=True)(_formulas.bilinear_setup)


@njit(parallel=True, fastmath=False, cache=True)
def _warp_image_fwd(src, depth, proj, out, valid_out):  # pragma: no cover - compiled
    batch, channels, src_h, src_w = src.shape
    height, width = depth.shape[2], depth.shape[3]
    t = src.dtype.type
    eps = t(1e-6)
    half = t(0.5)
    one = t(1.0)
    x_max = t(src_w - 1)
    y_max = t(src_h - 1)
    for task in prange(batch * height):
        b = task // height
        i = task % height
        v = t(i) + half
        for j in range(width):
            u = t(j) + half
            rx, ry, rz, hx, hy, hz = _project_pixel(proj, b, u, v, depth[b, 0, i, j])
            ok, x0, y0, x1, y1, ax, ay = _bilinear_setup(hx, hy, hz, src_h, src_w, x_max, y_max, eps, half, t)
            valid_out[b, 0, i, j] = 1 if ok else 0
            if not ok:
                for c in range(channels):
                    out[b, c, i, j] = t(0.0)
                continue
            bx = one - ax
            by = one - ay
            for c in range(channels):
                out[b, c, i, j] = by * (bx * src[b, c, y0, x0] + ax * src[b, c, y0, x1]) + ay * (
                    bx * src[b, c, y1, x0] + ax * src[b, c, y1, x1]
                )


@njit(parallel=True, fastmath=False, cache=True)
def _warp_image_bwd(src, depth, proj, grad_out, grad_src, extra, grad_depth, n_parts, need_src, need_depth):  # pragma: no cover
    """Row chunk 0 scatters into grad_src, chunk p > 0 into extra[p - 1]; all uninitialised on entry.

    Zeroing and the final reduction run here, in parallel, instead of torch.zeros + sum(0): no
    temporary slab, one pass fewer, and every buffer first touched by the worker threads.
    """
    batch, channels, src_h, src_w = src.shape
    height, width = depth.shape[2], depth.shape[3]
    t = src.dtype.type
    eps = t(1e-6)
    half = t(0.5)
    one = t(1.0)
    x_max = t(src_w - 1)
    y_max = t(src_h - 1)
    n_rows = batch * height
    batch_c_rows = batch * channels * src_h
    if need_src:
        for task in prange(n_parts * batch_c_rows):
            part = task // batch_c_rows
            row = task % batch_c_rows
            b = row // (channels * src_h)
            c = (row // src_h) % channels
            y = row % src_h
            for x in range(src_w):
                if part == 0:
                    grad_src[b, c, y, x] = t(0.0)
                else:
                    extra[part - 1, b, c, y, x] = t(0.0)
    for part in prange(n_parts):
        target = grad_src if part == 0 else extra[part - 1]
        row_lo = part * n_rows // n_parts
        row_hi = (part + 1) * n_rows // n_parts
        for task in range(row_lo, row_hi):
            b = task // height
            i = task % height
            v = t(i) + half
            for j in range(width):
                u = t(j) + half
                z = depth[b, 0, i, j]
                rx, ry, rz, hx, hy, hz = _project_pixel(proj, b, u, v, z)
                ok, x0, y0, x1, y1, ax, ay = _bilinear_setup(hx, hy, hz, src_h, src_w, x_max, y_max, eps, half, t)
                if not ok:
                    if need_depth:
                        grad_depth[b, 0, i, j] = t(0.0)
                    continue
                bx = one - ax
                by = one - ay
                g_fx = t(0.0)
                g_fy = t(0.0)
                for c in range(channels):
                    g = grad_out[b, c, i, j]
                    if need_src:
                        target[b, c, y0, x0] += g * by * bx
                        target[b, c, y0, x1] += g * by * ax
                        target[b, c, y1, x0] += g * ay * bx
                        target[b, c, y1, x1] += g * ay * ax
                    if need_depth:
                        i00 = src[b, c, y0, x0]
                        i01 = src[b, c, y0, x1]
                        i10 = src[b, c, y1, x0]
                        i11 = src[b, c, y1, x1]
                        g_fx += g * (by * (i01 - i00) + ay * (i11 - i10))
                        g_fy += g * (bx * (i10 - i00) + ax * (i11 - i01))
                if need_depth:
                    # fx = hx / hz - 1/2 with dh/dz = r: dfx/dz = (rx hz - hx rz) / hz^2
                    inv_hz2 = one / (hz * hz)
                    dfx = (rx * hz - hx * rz) * inv_hz2
                    dfy = (ry * hz - hy * rz) * inv_hz2
                    grad_depth[b, 0, i, j] = g_fx * dfx + g_fy * dfy

    if need_src and n_parts > 1:
        for row in prange(batch_c_rows):
            b = row // (channels * src_h)
            c = (row // src_h) % channels
            y = row % src_h
            for x in range(src_w):
                total = grad_src[b, c, y, x]
                for p in range(n_parts - 1):
                    total += extra[p, b, c, y, x]
                grad_src[b, c, y, x] = total

def warp_image_forward(src: torch.Tensor, depth: torch.Tensor, proj: torch.Tensor):
    """Run the CPU forward on contiguous tensors; returns (warped, valid as uint8)."""
    batch, channels = src.shape[:2]
    height, width = depth.shape[2:]
    out = torch.empty((batch, channels, height, width), dtype=src.dtype)
    valid = torch.empty((batch, 1, height, width), dtype=torch.uint8)
    with numba_threads():
        _warp_image_fwd(src.numpy(), depth.numpy(), proj.numpy(), out.numpy(), valid.numpy())
    return out, valid


def warp_image_backward(src, depth, proj, grad_out, need_src: bool, need_depth: bool):
    """Run the CPU backward; returns (grad_src or None, grad_depth or None)."""
    n_parts = max(1, min(cpu_threads(), depth.shape[0] * depth.shape[2]))
    batch, channels, src_h, src_w = src.shape
    grad_src = torch.empty_like(src) if need_src else torch.empty((1, 1, 1, 1), dtype=src.dtype)
    extra = torch.empty((max(n_parts - 1, 1), batch, channels, src_h, src_w) if need_src else (1, 1, 1, 1, 1),
                        dtype=src.dtype)
    grad_depth = torch.empty_like(depth) if need_depth else torch.empty((1, 1, 1, 1), dtype=src.dtype)
    with numba_threads():
        _warp_image_bwd(src.numpy(), depth.numpy(), proj.numpy(), grad_out.numpy(), grad_src.numpy(), extra.numpy(),
                        grad_depth.numpy(), n_parts, bool(need_src), bool(need_depth))
    return (grad_src if need_src else None), (grad_depth if need_depth else None)


__all__ = ["warp_image_forward", "warp_image_backward"]
