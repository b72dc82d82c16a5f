"""Launch the CUDA C kernels on a GPU with cupy (imported on the first CUDA launch, never before).

A ``cupy.RawModule`` per (op, dtype, device), compiled by NVRTC for that device on first use
(``lru_cache``; cupy also keeps the CUBIN in its on-disk kernel cache). Launches go to torch's
*current* stream on the tensors' device (``kernels._backend.cupy_stream``), so they are ordered
with torch's own work and need no synchronisation. Tensors are passed as their raw device
addresses (a 64-bit integer has a pointer parameter's size and alignment in the launch's argument
buffer), so a launch wraps no tensor and copies nothing; scalars go as numpy scalars of the
parameter's declared type (kernel arguments: no host-to-device copy).
"""

from __future__ import annotations

import functools

import numpy
import torch

from .. import _backend
from . import compile_defines, source_text

_NUMPY = {
    torch.float32: numpy.float32, torch.float64: numpy.float64, torch.int32: numpy.int32,
    torch.int64: numpy.int64, torch.uint8: numpy.uint8,
}


@functools.lru_cache(maxsize=None)
def module(op: str, dtype: torch.dtype, device_index: int):
    """The compiled ``kernels/<op>/kernels.cu`` for ``dtype`` on one GPU."""
    import cupy

    with cupy.cuda.Device(device_index):
        compiled = cupy.RawModule(code=source_text(op), options=("--std=c++17", *compile_defines(dtype)))
        compiled.compile()
    return compiled


@functools.lru_cache(maxsize=None)
def function(op: str, kernel: str, dtype: torch.dtype, device_index: int):
    return module(op, dtype, device_index).get_function(kernel)


def launch(op: str, kernel: str, dtype: torch.dtype, device: torch.device, grid: tuple, block: tuple,
           packed: list[tuple]) -> None:
    import cupy

    index = _backend.device_index(device)
    compiled = function(op, kernel, dtype, index)
    args = tuple(numpy.uint64(value) if kind == "pointer" else _NUMPY[want](value) for kind, value, want in packed)
    with cupy.cuda.Device(index), _backend.cupy_stream(device):
        compiled(grid, block, args)
