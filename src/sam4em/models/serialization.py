"""Saving and loading trained models: ``model.safetensors`` (no pickle) plus ``config.yaml``.

When the base is a pretrained public SAM2, only what fine-tuning changed is saved (LoRA, adapters,
decoders, prompt encoder, memory): the frozen image encoder comes back from the public weights.
Otherwise (a from-scratch base) every weight is saved. ``config.yaml`` records the model format
(`sam4em.models.model_format`); runs saved in an older format are converted on loading, with a warning.
The model's declared `info` (base, build options, class names) is what ``config.yaml`` records, and
what `load_model` gives the model back.

`load_model` takes a run folder; a registered name is an architecture, not a trained model, and is
refused (`UntrainedModelError`) unless its spec declares it a test model (``test-tiny``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import save_file

from sam4em.atomic import write_atomically, write_text_atomically
from sam4em.errors import Sam4emError
from sam4em.models.checkpoint_files import CheckpointError, read_safetensors
from sam4em.models.compose import compose
from sam4em.models.info import PER_CLASS_BEFORE, BuildOptions, SegmentationModel
from sam4em.models.lora import is_lora_parameter
from sam4em.models.model_format import FORMAT_VERSION, format_version, upgrade_state
from sam4em.models.record_checks import BASELINES, check_model_record
from sam4em.models.registry import MODELS, ModelSpec, get_spec
from sam4em.models.weights import load_state_strict

__all__ = ["UntrainedModelError", "load_model", "model_record", "read_model_record", "save_model", "saved_state"]

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.yaml"


class UntrainedModelError(Sam4emError):
    """A registered name given where a trained model is needed (a name is an architecture, not a trained model)."""


def model_record(model: SegmentationModel) -> dict[str, Any]:
    """What `config.yaml` says about a model: its declared `info` and which weights are saved."""
    info = model.info
    return {
        "base": info.base,
        "pretrained_base": info.pretrained_base,
        # A hub id, a folder or a Meta .pt file: where the frozen weights come back from on loading.
        "base_weights": info.weights_source,
        "weights": "adapters" if _frozen_encoder(model) else "full",
        "build": info.build_options.to_dict(),
        "class_names": list(info.class_names),
    }


def saved_state(model: SegmentationModel) -> dict[str, torch.Tensor]:
    """The tensors to save: all of them, or all but the frozen pretrained image encoder."""
    state = model.state_dict()
    if _frozen_encoder(model):
        state = {k: v for k, v in state.items() if not k.startswith("image_encoder.") or is_lora_parameter(k)}
    return {k: v.detach().contiguous().cpu() for k, v in state.items()}


def _frozen_encoder(model: SegmentationModel) -> bool:
    """Whether the image encoder is pretrained and frozen (LoRA): then it comes back from its source."""
    options = model.info.build_options
    return model.info.pretrained_base and isinstance(options, BuildOptions) and options.finetune == "lora"


def save_model(model: SegmentationModel, directory: str | Path, *, extra_sections: dict[str, Any] | None = None) -> Path:
    """Write ``model.safetensors`` and ``config.yaml`` into `directory`, each atomically.

    `extra_sections` (e.g. the training config) are written beside the ``model`` section.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    document = {"model": {"format": FORMAT_VERSION, **model_record(model)}, **(extra_sections or {})}
    write_atomically(directory / WEIGHTS_FILE, lambda path: save_file(saved_state(model), str(path)))
    write_text_atomically(directory / CONFIG_FILE, yaml.safe_dump(document, sort_keys=False))
    return directory


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
    if record is None and isinstance(data, dict) and "train" in data:
        # `sam4em train` writes its config when it starts and the model when stage 1 has finished.
        raise CheckpointError(
            f"{path.parent}: a training run that has not saved a model yet (stopped before its first stage "
            f"finished); finish it with `sam4em train CONFIG --out {path.parent} --resume`, or use a trained run"
        )
    if isinstance(record, dict):
        format_version(record, source=str(path))  # a newer format is refused as such, before its keys are judged
    # Refuses missing entries, unknown build keys and impossible values in one line naming the file.
    return check_model_record(record, path)


def load_model(run_dir_or_id: str | Path, *, device: str | None = None) -> SegmentationModel:
    """A trained model from its run folder, with the class names it was trained on (`model.info`).

    A registered name is an architecture, not a trained model, and is refused (`UntrainedModelError`),
    except the test models (`ModelSpec.is_test_model`, e.g. ``test-tiny``), which come with seeded random weights.
    """
    path = Path(run_dir_or_id)
    model = _load_run(path) if path.is_dir() else compose(loadable_spec(str(run_dir_or_id)), BuildOptions())
    model.eval()
    return model.to(device) if device else model


def loadable_spec(name: str) -> ModelSpec:
    """The spec of a name `load_model` accepts (a test model), or a one-line refusal naming the fix."""
    spec = get_spec(name)  # a clear error for names that are neither a folder nor registered
    if spec.is_test_model:
        return spec
    tests = ", ".join(n for n, s in sorted(MODELS.items()) if s.is_test_model)
    untrained = "its prompt generator and adapters" if spec.has_pretrained_weights else "all its weights"
    raise UntrainedModelError(
        f"{name}: a base architecture, not a trained model ({untrained} would be random); train a model on it "
        f"(`sam4em train` with model.base: {name}) and pass its run folder, or use a test model ({tests}) "
        "for a smoke test with random weights"
    )


def _load_run(path: Path) -> SegmentationModel:
    record = read_model_record(path)
    version = format_version(record, source=str(path / CONFIG_FILE))
    class_names = record.get("class_names") or ()
    model: SegmentationModel
    if record["base"] in BASELINES:
        from sam4em.models.unet import UNet2D, UNet3D  # MONAI is slow to import; only baselines need it

        baseline = UNet3D if record["base"] == "unet3d" else UNet2D
        model = baseline(**record["build"], class_names=class_names)
    else:
        # Runs saved before the classes could share the memory and the detail head have them per class.
        options = BuildOptions(**{**PER_CLASS_BEFORE, **record["build"]})
        model = compose(
            get_spec(record["base"]), options, weights_source=record.get("base_weights"), class_names=class_names
        )
    weights = path / WEIGHTS_FILE
    if not weights.exists():
        raise FileNotFoundError(f"{weights}: no such file; the run may not have finished (see its checkpoints/)")
    state = upgrade_state(read_safetensors(weights), model, version=version, source=str(path))
    load_state_strict(model, state, source=str(weights), subset=record["weights"] == "adapters")
    if record["weights"] == "adapters":
        missing = set(saved_state(model)) - set(state)
        if missing:
            raise CheckpointError(f"{weights}: {len(missing)} tensors missing, e.g. {sorted(missing)[:5]}")
    return model
