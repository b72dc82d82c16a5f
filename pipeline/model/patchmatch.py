"""Learned PatchMatch: initialization, adaptive propagation, adaptive evaluation (PatchmatchNet, Sec. 3.2).

All depth hypotheses are kept sorted by increasing depth along dimension 1, so that neighbouring
indices are neighbouring depths (the confidence of :mod:`pipeline.model.network` relies on it).
Offsets and sampling positions are in pixel-index units of the stage's feature map: offset 0 is the
pixel itself, as in :func:`kernels.adaptive_aggregation`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import kernels

from .feature import ConvBnReLU3D, PointwiseConv3d

_RING = [(dx, dy) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dx, dy) != (0, 0)]


def neighbor_pattern(num_neighbors: int, dilation: int) -> list[tuple[int, int]]:
    """PatchmatchNet's fixed sampling patterns as (dx, dy) pixel offsets, before learned offsets.

    4: a dilated cross; 8: the dilated 3x3 ring; 16: the rings at ``dilation`` and ``2 * dilation``;
    9: the dilated 3x3 square (centre included, at index 4); 17: the centre and both rings.
    """
    d = int(dilation)
    if num_neighbors == 4:
        return [(0, -d), (-d, 0), (d, 0), (0, d)]
    if num_neighbors == 8:
        return [(dx * d, dy * d) for dx, dy in _RING]
    if num_neighbors == 16:
        return [(dx * d, dy * d) for dx, dy in _RING] + [(2 * dx * d, 2 * dy * d) for dx, dy in _RING]
    if num_neighbors == 9:
        return [(dx * d, dy * d) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    if num_neighbors == 17:
        return [(0, 0)] + neighbor_pattern(16, d)
    raise ValueError(f"neighbor_pattern: num_neighbors must be 4, 8, 9, 16 or 17, got {num_neighbors}")


def _pattern_offsets(num_neighbors: int, dilation: int) -> torch.Tensor:
    """The fixed pattern laid out like the offset maps: (2K,) as dx0, dy0, dx1, dy1, ..."""
    return torch.tensor([v for pair in neighbor_pattern(num_neighbors, dilation) for v in pair], dtype=torch.float32)


def _zero_offset_conv(in_channels: int, num_neighbors: int, dilation: int) -> nn.Conv2d:
    # Zero-initialised so that training starts from the fixed pattern (PatchmatchNet does the same).
    conv = nn.Conv2d(in_channels, 2 * num_neighbors, 3, padding=dilation, dilation=dilation, bias=True)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


def offset_grids(offsets: torch.Tensor) -> list[torch.Tensor]:
    """Per-neighbour sampling grids for ``F.grid_sample`` (align_corners=True) from pixel offsets.

    Shape:
        offsets: (B, 2K, H, W) pixel-index offsets (pattern included).
        output: K grids (B, H, W, 2) in normalised coordinates.
    """
    batch, twice_k, height, width = offsets.shape
    ys = torch.arange(height, device=offsets.device, dtype=offsets.dtype).view(1, height, 1)
    xs = torch.arange(width, device=offsets.device, dtype=offsets.dtype).view(1, 1, width)
    scale_x = 2.0 / max(width - 1, 1)
    scale_y = 2.0 / max(height - 1, 1)
    grids = []
    for k in range(twice_k // 2):
        x = (xs + offsets[:, 2 * k]) * scale_x - 1.0
        y = (ys + offsets[:, 2 * k + 1]) * scale_y - 1.0
        grids.append(torch.stack((x, y), dim=-1))
    return grids


def sample(values: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Bilinear samples of ``values`` (B, C, H, W) at ``grid`` (B, H, W, 2), clamped at the border."""
    return F.grid_sample(values, grid, mode="bilinear", padding_mode="border", align_corners=True)


def _is_pointwise_mlp(net: nn.Module) -> bool:
    """Whether ``net`` is ConvBnReLU3D layers ending in one PointwiseConv3d (what pointwise_mlp computes)."""
    if not isinstance(net, nn.Sequential) or len(net) == 0 or not isinstance(net[-1], PointwiseConv3d):
        return False
    return all(type(layer) is ConvBnReLU3D for layer in list(net)[:-1])


