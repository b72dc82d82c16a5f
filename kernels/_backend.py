"""Shared plumbing for the kernel ops: input checks, CPU threads, CUDA interop, compilation.

Nothing here imports ``numba.cuda`` or ``cupy`` or queries a GPU at import time: every CUDA
function imports lazily inside its body, so ``import kernels`` works (and stays cheap) on a
machine without a GPU, and the CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``) can still be chosen
by a process before its first CUDA call.

Contents:

* input checks (``check_tensor``, ``check_same_device``, ``check_same_dtype``,
  ``compute_dtype``): raise ``TypeError``/``ValueError`` quoting what they got;
* ``numba_threads()``: context manager giving numba's CPU pool as many threads as torch uses;
* CUDA interop: ``numba_stream``/``cupy_stream`` wrap torch's *current* stream (kernels are
  enqueued where torch would enqueue its own work, so no synchronisation is needed), and
  ``as_numba_array``/``as_cupy_array`` view a CUDA tensor without copying
  (``__cuda_array_interface__`` / DLPack);
* compilation: ``numba_cuda_kernel`` and ``cupy_raw_kernel`` are ``lru_cache``'d per
  (device, dtype or signature, specialisation);
* compile checks for the test-suite: ``KERNEL_REGISTRY`` lists every numba.cuda kernel of the
  package with its signatures (the CUDA C kernels, ``kernels/<op>/kernels.cu``, have their own
  registry, NVRTC compile check, CPU emulation and cupy launch in ``kernels/_cuda_c``);
  ``compile_ptx_numba`` compiles one for a given compute capability without a GPU. The ssim and
  warp_image launches take their signatures from these entries (``registry_signature``); the
  others' own signatures are checked equal to them (tests/kernel_ops/test_cudasim_correlation_aggregation.py).

Notes for numba.cuda kernels: declare device functions with
``cuda.jit(device=True, inline="always")`` (a plain device function is compiled lazily for the
*current* device's compute capability, so ``cuda.compile_ptx`` would need a driver), and derive
constants from the array dtype (``t = x.dtype.type; t(0.5)``) so float32 kernels stay float32.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import os
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch

#: dtypes the kernels compute in natively.
NATIVE_DTYPES = (torch.float32, torch.float64)
#: dtypes accepted by the public functions; the low-precision ones are computed in float32.
ACCEPTED_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)

# --------------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------------


def check_tensor(
    value,
    name: str,
    *,
    shape: Sequence[int | None] | None = None,
    layout: str | None = None,
    dtypes: Sequence[torch.dtype] | None = ACCEPTED_DTYPES,
    min_size: Sequence[int | None] | None = None,
) -> torch.Tensor:
    """Check one tensor argument and return it.

    Args:
        value: the argument.
        name: its name in the public function, quoted in errors.
        shape: expected shape; ``None`` entries match any size (``len(shape)`` gives the ndim).
        layout: human name of the layout, e.g. ``"(B, C, H, W)"``, quoted in errors.
        dtypes: accepted dtypes (``None``: any).
        min_size: per-dimension lower bounds (``None`` entries: no bound).

    Raises:
        TypeError: not a tensor, or a dtype outside ``dtypes``.
        ValueError: wrong ndim, a size that differs from ``shape`` or below ``min_size``.
    """
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(value).__name__}")
    want = layout or (str(tuple("*" if s is None else s for s in shape)) if shape is not None else "")
    if shape is not None:
        if value.ndim != len(shape):
            raise ValueError(
                f"{name}: expected a {len(shape)}-d tensor {want}, got shape {tuple(value.shape)}"
            )
        for dim, (got, exp) in enumerate(zip(value.shape, shape)):
            if exp is not None and got != exp:
                raise ValueError(
                    f"{name}: expected shape {want} with size {exp} in dim {dim}, "
                    f"got shape {tuple(value.shape)}"
                )
    if min_size is not None:
        for dim, (got, low) in enumerate(zip(value.shape, min_size)):
            if low is not None and got < low:
                raise ValueError(
                    f"{name}: dim {dim} must be at least {low} for layout {want}, "
                    f"got shape {tuple(value.shape)}"
                )
    if dtypes is not None and value.dtype not in dtypes:
        names = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise TypeError(f"{name}: expected dtype in ({names}), got {str(value.dtype).replace('torch.', '')}")
    return value


def check_same_device(**tensors: torch.Tensor) -> torch.device:
    """Raise ``ValueError`` unless all tensors live on one device; return it."""
    devices = {n: t.device for n, t in tensors.items()}
    first = next(iter(devices.values()))
    if any(d != first for d in devices.values()):
        got = ", ".join(f"{n} on {d}" for n, d in devices.items())
        raise ValueError(f"all inputs must be on one device, got {got}")
    if first.type not in ("cpu", "cuda"):
        raise ValueError(f"unsupported device {first}: expected cpu or cuda")
    return first


def check_same_dtype(**tensors: torch.Tensor) -> torch.dtype:
    """Raise ``TypeError`` unless all tensors share one dtype; return it."""
    dtypes = {n: t.dtype for n, t in tensors.items()}
    first = next(iter(dtypes.values()))
    if any(d != first for d in dtypes.values()):
        got = ", ".join(f"{n} {str(d).replace('torch.', '')}" for n, d in dtypes.items())
        raise TypeError(f"all inputs must share one dtype, got {got}")
    return first


def check_batch(name_sizes: dict[str, int]) -> int:
    """Raise ``ValueError`` unless all batch sizes agree; return the batch size."""
    first = next(iter(name_sizes.values()))
    if any(b != first for b in name_sizes.values()):
        got = ", ".join(f"{n} B={b}" for n, b in name_sizes.items())
        raise ValueError(f"batch sizes differ: {got}")
    return first


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a kernel computes in: float64 stays, everything else computes in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


# --------------------------------------------------------------------------------------------
# CPU threads
# --------------------------------------------------------------------------------------------


def cpu_threads() -> int:
    """Threads for numba CPU kernels: torch's intra-op count, capped by numba's pool size."""
    import numba

    return max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))


@contextlib.contextmanager
def numba_threads(num_threads: int | None = None) -> Iterator[int]:
    """Run numba parallel kernels with ``num_threads`` (default ``cpu_threads()``), then restore.

    torch's ``set_num_threads`` is the one knob users turn; numba keeps its own pool, so each op
    mirrors torch's setting here instead of oversubscribing a small machine.
    """
    import numba

    wanted = cpu_threads() if num_threads is None else max(1, min(num_threads, numba.config.NUMBA_NUM_THREADS))
    previous = numba.get_num_threads()
    numba.set_num_threads(wanted)
    try:
        yield wanted
    finally:
        numba.set_num_threads(previous)


# --------------------------------------------------------------------------------------------
# CUDA interop (all lazy)
# --------------------------------------------------------------------------------------------


def numba_stream(device: torch.device):
    """A numba stream object wrapping torch's current stream on ``device`` (no copy, no sync)."""
    from numba import cuda

    return cuda.external_stream(torch.cuda.current_stream(device).cuda_stream)


