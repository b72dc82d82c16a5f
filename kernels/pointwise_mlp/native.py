"""Inference-only CPU forward of :func:`kernels.pointwise_mlp` through the native library
(``kernels._native``; ``native.cpp`` next to this file: blocks of positions, the hidden layers in
per-thread buffers)."""

from __future__ import annotations

import torch

from .. import _native


def pointwise_mlp_forward(x: torch.Tensor, weights: list[torch.Tensor], biases: list[torch.Tensor]) -> torch.Tensor:
    """As :func:`kernels.pointwise_mlp.reference.pointwise_mlp_reference`, without autograd."""
    lib = _native.library()
    batch, channels = x.shape[:2]
    flat = x.detach().reshape(batch, channels, -1).contiguous()
    params = torch.cat([t.detach().reshape(-1) for pair in zip(weights, biases) for t in pair]).to(x.dtype)
    dims = torch.tensor([channels, *(int(w.shape[0]) for w in weights)], dtype=torch.int64)
    out = torch.empty((batch, int(dims[-1]), *x.shape[2:]), dtype=x.dtype)
    kernel = lib.pointwise_mlp_fwd_f32 if x.dtype == torch.float32 else lib.pointwise_mlp_fwd_f64
    kernel(flat.data_ptr(), params.data_ptr(), dims.data_ptr(), len(weights), batch, flat.shape[2],
           out.data_ptr(), torch.get_num_threads())
    return out
