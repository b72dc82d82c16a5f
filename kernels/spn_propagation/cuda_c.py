"""Spatial propagation with the CUDA C kernels of ``kernels.cu`` (cupy/NVRTC on a GPU, the CPU
emulation in tests).

Same contract as ``cuda.py`` and ``cpu.py`` (``spn_forward``, ``spn_backward``) and the same
schedule: one launch per step, one thread per pixel; the backward step is the gather of the
package docstring (no atomics). Depth-like maps are (B, H, W), affinity (B, 8, H, W), contiguous,
one native dtype.
"""

from __future__ import annotations

import torch

from .._cuda_c import check_int32_sizes, launch, launch_config_1d

OP = "spn_propagation"


def spn_forward(depth: torch.Tensor, affinity: torch.Tensor, steps: int, keep_history: bool):
    """Returns (output (B, H, W), history (steps, B, H, W) holding each step's input, or None)."""
    history = torch.empty((steps, *depth.shape), dtype=depth.dtype, device=depth.device) if keep_history and steps else None
    if steps == 0:
        return depth.clone(), history
    check_int32_sizes(OP, affinity=affinity)
    batch, height, width = depth.shape
    grid, block = launch_config_1d(depth.numel())

    def step(src: torch.Tensor, dst: torch.Tensor) -> None:
        launch(OP, "spn_fwd_step", depth.dtype, grid, block, src, affinity, dst, batch, height, width)

    out = torch.empty_like(depth)
    if history is not None:
        history[0].copy_(depth)
        for t in range(steps):
            step(history[t], history[t + 1] if t + 1 < steps else out)
        return out, history
    buffers = (depth.clone(), out)
    for t in range(steps):
        step(buffers[t % 2], buffers[(t + 1) % 2])
    return buffers[steps % 2], None


def spn_backward(history: torch.Tensor | None, affinity: torch.Tensor, grad_out: torch.Tensor):
    """Gradients from the forward's history; returns (grad_depth (B, H, W), grad_affinity (B, 8, H, W))."""
    grad_affinity = torch.zeros_like(affinity)
    grad = grad_out.clone()
    if history is None:  # zero steps
        return grad, grad_affinity
    check_int32_sizes(OP, affinity=affinity)
    batch, height, width = grad.shape
    spare = torch.empty_like(grad)
    grid, block = launch_config_1d(grad.numel())
    for t in range(history.shape[0] - 1, -1, -1):
        launch(OP, "spn_bwd_step", grad.dtype, grid, block, history[t], affinity, grad, spare, grad_affinity,
               batch, height, width)
        grad, spare = spare, grad
    return grad, grad_affinity


__all__ = ["spn_forward", "spn_backward"]
