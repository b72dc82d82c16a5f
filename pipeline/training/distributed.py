"""Multi-process training (torchrun + DistributedDataParallel): who this process is, and its collectives."""

from __future__ import annotations

import dataclasses
import os

import torch


@dataclasses.dataclass
class Distributed:
    """This process's place in a torchrun launch (one process by default)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> "Distributed":
        """From torchrun's ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``."""
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size <= 1:
            return cls()
        return cls(int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0")), world_size)

    def init(self, device: torch.device) -> None:
        """Join the process group (gloo on CPU, nccl on CUDA) unless alone or already joined."""
        if self.enabled and not torch.distributed.is_initialized():
            if device.type == "cuda":
                torch.cuda.set_device(device)
            torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")

    def close(self) -> None:
        if self.enabled and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()

    def wrap(self, model: torch.nn.Module, device: torch.device, find_unused_parameters: bool) -> torch.nn.Module:
        """The model to step: ``model`` itself, or DistributedDataParallel around it."""
        if not self.enabled:
            return model
        return torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=find_unused_parameters,
        )

    def mean(self, values: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
        """The mean of each scalar over the processes (the values themselves when alone)."""
        if not self.enabled:
            return values
        packed = torch.stack([v.detach() for v in values]).to(device)
        torch.distributed.all_reduce(packed)
        packed /= self.world_size
        return list(packed)

    def any(self, flag: bool, device: torch.device) -> bool:
        """True on every process when ``flag`` is true on one (so all stop at the same step)."""
        if not self.enabled:
            return flag
        tensor = torch.tensor([float(flag)], device=device)
        torch.distributed.all_reduce(tensor)
        return bool(tensor.item() > 0)

    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()
