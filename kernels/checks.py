"""Checks of tensor values that never wait for the GPU.

Reading a CUDA tensor's values on the host (``bool(tensor)``, ``.item()``, ``.tolist()``) waits until
the GPU has run everything queued before the read: one such check per forward stalls the CPU that
should be queueing the next kernels (and cannot be captured in a CUDA graph). :func:`require`
checks a condition where it can be read for free and queues it otherwise:

* on CPU tensors, at once: a ``ValueError`` with the caller's message (the message may read values);
* on other devices, as ``torch._assert_async``: the check runs on the device in stream order and a
  failure surfaces as a device-side assertion (a ``RuntimeError``) at the next synchronisation;
  the message is fixed and reads no values. It is a last line of defence: the callers' inputs are
  checked on the host before they reach the device (the scene's depth ranges when it is read).
"""

from __future__ import annotations

from typing import Callable

import torch

__all__ = ["require", "values_on_host"]


def values_on_host(tensor: torch.Tensor) -> bool:
    """Whether ``tensor``'s values can be read without waiting for a device (a CPU tensor)."""
    return tensor.device.type == "cpu"


def require(condition: torch.Tensor, message: str, details: Callable[[], str] | None = None) -> None:
    """Check that every element of the boolean ``condition`` is true.

    Args:
        condition: a boolean tensor of any shape (all of it must hold).
        message: what must hold, the error's text.
        details: optional, makes text appended to the message on the host branch only (it may
            read the values: ``lambda: f", got {x.tolist()}"``).

    Raises:
        ValueError: on a CPU tensor, at once.
        RuntimeError: on a device, later (a device-side assertion at the next synchronisation).
    """
    holds = condition.all()
    if values_on_host(holds):
        if not bool(holds):
            raise ValueError(message + (details() if details is not None else ""))
        return
    torch._assert_async(holds, message)
