"""The PatchmatchNet-style network: features, learned PatchMatch, refinement, checkpoints.

Public: :class:`PatchmatchNet`, :class:`PatchmatchOutput`, :class:`ModelConfig`,
:func:`save_checkpoint`, :func:`load_checkpoint`, :class:`CheckpointError`, :func:`scale_intrinsics`.
"""

from .checkpoint import CheckpointError, load_checkpoint, load_weights, save_checkpoint
from .config import ModelConfig
from .network import PatchmatchNet, PatchmatchOutput, rigid_inverse, scale_intrinsics

__all__ = [
    "CheckpointError",
    "ModelConfig",
    "PatchmatchNet",
    "PatchmatchOutput",
    "load_checkpoint",
    "load_weights",
    "rigid_inverse",
    "save_checkpoint",
    "scale_intrinsics",
]
