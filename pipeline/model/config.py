"""Hyperparameters of the PatchmatchNet-style network.

Per-stage tuples are ordered like PatchmatchNet's own options: ``(stage 1, stage 2, stage 3)``, i.e.
finest (1/2 resolution) first, coarsest (1/8) last. The network runs them coarse to fine
(stage 3, 2, 1). Defaults are those of PatchmatchNet (Wang et al., CVPR 2021) and its released code,
except the two upsampling modes (bilinear, see below; ``nearest`` restores PatchmatchNet's).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

NUM_STAGES = 3  # stages 1, 2, 3 at 1/2, 1/4, 1/8 resolution
UPSAMPLING_MODES = ("nearest", "bilinear")
REFINEMENT_MODES = ("spn",)  # besides true (PatchmatchNet's refinement) and false (none)
BACKBONES = ("patchmatchnet", "cvp")
DEPTH_SAMPLINGS = ("inverse", "linear")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Options of :class:`pipeline.model.PatchmatchNet`.

    The defaults are PatchmatchNet's (training from scratch uses them). The shipped checkpoint
    stores other values for four options that need no other weights (refinement off, iterations
    (1, 2, 1), 32 initial hypotheses, one perturbation hypothesis at stage 2), measured better and
    faster on held-out scenes (pipeline/checkpoints/README.md); ``infer.model`` changes them per run.

    Attributes:
        backbone: the network: ``"patchmatchnet"`` (:class:`pipeline.model.PatchmatchNet`, the
            default; the options below without the ``cvp_`` prefix) or ``"cvp"``
            (:class:`pipeline.model.CVPMVSNet`, Yang et al. CVPR 2020; the ``cvp_`` options).
            Each backbone ignores the other's options.
        cvp_levels: image pyramid levels of CVP-MVSNet; the coarsest is at 1 / 2**(levels - 1) per
            side. Its weights are shared by every level, so the count can change at inference
            (1 level leaves the residual net unused: distributed training then needs
            ``find_unused_parameters``).
        cvp_initial_planes: depth planes of the full cost volume at the coarsest level.
        cvp_depth_sampling: those planes uniform in ``"inverse"`` depth (default) or ``"linear"``
            depth (the paper's).
        cvp_residual_steps: residual hypotheses on each side of the upsampled depth at every
            finer level (2 * steps + 1 planes).
        cvp_residual_pixels: their spacing: the depth step that moves the projection in the source
            views by at most this many pixels (CVP-MVSNet: 0.5).
        cvp_feature_channels: channels of CVP-MVSNet's shared feature extractor.
        cvp_num_groups: groups of its group-wise correlation; must divide cvp_feature_channels.
        cvp_regularisation_channels: channels of the first layer of its 3-D regularisation nets.
        feature_channels: FPN output channels at (1/2, 1/4, 1/8) resolution.
        num_initial_hypotheses: hypotheses stratified in inverse depth at the first iteration of
            stage 3.
        iterations: PatchMatch iterations at (stage 1, stage 2, stage 3).
        num_perturbation_hypotheses: hypotheses of the local perturbation around the previous
            estimate (PatchmatchNet's ``patchmatch_num_sample``) at (stage 1, 2, 3).
        perturbation_interval_scale: spacing of the perturbation hypotheses as a fraction of the
            inverse depth range (``patchmatch_interval_scale``) at (stage 1, 2, 3).
        propagation_neighbors: adaptively propagated hypotheses at (stage 1, 2, 3); 0, 4, 8 or 16.
        evaluation_neighbors: sampling points of the adaptive spatial cost aggregation at
            (stage 1, 2, 3); 9 or 17 (a dilated 3x3 pattern, plus a second ring for 17).
        dilation: dilation of the fixed propagation and evaluation patterns, and of the offset
            convolutions, at (stage 1, 2, 3) (``propagation_range``).
        num_groups: groups of the group-wise correlation at (stage 1, 2, 3).
        refinement_channels: channels of the refinement network's layers.
        batchnorm_momentum: momentum of every BatchNorm layer.
        stage_upsampling: how a stage's depth (and view weights) is upsampled to the next finer
            stage: ``"bilinear"`` (default) or ``"nearest"`` (PatchmatchNet).
        refinement_upsampling: the half-resolution depth the refinement adds its residual to,
            upsampled ``"bilinear"`` (default) or ``"nearest"`` (PatchmatchNet). Bilinear keeps
            slanted surfaces (floors, walls at grazing angles) from turning into two-pixel stairs:
            on the held-out synthetic scene (seed 2000) the step-1200 weights give 76.6 % of
            pixels within 1 % with both bilinear, 67.9 % with both nearest (bench/README.md).
        refinement: run the refinement network (PatchmatchNet, the default). ``False`` returns the
            last stage-1 depth upsampled (``refinement_upsampling``) instead; the refinement's
            weights stay in the model, so a checkpoint loads either way and the switch can be set
            at export or inference. Measured on the held-out synthetic scenes for the self-supervised
            base run: the refinement costs about 1 point within 1 % (bench/README.md).
            ``"spn"``: the refinement network, then a spatial propagation network on its output
            (:class:`pipeline.model.spn.SPNRefinement`, MVS^2's refinement): ``spn_steps`` steps of
            8-neighbour propagation with affinities predicted from the reference image and the
            depth. Its guidance weights (``spn.*``) exist only in this mode, so checkpoints of the
            other two modes load unchanged; its last layer starts at zero, so a fresh SPN returns
            the refinement network's depth.
        spn_steps: propagation steps of the SPN refinement (``refinement: spn``); no weights depend
            on it, so it can be set at export or inference (0: the SPN is skipped).
        spn_channels: channels of the SPN's guidance CNN (``refinement: spn``).
        valid_view_normalisation: how the view-weighted mean of the correlations is normalised.
            ``False`` (PatchmatchNet): by the sum of the pixel's view weights, so a source in which
            a hypothesis projects outside the image (or behind the camera) still counts, with a
            correlation of 0. ``True``: per hypothesis, by the weights of the sources where it
            projects inside; no weights change, so it can be set at export or inference.
    """

    backbone: str = "patchmatchnet"
    cvp_levels: int = 3
    cvp_initial_planes: int = 48
    cvp_depth_sampling: str = "inverse"
    cvp_residual_steps: int = 4
    cvp_residual_pixels: float = 0.5
    cvp_feature_channels: int = 16
    cvp_num_groups: int = 4
    cvp_regularisation_channels: int = 8
    feature_channels: tuple[int, int, int] = (16, 32, 64)
    num_initial_hypotheses: int = 48
    iterations: tuple[int, int, int] = (1, 2, 2)
    num_perturbation_hypotheses: tuple[int, int, int] = (8, 8, 16)
    perturbation_interval_scale: tuple[float, float, float] = (0.005, 0.0125, 0.025)
    propagation_neighbors: tuple[int, int, int] = (0, 8, 16)
    evaluation_neighbors: tuple[int, int, int] = (9, 9, 9)
    dilation: tuple[int, int, int] = (6, 4, 2)
    num_groups: tuple[int, int, int] = (4, 8, 8)
    refinement_channels: int = 8
    batchnorm_momentum: float = 0.1
    stage_upsampling: str = "bilinear"
    refinement_upsampling: str = "bilinear"
    refinement: bool | str = True
    valid_view_normalisation: bool = False
    spn_steps: int = 12
    spn_channels: int = 16

    def __post_init__(self) -> None:
        self._check_cvp()
        for name in (
            "feature_channels",
            "iterations",
            "num_perturbation_hypotheses",
            "perturbation_interval_scale",
            "propagation_neighbors",
            "evaluation_neighbors",
            "dilation",
            "num_groups",
        ):
            value = getattr(self, name)
            if isinstance(value, list):
                value = tuple(value)
                object.__setattr__(self, name, value)
            if not isinstance(value, tuple) or len(value) != NUM_STAGES:
                raise ValueError(f"ModelConfig.{name}: expected 3 values (stage 1, 2, 3), got {value!r}")
            if any(v <= 0 for v in value) and name != "propagation_neighbors":
                raise ValueError(f"ModelConfig.{name}: expected positive values, got {value!r}")
        for value in self.propagation_neighbors:
            if value not in (0, 4, 8, 16):
                raise ValueError(
                    f"ModelConfig.propagation_neighbors: each must be 0, 4, 8 or 16, got {self.propagation_neighbors!r}"
                )
        for value in self.evaluation_neighbors:
            if value not in (9, 17):
                raise ValueError(
                    f"ModelConfig.evaluation_neighbors: each must be 9 or 17, got {self.evaluation_neighbors!r}"
                )
        for channels, groups in zip(self.feature_channels, self.num_groups):
            if channels % groups:
                raise ValueError(
                    f"ModelConfig: feature_channels {self.feature_channels} must be divisible by "
                    f"num_groups {self.num_groups} stage by stage"
                )
        for name in ("stage_upsampling", "refinement_upsampling"):
            if getattr(self, name) not in UPSAMPLING_MODES:
                raise ValueError(f"ModelConfig.{name}: expected one of {UPSAMPLING_MODES}, got {getattr(self, name)!r}")
        if not isinstance(self.refinement, bool) and self.refinement not in REFINEMENT_MODES:
            raise ValueError(
                f"ModelConfig.refinement: expected true, false or one of {REFINEMENT_MODES}, got {self.refinement!r}"
            )
        for name in ("spn_steps", "spn_channels"):
            value = getattr(self, name)
            low = 0 if name == "spn_steps" else 1
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"ModelConfig.{name}: expected an integer >= {low}, got {value!r}")
        for name in ("valid_view_normalisation",):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"ModelConfig.{name}: expected true or false, got {getattr(self, name)!r}")
        if self.num_initial_hypotheses < 2:
            raise ValueError(
                f"ModelConfig.num_initial_hypotheses: expected >= 2, got {self.num_initial_hypotheses}"
            )

    def _check_cvp(self) -> None:
        if self.backbone not in BACKBONES:
            raise ValueError(f"ModelConfig.backbone: expected one of {BACKBONES}, got {self.backbone!r}")
        if self.cvp_depth_sampling not in DEPTH_SAMPLINGS:
            raise ValueError(
                f"ModelConfig.cvp_depth_sampling: expected one of {DEPTH_SAMPLINGS}, got {self.cvp_depth_sampling!r}"
            )
        minimum = {"cvp_levels": 1, "cvp_initial_planes": 2, "cvp_residual_steps": 1, "cvp_feature_channels": 1,
                   "cvp_num_groups": 1, "cvp_regularisation_channels": 1}
        for name, lowest in minimum.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < lowest:
                raise ValueError(f"ModelConfig.{name}: expected an integer >= {lowest}, got {value!r}")
        if isinstance(self.cvp_residual_pixels, bool) or not isinstance(self.cvp_residual_pixels, (int, float)) \
                or not self.cvp_residual_pixels > 0:
            raise ValueError(f"ModelConfig.cvp_residual_pixels: expected a positive number, got {self.cvp_residual_pixels!r}")
        if self.cvp_feature_channels % self.cvp_num_groups:
            raise ValueError(
                f"ModelConfig: cvp_feature_channels {self.cvp_feature_channels} must be divisible by "
                f"cvp_num_groups {self.cvp_num_groups}"
            )

    def to_dict(self) -> dict[str, Any]:
        """Plain types only (lists for tuples): what a checkpoint stores."""
        return {f.name: (list(v) if isinstance(v, tuple) else v) for f, v in
                ((f, getattr(self, f.name)) for f in dataclasses.fields(self))}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ModelConfig":
        """Inverse of :meth:`to_dict`; unknown keys are an error (a typo must not pass silently)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"ModelConfig: unknown option(s) {unknown}")
        return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in data.items()})
