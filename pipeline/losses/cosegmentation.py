"""Semantic co-segmentation consistency (JDACS, Xu et al. 2021, Sec. 3.2).

Deep feature factorisation (Collins et al. 2018): the non-negative VGG16 features of *all views of
a sample together* are factorised by NMF, ``A ~ P Q`` with ``A`` (pixels x channels), ``P``
(pixels x K) and ``Q`` (K x channels); since ``Q`` is shared, segment k means the same thing in
every view. Each source's segmentation, warped into the reference by the predicted depth, must
agree with the reference's: a cross-entropy with the reference's arg-max segment as the label.
Gradients reach the depth only through the warp; the segmentations are fixed targets.

Without ImageNet weights the features mean little, so the term is OFF unless
``train.vgg16_weights`` names a torchvision-format state dict (:func:`make_cosegmentation`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from kernels.checks import require
from pipeline.losses.vgg16 import VGG16Features
from pipeline.losses.view_synthesis import check_image

log = logging.getLogger(__name__)


def nmf(
    matrix: torch.Tensor, num_segments: int, iterations: int, generator: torch.Generator, eps: float = 1e-8
) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched non-negative matrix factorisation by multiplicative updates (Lee & Seung 2001).

    Minimises ``|A - P Q|_F^2`` with ``P, Q >= 0``, starting from uniform random factors drawn from
    ``generator``.

    Shape:
        - matrix: (B, N, C) non-negative -> P (B, N, K), Q (B, K, C)
    """
    if matrix.dim() != 3:
        raise ValueError(f"matrix: expected (B, N, C), got {tuple(matrix.shape)}")
    require(~(matrix < 0), "matrix: NMF needs non-negative input")  # queued on a GPU, not read back
    batch, rows, cols = matrix.shape
    scale = matrix.mean().clamp(min=eps).sqrt() / max(num_segments, 1) ** 0.5
    # Drawn on the host (the generator's), sent in copies the host does not wait for.
    left = torch.rand(batch, rows, num_segments, generator=generator, dtype=torch.float64)
    right = torch.rand(batch, num_segments, cols, generator=generator, dtype=torch.float64)
    left = left.to(matrix, non_blocking=True) * scale + eps
    right = right.to(matrix, non_blocking=True) * scale + eps
    for _ in range(iterations):
        right = right * (left.transpose(1, 2) @ matrix) / (left.transpose(1, 2) @ left @ right + eps)
        left = left * (matrix @ right.transpose(1, 2)) / (left @ (right @ right.transpose(1, 2)) + eps)
    return left, right


class CoSegmentation(nn.Module):
    """Co-segmentation of the views of each sample by NMF on VGG16 features (frozen).

    Args:
        layer: the VGG16 ReLU whose features are factorised.
        num_segments: K, the number of segments (JDACS: 4).
        iterations: NMF multiplicative-update iterations.
    """

    def __init__(self, layer: str = "relu4_3", num_segments: int = 4, iterations: int = 10):
        super().__init__()
        self.vgg = VGG16Features(layer)
        self.vgg.requires_grad_(False)
        self.vgg.eval()
        self.num_segments = num_segments
        self.iterations = iterations

    def train(self, mode: bool = True):  # the feature extractor never trains
        super().train(mode)
        self.vgg.eval()
        return self

    @torch.no_grad()
    def forward(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Soft segmentations (probabilities over the K segments) of all views, at feature resolution.

        Shape:
            - images: (B, V, 3, H, W) in [0, 1] -> (B, V, K, h, w), summing to 1 over K
        """
        if images.dim() != 5 or images.shape[2] != 3:
            raise ValueError(f"images: expected (B, V, 3, H, W), got {tuple(images.shape)}")
        batch, views = images.shape[:2]
        features = self.vgg(images.flatten(0, 1).float())
        channels, height, width = features.shape[1:]
        matrix = features.view(batch, views, channels, height * width).permute(0, 1, 3, 2).reshape(batch, -1, channels)
        left, _ = nmf(matrix, self.num_segments, self.iterations, generator)
        left = left / left.sum(-1, keepdim=True).clamp(min=1e-8)
        return left.view(batch, views, height, width, self.num_segments).permute(0, 1, 4, 2, 3).contiguous()


def cosegmentation_loss(
    ref_segmentation: torch.Tensor,
    warped_segmentation: torch.Tensor,
    valid: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    eps: float = 1e-6,
) -> torch.Tensor:
    """Cross-entropy of the warped source segmentations against the reference's arg-max segment.

    Args:
        ref_segmentation: segment probabilities of the reference (the label is its arg-max).
        warped_segmentation: source segment probabilities warped into the reference by the depth.
        valid: where each warp is valid.
        mask: optional reference pixels to use.

    Returns:
        The mean over valid (view, pixel) pairs of ``-log p_src[label]``.

    Shape:
        - ref_segmentation: (B, K, H, W); warped_segmentation: (B, V, K, H, W); valid: (B, V, 1, H, W)
    """
    check_image("ref_segmentation", ref_segmentation)
    if warped_segmentation.dim() != 5 or warped_segmentation.shape[:1] + warped_segmentation.shape[2:] != ref_segmentation.shape:
        raise ValueError(
            f"warped_segmentation: expected (B, V, *{tuple(ref_segmentation.shape[1:])}), got {tuple(warped_segmentation.shape)}"
        )
    label = ref_segmentation.argmax(1, keepdim=True).unsqueeze(1).expand(-1, warped_segmentation.shape[1], -1, -1, -1)
    probability = torch.gather(warped_segmentation, 2, label)[:, :, 0]
    weight = valid[:, :, 0]
    if mask is not None:
        weight = weight & mask.bool()
    weight = weight.to(probability.dtype)
    nll = -torch.log(probability.clamp(min=0) + eps)
    return (nll * weight).sum() / weight.sum().clamp(min=1)


def resize_segmentation(segmentation: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of (..., K, h, w) probabilities to ``size`` (still summing to 1 over K)."""
    shape = segmentation.shape
    flat = segmentation.reshape(-1, shape[-3], shape[-2], shape[-1])
    out = F.interpolate(flat, size=size, mode="bilinear", align_corners=False)
    return out.reshape(*shape[:-2], *size)


def make_cosegmentation(
    weights: str | Path | None, layer: str = "relu4_3", num_segments: int = 4, iterations: int = 10
) -> CoSegmentation | None:
    """The co-segmentation module with ImageNet VGG16 weights, or None (term OFF) without a file.

    The OFF case is logged at WARNING level, naming the option to set.
    """
    if weights is None:
        log.warning(
            "co-segmentation consistency is OFF: train.vgg16_weights is not set "
            "(give a local torchvision-format VGG16 ImageNet state dict to enable it)"
        )
        return None
    module = CoSegmentation(layer, num_segments, iterations)
    module.vgg.load_torchvision_weights(weights)
    return module
