"""CUDA kernels of the fused warp + group-wise correlation (numba.cuda).

Why numba.cuda rather than a cupy RawKernel: the same Python kernels run in numba's CUDA
simulator, so their indexing, bounds and atomics are tested on machines without a GPU
(``tests/kernel_ops/test_cudasim_correlation_aggregation.py``), and ``numba.cuda.compile_ptx``
compile-checks them for sm_80/sm_90 (``kernels._backend.KERNEL_REGISTRY``). This module imports
``numba.cuda`` at import time; it is itself imported only when a CUDA tensor reaches the op (or by
those tests).

Layout: features stay channels-first ``(B, C, H, W)``; neighbouring threads are neighbouring
pixels, so the per-channel reads of ``ref`` are coalesced and those of ``src`` nearly so.

* forward: one thread per ``(b, d, i, j)``; loops over channels, writes G correlations;
* backward, reference gradient: one thread per ``(b, c, i, j)`` looping over depths (no atomics);
* backward, source gradient: one thread per ``(b, d, i, j)``, ``atomic.add`` into 4 corners.

Sample positions are recomputed in the backward kernels: the ``(B, C, D, H, W)`` warped volume
never exists. Arithmetic stays in the input dtype: every constant (0.5, 1, the pixel centres)
arrives in a typed array, because numba would promote ``int64 op float32`` to float64.
"""

from __future__ import annotations

import torch
from numba import cuda

from .._backend import as_numba_array, device_index, launch_config_1d, numba_cuda_kernel, numba_stream

# consts: [0.5, min source depth, Ws - 1, Hs - 1, 1 / (C / G), 0, 1]
_HALF, _MIN_Z, _XMAX, _YMAX, _INV_CG, _ZERO, _ONE = range(7)


def warp_correlation_fwd_kernel(ref, src, proj, consts, centres, depth, correlation, valid):
    """One thread per (b, d, i, j): correlation (B, G, D, H, W), valid (B, D, H, W) uint8."""
    n = cuda.grid(1)
    B, C, H, W = ref.shape
    Hs, Ws = src.shape[2], src.shape[3]
    D = depth.shape[1]
    G = correlation.shape[1]
    if n >= B * D * H * W:
        return
    j = n % W
    t = n // W
    i = t % H
    t = t // H
    d = t % D
    b = t // D
    # Source sample position: the reference's arithmetic, term by term. (Written out in each
    # kernel: a numba.cuda device function needs a GPU to learn its compute capability.)
    px = centres[j]
    py = centres[i]
    dep = depth[b, d, i, j]
    u = ((proj[b, 0] * px + proj[b, 1] * py) + proj[b, 2]) * dep + proj[b, 9]
    v = ((proj[b, 3] * px + proj[b, 4] * py) + proj[b, 5]) * dep + proj[b, 10]
    z = ((proj[b, 6] * px + proj[b, 7] * py) + proj[b, 8]) * dep + proj[b, 11]
    ok = z > consts[_MIN_Z]
    x = consts[_ZERO]
    y = consts[_ZERO]
    if ok:
        x = u / z - consts[_HALF]
        y = v / z - consts[_HALF]
        ok = x >= consts[_ZERO] and x <= consts[_XMAX] and y >= consts[_ZERO] and y <= consts[_YMAX]
    if not ok:
        valid[b, d, i, j] = 0
        for g in range(G):
            correlation[b, g, d, i, j] = consts[_ZERO]
        return
    valid[b, d, i, j] = 1
    one = consts[_ONE]
    wx = x % one  # x >= 0 here; % keeps float32 where math.floor would give int64
    wy = y % one
    x0 = int(x - wx)
    y0 = int(y - wy)
    x1 = min(x0 + 1, Ws - 1)  # its weight wx is 0 where x0 + 1 == Ws
    y1 = min(y0 + 1, Hs - 1)
    w00 = (one - wx) * (one - wy)
    w01 = wx * (one - wy)
    w10 = (one - wx) * wy
    w11 = wx * wy
    cg = C // G
    for g in range(G):
        acc = consts[_ZERO]
        for c in range(g * cg, (g + 1) * cg):
            sample = w00 * src[b, c, y0, x0] + w01 * src[b, c, y0, x1] + w10 * src[b, c, y1, x0] + w11 * src[b, c, y1, x1]
            acc += ref[b, c, i, j] * sample
        correlation[b, g, d, i, j] = acc * consts[_INV_CG]


