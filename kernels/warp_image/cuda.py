"""warp_image on CUDA with numba.cuda (imported only when a CUDA tensor reaches the op).

One thread per reference pixel in both passes. Forward projects the pixel once and samples all C
channels with the same four taps. Backward recomputes the projection, writes the depth gradient
of its pixel directly and scatters the image gradient with ``cuda.atomic.add`` (several
reference pixels can sample one source pixel; float32 atomics are native, float64 atomics exist
from sm_60). Kernels run on torch's current stream and are compiled once per (device, dtype).
"""

from __future__ import annotations

import torch
from numba import cuda

from .._backend import (
    alert_not_deterministic,
    as_numba_array,
    device_index,
    launch_config_1d,
    numba_cuda_kernel,
    numba_device,
    numba_stream,
    registry_signature,
)
from . import _formulas

# inline="always": resolved at numba-IR level, so cuda.compile_ptx needs no GPU.
_project_pixel = cuda.jit(device=True, inline="always")(_formulas.project_pixel)
_bilinear_setup = cuda.jit(device=True, inline="always")(_formulas.bilinear_setup)


def warp_image_fwd_kernel(src, depth, proj, out, valid_out):  # pragma: no cover - compiled
    batch, channels, src_h, src_w = src.shape
    height, width = depth.shape[2], depth.shape[3]
    idx = cuda.grid(1)
    if idx >= batch * height * width:
        return
    j = idx % width
    i = (idx // width) % height
    b = idx // (width * height)
    t = src.dtype.type
    half = t(0.5)
    one = t(1.0)
    u = t(j) + half
    v = t(i) + half
    rx, ry, rz, hx, hy, hz = _project_pixel(proj, b, u, v, depth[b, 0, i, j])
    ok, x0, y0, x1, y1, ax, ay = _bilinear_setup(hx, hy, hz, src_h, src_w, t(src_w - 1), t(src_h - 1), t(1e-6), half, t)
    if not ok:
        valid_out[b, 0, i, j] = 0
        for c in range(channels):
            out[b, c, i, j] = t(0.0)
        return
    valid_out[b, 0, i, j] = 1
    bx = one - ax
    by = one - ay
    for c in range(channels):
        out[b, c, i, j] = by * (bx * src[b, c, y0, x0] + ax * src[b, c, y0, x1]) + ay * (
            bx * src[b, c, y1, x0] + ax * src[b, c, y1, x1]
        )


def warp_image_bwd_kernel(src, depth, proj, grad_out, grad_src, grad_depth, need_src):  # pragma: no cover
    """grad_src must be zero-initialised; grad_depth is written for every pixel."""
    batch, channels, src_h, src_w = src.shape
    height, width = depth.shape[2], depth.shape[3]
    idx = cuda.grid(1)
    if idx >= batch * height * width:
        return
    j = idx % width
    i = (idx // width) % height
    b = idx // (width * height)
    t = src.dtype.type
    half = t(0.5)
    one = t(1.0)
    u = t(j) + half
    v = t(i) + half
    rx, ry, rz, hx, hy, hz = _project_pixel(proj, b, u, v, depth[b, 0, i, j])
    ok, x0, y0, x1, y1, ax, ay = _bilinear_setup(hx, hy, hz, src_h, src_w, t(src_w - 1), t(src_h - 1), t(1e-6), half, t)
    if not ok:
        grad_depth[b, 0, i, j] = t(0.0)
        return
    bx = one - ax
    by = one - ay
    g_fx = t(0.0)
    g_fy = t(0.0)
    for c in range(channels):
        g = grad_out[b, c, i, j]
        if need_src:
            cuda.atomic.add(grad_src, (b, c, y0, x0), g * by * bx)
            cuda.atomic.add(grad_src, (b, c, y0, x1), g * by * ax)
            cuda.atomic.add(grad_src, (b, c, y1, x0), g * ay * bx)
            cuda.atomic.add(grad_src, (b, c, y1, x1), g * ay * ax)
        i00 = src[b, c, y0, x0]
        i01 = src[b, c, y0, x1]
        i10 = src[b, c, y1, x0]
        i11 = src[b, c, y1, x1]
        g_fx += g * (by * (i01 - i00) + ay * (i11 - i10))
        g_fy += g * (bx * (i10 - i00) + ax * (i11 - i01))
    inv_hz2 = one / (hz * hz)
    grad_depth[b, 0, i, j] = g_fx * (rx * hz - hx * rz) * inv_hz2 + g_fy * (ry * hz - hy * rz) * inv_hz2


def warp_image_forward(src: torch.Tensor, depth: torch.Tensor, proj: torch.Tensor):
    """Launch the forward on contiguous CUDA tensors; returns (warped, valid as uint8)."""
    batch, channels = src.shape[:2]
    height, width = depth.shape[2:]
    out = torch.empty((batch, channels, height, width), dtype=src.dtype, device=src.device)
    valid = torch.empty((batch, 1, height, width), dtype=torch.uint8, device=src.device)
    kernel = numba_cuda_kernel(__name__, "warp_image_fwd_kernel", registry_signature("warp_image_fwd", src.dtype),
                               device_index(src.device))
    grid, block = launch_config_1d(batch * height * width)
    with numba_device(src.device):
        kernel[grid, block, numba_stream(src.device)](
            as_numba_array(src), as_numba_array(depth), as_numba_array(proj), as_numba_array(out), as_numba_array(valid)
        )
    return out, valid


def warp_image_backward(src, depth, proj, grad_out, need_src: bool, need_depth: bool):
    """Launch the backward; returns (grad_src or None, grad_depth or None).

    The image gradient scatters with atomics: with ``torch.use_deterministic_algorithms(True)``
    asking for it raises ``RuntimeError`` (the depth gradient alone is written per pixel).
    """
    if need_src:
        alert_not_deterministic("warp_image_backward_cuda (gradient to src_image)")
    grad_src = torch.zeros_like(src) if need_src else torch.zeros((1, 1, 1, 1), dtype=src.dtype, device=src.device)
    grad_depth = torch.empty_like(depth)
    kernel = numba_cuda_kernel(__name__, "warp_image_bwd_kernel", registry_signature("warp_image_bwd", src.dtype),
                               device_index(src.device))
    grid, block = launch_config_1d(depth.numel())
    with numba_device(src.device):
        kernel[grid, block, numba_stream(src.device)](
            as_numba_array(src), as_numba_array(depth), as_numba_array(proj), as_numba_array(grad_out),
            as_numba_array(grad_src), as_numba_array(grad_depth), bool(need_src),
        )
    return (grad_src if need_src else None), (grad_depth if need_depth else None)
