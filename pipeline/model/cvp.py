"""CVP-MVSNet: a cost volume pyramid, coarse to fine (Yang et al., CVPR 2020).

The same call and the same :class:`PatchmatchOutput` as :class:`PatchmatchNet`, so inference, the
depth file, fusion and the self-supervised losses work with either backbone
(``ModelConfig.backbone``):

1. An image pyramid of ``cvp_levels`` levels (2x2 means; level ``s`` at ``1 / 2**s`` per side, the
   default 3 levels put the coarsest at 1/4 per side, 1/16 of the area) and ONE feature extractor
   run on every level (the paper's shared weights; hence the level count can change at inference).
2. The coarsest level: a full cost volume over the reference's depth range, ``cvp_initial_planes``
   planes uniform in inverse depth (default; the paper samples depth linearly, ``"linear"``) so that
   near surfaces get the fine planes they need in the image; a 3-D U-Net regularises it, softmax
   over the planes and soft-argmin (in the sampled variable: inverse depth, or depth).
3. Each finer level: the depth upsampled (bilinear, no gradient into the coarser level, as
   PatchmatchNet), a RESIDUAL cost volume of ``2 * cvp_residual_steps + 1`` planes
   ``d_up + k * step``, a second 3-D U-Net (shared by all finer levels), softmax, soft-argmin.
   The step comes from the image (CVP-MVSNet Sec. 3.3): see :func:`residual_depth_step`.
4. Confidence at the finest (full-resolution) level: the probability mass of the 4 planes around
   the regressed one (PatchmatchNet's / MVSNet's photometric confidence).

Cost: group-wise correlation (Xu & Zhang, CVPR 2020) averaged over the source views where the
hypothesis projects inside, not the paper's variance. Why: :func:`kernels.warp_correlation` fuses
the warp and the correlation and never stores a source's warped ``(B, C, D, H, W)`` features (a
variance needs them, or their sum and sum of squares, for every source), and a volume of
``cvp_num_groups`` channels instead of ``C`` makes the 3-D nets' first layer cheaper; PatchmatchNet
here uses the same kernel, so both backbones share its tested CPU and CUDA code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import kernels
from kernels.geometry import invert_intrinsics

from .config import ModelConfig
from .feature import ConvBnReLU
from .network import (
    FreezableBatchNorm,
    PatchmatchOutput,
    _as_4x4,
    _ceil_div,
    _check_inputs,
    _confidence,
    _pad_to_multiple,
    rigid_inverse,
    scale_intrinsics,
)


def residual_depth_step(
    depth: torch.Tensor,
    ref_K: torch.Tensor,
    src_Ks: list[torch.Tensor],
    src_from_refs: list[torch.Tensor],
    pixels: float,
    max_step: torch.Tensor,
) -> torch.Tensor:
    """The depth step that moves a reference pixel's projection by ``pixels`` in the source views.

    For the reference pixel centre ``p = (j + 0.5, i + 0.5, 1)`` at depth ``d`` the 3-D point is
    ``d r`` with ``r = K_ref^-1 p``; in source view ``v`` (``[R | t] = src_from_ref``) it projects
    to ``x(d) = (d A_xy + T_xy) / (d A_z + T_z)`` with ``A = K_v R r``, ``T = K_v t``. Moving the
    depth by ``delta`` moves the projection by exactly::

        |x(d + delta) - x(d)| = |delta| N / (z |z + delta A_z|),
        N = |A_xy T_z - A_z T_xy|,  z = d A_z + T_z  (the point's depth in source view v),

    the derivative ``N / z**2`` (CVP-MVSNet's linearisation) corrected for the change of ``z``.
    Solving it for ``pixels = s`` in the direction where the projection moves faster gives::

        step_v = s z**2 / (N + s z |A_z|),

    the largest step for which neither ``d + step`` nor ``d - step`` moves the projection by more
    than ``s`` pixels in view ``v`` (one of the two by exactly ``s``). The step is the minimum over
    the views the point lies in front of (``z > 0``): adjacent hypotheses then sample every source
    no more than ``s`` pixels apart (s = 0.5, the paper's choice, samples densely enough that no
    feature is skipped), and ``2 * steps + 1`` planes cover ``+-steps * s`` pixels in the
    widest-baseline source. The step is always under ``z / |A_z|``, so ``d -+ step`` stays in front
    of the source. A view counts where the point lies in front of it (``z > 0``) and its projection
    moves at all (``N > 0``: the ray does not pass through the source's centre). Clamped into
    ``(0, max_step]``, also the step of a pixel no view counts for.

    Args:
        depth: (B, 1, H, W) current depth estimate (z-depth in the reference camera).
        ref_K: (B, 3, 3) reference intrinsics at (H, W).
        src_Ks: per source, (B, 3, 3) intrinsics at that source's resolution.
        src_from_refs: per source, (B, 4, 4) reference-to-source transforms.
        pixels: ``s``, the target motion in source pixels.
        max_step: (B,) the largest step allowed.

    Returns:
        (B, 1, H, W) depth steps, positive.
    """
    batch, _, height, width = depth.shape
    dtype, device = depth.dtype, depth.device
    rows = torch.arange(height, dtype=dtype, device=device) + 0.5
    cols = torch.arange(width, dtype=dtype, device=device) + 0.5
    y, x = torch.meshgrid(rows, cols, indexing="ij")
    pixel = torch.stack((x, y, torch.ones_like(x))).view(1, 3, -1)
    # K is upper triangular: its closed-form inverse (a checked solve would wait for the GPU).
    rays = invert_intrinsics(ref_K.to(dtype)) @ pixel  # (B, 3, HW)
    flat_depth = depth.reshape(batch, 1, -1)
    step = torch.full_like(flat_depth, float("inf"))
    for src_K, src_from_ref in zip(src_Ks, src_from_refs):
        src_K, src_from_ref = src_K.to(dtype), src_from_ref.to(dtype)
        A = src_K @ src_from_ref[:, :3, :3] @ rays  # (B, 3, HW)
        T = src_K @ src_from_ref[:, :3, 3:]  # (B, 3, 1)
        z = flat_depth * A[:, 2:] + T[:, 2:]
        motion = torch.linalg.vector_norm(A[:, :2] * T[:, 2:] - A[:, 2:] * T[:, :2], dim=1, keepdim=True)
        denominator = motion + pixels * z * A[:, 2:].abs()
        view_step = pixels * z * z / denominator.clamp_min(torch.finfo(dtype).tiny)
        # N = 0 (up to rounding): the ray passes through the source's centre and its projection
        # does not move at all; the formula's z / |A_z| would be a step to the camera plane.
        rounding = torch.finfo(dtype).eps * 8 * (
            torch.linalg.vector_norm(A[:, :2] * T[:, 2:], dim=1, keepdim=True)
            + torch.linalg.vector_norm(A[:, 2:] * T[:, :2], dim=1, keepdim=True)
        )
        informative = (z > 0) & (motion > rounding)
        step = torch.minimum(step, torch.where(informative, view_step, torch.full_like(view_step, float("inf"))))
    smallest = torch.finfo(dtype).eps * max_step.view(batch, 1, 1)
    step = torch.minimum(step, max_step.view(batch, 1, 1).to(dtype)).clamp_min(smallest)
    return step.view(batch, 1, height, width)


class FeatureExtractor(nn.Module):
    """CVP-MVSNet's feature network: 3x3 convolutions at the resolution of the input (the pyramid
    comes from the images, not from strides), BatchNorm + ReLU, a plain last layer so the features
    can be signed for the correlation. Receptive field 19 pixels (two layers dilated by 2).

    Shape: (B, 3, H, W) -> (B, C, H, W).
    """

    def __init__(self, channels: int = 16, momentum: float = 0.1) -> None:
        super().__init__()
        half = max(1, channels // 2)
        self.layers = nn.Sequential(
            ConvBnReLU(3, half, momentum=momentum),
            ConvBnReLU(half, half, momentum=momentum),
            ConvBnReLU(half, channels, momentum=momentum),
            ConvBnReLU(channels, channels, dilation=2, momentum=momentum),
            ConvBnReLU(channels, channels, dilation=2, momentum=momentum),
            ConvBnReLU(channels, channels, momentum=momentum),
        )
        self.output = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.output(self.layers(image))


class LevelFeatureMaps(nn.Module):
    """CVP-MVSNet's feature network as image -> {stride: feature maps}, the interface of
    :meth:`CVPMVSNet.multiscale_features`: the network run on the image averaged down by each
    stride (2x2 means, as its image pyramid is made).

    Strides 1 and 2 by default (the pyramid's two finest levels, whatever ``cvp_levels`` is): the
    features are local (receptive field 19 pixels at every level), so on a training crop averaged
    down to 1/4 or 1/8 they see mostly the crop's border, and on the rendered test planes their
    consistency was lowest off the true depth there (tests/test_feature_loss.py scans it).

    It holds the feature network itself, not a copy: ``copy.deepcopy`` of this module copies it alone.

    Shape:
        image: (N, 3, H, W) in [0, 1] -> stride s in :attr:`strides` -> (N, C, H // s, W // s)
    """

    def __init__(self, feature: FeatureExtractor, strides: tuple[int, ...] = (1, 2)) -> None:
        super().__init__()
        if not strides or any(s < 1 or s & (s - 1) for s in strides):
            raise ValueError(f"LevelFeatureMaps: strides must be powers of 2, got {strides!r}")
        self.feature = feature
        self.strides = tuple(strides)

    def forward(self, image: torch.Tensor) -> dict[int, torch.Tensor]:
        if image.dim() != 4 or image.shape[1] != 3:
            raise ValueError(f"LevelFeatureMaps: expected (N, 3, H, W), got {tuple(image.shape)}")
        return {s: self.feature(F.avg_pool2d(image, s) if s > 1 else image) for s in self.strides}


class _ConvBnReLU3d(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, momentum: float = 0.1) -> None:
        super().__init__(
            nn.Conv3d(in_channels, out_channels, 3, stride, padding=1, bias=False),
            nn.BatchNorm3d(out_channels, momentum=momentum),
            nn.ReLU(inplace=True),
        )


class _DeconvBnReLU3d(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int, momentum: float = 0.1) -> None:
        super().__init__(
            nn.ConvTranspose3d(in_channels, out_channels, 3, 2, padding=1, output_padding=1, bias=False),
            nn.BatchNorm3d(out_channels, momentum=momentum),
            nn.ReLU(inplace=True),
        )


class CostRegularisation(nn.Module):
    """A 3-D U-Net with two down-sampling steps (MVSNet's cost regularisation, made smaller):
    cost volume -> one logit per plane. The volume is zero-padded to a multiple of 4 in depth,
    height and width (any plane count and odd image sizes) and the logits cropped back.

    Shape: (B, G, D, H, W) -> (B, D, H, W).
    """

    def __init__(self, in_channels: int, channels: int = 8, momentum: float = 0.1) -> None:
        super().__init__()
        self.conv0 = _ConvBnReLU3d(in_channels, channels, momentum=momentum)
        self.conv1 = _ConvBnReLU3d(channels, 2 * channels, stride=2, momentum=momentum)
        self.conv2 = _ConvBnReLU3d(2 * channels, 2 * channels, momentum=momentum)
        self.conv3 = _ConvBnReLU3d(2 * channels, 4 * channels, stride=2, momentum=momentum)
        self.conv4 = _ConvBnReLU3d(4 * channels, 4 * channels, momentum=momentum)
        self.up3 = _DeconvBnReLU3d(4 * channels, 2 * channels, momentum=momentum)
        self.up2 = _DeconvBnReLU3d(2 * channels, channels, momentum=momentum)
        self.logit = nn.Conv3d(channels, 1, 3, padding=1)

    def forward(self, cost: torch.Tensor) -> torch.Tensor:
        planes, height, width = cost.shape[-3:]
        cost = F.pad(cost, (0, (-width) % 4, 0, (-height) % 4, 0, (-planes) % 4))
        level0 = self.conv0(cost)
        level1 = self.conv2(self.conv1(level0))
        bottom = self.conv4(self.conv3(level1))
        level1 = level1 + self.up3(bottom)
        level0 = level0 + self.up2(level1)
        return self.logit(level0)[:, 0, :planes, :height, :width]


class CVPMVSNet(FreezableBatchNorm):
    """The CVP-MVSNet multi-view stereo network (module docstring: what it computes and why).

    Args:
        config: hyperparameters; its ``cvp_`` options and ``batchnorm_momentum`` are used, and
            ``backbone`` must be ``"cvp"``.

    ``forward`` and ``extract_features`` take and return what :class:`PatchmatchNet`'s do, with
    these levels: ``stage_depths[s]`` for s = levels - 1 (coarsest) .. 1 is that level's depth at
    ``ceil(H / 2**s) x ceil(W / 2**s)`` (one entry each), and ``stage_depths[0]`` the full-resolution
    depth, the output. ``view_weights`` are not learned here (no view weight net): the fraction of
    each source's finest-level hypotheses that project inside it, averaged over 2x2 pixels to
    PatchmatchNet's half resolution.

    Example::

        model = CVPMVSNet(ModelConfig(backbone="cvp")).eval()
        out = model(images, intrinsics, cam_from_world, depth_min, depth_max)
        out.depth  # (B, 1, H, W)
    """

    def __init__(self, config: ModelConfig | None = None) -> None:
        super().__init__()
        self.config = config if config is not None else ModelConfig(backbone="cvp")
        cfg = self.config
        if cfg.backbone != "cvp":
            raise ValueError(f"CVPMVSNet: expected a ModelConfig with backbone 'cvp', got {cfg.backbone!r}")
        momentum = cfg.batchnorm_momentum
        self.feature = FeatureExtractor(cfg.cvp_feature_channels, momentum)
        self.initial_regularisation = CostRegularisation(cfg.cvp_num_groups, cfg.cvp_regularisation_channels, momentum)
        self.residual_regularisation = CostRegularisation(cfg.cvp_num_groups, cfg.cvp_regularisation_channels, momentum)

    @property
    def levels(self) -> tuple[int, ...]:
        """Pyramid levels, coarse to fine; level s is at 1 / 2**s per side."""
        return tuple(range(self.config.cvp_levels - 1, -1, -1))

    def multiscale_features(self) -> LevelFeatureMaps:
        """The feature network as a module image -> {stride: maps} at strides 1 and 2, its two finest
        levels (sharing this network's weights; deep-copy it for a frozen copy)."""
        return LevelFeatureMaps(self.feature)

    def extract_features(self, image: torch.Tensor) -> dict[int, torch.Tensor]:
        """Features of every pyramid level of one image, padded (bottom and right) to a multiple of
        ``2**(levels - 1)``; ``forward(..., features=...)`` accepts them.

        Shape:
            image: (B, 3, H, W) in [0, 1]. output: level s -> (B, C, Hp / 2**s, Wp / 2**s), Hp and
            Wp the padded size.
        """
        if image.dim() != 4 or image.shape[1] != 3:
            raise ValueError(f"CVPMVSNet.extract_features: expected (B, 3, H, W), got {tuple(image.shape)}")
        level_image = _pad_to_multiple(image, 2 ** (self.config.cvp_levels - 1))
        features = {}
        for level in range(self.config.cvp_levels):
            if level > 0:
                # A 2x2 mean: exactly the pixel-centre scaling of scale_intrinsics(K, 1 / 2).
                level_image = F.avg_pool2d(level_image, 2)
            features[level] = self.feature(level_image)
        return features

    def forward(
        self,
        images: list[torch.Tensor],
        intrinsics: list[torch.Tensor],
        cam_from_world: list[torch.Tensor],
        depth_min: torch.Tensor,
        depth_max: torch.Tensor,
        features: list[dict[int, torch.Tensor]] | None = None,
    ) -> PatchmatchOutput:
        """Depth of the reference view (view 0); arguments and shapes as :meth:`PatchmatchNet.forward`."""
        _check_inputs(images, intrinsics, cam_from_world, depth_min, depth_max, network="CVPMVSNet")
        if features is not None and len(features) != len(images):
            raise ValueError(f"CVPMVSNet: got features of {len(features)} views for {len(images)} images")
        cfg = self.config
        dtype = images[0].dtype
        depth_min, depth_max = depth_min.to(dtype), depth_max.to(dtype)
        height, width = images[0].shape[-2:]
        all_features = features if features is not None else [self.extract_features(image) for image in images]
        for index, view_features in enumerate(all_features):
            if sorted(view_features) != list(range(cfg.cvp_levels)):
                raise ValueError(
                    f"CVPMVSNet: features[{index}] has levels {sorted(view_features)}, expected "
                    f"0..{cfg.cvp_levels - 1} (extract_features of this model)"
                )
        ref_features = all_features[0]
        world_from_ref = rigid_inverse(_as_4x4(cam_from_world[0].to(dtype)))
        src_from_refs = [_as_4x4(pose.to(dtype)) @ world_from_ref for pose in cam_from_world[1:]]
        src_features = []
        for image, view_features in zip(images[1:], all_features[1:]):
            # Crop the padding away so that sampling outside the true image counts as invalid.
            src_h, src_w = image.shape[-2:]
            src_features.append(
                {s: f[..., : _ceil_div(src_h, 2**s), : _ceil_div(src_w, 2**s)] for s, f in view_features.items()}
            )

        stage_depths: dict[int, list[torch.Tensor]] = {}
        depth = probability = valid_fraction = None
        max_step = (depth_max - depth_min) / (2 * cfg.cvp_residual_steps)
        for level in self.levels:
            scale = 1.0 / 2**level
            ref_K = scale_intrinsics(intrinsics[0].to(dtype), scale)
            src_Ks = [scale_intrinsics(K.to(dtype), scale) for K in intrinsics[1:]]
            ref_feature = ref_features[level]
            level_h, level_w = ref_feature.shape[-2:]
            if depth is None:
                hypotheses, sampled = _initial_hypotheses(
                    depth_min, depth_max, cfg.cvp_initial_planes, cfg.cvp_depth_sampling, (level_h, level_w)
                )
                regularisation = self.initial_regularisation
            else:
                upsampled = F.interpolate(depth.detach(), size=(level_h, level_w), mode="bilinear", align_corners=False)
                with torch.no_grad():
                    step = residual_depth_step(
                        upsampled, ref_K, src_Ks, src_from_refs, cfg.cvp_residual_pixels, max_step
                    )
                offsets = torch.arange(
                    -cfg.cvp_residual_steps, cfg.cvp_residual_steps + 1, dtype=dtype, device=upsampled.device
                ).view(1, -1, 1, 1)
                hypotheses = torch.maximum(
                    torch.minimum(upsampled + offsets * step, depth_max.view(-1, 1, 1, 1)), depth_min.view(-1, 1, 1, 1)
                )
                sampled = hypotheses
                regularisation = self.residual_regularisation
            cost, valid_fraction = self._cost_volume(
                ref_feature, [f[level] for f in src_features], ref_K, src_Ks, src_from_refs, hypotheses
            )
            logits = regularisation(cost.to(ref_feature.dtype))
            # Softmax and regression in at least float32 (half-float logits under autocast).
            precision = torch.promote_types(logits.dtype, torch.float32)
            probability = torch.softmax(logits.to(precision), dim=1)
            regressed = (probability * sampled.to(precision)).sum(dim=1, keepdim=True)
            if depth is None and cfg.cvp_depth_sampling == "inverse":
                regressed = 1.0 / regressed
            depth = regressed.to(dtype)
            stage_depths[level] = [depth[..., : _ceil_div(height, 2**level), : _ceil_div(width, 2**level)]]

        confidence = _confidence(probability)[..., :height, :width].clamp(0.0, 1.0)
        view_weights = F.avg_pool2d(valid_fraction, 2, ceil_mode=True)[..., : _ceil_div(height, 2), : _ceil_div(width, 2)]
        return PatchmatchOutput(
            depth=stage_depths[0][0],
            confidence=confidence.to(dtype),
            stage_depths=stage_depths,
            view_weights=view_weights.to(dtype),
        )

    def _cost_volume(self, ref_feature, src_features, ref_K, src_Ks, src_from_refs, hypotheses):
        """Group-wise correlation averaged over the sources a hypothesis projects into (a pixel
        with no such source gets cost 0), and per source the fraction of valid hypotheses.

        Shape: hypotheses (B, D, H, W) -> cost (B, G, D, H, W), valid_fraction (B, V, H, W).
        """
        # The kernel computes in float32/float64; under autocast the convolutions give half floats.
        compute = ref_feature.dtype if ref_feature.dtype in (torch.float32, torch.float64) else torch.float32
        ref_feature = ref_feature.to(compute).contiguous()
        hypotheses = hypotheses.to(compute).contiguous()
        total = count = None
        fractions = []
        for src_feature, src_K, src_from_ref in zip(src_features, src_Ks, src_from_refs):
            correlation, valid = kernels.warp_correlation(
                ref_feature, src_feature.to(compute), ref_K.to(compute), src_K.to(compute),
                src_from_ref.to(compute), hypotheses, self.config.cvp_num_groups,
            )
            valid = valid.to(compute)
            total = correlation if total is None else total + correlation
            count = valid if count is None else count + valid
            fractions.append(valid.mean(dim=1, keepdim=True))
        return total / count.clamp_min(1.0).unsqueeze(1), torch.cat(fractions, dim=1)


def _initial_hypotheses(depth_min, depth_max, planes: int, sampling: str, size: tuple[int, int]):
    """The coarsest level's planes: (depth hypotheses, the variable the soft-argmin averages), both
    (B, D, h, w); uniform in inverse depth (that variable is the inverse depth) or in depth."""
    steps = torch.linspace(0.0, 1.0, planes, dtype=depth_min.dtype, device=depth_min.device).view(1, -1, 1, 1)
    near, far = depth_min.view(-1, 1, 1, 1), depth_max.view(-1, 1, 1, 1)
    if sampling == "inverse":
        inverse = 1.0 / far + (1.0 / near - 1.0 / far) * steps
        inverse = inverse.expand(-1, -1, *size)
        return 1.0 / inverse, inverse
    depth = (near + (far - near) * steps).expand(-1, -1, *size)
    return depth, depth
