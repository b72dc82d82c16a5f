"""warp_correlation's launches of its CUDA C kernels (``kernels.cu``; rules and launch path: kernels/_cuda_c).

Same interface and semantics as ``cuda.py`` (numba.cuda):

* forward: one thread per ``(b, d, i, j)``; loops over channels, writes G correlations;
* backward, reference gradient: one thread per ``(b, c, i, j)`` looping over depths (a gather);
* backward, source gradient: one thread per ``(b, d, i, j)``, ``atomicAdd`` into 4 taps; with
  ``torch.use_deterministic_algorithms(True)`` a kernel writes each sample's 4 tap weights and
  indices and ``index_add_`` sums the per-channel terms instead.

The ``(B, C, D, H, W)`` warped volume never exists; the backward recomputes the sample positions.
Constants go as kernel arguments (no host-to-device copy), nothing synchronises; on CUDA tensors
the kernels run on the tensors' device and torch's current stream, on CPU tensors in the CPU
emulation (tests only).
"""

from __future__ import annotations

import torch

from .._cuda_c import check_int32_sizes, launch, launch_config_1d
from ._layout import sum_corner_terms
from .reference import MIN_SRC_DEPTH

OP = "warp_correlation"


def forward(ref_feature, src_feature, proj, depth, num_groups):
    """Forward; returns (correlation, valid as bool, saved tensors for :func:`backward`)."""
    B, C, H, W = ref_feature.shape
    Hs, Ws = src_feature.shape[-2:]
    D = depth.shape[1]
    device, dtype = ref_feature.device, ref_feature.dtype
    ref = ref_feature.detach().contiguous()
    src = src_feature.detach().contiguous()
    depth = depth.detach().contiguous()
    proj = proj.contiguous()
    correlation = torch.empty((B, num_groups, D, H, W), dtype=dtype, device=device)
    valid = torch.empty((B, D, H, W), dtype=torch.uint8, device=device)
    check_int32_sizes(OP, ref_feature=ref, src_feature=src, correlation=correlation)
    grid, block = launch_config_1d(B * D * H * W)
    launch(OP, "warp_correlation_fwd", dtype, grid, block, ref, src, proj, depth, correlation, valid,
           B, C, H, W, Hs, Ws, D, num_groups, MIN_SRC_DEPTH, 1.0 / (C // num_groups))
    return correlation, valid.view(torch.bool), (ref, src, proj, depth)


def _deterministic_source_gradient(grad_correlation, ref, proj, depth, src_shape):
    """The source gradient without atomics: tap weights and indices from a kernel, the
    ``(B, D, H, W, 4, C)`` terms ``w * ((grad / (C / G)) * ref)`` in torch, summed by ``index_add_``
    (deterministic on CUDA under ``torch.use_deterministic_algorithms(True)``). Memory:
    ``B*D*H*W*4*C`` values and ``B*D*H*W*4`` int64 indices."""
    B, C, H, W = ref.shape
    D = depth.shape[1]
    G = grad_correlation.shape[1]
    Hs, Ws = src_shape
    dtype, device = ref.dtype, ref.device
    corner_weight = torch.empty((B, D, H, W, 4), dtype=dtype, device=device)
    corner_index = torch.empty((B, D, H, W, 4), dtype=torch.int64, device=device)
    check_int32_sizes(OP, corner_weight=corner_weight)
    grid, block = launch_config_1d(B * D * H * W)
    launch(OP, "warp_correlation_bwd_src_corners", dtype, grid, block, proj, depth, corner_weight, corner_index,
           B, H, W, Hs, Ws, D, MIN_SRC_DEPTH)
    return sum_corner_terms(grad_correlation, ref, corner_weight, corner_index, src_shape, 1.0 / (C // G))


def backward(saved, grad_correlation, need_ref: bool, need_src: bool):
    """Gradients (grad_ref | None, grad_src | None); see the module docstring."""
    ref, src, proj, depth = saved
    B, C, H, W = ref.shape
    Hs, Ws = src.shape[2], src.shape[3]
    D = depth.shape[1]
    G = grad_correlation.shape[1]
    dtype = ref.dtype
    grad_correlation = grad_correlation.contiguous()
    inv_cg = 1.0 / (C // G)
    grad_ref = grad_src = None
    if need_ref:
        grad_ref = torch.empty_like(ref)
        grid, block = launch_config_1d(B * C * H * W)
        launch(OP, "warp_correlation_bwd_ref", dtype, grid, block, grad_correlation, src, proj, depth, grad_ref,
               B, C, H, W, Hs, Ws, D, G, MIN_SRC_DEPTH, inv_cg)
    if need_src and torch.are_deterministic_algorithms_enabled():
        grad_src = _deterministic_source_gradient(grad_correlation, ref, proj, depth, (Hs, Ws))
    elif need_src:
        grad_src = torch.zeros_like(src)
        grid, block = launch_config_1d(B * D * H * W)
        launch(OP, "warp_correlation_bwd_src", dtype, grid, block, grad_correlation, ref, proj, depth, grad_src,
               B, C, H, W, Hs, Ws, D, G, MIN_SRC_DEPTH, inv_cg)
    return grad_ref, grad_src
