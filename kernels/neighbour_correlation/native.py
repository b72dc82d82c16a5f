"""Inference-only CPU forward of ``neighbour_correlation`` through the native library
(``kernels._native``; ``native.cpp`` next to this file mirrors ``cpu.py``'s numba kernel line by
line), without loading numba."""

from __future__ import annotations

import torch

from .. import _native


def neighbour_correlation_forward(feature, offsets, num_groups):
    """As :func:`kernels.neighbour_correlation.cpu.neighbour_correlation_forward`."""
    lib = _native.library()
    B, C, H, W = feature.shape
    K = offsets.shape[1] // 2
    channels_last = feature.detach().permute(0, 2, 3, 1).contiguous()
    offsets = offsets.detach().contiguous()
    out = torch.empty((B, num_groups, K, H, W), dtype=feature.dtype)
    kernel = lib.neighbour_correlation_fwd_f32 if feature.dtype == torch.float32 else lib.neighbour_correlation_fwd_f64
    kernel(channels_last.data_ptr(), offsets.data_ptr(), B, H, W, C, K, num_groups, out.data_ptr(), torch.get_num_threads())
    return out
