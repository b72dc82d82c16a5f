"""Adaptive cost aggregation with the CUDA C kernels of ``kernels.cu`` (cupy/NVRTC on a GPU, the
CPU emulation in tests).

Same contract as ``cuda.py`` (``forward`` returns (out, saved), ``backward`` the three gradients):

* forward: one thread per (b, d, i, j) looping over the K neighbours;
* backward: ``aa_bwd_norm`` writes gn = grad_out / (sum_k w_k + eps) once per (b, d, i, j);
  ``aa_bwd_offsets`` runs one thread per (b, k, i, j) that loops over the D hypotheses and writes
  its two offset gradients and D weight gradients (a gather: no atomics; the numba kernel runs
  one thread per pixel looping over D and K);
* the cost gradient is a scatter (learned offsets send samples anywhere): ``aa_bwd_cost_atomic``
  by default; with ``torch.use_deterministic_algorithms(True)``, ``aa_bwd_cost_terms`` writes
  every sample corner's term and int32 flat index and ``index_add_`` sums them (deterministic on
  CUDA in that mode; memory ``B*D*H*W*4K`` values and as many indices), as ``cuda.py`` does.
"""

from __future__ import annotations

import torch

from .._cuda_c import check_int32_sizes, launch, launch_config_1d

OP = "adaptive_aggregation"


def forward(cost, offsets, weights, eps):
    """Forward on contiguous tensors of one device; returns (out, saved)."""
    B, D, H, W = cost.shape
    K = weights.shape[1]
    cost = cost.detach().contiguous()
    offsets = offsets.detach().contiguous()
    weights = weights.detach().contiguous()
    check_int32_sizes(OP, cost=cost, offsets=offsets, weights=weights)
    out = torch.empty_like(cost)
    grid, block = launch_config_1d(out.numel())
    launch(OP, "aa_fwd", cost.dtype, grid, block, cost, offsets, weights, out, B, D, H, W, K, eps)
    return out, (cost, offsets, weights, out)


def backward(saved, grad_out, eps, need_cost: bool, need_offsets: bool, need_weights: bool):
    """Gradients (grad_cost, grad_offsets, grad_weights), None where not needed."""
    cost, offsets, weights, out = saved
    B, D, H, W = cost.shape
    K = weights.shape[1]
    dtype = cost.dtype
    grad_out = grad_out.contiguous()
    grad_norm = torch.empty_like(cost)
    grid, block = launch_config_1d(cost.numel())
    launch(OP, "aa_bwd_norm", dtype, grid, block, grad_out, weights, grad_norm, B, D, H, W, K, eps)
    grad_cost = grad_offsets = grad_weights = None
    if need_offsets or need_weights:
        grad_offsets = torch.empty_like(offsets)
        grad_weights = torch.empty_like(weights)
        pix_grid, pix_block = launch_config_1d(B * K * H * W)
        launch(OP, "aa_bwd_offsets", dtype, pix_grid, pix_block, grad_norm, out, cost, offsets, weights,
               grad_offsets, grad_weights, B, D, H, W, K)
    if need_cost:
        if torch.are_deterministic_algorithms_enabled():
            terms = torch.empty((B, D, H, W, 4 * K), dtype=dtype, device=cost.device)
            index = torch.empty((B, D, H, W, 4 * K), dtype=torch.int32, device=cost.device)
            check_int32_sizes(OP, cost_gradient_terms=terms)
            launch(OP, "aa_bwd_cost_terms", dtype, grid, block, grad_norm, offsets, weights, terms, index, B, D, H, W, K)
            flat = torch.zeros(cost.numel() + 1, dtype=dtype, device=cost.device)  # + the spare slot
            flat.index_add_(0, index.view(-1), terms.view(-1))
            grad_cost = flat[:-1].view(B, D, H, W)
        else:
            grad_cost = torch.zeros_like(cost)
            launch(OP, "aa_bwd_cost_atomic", dtype, grid, block, grad_norm, offsets, weights, grad_cost, B, D, H, W, K)
    return grad_cost, (grad_offsets if need_offsets else None), (grad_weights if need_weights else None)


__all__ = ["forward", "backward"]
