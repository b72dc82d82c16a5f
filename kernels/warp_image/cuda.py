"""warp_image on CUDA with numba.cuda (imported only when a CUDA tensor reaches the op).

One thread per reference pixel in both passes. Forward projects the pixel once and samples all C
channels with the same four taps. Backward recomputes the projection, writes the depth gradient
of its pixel directly and scatters the image gradient with ``cuda.atomic.add`` (several
reference pixels can sample one source pixel; float32 atomics are native, float64 atomics exist
from sm_60); with ``torch.use_deterministic_algorithms(True)`` the image gradient is summed by
``index_add_`` from per-pixel tap weights and indices instead. Kernels run on the tensors' device,
on torch's current stream there, and are compiled once per (device, dtype).
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


def warp_image_bwd_src_corners_kernel(src, depth, proj, corner_weight, corner_index):  # pragma: no cover
    """Per reference pixel: the bilinear weights of its sample's 4 taps and their flat indices into
    a (B * Hs * Ws + 1, C) channels-last image gradient (the last row is a spare for invalid
    pixels). The deterministic image gradient's first half.

    Shape: corner_weight, corner_index (B, H, W, 4).
    """
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
        for corner in range(4):
            corner_weight[b, i, j, corner] = t(0.0)
            corner_index[b, i, j, corner] = batch * src_h * src_w
        return
    bx = one - ax
    by = one - ay
    row = b * src_h
    corner_weight[b, i, j, 0] = by * bx
    corner_index[b, i, j, 0] = (row + y0) * src_w + x0
    corner_weight[b, i, j, 1] = by * ax
    corner_index[b, i, j, 1] = (row + y0) * src_w + x1
    corner_weight[b, i, j, 2] = ay * bx
    corner_index[b, i, j, 2] = (row + y1) * src_w + x0
    corner_weight[b, i, j, 3] = ay * ax
    corner_index[b, i, j, 3] = (row + y1) * src_w + x1


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

    The image gradient is a scatter (several reference pixels sample one source pixel): by default
    the backward kernel ``atomic.add``s it; with ``torch.use_deterministic_algorithms(True)`` a
    kernel writes each pixel's 4 tap weights and indices and ``index_add_`` (deterministic on CUDA
    in that mode) sums ``weight * grad`` per channel instead (memory: ``B*H*W*4*C`` values). The
    depth gradient is written per pixel either way.
    """
    deterministic = need_src and torch.are_deterministic_algorithms_enabled()
    atomic_src = need_src and not deterministic
    grad_src = torch.zeros_like(src) if atomic_src else torch.zeros((1, 1, 1, 1), dtype=src.dtype, device=src.device)
    grad_depth = torch.empty_like(depth)
    index = device_index(src.device)
    kernel = numba_cuda_kernel(__name__, "warp_image_bwd_kernel", registry_signature("warp_image_bwd", src.dtype), index)
    grid, block = launch_config_1d(depth.numel())
    with numba_device(src.device):
        stream = numba_stream(src.device)
        kernel[grid, block, stream](
            as_numba_array(src), as_numba_array(depth), as_numba_array(proj), as_numba_array(grad_out),
            as_numba_array(grad_src), as_numba_array(grad_depth), bool(atomic_src),
        )
        if deterministic:
            batch, channels, src_h, src_w = src.shape
            height, width = depth.shape[2], depth.shape[3]
            corner_weight = torch.empty((batch, height, width, 4), dtype=src.dtype, device=src.device)
            corner_index = torch.empty((batch, height, width, 4), dtype=torch.int64, device=src.device)
            corners = numba_cuda_kernel(
                __name__, "warp_image_bwd_src_corners_kernel",
                registry_signature("warp_image_bwd_src_corners", src.dtype), index,
            )
            corners[grid, block, stream](
                as_numba_array(src), as_numba_array(depth), as_numba_array(proj),
                as_numba_array(corner_weight), as_numba_array(corner_index),
            )
    if deterministic:
        terms = corner_weight.unsqueeze(-1) * grad_out.permute(0, 2, 3, 1).unsqueeze(3)  # (B, H, W, 4, C)
        flat = torch.zeros((batch * src_h * src_w + 1, channels), dtype=src.dtype, device=src.device)  # + spare
        flat.index_add_(0, corner_index.view(-1), terms.reshape(-1, channels))
        grad_src = flat[:-1].view(batch, src_h, src_w, channels).permute(0, 3, 1, 2).contiguous()
    return (grad_src if need_src else None), (grad_depth if need_depth else None)
