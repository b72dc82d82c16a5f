"""Group-wise correlation of each pixel's feature with its K offset neighbours (the input of
PatchmatchNet's feature weights of the adaptive aggregation).

Public: :func:`neighbour_correlation`; reference twin: :func:`neighbour_correlation_reference`
(``grid_sample``, differentiable). No ``torch.autograd.Function`` and no CUDA kernel: the CPU
forward without autograd is one kernel (``native.cpp`` through ``kernels._native`` where it
builds, else numba's ``cpu.py``); with gradients, or on CUDA, the reference runs.
"""

from __future__ import annotations

import torch

from ..adaptive_aggregation import check_offsets
from .reference import neighbour_correlation_reference

__all__ = ["neighbour_correlation", "neighbour_correlation_reference"]


def _cpu_forward():
    """The module with the inference-only CPU forward: the native library's where it is built
    (no numba in the process), else numba's."""
    from .. import _native

    if _native.library() is not None:
        from . import native

        return native
    from . import cpu

    return cpu


def neighbour_correlation(feature: torch.Tensor, offsets: torch.Tensor, num_groups: int) -> torch.Tensor:
    """Group-wise correlation of each pixel's feature with its K offset neighbours' features.

    ``out[b, g, k, y, x]`` = mean over group g's channels of ``feature(p) * feature(p + offset_k)``,
    the neighbour sampled bilinearly with its position clamped into the map: what PatchmatchNet's
    feature weights of the aggregation are computed from. On CPU without autograd one numba
    kernel (no sampled (B, C, H, W) map per neighbour); otherwise
    :func:`neighbour_correlation_reference` (``grid_sample``; differentiable).

    Shape:
        feature (B, C, H, W), offsets (B, 2K, H, W) -> (B, G, K, H, W)
    """
    for name, value in (("feature", feature), ("offsets", offsets)):
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"neighbour_correlation: {name} must be a torch.Tensor, got {type(value).__name__}")
        if value.dtype not in (torch.float32, torch.float64):
            raise TypeError(f"neighbour_correlation: {name} must be float32 or float64, got {value.dtype}")
    if feature.dim() != 4 or 0 in feature.shape:
        raise ValueError(f"neighbour_correlation: expected feature (B, C, H, W), got {tuple(feature.shape)}")
    B, C, H, W = feature.shape
    check_offsets("neighbour_correlation", offsets, B, H, W)
    if offsets.dtype != feature.dtype or offsets.device != feature.device:
        raise TypeError(
            f"neighbour_correlation: offsets are {offsets.dtype} on {offsets.device}, feature {feature.dtype} on {feature.device}"
        )
    if isinstance(num_groups, bool) or not isinstance(num_groups, int) or num_groups < 1 or C % num_groups:
        raise ValueError(f"neighbour_correlation: num_groups must divide the {C} channels, got {num_groups!r}")
    grad = torch.is_grad_enabled() and (feature.requires_grad or offsets.requires_grad)
    if feature.device.type == "cpu" and not grad:
        return _cpu_forward().neighbour_correlation_forward(feature, offsets, num_groups)
    return neighbour_correlation_reference(feature, offsets, num_groups)
