"""`build_model`: a SAM4EM from a registered name, a SAM2 weight file or folder, a ``sam4em pretrain``
run folder, or a trained run folder (loaded as saved).

Which base a path holds is told from the path (`_base_from_path`): Meta's ``sam2.1_hiera_*.pt`` file
names, or a Hugging Face folder's ``config.json``; `base=` names it when neither tells.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any, cast

from transformers import Sam2HieraDetConfig, Sam2VideoConfig, Sam2VisionConfig

from sam4em.models.compose import compose
from sam4em.models.encoder_weights import is_encoder_folder
from sam4em.models.info import BuildOptions, class_names_tuple
from sam4em.models.registry import MODELS, ModelSpec, base_spec, get_spec
from sam4em.models.sam4em import SAM4EM
from sam4em.models.serialization import CONFIG_FILE, load_model

__all__ = ["build_model"]

_META_FILE = re.compile(r"sam2\.1[-_]hiera[-_](tiny|small|base[-_]plus|large|t|s|b\+|l)\.pt$")
_META_SHORT = {"t": "tiny", "s": "small", "b+": "base-plus", "l": "large"}


def build_model(
    name_or_path: str | Path,
    num_classes: int | None = None,
    pretrained: bool | None = None,
    *,
    class_names: Sequence[str] | None = None,
    base: str | None = None,
    **overrides: Any,
) -> SAM4EM:
    """Build a SAM4EM on a named base, a Hugging Face style SAM2 folder, Meta's ``sam2.1_hiera_*.pt``
    file or a ``sam4em pretrain`` run folder, or load a trained run folder as saved.

    `num_classes` defaults to one per name in `class_names`, else 1. `pretrained` (default True) loads
    the base's pretrained weights; False gives the same architecture with random weights seeded from
    the name (a pretrain run folder's encoder is always loaded: it is what the folder is for). `base`
    names the architecture of a weight file or folder that does not tell it. `overrides` are
    `BuildOptions` fields (image_size, lora_rank, memory_capacity, enhancer, ...).

    A trained run folder decides all of these itself, so giving any of them with one is refused.
    """
    unknown = set(overrides) - {f.name for f in fields(BuildOptions)}
    if unknown:
        raise TypeError(f"unknown build option(s): {', '.join(sorted(unknown))}")
    path = Path(name_or_path)
    if path.is_dir() and (path / CONFIG_FILE).exists() and not is_encoder_folder(path):
        given = {"num_classes": num_classes, "pretrained": pretrained, "class_names": class_names, "base": base}
        return _load_run_folder(path, sorted([k for k, v in given.items() if v is not None] + list(overrides)))
    names = class_names_tuple(class_names)
    if num_classes is not None and names and num_classes != len(names):
        raise ValueError(f"num_classes={num_classes} but {len(names)} class names ({', '.join(names)}); give one name per class")
    options = BuildOptions(num_classes=num_classes or len(names) or 1, **overrides)
    spec, source = _spec_and_weights(name_or_path, path, pretrained=pretrained is not False, base=base)
    return compose(spec, options, weights_source=source, class_names=names)


def _load_run_folder(path: Path, given: list[str]) -> SAM4EM:
    """A trained run folder as saved; arguments it would ignore are refused rather than dropped."""
    if given:
        raise TypeError(
            f"{path}: a trained run folder, built as its {CONFIG_FILE} says, so {', '.join(given)} would be "
            "ignored; call build_model(folder) or load_model(folder) without them"
        )
    model = load_model(path)
    if not isinstance(model, SAM4EM):
        raise TypeError(f"{path}: holds a {model.info.base} baseline, not a SAM4EM; load it with load_model")
    return model


def _spec_and_weights(
    name_or_path: str | Path, path: Path, *, pretrained: bool, base: str | None
) -> tuple[ModelSpec, str | Path | None]:
    """The base of `name_or_path` and where its pretrained weights come from (None: seeded random weights)."""
    if str(name_or_path) in MODELS or not path.exists():
        spec = get_spec(str(name_or_path))  # an unknown name is refused here
        if base is not None:
            raise TypeError(f"base={base!r} is only for a SAM2 weight file or folder, not the name {spec.name!r}")
        return spec, spec.hub_id if pretrained else None
    if is_encoder_folder(path):
        if base is not None:
            raise TypeError(f"{path}: a `sam4em pretrain` run folder names its own base; drop base={base!r}")
        # A `sam4em pretrain` run: its encoder is what the folder is for, so it is always loaded.
        return base_spec(path), path.resolve()
    return get_spec(base or _base_from_path(path)), path if pretrained else None


def _base_from_path(path: Path) -> str:
    if match := _META_FILE.match(path.name.lower()):
        size = match.group(1).replace("_", "-")
        return f"sam2.1-hiera-{_META_SHORT.get(size, size)}"
    if (path / "config.json").exists():
        vision = cast(Sam2VisionConfig, Sam2VideoConfig.from_pretrained(path).vision_config)
        backbone = cast(Sam2HieraDetConfig, vision.backbone_config)
        for spec in MODELS.values():
            if spec.has_pretrained_weights and spec.backbone["blocks_per_stage"] == list(backbone.blocks_per_stage or ()):
                return spec.name
    raise ValueError(f"{path}: cannot tell which SAM2 architecture this is; pass base='sam2.1-hiera-tiny' (or another name)")
