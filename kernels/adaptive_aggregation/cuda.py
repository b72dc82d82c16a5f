"""CUDA kernels of adaptive cost aggregation (numba.cuda).

The default CUDA backend of the op (the CUDA C twin is ``cuda_c.py`` with ``kernels.cu``; the
package docstring says how one is chosen). These Python kernels run in numba's CUDA simulator, so
indexing, zero padding and atomics are tested without a GPU
(``tests/kernel_ops/test_cudasim_correlation_aggregation.py``), and ``numba.cuda.compile_ptx``
compile-checks them for sm_80/sm_90 (``kernels._backend.KERNEL_REGISTRY``). Imported only when a
CUDA tensor reaches the op.

* forward: one thread per ``(b, d, i, j)`` looping over the K neighbours (the sampled
  ``(B, K, D, H, W)`` costs are never stored);
* backward, offset and weight gradients: one thread per pixel ``(b, i, j)`` looping over the D
  hypotheses and K neighbours. Each thread owns its pixel's 2K offset gradients (a sum over D)
  and its K x D weight gradients: a gather, no atomics, the same result every run;
* backward, cost gradient: a scatter (neighbouring pixels sample the same cost cell). By default
  one thread per ``(b, d, i, j)`` ``atomic.add``s into the 4 corners of each of its K samples.
  With ``torch.use_deterministic_algorithms(True)`` a kernel writes those 4 K terms and their
  flat indices instead and ``index_add_`` sums them (deterministic on CUDA when the setting is on;
  memory: ``B*D*H*W*K*4`` values and as many int64 indices).

Arithmetic stays in the input dtype: the constants arrive as scalar arguments of the input dtype
and pixel indices in a typed array filled on the device (numba promotes ``int64 op float32`` to
float64), and ``s % 1`` replaces ``math.floor`` (which returns int64). Host side: no
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


def adaptive_aggregation_fwd_kernel(cost, offsets, weights, coords, out, zero, one, eps):
    """One thread per (b, d, i, j): out = sum_k w_k * bilinear_k / (sum_k w_k + eps)."""
    n = cuda.grid(1)
    B, K, D, H, W = weights.shape
    if n >= B * D * H * W:
        return
    j = n % W
    t = n // W
    i = t % H
    t = t // H
    d = t % D
    b = t // D
    numerator = zero
    denominator = zero
    for k in range(K):
        weight = weights[b, k, d, i, j]
        denominator += weight
        sx = coords[j] + offsets[b, 2 * k, i, j]
        sy = coords[i] + offsets[b, 2 * k + 1, i, j]
        if not (sx > -one and sx < coords[W] and sy > -one and sy < coords[H]):  # also rejects NaN
            continue
        wx = sx % one  # floor-mod: in [0, 1) for negative sx too
        wy = sy % one
        x0 = int(sx - wx)
        y0 = int(sy - wy)
        x1 = x0 + 1
        y1 = y0 + 1
        c00 = cost[b, d, y0, x0] if (x0 >= 0 and y0 >= 0) else zero
        c01 = cost[b, d, y0, x1] if (x1 < W and y0 >= 0) else zero
        c10 = cost[b, d, y1, x0] if (x0 >= 0 and y1 < H) else zero
        c11 = cost[b, d, y1, x1] if (x1 < W and y1 < H) else zero
        sample = (one - wy) * ((one - wx) * c00 + wx * c01) + wy * ((one - wx) * c10 + wx * c11)
        numerator += weight * sample
    out[b, d, i, j] = numerator / (denominator + eps)


def adaptive_aggregation_bwd_offsets_kernel(
    grad_out, out, cost, offsets, weights, coords, grad_offsets, grad_weights, zero, one, eps
):
    """One thread per pixel (b, i, j): its offset gradients (sum over d) and weight gradients.

    Every output cell is written by one thread only, in a fixed order: no atomics.
    """
    n = cuda.grid(1)
    B, K, D, H, W = weights.shape
    if n >= B * H * W:
        return
    j = n % W
    t = n // W
    i = t % H
    b = t // H
    for k in range(K):
        grad_offsets[b, 2 * k, i, j] = zero
        grad_offsets[b, 2 * k + 1, i, j] = zero
    for d in range(D):
        denominator = eps
        for k in range(K):
            denominator += weights[b, k, d, i, j]
        g = grad_out[b, d, i, j] / denominator
        result = out[b, d, i, j]
        for k in range(K):
            sx = coords[j] + offsets[b, 2 * k, i, j]
            sy = coords[i] + offsets[b, 2 * k + 1, i, j]
            if not (sx > -one and sx < coords[W] and sy > -one and sy < coords[H]):
                grad_weights[b, k, d, i, j] = g * (zero - result)
                continue
            wx = sx % one
            wy = sy % one
            x0 = int(sx - wx)
            y0 = int(sy - wy)
            x1 = x0 + 1
            y1 = y0 + 1
            c00 = cost[b, d, y0, x0] if (x0 >= 0 and y0 >= 0) else zero
            c01 = cost[b, d, y0, x1] if (x1 < W and y0 >= 0) else zero
            c10 = cost[b, d, y1, x0] if (x0 >= 0 and y1 < H) else zero
            c11 = cost[b, d, y1, x1] if (x1 < W and y1 < H) else zero
            sample = (one - wy) * ((one - wx) * c00 + wx * c01) + wy * ((one - wx) * c10 + wx * c11)
            # d out / d w_k = (sample_k - out) / (sum_k w_k + eps)
            grad_weights[b, k, d, i, j] = g * (sample - result)
            a = g * weights[b, k, d, i, j]
            grad_offsets[b, 2 * k, i, j] += a * ((one - wy) * (c01 - c00) + wy * (c11 - c10))
            grad_offsets[b, 2 * k + 1, i, j] += a * ((one - wx) * (c10 - c00) + wx * (c11 - c01))


def adaptive_aggregation_bwd_cost_kernel(grad_out, offsets, weights, coords, grad_cost, zero, one, eps):
    """One thread per (b, d, i, j): ``atomic.add``s its K samples' bilinear terms into grad_cost
    (zeroed by the caller)."""
    n = cuda.grid(1)
    B, K, D, H, W = weights.shape
    if n >= B * D * H * W:
        return
    j = n % W
    t = n // W
    i = t % H
    t = t // H
    d = t % D
    b = t // D
    denominator = eps
    for k in range(K):
        denominator += weights[b, k, d, i, j]
    g = grad_out[b, d, i, j] / denominator
    for k in range(K):
        sx = coords[j] + offsets[b, 2 * k, i, j]
        sy = coords[i] + offsets[b, 2 * k + 1, i, j]
        if not (sx > -one and sx < coords[W] and sy > -one and sy < coords[H]):
            continue
        a = g * weights[b, k, d, i, j]
        wx = sx % one
        wy = sy % one
        x0 = int(sx - wx)
        y0 = int(sy - wy)
        x1 = x0 + 1
        y1 = y0 + 1
        if x0 >= 0 and y0 >= 0:
            cuda.atomic.add(grad_cost, (b, d, y0, x0), (one - wx) * (one - wy) * a)
        if x1 < W and y0 >= 0:
            cuda.atomic.add(grad_cost, (b, d, y0, x1), wx * (one - wy) * a)
        if x0 >= 0 and y1 < H:
            cuda.atomic.add(grad_cost, (b, d, y1, x0), (one - wx) * wy * a)
        if x1 < W and y1 < H:
            cuda.atomic.add(grad_cost, (b, d, y1, x1), wx * wy * a)


def adaptive_aggregation_bwd_cost_terms_kernel(grad_out, offsets, weights, coords, terms, index, zero, one, eps):
    """One thread per (b, d, i, j): the cost-gradient terms of its K samples' 4 corners and their
    flat indices into grad_cost (``B*D*H*W``, a spare slot, for corners outside the map).

    Shape: terms, index (B, D, H, W, 4 K).
    """
    n = cuda.grid(1)
    B, K, D, H, W = weights.shape
    if n >= B * D * H * W:
        return
    j = n % W
    t = n // W
    i = t % H
    t = t // H
    d = t % D
    b = t // D
    spare = B * D * H * W
    plane = (b * D + d) * H
    denominator = eps
    for k in range(K):
        denominator += weights[b, k, d, i, j]
    g = grad_out[b, d, i, j] / denominator
    for k in range(K):
        for corner in range(4):
            terms[b, d, i, j, 4 * k + corner] = zero
            index[b, d, i, j, 4 * k + corner] = spare
        sx = coords[j] + offsets[b, 2 * k, i, j]
        sy = coords[i] + offsets[b, 2 * k + 1, i, j]
        if not (sx > -one and sx < coords[W] and sy > -one and sy < coords[H]):
            continue
        a = g * weights[b, k, d, i, j]
        wx = sx % one
        wy = sy % one
        x0 = int(sx - wx)
        y0 = int(sy - wy)
        x1 = x0 + 1
        y1 = y0 + 1
        if x0 >= 0 and y0 >= 0:
            terms[b, d, i, j, 4 * k] = (one - wx) * (one - wy) * a
            index[b, d, i, j, 4 * k] = (plane + y0) * W + x0
        if x1 < W and y0 >= 0:
            terms[b, d, i, j, 4 * k + 1] = wx * (one - wy) * a
            index[b, d, i, j, 4 * k + 1] = (plane + y0) * W + x1
        if x0 >= 0 and y1 < H:
            terms[b, d, i, j, 4 * k + 2] = (one - wx) * wy * a
            index[b, d, i, j, 4 * k + 2] = (plane + y1) * W + x0
        if x1 < W and y1 < H:
            terms[b, d, i, j, 4 * k + 3] = wx * wy * a
            index[b, d, i, j, 4 * k + 3] = (plane + y1) * W + x1


def _array_types(dtype: str) -> dict[str, str]:
    return {f"f{n}": f"{dtype}[{', '.join([':'] * (n - 1) + ['::1'])}]" for n in range(1, 6)}


def _signature(template: str, dtype: str) -> str:
    return template.format(**_array_types(dtype), f=dtype)


#: numba signature templates, expanded per dtype (shared with the compile-check registry). Every
#: kernel ends with the scalars zero, one, eps.
SIGNATURES = {
    "adaptive_aggregation_fwd_kernel": "void({f4}, {f4}, {f5}, {f1}, {f4}, {f}, {f}, {f})",
    "adaptive_aggregation_bwd_offsets_kernel": "void({f4}, {f4}, {f4}, {f4}, {f5}, {f1}, {f4}, {f5}, {f}, {f}, {f})",
    "adaptive_aggregation_bwd_cost_kernel": "void({f4}, {f4}, {f5}, {f1}, {f4}, {f}, {f}, {f})",
    "adaptive_aggregation_bwd_cost_terms_kernel": (
        "void({f4}, {f4}, {f5}, {f1}, {f5}, int64[:, :, :, :, ::1], {f}, {f}, {f})"
    ),
}


def _kernel(name: str, dtype: torch.dtype, device: torch.device):
    dtype_name = str(dtype).replace("torch.", "")
    return numba_cuda_kernel(__name__, name, _signature(SIGNATURES[name], dtype_name), device_index(device))


def _scalars(dtype: torch.dtype, eps: float) -> tuple:
    """zero, one, eps typed like the inputs (kernel arguments, not a tensor: building a small
    tensor from Python numbers is a blocking host-to-device copy per call)."""
    f = scalar_type(dtype)
    return f(0.0), f(1.0), f(eps)


def forward(cost, offsets, weights, eps):
    """Forward on CUDA tensors, on ``cost``'s device and torch's current stream there; returns
    (out, saved)."""
    B, D, H, W = cost.shape
    device, dtype = cost.device, cost.dtype
    cost = cost.detach().contiguous()
    offsets = offsets.detach().contiguous()
    weights = weights.detach().contiguous()
    coords = torch.arange(max(H, W) + 1, dtype=dtype, device=device)  # coords[W] == W, coords[H] == H
    out = torch.empty((B, D, H, W), dtype=dtype, device=device)
    grid, block = launch_config_1d(B * D * H * W)
    kernel = _kernel("adaptive_aggregation_fwd_kernel", dtype, device)
    with numba_device(device):
        kernel[grid, block, numba_stream(device)](
            *(as_numba_array(t) for t in (cost, offsets, weights, coords, out)), *_scalars(dtype, eps)
        )
    return out, (cost, offsets, weights, out, coords)


def backward(saved, grad_out, eps, need_cost: bool, need_offsets: bool, need_weights: bool):
    """Gradients (grad_cost, grad_offsets, grad_weights) on the inputs' device, on torch's current
    stream there; None where not needed. Deterministic when ``torch.use_deterministic_algorithms``
    is on (see the module docstring)."""
    cost, offsets, weights, out, coords = saved
    B, D, H, W = cost.shape
    K = weights.shape[1]
    device, dtype = cost.device, cost.dtype
    grad_out = grad_out.contiguous()
    scalars = _scalars(dtype, eps)
    grad_cost = grad_offsets = grad_weights = None
    with numba_device(device):
        stream = numba_stream(device)
        if need_offsets or need_weights:
            grad_offsets = torch.empty_like(offsets)
            grad_weights = torch.empty_like(weights)
            grid, block = launch_config_1d(B * H * W, block=128)
            _kernel("adaptive_aggregation_bwd_offsets_kernel", dtype, device)[grid, block, stream](
                *(as_numba_array(t) for t in (grad_out, out, cost, offsets, weights, coords, grad_offsets, grad_weights)),
                *scalars,
            )
        if need_cost:
            grid, block = launch_config_1d(B * D * H * W)
            if torch.are_deterministic_algorithms_enabled():
                terms = torch.empty((B, D, H, W, 4 * K), dtype=dtype, device=device)
                index = torch.empty((B, D, H, W, 4 * K), dtype=torch.int64, device=device)
                _kernel("adaptive_aggregation_bwd_cost_terms_kernel", dtype, device)[grid, block, stream](
                    *(as_numba_array(t) for t in (grad_out, offsets, weights, coords, terms, index)), *scalars
                )
                flat = torch.zeros(B * D * H * W + 1, dtype=dtype, device=device)  # + the spare slot
                flat.index_add_(0, index.view(-1), terms.view(-1))  # deterministic on CUDA in this mode
                grad_cost = flat[:-1].view(B, D, H, W)
            else:
                grad_cost = torch.zeros_like(cost)
                _kernel("adaptive_aggregation_bwd_cost_kernel", dtype, device)[grid, block, stream](
                    *(as_numba_array(t) for t in (grad_out, offsets, weights, coords, grad_cost)), *scalars
                )
    return grad_cost, (grad_offsets if need_offsets else None), (grad_weights if need_weights else None)