def pointwise_in_chunks(net: nn.Module, volume: torch.Tensor, chunk: int = 1 << 16) -> torch.Tensor:
    """``net`` (1x1x1 layers ending in one channel) over (B, C, D, H, W), ``chunk`` positions at a time.

    The net is pointwise, so cutting the D * H * W positions into pieces changes nothing but the
    size of its hidden layers (16 channels: the largest tensors of a stage otherwise). 2**16
    positions (a 4 MiB hidden layer in float32) measured fastest on a 2-core CPU: 107 ms of
    pointwise nets per 640x480 forward, against 126 ms with 2**17 and 129 ms with 2**15.

    Without autograd a net of :class:`ConvBnReLU3D` layers (BatchNorm in evaluation mode) ending in
    a :class:`PointwiseConv3d` runs as :func:`kernels.pointwise_mlp` with the folded weights: on CPU
    one C++ kernel where it is built (no hidden layer in memory at all), else the same chunks.

    Shape: (B, C, D, H, W) -> (B, D, H, W).
    """
    batch, channels, num, height, width = volume.shape
    if not torch.is_grad_enabled() and _is_pointwise_mlp(net):
        layers = [layer.linear() for layer in net]  # None while a BatchNorm trains (batch statistics)
        if all(layer is not None for layer in layers):
            return kernels.pointwise_mlp(volume, [w for w, _ in layers], [b for _, b in layers], chunk=chunk)[:, 0]
    positions = num * height * width
    if positions <= chunk or torch.is_grad_enabled():
        # Under autograd every chunk's hidden layers are kept for the backward anyway: cutting
        # would save no memory, only add slice copies and a concatenation.
        return net(volume)[:, 0]
    flat = volume.reshape(batch, channels, positions, 1, 1)
    pieces = [net(flat[:, :, start : start + chunk])[:, 0, :, 0, 0] for start in range(0, positions, chunk)]
    return torch.cat(pieces, dim=1).view(batch, num, height, width)


