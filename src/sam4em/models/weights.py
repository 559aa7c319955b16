"""Loading weights strictly: pretrained SAM2 bases (Meta ``.pt``, Hugging Face folder or hub id, a
``sam4em pretrain`` encoder folder) into a built SAM2, and any state into any module.

Strict means a missing, unexpected or mis-shaped tensor is refused in one line naming the source
(`CheckpointError`), never loaded partly; weight files are read by `sam4em.models.checkpoint_files`.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn
from transformers import Sam2VideoModel

from sam4em.models.checkpoint_files import CheckpointError, read_safetensors, read_torch_weights
from sam4em.models.checkpoint_keys import meta_to_transformers
from sam4em.models.encoder_weights import ENCODER_FILE, is_encoder_folder

__all__ = ["load_sam2_weights", "load_state_strict"]


def load_sam2_weights(sam2: Sam2VideoModel, source: str | Path) -> None:
    """Load pretrained SAM2 weights strictly into `sam2` (built at any image size).

    `source`: a Meta ``.pt`` file, a Hugging Face style folder, a hub id (local cache first), or a
    `sam4em pretrain` run folder (its image encoder only; the other parts keep their initialisation).
    """
    path = Path(source)
    if is_encoder_folder(path):
        # read_safetensors: a truncated or corrupt encoder file is one line naming it, not a traceback.
        load_state_strict(sam2.vision_encoder, read_safetensors(path / ENCODER_FILE), source=str(path / ENCODER_FILE))
        return
    if path.is_file():  # a file is never a hub id: Meta's .pt, or refused in one line
        raw = read_torch_weights(path)
        state = meta_to_transformers(raw.get("model", raw))
    else:
        state = _hub_state_dict(str(source))
    load_state_strict(sam2, state, source=str(source))


def _hub_state_dict(source: str) -> dict[str, torch.Tensor]:
    try:
        pretrained = Sam2VideoModel.from_pretrained(source, local_files_only=True)
    except OSError:
        if os.environ.get("HF_HUB_OFFLINE", "0").lower() not in ("0", "false", ""):
            raise CheckpointError(
                f"{source}: pretrained SAM2 weights are not in the Hugging Face cache and HF_HUB_OFFLINE is set; "
                "download them where there is internet, pass a local folder or Meta .pt file, or use pretrained=False"
            ) from None
        try:
            pretrained = Sam2VideoModel.from_pretrained(source)
        except OSError as error:
            raise CheckpointError(
                f"{source}: pretrained SAM2 weights are not in the Hugging Face cache and the hub cannot be "
                f"reached ({str(error).splitlines()[0]}); download them where there is internet, pass a local "
                "folder or Meta .pt file, or use pretrained=False for random weights"
            ) from None
    return pretrained.state_dict()


def load_state_strict(module: nn.Module, state: dict[str, torch.Tensor], *, source: str, subset: bool = False) -> None:
    """Load `state` into `module`, refusing any missing, unexpected or mis-shaped tensor.

    With `subset=True` the checkpoint may hold only part of the module (adapter-only checkpoints);
    unexpected and mis-shaped tensors are still refused.
    """
    expected = module.state_dict()
    missing = [] if subset else sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [
        f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}"
        for k in sorted(set(state) & set(expected))
        if state[k].shape != expected[k].shape
    ]
    problems = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("mismatched shape", mismatched)):
        if items:
            shown = ", ".join(items[:8]) + (f" (+{len(items) - 8} more)" if len(items) > 8 else "")
            problems.append(f"{len(items)} {label}: {shown}")
    if problems:
        raise CheckpointError(f"{source}: checkpoint does not match the architecture; " + "; ".join(problems))
    module.load_state_dict(state, strict=not subset)
