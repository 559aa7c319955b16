"""The model-format version recorded in saved runs, and the conversion of older runs on loading.

Formats (``config.yaml``: ``model.format``):

1. No ``format`` entry: runs saved before the memory followed Meta's SAM2. The memory read row
   R - 1 - d of the temporal encoding table for an entry d slices back, and had no object-absent
   embedding.
2. Meta's rules: row d - 1, and ``memory.no_object_embedding`` added to the memory of a slice whose
   object score is <= 0 (see `sam4em.models.memory.SliceMemory`).

A format-1 run is converted on loading so that it predicts exactly what it predicted when saved:
rows 0 .. R-2 of its table are reversed (row d - 1 now holds what row R - 1 - d held; row R - 1,
SAM2's prompted-frame row, is read by neither rule) and its object-absent embedding is zero.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from sam4em.models.checkpoint_files import CheckpointError

FORMAT_VERSION = 2

_TEMPORAL = "memory.temporal_encoding"
_NO_OBJECT = "memory.no_object_embedding"


class ModelFormatError(CheckpointError):
    """A run folder whose model format this sam4em cannot read."""


def format_version(record: Mapping[str, Any], *, source: str) -> int:
    """The model format of a run's ``model`` record (1 when absent); newer or malformed ones are refused."""
    version = record.get("format", 1)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ModelFormatError(f"{source}: model.format {version!r} is not a model format; restore config.yaml from the run")
    if version > FORMAT_VERSION:
        raise ModelFormatError(
            f"{source}: saved by a newer sam4em (model format {version}, this one reads up to {FORMAT_VERSION}); "
            "upgrade sam4em to load it"
        )
    return version


def upgrade_state(
    state: Mapping[str, torch.Tensor], model: nn.Module, *, version: int, source: str
) -> dict[str, torch.Tensor]:
    """`state` of a run saved in model format `version`, converted to the current format for `model`."""
    if version >= FORMAT_VERSION or _TEMPORAL not in state:
        return dict(state)  # current, or no memory (ablations, U-Nets): nothing differs
    table = state[_TEMPORAL]  # (R, 1, 1, M)
    upgraded = dict(state)
    upgraded[_TEMPORAL] = torch.cat([table[:-1].flip(0), table[-1:]])
    upgraded[_NO_OBJECT] = torch.zeros_like(model.state_dict()[_NO_OBJECT])
    warnings.warn(
        f"{source}: saved in model format {version} (before the memory followed SAM2's rules); converted on "
        "loading, it predicts as when saved; save it again to store format 2",
        UserWarning,
        stacklevel=3,
    )
    return upgraded
