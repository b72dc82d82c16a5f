"""``pointwise_mlp``: a small MLP applied at every position of a feature volume (PatchmatchNet's
1x1x1 similarity and feature-weight nets, BatchNorm folded into the weights).

Dispatch: CPU without autograd, the native C++ forward (``kernels._native``) where it is built:
no hidden layer is ever written to memory (on a 640x480 forward the torch path allocates ~250 MB
of hidden layers in 4 MiB chunks). Otherwise :func:`pointwise_mlp_reference`, without autograd in
chunks of ``chunk`` positions (memory-bounded), with autograd in one pass. There is no numba or
CUDA kernel of this op: on a GPU the reference's batched matrix products are the fast path.
"""

from __future__ import annotations

import torch

from .reference import pointwise_mlp_reference

__all__ = ["pointwise_mlp", "pointwise_mlp_reference"]


def _check(x, weights, biases) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"pointwise_mlp: x must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"pointwise_mlp: x must be float32 or float64, got {x.dtype}")
    if x.dim() < 2 or 0 in x.shape:
        raise ValueError(f"pointwise_mlp: expected x (B, C, ...), got {tuple(x.shape)}")
    if not isinstance(weights, (list, tuple)) or not isinstance(biases, (list, tuple)) or not weights:
        raise TypeError("pointwise_mlp: weights and biases must be non-empty lists of tensors")
    if len(weights) != len(biases):
        raise ValueError(f"pointwise_mlp: {len(weights)} weights but {len(biases)} biases")
    matrices, vectors = [], []
    channels = x.shape[1]
    for index, (weight, bias) in enumerate(zip(weights, biases)):
        if not isinstance(weight, torch.Tensor) or not isinstance(bias, torch.Tensor):
            raise TypeError(f"pointwise_mlp: layer {index}: weight and bias must be tensors")
        # a 1x1(x1) convolution weight (C_out, C_in, 1, ...) is accepted as its matrix
        if weight.dim() < 2 or any(size != 1 for size in weight.shape[2:]):
            raise ValueError(f"pointwise_mlp: layer {index}: expected weight (C_out, C_in), got {tuple(weight.shape)}")
        matrix = weight.reshape(weight.shape[0], weight.shape[1])
        if matrix.shape[1] != channels:
            raise ValueError(
                f"pointwise_mlp: layer {index}: weight takes {matrix.shape[1]} channels, its input has {channels}"
            )
        if tuple(bias.shape) != (matrix.shape[0],):
            raise ValueError(f"pointwise_mlp: layer {index}: expected bias ({matrix.shape[0]},), got {tuple(bias.shape)}")
        for name, value in (("weight", matrix), ("bias", bias)):
            if value.dtype != x.dtype or value.device != x.device:
                raise TypeError(
                    f"pointwise_mlp: layer {index}: {name} is {value.dtype} on {value.device}, x {x.dtype} on {x.device}"
                )
        matrices.append(matrix)
        vectors.append(bias)
        channels = matrix.shape[0]
    return matrices, vectors


def pointwise_mlp(
    x: torch.Tensor, weights: list[torch.Tensor], biases: list[torch.Tensor], *, chunk: int = 1 << 16
) -> torch.Tensor:
    """``x`` through linear layers ``weights[l] @ . + biases[l]`` at every position, ReLU between.

    Shape:
        x (B, C_0, *S), weights[l] (C_{l+1}, C_l) (or a 1x1 convolution's (C_{l+1}, C_l, 1, ...)),
        biases[l] (C_{l+1},) -> (B, C_L, *S)
    """
    weights, biases = _check(x, weights, biases)
    grad = torch.is_grad_enabled() and (x.requires_grad or any(t.requires_grad for t in (*weights, *biases)))
    if grad:
        return pointwise_mlp_reference(x, weights, biases)
    if x.device.type == "cpu":
        from .. import _native

        if _native.library() is not None:
            from .native import pointwise_mlp_forward

            return pointwise_mlp_forward(x, weights, biases)
    batch, channels = x.shape[:2]
    positions = x[0, 0].numel()
    if positions <= chunk:
        return pointwise_mlp_reference(x, weights, biases)
    flat = x.reshape(batch, channels, positions)
    pieces = [pointwise_mlp_reference(flat[:, :, start : start + chunk], weights, biases) for start in range(0, positions, chunk)]
    return torch.cat(pieces, dim=2).view(batch, -1, *x.shape[2:])
