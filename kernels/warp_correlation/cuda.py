"""CUDA kernels of the fused warp + group-wise correlation (numba.cuda).

The op also has CUDA C twins of these kernels (``kernels.cu``, ``cuda_c.py``); its ``CUDA_BACKEND``
picks one (see the package docstring; numba stays the default until a GPU measurement compares
them). Why numba.cuda was written first: the same Python kernels run in numba's CUDA simulator, so their indexing, bounds and atomics are tested on machines without a GPU
(``tests/kernel_ops/test_cudasim_correlation_aggregation.py``), and ``numba.cuda.compile_ptx``
compile-checks them for sm_80/sm_90 (``kernels._backend.KERNEL_REGISTRY``). This module imports
``numba.cuda`` at import time; it is itself imported only when a CUDA tensor reaches the op (or by
those tests).

Layout: features stay channels-first ``(B, C, H, W)``; neighbouring threads are neighbouring
pixels, so the per-channel reads of ``ref`` are coalesced and those of ``src`` nearly so.

* forward: one thread per ``(b, d, i, j)``; loops over channels, writes G correlations;
* backward, reference gradient: one thread per ``(b, c, i, j)`` looping over depths (no atomics);
* backward, source gradient: one thread per ``(b, d, i, j)``, ``atomic.add`` into 4 corners;
  with ``torch.use_deterministic_algorithms(True)``: one thread per ``(b, d, i, j)`` writes its
  4 corner weights and indices, and ``index_add_`` sums the per-channel terms.

Sample positions are recomputed in the backward kernels: the ``(B, C, D, H, W)`` warped volume
never exists. Arithmetic stays in the input dtype: the constants arrive as scalar arguments of the features'
dtype (0.5, and 1 and 0 derived from it) and the pixel centres in a typed array filled on the
device, because numba would promote ``int64 op float32`` to float64. Host side: no
synchronisation and no host-to-device copy per call; launches go to the tensors' device and
torch's current stream there.
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
    scalar_type,
)
from ._layout import sum_corner_terms
from .reference import MIN_SRC_DEPTH



def warp_correlation_fwd_kernel(ref, src, proj, centres, depth, correlation, valid, half, min_z, xmax, ymax, inv_cg):
    """One thread per (b, d, i, j): correlation (B, G, D, H, W), valid (B, D, H, W) uint8."""
    n = cuda.grid(1)
    B, C, H, W = ref.shape
    Hs, Ws = src.shape[2], src.shape[3]
    D = depth.shape[1]
    G = correlation.shape[1]
    if n >= B * D * H * W:
        return
    one = half + half  # typed like the arrays (a literal 1.0 would be float64)
    zero = half - half
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
    ok = z > min_z
    x = zero
    y = zero
    if ok:
        x = u / z - half
        y = v / z - half
        ok = x >= zero and x <= xmax and y >= zero and y <= ymax
    if not ok:
        valid[b, d, i, j] = 0
        for g in range(G):
            correlation[b, g, d, i, j] = zero
        return
    valid[b, d, i, j] = 1
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
        acc = zero
        for c in range(g * cg, (g + 1) * cg):
            sample = w00 * src[b, c, y0, x0] + w01 * src[b, c, y0, x1] + w10 * src[b, c, y1, x0] + w11 * src[b, c, y1, x1]
            acc += ref[b, c, i, j] * sample
        correlation[b, g, d, i, j] = acc * inv_cg


def warp_correlation_bwd_ref_kernel(grad_correlation, src, proj, centres, depth, grad_ref, half, min_z, xmax, ymax, inv_cg):
    """One thread per (b, c, i, j): grad_ref (B, C, H, W) = sum_d grad * sample / (C / G)."""
    n = cuda.grid(1)
    B, C, H, W = grad_ref.shape
    Hs, Ws = src.shape[2], src.shape[3]
    D = depth.shape[1]
    G = grad_correlation.shape[1]
    if n >= B * C * H * W:
        return
    one = half + half
    zero = half - half
    j = n % W
    t = n // W
    i = t % H
    t = t // H
    c = t % C
    b = t // C
    g = c // (C // G)
    acc = zero
    for d in range(D):
        # Source sample position, as in the forward kernel.
        px = centres[j]
        py = centres[i]
        dep = depth[b, d, i, j]
        u = ((proj[b, 0] * px + proj[b, 1] * py) + proj[b, 2]) * dep + proj[b, 9]
        v = ((proj[b, 3] * px + proj[b, 4] * py) + proj[b, 5]) * dep + proj[b, 10]
        z = ((proj[b, 6] * px + proj[b, 7] * py) + proj[b, 8]) * dep + proj[b, 11]
        ok = z > min_z
        x = zero
        y = zero
        if ok:
            x = u / z - half
            y = v / z - half
            ok = x >= zero and x <= xmax and y >= zero and y <= ymax
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
    grad_ref[b, c, i, j] = acc * inv_cg


def warp_correlation_bwd_src_kernel(grad_correlation, ref, proj, centres, depth, grad_src, half, min_z, xmax, ymax, inv_cg):
    """One thread per (b, d, i, j): scatters grad * ref / (C / G) into grad_src (zeroed) atomically."""
    n = cuda.grid(1)
    B, C, H, W = ref.shape
    Hs, Ws = grad_src.shape[2], grad_src.shape[3]
    D = depth.shape[1]
    G = grad_correlation.shape[1]
    if n >= B * D * H * W:
        return
    one = half + half  # typed like the arrays (a literal 1.0 would be float64)
    zero = half - half
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
    ok = z > min_z
    x = zero
    y = zero
    if ok:
        x = u / z - half
        y = v / z - half
        ok = x >= zero and x <= xmax and y >= zero and y <= ymax
    if not ok:
        return
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
        gg = grad_correlation[b, g, d, i, j] * inv_cg
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


def warp_correlation_bwd_src_corners_kernel(proj, centres, depth, corner_weight, corner_index, src_height, src_width, half, min_z, xmax, ymax):
    """One thread per (b, d, i, j): the bilinear weights of its sample's 4 corners and their flat
    indices into a (B * Hs * Ws + 1, C) channels-last source gradient (the last row is a spare for
    invalid samples and out-of-map corners). The deterministic source gradient's first half.

    Shape: corner_weight, corner_index (B, D, H, W, 4).
    """
    n = cuda.grid(1)
    B, D, H, W = depth.shape
    if n >= B * D * H * W:
        return
    one = half + half
    zero = half - half
    j = n % W
    t = n // W
    i = t % H
    t = t // H
    d = t % D
    b = t // D
    spare = B * src_height * src_width
    for corner in range(4):
        corner_weight[b, d, i, j, corner] = zero
        corner_index[b, d, i, j, corner] = spare
    # Source sample position: the reference's arithmetic, term by term.
    px = centres[j]
    py = centres[i]
    dep = depth[b, d, i, j]
    u = ((proj[b, 0] * px + proj[b, 1] * py) + proj[b, 2]) * dep + proj[b, 9]
    v = ((proj[b, 3] * px + proj[b, 4] * py) + proj[b, 5]) * dep + proj[b, 10]
    z = ((proj[b, 6] * px + proj[b, 7] * py) + proj[b, 8]) * dep + proj[b, 11]
    ok = z > min_z
    x = zero
    y = zero
    if ok:
        x = u / z - half
        y = v / z - half
        ok = x >= zero and x <= xmax and y >= zero and y <= ymax
    if not ok:
        return
    wx = x % one
    wy = y % one
    x0 = int(x - wx)
    y0 = int(y - wy)
    x1 = min(x0 + 1, src_width - 1)
    y1 = min(y0 + 1, src_height - 1)
    row = b * src_height
    corner_weight[b, d, i, j, 0] = (one - wx) * (one - wy)
    corner_index[b, d, i, j, 0] = (row + y0) * src_width + x0
    corner_weight[b, d, i, j, 1] = wx * (one - wy)
    corner_index[b, d, i, j, 1] = (row + y0) * src_width + x1
    corner_weight[b, d, i, j, 2] = (one - wx) * wy
    corner_index[b, d, i, j, 2] = (row + y1) * src_width + x0
    corner_weight[b, d, i, j, 3] = wx * wy
    corner_index[b, d, i, j, 3] = (row + y1) * src_width + x1


def _array_types(dtype: str) -> dict[str, str]:
    return {f"f{n}": f"{dtype}[{', '.join([':'] * (n - 1) + ['::1'])}]" for n in range(1, 6)}


def _signature(template: str, dtype: str) -> str:
    return template.format(**_array_types(dtype), f=dtype)


# The scalar arguments every kernel ends with: 0.5, min source depth, Ws - 1, Hs - 1, 1 / (C / G).
_SCALARS = "{f}, {f}, {f}, {f}, {f}"

#: numba signature templates, expanded per dtype (shared with the compile-check registry).
SIGNATURES = {
    "warp_correlation_fwd_kernel": "void({f4}, {f4}, {f2}, {f1}, {f4}, {f5}, uint8[:, :, :, ::1], " + _SCALARS + ")",
    "warp_correlation_bwd_ref_kernel": "void({f5}, {f4}, {f2}, {f1}, {f4}, {f4}, " + _SCALARS + ")",
    "warp_correlation_bwd_src_kernel": "void({f5}, {f4}, {f2}, {f1}, {f4}, {f4}, " + _SCALARS + ")",
    "warp_correlation_bwd_src_corners_kernel": (
        "void({f2}, {f1}, {f4}, {f5}, int64[:, :, :, :, ::1], int64, int64, {f}, {f}, {f}, {f})"
    ),
}


def _kernel(name: str, dtype: torch.dtype, device: torch.device):
    dtype_name = str(dtype).replace("torch.", "")
    return numba_cuda_kernel(__name__, name, _signature(SIGNATURES[name], dtype_name), device_index(device))


def _scalars(dtype: torch.dtype, src_height: int, src_width: int, channels_per_group: int) -> tuple:
    """The kernels' scalar arguments, typed like the features (kernel arguments, not a tensor:
    building a small tensor from Python numbers is a blocking host-to-device copy per call)."""
    f = scalar_type(dtype)
    return f(0.5), f(MIN_SRC_DEPTH), f(src_width - 1), f(src_height - 1), f(1.0 / channels_per_group)


def forward(ref_feature, src_feature, proj, depth, num_groups):
    """Forward on CUDA tensors, on ``ref_feature``'s device and torch's current stream there;
    returns (correlation, valid, saved)."""
    B, C, H, W = ref_feature.shape
    Hs, Ws = src_feature.shape[-2:]
    D = depth.shape[1]
    device, dtype = ref_feature.device, ref_feature.dtype
    ref = ref_feature.detach().contiguous()
    src = src_feature.detach().contiguous()
    depth = depth.detach().contiguous()
    proj = proj.contiguous()
    centres = torch.arange(max(H, W), dtype=dtype, device=device) + 0.5  # filled on the device
    correlation = torch.empty((B, num_groups, D, H, W), dtype=dtype, device=device)
    valid = torch.empty((B, D, H, W), dtype=torch.uint8, device=device)
    grid, block = launch_config_1d(B * D * H * W)
    kernel = _kernel("warp_correlation_fwd_kernel", dtype, device)
    with numba_device(device):
        kernel[grid, block, numba_stream(device)](
            *(as_numba_array(t) for t in (ref, src, proj, centres, depth, correlation, valid)),
            *_scalars(dtype, Hs, Ws, C // num_groups),
        )
    return correlation, valid.view(torch.bool), (ref, src, proj, depth, centres)


def _deterministic_source_gradient(grad_correlation, ref, proj, centres, depth, src_shape, scalars, stream):
    """The source gradient without atomics: a kernel writes each sample's 4 corner weights and
    indices, torch forms the ``(B, D, H, W, 4, C)`` terms and ``index_add_`` sums them
    (deterministic on CUDA with ``torch.use_deterministic_algorithms(True)``). The terms are
    ``w * ((grad * (1 / (C / G))) * ref)``, as in the atomic kernel; only the order of the sum
    differs. Memory: ``B*D*H*W*4*C`` values and ``B*D*H*W*4`` int64 indices."""
    B, C, H, W = ref.shape
    D = depth.shape[1]
    Hs, Ws = src_shape
    dtype, device = ref.dtype, ref.device
    corner_weight = torch.empty((B, D, H, W, 4), dtype=dtype, device=device)
    corner_index = torch.empty((B, D, H, W, 4), dtype=torch.int64, device=device)
    grid, block = launch_config_1d(B * D * H * W)
    half, min_z, xmax, ymax, inv_cg = scalars
    _kernel("warp_correlation_bwd_src_corners_kernel", dtype, device)[grid, block, stream](
        *(as_numba_array(t) for t in (proj, centres, depth, corner_weight, corner_index)),
        Hs, Ws, half, min_z, xmax, ymax,
    )
    return sum_corner_terms(grad_correlation, ref, corner_weight, corner_index, src_shape, inv_cg)


def backward(saved, grad_correlation, need_ref: bool, need_src: bool):
    """Gradients (grad_ref | None, grad_src | None) on the features' device, on torch's current
    stream there.

    The source gradient is a scatter (several reference pixels and depths sample one source
    pixel). By default a kernel ``atomic.add``s it (float addition order then varies run to run);
    with ``torch.use_deterministic_algorithms(True)`` it is summed by
    :func:`_deterministic_source_gradient` instead.
    """
    ref, src, proj, depth, centres = saved
    B, C, H, W = ref.shape
    D = depth.shape[1]
    G = grad_correlation.shape[1]
    device, dtype = ref.device, ref.dtype
    grad_correlation = grad_correlation.contiguous()
    scalars = _scalars(dtype, src.shape[2], src.shape[3], C // G)
    grad_ref = grad_src = None
    with numba_device(device):
        stream = numba_stream(device)
        if need_ref:
            grad_ref = torch.empty_like(ref)
            grid, block = launch_config_1d(B * C * H * W)
            kernel = _kernel("warp_correlation_bwd_ref_kernel", dtype, device)
            kernel[grid, block, stream](
                *(as_numba_array(t) for t in (grad_correlation, src, proj, centres, depth, grad_ref)), *scalars
            )
        if need_src and torch.are_deterministic_algorithms_enabled():
            grad_src = _deterministic_source_gradient(
                grad_correlation, ref, proj, centres, depth, (src.shape[2], src.shape[3]), scalars, stream
            )
        elif need_src:
            grad_src = torch.zeros_like(src)
            grid, block = launch_config_1d(B * D * H * W)
            kernel = _kernel("warp_correlation_bwd_src_kernel", dtype, device)
            kernel[grid, block, stream](
                *(as_numba_array(t) for t in (grad_correlation, ref, proj, centres, depth, grad_src)), *scalars
            )
    return grad_ref, grad_src
