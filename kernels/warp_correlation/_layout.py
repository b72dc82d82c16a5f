"""Layouts shared by the backends: the CPU forwards' inputs (numba ``cpu.py`` and native ``native.py``) and
the deterministic source-gradient sum of both CUDA backends (numba ``cuda.py`` and CUDA C ``cuda_c.py``)."""

from __future__ import annotations

import torch


def forward_inputs(ref_feature, src_feature, proj, depth, num_groups):
    """Detached inputs in the kernels' layouts and the empty outputs.

    Returns:
        ``(ref, src_cl, proj, depth, correlation, valid)``: ref (B, C, H, W) contiguous, src_cl
        (B, Hs, Ws, C) contiguous (no copy for a channels-last source), proj (B, 12), depth
        (B, D, H, W), correlation (B, G, D, H, W) and valid (B, D, H, W) bool, uninitialised.
    """
    B, C, H, W = ref_feature.shape
    ref = ref_feature.detach().contiguous()
    src_cl = src_feature.detach().permute(0, 2, 3, 1).contiguous()
    depth = depth.detach().contiguous()
    proj = proj.contiguous()
    correlation = torch.empty((B, num_groups, depth.shape[1], H, W), dtype=ref.dtype)
    valid = torch.empty((B, depth.shape[1], H, W), dtype=torch.bool)
    return ref, src_cl, proj, depth, correlation, valid


def sum_corner_terms(grad_correlation, ref, corner_weight, corner_index, src_shape, inv_cg):
    """The source-feature gradient from each sample's 4 tap weights and flat tap indices (the
    deterministic CUDA path): the ``(B, D, H, W, 4, C)`` terms ``w * ((grad / (C / G)) * ref)``, summed
    by ``index_add_`` into a ``(B * Hs * Ws + 1, C)`` channels-last gradient whose last row takes the
    invalid samples. Shapes: grad_correlation (B, G, D, H, W), ref (B, C, H, W), corner_weight and
    corner_index (B, D, H, W, 4); returns (B, C, Hs, Ws)."""
    B, C, H, W = ref.shape
    G, D = grad_correlation.shape[1], grad_correlation.shape[2]
    Hs, Ws = src_shape
    # (B, C, D, H, W); expand, not repeat_interleave (whose tensor form reads its output size on the host)
    per_group = (grad_correlation * inv_cg).unsqueeze(2).expand(B, G, C // G, D, H, W).reshape(B, C, D, H, W)
    per_channel = per_group * ref.unsqueeze(2)
    terms = corner_weight.unsqueeze(-1) * per_channel.permute(0, 2, 3, 4, 1).unsqueeze(4)  # (B, D, H, W, 4, C)
    flat = torch.zeros((B * Hs * Ws + 1, C), dtype=ref.dtype, device=ref.device)  # + the spare row
    flat.index_add_(0, corner_index.view(-1), terms.reshape(-1, C))
    return flat[:-1].view(B, Hs, Ws, C).permute(0, 3, 1, 2).contiguous()
