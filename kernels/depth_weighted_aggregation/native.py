"""Inference-only CPU forward of the depth-weighted aggregation through the native library
(``kernels._native``; ``native.cpp`` next to this file mirrors ``cpu.py``'s numba kernel line by
line), without loading numba."""

from __future__ import annotations

import torch

from .. import _native
from ._layout import depth_weighted_inputs


def depth_weighted_forward(cost, offsets, inverse, feature_weight, scale, eps):
    """As :func:`kernels.depth_weighted_aggregation.cpu.depth_weighted_forward`."""
    lib = _native.library()
    B, D, H, W = cost.shape
    K = offsets.shape[1] // 2
    cost, offsets, inverse, feature_weight, scale, out = depth_weighted_inputs(cost, offsets, inverse, feature_weight, scale)
    # eps goes in as a C float or double: ctypes rounds it as numba's dtype.type(eps) does
    kernel = lib.depth_weighted_fwd_f32 if cost.dtype == torch.float32 else lib.depth_weighted_fwd_f64
    kernel(cost.data_ptr(), offsets.data_ptr(), inverse.data_ptr(), feature_weight.data_ptr(), scale.data_ptr(),
           eps, B, K, D, H, W, out.data_ptr(), torch.get_num_threads())
    return out

