"""Inference-only CPU forwards of ``neighbour_correlation`` and the depth-weighted aggregation through
the native library (``kernels._native``): the same computations as ``cpu.py``'s numba kernels
(``forward.cpp`` mirrors them line by line), without loading numba."""

from __future__ import annotations

import torch

from .. import _native
from ._layout import depth_weighted_inputs


def depth_weighted_forward(cost, offsets, inverse, feature_weight, scale, eps):
    """As :func:`kernels.adaptive_aggregation.cpu.depth_weighted_forward`."""
    lib = _native.library()
    B, D, H, W = cost.shape
    K = offsets.shape[1] // 2
    cost, offsets, inverse, feature_weight, scale, out = depth_weighted_inputs(cost, offsets, inverse, feature_weight, scale)
    # eps goes in as a C float or double: ctypes rounds it as numba's dtype.type(eps) does
    kernel = lib.depth_weighted_fwd_f32 if cost.dtype == torch.float32 else lib.depth_weighted_fwd_f64
    kernel(cost.data_ptr(), offsets.data_ptr(), inverse.data_ptr(), feature_weight.data_ptr(), scale.data_ptr(),
           eps, B, K, D, H, W, out.data_ptr(), torch.get_num_threads())
    return out


def neighbour_correlation_forward(feature, offsets, num_groups):
    """As :func:`kernels.adaptive_aggregation.cpu.neighbour_correlation_forward`."""
    lib = _native.library()
    B, C, H, W = feature.shape
    K = offsets.shape[1] // 2
    channels_last = feature.detach().permute(0, 2, 3, 1).contiguous()
    offsets = offsets.detach().contiguous()
    out = torch.empty((B, num_groups, K, H, W), dtype=feature.dtype)
    kernel = lib.neighbour_correlation_fwd_f32 if feature.dtype == torch.float32 else lib.neighbour_correlation_fwd_f64
    kernel(channels_last.data_ptr(), offsets.data_ptr(), B, H, W, C, K, num_groups, out.data_ptr(), torch.get_num_threads())
    return out
