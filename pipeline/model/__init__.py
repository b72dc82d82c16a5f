"""The networks: PatchmatchNet (features, learned PatchMatch, refinement), CVP-MVSNet, checkpoints.

Public: :class:`PatchmatchNet`, :class:`CVPMVSNet`, :func:`build_model` (the one
``ModelConfig.backbone`` names), :class:`PatchmatchOutput` (what both return), :class:`ModelConfig`,
:func:`save_checkpoint`, :func:`load_checkpoint`, :class:`CheckpointError`, :func:`scale_intrinsics`.
"""

from .checkpoint import CheckpointError, build_model, load_checkpoint, load_weights, save_checkpoint
from .config import ModelConfig
from .cvp import CVPMVSNet
from .network import PatchmatchNet, PatchmatchOutput, rigid_inverse, scale_intrinsics

__all__ = [
    "CVPMVSNet",
    "CheckpointError",
    "ModelConfig",
    "PatchmatchNet",
    "PatchmatchOutput",
    "build_model",
    "load_checkpoint",
    "load_weights",
    "rigid_inverse",
    "save_checkpoint",
    "scale_intrinsics",
]
