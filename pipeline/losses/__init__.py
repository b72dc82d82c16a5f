"""Self-supervised losses for multi-view stereo: one module per term, each a function on tensors.

- :mod:`~pipeline.losses.view_synthesis`: warping the sources into the reference, per-pixel best-k.
- :mod:`~pipeline.losses.photometric`: robust colour + gradient consistency (Unsup_MVS).
- :mod:`~pipeline.losses.ssim_loss`: (1 - SSIM) / 2 on the warped views.
- :mod:`~pipeline.losses.smoothness`: edge-aware first/second-order depth smoothness.
- :mod:`~pipeline.losses.augmentation`: data-augmentation consistency (JDACS).
- :mod:`~pipeline.losses.cosegmentation` (+ :mod:`~pipeline.losses.vgg16`): NMF co-segmentation (JDACS).
- :mod:`~pipeline.losses.cross_view`: one-way depth consistency of a reference with one source.
- :mod:`~pipeline.losses.multi_view`: symmetric depth consistency of every pair of views (MVS^2).
- :mod:`~pipeline.losses.depth_normal`: depth-normal consistency (M3VSNet).
- :mod:`~pipeline.losses.feature` (+ :mod:`~pipeline.losses.vgg16`): feature-wise consistency (M3VSNet),
  on ImageNet VGG16 features or a frozen copy of the network's own.
- :mod:`~pipeline.losses.pseudo_label`: self-training on fused, multi-view-consistent depth (KD-MVS).
- :mod:`~pipeline.losses.recipes`: named recipes; :mod:`~pipeline.losses.objective`: their weighted sum.
"""

from pipeline.losses.augmentation import augment_images, augmentation_loss, augmentation_weight
from pipeline.losses.cosegmentation import CoSegmentation, cosegmentation_loss, make_cosegmentation, nmf
from pipeline.losses.cross_view import cross_view_loss
from pipeline.losses.depth_normal import depth_normal_loss
from pipeline.losses.feature import (
    FEATURE_LAYERS,
    FeatureExtractor,
    FrozenNetworkFeatures,
    feature_loss,
    make_feature_extractor,
)
from pipeline.losses.multi_view import multi_view_consistency_loss, pair_consistency
from pipeline.losses.objective import SelfSupervisedLoss
from pipeline.losses.photometric import photometric_error_maps, photometric_loss
from pipeline.losses.pseudo_label import pseudo_label_loss
from pipeline.losses.recipes import RECIPES, TERMS, Recipe, get_recipe
from pipeline.losses.smoothness import smoothness_loss
from pipeline.losses.ssim_loss import ssim_error_maps, ssim_loss
from pipeline.losses.vgg16 import VGG16Features
from pipeline.losses.view_synthesis import best_k_mean, warp_sources

__all__ = [
    "augment_images", "augmentation_loss", "augmentation_weight",
    "CoSegmentation", "cosegmentation_loss", "make_cosegmentation", "nmf",
    "cross_view_loss", "depth_normal_loss", "FEATURE_LAYERS", "FeatureExtractor", "FrozenNetworkFeatures", "feature_loss",
    "make_feature_extractor", "multi_view_consistency_loss", "pair_consistency", "SelfSupervisedLoss",
    "photometric_error_maps", "photometric_loss", "pseudo_label_loss", "RECIPES", "TERMS", "Recipe", "get_recipe",
    "smoothness_loss", "ssim_error_maps", "ssim_loss", "VGG16Features", "best_k_mean", "warp_sources",
]
