"""SSIM with the CUDA C kernels of ``kernels.cu`` (cupy/NVRTC on a GPU, the CPU emulation in tests).

Same contract as ``cuda.py`` (``ssim_forward``, ``ssim_backward`` on (N, H, W) contiguous tensors
of one native dtype), different kernels: no shared memory, so the backward is two launches, both
gathers without atomics:

* ``ssim_bwd_coef``: one thread per map pixel writes g * (a_x, a_y, b, c) of its window to a
  (4, N, Ho, Wo) buffer (four map-sized planes, freed when the backward returns);
* ``ssim_bwd_gather``: one thread per input pixel sums those planes over the windows that read it.

The numba kernel instead recomputes the coefficients of a 20x20 halo per 16x16 tile in shared
memory (one launch, no buffer). Which is faster is for a GPU to say (``bench/gpu_check.sh``).
"""

from __future__ import annotations

import torch

from .._cuda_c import check_int32_sizes, launch, launch_config_1d

OP = "ssim"


def _map_size(height: int, width: int, valid: bool) -> tuple[int, int]:
    return (height - 2, width - 2) if valid else (height, width)


def ssim_forward(x: torch.Tensor, y: torch.Tensor, valid: bool) -> torch.Tensor:
    """Launch the forward on (N, H, W) contiguous tensors; returns the (N, Ho, Wo) map."""
    n_img, height, width = x.shape
    out_h, out_w = _map_size(height, width, valid)
    check_int32_sizes(OP, x=x)
    out = torch.empty((n_img, out_h, out_w), dtype=x.dtype, device=x.device)
    grid, block = launch_config_1d(out.numel())
    launch(OP, "ssim_fwd", x.dtype, grid, block, x, y, out, n_img, height, width, int(valid))
    return out


def ssim_backward(x: torch.Tensor, y: torch.Tensor, grad_out: torch.Tensor, valid: bool):
    """Launch the backward; returns (grad_x, grad_y), each (N, H, W)."""
    n_img, height, width = x.shape
    out_h, out_w = _map_size(height, width, valid)
    coef = torch.empty((4, n_img, out_h, out_w), dtype=x.dtype, device=x.device)
    check_int32_sizes(OP, x=x, coefficients=coef)
    grid, block = launch_config_1d(grad_out.numel())
    launch(OP, "ssim_bwd_coef", x.dtype, grid, block, x, y, grad_out, coef, n_img, height, width, int(valid))
    grad_x = torch.empty_like(x)
    grad_y = torch.empty_like(y)
    grid, block = launch_config_1d(x.numel())
    launch(OP, "ssim_bwd_gather", x.dtype, grid, block, x, y, coef, grad_x, grad_y, n_img, height, width, int(valid))
    return grad_x, grad_y


__all__ = ["ssim_forward", "ssim_backward"]
