"""Depth refinement by a spatial propagation network (SPN) guided by the reference image.

MVS^2 (Dai et al., "MVS^2: Deep Unsupervised Multi-view Stereo with Multi-view Symmetry", 3DV
2019) refines its depth with a spatial propagation network; we use SPN (Liu et al., NIPS 2017)
in the 8-neighbour convolutional form of CSPN (Cheng et al., ECCV 2018): a small CNN predicts
eight affinities per pixel from the image and the depth, and ``kernels.spn_propagate`` runs a
fixed number of propagation steps with them.
"""

from __future__ import annotations

import torch
from torch import nn

from kernels.spn_propagation import NUM_NEIGHBOURS, spn_propagate

from .feature import ConvBnReLU

#: sum_k |a_k| at most this per pixel (see :func:`normalise_affinity`).
AFFINITY_BUDGET = 0.95


def normalise_affinity(raw: torch.Tensor, budget: float = AFFINITY_BUDGET) -> torch.Tensor:
    """Raw guidance outputs to affinities: a_k = budget * tanh(raw_k) / max(1, sum_j |tanh(raw_j)|).

    Why this form rather than CSPN's a_k = raw_k / sum_j |raw_j|:

    * zero guidance gives zero affinities, i.e. the identity (CSPN's division is 0 / 0 there and
      forces sum_k |a_k| = 1 everywhere, so a pixel can never keep its own depth);
    * while sum_j |tanh(raw_j)| <= 1 the affinities are plain (scaled) tanh outputs; above it they
      are renormalised like CSPN's, so sum_k |a_k| <= budget always (the stability condition of
      Liu et al. 2017, Sec. 3.2, that ``kernels.spn_propagate`` expects);
    * budget < 1 keeps the centre weight 1 - sum_k a_k >= 1 - budget > 0: every step keeps part
      of the pixel's own depth, even where all eight affinities saturate.

    The affinities are signed (as in SPN and CSPN: a negative weight sharpens an edge), so the
    propagated depth may leave the input's range; :class:`SPNRefinement` clamps it.

    Shape: (B, 8, H, W) -> (B, 8, H, W).
    """
    squashed = torch.tanh(raw)
    return budget * squashed / squashed.abs().sum(dim=1, keepdim=True).clamp(min=1.0)


class SPNRefinement(nn.Module):
    """Spatial propagation of a full-resolution depth map with image-guided affinities.

    The guidance CNN sees the reference image (centred) and the depth normalised by the depth
    range to [0, 1]; its last convolution starts at zero, so a fresh module is the identity (a
    network switched to ``refinement: spn`` returns its previous depth until the SPN has trained)
    and gradients reach the earlier layers from the first optimiser step on. The propagation runs
    on the depth itself (it commutes with d -> s d + c, so normalising would change nothing but
    the rounding, and this way zero affinities return the input bit for bit) and the result is
    clamped to [depth_min, depth_max].

    Args:
        channels: channels of the guidance CNN's hidden layers.
        steps: propagation steps (``ModelConfig.spn_steps``; any number, no weights depend on it).
        momentum: BatchNorm momentum.
        budget: the bound on sum_k |a_k| (:func:`normalise_affinity`).

    Shape:
        image: (B, 3, H, W) in [0, 1]; depth: (B, 1, H, W); depth_min, depth_max: (B,).
        output: (B, 1, H, W).
    """

    def __init__(self, channels: int = 16, steps: int = 12, momentum: float = 0.1,
                 budget: float = AFFINITY_BUDGET) -> None:
        super().__init__()
        if steps < 0:
            raise ValueError(f"SPNRefinement: steps must be >= 0, got {steps}")
        if not 0.0 < budget <= 1.0:
            raise ValueError(f"SPNRefinement: budget must be in (0, 1], got {budget}")
        self.steps = steps
        self.budget = budget
        self.guidance = nn.Sequential(
            ConvBnReLU(4, channels, momentum=momentum),
            ConvBnReLU(channels, channels, momentum=momentum),
            ConvBnReLU(channels, channels, dilation=2, momentum=momentum),
        )
        self.affinity = nn.Conv2d(channels, NUM_NEIGHBOURS, 3, padding=1)
        nn.init.zeros_(self.affinity.weight)
        nn.init.zeros_(self.affinity.bias)

    def affinities(self, image: torch.Tensor, normalised_depth: torch.Tensor) -> torch.Tensor:
        """Normalised affinities (B, 8, H, W) from the image and the depth in [0, 1]."""
        features = self.guidance(torch.cat((image - 0.5, normalised_depth), dim=1))
        return normalise_affinity(self.affinity(features), self.budget)

    def forward(
        self, image: torch.Tensor, depth: torch.Tensor, depth_min: torch.Tensor, depth_max: torch.Tensor
    ) -> torch.Tensor:
        if image.dim() != 4 or image.shape[1] != 3 or depth.dim() != 4 or depth.shape[1] != 1 \
                or image.shape[0] != depth.shape[0] or image.shape[-2:] != depth.shape[-2:]:
            raise ValueError(
                f"SPNRefinement: expected image (B, 3, H, W) and depth (B, 1, H, W), got "
                f"{tuple(image.shape)} and {tuple(depth.shape)}"
            )
        batch = depth.shape[0]
        near = depth_min.view(batch, 1, 1, 1)
        depth_range = (depth_max - depth_min).view(batch, 1, 1, 1)
        normalised = (depth - near) / depth_range
        affinity = self.affinities(image, normalised)
        propagated = spn_propagate(depth, affinity, steps=self.steps)
        return torch.minimum(torch.maximum(propagated, near), depth_max.view(batch, 1, 1, 1))
