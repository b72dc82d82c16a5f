"""Fused differentiable warping + group-wise correlation (PatchmatchNet's cost-volume hot path).

Public: :func:`warp_correlation`; reference twin: :func:`warp_correlation_reference` (plain torch,
``grid_sample``, materialises the warped volume). The public function checks its inputs and runs
one ``torch.autograd.Function`` that dispatches by device to ``cpu.py`` (numba ``parallel=True``)
or to one of two CUDA backends. No fast path ever stores the ``(B, C, D, H, W)`` warped volume: the
backward recomputes the sample positions.

CUDA backends: numba.cuda (``cuda.py``) and CUDA C compiled by cupy/NVRTC (``kernels.cu`` launched
by ``cuda_c.py``; rules in ``kernels/_cuda_c``), same semantics, same deterministic mode.
``CUDA_BACKEND`` below picks one, ``SELFMVS_CUDA_BACKEND`` overrides it (e.g.
``warp_correlation=cuda_c``). The default stays numba: the choice is by measurement
(bench/gpu_check.sh times both backends through bench/bench_cuda_ops.py), and the CUDA C kernels
have not yet run on a GPU; they are checked by NVRTC compiles for sm_80/sm_90 and by a CPU
emulation against the reference (tests/kernel_ops/test_cuda_c.py).
"""

from __future__ import annotations

import torch

from .reference import projection_matrices, warp_correlation_reference

__all__ = ["warp_correlation", "warp_correlation_reference"]

#: the CUDA backend, "numba" or "cuda_c" (see the module docstring; env SELFMVS_CUDA_BACKEND overrides)
CUDA_BACKEND = "numba"


def _backend(device: torch.device):
    """The kernel module for a device (imported lazily: CUDA code never loads on a CPU run). On CPU
    the native library's forward where it is built (``native.py``: numba loads only for a
    backward), else numba's forward and backward (``cpu.py``)."""
    if device.type == "cpu":
        from .. import _native

        if _native.library() is not None:
            from . import native

            return native
        from . import cpu

        return cpu
    if device.type == "cuda":
        from .._cuda_c import cuda_backend

        if cuda_backend("warp_correlation", CUDA_BACKEND) == "cuda_c":
            from . import cuda_c

            return cuda_c
        from . import cuda

        return cuda
    return None


class _WarpCorrelation(torch.autograd.Function):
    """Fused warp + correlation; saves features and depths, never the warped volume."""

    @staticmethod
    def forward(ctx, ref_feature, src_feature, ref_K, src_K, src_from_ref, depth_hypotheses, num_groups):
        backend = _backend(ref_feature.device)
        M, T = projection_matrices(ref_K, src_K, src_from_ref, ref_feature.dtype)
        proj = torch.cat((M.reshape(-1, 9), T), dim=1).contiguous()
        correlation, valid, saved = backend.forward(ref_feature, src_feature, proj, depth_hypotheses, num_groups)
        ctx.backend = backend
        ctx.save_for_backward(*saved)
        ctx.mark_non_differentiable(valid)
        return correlation, valid

    @staticmethod
    def backward(ctx, grad_correlation, grad_valid):
        need_ref, need_src = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_ref = grad_src = None
        if need_ref or need_src:
            grad_ref, grad_src = ctx.backend.backward(ctx.saved_tensors, grad_correlation, need_ref, need_src)
        return grad_ref, grad_src, None, None, None, None, None


