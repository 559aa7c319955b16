"""Saving and loading trained models: ``model.safetensors`` (no pickle) plus ``config.yaml``.

When the base is a pretrained public SAM2, only what fine-tuning changed is saved (LoRA, adapters,
decoders, prompt encoder, memory): the frozen image encoder comes back from the public weights.
Otherwise (a from-scratch base) every weight is saved. ``config.yaml`` records the model format
(`sam4em.models.model_format`); runs saved in an older format are converted on loading, with a warning.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import yaml
from safetensors.torch import save_file
from torch import nn

from sam4em.models.checkpoint_files import read_safetensors
from sam4em.models.lora import is_lora_parameter
from sam4em.models.model_format import FORMAT_VERSION, format_version, upgrade_state
from sam4em.models.record_checks import check_model_record
from sam4em.models.registry import (
    BuildOptions,
    CheckpointError,
    build_model,
    compose,
    get_spec,
    load_state_strict,
)
from sam4em.models.sam4em import SAM4EM

_BASELINES = ("unet2d", "unet3d")
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.yaml"


def model_record(model: nn.Module) -> dict[str, Any]:
    """What `config.yaml` says about a model: its base, build options and which weights are saved."""
    class_names = list(getattr(model, "class_names", []) or [])
    if not isinstance(model, SAM4EM):  # a MONAI baseline (sam4em.models.unet)
        build = {"num_classes": model.num_classes, "image_size": model.image_size}
        if model.is_volumetric:
            build["clip_length"] = model.clip_length
        base = "unet3d" if model.is_volumetric else "unet2d"
        return {"base": base, "pretrained_base": False, "base_weights": None, "weights": "full", "build": build,
                "class_names": class_names}
    return {
        "base": model.spec_name,
        "pretrained_base": bool(model.pretrained_base),
        # A hub id, a folder or a Meta .pt file: where the frozen weights come back from on loading.
        "base_weights": model.weights_source,
        "weights": "adapters" if _frozen_encoder(model) else "full",
        "build": model.build_options.to_dict(),
        "class_names": class_names,
    }


def saved_state(model: SAM4EM) -> dict:
    """The tensors to save: all of them, or all but the frozen pretrained image encoder."""
    state = model.state_dict()
    if _frozen_encoder(model):
        state = {k: v for k, v in state.items() if not k.startswith("image_encoder.") or is_lora_parameter(k)}
    return {k: v.detach().contiguous().cpu() for k, v in state.items()}


def _frozen_encoder(model: SAM4EM) -> bool:
    """Whether the image encoder is pretrained and frozen (LoRA): then it comes back from its source."""
    return bool(getattr(model, "pretrained_base", False)) and model.build_options.finetune == "lora"


def save_model(model: SAM4EM, directory: str | Path, *, extra_sections: dict[str, Any] | None = None) -> Path:
    """Write ``model.safetensors`` and ``config.yaml`` into `directory`, each atomically.

    `extra_sections` (e.g. the training config) are written beside the ``model`` section.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    document = {"model": {"format": FORMAT_VERSION, **model_record(model)}, **(extra_sections or {})}
    _atomic(directory / WEIGHTS_FILE, lambda tmp: save_file(saved_state(model), tmp))
    _atomic(directory / CONFIG_FILE, lambda tmp: Path(tmp).write_text(yaml.safe_dump(document, sort_keys=False)))
    return directory


def _atomic(target: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def read_model_record(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / CONFIG_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file; a trained model folder holds {CONFIG_FILE} and {WEIGHTS_FILE}")
    try:
        # safe_load: a tag such as !!python/object is refused, never constructed.
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise CheckpointError(
            f"{path}: not a valid sam4em model config ({str(error).splitlines()[0]}); "
            "restore it from the run folder or retrain"
        ) from None
    record = data.get("model") if isinstance(data, dict) else None
    if isinstance(record, dict):
        format_version(record, source=str(path))  # a newer format is refused as such, before its keys are judged
    # Refuses missing entries, unknown build keys and impossible values in one line naming the file.
    return check_model_record(record, path)


def load_model(run_dir_or_id: str | Path, *, device: str | None = None) -> SAM4EM:
    """A trained model from its folder, or a registry name (random or pretrained weights as built)."""
    path = Path(run_dir_or_id)
    if not path.is_dir():
        get_spec(str(run_dir_or_id))  # a clear error for names that are neither
        model = build_model(str(run_dir_or_id), pretrained=False)
        return model.to(device) if device else model
    record = read_model_record(path)
    version = format_version(record, source=str(path / CONFIG_FILE))
    if record["base"] in _BASELINES:
        from sam4em.models import unet  # MONAI is slow to import; only baselines need it

        model = (unet.UNet3D if record["base"] == "unet3d" else unet.UNet2D)(**record["build"])
    else:
        options = BuildOptions(**record["build"])
        model = compose(get_spec(record["base"]), options, weights_source=record.get("base_weights"))
    weights = path / WEIGHTS_FILE
    if not weights.exists():
        raise FileNotFoundError(f"{weights}: no such file; the run may not have finished (see its checkpoints/)")
    state = upgrade_state(read_safetensors(weights), model, version=version, source=str(path))
    load_state_strict(model, state, source=str(weights), subset=record["weights"] == "adapters")
    if record["weights"] == "adapters":
        missing = set(saved_state(model)) - set(state)
        if missing:
            raise CheckpointError(f"{weights}: {len(missing)} tensors missing, e.g. {sorted(missing)[:5]}")
    model.class_names = record.get("class_names", [])
    model.eval()
    return model.to(device) if device else model
