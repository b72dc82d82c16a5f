"""Training of the network: samples, schedule and step budgets, one optimizer step, the loop, DDP.

Public: :func:`train` (the loop), :class:`ViewSampler`, :func:`lr_multiplier`,
:func:`finetune_steps`, :func:`train_step` (and
:func:`symmetric_train_step`, MVS^2's), :class:`Distributed`, :func:`read_labels`.
Submodules import lazily where they need the network or the losses.
"""

from .distributed import Distributed
from .sampler import ViewSampler, mix_seed
from .schedule import finetune_steps, lr_multiplier

__all__ = ["Distributed", "ViewSampler", "finetune_steps", "lr_multiplier", "mix_seed"]