class DepthInitialization(nn.Module):
    """Depth hypotheses: stratified in inverse depth, or a local perturbation of the previous depth.

    The first iteration of the coarsest stage draws ``num_hypotheses`` per pixel, one in each of as
    many equal bins of inverse depth between ``depth_min`` and ``depth_max`` (at random in training,
    at the bin centres in evaluation). Later iterations place hypotheses around the previous
    estimate in inverse depth, ``interval_scale`` of the inverse range apart (PatchmatchNet eq. 2).
    """

    def forward(
        self,
        depth_min: torch.Tensor,
        depth_max: torch.Tensor,
        num_hypotheses: int,
        height: int,
        width: int,
        previous_depth: torch.Tensor | None = None,
        interval_scale: float = 0.0,
    ) -> torch.Tensor:
        """Hypotheses sorted by increasing depth.

        Shape:
            depth_min, depth_max: (B,). previous_depth: (B, 1, H, W) or None.
            output: (B, num_hypotheses, H, W).
        """
        batch = depth_min.shape[0]
        inverse_min = (1.0 / depth_max).view(batch, 1, 1, 1)  # far plane
        inverse_max = (1.0 / depth_min).view(batch, 1, 1, 1)  # near plane
        steps = torch.arange(num_hypotheses, device=depth_min.device, dtype=depth_min.dtype).view(1, -1, 1, 1)
        if previous_depth is None:
            if self.training:
                jitter = torch.rand(batch, num_hypotheses, height, width, device=depth_min.device, dtype=depth_min.dtype)
            else:
                jitter = torch.full((1, 1, 1, 1), 0.5, device=depth_min.device, dtype=depth_min.dtype)
            fraction = (steps + jitter) / num_hypotheses
            # fraction 0 -> near plane, 1 -> far plane: increasing depth.
            inverse = inverse_max - fraction * (inverse_max - inverse_min)
            inverse = inverse.expand(batch, num_hypotheses, height, width)
        else:
            step = interval_scale * (inverse_max - inverse_min)
            inverse = 1.0 / previous_depth - (steps - num_hypotheses // 2) * step
            inverse = torch.maximum(torch.minimum(inverse, inverse_max), inverse_min)
        return 1.0 / inverse


class Propagation(nn.Module):
    """Adaptive propagation: depths of neighbours at learned offsets on a dilated pattern (Sec. 3.2.2).

    Args:
        feature_channels: channels of the reference feature map the offsets are predicted from.
        num_neighbors: propagated hypotheses per pixel (4, 8 or 16).
        dilation: dilation of the fixed pattern and of the offset convolution.
    """

    def __init__(self, feature_channels: int, num_neighbors: int, dilation: int) -> None:
        super().__init__()
        self.num_neighbors = num_neighbors
        self.offset_conv = _zero_offset_conv(feature_channels, num_neighbors, dilation)
        self.register_buffer("pattern", _pattern_offsets(num_neighbors, dilation), persistent=False)

    def offsets(self, ref_feature: torch.Tensor) -> torch.Tensor:
        """Pixel offsets of the neighbours, pattern included. Shape: (B, C, H, W) -> (B, 2K, H, W)."""
        return self.offset_conv(ref_feature) + self.pattern.to(ref_feature.dtype).view(1, -1, 1, 1)

    def forward(self, depth: torch.Tensor, grids: list[torch.Tensor]) -> torch.Tensor:
        """Propagated hypotheses. Shape: depth (B, 1, H, W), K grids (B, H, W, 2) -> (B, K, H, W)."""
        return torch.cat([sample(depth, grid) for grid in grids], dim=1)


class PixelwiseViewWeight(nn.Module):
    """Pixel-wise visibility weight of a source view from its correlation volume (Sec. 3.2.3).

    Shape:
        correlation: (B, G, D, H, W). output: (B, 1, H, W) in [0, 1] (max over hypotheses).
    """

    def __init__(self, num_groups: int, momentum: float = 0.1) -> None:
        super().__init__()
        self.net = nn.Sequential(
            ConvBnReLU3D(num_groups, 16, momentum=momentum),
            ConvBnReLU3D(16, 8, momentum=momentum),
            PointwiseConv3d(8, 1),
        )

    def forward(self, correlation: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(pointwise_in_chunks(self.net, correlation)).amax(dim=1, keepdim=True)


class AdaptiveEvaluation(nn.Module):
    """Adaptive evaluation: view-weighted group-wise correlation, similarity net, adaptive spatial
    cost aggregation, softmax and depth regression in inverse depth (PatchmatchNet Sec. 3.2.3).

    Args:
        feature_channels: channels of the stage's feature maps.
        num_groups: groups of the group-wise correlation.
        num_neighbors: sampling points of the spatial aggregation (9 or 17).
        dilation: dilation of the fixed aggregation pattern and of the offset convolution.
        with_view_weight_net: whether this stage computes pixel-wise view weights itself (the
            coarsest stage); finer stages reuse the upsampled weights.
        momentum: BatchNorm momentum.
        valid_view_normalisation: normalise the view-weighted correlation per hypothesis by the
            weights of the sources it projects into (``ModelConfig.valid_view_normalisation``).
    """

    def __init__(
        self,
        feature_channels: int,
        num_groups: int,
        num_neighbors: int,
        dilation: int,
        with_view_weight_net: bool,
        momentum: float = 0.1,
        valid_view_normalisation: bool = False,
    ) -> None:
        super().__init__()
        self.num_groups = num_groups
        self.valid_view_normalisation = valid_view_normalisation
        self.num_neighbors = num_neighbors
        self.view_weight_net = PixelwiseViewWeight(num_groups, momentum) if with_view_weight_net else None
        self.similarity_net = nn.Sequential(
            ConvBnReLU3D(num_groups, 16, momentum=momentum),
            ConvBnReLU3D(16, 8, momentum=momentum),
            PointwiseConv3d(8, 1),
        )
        self.offset_conv = _zero_offset_conv(feature_channels, num_neighbors, dilation)
        self.feature_weight_net = nn.Sequential(
            ConvBnReLU3D(num_groups, 16, momentum=momentum),
            ConvBnReLU3D(16, 8, momentum=momentum),
            PointwiseConv3d(8, 1),
        )
        self.register_buffer("pattern", _pattern_offsets(num_neighbors, dilation), persistent=False)

    def spatial_weights(self, ref_feature: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        """What the aggregation needs that depends on the reference feature only (once per stage).

        Returns:
            offsets (B, 2K, H, W) pixel offsets with the pattern; K sampling grids (B, H, W, 2)
            (none on the CPU inference path, which samples by offsets in its kernels);
            feature weights (B, K, H, W) in [0, 1]: learned similarity of each sampling point's
            feature to the centre's (group-wise correlation through a small 1x1x1 net).
        """
        batch, channels, height, width = ref_feature.shape
        offsets = self.offset_conv(ref_feature) + self.pattern.to(ref_feature.dtype).view(1, -1, 1, 1)
        groups = self.num_groups
        if not torch.is_grad_enabled() and ref_feature.device.type == "cpu":
            # Inference on CPU: one kernel correlates every pixel with its K neighbours, and the
            # pointwise net runs over all of them in chunks (the same numbers as the loop below).
            # No grids: the fused depth-weighted aggregation (forward) samples by offsets.
            correlation = kernels.neighbour_correlation(ref_feature, offsets, groups)  # (B, G, K, H, W)
            return offsets, [], torch.sigmoid(pointwise_in_chunks(self.feature_weight_net, correlation))
        grids = offset_grids(offsets)
        centre = ref_feature.view(batch, groups, channels // groups, height, width)
        per_point = []
        for grid in grids:
            # One sampling point at a time: the net is pointwise, and the (B, 16, K, H, W) hidden
            # layer of all points at once would be the largest tensor of the network.
            neighbour = sample(ref_feature, grid).view(batch, groups, channels // groups, height, width)
            correlation = (centre * neighbour).mean(dim=2).unsqueeze(2)  # (B, G, 1, H, W)
            per_point.append(torch.sigmoid(self.feature_weight_net(correlation))[:, 0, 0])
        # Stacked, not written into slices of one tensor: under autograd each slice assignment's
        # backward copies the whole gradient (K full copies per stage).
        return offsets, grids, torch.stack(per_point, dim=1)

    def forward(
        self,
        ref_feature: torch.Tensor,
        src_features: list[torch.Tensor],
        ref_K: torch.Tensor,
        src_Ks: list[torch.Tensor],
        src_from_refs: list[torch.Tensor],
        hypotheses: torch.Tensor,
        view_weights: torch.Tensor | None,
        aggregation: tuple[torch.Tensor, list[torch.Tensor], torch.Tensor],
        inverse_range: torch.Tensor,
        interval_scale: float,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Score the hypotheses and regress depth.

        Args:
            ref_feature: (B, C, H, W). src_features: V maps (B, C, Hv, Wv).
            ref_K, src_Ks: (B, 3, 3) intrinsics at the feature maps' resolutions.
            src_from_refs: V rigid transforms (B, 4, 4).
            hypotheses: (B, D, H, W) depths sorted increasing.
            view_weights: (B, V, H, W) or None to compute them here (needs the view weight net).
            aggregation: the output of :meth:`spatial_weights`.
            inverse_range: (B, 1, 1, 1) 1/depth_min - 1/depth_max.
            interval_scale: perturbation spacing as a fraction of the inverse range; depth
                differences between neighbours are measured in this unit.

        Returns:
            probability (B, D, H, W), depth (B, 1, H, W), view_weights (B, V, H, W).
        """
        if view_weights is None and self.view_weight_net is None:
            raise ValueError("AdaptiveEvaluation: this stage has no view weight net; pass view_weights")
        # Without autograd (inference) the big elementwise steps run in place: fewer passes over
        # memory and no temporaries; with autograd the same formulas run out of place.
        in_place = not torch.is_grad_enabled()
        weighted_sum = None
        weight_sum = None
        new_weights = []
        for index, (src_feature, src_K, src_from_ref) in enumerate(zip(src_features, src_Ks, src_from_refs)):
            correlation, valid = kernels.warp_correlation(
                ref_feature, src_feature, ref_K, src_K, src_from_ref, hypotheses, self.num_groups
            )
            if view_weights is None:
                weight = self.view_weight_net(correlation)
                new_weights.append(weight)
            else:
                weight = view_weights[:, index : index + 1]
            # (B, 1, H, W), or (B, D, H, W) counting only the sources each hypothesis projects into
            counted = weight * valid.to(weight.dtype) if self.valid_view_normalisation else weight
            if weighted_sum is None:
                weighted_sum = correlation.mul_(weight.unsqueeze(2)) if in_place else correlation * weight.unsqueeze(2)
                weight_sum = counted
            elif in_place:
                weighted_sum.addcmul_(correlation, weight.unsqueeze(2))
                weight_sum = weight_sum + counted
            else:
                weighted_sum = weighted_sum + correlation * weight.unsqueeze(2)
                weight_sum = weight_sum + counted
            del correlation, valid
        if view_weights is None:
            view_weights = torch.cat(new_weights, dim=1)
        # (B, 1, 1 or D, H, W): the correlations are (B, G, D, H, W)
        normaliser = (weight_sum + 1e-5).reciprocal_().unsqueeze(1)
        similarity = weighted_sum.mul_(normaliser) if in_place else weighted_sum * normaliser  # (B, G, D, H, W)
        del weighted_sum
        score = pointwise_in_chunks(self.similarity_net, similarity)  # (B, D, H, W)
        del similarity

        offsets, grids, feature_weight = aggregation
        inverse = hypotheses.reciprocal()
        scale = 2.0 / (inverse_range * interval_scale)
        # Depth weight: neighbours whose k-th hypothesis is far (in inverse depth) from the centre's
        # count less (PatchmatchNet eq. 7): sigmoid(4 - 2x), x = |difference| in perturbation
        # intervals, clamped to [0, 4].
        if in_place and score.device.type == "cpu":
            # One fused kernel: the depth weights are computed inside the aggregation.
            cost = kernels.depth_weighted_aggregation(score, offsets, inverse, feature_weight, scale.reshape(-1))
        else:
            cost = kernels.adaptive_aggregation(score, offsets, self._depth_weights(inverse, grids, feature_weight, scale, in_place))
        del score
        probability = torch.softmax(cost, dim=1)
        # Depth regression in inverse depth (PatchmatchNet eq. 5 applied to 1 / depth).
        depth = (probability * inverse).sum(dim=1, keepdim=True).reciprocal()
        return probability, depth, view_weights

    @staticmethod
    def _depth_weights(inverse, grids, feature_weight, scale, in_place: bool) -> torch.Tensor:
        """Feature x depth weights (B, K, D, H, W) for :func:`kernels.adaptive_aggregation`."""
        if in_place:
            weights = inverse.new_empty(inverse.shape[0], len(grids), *inverse.shape[1:])
            for k, grid in enumerate(grids):
                x = sample(inverse, grid).sub_(inverse).abs_().mul_(scale).clamp_(max=8.0)
                torch.sigmoid(x.neg_().add_(4.0), out=x)
                torch.mul(x, feature_weight[:, k : k + 1], out=weights[:, k])
                del x
            return weights
        # Stacked, not assigned into slices (see spatial_weights).
        return torch.stack(
            [
                torch.sigmoid(4.0 - ((sample(inverse, grid) - inverse).abs() * scale).clamp(0.0, 8.0))
                * feature_weight[:, k : k + 1]
                for k, grid in enumerate(grids)
            ],
            dim=1,
        )


class PatchMatch(nn.Module):
    """The PatchMatch iterations of one stage: initialization/perturbation, propagation, evaluation.

    Args:
        stage: 3 (1/8), 2 (1/4) or 1 (1/2 resolution).
        feature_channels, num_groups, num_perturbation_hypotheses, interval_scale,
        propagation_neighbors, evaluation_neighbors, dilation, iterations: this stage's values
            of :class:`pipeline.model.ModelConfig`.
        num_initial_hypotheses: hypotheses of the stratified initialization (first stage only).
    """

    def __init__(
        self,
        stage: int,
        *,
        feature_channels: int,
        num_groups: int,
        iterations: int,
        num_perturbation_hypotheses: int,
        interval_scale: float,
        propagation_neighbors: int,
        evaluation_neighbors: int,
        dilation: int,
        num_initial_hypotheses: int,
        with_view_weight_net: bool,
        momentum: float = 0.1,
        valid_view_normalisation: bool = False,
    ) -> None:
        super().__init__()
        self.stage = stage
        self.iterations = iterations
        self.num_perturbation_hypotheses = num_perturbation_hypotheses
        self.interval_scale = interval_scale
        self.num_initial_hypotheses = num_initial_hypotheses
        self.initialization = DepthInitialization()
        self.propagation = (
            Propagation(feature_channels, propagation_neighbors, dilation) if propagation_neighbors > 0 else None
        )
        self.evaluation = AdaptiveEvaluation(
            feature_channels, num_groups, evaluation_neighbors, dilation, with_view_weight_net, momentum,
            valid_view_normalisation,
        )

    def forward(
        self,
        ref_feature: torch.Tensor,
        src_features: list[torch.Tensor],
        ref_K: torch.Tensor,
        src_Ks: list[torch.Tensor],
        src_from_refs: list[torch.Tensor],
        depth_min: torch.Tensor,
        depth_max: torch.Tensor,
        depth: torch.Tensor | None,
        view_weights: torch.Tensor | None,
    ) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor, torch.Tensor]:
        """Run the stage's iterations.

        Args:
            depth: (B, 1, H, W) the previous stage's depth upsampled to this stage, or None at the
                first stage (stratified initialization).
            view_weights: (B, V, H, W) upsampled from the previous stage, or None at the first.

        Returns:
            the depth (B, 1, H, W) of every iteration, the last probability volume (B, D, H, W)
            with its hypotheses (B, D, H, W), and the view weights (B, V, H, W).

        Under autocast (``train.amp``) the stage runs in float32 with autocast off: the features
        may arrive in bfloat16/float16 from the pyramid, but the correlations, the softmax over
        hypotheses and the depth regression need float32 (the fused kernels take float32/64 only).
        """
        device_type = ref_feature.device.type
        if torch.is_autocast_enabled(device_type):
            with torch.autocast(device_type, enabled=False):
                return self.forward(
                    ref_feature.float(), [f.float() for f in src_features], ref_K.float(),
                    [k.float() for k in src_Ks], [p.float() for p in src_from_refs], depth_min.float(),
                    depth_max.float(), None if depth is None else depth.float(),
                    None if view_weights is None else view_weights.float(),
                )
        batch, _, height, width = ref_feature.shape
        inverse_range = (1.0 / depth_min - 1.0 / depth_max).view(batch, 1, 1, 1)
        aggregation = self.evaluation.spatial_weights(ref_feature)
        propagation_grids = None
        if self.propagation is not None:
            propagation_grids = offset_grids(self.propagation.offsets(ref_feature))
        depths = []
        probability = hypotheses = None
        for _ in range(self.iterations):
            if depth is None:
                hypotheses = self.initialization(depth_min, depth_max, self.num_initial_hypotheses, height, width)
            else:
                # No gradient from one iteration into the previous one's estimate (as PatchmatchNet).
                previous = depth.detach()
                hypotheses = self.initialization(
                    depth_min, depth_max, self.num_perturbation_hypotheses, height, width, previous, self.interval_scale
                )
                if self.propagation is not None:
                    propagated = self.propagation(previous, propagation_grids)
                    hypotheses = torch.sort(torch.cat((hypotheses, propagated), dim=1), dim=1).values
            probability, depth, view_weights = self.evaluation(
                ref_feature,
                src_features,
                ref_K,
                src_Ks,
                src_from_refs,
                hypotheses,
                view_weights,
                aggregation,
                inverse_range,
                self.interval_scale,
            )
            depths.append(depth)
        return depths, probability, hypotheses, view_weights
