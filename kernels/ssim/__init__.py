"""Per-pixel SSIM map with a 3x3 box window, fused forward and backward.

Public: ``ssim(x, y, *, padding="reflect")``; reference twin ``ssim_reference`` (plain torch).

One ``torch.autograd.Function`` dispatches by device to the numba CPU kernels (``cpu.py``) or the
numba.cuda kernels (``cuda.py``). Forward is one pass that writes only the map; backward is one
pass that recomputes, for the windows touching each input pixel, the affine gradient
coefficients (a_x, a_y, b, c: dS/dx_q = a_x + b x_q + c y_q for every tap q of a window) and
gathers g * coefficients. Only x and y are saved for backward: no pooled intermediate maps
(means, variances, covariance) are kept.

CUDA backends: numba.cuda (``cuda.py``) and CUDA C compiled by cupy/NVRTC (``kernels.cu`` launched
by ``cuda_c.py``; rules in ``kernels/_cuda_c``), same semantics. ``CUDA_BACKEND`` below picks one,
``SELFMVS_CUDA_BACKEND`` overrides it (e.g. ``ssim=cuda_c``). The default stays numba. Choice by
measurement: bench/gpu_check.sh times both; not yet run on a GPU. The CUDA C kernels are checked by
NVRTC compiles for sm_80/sm_90 and by a CPU emulation against the reference
(tests/kernel_ops/test_cuda_c_ops.py). numba.cuda keeps the scalar formulas (``_formulas.py``) one
piece of Python for CPU and GPU and runs under numba's simulator (tests/kernel_ops/test_cudasim.py);
``kernels.cu`` spells the same formulas in the same order. The numba backward tiles in shared
memory (one launch); the CUDA C backward, which may not, is two gathers through a (4, N, Ho, Wo)
buffer of window coefficients.
"""

from __future__ import annotations

import torch

from .._backend import (
    ACCEPTED_DTYPES,
    check_same_device,
    check_same_dtype,
    check_tensor,
    compute_dtype,
)
from .reference import C1, C2, ssim_reference

_PADDINGS = ("reflect", "valid")
#: the CUDA backend, "numba" or "cuda_c" (see the module docstring; env SELFMVS_CUDA_BACKEND overrides)
CUDA_BACKEND = "numba"


def _backend_module(device: torch.device):
    if device.type == "cuda":
        from .._cuda_c import cuda_backend

        if cuda_backend("ssim", CUDA_BACKEND) == "cuda_c":
            from . import cuda_c as backend
        else:
            from . import cuda as backend
    else:
        from . import cpu as backend
    return backend


class _SSIMFunction(torch.autograd.Function):
    """Owns allocation, launch and saved tensors; inputs already checked, contiguous, native dtype."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, y: torch.Tensor, valid: bool) -> torch.Tensor:
        batch, channels, height, width = x.shape
        backend = _backend_module(x.device)
        x3 = x.reshape(batch * channels, height, width)
        y3 = y.reshape(batch * channels, height, width)
        out = backend.ssim_forward(x3, y3, valid)
        ctx.valid = valid
        ctx.shape = x.shape
        ctx.save_for_backward(x3, y3)
        return out.reshape(batch, channels, out.shape[1], out.shape[2])

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: torch.Tensor):
        x3, y3 = ctx.saved_tensors
        g3 = grad_out.contiguous().reshape(x3.shape[0], grad_out.shape[2], grad_out.shape[3])
        grad_x, grad_y = _backend_module(x3.device).ssim_backward(x3, y3, g3, ctx.valid)
        grad_x = grad_x.reshape(ctx.shape) if ctx.needs_input_grad[0] else None
        grad_y = grad_y.reshape(ctx.shape) if ctx.needs_input_grad[1] else None
        return grad_x, grad_y, None


def ssim(x: torch.Tensor, y: torch.Tensor, *, padding: str = "reflect") -> torch.Tensor:
    """Per-pixel SSIM map (3x3 box window, C1 = 0.01^2, C2 = 0.03^2), differentiable in x and y.

    float32 and float64 are computed natively; float16 and bfloat16 are computed in float32 and
    the map is returned in the input dtype. Non-contiguous inputs are made contiguous.

    Args:
        x: image with values in [0, 1].
        y: image with values in [0, 1], same shape, dtype and device as ``x``.
        padding: ``"reflect"`` (reflection padding by one: output has the input size) or
            ``"valid"`` (no padding: output is two pixels smaller in H and W).

    Returns:
        The SSIM map, 1 where the windows agree.

    Shape:
        - x, y: (B, C, H, W) with H, W >= 2 (reflect) or >= 3 (valid)
        - output: (B, C, H, W) (reflect) or (B, C, H - 2, W - 2) (valid)

    Raises:
        TypeError: a non-tensor or an unsupported dtype, or x and y dtypes differ.
        ValueError: wrong ndim, mismatched shapes or devices, too small images, unknown padding.
    """
    if padding not in _PADDINGS:
        raise ValueError(f"ssim: padding must be 'reflect' or 'valid', got {padding!r}")
    low = 3 if padding == "valid" else 2
    check_tensor(x, "ssim: x", shape=(None, None, None, None), layout="(B, C, H, W)", dtypes=ACCEPTED_DTYPES,
                 min_size=(1, 1, low, low))
    check_tensor(y, "ssim: y", shape=(None, None, None, None), layout="(B, C, H, W)", dtypes=ACCEPTED_DTYPES)
    if x.shape != y.shape:
        raise ValueError(f"ssim: x and y must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    check_same_device(x=x, y=y)
    dtype = check_same_dtype(x=x, y=y)
    work = compute_dtype(dtype)
    out = _SSIMFunction.apply(x.to(work).contiguous(), y.to(work).contiguous(), padding == "valid")
    return out.to(dtype)


__all__ = ["ssim", "ssim_reference", "C1", "C2"]
