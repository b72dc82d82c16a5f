"""The self-supervised objective: a recipe's weighted terms over every depth the network outputs.

Each output depth (B, 1, h, w) is scored at its own resolution: the views are averaged down by
the integer factor H / h and the intrinsics scaled by 1 / factor (exact in COLMAP's pixel
convention). The sources are warped once per output and shared by the photometric and SSIM
terms.

Two entry points:

- :meth:`SelfSupervisedLoss.forward`: one reference (view 0) and its sources. The ``cross_view``
  term there compares the reference with view 1 only, both ways, from ``cross_depth`` (the depth
  of a second forward with view 1 as the reference).
- :meth:`SelfSupervisedLoss.symmetric`: MVS^2's symmetric training: a depth for *every* view of
  the set, each the reference of its own forward. The per-reference terms are averaged over the
  views and ``cross_view`` is the consistency of every ordered pair
  (:func:`pipeline.losses.multi_view.multi_view_consistency_loss`).

Built from ``train.loss`` (``config``) and ``train.vgg16_weights``; the modules of the
co-segmentation and feature terms are made only when the recipe has them. Without the weights file
co-segmentation is None (its term off, a WARNING logged) and the feature term takes a frozen copy
of the network's own feature maps at the start of training (``model``, before its first step)::

    recipe = get_recipe(config.loss.recipe, dataclasses.asdict(config.loss.weights))
    objective = SelfSupervisedLoss(
        recipe, top_k=config.loss.top_k, gradient_weight=config.loss.gradient_weight,
        robust=config.loss.robust, huber_delta=config.loss.huber_delta,
        smoothness_order=config.loss.smoothness_order, smoothness_inverse=config.loss.smoothness_inverse,
        cross_view_max_error=config.loss.cross_view_max_error,
        cross_view_max_reprojection_error=config.loss.cross_view_max_reprojection_error,
        cosegmentation=make_cosegmentation(config.vgg16_weights, ...) if "cosegmentation" in recipe.weights else None,
        feature_extractor=make_feature_extractor(
            config.vgg16_weights, network_features=model.multiscale_features()
        ) if "feature" in recipe.weights else None,
    ).to(device)
"""

from __future__ import annotations

import logging
from typing import Mapping, Sequence

import torch
from torch import nn

from kernels.geometry import invert_rigid
from pipeline.losses.augmentation import augmentation_loss
from pipeline.losses.cosegmentation import CoSegmentation, cosegmentation_loss, resize_segmentation
from pipeline.losses.depth_normal import depth_normal_loss
from pipeline.losses.feature import FeatureExtractor, FrozenNetworkFeatures, feature_loss
from pipeline.losses.multi_view import multi_view_consistency_loss
from pipeline.losses.photometric import photometric_loss
from pipeline.losses.pseudo_label import pseudo_label_loss
from pipeline.losses.recipes import Recipe
from pipeline.losses.smoothness import smoothness_loss
from pipeline.losses.ssim_loss import ssim_loss
from pipeline.losses.view_synthesis import downsample, scale_intrinsics, warp_sources

log = logging.getLogger(__name__)

# Terms that need a module the caller may not have (their weights file): off without it.
_MODULE_TERMS = {"cosegmentation": "cosegmentation", "feature": "feature_extractor"}


def flatten_outputs(stage_depths: Mapping[int, Sequence[torch.Tensor]]) -> list[tuple[int, int, torch.Tensor]]:
    """``[(stage, iteration, depth)]`` from coarse (stage 3) to the refined depth (stage 0, last)."""
    return [(stage, i, depth) for stage in sorted(stage_depths, reverse=True) for i, depth in enumerate(stage_depths[stage])]


