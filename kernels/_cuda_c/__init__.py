"""CUDA C kernels: sources, registry, argument packing, backend choice, and the launch dispatcher.

The second CUDA backend of the package next to numba.cuda. Layout and rules:

* **Sources.** An op's CUDA C kernels live in ``kernels/<op>/kernels.cu`` as ``extern "C" __global__``
  functions (device functions ``__device__ __forceinline__``), written in a plain C++17 subset: no includes,
  no shared memory, no ``__syncthreads``, no warp intrinsics (so that every kernel runs in the CPU
  emulation below), ``atomicAdd`` only for a scatter that no gather can replace. The floating type is
  ``scalar_t``, defined by the compiler flags (``-Dscalar_t=float`` or ``double``): one source, one
  compile per dtype. Integer parameters are ``int`` (32-bit index math; the launch checks that every
  tensor has fewer than 2**31 elements) or ``long long``; masks are ``unsigned char``.
* **Registry.** :data:`SOURCES` names every ``kernels.cu`` and the kernels it must define
  (tests/kernel_ops/test_cuda_c.py fails for a ``kernels.cu`` missing here, or for a kernel set that
  differs from the file's). :func:`kernel_params` parses a kernel's parameter list from the source;
  every launch packs its arguments against it (count, pointer element type against tensor dtype,
  scalar types), so a host/kernel mismatch raises instead of reading garbage.
* **Compile check without a GPU** (``nvrtc.py``): the ``nvidia-cuda-nvrtc`` wheel's ``libnvrtc``
  through ctypes compiles each source for ``sm_80`` and ``sm_90`` (to CUBIN, so ptxas runs too) and
  returns the log.
* **CPU emulation** (``emulate.py``): the same source compiled by the system C++ compiler with
  ``emulation.hpp`` force-included (``__global__`` & co. as plain C++, ``atomicAdd`` as a plain add,
  a launcher looping over the grid), loaded with ctypes. :func:`launch` on CPU tensors runs it, so an
  op's ``cuda_c.py`` launch code runs unchanged on CPU tensors in the tests, against the torch
  reference (and, with ``SELFMVS_CUDA_C_SANITIZE=1``, under the address sanitizer). Not a
  production path: the public ops never send CPU tensors here.
* **GPU launch** (``gpu.py``): cupy ``RawModule`` (NVRTC) compiled once per (op, dtype, device),
  launched on torch's *current* stream with tensors passed as raw device pointers (no copy, no
  DLPack wrapper, no synchronisation) and constants as kernel arguments (no host-to-device copy).
  cupy is imported lazily, on the first CUDA launch; nothing here queries CUDA at import.

Launch API (what an op's ``cuda_c.py`` calls)::

    launch("warp_image", "warp_image_fwd", dtype, grid, block, src, depth, proj, out, valid, 3, 1.0e-6)

``grid``/``block`` are ints or (x, y, z) tuples; tensors must be contiguous and on one device, which
picks the path (``cuda``: cupy, ``cpu``: emulation); Python ints/floats are converted to the
parameter's declared type. :func:`launch_config_1d` gives the usual one-thread-per-item shape.

Adding an op: write ``kernels/<op>/kernels.cu`` (the rules above; ``kernels/warp_image/kernels.cu``
is a short example), list its kernels in :data:`SOURCES`, write ``kernels/<op>/cuda_c.py`` with the
same functions as the op's ``cuda.py`` calling :func:`launch`, add ``CUDA_BACKEND`` and the
:func:`cuda_backend` branch to the op's dispatch, the emulated and ``cuda`` cases to
tests/kernel_ops/test_cuda_c.py (the NVRTC and sanitizer tests pick the source up by themselves)
and the op to ``CUDA_C_OPS`` in bench/bench_cuda_ops.py.

Backend choice: each op's ``__init__.py`` declares ``CUDA_BACKEND`` (``"numba"`` or ``"cuda_c"``);
:func:`cuda_backend` returns it unless ``SELFMVS_CUDA_BACKEND`` overrides it, read at each call:
``SELFMVS_CUDA_BACKEND=cuda_c`` (every op that has CUDA C kernels) or a list such as
``SELFMVS_CUDA_BACKEND=warp_image=cuda_c,warp_correlation=numba``.
"""

from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

__all__ = [
    "SOURCES", "BACKENDS", "ENV_VAR", "source_path", "source_text", "kernel_names_in_source",
    "kernel_params", "cuda_backend", "launch", "launch_config_1d", "scalar_c_type", "check_int32_sizes",
]

