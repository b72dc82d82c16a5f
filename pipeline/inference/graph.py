"""The network's per-view forward as a CUDA graph (``infer.cuda_graph``): captured once per input
shape, replayed for every view of that shape.

On a GPU the forward of one view is some thousand small kernel launches; launched one by one from
Python the host sets the pace (1-13 ms per op whatever the size, H100/H200 runs 2026-12). A CUDA
graph records the launches once and replays them with one call. What is captured is the forward
*given the features* (``model(images, ..., features=...)``): its shapes are fixed by the image
sizes and the number of sources, the same for every view of a scene (and for the mirrored pass,
whose views have the same sizes). The feature pyramids of the views the cache computes stay eager:
they are computed once per view as the cache misses, not once per reference.

How: the inputs are copied into static buffers (same shape, strides and dtype; a zero-stride
placeholder image stays a placeholder), the forward runs once eagerly on a side stream (kernels
loaded, cuDNN's choices made), is captured into a :class:`torch.cuda.CUDAGraph` with its own memory
pool, and each call copies its inputs into the buffers, replays and returns copies of the
graph's outputs (the next replay overwrites those; a device-side copy of a few maps costs
microseconds). A capture that fails (a kernel that cannot be captured, too little memory) logs a
WARNING and the forward stays eager for the rest of the run.

Memory: one pool per captured shape (about one eager forward's peak) plus the static inputs, on
top of the cache's features. CPU tensors: the plain forward, nothing captured.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Callable

import torch

from pipeline.model.network import PatchmatchOutput

log = logging.getLogger("selfmvs.infer")

__all__ = ["CudaGraphCapture", "GraphedForward"]


class CudaGraphCapture:
    """How :class:`GraphedForward` captures: ``torch.cuda.CUDAGraph`` on CUDA tensors."""

    def supports(self, device: torch.device) -> bool:
        return device.type == "cuda"

    def capture(self, run: Callable[[], Any], device: torch.device) -> tuple[Any, Callable[[], None]]:
        """Warm ``run`` up once on a side stream, capture it; returns (its outputs, replay)."""
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            run()
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            outputs = run()
        return outputs, graph.replay


def _static_like(tensor: torch.Tensor) -> torch.Tensor:
    """An empty buffer with ``tensor``'s shape, strides, dtype and device (a zero-stride
    placeholder: a one-element buffer expanded the same way)."""
    if tensor.numel() > 0 and all(s == 0 for s in tensor.stride()):
        return torch.empty((), dtype=tensor.dtype, device=tensor.device).expand(tensor.shape)
    return torch.empty_strided(tensor.shape, tensor.stride(), dtype=tensor.dtype, device=tensor.device)


def _fill(static: torch.Tensor, value: torch.Tensor) -> None:
    """Copy ``value`` into ``static`` (same shape and strides: the key of the graph says so)."""
    if static.numel() > 0 and all(s == 0 for s in static.stride()):
        static.as_strided((), ()).copy_(value.as_strided((), ()), non_blocking=True)
    else:
        static.copy_(value, non_blocking=True)


@dataclasses.dataclass
class _Captured:
    inputs: list[torch.Tensor]
    outputs: PatchmatchOutput
    replay: Callable[[], None]


class GraphedForward:
    """The network's forward with ``features=``, as a CUDA graph per input shape where possible.

    Called like the network (``images, intrinsics, cam_from_world, depth_min, depth_max,
    features=``); returns its :class:`PatchmatchOutput`. ``enabled`` False, tensors on a device the
    capture does not support (the CPU), or a failed capture: the plain forward.

    Args:
        model: the network in evaluation mode (its weights must not change while graphs are kept).
        enabled: ``infer.cuda_graph``.
        capture: how to capture (default :class:`CudaGraphCapture`; the tests give a stand-in).

    Attributes:
        captures, replays: how many graphs were captured and how many calls replayed one (the
            call that captures replays too).
        failed: the error of a failed capture (the forward is eager since), else None.
    """

    def __init__(self, model: torch.nn.Module, enabled: bool = True, capture: CudaGraphCapture | None = None) -> None:
        self.model = model
        self.enabled = enabled
        self.capture = capture if capture is not None else CudaGraphCapture()
        self._graphs: dict[tuple, _Captured] = {}
        self.captures = self.replays = 0
        self.failed: str | None = None

    @property
    def config(self):
        return self.model.config

    def __call__(
        self,
        images: list[torch.Tensor],
        intrinsics: list[torch.Tensor],
        cam_from_world: list[torch.Tensor],
        depth_min: torch.Tensor,
        depth_max: torch.Tensor,
        features: list[dict[int, torch.Tensor]] | None = None,
    ) -> PatchmatchOutput:
        arguments = (images, intrinsics, cam_from_world, depth_min, depth_max, features)
        device = images[0].device
        if not self.enabled or self.failed is not None or features is None or not self.capture.supports(device):
            return self.model(*arguments[:5], features=features)
        flat, layout = _flatten(arguments)
        key = (layout, tuple((tuple(t.shape), t.stride(), t.dtype, t.device) for t in flat))
        entry = self._graphs.get(key)
        if entry is None:
            entry = self._capture(flat, layout, device)
            if entry is None:
                return self.model(*arguments[:5], features=features)
            self._graphs[key] = entry
        for static, value in zip(entry.inputs, flat):
            _fill(static, value)
        entry.replay()  # also after the capture, which records the kernels without running them
        self.replays += 1
        return _copied(entry.outputs)

    def _capture(self, flat: list[torch.Tensor], layout, device: torch.device) -> _Captured | None:
        static = [_static_like(t) for t in flat]
        for buffer, value in zip(static, flat):
            _fill(buffer, value)  # the warm-up run reads them
        images, intrinsics, poses, depth_min, depth_max, features = _unflatten(static, layout)

        def run():
            return self.model(images, intrinsics, poses, depth_min, depth_max, features=features)

        try:
            outputs, replay = self.capture.capture(run, device)
        except Exception as error:  # noqa: BLE001 - any failure to capture falls back to the eager forward
            self.failed = f"{type(error).__name__}: {error}"
            log.warning("infer.cuda_graph: capturing the forward failed (%s); the forward stays eager", self.failed)
            return None
        self.captures += 1
        shape = tuple(flat[0].shape[-2:])
        log.info("infer.cuda_graph: captured the forward for %d views at %s", len(images), "x".join(map(str, shape)))
        return _Captured(static, outputs, replay)


def _copied(output: PatchmatchOutput) -> PatchmatchOutput:
    """The outputs as tensors of their own: the next replay overwrites the graph's."""
    return PatchmatchOutput(
        depth=output.depth.clone(),
        confidence=output.confidence.clone(),
        stage_depths={stage: [d.clone() for d in depths] for stage, depths in output.stage_depths.items()},
        view_weights=output.view_weights.clone(),
    )


def _flatten(arguments) -> tuple[list[torch.Tensor], tuple]:
    """The tensors of the forward's arguments in a fixed order, and the structure to rebuild them."""
    images, intrinsics, poses, depth_min, depth_max, features = arguments
    stages = tuple(tuple(sorted(view)) for view in features)
    flat = [*images, *intrinsics, *poses, depth_min, depth_max]
    flat += [view[stage] for view, keys in zip(features, stages) for stage in keys]
    return flat, (len(images), stages)


def _unflatten(flat: list[torch.Tensor], layout) -> tuple:
    views, stages = layout
    images, intrinsics, poses = flat[:views], flat[views : 2 * views], flat[2 * views : 3 * views]
    depth_min, depth_max = flat[3 * views], flat[3 * views + 1]
    rest = iter(flat[3 * views + 2 :])
    features = [{stage: next(rest) for stage in keys} for keys in stages]
    return images, intrinsics, poses, depth_min, depth_max, features
