"""Data-augmentation consistency (JDACS, Xu et al. 2021, Sec. 3.3).

The network sees a colour-jittered, gamma-changed copy of the views whose reference has random
rectangles blanked out, and its depth there must match the (detached) depth it predicts on the
clean views: a smooth-L1 difference, counted only outside the blanked rectangles. All randomness
comes from an explicit ``torch.Generator`` so training stays reproducible.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pipeline.config import AugmentationConfig
from pipeline.losses.view_synthesis import check_image


def _uniform(generator: torch.Generator, shape, low: float, high: float) -> torch.Tensor:
    return torch.rand(shape, generator=generator, dtype=torch.float64) * (high - low) + low


def augment_images(
    images: torch.Tensor, generator: torch.Generator, params: AugmentationConfig = AugmentationConfig()
) -> tuple[torch.Tensor, torch.Tensor]:
    """A photometrically changed copy of the views with random rectangles blanked in the reference.

    Every view of a sample gets the same colour change (one lighting change of the scene); view 0
    (the reference) also gets ``params.occlusions`` rectangles filled with random grey values.

    Args:
        images: views of each sample in [0, 1], view 0 the reference.
        generator: a CPU generator: the source of all randomness here.
        params: the augmentation ranges (the ``train.loss.augmentation`` section; its weight schedule
            is :func:`augmentation_weight`'s).

    Returns:
        ``(augmented, keep)``: images in [0, 1] and the reference pixels that were not occluded.

    Shape:
        - images: (B, V, 3, H, W) -> augmented (B, V, 3, H, W); keep: (B, 1, H, W) bool
    """
    if images.dim() != 5 or images.shape[2] != 3:
        raise ValueError(f"images: expected (B, V, 3, H, W), got {tuple(images.shape)}")
    batch, _, _, height, width = images.shape
    brightness = _uniform(generator, (batch,), -params.brightness, params.brightness)
    contrast = _uniform(generator, (batch,), 1 - params.contrast, 1 + params.contrast)
    saturation = _uniform(generator, (batch,), 1 - params.saturation, 1 + params.saturation)
    log_gamma = _uniform(generator, (batch,), -1.0, 1.0) * torch.log(torch.tensor(max(params.gamma, 1.0), dtype=torch.float64))
    # The draws go to the device in one copy the host does not wait for.
    drawn = torch.stack((brightness, contrast, saturation, torch.exp(log_gamma))).to(images.dtype)
    brightness, contrast, saturation, gamma = drawn.to(images.device, non_blocking=True)

    view = lambda t: t.view(batch, 1, 1, 1, 1)  # noqa: E731
    out = images.clamp(0, 1) ** view(gamma)
    grey = out.mean(2, keepdim=True)
    out = grey + (out - grey) * view(saturation)
    mean = out.mean(dim=(2, 3, 4), keepdim=True)
    out = mean + (out - mean) * view(contrast) + view(brightness)
    out = out.clamp(0, 1)

    keep = torch.ones(batch, 1, height, width, dtype=torch.bool, device=images.device)
    low, high = params.occlusion_size
    for sample in range(batch):
        for _ in range(params.occlusions):
            size_h = int(round(float(_uniform(generator, (), low, high)) * height))
            size_w = int(round(float(_uniform(generator, (), low, high)) * width))
            size_h, size_w = max(1, min(size_h, height)), max(1, min(size_w, width))
            top = int(torch.randint(0, height - size_h + 1, (), generator=generator))
            left = int(torch.randint(0, width - size_w + 1, (), generator=generator))
            fill = float(torch.rand((), generator=generator))
            out[sample, 0, :, top : top + size_h, left : left + size_w] = fill
            keep[sample, 0, top : top + size_h, left : left + size_w] = False
    return out, keep


def augmentation_loss(
    augmented_depth: torch.Tensor,
    clean_depth: torch.Tensor,
    keep: torch.Tensor | None = None,
    *,
    beta: float = 0.05,
    eps: float = 1e-7,
) -> torch.Tensor:
    """Smooth-L1 between the depth predicted on augmented views and the detached clean depth.

    Both depths are divided by the per-sample mean of the clean depth, so the term (and its
    ``beta``) does not depend on the scene's unit.

    Args:
        augmented_depth: depth from the augmented views (gradients flow here).
        clean_depth: depth from the clean views (detached here: the pseudo label).
        keep: reference pixels outside the occlusions; the depth's size may differ from keep's
            (a stage's resolution): keep is then resized by nearest neighbour.
        beta: the smooth-L1 threshold in mean-normalised depth.

    Shape:
        - augmented_depth, clean_depth: (B, 1, H, W); keep: (B, 1, H', W') bool
    """
    check_image("augmented_depth", augmented_depth, 1)
    if clean_depth.shape != augmented_depth.shape:
        raise ValueError(f"clean_depth: expected {tuple(augmented_depth.shape)}, got {tuple(clean_depth.shape)}")
    target = clean_depth.detach()
    scale = target.mean(dim=(2, 3), keepdim=True).clamp(min=eps)
    error = F.smooth_l1_loss(augmented_depth / scale, target / scale, reduction="none", beta=beta)
    if keep is None:
        return error.mean()
    if keep.shape[2:] != error.shape[2:]:
        keep = F.interpolate(keep.float(), size=error.shape[2:], mode="nearest") > 0.5
    weight = keep.to(error.dtype)
    return (error * weight).sum() / weight.sum().clamp(min=1)


def augmentation_weight(step: int, weight: float, growth: float = 1.0, growth_every: int = 0, max_weight: float | None = None) -> float:
    """The JDACS schedule: ``weight * growth ** (step // growth_every)``, capped at ``max_weight``.

    ``growth_every = 0`` (or ``growth = 1``) keeps the weight constant.
    """
    if growth_every <= 0 or growth == 1.0:
        value = weight
    else:
        value = weight * growth ** (step // growth_every)
    return min(value, max_weight) if max_weight is not None else value