KERNELS_DIR = Path(__file__).resolve().parents[1]
#: op -> the ``extern "C" __global__`` kernels its ``kernels/<op>/kernels.cu`` defines.
SOURCES: dict[str, tuple[str, ...]] = {
    "warp_image": ("warp_image_fwd", "warp_image_bwd", "warp_image_bwd_src_corners"),
    "warp_correlation": (
        "warp_correlation_fwd", "warp_correlation_bwd_ref", "warp_correlation_bwd_src",
        "warp_correlation_bwd_src_corners",
    ),
    "ssim": ("ssim_fwd", "ssim_bwd_coef", "ssim_bwd_gather"),
    "adaptive_aggregation": ("aa_fwd", "aa_bwd_norm", "aa_bwd_offsets", "aa_bwd_cost_atomic", "aa_bwd_cost_terms"),
    "spn_propagation": ("spn_fwd_step", "spn_bwd_step"),
}
BACKENDS = ("numba", "cuda_c")
ENV_VAR = "SELFMVS_CUDA_BACKEND"
#: the architectures the compile check targets (A100, H100/H200)
ARCHS = ("sm_80", "sm_90")


def source_path(op: str) -> Path:
    if op not in SOURCES:
        raise KeyError(f"no CUDA C source registered for op {op!r} (kernels/_cuda_c/__init__.py SOURCES)")
    return KERNELS_DIR / op / "kernels.cu"


def source_text(op: str) -> str:
    return source_path(op).read_text()


def scalar_c_type(dtype: torch.dtype) -> str:
    """The C type ``scalar_t`` stands for with ``dtype``."""
    if dtype == torch.float32:
        return "float"
    if dtype == torch.float64:
        return "double"
    raise TypeError(f"CUDA C kernels compute in float32 or float64, got {dtype}")


def compile_defines(dtype: torch.dtype) -> tuple[str, ...]:
    """The preprocessor flags of one dtype's compile (NVRTC, cupy and the emulation alike)."""
    return (f"-Dscalar_t={scalar_c_type(dtype)}",)


# ----------------------------------------------------------------------------------------------
# Parsing the kernels' parameter lists
# ----------------------------------------------------------------------------------------------

_KERNEL_RE = re.compile(r'extern\s+"C"\s+__global__\s+void\s+(\w+)\s*\(([^)]*)\)', re.S)
_COMMENT_RE = re.compile(r"//[^\n]*|/\*.*?\*/", re.S)
#: C element/scalar type -> torch dtype (``scalar_t``: the compile's dtype)
_C_TYPES = {
    "scalar_t": None, "float": torch.float32, "double": torch.float64, "int": torch.int32,
    "long long": torch.int64, "unsigned char": torch.uint8,
}


@dataclass(frozen=True)
class Param:
    """One kernel parameter: ``pointer`` to ``c_type`` elements, or a ``c_type`` value."""

    name: str
    c_type: str
    pointer: bool
    const: bool

    def dtype(self, scalar: torch.dtype) -> torch.dtype:
        return scalar if self.c_type == "scalar_t" else _C_TYPES[self.c_type]


def kernel_names_in_source(text: str) -> list[str]:
    return [m.group(1) for m in _KERNEL_RE.finditer(_COMMENT_RE.sub("", text))]


def _parse_param(op: str, kernel: str, text: str) -> Param:
    words = text.replace("*", " * ").split()
    if len(words) < 2:
        raise ValueError(f"kernels/{op}/kernels.cu: {kernel}: cannot read parameter {text!r}")
    name = words[-1]
    rest = [w for w in words[:-1] if w not in ("__restrict__",)]
    pointer = rest.count("*")
    const = "const" in rest
    c_type = " ".join(w for w in rest if w not in ("*", "const"))
    if pointer > 1 or c_type not in _C_TYPES:
        raise ValueError(
            f"kernels/{op}/kernels.cu: {kernel}: parameter {text.strip()!r} has a type outside the subset "
            f"({', '.join(_C_TYPES)}, or one pointer to them)"
        )
    return Param(name, c_type, bool(pointer), const)


@functools.lru_cache(maxsize=None)
def _all_params(op: str, text: str) -> dict[str, tuple[Param, ...]]:
    out = {}
    for match in _KERNEL_RE.finditer(_COMMENT_RE.sub("", text)):
        body = match.group(2).strip()
        out[match.group(1)] = tuple(_parse_param(op, match.group(1), p) for p in body.split(",")) if body else ()
    return out


def kernel_params(op: str, kernel: str) -> tuple[Param, ...]:
    """The parameters of ``kernel`` as declared in ``kernels/<op>/kernels.cu``."""
    params = _all_params(op, source_text(op))
    if kernel not in params:
        raise KeyError(f"kernels/{op}/kernels.cu defines no extern \"C\" __global__ {kernel} (has {sorted(params)})")
    return params[kernel]


