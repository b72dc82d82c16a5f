"""Plain-PyTorch spatial propagation: the reference the kernels are tested against."""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: (row, column) offset n_k of neighbour k: the 3x3 ring in row-major order without the centre.
NEIGHBOUR_OFFSETS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))


def spn_propagate_reference(depth: torch.Tensor, affinity: torch.Tensor, *, steps: int) -> torch.Tensor:
    """``steps`` steps of 8-neighbour spatial propagation (Liu et al. NIPS 2017; CSPN's
    convolutional form, Cheng et al. ECCV 2018, eq. 1):

        d'(p) = (1 - sum_k a_k(p)) d(p) + sum_k a_k(p) d(p + n_k)
              = d(p) + sum_k a_k(p) (d(p + n_k) - d(p)),

    with ``n_k`` = ``NEIGHBOUR_OFFSETS[k]`` and a zero-affinity border: a neighbour outside the
    map contributes nothing, as if its affinity were 0 (the centre weight then counts only the
    neighbours inside). A replicated border would differ on the diagonals and along the edge
    (d(-1, j + 1) would become d(0, j + 1), not d(0, j)).

    Precision policy: computed in the inputs' dtype with torch ops, in the second (difference)
    form like the kernels, summing the eight terms in k order; for float32 the result carries
    float32 rounding over ``steps`` steps, so test float32 kernels against a float64 run of this
    reference. Autograd gives the gradients (it keeps every step's intermediate maps).

    Args:
        depth: the map to propagate.
        affinity: the eight neighbour weights a_k per pixel (normalisation: see
            :func:`kernels.spn_propagation.spn_propagate`).
        steps: number of propagation steps (0: ``depth`` unchanged).

    Returns:
        The propagated map.

    Shape:
        - depth: (B, 1, H, W)
        - affinity: (B, 8, H, W)
        - output: (B, 1, H, W)
    """
    height, width = depth.shape[-2:]
    inside = F.pad(depth.new_ones(1, 1, height, width), (1, 1, 1, 1))  # 0 outside the map
    # Affinities towards neighbours outside the map set to 0 (the replicated values they then
    # multiply are finite, so the products are exact zeros).
    masked = torch.cat(
        [
            affinity[:, k : k + 1] * inside[..., 1 + di : 1 + di + height, 1 + dj : 1 + dj + width]
            for k, (di, dj) in enumerate(NEIGHBOUR_OFFSETS)
        ],
        dim=1,
    )
    for _ in range(steps):
        padded = F.pad(depth, (1, 1, 1, 1), mode="replicate")
        update = torch.zeros_like(depth)
        for k, (di, dj) in enumerate(NEIGHBOUR_OFFSETS):
            shifted = padded[..., 1 + di : 1 + di + height, 1 + dj : 1 + dj + width]
            update = update + masked[:, k : k + 1] * (shifted - depth)
        depth = depth + update
    return depth
