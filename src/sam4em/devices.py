"""`resolve_device`: a ``--device`` value checked against this machine before any work starts.

torch accepts ``cuda:7`` on a machine with one GPU and fails only when a tensor is first moved, with a
device-side error or an assertion; an unknown name fails with a list of torch's internal backends.
Here both are refused at once, in one line naming the value and the devices there are.

Without a ``--device``, work goes to `default_device`: CUDA when this machine has a usable GPU, else
the CPU (`device_for` keeps a model that a caller already placed on an accelerator where it is), and
`describe_device` says which in words for the one line the CLI prints.
"""

from __future__ import annotations

import os

import torch

from sam4em.errors import Sam4emError

__all__ = ["default_device", "describe_device", "device_for", "resolve_device"]


def _available() -> str:
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    gpus = f"cuda:0 to cuda:{count - 1}" if count > 1 else "cuda" if count else ""
    mps = "mps" if torch.backends.mps.is_available() else ""
    return ", ".join(filter(None, ("cpu", gpus, mps)))


def resolve_device(spec: str | torch.device | None) -> torch.device | None:
    """The device `spec` names, if this machine has it; ``None`` stays ``None`` (the default placement).

    Raises:
        Sam4emError: `spec` is no device name, or names a device this machine lacks.
    """
    if spec is None:
        return None
    try:
        device = torch.device(spec)
    except (RuntimeError, ValueError, TypeError):
        raise Sam4emError(f"--device {spec}: not a device name; use one of {_available()}") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0 or (device.index is not None and device.index >= count):
            have = f"this machine has {count} GPU(s)" if count else "no CUDA GPU is usable here"
            raise Sam4emError(f"--device {spec}: no such GPU ({have}); use one of {_available()}")
    elif device.type not in ("cpu", "meta"):
        try:
            torch.empty(0, device=device)
        except (RuntimeError, AssertionError):  # torch's messages here run to a page of backend names
            raise Sam4emError(
                f"--device {spec}: this torch build or machine does not support it; use one of {_available()}"
            ) from None
    return device


def default_device() -> torch.device:
    """CUDA (the current GPU) when this machine has a usable one, else the CPU.

    MPS is not chosen by default: some operations SAM2 needs fall back to the CPU there, so it is
    used only when asked for with ``--device mps``.
    """
    if torch.cuda.is_available() and torch.cuda.device_count() > 0:
        return torch.device("cuda")
    return torch.device("cpu")


def device_for(model: torch.nn.Module) -> torch.device:
    """Where `model` runs when no device is named: where it is if that is an accelerator (a caller put
    it there), else `default_device` (a model loaded from disk is on the CPU)."""
    placed = next(model.parameters()).device
    return placed if placed.type not in ("cpu", "meta") else default_device()


def describe_device(device: str | torch.device) -> str:
    """``cuda (NVIDIA H200, 140 GiB)`` or ``cpu (2 threads)``: the device and what it is, for messages."""
    device = torch.device(device)
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        return f"{device} ({properties.name}, {properties.total_memory / 2**30:.0f} GiB)"
    if device.type == "cpu":
        return f"cpu ({torch.get_num_threads()} threads)"
    return str(device)


def available_host_memory() -> int:
    """Bytes of RAM this machine can still hand out (Linux ``MemAvailable``; elsewhere free pages, or
    1 GiB when neither can be read): what sizing decisions may plan to use."""
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 1 << 30