def cupy_stream(device: torch.device):
    """A cupy stream wrapping torch's current stream on ``device``."""
    import cupy

    ptr = torch.cuda.current_stream(device).cuda_stream
    try:
        return cupy.cuda.ExternalStream(ptr, device.index if device.index is not None else torch.cuda.current_device())
    except TypeError:  # older cupy: no device argument
        return cupy.cuda.ExternalStream(ptr)


def as_numba_array(tensor: torch.Tensor):
    """Zero-copy numba device array view of a CUDA tensor (via ``__cuda_array_interface__``).

    ``sync=False``: the kernel is launched on torch's current stream, so ordering is already
    guaranteed and a device-wide sync would only cost time.
    """
    from numba import cuda

    return cuda.as_cuda_array(tensor.detach(), sync=False)


def as_cupy_array(tensor: torch.Tensor):
    """Zero-copy cupy view of a CUDA tensor (DLPack)."""
    import cupy

    return cupy.from_dlpack(tensor.detach())


@contextlib.contextmanager
def numba_device(device: torch.device) -> Iterator[None]:
    """Make ``device`` numba's current GPU (launches go to the current context).

    Every launch runs inside this, with ``numba_stream(device)`` created inside it too: numba
    launches on its current context, which is GPU 0 unless told, whatever device the tensors are
    on (and an external stream belongs to the context current when it is wrapped).
    """
    from numba import cuda

    with cuda.gpus[device_index(device)]:
        yield