def warp_correlation_bwd_ref_kernel(grad_correlation, src, proj, consts, centres, depth, grad_ref):
    """One thread per (b, c, i, j): grad_ref (B, C, H, W) = sum_d grad * sample / (C / G)."""
    n = cuda.grid(1)
    B, C, H, W = grad_ref.shape
    Hs, Ws = src.shape[2], src.shape[3]
    D = depth.shape[1]
    G = grad_correlation.shape[1]
    if n >= B * C * H * W:
        return
    j = n % W
    t = n // W
    i = t % H
    t = t // H
    c = t % C
    b = t // C
    g = c // (C // G)
    one = consts[_ONE]
    acc = consts[_ZERO]
    for d in range(D):
        # Source sample position, as in the forward kernel.
        px = centres[j]
        py = centres[i]
        dep = depth[b, d, i, j]
        u = ((proj[b, 0] * px + proj[b, 1] * py) + proj[b, 2]) * dep + proj[b, 9]
        v = ((proj[b, 3] * px + proj[b, 4] * py) + proj[b, 5]) * dep + proj[b, 10]
        z = ((proj[b, 6] * px + proj[b, 7] * py) + proj[b, 8]) * dep + proj[b, 11]
        ok = z > consts[_MIN_Z]
        x = consts[_ZERO]
        y = consts[_ZERO]
        if ok:
            x = u / z - consts[_HALF]
            y = v / z - consts[_HALF]
            ok = x >= consts[_ZERO] and x <= consts[_XMAX] and y >= consts[_ZERO] and y <= consts[_YMAX]
        if ok:
            wx = x % one
            wy = y % one
            x0 = int(x - wx)
            y0 = int(y - wy)
            x1 = min(x0 + 1, Ws - 1)
            y1 = min(y0 + 1, Hs - 1)
            sample = (one - wy) * ((one - wx) * src[b, c, y0, x0] + wx * src[b, c, y0, x1]) + wy * (
                (one - wx) * src[b, c, y1, x0] + wx * src[b, c, y1, x1]
            )
            acc += grad_correlation[b, g, d, i, j] * sample
    grad_ref[b, c, i, j] = acc * consts[_INV_CG]


def warp_correlation_bwd_src_kernel(grad_correlation, ref, proj, consts, centres, depth, grad_src):
    """One thread per (b, d, i, j): scatters grad * ref / (C / G) into grad_src (zeroed) atomically."""
    n = cuda.grid(1)
    B, C, H, W = ref.shape
    Hs, Ws = grad_src.shape[2], grad_src.shape[3]
    D = depth.shape[1]
    G = grad_correlation.shape[1]
    if n >= B * D * H * W:
        return
    j = n % W
    t = n // W
    i = t % H
    t = t // H
    d = t % D
    b = t // D
    # Source sample position: the reference's arithmetic, term by term. (Written out in each
    # kernel: a numba.cuda device function needs a GPU to learn its compute capability.)
    px = centres[j]
    py = centres[i]
    dep = depth[b, d, i, j]
    u = ((proj[b, 0] * px + proj[b, 1] * py) + proj[b, 2]) * dep + proj[b, 9]
    v = ((proj[b, 3] * px + proj[b, 4] * py) + proj[b, 5]) * dep + proj[b, 10]
    z = ((proj[b, 6] * px + proj[b, 7] * py) + proj[b, 8]) * dep + proj[b, 11]
    ok = z > consts[_MIN_Z]
    x = consts[_ZERO]
    y = consts[_ZERO]
    if ok:
        x = u / z - consts[_HALF]
        y = v / z - consts[_HALF]
        ok = x >= consts[_ZERO] and x <= consts[_XMAX] and y >= consts[_ZERO] and y <= consts[_YMAX]
    if not ok:
        return
    one = consts[_ONE]
    zero = consts[_ZERO]
    wx = x % one
    wy = y % one
    x0 = int(x - wx)
    y0 = int(y - wy)
    x1 = min(x0 + 1, Ws - 1)
    y1 = min(y0 + 1, Hs - 1)
    w00 = (one - wx) * (one - wy)
    w01 = wx * (one - wy)
    w10 = (one - wx) * wy
    w11 = wx * wy
    cg = C // G
    for g in range(G):
        gg = grad_correlation[b, g, d, i, j] * consts[_INV_CG]
        if gg == zero:
            continue
        for c in range(g * cg, (g + 1) * cg):
            t_c = gg * ref[b, c, i, j]
            cuda.atomic.add(grad_src, (b, c, y0, x0), w00 * t_c)
            if w01 != zero:
                cuda.atomic.add(grad_src, (b, c, y0, x1), w01 * t_c)
            if w10 != zero:
                cuda.atomic.add(grad_src, (b, c, y1, x0), w10 * t_c)
            if w11 != zero:
                cuda.atomic.add(grad_src, (b, c, y1, x1), w11 * t_c)


