"""Training checkpoints: written atomically, read without unpickling code.

A checkpoint holds only tensors and plain Python values (model, optimiser and scheduler state, the
stage and step, the best validation score, the torch RNG state), so `torch.load(weights_only=True)`
reads it and a file from elsewhere cannot run code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from sam4em.atomic import write_atomically

LAST = "last.pt"


def save_checkpoint(directory: Path, state: dict[str, Any]) -> Path:
    """Write `state` to ``directory/last.pt`` via a temporary file and an atomic rename."""
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / LAST
    write_atomically(target, lambda path: torch.save(state, path))
    return target


def load_checkpoint(directory: Path) -> dict[str, Any] | None:
    """The last checkpoint in `directory`, or None when there is none."""
    path = directory / LAST
    if not path.exists():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a truncated or foreign file: say which and how to recover
        raise ValueError(
            f"{path}: cannot read checkpoint ({type(error).__name__}: {str(error).splitlines()[0]}); "
            "delete it to restart the run from scratch"
        ) from None
