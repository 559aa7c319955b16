"""Reading weight files defensively: a damaged, truncated or unsafe file is refused in one line.

`read_safetensors` reads ``model.safetensors`` (and any safetensors file); `read_torch_weights` reads
a torch checkpoint such as Meta's ``sam2.1_hiera_*.pt`` with ``weights_only=True``, so a pickle that
would run code is refused, never executed. Both raise `CheckpointError` naming the file and the fix.
"""

from __future__ import annotations

import os
import pickle
import warnings
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from sam4em.errors import Sam4emError

__all__ = ["CheckpointError", "read_safetensors", "read_torch_weights"]


class CheckpointError(Sam4emError):
    """A checkpoint that cannot be read or whose tensors do not match the architecture."""


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def read_safetensors(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file, or `CheckpointError` for a truncated or corrupt one."""
    try:
        return load_file(path)
    except SafetensorError as error:
        raise CheckpointError(
            f"{path}: damaged or not a safetensors file ({_first_line(error)}); copy it again from where "
            "it was trained, or retrain"
        ) from None


def read_torch_weights(path: str | os.PathLike[str]) -> Any:
    """A torch checkpoint of plain tensors (``weights_only``); pickled objects and damaged files are refused."""
    # torch warns about what it refuses before raising; the refusal below says it in one line, so its
    # warnings are shown only when the load succeeds.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError) as error:
            raise _refusal(path, error) from None
    for warning in caught:
        warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    return state


def _refusal(path: str | os.PathLike[str], error: BaseException) -> CheckpointError:
    """The one-line refusal of a torch checkpoint that `torch.load(weights_only=True)` could not read."""
    if isinstance(error, pickle.UnpicklingError):
        return CheckpointError(
            f"{path}: not a checkpoint of plain tensors (a pickle of other objects, which sam4em never "
            "unpickles, or another kind of file); point base_weights (in the run's config.yaml) or the model "
            "path at Meta's sam2.1_hiera_*.pt or a Hugging Face SAM2 folder"
        )
    return CheckpointError(  # a truncated or non-zip file
        f"{path}: damaged or not a torch checkpoint ({_first_line(error)[:120]}); download it again, or "
        "pass a Hugging Face SAM2 folder"
    )