def _array_types(dtype: str) -> dict[str, str]:
    return {f"f{n}": f"{dtype}[{', '.join([':'] * (n - 1) + ['::1'])}]" for n in range(1, 6)}


def _signature(template: str, dtype: str) -> str:
    return template.format(**_array_types(dtype), f=dtype)


#: numba signature templates, expanded per dtype (shared with the compile-check registry).
SIGNATURES = {
    "warp_correlation_fwd_kernel": "void({f4}, {f4}, {f2}, {f1}, {f1}, {f4}, {f5}, uint8[:, :, :, ::1])",
    "warp_correlation_bwd_ref_kernel": "void({f5}, {f4}, {f2}, {f1}, {f1}, {f4}, {f4})",
    "warp_correlation_bwd_src_kernel": "void({f5}, {f4}, {f2}, {f1}, {f1}, {f4}, {f4})",
}


def _kernel(name: str, dtype: torch.dtype, device: torch.device):
    dtype_name = str(dtype).replace("torch.", "")
    return numba_cuda_kernel(__name__, name, _signature(SIGNATURES[name], dtype_name), device_index(device))


def _constants(dtype, device, src_height: int, src_width: int, channels_per_group: int, size: int):
    consts = torch.tensor(
        [0.5, 1e-6, src_width - 1, src_height - 1, 1.0 / channels_per_group, 0.0, 1.0], dtype=dtype, device=device
    )
    centres = torch.arange(size, dtype=dtype, device=device) + 0.5
    return consts, centres


def forward(ref_feature, src_feature, proj, depth, num_groups):
    """Forward on CUDA tensors, on torch's current stream; returns (correlation, valid, saved)."""
    B, C, H, W = ref_feature.shape
    Hs, Ws = src_feature.shape[-2:]
    D = depth.shape[1]
    device, dtype = ref_feature.device, ref_feature.dtype
    ref = ref_feature.detach().contiguous()
    src = src_feature.detach().contiguous()
    depth = depth.detach().contiguous()
    proj = proj.to(device).contiguous()
    consts, centres = _constants(dtype, device, Hs, Ws, C // num_groups, max(H, W))
    correlation = torch.empty((B, num_groups, D, H, W), dtype=dtype, device=device)
    valid = torch.empty((B, D, H, W), dtype=torch.uint8, device=device)
    grid, block = launch_config_1d(B * D * H * W)
    kernel = _kernel("warp_correlation_fwd_kernel", dtype, device)
    kernel[grid, block, numba_stream(device)](
        *(as_numba_array(t) for t in (ref, src, proj, consts, centres, depth, correlation, valid))
    )
    return correlation, valid.view(torch.bool), (ref, src, proj, depth, consts, centres)


def backward(saved, grad_correlation, need_ref: bool, need_src: bool):
    """Gradients (grad_ref | None, grad_src | None) on CUDA, on torch's current stream."""
    ref, src, proj, depth, consts, centres = saved
    B, C, H, W = ref.shape
    D = depth.shape[1]
    device, dtype = ref.device, ref.dtype
    grad_correlation = grad_correlation.contiguous()
    stream = numba_stream(device)
    grad_ref = grad_src = None
    if need_ref:
        grad_ref = torch.empty_like(ref)
        grid, block = launch_config_1d(B * C * H * W)
        kernel = _kernel("warp_correlation_bwd_ref_kernel", dtype, device)
        kernel[grid, block, stream](
            *(as_numba_array(t) for t in (grad_correlation, src, proj, consts, centres, depth, grad_ref))
        )
    if need_src:
        grad_src = torch.zeros_like(src)
        grid, block = launch_config_1d(B * D * H * W)
        kernel = _kernel("warp_correlation_bwd_src_kernel", dtype, device)
        kernel[grid, block, stream](
            *(as_numba_array(t) for t in (grad_correlation, ref, proj, consts, centres, depth, grad_src))
        )
    return grad_ref, grad_src
