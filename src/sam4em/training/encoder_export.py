"""`export_encoder(run, out)`: the image encoder of a trained SAM4EM run as a model base.

This is how a supervised "generalist" encoder is made (micro-sam's EM models are made this way):
train SAM4EM on other annotated EM (`sam4em train`), export its encoder, and fine-tune on the
target from it (``model.base: OUT``), exactly as from a `sam4em pretrain` folder. LoRA updates,
where the run trained with LoRA, are folded into the encoder's weights, so the folder holds plain
``Sam2VisionModel`` weights under the keys `sam4em.models.encoder_weights` describes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from safetensors.torch import save_file

from sam4em.atomic import write_atomically, write_text_atomically
from sam4em.models.encoder_weights import ENCODER_FILE, PRETRAIN_CONFIG, is_encoder_folder
from sam4em.models.lora import merged_state
from sam4em.models.sam4em import SAM4EM
from sam4em.models.serialization import CONFIG_FILE, load_model

__all__ = ["export_encoder"]


def export_encoder(run_dir: str | Path, out_dir: str | Path) -> Path:
    """Write ``encoder.safetensors`` + ``config.yaml`` of the SAM4EM trained in `run_dir` into `out_dir`.

    The record names the architecture (``base``), says the encoder was trained with labels
    (``source: supervised``) and on what: the run, its classes and its volumes, so a benchmark can
    show that no test data went in. Refuses a baseline run and an `out_dir` that already holds an encoder.
    """
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if is_encoder_folder(out_dir):
        raise FileExistsError(f"{out_dir}: holds an encoder already; choose a new output folder")
    model = load_model(run_dir)
    if not isinstance(model, SAM4EM):
        raise ValueError(f"{run_dir}: holds a {model.info.base} baseline, which has no SAM2 image encoder to export; "
                         "export a SAM4EM run")
    state = merged_state(model.image_encoder)
    record = {"pretrain": {"base": model.info.base, "source": "supervised", "run": str(run_dir.resolve()),
                           "classes": list(model.info.class_names), "volumes": _trained_volumes(run_dir)}}
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomically(out_dir / PRETRAIN_CONFIG, yaml.safe_dump(record, sort_keys=False))
    # Last: the folder is a usable base only when complete.
    write_atomically(out_dir / ENCODER_FILE,
                     lambda path: save_file(state, str(path), metadata={"format": "pt", "base": model.info.base}))
    return out_dir


def _trained_volumes(run_dir: Path) -> list[dict[str, Any]]:
    """The image, labels and z-range of every volume the run trained on (its config.yaml's ``train`` section)."""
    train = (yaml.safe_load((run_dir / CONFIG_FILE).read_text()) or {}).get("train") or {}
    return [{k: volume.get(k) for k in ("image", "labels", "z_range", "labelled_slices")} for volume in train.get("volumes", [])]
