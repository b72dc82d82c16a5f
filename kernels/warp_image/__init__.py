"""Inverse warp of a source image into the reference view through the reference depth map.

Public: ``warp_image(src_image, ref_depth, ref_K, src_K, src_from_ref) -> (warped, valid)``;
reference twin ``warp_image_reference`` (plain torch, same signature).

One ``torch.autograd.Function`` dispatches by device to numba CPU kernels (``cpu.py``) or
numba.cuda kernels (``cuda.py``); gradients reach the source image (bilinear weights) and the
reference depth (through the projected coordinates: dfx/dz = (r_x h_z - h_x r_z) / h_z^2). The
cameras are composed once per batch into [K_src R K_ref^-1 | K_src t] in float64.

CUDA backends: numba.cuda (``cuda.py``) and CUDA C compiled by cupy/NVRTC (``kernels.cu`` launched by
``cuda_c.py``; rules in ``kernels/_cuda_c``), same semantics. ``CUDA_BACKEND`` below picks one,
``SELFMVS_CUDA_BACKEND`` overrides it (e.g. ``warp_image=cuda_c``). The default stays numba: the
choice is by measurement (bench/gpu_check.sh times both backends through
bench/bench_cuda_ops.py), and the CUDA C kernels have not yet run on a GPU; they are checked by
NVRTC compiles for sm_80/sm_90 and by a CPU emulation against the reference
(tests/kernel_ops/test_cuda_c.py). numba.cuda keeps the per-pixel projection and validity rule
(``_formulas.py``) one piece of Python for CPU and GPU and runs under numba's simulator
(tests/kernel_ops/test_cudasim.py); ``kernels.cu`` spells the same operations in the same order.
"""

from __future__ import annotations

import torch

from .._backend import (
    check_batch,
    check_same_device,
    check_same_dtype,
    check_tensor,
    compute_dtype,
)
from .reference import MIN_DEPTH, projection_matrix, warp_image_reference

_CAMERA_DTYPES = (torch.float32, torch.float64)
#: the CUDA backend, "numba" or "cuda_c" (see the module docstring; env SELFMVS_CUDA_BACKEND overrides)
CUDA_BACKEND = "numba"


def _backend_module(device: torch.device):
    if device.type == "cuda":
        from .._cuda_c import cuda_backend

        if cuda_backend("warp_image", CUDA_BACKEND) == "cuda_c":
            from . import cuda_c as backend
        else:
            from . import cuda as backend
    else:
        from . import cpu as backend
    return backend


class _WarpImageFunction(torch.autograd.Function):
    """Inputs checked, contiguous, one native dtype; ``proj`` (B, 3, 4) carries no gradient."""

    @staticmethod
    def forward(ctx, src: torch.Tensor, depth: torch.Tensor, proj: torch.Tensor):
        warped, valid = _backend_module(src.device).warp_image_forward(src, depth, proj)
        ctx.save_for_backward(src, depth, proj)
        valid = valid.view(torch.bool)
        ctx.mark_non_differentiable(valid)
        return warped, valid

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_warped: torch.Tensor, _grad_valid):
        src, depth, proj = ctx.saved_tensors
        need_src, need_depth = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if grad_warped is None or not (need_src or need_depth):
            return None, None, None
        grad_src, grad_depth = _backend_module(src.device).warp_image_backward(
            src, depth, proj, grad_warped.contiguous(), need_src, need_depth
        )
        return grad_src, grad_depth, None


def warp_image(
    src_image: torch.Tensor,
    ref_depth: torch.Tensor,
    ref_K: torch.Tensor,
    src_K: torch.Tensor,
    src_from_ref: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Bilinearly sample ``src_image`` where each reference pixel projects at its depth.

    Pixel centres follow COLMAP: pixel (row i, col j) is at (x, y) = (j + 0.5, i + 0.5). A pixel
    is invalid (value 0, ``valid`` False) when its point is behind the source camera
    (z_src <= 1e-6) or the sample centre falls outside the source image (x - 0.5 not in
    [0, Ws - 1] or y - 0.5 not in [0, Hs - 1]). Differentiable w.r.t. ``src_image`` and
    ``ref_depth``; the cameras get no gradient. float16/bfloat16 are computed in float32 and
    returned in the input dtype. Non-contiguous inputs are made contiguous.

    Args:
        src_image: source image (any number of channels).
        ref_depth: z-depth of each reference pixel (same dtype as ``src_image``).
        ref_K: reference intrinsics in pixels, at the depth map's resolution.
        src_K: source intrinsics in pixels, at the source image's resolution.
        src_from_ref: reference-to-source rigid transform ([R | t], last row 0 0 0 1).

    Returns:
        (warped, valid).

    Shape:
        - src_image: (B, C, Hs, Ws)
        - ref_depth: (B, 1, H, W)
        - ref_K, src_K: (B, 3, 3)
        - src_from_ref: (B, 4, 4) (a (B, 3, 4) [R | t] is accepted too)
        - warped: (B, C, H, W) in the input dtype; valid: (B, 1, H, W) bool

    Raises:
        TypeError: a non-tensor, an unsupported dtype, or image and depth dtypes differ.
        ValueError: wrong ndim or sizes, batch sizes or devices differ.
    """
    check_tensor(src_image, "warp_image: src_image", shape=(None, None, None, None), layout="(B, C, Hs, Ws)",
                 min_size=(1, 1, 1, 1))
    check_tensor(ref_depth, "warp_image: ref_depth", shape=(None, 1, None, None), layout="(B, 1, H, W)",
                 min_size=(1, 1, 1, 1))
    check_tensor(ref_K, "warp_image: ref_K", shape=(None, 3, 3), layout="(B, 3, 3)", dtypes=_CAMERA_DTYPES)
    check_tensor(src_K, "warp_image: src_K", shape=(None, 3, 3), layout="(B, 3, 3)", dtypes=_CAMERA_DTYPES)
    check_tensor(src_from_ref, "warp_image: src_from_ref", dtypes=_CAMERA_DTYPES)
    if src_from_ref.ndim != 3 or tuple(src_from_ref.shape[1:]) not in ((4, 4), (3, 4)):
        raise ValueError(
            f"warp_image: src_from_ref: expected shape (B, 4, 4) or (B, 3, 4), got {tuple(src_from_ref.shape)}"
        )
    check_batch({"src_image": src_image.shape[0], "ref_depth": ref_depth.shape[0], "ref_K": ref_K.shape[0],
                 "src_K": src_K.shape[0], "src_from_ref": src_from_ref.shape[0]})
    check_same_device(src_image=src_image, ref_depth=ref_depth, ref_K=ref_K, src_K=src_K, src_from_ref=src_from_ref)
    dtype = check_same_dtype(src_image=src_image, ref_depth=ref_depth)
    work = compute_dtype(dtype)
    proj = projection_matrix(ref_K, src_K, src_from_ref, work)
    warped, valid = _WarpImageFunction.apply(
        src_image.to(work).contiguous(), ref_depth.to(work).contiguous(), proj
    )
    return warped.to(dtype), valid


__all__ = ["warp_image", "warp_image_reference", "projection_matrix", "MIN_DEPTH"]
