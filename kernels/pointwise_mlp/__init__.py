"""A per-position three-layer perceptron (two hidden ReLU layers, one output), inference only.

PatchmatchNet's pixel-wise view weight, similarity and feature-weight networks are stacks of
1x1x1 convolutions (with BatchNorm folded in for inference) applied to every hypothesis of every
pixel: per position a tiny MLP, C -> 16 -> 8 -> 1. Written as matrix products, each layer writes a
16-channel volume and reads it back for the bias and the ReLU; at 640x480 these passes were about
a quarter of a forward pass on the 2-core CPU. :func:`pointwise_mlp` computes the whole MLP per
block of positions without the intermediate volumes.

Public: :func:`pointwise_mlp`; reference twin: :func:`pointwise_mlp_reference`. CPU tensors run
the numba kernel (``cpu.py``); on CUDA (cuBLAS matrix products are already fast there) and
whenever a gradient is needed, the reference runs: the op is for inference and is never used in
training.
"""

from __future__ import annotations

import torch

from .reference import pointwise_mlp_reference

__all__ = ["pointwise_mlp", "pointwise_mlp_reference"]


def _check_inputs(x, w1, b1, w2, b2, w3, b3) -> None:
    named = {"x": x, "w1": w1, "b1": b1, "w2": w2, "b2": b2, "w3": w3, "b3": b3}
    for name, value in named.items():
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"pointwise_mlp: {name} must be a torch.Tensor, got {type(value).__name__}")
        if value.dtype not in (torch.float32, torch.float64):
            raise TypeError(f"pointwise_mlp: {name} must be float32 or float64, got {value.dtype}")
        if value.dtype != x.dtype:
            raise TypeError(f"pointwise_mlp: {name} has dtype {value.dtype}, x has {x.dtype}")
        if value.device != x.device:
            raise ValueError(f"pointwise_mlp: {name} is on {value.device}, x is on {x.device}")
    if x.dim() != 3:
        raise ValueError(f"pointwise_mlp: expected x (B, C, N), got {tuple(x.shape)}")
    channels = x.shape[1]
    hidden1, hidden2 = w1.shape[0] if w1.dim() == 2 else -1, w2.shape[0] if w2.dim() == 2 else -1
    expected = {"w1": (hidden1, channels), "b1": (hidden1,), "w2": (hidden2, hidden1), "b2": (hidden2,),
                "w3": (1, hidden2), "b3": (1,)}
    for name, shape in expected.items():
        if tuple(named[name].shape) != shape or min(shape) < 1:
            raise ValueError(
                f"pointwise_mlp: expected {name} of shape {shape} for x {tuple(x.shape)} "
                f"(w1 (H1, C), b1 (H1,), w2 (H2, H1), b2 (H2,), w3 (1, H2), b3 (1,)), got {tuple(named[name].shape)}"
            )


def pointwise_mlp(
    x: torch.Tensor,
    w1: torch.Tensor,
    b1: torch.Tensor,
    w2: torch.Tensor,
    b2: torch.Tensor,
    w3: torch.Tensor,
    b3: torch.Tensor,
) -> torch.Tensor:
    """``w3 @ relu(w2 @ relu(w1 @ x + b1) + b2) + b3`` at every one of the N positions.

    Args:
        x: input channels per position.
        w1, b1, w2, b2: the two hidden layers (ReLU after each).
        w3, b3: the output layer (no activation).

    Returns:
        One value per position. Not differentiable through the numba kernel: with a gradient
        needed (or on CUDA) the reference runs instead.

    Shape:
        x (B, C, N), w1 (H1, C), b1 (H1,), w2 (H2, H1), b2 (H2,), w3 (1, H2), b3 (1,) -> (B, N)
    """
    _check_inputs(x, w1, b1, w2, b2, w3, b3)
    tensors = (x, w1, b1, w2, b2, w3, b3)
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
    if x.device.type != "cpu" or needs_grad or x.numel() == 0:
        return pointwise_mlp_reference(*tensors)
    from . import cpu

    return cpu.forward(*tensors)
