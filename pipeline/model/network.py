"""PatchmatchNet (Wang et al., "PatchmatchNet: Learned Multi-View Patchmatch Stereo", CVPR 2021).

Coarse to fine: features at 1/8, 1/4, 1/2 (stages 3, 2, 1), learned PatchMatch iterations at each
stage, then an image-guided refinement to full resolution. Any image size (padded internally to a
multiple of 8 and cropped back), any number of source views, each source at its own resolution.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from kernels.checks import require

from .config import ModelConfig
from .feature import FeaturePyramid
from .patchmatch import PatchMatch
from .refinement import Refinement, upsample
from .spn import SPNRefinement

STAGES = (3, 2, 1)  # coarse to fine; stage s is at 1 / 2**s of the input resolution


@dataclasses.dataclass
class PatchmatchOutput:
    """What :class:`PatchmatchNet` returns.

    Attributes:
        depth: (B, 1, H, W) refined depth at the reference image's resolution, in
            [depth_min, depth_max] (with ``ModelConfig.refinement`` off: stage 1's upsampled; with
            ``"spn"``: the refinement's, propagated by :class:`pipeline.model.spn.SPNRefinement`).
        confidence: (B, 1, H, W) in [0, 1]: probability mass of the 4 hypotheses nearest the
            regressed one at the last iteration of stage 1, upsampled.
        stage_depths: stage -> the depth (B, 1, h, w) of every PatchMatch iteration of that stage,
            h = ceil(H / 2**stage), w = ceil(W / 2**stage) (intrinsics at that resolution:
            :func:`scale_intrinsics` with ``1 / 2**stage``); stage 0 -> [depth].
        view_weights: (B, V, h1, w1) pixel-wise visibility weights of the V source views at stage 1.
    """

    depth: torch.Tensor
    confidence: torch.Tensor
    stage_depths: dict[int, list[torch.Tensor]]
    view_weights: torch.Tensor


def scale_intrinsics(K: torch.Tensor, scale: float) -> torch.Tensor:
    """Intrinsics of an image resized by ``scale`` (exact with pixel centres at j + 0.5).

    Shape: (..., 3, 3) -> (..., 3, 3).
    """
    # Rows 0 and 1 times the scale, without a tensor of factors (a host-to-device copy per call).
    return torch.cat((K[..., :2, :] * scale, K[..., 2:, :]), dim=-2)


def rigid_inverse(transform: torch.Tensor) -> torch.Tensor:
    """Inverse of rigid transforms [R | t]. Shape: (B, 3 or 4, 4) -> (B, 4, 4)."""
    rotation = transform[:, :3, :3]
    translation = transform[:, :3, 3:]
    inverse = torch.zeros(transform.shape[0], 4, 4, dtype=transform.dtype, device=transform.device)
    inverse[:, :3, :3] = rotation.transpose(1, 2)
    inverse[:, :3, 3:] = -rotation.transpose(1, 2) @ translation
    inverse[:, 3, 3] = 1.0
    return inverse


def _as_4x4(transform: torch.Tensor) -> torch.Tensor:
    if transform.shape[-2] == 4:
        return transform
    bottom = torch.zeros(transform.shape[0], 1, 4, dtype=transform.dtype, device=transform.device)
    bottom[:, 0, 3] = 1.0
    return torch.cat((transform, bottom), dim=1)


def _pad_to_multiple(image: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pad bottom and right (pixel coordinates unchanged) by replicating the border."""
    height, width = image.shape[-2:]
    pad_h, pad_w = (-height) % multiple, (-width) % multiple
    if pad_h == 0 and pad_w == 0:
        return image
    return F.pad(image, (0, pad_w, 0, pad_h), mode="replicate")


def _ceil_div(value: int, divisor: int) -> int:
    return -(-value // divisor)


def _check_inputs(images, intrinsics, cam_from_world, depth_min, depth_max, network: str = "PatchmatchNet") -> None:
    if not isinstance(images, (list, tuple)) or len(images) < 2:
        raise ValueError(
            f"{network}: expected a list of >= 2 images (reference first), got "
            f"{type(images).__name__} of length {len(images) if hasattr(images, '__len__') else '?'}"
        )
    if len(intrinsics) != len(images) or len(cam_from_world) != len(images):
        raise ValueError(
            f"{network}: expected as many intrinsics and cam_from_world as images ({len(images)}), "
            f"got {len(intrinsics)} and {len(cam_from_world)}"
        )
    batch = images[0].shape[0] if images[0].dim() == 4 else None
    for index, (image, K, pose) in enumerate(zip(images, intrinsics, cam_from_world)):
        if image.dim() != 4 or image.shape[1] != 3 or image.shape[0] != batch:
            raise ValueError(f"{network}: images[{index}]: expected ({batch}, 3, H, W), got {tuple(image.shape)}")
        if image.shape[-1] < 2 or image.shape[-2] < 2:
            raise ValueError(f"{network}: images[{index}]: too small, got {tuple(image.shape)}")
        if tuple(K.shape) != (batch, 3, 3):
            raise ValueError(f"{network}: intrinsics[{index}]: expected ({batch}, 3, 3), got {tuple(K.shape)}")
        if pose.dim() != 3 or pose.shape[0] != batch or tuple(pose.shape[1:]) not in ((4, 4), (3, 4)):
            raise ValueError(
                f"{network}: cam_from_world[{index}]: expected ({batch}, 4, 4), got {tuple(pose.shape)}"
            )
    for name, value in (("depth_min", depth_min), ("depth_max", depth_max)):
        if tuple(value.shape) != (batch,):
            raise ValueError(f"{network}: {name}: expected ({batch},), got {tuple(value.shape)}")
    # Read at once on CPU tensors; queued on a GPU (the scene's ranges are checked on the host when read).
    require(
        (depth_min > 0) & (depth_max > depth_min), f"{network}: expected 0 < depth_min < depth_max",
        lambda: f", got depth_min={depth_min.tolist()} depth_max={depth_max.tolist()}",
    )


def _source_layout(feature: torch.Tensor) -> torch.Tensor:
    """A source feature map in the layout its warp kernel reads without a copy of its own.

    The CPU kernel of :func:`kernels.warp_correlation` reads source features channels-last and
    otherwise makes that copy at every call (each source map is read by 1-2 iterations per stage);
    converting once per stage here saves the rest. Other devices take the map as it is.
    """
    if feature.device.type == "cpu":
        return feature.contiguous(memory_format=torch.channels_last)
    return feature


class PyramidFeatureMaps(nn.Module):
    """PatchmatchNet's feature pyramid as image -> {stride: feature maps}, the interface of
    :meth:`PatchmatchNet.multiscale_features` (a loss can use the network's features without
    knowing its layout: :class:`pipeline.losses.feature.FrozenNetworkFeatures`).

    It holds the pyramid itself, not a copy: ``copy.deepcopy`` of this module copies the pyramid alone.

    Shape:
        image: (N, 3, H, W) in [0, 1] -> stride s in :attr:`strides` -> (N, C_s, H // s, W // s)
        (the image padded to a multiple of 8 for the pyramid, the maps cropped back).
    """

    strides = tuple(2**stage for stage in reversed(STAGES))  # (2, 4, 8)

    def __init__(self, pyramid: FeaturePyramid) -> None:
        super().__init__()
        self.pyramid = pyramid

    def forward(self, image: torch.Tensor) -> dict[int, torch.Tensor]:
        if image.dim() != 4 or image.shape[1] != 3:
            raise ValueError(f"PyramidFeatureMaps: expected (N, 3, H, W), got {tuple(image.shape)}")
        height, width = image.shape[-2:]
        maps = self.pyramid(_pad_to_multiple(image, 8))
        return {2**stage: maps[stage][..., : height // 2**stage, : width // 2**stage] for stage in reversed(STAGES)}


class FreezableBatchNorm(nn.Module):
    """A network whose BatchNorm layers can stay in evaluation mode under ``train()`` (both backbones)."""

    _batchnorm_frozen = False

    def freeze_batchnorm(self, frozen: bool = True):
        """Keep every BatchNorm layer in evaluation mode (running statistics fixed) even under
        ``train()``, for fine-tuning with small batches; their affine parameters still train."""
        self._batchnorm_frozen = frozen
        return self.train(self.training)

    def train(self, mode: bool = True):
        super().train(mode)
        if self._batchnorm_frozen:
            for module in self.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self


class PatchmatchNet(FreezableBatchNorm):
    """The PatchmatchNet multi-view stereo network.

    Args:
        config: hyperparameters (PatchmatchNet's defaults when omitted).

    Example::

        model = PatchmatchNet(ModelConfig()).eval()
        out = model(images, intrinsics, cam_from_world, depth_min, depth_max)
        out.depth  # (B, 1, H, W)
    """

    def __init__(self, config: ModelConfig | None = None) -> None:
        super().__init__()
        self.config = config if config is not None else ModelConfig()
        cfg = self.config
        if cfg.backbone != "patchmatchnet":
            # A CVP-MVSNet config must not build a PatchmatchNet silently: build_model picks the class.
            raise ValueError(f"PatchmatchNet: the config names backbone {cfg.backbone!r}; use pipeline.model.build_model")
        momentum = cfg.batchnorm_momentum
        self.feature = FeaturePyramid(cfg.feature_channels, momentum)
        self.patchmatch = nn.ModuleDict()
        for stage in STAGES:
            index = stage - 1
            self.patchmatch[str(stage)] = PatchMatch(
                stage,
                feature_channels=cfg.feature_channels[index],
                num_groups=cfg.num_groups[index],
                iterations=cfg.iterations[index],
                num_perturbation_hypotheses=cfg.num_perturbation_hypotheses[index],
                interval_scale=cfg.perturbation_interval_scale[index],
                propagation_neighbors=cfg.propagation_neighbors[index],
                evaluation_neighbors=cfg.evaluation_neighbors[index],
                dilation=cfg.dilation[index],
                num_initial_hypotheses=cfg.num_initial_hypotheses,
                with_view_weight_net=stage == STAGES[0],
                momentum=momentum,
                valid_view_normalisation=cfg.valid_view_normalisation,
            )
        self.refinement = Refinement(cfg.refinement_channels, momentum, cfg.refinement_upsampling)
        if cfg.refinement == "spn":  # only then: checkpoints of the other modes keep their keys
            self.spn = SPNRefinement(cfg.spn_channels, cfg.spn_steps, momentum)

    def multiscale_features(self) -> PyramidFeatureMaps:
        """The feature pyramid as a module image -> {stride: maps} at strides 2, 4, 8 (sharing this
        network's weights; deep-copy it for a frozen copy)."""
        return PyramidFeatureMaps(self.feature)

    def extract_features(self, image: torch.Tensor) -> dict[int, torch.Tensor]:
        """Features of one image, padded to a multiple of 8 (the padding is not cropped here).

        ``forward(..., features=...)`` accepts them, so that a view's features can be computed once
        and reused while it serves as the reference or a source of several views.

        Shape:
            image: (B, 3, H, W) in [0, 1]. output: stage -> (B, C, ceil(H / 8) * 8 / 2**stage, ...).
        """
        if image.dim() != 4 or image.shape[1] != 3:
            raise ValueError(f"PatchmatchNet.extract_features: expected (B, 3, H, W), got {tuple(image.shape)}")
        return self._pyramid(_pad_to_multiple(image, 8))

    def _pyramid(self, image: torch.Tensor) -> dict[int, torch.Tensor]:
        """The feature pyramid of a padded image. CPU inference runs it channels-last (oneDNN's
        convolutions: 45-52 instead of 59-74 ms per 640x480 image on 2 cores for a contiguous
        (B, 3, H, W) image; one made from an (H, W, 3) array, as ``selfmvs infer`` does, already
        is), so the maps come back channels-last, the layout the warp kernel reads sources in.

        ``is_contiguous(memory_format=torch.channels_last)`` is not enough: it ignores the stride of a
        batch of one, which oneDNN does not (an (H, W, 3) array permuted first and unsqueezed after
        has batch stride 3, and its convolutions then run channels-first and return channels-first
        maps); the strides are compared with those of a channels-last tensor of the same shape."""
        if not torch.is_grad_enabled() and image.device.type == "cpu":
            channels_last = torch.empty_like(image, memory_format=torch.channels_last)
            if image.stride() != channels_last.stride():
                image = channels_last.copy_(image)
        return self.feature(image)

    def forward(
        self,
        images: list[torch.Tensor],
        intrinsics: list[torch.Tensor],
        cam_from_world: list[torch.Tensor],
        depth_min: torch.Tensor,
        depth_max: torch.Tensor,
        features: list[dict[int, torch.Tensor]] | None = None,
    ) -> PatchmatchOutput:
        """Depth of the reference view (view 0).

        Args:
            images: V + 1 images (B, 3, Hv, Wv) in [0, 1], the reference first.
            intrinsics: (B, 3, 3) pixel intrinsics of each image at its own resolution.
            cam_from_world: (B, 4, 4) (or (B, 3, 4)) world-to-camera transforms.
            depth_min, depth_max: (B,) depth range of the reference view.
            features: optional, :meth:`extract_features` of each image (computed here if None).

        Shape:
            output depth and confidence: (B, 1, H, W), the reference image's size.
        """
        _check_inputs(images, intrinsics, cam_from_world, depth_min, depth_max)
        if features is not None and len(features) != len(images):
            raise ValueError(f"PatchmatchNet: got features of {len(features)} views for {len(images)} images")
        dtype = images[0].dtype
        depth_min = depth_min.to(dtype)
        depth_max = depth_max.to(dtype)
        height, width = images[0].shape[-2:]
        ref_image = _pad_to_multiple(images[0], 8)
        ref_features = self._pyramid(ref_image) if features is None else features[0]
        ref_from_world = _as_4x4(cam_from_world[0].to(dtype))
        world_from_ref = rigid_inverse(ref_from_world)
        src_features, src_from_refs = [], []
        for index, (image, pose) in enumerate(zip(images[1:], cam_from_world[1:]), start=1):
            view_features = self.extract_features(image) if features is None else features[index]
            # Crop the padding away so that sampling outside the true image counts as invalid.
            src_h, src_w = image.shape[-2:]
            src_features.append(
                {
                    stage: _source_layout(feature[..., : _ceil_div(src_h, 2**stage), : _ceil_div(src_w, 2**stage)])
                    for stage, feature in view_features.items()
                }
            )
            src_from_refs.append(_as_4x4(pose.to(dtype)) @ world_from_ref)

        cfg_upsampling = self.config.stage_upsampling
        depth = view_weights = None
        stage_depths: dict[int, list[torch.Tensor]] = {}
        probability = hypotheses = None
        for stage in STAGES:
            scale = 1.0 / 2**stage
            if depth is not None:
                finer = (2 * depth.shape[-2], 2 * depth.shape[-1])
                depth = upsample(depth.detach(), finer, cfg_upsampling)
                view_weights = upsample(view_weights, finer, cfg_upsampling)
            depths, probability, hypotheses, view_weights = self.patchmatch[str(stage)](
                ref_features[stage].contiguous(),  # the kernels read the reference channels-first
                [features[stage] for features in src_features],
                scale_intrinsics(intrinsics[0].to(dtype), scale),
                [scale_intrinsics(K.to(dtype), scale) for K in intrinsics[1:]],
                src_from_refs,
                depth_min,
                depth_max,
                depth,
                view_weights,
            )
            depth = depths[-1]
            crop_h, crop_w = _ceil_div(height, 2**stage), _ceil_div(width, 2**stage)
            stage_depths[stage] = [d[..., :crop_h, :crop_w] for d in depths]

        if self.config.refinement:
            refined = self.refinement(ref_image, depth, depth_min, depth_max)
        else:
            refined = upsample(depth, ref_image.shape[-2:], self.config.refinement_upsampling)
        confidence = _confidence(probability)
        confidence = F.interpolate(confidence, size=ref_image.shape[-2:], mode="bilinear", align_corners=False)
        refined = refined[..., :height, :width]
        if self.config.refinement == "spn":
            # On the cropped map: depth in the replicated padding must not flow into the image.
            refined = self.spn(images[0], refined, depth_min, depth_max)
        stage_depths[0] = [refined]
        return PatchmatchOutput(
            depth=refined,
            confidence=confidence[..., :height, :width].clamp(0.0, 1.0),
            stage_depths=stage_depths,
            view_weights=view_weights[..., : _ceil_div(height, 2), : _ceil_div(width, 2)],
        )


def _confidence(probability: torch.Tensor) -> torch.Tensor:
    """Probability mass of the hypotheses at indices [i - 1, i + 2] around the regressed index i
    (PatchmatchNet's photometric confidence). Shape: (B, D, H, W) -> (B, 1, H, W)."""
    with torch.no_grad():
        num = probability.shape[1]
        steps = torch.arange(num, device=probability.device, dtype=probability.dtype).view(1, -1, 1, 1)
        index = (probability * steps).sum(dim=1, keepdim=True).round().long().clamp(0, num - 1)
        cumulative = F.pad(torch.cumsum(probability, dim=1), (0, 0, 0, 0, 1, 0))
        upper = (index + 3).clamp(max=num)
        lower = (index - 1).clamp(min=0)
        return cumulative.gather(1, upper) - cumulative.gather(1, lower)