def scalar_type(dtype: torch.dtype):
    """The numpy scalar type of a native dtype: kernel scalar arguments are passed as these, so
    the simulator computes in the kernel's dtype (a Python float would be float64 there) and the
    compiled kernel gets the value its signature's conversion would give."""
    import numpy

    return {torch.float32: numpy.float32, torch.float64: numpy.float64}[dtype]


def launch_config_1d(num_items: int, block: int = 256) -> tuple[int, int]:
    """(grid, block) for a one-thread-per-item launch."""
    return max(1, (num_items + block - 1) // block), block


@functools.lru_cache(maxsize=None)
def numba_cuda_kernel(module: str, attr: str, signature: str, device_index: int):
    """Compile ``module.attr`` with numba.cuda for ``signature`` on one device (cached).

    The key is (device, signature string = dtype specialisation, function): compiling eagerly for
    one signature avoids numba's per-call type dispatch and keeps one cubin per device. Compiled
    kernels are also cached on disk (numba-cuda's ``cache=True``).
    """
    from numba import cuda

    try:
        pyfunc = getattr(importlib.import_module(module), attr)
        if getattr(cuda, "simulator_enabled", False) or os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
            return cuda.jit(pyfunc)  # the simulator ignores signatures
        with cuda.gpus[device_index]:
            # cache=True: the cubin goes to __pycache__ (or numba's user cache), so a new process
            # loads it instead of compiling again (per compute capability).
            return cuda.jit(signature, cache=True)(pyfunc)
    except AttributeError as error:
        if "numpy" not in str(error):
            raise
        raise RuntimeError(numpy_mismatch_message(f"{module}.{attr}", error)) from error


def numpy_mismatch_message(what: str, error: BaseException) -> str:
    """The error for a numba-cuda that uses NumPy API its NumPy no longer has.

    Seen on a GPU machine (2026-11-26): numba-cuda 0.30.4 with NumPy 2.5.2 fails at the first
    kernel compile with ``module 'numpy' has no attribute 'row_stack'`` (removed in NumPy 2.5).
    """
    import numpy

    try:
        from importlib.metadata import version

        numba_cuda = version("numba-cuda")
    except Exception:  # noqa: BLE001 - the message is still useful without the version
        numba_cuda = "?"
    return (
        f"numba-cuda {numba_cuda} cannot compile {what} with NumPy {numpy.__version__} ({error}). "
        "Install the pinned versions (requirements.txt: numpy==2.4.6, numba-cuda==0.30.4) or a "
        "numba-cuda release that supports this NumPy."
    )


@functools.lru_cache(maxsize=None)
def cupy_raw_kernel(source: str, name: str, device_index: int, options: tuple[str, ...] = ("--std=c++17",)):
    """Compile a CUDA C kernel with cupy (NVRTC) for one device (cached per source and name)."""
    import cupy

    with cupy.cuda.Device(device_index):
        kernel = cupy.RawKernel(source, name, options=options)
        kernel.compile()
    return kernel


def device_index(device: torch.device) -> int:
    return device.index if device.index is not None else torch.cuda.current_device()


# --------------------------------------------------------------------------------------------
# Compile-check registry
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KernelSpec:
    """One CUDA kernel to compile-check without a GPU.

    Attributes:
        name: readable id (used as the pytest id).
        module: importable module holding the numba.cuda Python kernel function.
        attr: its attribute name in ``module``.
        signatures: numba signature strings, float32 first, then float64 (see ``_sig``).
    """

    name: str
    module: str
    attr: str
    signatures: tuple[str, ...]


# 4-d C-contiguous arrays of each native dtype, spelled as numba signatures.
_F4 = {"float32": "float32[:, :, :, ::1]", "float64": "float64[:, :, :, ::1]"}
_F3 = {"float32": "float32[:, :, ::1]", "float64": "float64[:, :, ::1]"}


def _sig(template: str) -> tuple[str, ...]:
    """Expand a signature template with ``{f4}``/``{f3}``/``{f}`` for float32 and float64."""
    return tuple(template.format(f4=_F4[t], f3=_F3[t], f=t) for t in ("float32", "float64"))


#: Every CUDA kernel of the package, one entry each (tests/kernel_ops/test_compile.py fails for a
#: ``*_kernel`` function of a ``kernels.<op>.cuda`` module that is missing here).
KERNEL_REGISTRY: list[KernelSpec] = [
    KernelSpec("ssim_fwd", "kernels.ssim.cuda", "ssim_fwd_kernel",
               _sig("void({f3}, {f3}, {f3}, boolean)")),
    KernelSpec("ssim_bwd", "kernels.ssim.cuda", "ssim_bwd_kernel",
               _sig("void({f3}, {f3}, {f3}, {f3}, {f3}, boolean)")),
    KernelSpec("warp_image_fwd", "kernels.warp_image.cuda", "warp_image_fwd_kernel",
               _sig("void({f4}, {f4}, {f3}, {f4}, uint8[:, :, :, ::1])")),
    KernelSpec("warp_image_bwd", "kernels.warp_image.cuda", "warp_image_bwd_kernel",
               _sig("void({f4}, {f4}, {f3}, {f4}, {f4}, {f4}, boolean)")),
    KernelSpec("warp_image_bwd_src_corners", "kernels.warp_image.cuda", "warp_image_bwd_src_corners_kernel",
               _sig("void({f4}, {f4}, {f3}, {f4}, int64[:, :, :, ::1])")),
    KernelSpec("spn_fwd_step", "kernels.spn_propagation.cuda", "spn_fwd_step_kernel",
               _sig("void({f3}, {f4}, {f3})")),
    KernelSpec("spn_bwd_step", "kernels.spn_propagation.cuda", "spn_bwd_step_kernel",
               _sig("void({f3}, {f4}, {f3}, {f3}, {f4})")),
    KernelSpec("warp_correlation_fwd", "kernels.warp_correlation.cuda", "warp_correlation_fwd_kernel",
               _sig("void({f4}, {f4}, {f}[:, ::1], {f}[::1], {f4}, {f}[:, :, :, :, ::1], uint8[:, :, :, ::1], "
                    "{f}, {f}, {f}, {f}, {f})")),
    KernelSpec("warp_correlation_bwd_ref", "kernels.warp_correlation.cuda", "warp_correlation_bwd_ref_kernel",
               _sig("void({f}[:, :, :, :, ::1], {f4}, {f}[:, ::1], {f}[::1], {f4}, {f4}, {f}, {f}, {f}, {f}, {f})")),
    KernelSpec("warp_correlation_bwd_src", "kernels.warp_correlation.cuda", "warp_correlation_bwd_src_kernel",
               _sig("void({f}[:, :, :, :, ::1], {f4}, {f}[:, ::1], {f}[::1], {f4}, {f4}, {f}, {f}, {f}, {f}, {f})")),
    KernelSpec("warp_correlation_bwd_src_corners", "kernels.warp_correlation.cuda",
               "warp_correlation_bwd_src_corners_kernel",
               _sig("void({f}[:, ::1], {f}[::1], {f4}, {f}[:, :, :, :, ::1], int64[:, :, :, :, ::1], int64, int64, "
                    "{f}, {f}, {f}, {f})")),
    KernelSpec("adaptive_aggregation_fwd", "kernels.adaptive_aggregation.cuda", "adaptive_aggregation_fwd_kernel",
               _sig("void({f4}, {f4}, {f}[:, :, :, :, ::1], {f}[::1], {f4}, {f}, {f}, {f})")),
    KernelSpec("adaptive_aggregation_bwd_offsets", "kernels.adaptive_aggregation.cuda",
               "adaptive_aggregation_bwd_offsets_kernel",
               _sig("void({f4}, {f4}, {f4}, {f4}, {f}[:, :, :, :, ::1], {f}[::1], {f4}, {f}[:, :, :, :, ::1], "
                    "{f}, {f}, {f})")),
    KernelSpec("adaptive_aggregation_bwd_cost", "kernels.adaptive_aggregation.cuda",
               "adaptive_aggregation_bwd_cost_kernel",
               _sig("void({f4}, {f4}, {f}[:, :, :, :, ::1], {f}[::1], {f4}, {f}, {f}, {f})")),
    KernelSpec("adaptive_aggregation_bwd_cost_terms", "kernels.adaptive_aggregation.cuda",
               "adaptive_aggregation_bwd_cost_terms_kernel",
               _sig("void({f4}, {f4}, {f}[:, :, :, :, ::1], {f}[::1], {f}[:, :, :, :, ::1], "
                    "int64[:, :, :, :, ::1], {f}, {f}, {f})")),
]


def kernel_spec(name: str) -> KernelSpec:
    """The registry entry called ``name``."""
    for spec in KERNEL_REGISTRY:
        if spec.name == name:
            return spec
    raise KeyError(f"no kernel {name!r} in KERNEL_REGISTRY")


def registry_signature(name: str, dtype: torch.dtype) -> str:
    """The numba signature of registry kernel ``name`` for ``dtype`` (float32 or float64).

    Signatures built with ``_sig`` list float32 first, then float64.
    """
    sigs = kernel_spec(name).signatures
    if dtype == torch.float32:
        return sigs[0]
    if dtype == torch.float64:
        return sigs[1]
    raise TypeError(f"{name}: no CUDA kernel for dtype {dtype}; expected float32 or float64")


def compile_ptx_numba(spec: KernelSpec, signature: str, cc: tuple[int, int]) -> str:
    """PTX of a numba.cuda kernel for compute capability ``cc`` (needs NVVM, not a GPU)."""
    from numba import cuda

    pyfunc = getattr(importlib.import_module(spec.module), spec.attr)
    ptx, _ = cuda.compile_ptx(pyfunc, signature, cc=cc)
    return ptx


# --------------------------------------------------------------------------------------------
# numba's thread pool next to torch's
# --------------------------------------------------------------------------------------------


def prefer_workqueue_threading() -> None:
    """Make numba's parallel kernels use its ``workqueue`` pool instead of OpenMP.

    torch ships its own libgomp; numba's ``omp`` layer starts a second OpenMP runtime. Each
    runtime's idle workers spin after a parallel region, so on a small machine a numba kernel
    called right after a torch op waits for cores held by spinning torch workers (and the other
    way round). Measured on the 2-core box: a tiny ``warp_correlation`` call took ~21 ms with the
    omp layer, ~1.5 ms with ``workqueue`` (and ~1.2 ms with ``OMP_WAIT_POLICY=PASSIVE``).

    Has effect only before numba's first parallel launch in the process, and never overrides an
    explicit ``NUMBA_THREADING_LAYER`` in the environment. Caveat (numba's documentation):
    ``workqueue`` is not thread-safe; launching parallel kernels from several Python threads at
    once aborts. Set ``NUMBA_THREADING_LAYER=omp`` (or ``tbb``) for such a program.
    """
    import numba

    if "NUMBA_THREADING_LAYER" not in os.environ:
        numba.config.THREADING_LAYER = "workqueue"
