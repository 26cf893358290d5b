"""This process's place among torchrun's processes, and the few collective operations the loop needs."""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as torch_dist
from torch import Tensor, nn

from shufflenet.devices import resolve_device


@dataclass
class Distributed:
    """This process's place among torchrun's processes (a single process when not under torchrun)."""

    device: torch.device
    rank: int = 0
    world_size: int = 1
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes the run folder and logs."""
        return self.rank == 0

    @classmethod
    def from_environment(cls, device_name: str) -> Distributed:
        """Join torchrun's process group when its environment variables say there is one."""
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        device = resolve_device(device_name, local_rank)
        if world_size == 1:
            return cls(device=device)
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        if not torch_dist.is_initialized():
            rank = int(os.environ["RANK"])
            torch_dist.init_process_group(
                backend, store=_attempt_store(rank, world_size), rank=rank, world_size=world_size
            )
        return cls(device=device, rank=torch_dist.get_rank(), world_size=world_size, backend=backend)

    def sum(self, tensor: Tensor) -> Tensor:
        """``tensor`` summed over all processes (returned on the CPU)."""
        if self.world_size == 1:
            return tensor.detach().cpu()
        # nccl reduces GPU tensors, gloo CPU ones.
        work = tensor.detach().to(self.device if self.backend == "nccl" else "cpu").clone()
        torch_dist.all_reduce(work)
        return work.cpu()

    def gather_objects(self, value: Any) -> list[Any]:
        """Every process's ``value`` (picklable), in rank order, on every process."""
        if self.world_size == 1:
            return [value]
        gathered: list[Any] = [None] * self.world_size
        torch_dist.all_gather_object(gathered, value)
        return gathered

    def broadcast_buffers(self, model: nn.Module) -> None:
        """Copy rank 0's buffers (BatchNorm running statistics) to every process."""
        if self.world_size > 1:
            for buffer in model.buffers():
                torch_dist.broadcast(buffer, src=0)

    def barrier(self) -> None:
        """Wait for every process."""
        if self.world_size > 1:
            torch_dist.barrier()

    def close(self) -> None:
        """Leave the process group."""
        if self.world_size > 1 and torch_dist.is_initialized():
            torch_dist.destroy_process_group()


def _attempt_store(rank: int, world_size: int) -> torch_dist.Store:
    """torchrun's key-value store, with keys of this attempt only (``TORCHELASTIC_RESTART_COUNT``).

    After torchrun restarts a failed worker group, the store still holds the first attempt's keys; gloo's
    ranks could then read a dead peer's address and fail with "connectFullMesh ... Connection refused" (seen
    with torch 2.14). A prefix per attempt keeps each attempt's rendezvous its own.
    """
    agent_hosts_it = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"  # torchrun's agent runs the server
    store = torch_dist.TCPStore(
        os.environ["MASTER_ADDR"],
        int(os.environ["MASTER_PORT"]),
        world_size,
        is_master=rank == 0 and not agent_hosts_it,
        timeout=datetime.timedelta(minutes=10),
    )
    return torch_dist.PrefixStore(f"shufflenet/attempt_{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)
