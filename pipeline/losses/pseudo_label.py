"""Pseudo-label term: self-training on the network's own multi-view-consistent depth.

The labels are depth maps the network predicted earlier, kept only where fusion found them
photometrically confident and geometrically consistent with several sources (``selfmvs
pseudo-labels``; the idea of KD-MVS, Ding et al. 2022). No ground truth is involved. The term is
a smooth-L1 of the relative depth error in percent, so its scale does not depend on the scene's
unit, averaged over the labelled pixels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pipeline.losses.view_synthesis import check_image


def pseudo_label_loss(depth: torch.Tensor, label: torch.Tensor, *, beta: float = 1.0) -> torch.Tensor:
    """Smooth-L1 of ``100 * |depth - label| / label`` over the labelled pixels.

    Args:
        depth: the predicted depth (gradients flow here).
        label: label depth, 0 (or not finite) where there is no label; at the depth's size or any
            other (a stage's resolution): it is then resized by nearest neighbour.
        beta: the smooth-L1 threshold, in percent of the label depth.

    Returns:
        The mean over labelled pixels; a zero that keeps the graph when no pixel is labelled.

    Shape:
        - depth: (B, 1, h, w); label: (B, 1, H, W)
    """
    check_image("depth", depth, 1)
    check_image("label", label, 1)
    if label.shape[0] != depth.shape[0]:
        raise ValueError(f"label: batch {label.shape[0]} != depth's {depth.shape[0]}")
    label = label.to(depth.dtype)
    if label.shape[2:] != depth.shape[2:]:
        label = F.interpolate(label, size=depth.shape[2:], mode="nearest")
    keep = torch.isfinite(label) & (label > 0)
    # Every pixel computed, the unlabelled ones weighted out: no mask indexing and no test of
    # whether any pixel is labelled, both of which would read the mask back from a GPU.
    target = torch.where(keep, label, torch.ones_like(label))
    relative = 100 * (depth - target).abs() / target
    per_pixel = F.smooth_l1_loss(relative, torch.zeros_like(relative), beta=beta, reduction="none")
    count = keep.sum(dtype=per_pixel.dtype)
    return torch.where(keep, per_pixel, torch.zeros_like(per_pixel)).sum() / count.clamp_min(1)
