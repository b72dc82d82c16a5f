"""Feature-wise photometric consistency (M3VSNet, Huang et al. 2021, "M3VSNet: Unsupervised
Multi-metric Multi-view Stereo Network", Sec. 3).

The pixel-wise terms compare colours, which change with lighting and fail on weak texture;
M3VSNet adds the same comparison on deep features: the feature maps of each source, warped into
the reference by the predicted depth, must match the reference's feature maps. Per (source,
pixel) the error is the L1 difference of the feature vectors (channel mean) over the reference
layer's mean absolute activation, averaged over the layers; per pixel the ``top_k`` best sources count
(:func:`pipeline.losses.view_synthesis.best_k_mean`, as in the pixel-wise term), so a source that
does not see the pixel is left out there.

Which extractor (:func:`make_feature_extractor`), both fixed for the whole run:

- VGG16 with ImageNet weights (:class:`FeatureExtractor`) when ``train.vgg16_weights`` names a
  local file (the torchvision-format state dict co-segmentation reads; nothing is ever
  downloaded), at relu2_2, relu3_3 and relu4_3 (1/2, 1/4, 1/8 of the image): the paper's
  extractor, so the recipe is its system, and features trained for recognition, not by this run.
- otherwise the training network's own feature maps as they are at the start of training
  (:class:`FrozenNetworkFeatures`: a deep copy taken once before the first step; PatchmatchNet's
  pyramid at 1/2, 1/4, 1/8, CVP-MVSNet's two finest levels at 1 and 1/2): the
  ``--init`` / fine-tuning checkpoint's features, or from scratch the seeded random
  initialisation, a fixed random projection of local image patches (still a texture filter,
  weaker than ImageNet's). Always available, so the term is never off for want of a file.

Why a frozen copy and not the live network: the network's features are trained by every other
term, so this term's measure would drift during training; the copy fixes it. Either extractor
runs under ``torch.no_grad`` with frozen weights in evaluation mode: the gradient reaches the
depth only through the warp's sampling positions. The losses stay apart from the backbones: a
backbone hands over a module image -> {stride: maps} (``multiscale_features()`` of
:class:`pipeline.model.PatchmatchNet` and :class:`pipeline.model.CVPMVSNet`); this module knows
that interface, not the network.

Dividing by the layer's mean activation (the paper compares raw activations) makes the layers'
errors comparable whatever their activation scale.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.losses.vgg16 import RELU_INDEX, VGG16Features
from pipeline.losses.view_synthesis import best_k_mean, check_image, scale_intrinsics, warp_sources

log = logging.getLogger(__name__)

# The three VGG16 layers compared, with the number of 2x2 poolings before each (their stride 2**p).
FEATURE_LAYERS = ("relu2_2", "relu3_3", "relu4_3")
_POOLINGS = {"relu1_2": 0, "relu2_2": 1, "relu3_3": 2, "relu4_3": 3, "relu5_3": 4}


class _ViewFeatures(nn.Module):
    """Frozen features of every view of a batch: checks and flattens the views, :meth:`_maps` computes
    layer -> (B * V, C, h, w) of the flat batch on the weights' device and dtype."""

    def _maps(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Features of every view; no gradient, whatever the weights' ``requires_grad``.

        Shape:
            - images: (B, V, 3, H, W) in [0, 1] -> layer -> (B, V, C, H // s, W // s), s its stride
        """
        if images.dim() != 5 or images.shape[2] != 3:
            raise ValueError(f"images: expected (B, V, 3, H, W), got {tuple(images.shape)}")
        batch, views = images.shape[:2]
        weight = next(self.parameters())
        out = self._maps(images.flatten(0, 1).to(device=weight.device, dtype=weight.dtype))
        return {layer: maps.view(batch, views, *maps.shape[1:]) for layer, maps in out.items()}


class FeatureExtractor(_ViewFeatures):
    """Frozen VGG16 features of every view at several layers.

    Args:
        layers: VGG16 ReLUs to compare (default :data:`FEATURE_LAYERS`).
    """

    def __init__(self, layers: tuple[str, ...] = FEATURE_LAYERS):
        super().__init__()
        if not layers or any(layer not in RELU_INDEX for layer in layers):
            raise ValueError(f"layers: expected a non-empty subset of {sorted(RELU_INDEX)}, got {layers!r}")
        self.layers = tuple(layers)
        self.vgg = VGG16Features(max(self.layers, key=RELU_INDEX.__getitem__))
        self.vgg.requires_grad_(False)
        self.vgg.eval()

    def train(self, mode: bool = True):  # the extractor never trains
        super().train(mode)
        self.vgg.eval()
        return self

    def strides(self) -> dict[str, int]:
        """Layer -> its stride in image pixels."""
        return {layer: 2 ** _POOLINGS[layer] for layer in self.layers}

    def _maps(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.vgg.forward_layers(flat, self.layers)
        return {layer: out[layer] for layer in self.layers}


class FrozenNetworkFeatures(_ViewFeatures):
    """A frozen copy of a network's feature maps at several strides; used like :class:`FeatureExtractor`.

    Args:
        network_features: a module image -> {stride: maps} with a ``strides`` attribute (a
            backbone's ``multiscale_features()``). It is deep-copied here, so training the network
            afterwards leaves this copy as it was.

    Layers are named ``"stride2"``, ``"stride4"``, ...
    """

    def __init__(self, network_features: nn.Module):
        super().__init__()
        strides = tuple(getattr(network_features, "strides", ()))
        if not strides or any(not isinstance(s, int) or s < 1 for s in strides):
            raise ValueError(
                f"network_features: expected a module with a non-empty 'strides' tuple of positive ints "
                f"(a backbone's multiscale_features()), got {type(network_features).__name__} with strides {strides!r}"
            )
        self.network_strides = strides
        self.layers = tuple(f"stride{s}" for s in strides)
        self.features = copy.deepcopy(network_features)
        self.features.requires_grad_(False)
        self.features.eval()

    def train(self, mode: bool = True):  # the extractor never trains (BatchNorm keeps its statistics)
        super().train(mode)
        self.features.eval()
        return self

    def strides(self) -> dict[str, int]:
        """Layer -> its stride in image pixels."""
        return dict(zip(self.layers, self.network_strides))

    def _maps(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.features(flat)
        missing = [s for s in self.network_strides if s not in out]
        if missing:
            raise ValueError(f"network features: no maps at strides {missing} (got strides {sorted(out)})")
        return {layer: out[s] for layer, s in zip(self.layers, self.network_strides)}


def make_feature_extractor(
    weights: str | Path | None,
    layers: tuple[str, ...] = FEATURE_LAYERS,
    *,
    network_features: nn.Module | None = None,
) -> FeatureExtractor | FrozenNetworkFeatures | None:
    """The feature term's extractor: VGG16 with the ImageNet weights of ``weights`` when given, else
    a frozen copy of ``network_features`` (the network's feature maps as they are now, before the
    first step), else None (term OFF, logged at WARNING level).

    Raises:
        FileNotFoundError, ValueError: from :meth:`VGG16Features.load_torchvision_weights`.
    """
    if weights is not None:
        module = FeatureExtractor(layers)
        module.vgg.load_torchvision_weights(weights)
        return module
    if network_features is not None:
        log.info(
            "feature-wise consistency (M3VSNet): train.vgg16_weights is not set, so the features are a frozen "
            "copy of the network's own feature maps as they are at the start of training"
        )
        return FrozenNetworkFeatures(network_features)
    log.warning(
        "feature-wise consistency (M3VSNet) is OFF: train.vgg16_weights is not set and no network features were "
        "given (give a local torchvision-format VGG16 ImageNet state dict to enable it)"
    )
    return None


def feature_error_maps(ref_features: torch.Tensor, warped: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Channel-mean L1 difference of the features, over the reference's mean absolute activation.

    The scale (one number per sample, without gradient) makes layers of different activation
    magnitude comparable and the error independent of the layer's overall scale.

    Shape:
        - ref_features: (B, C, H, W); warped: (B, V, C, H, W) -> (B, V, H, W)
    """
    check_image("ref_features", ref_features)
    if warped.dim() != 5 or warped.shape[:1] + warped.shape[2:] != ref_features.shape:
        raise ValueError(
            f"warped: expected (B, V, *{tuple(ref_features.shape[1:])}), got {tuple(warped.shape)}"
        )
    scale = ref_features.detach().abs().mean(dim=(1, 2, 3)).clamp(min=eps).view(-1, 1, 1, 1)
    return (ref_features.unsqueeze(1) - warped).abs().mean(2) / scale


def feature_loss(
    features: Mapping[str, torch.Tensor],
    strides: Mapping[str, int],
    depth: torch.Tensor,
    K: torch.Tensor,
    src_from_ref: torch.Tensor,
    *,
    depth_stride: int = 1,
    top_k: int = 3,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Feature-wise consistency of the reference depth, averaged over the layers.

    Each layer is compared at the coarser of its own and the depth's resolution: a finer depth is
    averaged down to the layer (its gradient spread over the pooled pixels), a finer reference
    feature map is averaged down to the depth; sources are always warped from their own feature
    maps, which :func:`kernels.warp_image` samples at any resolution.

    Args:
        features: layer -> features of all views, view 0 the reference (:class:`FeatureExtractor`).
        strides: layer -> its stride in image pixels (:meth:`FeatureExtractor.strides`).
        depth: reference z-depth at 1 / ``depth_stride`` of the image resolution.
        K: intrinsics of the views at the image resolution.
        src_from_ref: reference camera -> each source camera.
        depth_stride: image pixels per depth pixel.
        top_k: sources averaged per pixel.
        mask: optional valid reference pixels at the depth's resolution.

    Shape:
        - features[layer]: (B, V, C, H / s, W / s); depth: (B, 1, H / depth_stride, W / depth_stride)
        - K: (B, V, 3, 3); src_from_ref: (B, V - 1, 4, 4); mask: like depth
    """
    check_image("depth", depth, 1)
    if not features:
        raise ValueError("features: expected at least one layer")
    total = depth.new_zeros(())
    for layer, maps in features.items():
        stride = strides[layer]
        if maps.dim() != 5 or maps.shape[0] != depth.shape[0]:
            raise ValueError(f"features[{layer!r}]: expected (B={depth.shape[0]}, V, C, h, w), got {tuple(maps.shape)}")
        maps = maps.to(depth.dtype)
        level_depth, level_mask, ref_features = depth, mask, maps[:, 0]
        level_stride = max(stride, depth_stride)
        if stride > depth_stride:  # average the depth (and the mask) down to the layer
            factor = stride // depth_stride
            level_depth = F.avg_pool2d(depth, factor)
            level_mask = None if mask is None else F.avg_pool2d(mask.to(depth.dtype), factor) > 0.999
        elif stride < depth_stride:  # average the reference features down to the depth
            ref_features = F.avg_pool2d(ref_features, depth_stride // stride)
        if tuple(level_depth.shape[2:]) != tuple(ref_features.shape[2:]):
            raise ValueError(
                f"features[{layer!r}]: reference map {tuple(ref_features.shape[2:])} does not match the depth "
                f"{tuple(level_depth.shape[2:])} at stride {level_stride} (image sides must be multiples of the strides)"
            )
        warped, valid = warp_sources(
            maps[:, 1:], level_depth, scale_intrinsics(K[:, 0], 1.0 / level_stride),
            scale_intrinsics(K[:, 1:], 1.0 / stride), src_from_ref,
        )
        errors = feature_error_maps(ref_features, warped)
        valid_views = valid[:, :, 0]
        if level_mask is not None:
            valid_views = valid_views & level_mask.bool()
        layer_loss, _, _ = best_k_mean(errors, valid_views, top_k)
        total = total + layer_loss
    return total / len(features)
