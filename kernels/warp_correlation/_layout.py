"""Input layouts of the CPU forwards, shared by the numba (``cpu.py``) and native (``native.py``) paths."""

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