def _check_inputs(ref_feature, src_feature, ref_K, src_K, src_from_ref, depth_hypotheses, num_groups):
    named = {
        "ref_feature": ref_feature,
        "src_feature": src_feature,
        "ref_K": ref_K,
        "src_K": src_K,
        "src_from_ref": src_from_ref,
        "depth_hypotheses": depth_hypotheses,
    }
    for name, value in named.items():
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"warp_correlation: {name} must be a torch.Tensor, got {type(value).__name__}")
    if isinstance(num_groups, bool) or not isinstance(num_groups, int):
        raise TypeError(f"warp_correlation: num_groups must be an int, got {num_groups!r}")
    if ref_feature.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"warp_correlation: expected float32 or float64 features, got {ref_feature.dtype}")
    for name, value in named.items():
        if value.dtype != ref_feature.dtype and name in ("src_feature", "depth_hypotheses"):
            raise TypeError(
                f"warp_correlation: {name} has dtype {value.dtype}, ref_feature has {ref_feature.dtype}"
            )
        if not value.is_floating_point():
            raise TypeError(f"warp_correlation: {name} must be floating point, got {value.dtype}")
        if value.device != ref_feature.device:
            raise ValueError(
                f"warp_correlation: {name} is on {value.device}, ref_feature is on {ref_feature.device}"
            )
    if ref_feature.dim() != 4:
        raise ValueError(f"warp_correlation: expected ref_feature (B, C, H, W), got {tuple(ref_feature.shape)}")
    B, C, H, W = ref_feature.shape
    if src_feature.dim() != 4 or src_feature.shape[:2] != (B, C):
        raise ValueError(
            f"warp_correlation: expected src_feature ({B}, {C}, Hs, Ws), got {tuple(src_feature.shape)}"
        )
    for name, value, tail in (("ref_K", ref_K, (3, 3)), ("src_K", src_K, (3, 3)), ("src_from_ref", src_from_ref, (4, 4))):
        if tuple(value.shape) != (B, *tail):
            raise ValueError(f"warp_correlation: expected {name} {(B, *tail)}, got {tuple(value.shape)}")
    if depth_hypotheses.dim() != 4 or depth_hypotheses.shape[0] != B or depth_hypotheses.shape[2:] != (H, W):
        raise ValueError(
            f"warp_correlation: expected depth_hypotheses ({B}, D, {H}, {W}), got {tuple(depth_hypotheses.shape)}"
        )
    if min(H, W, src_feature.shape[2], src_feature.shape[3], depth_hypotheses.shape[1], C) == 0:
        raise ValueError(
            f"warp_correlation: empty input (ref_feature {tuple(ref_feature.shape)}, src_feature "
            f"{tuple(src_feature.shape)}, depth_hypotheses {tuple(depth_hypotheses.shape)})"
        )
    if num_groups <= 0 or C % num_groups != 0:
        raise ValueError(f"warp_correlation: num_groups must divide the {C} channels, got {num_groups}")


def warp_correlation(
    ref_feature: torch.Tensor,
    src_feature: torch.Tensor,
    ref_K: torch.Tensor,
    src_K: torch.Tensor,
    src_from_ref: torch.Tensor,
    depth_hypotheses: torch.Tensor,
    num_groups: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Group-wise correlation of reference features with source features warped to each depth.

    ``correlation[b, g, d, i, j]`` is the mean over the channels ``c`` of group ``g`` of
    ``ref_feature[b, c, i, j] * src(c, x, y)``, ``src`` sampled bilinearly where the reference
    pixel centre ``(j + 0.5, i + 0.5)`` at depth ``depth_hypotheses[b, d, i, j]`` projects into the
    source view. A sample is invalid (correlation 0, ``valid`` False) when it lies behind the source
    camera (z <= 1e-6) or its centre falls outside the source map (``x - 0.5`` not in
    ``[0, Ws - 1]`` or ``y - 0.5`` not in ``[0, Hs - 1]``).

    Args:
        ref_feature: reference-view features.
        src_feature: source-view features (its size may differ from the reference's).
        ref_K: pixel intrinsics of the reference at the feature map's resolution.
        src_K: pixel intrinsics of the source at its feature map's resolution.
        src_from_ref: rigid transform from the reference to the source camera frame.
        depth_hypotheses: z-depths in the reference camera, per pixel.
        num_groups: number of channel groups ``G``; must divide ``C``.

    Returns:
        ``(correlation, valid)``. Differentiable w.r.t. both feature maps (not the depths).

    Shape:
        ref_feature (B, C, H, W), src_feature (B, C, Hs, Ws), ref_K (B, 3, 3), src_K (B, 3, 3),
        src_from_ref (B, 4, 4), depth_hypotheses (B, D, H, W)
        -> correlation (B, G, D, H, W), valid (B, D, H, W) bool
    """
    _check_inputs(ref_feature, src_feature, ref_K, src_K, src_from_ref, depth_hypotheses, num_groups)
    if _backend(ref_feature.device) is None:
        return warp_correlation_reference(
            ref_feature, src_feature, ref_K, src_K, src_from_ref, depth_hypotheses, num_groups
        )
    return _WarpCorrelation.apply(
        ref_feature, src_feature, ref_K, src_K, src_from_ref, depth_hypotheses.detach(), num_groups
    )
