"""The self-supervised objective: a recipe's weighted terms over every depth the network outputs.

Each output depth (B, 1, h, w) is scored at its own resolution: the views are averaged down by
the integer factor H / h and the intrinsics scaled by 1 / factor (exact in COLMAP's pixel
convention). The sources are warped once per output and shared by the photometric and SSIM
terms.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import nn

from pipeline.losses.augmentation import augmentation_loss
from pipeline.losses.cosegmentation import CoSegmentation, cosegmentation_loss, resize_segmentation
from pipeline.losses.cross_view import cross_view_loss
from pipeline.losses.depth_normal import depth_normal_loss
from pipeline.losses.photometric import photometric_loss
from pipeline.losses.pseudo_label import pseudo_label_loss
from pipeline.losses.recipes import Recipe
from pipeline.losses.smoothness import smoothness_loss
from pipeline.losses.ssim_loss import ssim_loss
from pipeline.losses.view_synthesis import downsample, scale_intrinsics, warp_sources


def flatten_outputs(stage_depths: Mapping[int, Sequence[torch.Tensor]]) -> list[tuple[int, int, torch.Tensor]]:
    """``[(stage, iteration, depth)]`` from coarse (stage 3) to the refined depth (stage 0, last)."""
    return [(stage, i, depth) for stage in sorted(stage_depths, reverse=True) for i, depth in enumerate(stage_depths[stage])]


class SelfSupervisedLoss(nn.Module):
    """The weighted sum of a recipe's terms.

    Args:
        recipe: which terms, their weights and where they apply.
        top_k: views averaged per pixel by the photometric and SSIM terms.
        gradient_weight: weight of the image-gradient error in the photometric term.
        robust: ``"l1"`` or ``"huber"`` photometric penalty; ``huber_delta`` its threshold.
        smoothness_order: 1 or 2; ``smoothness_inverse``: smooth the inverse depth.
        cross_view_max_error: relative error above which cross-view pairs count as occluded.
        cosegmentation: the co-segmentation module, or None (term off even if the recipe has it).
    """

    def __init__(
        self,
        recipe: Recipe,
        *,
        top_k: int = 3,
        gradient_weight: float = 1.0,
        robust: str = "l1",
        huber_delta: float = 0.05,
        smoothness_order: int = 2,
        smoothness_inverse: bool = False,
        cross_view_max_error: float = 0.05,
        cosegmentation: CoSegmentation | None = None,
    ):
        super().__init__()
        self.recipe = recipe
        self.top_k = top_k
        self.gradient_weight = gradient_weight
        self.robust = robust
        self.huber_delta = huber_delta
        self.smoothness_order = smoothness_order
        self.smoothness_inverse = smoothness_inverse
        self.cross_view_max_error = cross_view_max_error
        self.cosegmentation = cosegmentation

    @property
    def active_terms(self) -> list[str]:
        """Terms with a non-zero weight that can run (co-segmentation needs its module)."""
        return [t for t in self.recipe.weights if not (t == "cosegmentation" and self.cosegmentation is None)]

    def forward(
        self,
        images: torch.Tensor,
        K: torch.Tensor,
        cam_from_world: torch.Tensor,
        stage_depths: Mapping[int, Sequence[torch.Tensor]],
        *,
        mask: torch.Tensor | None = None,
        augmented_stage_depths: Mapping[int, Sequence[torch.Tensor]] | None = None,
        augmentation_keep: torch.Tensor | None = None,
        cross_depth: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        weight_overrides: Mapping[str, float] | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Total loss and each term (unweighted, summed over the outputs it applies to).

        Args:
            images: the views in [0, 1], view 0 the reference.
            K: intrinsics of the views at (H, W).
            cam_from_world: world -> camera of each view.
            stage_depths: the network's depths (``PatchmatchOutput.stage_depths``).
            mask: optional valid reference pixels at (H, W).
            augmented_stage_depths: depths predicted on the augmented views (augmentation term).
            augmentation_keep: reference pixels not occluded by the augmentation.
            cross_depth: refined depth predicted with view 1 as the reference (cross-view term).
            labels: pseudo-label depth of the reference at (H, W), 0 = no label (pseudo-label term).
            generator: randomness of the co-segmentation's NMF initialisation.
            weight_overrides: per-call weights (e.g. the scheduled augmentation weight).

        Shape:
            - images: (B, V, 3, H, W); K: (B, V, 3, 3); cam_from_world: (B, V, 4, 4); mask, labels: (B, 1, H, W)
        """
        if images.dim() != 5 or images.shape[2] != 3 or images.shape[1] < 2:
            raise ValueError(f"images: expected (B, V>=2, 3, H, W), got {tuple(images.shape)}")
        batch, views, _, height, width = images.shape
        if K.shape != (batch, views, 3, 3) or cam_from_world.shape != (batch, views, 4, 4):
            raise ValueError(
                f"K / cam_from_world: expected ({batch}, {views}, 3, 3) / ({batch}, {views}, 4, 4), "
                f"got {tuple(K.shape)} / {tuple(cam_from_world.shape)}"
            )
        weights = dict(self.recipe.weights)
        weights.update(weight_overrides or {})
        active = [t for t in self.active_terms if weights.get(t, 0) != 0]
        if "augmentation" in active and augmented_stage_depths is None:
            raise ValueError("the augmentation term needs augmented_stage_depths")
        if "cross_view" in active and cross_depth is None:
            raise ValueError("the cross-view term needs cross_depth")
        if "pseudo_label" in active and labels is None:
            raise ValueError("the pseudo-label term needs labels")

        src_from_ref = cam_from_world[:, 1:] @ torch.linalg.inv(cam_from_world[:, :1])
        segmentation = None
        if "cosegmentation" in active:
            segmentation = self.cosegmentation(images, generator or torch.Generator().manual_seed(0))

        terms = {t: images.new_zeros(()) for t in active}
        outputs = flatten_outputs(stage_depths)
        augmented = flatten_outputs(augmented_stage_depths) if augmented_stage_depths is not None else None
        final_index = len(outputs) - 1
        pyramid: dict[int, tuple] = {}
        for index, (stage, _, depth) in enumerate(outputs):
            is_final = index == final_index
            here = [t for t in active if is_final or t not in self.recipe.final_only]
            if not here:
                continue
            factor = height // depth.shape[2]
            if factor * depth.shape[2] != height or factor * depth.shape[3] != width:
                raise ValueError(
                    f"stage {stage} depth: size {tuple(depth.shape[2:])} is not (H, W) = ({height}, {width}) over an integer factor"
                )
            if factor not in pyramid:
                level_images = downsample(images, factor)
                level_mask = None if mask is None else downsample(mask.float(), factor) > 0.999
                pyramid[factor] = (level_images, scale_intrinsics(K, 1.0 / factor), level_mask)
            level_images, level_K, level_mask = pyramid[factor]
            depth = depth.float()
            ref_image, ref_K = level_images[:, 0], level_K[:, 0]
            if "photometric" in here or "ssim" in here:
                warped, valid = warp_sources(level_images[:, 1:], depth, ref_K, level_K[:, 1:], src_from_ref)
                if "photometric" in here:
                    terms["photometric"] = terms["photometric"] + photometric_loss(
                        ref_image, warped, valid, top_k=self.top_k, gradient_weight=self.gradient_weight,
                        robust=self.robust, huber_delta=self.huber_delta, mask=level_mask,
                    )
                if "ssim" in here:
                    terms["ssim"] = terms["ssim"] + ssim_loss(ref_image, warped, valid, top_k=self.top_k, mask=level_mask)
            if "smoothness" in here:
                terms["smoothness"] = terms["smoothness"] + smoothness_loss(
                    depth, ref_image, order=self.smoothness_order, inverse=self.smoothness_inverse, mask=level_mask
                )
            if "depth_normal" in here:
                terms["depth_normal"] = terms["depth_normal"] + depth_normal_loss(depth, ref_K, ref_image)
            if "augmentation" in here:
                terms["augmentation"] = terms["augmentation"] + augmentation_loss(
                    augmented[index][2].float(), depth, augmentation_keep
                )
            if "cosegmentation" in here:
                level_segmentation = resize_segmentation(segmentation, tuple(depth.shape[2:]))
                warped_seg, valid_seg = warp_sources(level_segmentation[:, 1:], depth, ref_K, level_K[:, 1:], src_from_ref)
                terms["cosegmentation"] = terms["cosegmentation"] + cosegmentation_loss(
                    level_segmentation[:, 0], warped_seg, valid_seg, mask=level_mask
                )
            if "cross_view" in here:
                src_factor = height // cross_depth.shape[2]
                terms["cross_view"] = terms["cross_view"] + cross_view_loss(
                    depth, cross_depth.float(), ref_K, scale_intrinsics(K[:, 1], 1.0 / src_factor), src_from_ref[:, 0],
                    max_relative_error=self.cross_view_max_error, mask=level_mask,
                )
            if "pseudo_label" in here:
                terms["pseudo_label"] = terms["pseudo_label"] + pseudo_label_loss(depth, labels)
        total = sum((weights[t] * value for t, value in terms.items()), images.new_zeros(()))
        return total, terms
