"""CUDA kernels of adaptive cost aggregation (numba.cuda).

Why numba.cuda rather than a cupy RawKernel: the same Python kernels run in numba's CUDA
simulator, so indexing, zero padding and atomics are tested without a GPU
(``tests/kernel_ops/test_cudasim_correlation_aggregation.py``), and ``numba.cuda.compile_ptx``
compile-checks them for sm_80/sm_90 (``kernels._backend.KERNEL_REGISTRY``). Imported only when a
CUDA tensor reaches the op.

* forward: one thread per ``(b, d, i, j)`` looping over the K neighbours (the sampled
  ``(B, K, D, H, W)`` costs are never stored);
* backward: one thread per ``(b, d, i, j)``: writes its K weight gradients, ``atomic.add``s the
  offset gradients (shared by the D hypotheses) and the cost gradient at the 4 corners.

Arithmetic stays in the input dtype: constants and pixel indices arrive in typed arrays (numba
promotes ``int64 op float32`` to float64), and ``s % 1`` replaces ``math.floor`` (which returns
int64).
"""

from __future__ import annotations

import torch
from numba import cuda

from .._backend import as_numba_array, device_index, launch_config_1d, numba_cuda_kernel, numba_stream

# consts: [0, 1, eps]
_ZERO, _ONE, _EPS = range(3)


def adaptive_aggregation_fwd_kernel(cost, offsets, weights, consts, coords, out):
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
    zero = consts[_ZERO]
    one = consts[_ONE]
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
    out[b, d, i, j] = numerator / (denominator + consts[_EPS])


def adaptive_aggregation_bwd_kernel(
    grad_out, out, cost, offsets, weights, consts, coords, grad_cost, grad_offsets, grad_weights
):
    """One thread per (b, d, i, j); grad_cost and grad_offsets zeroed by the caller."""
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
    zero = consts[_ZERO]
    one = consts[_ONE]
    denominator = consts[_EPS]
    for k in range(K):
        denominator += weights[b, k, d, i, j]
    g = grad_out[b, d, i, j] / denominator
    result = out[b, d, i, j]
    for k in range(K):
        a = g * weights[b, k, d, i, j]
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
        in00 = x0 >= 0 and y0 >= 0
        in01 = x1 < W and y0 >= 0
        in10 = x0 >= 0 and y1 < H
        in11 = x1 < W and y1 < H
        c00 = cost[b, d, y0, x0] if in00 else zero
        c01 = cost[b, d, y0, x1] if in01 else zero
        c10 = cost[b, d, y1, x0] if in10 else zero
        c11 = cost[b, d, y1, x1] if in11 else zero
        sample = (one - wy) * ((one - wx) * c00 + wx * c01) + wy * ((one - wx) * c10 + wx * c11)
        # d out / d w_k = (sample_k - out) / (sum_k w_k + eps)
        grad_weights[b, k, d, i, j] = g * (sample - result)
        cuda.atomic.add(grad_offsets, (b, 2 * k, i, j), a * ((one - wy) * (c01 - c00) + wy * (c11 - c10)))
        cuda.atomic.add(grad_offsets, (b, 2 * k + 1, i, j), a * ((one - wx) * (c10 - c00) + wx * (c11 - c01)))
        if in00:
            cuda.atomic.add(grad_cost, (b, d, y0, x0), (one - wx) * (one - wy) * a)
        if in01:
            cuda.atomic.add(grad_cost, (b, d, y0, x1), wx * (one - wy) * a)
        if in10:
            cuda.atomic.add(grad_cost, (b, d, y1, x0), (one - wx) * wy * a)
        if in11:
            cuda.atomic.add(grad_cost, (b, d, y1, x1), wx * wy * a)


def _array_types(dtype: str) -> dict[str, str]:
    return {f"f{n}": f"{dtype}[{', '.join([':'] * (n - 1) + ['::1'])}]" for n in range(1, 6)}


def _signature(template: str, dtype: str) -> str:
    return template.format(**_array_types(dtype))


#: numba signature templates, expanded per dtype (shared with the compile-check registry).
SIGNATURES = {
    "adaptive_aggregation_fwd_kernel": "void({f4}, {f4}, {f5}, {f1}, {f1}, {f4})",
    "adaptive_aggregation_bwd_kernel": "void({f4}, {f4}, {f4}, {f4}, {f5}, {f1}, {f1}, {f4}, {f4}, {f5})",
}


def _kernel(name: str, dtype: torch.dtype, device: torch.device):
    dtype_name = str(dtype).replace("torch.", "")
    return numba_cuda_kernel(__name__, name, _signature(SIGNATURES[name], dtype_name), device_index(device))


def forward(cost, offsets, weights, eps):
    """Forward on CUDA tensors, on torch's current stream; returns (out, saved)."""
    B, D, H, W = cost.shape
    device, dtype = cost.device, cost.dtype
    cost = cost.detach().contiguous()
    offsets = offsets.detach().contiguous()
    weights = weights.detach().contiguous()
    consts = torch.tensor([0.0, 1.0, eps], dtype=dtype, device=device)
    coords = torch.arange(max(H, W) + 1, dtype=dtype, device=device)  # coords[W] == W, coords[H] == H
    out = torch.empty((B, D, H, W), dtype=dtype, device=device)
    grid, block = launch_config_1d(B * D * H * W)
    _kernel("adaptive_aggregation_fwd_kernel", dtype, device)[grid, block, numba_stream(device)](
        *(as_numba_array(t) for t in (cost, offsets, weights, consts, coords, out))
    )
    return out, (cost, offsets, weights, out, consts, coords)


def backward(saved, grad_out, eps, need_cost: bool, need_offsets: bool, need_weights: bool):
    """Gradients (grad_cost, grad_offsets, grad_weights) on CUDA; None where not needed."""
    cost, offsets, weights, out, consts, coords = saved
    B, D, H, W = cost.shape
    device, dtype = cost.device, cost.dtype
    grad_out = grad_out.contiguous()
    grad_cost = torch.zeros_like(cost)
    grad_offsets = torch.zeros_like(offsets)
    grad_weights = torch.empty_like(weights)
    grid, block = launch_config_1d(B * D * H * W)
    _kernel("adaptive_aggregation_bwd_kernel", dtype, device)[grid, block, numba_stream(device)](
        *(
            as_numba_array(t)
            for t in (grad_out, out, cost, offsets, weights, consts, coords, grad_cost, grad_offsets, grad_weights)
        )
    )
    return (grad_cost if need_cost else None), (grad_offsets if need_offsets else None), (
        grad_weights if need_weights else None
    )
