"""Where a training process runs: its rank among torchrun's processes and its device."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from sam4em.training.config import ConfigError, TrainConfig

__all__ = ["init_distributed", "training_device"]


def init_distributed() -> tuple[int, int]:
    """(rank, world size); initialises torch.distributed when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def training_device(config: TrainConfig, rank: int) -> torch.device:
    """`config.device`, refused when not on this machine; unset: this process's GPU, else the CPU."""
    if config.device:
        try:
            device = torch.device(config.device)
        except RuntimeError:
            raise ConfigError(f"device: {config.device!r} is not a device; use cpu, cuda or cuda:N") from None
        if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
            raise ConfigError(
                f"device: {config.device} is not on this machine ({torch.cuda.device_count()} CUDA devices); "
                "choose another or leave `device` unset"
            )
        return device
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)) % torch.cuda.device_count())
    return torch.device("cpu")