def _check_views(images: torch.Tensor, K: torch.Tensor, cam_from_world: torch.Tensor) -> tuple[int, int, int, int]:
    if images.dim() != 5 or images.shape[2] != 3 or images.shape[1] < 2:
        raise ValueError(f"images: expected (B, V>=2, 3, H, W), got {tuple(images.shape)}")
    batch, views, _, height, width = images.shape
    if K.shape != (batch, views, 3, 3) or cam_from_world.shape != (batch, views, 4, 4):
        raise ValueError(
            f"K / cam_from_world: expected ({batch}, {views}, 3, 3) / ({batch}, {views}, 4, 4), "
            f"got {tuple(K.shape)} / {tuple(cam_from_world.shape)}"
        )
    return batch, views, height, width


def _factor(stage: int, depth: torch.Tensor, height: int, width: int) -> int:
    factor = height // depth.shape[2]
    if factor * depth.shape[2] != height or factor * depth.shape[3] != width:
        raise ValueError(
            f"stage {stage} depth: size {tuple(depth.shape[2:])} is not (H, W) = ({height}, {width}) over an integer factor"
        )
    return factor


class SelfSupervisedLoss(nn.Module):
    """The weighted sum of a recipe's terms.

    Args:
        recipe: which terms, their weights and where they apply.
        top_k: views averaged per pixel by the photometric, SSIM and feature terms.
        gradient_weight: weight of the image-gradient error in the photometric term.
        robust: ``"l1"`` or ``"huber"`` photometric penalty; ``huber_delta`` its threshold.
        smoothness_order: 1 or 2; ``smoothness_inverse``: smooth the inverse depth.
        cross_view_max_error: relative depth error above which cross-view pairs count as occluded.
        cross_view_max_reprojection_error: forward-backward reprojection error (pixels at the
            image resolution) above which cross-view pairs count as occluded.
        cosegmentation: the co-segmentation module, or None (term off even if the recipe has it).
        feature_extractor: the frozen extractor of the feature term (ImageNet VGG16 or a frozen
            copy of the network's features, :func:`pipeline.losses.feature.make_feature_extractor`),
            or None (term off even if the recipe has it; logged at WARNING level).
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
        cross_view_max_reprojection_error: float = 2.0,
        cosegmentation: CoSegmentation | None = None,
        feature_extractor: FeatureExtractor | FrozenNetworkFeatures | None = None,
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
        self.cross_view_max_reprojection_error = cross_view_max_reprojection_error
        self.cosegmentation = cosegmentation
        self.feature_extractor = feature_extractor
        if "feature" in recipe.weights and feature_extractor is None:
            log.warning(
                "recipe %s: the feature-wise term is OFF (no feature extractor given: VGG16 from train.vgg16_weights "
                "or the network's frozen features, pipeline.losses.feature.make_feature_extractor)", recipe.name
            )

    @property
    def active_terms(self) -> list[str]:
        """Terms with a non-zero weight that can run (co-segmentation and feature need their module)."""
        return [t for t in self.recipe.weights if not (t in _MODULE_TERMS and getattr(self, _MODULE_TERMS[t]) is None)]

    def _weights(self, weight_overrides: Mapping[str, float] | None) -> tuple[dict[str, float], list[str]]:
        weights = dict(self.recipe.weights)
        weights.update(weight_overrides or {})
        return weights, [t for t in self.active_terms if weights.get(t, 0) != 0]

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
            cross_depth: refined depth predicted with view 1 as the reference (cross-view term:
                the reference and view 1 checked against each other, both ways).
            labels: pseudo-label depth of the reference at (H, W), 0 = no label (pseudo-label term).
            generator: randomness of the co-segmentation's NMF initialisation.
            weight_overrides: per-call weights (e.g. the scheduled augmentation weight).

        Shape:
            - images: (B, V, 3, H, W); K: (B, V, 3, 3); cam_from_world: (B, V, 4, 4); mask, labels: (B, 1, H, W)
            - cross_depth: (B, 1, H, W)
        """
        _check_views(images, K, cam_from_world)
        weights, active = self._weights(weight_overrides)
        if "augmentation" in active and augmented_stage_depths is None:
            raise ValueError("the augmentation term needs augmented_stage_depths")
        if "cross_view" in active and cross_depth is None:
            raise ValueError("the cross-view term needs cross_depth (or call SelfSupervisedLoss.symmetric)")
        if "pseudo_label" in active and labels is None:
            raise ValueError("the pseudo-label term needs labels")
        segmentation = features = None
        if "cosegmentation" in active:
            segmentation = self.cosegmentation(images, generator or torch.Generator().manual_seed(0))
        if "feature" in active:
            features = self.feature_extractor(images)
        per_view = [t for t in active if t != "cross_view"]
        terms = self._reference_terms(
            per_view, images, K, cam_from_world, stage_depths, mask=mask, segmentation=segmentation,
            features=features, augmented_stage_depths=augmented_stage_depths,
            augmentation_keep=augmentation_keep, labels=labels,
        )
        if "cross_view" in active:
            height, width = images.shape[-2:]
            outputs = flatten_outputs(stage_depths)
            terms["cross_view"] = images.new_zeros(())
            for index, (stage, _, depth) in enumerate(outputs):
                if index != len(outputs) - 1 and "cross_view" in self.recipe.final_only:
                    continue
                factor = _factor(stage, depth, height, width)
                src_factor = height // cross_depth.shape[2]
                level_K = torch.stack([scale_intrinsics(K[:, 0], 1.0 / factor), scale_intrinsics(K[:, 1], 1.0 / src_factor)], 1)
                level_mask = None if mask is None else downsample(mask.float(), factor) > 0.999
                value, _ = multi_view_consistency_loss(
                    [depth.float(), cross_depth.float()], level_K, cam_from_world[:, :2],
                    max_relative_error=self.cross_view_max_error,
                    max_reprojection_error=self.cross_view_max_reprojection_error / factor,
                    masks=[level_mask, None],
                )
                terms["cross_view"] = terms["cross_view"] + value
        terms = {t: terms[t] for t in active}
        total = sum((weights[t] * value for t, value in terms.items()), images.new_zeros(()))
        return total, terms

    def symmetric(
        self,
        images: torch.Tensor,
        K: torch.Tensor,
        cam_from_world: torch.Tensor,
        view_stage_depths: Sequence[Mapping[int, Sequence[torch.Tensor]]],
        *,
        masks: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        weight_overrides: Mapping[str, float] | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """MVS^2's symmetric objective: every view of the set is a reference in turn.

        The call the training loop makes (one forward per view; the feature maps of the V images
        can be computed once and shared by the V forwards)::

            views = images.shape[1]
            view_stage_depths = []
            for v in range(views):
                order = [v] + [u for u in range(views) if u != v]
                output = net([images[:, u] for u in order], [K[:, u] for u in order],
                             [cam_from_world[:, u] for u in order], depth_min[:, v], depth_max[:, v])
                view_stage_depths.append(output.stage_depths)
            total, terms = objective.symmetric(images, K, cam_from_world, view_stage_depths,
                                               masks=masks, generator=generator)

        For view v, the per-reference terms (photometric, SSIM, smoothness, depth-normal,
        co-segmentation, feature) see the views in the order ``[v, the others in their order]``
        and are averaged over the V references; ``cross_view`` is
        :func:`~pipeline.losses.multi_view.multi_view_consistency_loss` over the V depths of each
        output it applies to (the refined ones for ``mvs2``). The augmentation and pseudo-label
        terms are defined for one reference: use :meth:`forward` for them.

        Args:
            images: the V views in [0, 1].
            K: intrinsics of the views at (H, W).
            cam_from_world: world -> camera of each view.
            view_stage_depths: for each view v, the ``stage_depths`` of the forward with v as the
                reference (all with the same stages and iterations).
            masks: optional valid pixels of each view at (H, W).
            generator: randomness of the co-segmentation's NMF initialisation.
            weight_overrides: per-call weights.

        Shape:
            - images: (B, V, 3, H, W); K: (B, V, 3, 3); cam_from_world: (B, V, 4, 4); masks: (B, V, 1, H, W)
            - view_stage_depths: V mappings stage -> [(B, 1, H / 2**stage, W / 2**stage)]
        """
        batch, views, height, width = _check_views(images, K, cam_from_world)
        if len(view_stage_depths) != views:
            raise ValueError(f"view_stage_depths: expected one stage_depths per view ({views}), got {len(view_stage_depths)}")
        if masks is not None and tuple(masks.shape) != (batch, views, 1, height, width):
            raise ValueError(f"masks: expected ({batch}, {views}, 1, {height}, {width}), got {tuple(masks.shape)}")
        weights, active = self._weights(weight_overrides)
        one_reference = [t for t in active if t in ("augmentation", "pseudo_label")]
        if one_reference:
            raise ValueError(f"symmetric: the {one_reference} term(s) are defined for one reference; use forward()")
        outputs = [flatten_outputs(stage_depths) for stage_depths in view_stage_depths]
        layout = [(stage, depth.shape) for stage, _, depth in outputs[0]]
        for view, flat in enumerate(outputs):
            if [(stage, depth.shape) for stage, _, depth in flat] != layout:
                raise ValueError(f"view_stage_depths[{view}]: stages or sizes differ from view 0's")
        segmentation = features = None
        if "cosegmentation" in active:
            segmentation = self.cosegmentation(images, generator or torch.Generator().manual_seed(0))
        if "feature" in active:
            features = self.feature_extractor(images)
        per_view = [t for t in active if t != "cross_view"]
        terms = {t: images.new_zeros(()) for t in active}
        for view in range(views):
            order = [view] + [u for u in range(views) if u != view]
            view_terms = self._reference_terms(
                per_view, images[:, order], K[:, order], cam_from_world[:, order], view_stage_depths[view],
                mask=None if masks is None else masks[:, view],
                segmentation=None if segmentation is None else segmentation[:, order],
                features=None if features is None else {layer: maps[:, order] for layer, maps in features.items()},
            )
            for term, value in view_terms.items():
                terms[term] = terms[term] + value / views
        if "cross_view" in active:
            for index, (stage, _, _) in enumerate(outputs[0]):
                if index != len(outputs[0]) - 1 and "cross_view" in self.recipe.final_only:
                    continue
                depths = [flat[index][2].float() for flat in outputs]
                factor = _factor(stage, depths[0], height, width)
                level_masks = None if masks is None else [downsample(masks[:, v].float(), factor) > 0.999 for v in range(views)]
                value, _ = multi_view_consistency_loss(
                    depths, scale_intrinsics(K, 1.0 / factor), cam_from_world,
                    max_relative_error=self.cross_view_max_error,
                    max_reprojection_error=self.cross_view_max_reprojection_error / factor,
                    masks=level_masks,
                )
                terms["cross_view"] = terms["cross_view"] + value
        total = sum((weights[t] * value for t, value in terms.items()), images.new_zeros(()))
        return total, terms

    def _reference_terms(
        self,
        active: Sequence[str],
        images: torch.Tensor,
        K: torch.Tensor,
        cam_from_world: torch.Tensor,
        stage_depths: Mapping[int, Sequence[torch.Tensor]],
        *,
        mask: torch.Tensor | None = None,
        segmentation: torch.Tensor | None = None,
        features: Mapping[str, torch.Tensor] | None = None,
        augmented_stage_depths: Mapping[int, Sequence[torch.Tensor]] | None = None,
        augmentation_keep: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """The per-reference terms (all but cross_view) of view 0 over every output they apply to."""
        height, width = images.shape[-2:]
        src_from_ref = cam_from_world[:, 1:] @ invert_rigid(cam_from_world[:, :1])
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
            factor = _factor(stage, depth, height, width)
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
            if "feature" in here:
                terms["feature"] = terms["feature"] + feature_loss(
                    features, self.feature_extractor.strides(), depth, K, src_from_ref,
                    depth_stride=factor, top_k=self.top_k, mask=level_mask,
                )
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
            if "pseudo_label" in here:
                terms["pseudo_label"] = terms["pseudo_label"] + pseudo_label_loss(depth, labels)
        return terms
