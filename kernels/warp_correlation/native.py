"""CPU forward of the fused warp + correlation through the native library (``kernels._native``).

The same computation as ``cpu.py``'s numba forward (``native.cpp`` next to this file mirrors it
line by line); the backward is numba's (imported only when a gradient is asked for), so a process
that only infers never loads numba.
"""

from __future__ import annotations

import torch

from .. import _native
from ._layout import forward_inputs


def forward(ref_feature, src_feature, proj, depth, num_groups):
    """As :func:`kernels.warp_correlation.cpu.forward`: (correlation, valid, saved)."""
    lib = _native.library()
    B, C, H, W = ref_feature.shape
    D = depth.shape[1]
    ref, src_cl, proj, depth, correlation, valid = forward_inputs(ref_feature, src_feature, proj, depth, num_groups)
    Hs, Ws = src_cl.shape[1], src_cl.shape[2]
    consts = torch.tensor([0.5, 1e-6, Ws - 1, Hs - 1, 1.0 / (C // num_groups)], dtype=ref.dtype)
    kernel = lib.warp_correlation_fwd_f32 if ref.dtype == torch.float32 else lib.warp_correlation_fwd_f64
    kernel(ref.data_ptr(), src_cl.data_ptr(), proj.data_ptr(), consts.data_ptr(), depth.data_ptr(),
           B, C, num_groups, H, W, Hs, Ws, D, correlation.data_ptr(), valid.data_ptr(), torch.get_num_threads())
    return correlation, valid, (ref, src_feature.detach(), proj, depth)


def backward(saved, grad_correlation, need_ref: bool, need_src: bool):
    """numba's backward (:func:`kernels.warp_correlation.cpu.backward`)."""
    from . import cpu

    return cpu.backward(saved, grad_correlation, need_ref, need_src)
