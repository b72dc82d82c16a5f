"""The one place that turns a config's device name into a ``torch.device``."""

from __future__ import annotations

import torch

DEVICE_NAMES = ("auto", "cpu", "cuda")


def resolve_device(name: str, local_rank: int = 0, setting: str = "device") -> torch.device:
    """``auto`` -> ``cuda:local_rank`` when a GPU is visible, else ``cpu``; ``cpu``; ``cuda``.

    CUDA is queried here, when a stage asks, never at import time (importing must stay cheap and
    must not initialise a GPU context in a process that will fork).

    Args:
        name: ``auto``, ``cpu`` or ``cuda`` (the ``device`` setting of a config section).
        local_rank: the GPU index of this process (``LOCAL_RANK`` under torchrun).
        setting: the option's name for messages (``infer.device``).

    Raises:
        ValueError: an unknown name, or ``cuda`` on a machine without a usable GPU.
    """
    if name not in DEVICE_NAMES:
        raise ValueError(f"{setting}: expected one of {', '.join(DEVICE_NAMES)}, got {name!r}")
    if name == "cpu":
        return torch.device("cpu")
    available = torch.cuda.is_available()
    if name == "auto":
        return torch.device("cuda", local_rank) if available else torch.device("cpu")
    if not available:
        raise ValueError(f"{setting}: 'cuda' asked for but CUDA is not available (use 'auto' or 'cpu')")
    if local_rank >= torch.cuda.device_count():
        raise ValueError(f"{setting}: local rank {local_rank} but only {torch.cuda.device_count()} GPU(s) visible")
    return torch.device("cuda", local_rank)
