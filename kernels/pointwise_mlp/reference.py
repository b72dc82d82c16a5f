"""Plain-torch twin of :func:`kernels.pointwise_mlp`: three matrix products, bias, ReLU.

Precision: the products run in the input dtype (float32 inputs accumulate in float32 through
BLAS, in BLAS's order), so the kernel and this reference agree to float32 round-off, not bit for
bit.
"""

from __future__ import annotations

import torch


def pointwise_mlp_reference(
    x: torch.Tensor,
    w1: torch.Tensor,
    b1: torch.Tensor,
    w2: torch.Tensor,
    b2: torch.Tensor,
    w3: torch.Tensor,
    b3: torch.Tensor,
) -> torch.Tensor:
    """``w3 @ relu(w2 @ relu(w1 @ x + b1) + b2) + b3`` at every position.

    Shape:
        x (B, C, N), w1 (H1, C), b1 (H1,), w2 (H2, H1), b2 (H2,), w3 (1, H2), b3 (1,) -> (B, N)
    """
    hidden = torch.relu(torch.matmul(w1, x) + b1.view(1, -1, 1))
    hidden = torch.relu(torch.matmul(w2, hidden) + b2.view(1, -1, 1))
    return (torch.matmul(w3, hidden) + b3.view(1, -1, 1))[:, 0]
