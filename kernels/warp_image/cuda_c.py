"""warp_image's launches of its CUDA C kernels (``kernels.cu``; rules and launch path: kernels/_cuda_c).

Same interface and semantics as ``cuda.py`` (numba.cuda): one thread per reference pixel; the
backward writes the depth gradient per pixel and scatters the image gradient with ``atomicAdd``,
or, under ``torch.use_deterministic_algorithms(True)``, writes each pixel's 4 tap weights and
indices and sums ``weight * grad`` with ``index_add_`` (deterministic on CUDA in that mode).
On CUDA tensors the kernels run on the tensors' device and torch's current stream; on CPU tensors
they run in the CPU emulation (tests only).
"""

from __future__ import annotations

import torch

from .._cuda_c import check_int32_sizes, launch, launch_config_1d
from .reference import MIN_DEPTH

OP = "warp_image"


def _sizes(src: torch.Tensor, depth: torch.Tensor) -> tuple[int, ...]:
    batch, channels, src_h, src_w = src.shape
    return batch, channels, src_h, src_w, depth.shape[2], depth.shape[3]


def warp_image_forward(src: torch.Tensor, depth: torch.Tensor, proj: torch.Tensor):
    """Forward on contiguous tensors; returns (warped, valid as uint8)."""
    batch, channels, src_h, src_w, height, width = _sizes(src, depth)
    out = torch.empty((batch, channels, height, width), dtype=src.dtype, device=src.device)
    valid = torch.empty((batch, 1, height, width), dtype=torch.uint8, device=src.device)
    check_int32_sizes(OP, src_image=src, warped=out)
    grid, block = launch_config_1d(batch * height * width)
    launch(OP, "warp_image_fwd", src.dtype, grid, block, src, depth, proj, out, valid,
           batch, channels, src_h, src_w, height, width, MIN_DEPTH)
    return out, valid


def warp_image_backward(src, depth, proj, grad_out, need_src: bool, need_depth: bool):
    """Backward; returns (grad_src or None, grad_depth or None). See the module docstring."""
    batch, channels, src_h, src_w, height, width = _sizes(src, depth)
    deterministic = need_src and torch.are_deterministic_algorithms_enabled()
    atomic_src = need_src and not deterministic
    grad_src = torch.zeros_like(src) if atomic_src else torch.zeros((1,), dtype=src.dtype, device=src.device)
    grad_depth = torch.empty_like(depth)
    check_int32_sizes(OP, src_image=src, grad_warped=grad_out)
    grid, block = launch_config_1d(batch * height * width)
    launch(OP, "warp_image_bwd", src.dtype, grid, block, src, depth, proj, grad_out, grad_src, grad_depth,
           int(atomic_src), batch, channels, src_h, src_w, height, width, MIN_DEPTH)
    if deterministic:
        corner_weight = torch.empty((batch, height, width, 4), dtype=src.dtype, device=src.device)
        corner_index = torch.empty((batch, height, width, 4), dtype=torch.int64, device=src.device)
        check_int32_sizes(OP, corner_weight=corner_weight)
        launch(OP, "warp_image_bwd_src_corners", src.dtype, grid, block, depth, proj, corner_weight, corner_index,
               batch, src_h, src_w, height, width, MIN_DEPTH)
        terms = corner_weight.unsqueeze(-1) * grad_out.permute(0, 2, 3, 1).unsqueeze(3)  # (B, H, W, 4, C)
        flat = torch.zeros((batch * src_h * src_w + 1, channels), dtype=src.dtype, device=src.device)  # + spare
        flat.index_add_(0, corner_index.view(-1), terms.reshape(-1, channels))
        grad_src = flat[:-1].view(batch, src_h, src_w, channels).permute(0, 3, 1, 2).contiguous()
    return (grad_src if need_src else None), (grad_depth if need_depth else None)