def pack_args(op: str, kernel: str, dtype: torch.dtype, device: torch.device, args: Sequence) -> list[tuple]:
    """Check ``args`` against the kernel's parameters; returns (kind, value, torch dtype) per argument:
    ``("pointer", data_ptr, dtype)`` for a tensor, ``("scalar", python number, dtype)`` otherwise."""
    params = kernel_params(op, kernel)
    if len(args) != len(params):
        raise TypeError(f"{op}/{kernel}: expected {len(params)} arguments ({', '.join(p.name for p in params)}), "
                        f"got {len(args)}")
    packed = []
    for param, value in zip(params, args):
        want = param.dtype(dtype)
        if param.pointer:
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"{op}/{kernel}: argument {param.name} must be a tensor, got {type(value).__name__}")
            if value.dtype != want:
                raise TypeError(f"{op}/{kernel}: argument {param.name} must be {want}, got {value.dtype}")
            if value.device != device:
                raise ValueError(f"{op}/{kernel}: argument {param.name} is on {value.device}, expected {device}")
            if not value.is_contiguous():
                raise ValueError(f"{op}/{kernel}: argument {param.name} must be contiguous, got strides {value.stride()}")
            packed.append(("pointer", value.data_ptr(), want))
        else:
            if isinstance(value, torch.Tensor) or isinstance(value, bool) and want.is_floating_point:
                raise TypeError(f"{op}/{kernel}: argument {param.name} must be a Python number, got {value!r}")
            if not want.is_floating_point and int(value) != value:
                raise TypeError(f"{op}/{kernel}: argument {param.name} must be an integer, got {value!r}")
            if want == torch.int32 and not -(2**31) <= int(value) < 2**31:
                raise ValueError(f"{op}/{kernel}: argument {param.name} = {value} does not fit a 32-bit int")
            packed.append(("scalar", float(value) if want.is_floating_point else int(value), want))
    return packed


# ----------------------------------------------------------------------------------------------
# Backend choice and launch
# ----------------------------------------------------------------------------------------------


def cuda_backend(op: str, default: str) -> str:
    """The CUDA backend of ``op``: ``default`` (the op's ``CUDA_BACKEND``) unless ``SELFMVS_CUDA_BACKEND``
    names another (see the module docstring). Ops without CUDA C kernels always get ``"numba"``."""
    value = os.environ.get(ENV_VAR, "").strip()
    chosen = default
    if value:
        for item in value.split(","):
            name, _, backend = item.strip().rpartition("=")
            if backend not in BACKENDS:
                raise ValueError(f"{ENV_VAR}={value!r}: backend {backend!r} is not one of {BACKENDS}")
            if name in ("", op):
                chosen = backend
    if chosen not in BACKENDS:
        raise ValueError(f"{op}: CUDA_BACKEND {chosen!r} is not one of {BACKENDS}")
    return chosen if op in SOURCES else "numba"


def launch_config_1d(num_items: int, block: int = 256) -> tuple[int, int]:
    """(grid, block) for one thread per item."""
    return max(1, (num_items + block - 1) // block), block


def check_int32_sizes(op: str, **tensors: torch.Tensor) -> None:
    """Raise ``ValueError`` unless every tensor has fewer than 2**31 elements (32-bit index math)."""
    for name, tensor in tensors.items():
        if tensor.numel() >= 2**31:
            raise ValueError(
                f"{op}: {name} has {tensor.numel()} elements; the CUDA C kernels index with 32-bit ints "
                f"(at most 2**31 - 1). Use the numba backend ({ENV_VAR}={op}=numba) for this size."
            )


def _dims(value) -> tuple[int, int, int]:
    dims = (value,) if isinstance(value, int) else tuple(value)
    if not 1 <= len(dims) <= 3 or any(int(d) < 1 for d in dims):
        raise ValueError(f"grid/block must be 1 to 3 positive sizes, got {value!r}")
    return tuple(int(d) for d in dims) + (1,) * (3 - len(dims))


def launch(op: str, kernel: str, dtype: torch.dtype, grid, block, *args, device: torch.device | None = None) -> None:
    """Launch ``kernel`` of ``kernels/<op>/kernels.cu`` compiled for ``dtype`` on the tensors' device.

    CUDA tensors: cupy (``gpu.py``), on torch's current stream, asynchronous. CPU tensors: the
    emulation (``emulate.py``), synchronous; raises ``RuntimeError`` when no C++ compiler exists.
    """
    if device is None:
        device = next(a.device for a in args if isinstance(a, torch.Tensor))
    packed = pack_args(op, kernel, dtype, device, args)
    if device.type == "cuda":
        from . import gpu

        gpu.launch(op, kernel, dtype, device, _dims(grid), _dims(block), packed)
    elif device.type == "cpu":
        from . import emulate

        emulate.launch(op, kernel, dtype, _dims(grid), _dims(block), packed)
    else:
        raise ValueError(f"{op}/{kernel}: CUDA C kernels run on cuda (or emulated on cpu), got {device}")
