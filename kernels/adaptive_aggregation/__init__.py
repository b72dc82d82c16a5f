"""PatchmatchNet's adaptive spatial cost aggregation (Wang et al., CVPR 2021, Sec. 3.4, eq. 6).

Public: :func:`adaptive_aggregation`; reference twin: :func:`adaptive_aggregation_reference` (plain
torch, ``grid_sample``, materialises the ``(B, K, D, H, W)`` samples). The public function checks
its inputs and runs one ``torch.autograd.Function`` that dispatches by device to ``cpu.py``
(numba ``parallel=True``) or a CUDA backend; none stores the sampled costs.

CUDA backends: numba.cuda (``cuda.py``) and CUDA C compiled by cupy/NVRTC (``kernels.cu`` launched
by ``cuda_c.py``; rules in ``kernels/_cuda_c``), same semantics, both deterministic under
``torch.use_deterministic_algorithms(True)``. ``CUDA_BACKEND`` below picks one,
``SELFMVS_CUDA_BACKEND`` overrides it (e.g. ``adaptive_aggregation=cuda_c``). The default stays
numba. Choice by measurement: bench/gpu_check.sh times both; not yet run on a GPU. The CUDA C
kernels are checked by NVRTC compiles for sm_80/sm_90 and by a CPU emulation against the reference
(tests/kernel_ops/test_cuda_c_ops.py); the numba ones run under numba's simulator.
"""

from __future__ import annotations

import torch

from .reference import adaptive_aggregation_reference

__all__ = ["adaptive_aggregation", "adaptive_aggregation_reference"]

#: the CUDA backend, "numba" or "cuda_c" (see the module docstring; env SELFMVS_CUDA_BACKEND overrides)
CUDA_BACKEND = "numba"


def _backend(device: torch.device):
    """The kernel module for a device (imported lazily: CUDA code never loads on a CPU run)."""
    if device.type == "cpu":
        from . import cpu

        return cpu
    if device.type == "cuda":
        from .._cuda_c import cuda_backend

        if cuda_backend("adaptive_aggregation", CUDA_BACKEND) == "cuda_c":
            from . import cuda_c

            return cuda_c
        from . import cuda

        return cuda
    return None


class _AdaptiveAggregation(torch.autograd.Function):
    """Fused sample + weighted mean; saves inputs and output, never the sampled (B, K, D, H, W)."""

    @staticmethod
    def forward(ctx, cost, offsets, weights, eps):
        backend = _backend(cost.device)
        out, saved = backend.forward(cost, offsets, weights, eps)
        ctx.backend = backend
        ctx.eps = eps
        ctx.save_for_backward(*saved)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        need = ctx.needs_input_grad[:3]
        if not any(need):
            return None, None, None, None
        grads = ctx.backend.backward(ctx.saved_tensors, grad_out, ctx.eps, *need)
        return (*grads, None)


def check_offsets(op: str, offsets: torch.Tensor, B: int, H: int, W: int) -> None:
    """Raise ``ValueError`` unless offsets are (B, 2K, H, W) with K >= 1 (also used by the
    depth-weighted aggregation and the neighbour correlation)."""
    if offsets.dim() != 4 or offsets.shape[0] != B or offsets.shape[2:] != (H, W) or offsets.shape[1] % 2 or offsets.shape[1] == 0:
        raise ValueError(f"{op}: expected offsets ({B}, 2K, {H}, {W}) with K >= 1, got {tuple(offsets.shape)}")


def check_inputs(cost, offsets, weights, eps):
    """The checks of :func:`adaptive_aggregation` (``TypeError``/``ValueError`` quoting what they got)."""
    for name, value in (("cost", cost), ("offsets", offsets), ("weights", weights)):
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"adaptive_aggregation: {name} must be a torch.Tensor, got {type(value).__name__}")
        if value.dtype not in (torch.float32, torch.float64):
            raise TypeError(f"adaptive_aggregation: {name} must be float32 or float64, got {value.dtype}")
        if value.dtype != cost.dtype:
            raise TypeError(f"adaptive_aggregation: {name} has dtype {value.dtype}, cost has {cost.dtype}")
        if value.device != cost.device:
            raise ValueError(f"adaptive_aggregation: {name} is on {value.device}, cost is on {cost.device}")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps >= 0:
        raise ValueError(f"adaptive_aggregation: eps must be a float >= 0, got {eps!r}")
    if cost.dim() != 4 or 0 in cost.shape:
        raise ValueError(f"adaptive_aggregation: expected cost (B, D, H, W), got {tuple(cost.shape)}")
    B, D, H, W = cost.shape
    check_offsets("adaptive_aggregation", offsets, B, H, W)
    K = offsets.shape[1] // 2
    if tuple(weights.shape) != (B, K, D, H, W):
        raise ValueError(f"adaptive_aggregation: expected weights {(B, K, D, H, W)}, got {tuple(weights.shape)}")


def adaptive_aggregation(
    cost: torch.Tensor, offsets: torch.Tensor, weights: torch.Tensor, eps: float = 1e-8
) -> torch.Tensor:
    """Weighted mean of costs sampled bilinearly at K offset neighbours (PatchmatchNet eq. 6).

    ``out[b, d, y, x] = sum_k w_k * cost[b, d](x + offsets[b, 2k, y, x], y + offsets[b, 2k + 1, y, x])
    / (sum_k w_k + eps)`` with ``w_k = weights[b, k, d, y, x]``; offsets in pixel-index units
    (offset 0 is the pixel itself); samples outside the map read zeros.

    Args:
        cost: per-hypothesis matching cost.
        offsets: (dx_k, dy_k) interleaved per neighbour, fixed pattern plus learned offsets.
        weights: per-neighbour, per-hypothesis weights (PatchmatchNet: feature x depth weights).
        eps: added to the sum of weights.

    Returns:
        The aggregated cost; differentiable w.r.t. cost, offsets and weights.

    Shape:
        cost (B, D, H, W), offsets (B, 2K, H, W), weights (B, K, D, H, W) -> (B, D, H, W)
    """
    check_inputs(cost, offsets, weights, eps)
    if _backend(cost.device) is None:
        return adaptive_aggregation_reference(cost, offsets, weights, eps)
    return _AdaptiveAggregation.apply(cost, offsets, weights, float(eps))
