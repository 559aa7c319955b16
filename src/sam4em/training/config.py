"""Training configuration: YAML on disk, dataclasses underneath.

A config names the training volumes (with their class mapping and validation split), the method
(`sam4em.training.methods`), the base model and its build options, and the stages to run (unset: every
stage the method trains). ``${VAR}`` in strings is expanded from the
environment (``${SAM4EM_DATA_DIR}`` in the example configs); ``--set key=value`` overrides any field
by its dotted path, with the value parsed as YAML (``--set stages=[2]``, ``--set stage1.steps=50``,
``--set volumes[0].val_fraction=0.2``).
"""

from __future__ import annotations

import copy
import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

import yaml

from sam4em.data.class_mapping import ClassMapping, ClassMappingError
from sam4em.models import BuildOptions
from sam4em.models.info import SHARED_PARTS
from sam4em.training.config_error import ConfigError
from sam4em.training.methods import METHOD_NAMES, METHODS
from sam4em.training.presets import fill_unset

__all__ = [
    "ConfigError",
    "LossConfig",
    "ModelConfig",
    "StageConfig",
    "TrainConfig",
    "VolumeConfig",
    "apply_overrides",
    "config_from_dict",
    "config_to_dict",
    "load_config",
    "validate",
]


@dataclass
class VolumeConfig:
    """One annotated volume: image and labels (path, optional key), and which z-range is validation."""

    image: str
    labels: str
    image_key: str | None = None
    labels_key: str | None = None
    # Validation is held out by z-range, never interleaved with training slices.
    val_fraction: float = 0.15
    val_position: Literal["start", "end"] = "end"
    # Only these slices are used at all (start, stop); None: the whole volume.
    z_range: list[int] | None = None
    # Sparse annotation: only these slices give loss, as z indices of the volume, or N for N evenly
    # spaced slices of the training part; None: every slice is annotated.
    labelled_slices: list[int] | int | None = None
    # Zarr labels whose chunks are partly missing read as background there; refused unless allowed.
    allow_missing_chunks: bool = False


@dataclass
class ModelConfig:
    """The base and the build options of the model to train.

    In YAML the `CONFIGURABLE_BUILD_OPTIONS` sit flat beside `base` (``model: {base: cpu-small,
    lora_rank: 4}``); the other `BuildOptions` fields follow from the method and the classes, so
    `validate` refuses a `build` that sets them (a config built in code could not record them).
    """

    base: str = "cpu-small"
    pretrained: bool = False
    build: BuildOptions = field(default_factory=BuildOptions)


#: The `BuildOptions` fields a config sets under ``model:`` (the others: `METHODS` and ``classes``).
CONFIGURABLE_BUILD_OPTIONS = (
    "image_size", "lora_rank", "lora_alpha", "decoder_lora", "memory_capacity", "shared_memory", "joint_detail",
    "joint_decoder", "finetune", "multimask_fallback",
)


@dataclass
class StageConfig:
    steps: int = 100
    batch_size: int = 4
    lr: float = 5e-4
    warmup_steps: int = 20
    clip_length: int = 8  # slices per clip (stage 2 only)
    # Stage 2 trains the memory; the adapter continues at lr * adapter_lr_scale (0 freezes it).
    adapter_lr_scale: float = 0.1
    # Layer-wise rate decay for SAM2's image encoder (1: off): block i of N learns at lr * d**(N - i), its
    # embeddings at lr * d**(N + 1). For full fine-tuning of a pretrained encoder, as MAE does (0.65-0.75).
    layer_decay: float = 1.0
    # A wall-clock budget for the stage (benchmarks give every method the same); None: steps only. The
    # learning rate's cosine follows whichever of steps and max_seconds ends first (training/schedule.py).
    max_seconds: float | None = None


@dataclass
class LossConfig:
    kind: Literal["dice_bce", "dice_focal"] = "dice_bce"
    dice_weight: float = 1.0
    bce_weight: float = 1.0
    stage1_weight: float = 0.5
    stage2_weight: float = 0.5
    class_weights: list[float] | None = None
    focal_gamma: float = 2.0


@dataclass
class TrainConfig:
    method: str = "sam4em"  # a name in sam4em.training.methods.METHODS
    classes: str = "mito=255"
    volumes: list[VolumeConfig] = field(default_factory=list)
    model: ModelConfig = field(default_factory=ModelConfig)
    # None (or left out of the YAML): every stage the method trains; read `stages_to_run`.
    stages: list[int] | None = None
    stage1: StageConfig = field(default_factory=StageConfig)
    stage2: StageConfig = field(default_factory=lambda: StageConfig(steps=50, batch_size=1, lr=2e-4))
    loss: LossConfig = field(default_factory=LossConfig)
    # A trained run folder to start from: a stage-1 run when only stage 2 runs, or a generalist trained on
    # other classes (same base and build options, except that shared_memory, joint_detail and joint_decoder may differ;
    # per-class tensors are taken by class name: `sam4em.models.class_transfer`).
    init_from: str | None = None
    seed: int = 0
    grad_accumulation: int = 1
    grad_clip: float = 1.0
    weight_decay: float = 0.01
    foreground_fraction: float = 0.5
    augment: bool = True
    val_every: int = 25
    val_samples: int = 16
    early_stopping_patience: int | None = None  # in validations without improvement
    checkpoint_every: int = 25
    # Data-loader processes; None: chosen by the device (sam4em.training.feed.default_workers).
    num_workers: int | None = None
    device: str | None = None
    bf16: bool = True  # autocast on devices that support it (CUDA); ignored on CPU
    tensorboard: bool = True

    @property
    def stages_to_run(self) -> list[int]:
        """`stages`, or when unset every stage the method trains (`MethodSpec.stages`)."""
        return list(self.stages) if self.stages is not None else METHODS[self.method].stages


def _expand(value: Any) -> Any:
    if isinstance(value, str):
        def substitute(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in os.environ:
                raise ConfigError(f"config refers to ${{{name}}} but the environment variable {name} is not set; "
                                  f"set it (export {name}=...) to the folder the config's paths start from")
            return os.environ[name]

        return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", substitute, value)
    if isinstance(value, list):
        return [_expand(v) for v in value]
    if isinstance(value, dict):
        return {k: _expand(v) for k, v in value.items()}
    return value


def _build(cls: type, data: Any, where: str) -> Any:
    """Dataclass `cls` from plain YAML data, refusing unknown keys with their dotted path."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {type(data).__name__}")
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ConfigError(f"{where or 'config'}: unknown key(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(names))}")
    kwargs = {}
    for key, value in data.items():
        kwargs[key] = _convert(hints[key], value, f"{where}.{key}" if where else key)
    return cls(**kwargs)


def _build_model_config(data: Any, where: str) -> ModelConfig:
    """`ModelConfig` from its flat YAML form: `base`, `pretrained` and the `CONFIGURABLE_BUILD_OPTIONS`."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    known = ("base", "pretrained", *CONFIGURABLE_BUILD_OPTIONS)
    unknown = set(data) - set(known)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(known))}")
    hints = get_type_hints(ModelConfig)
    top = {k: _convert(hints[k], v, f"{where}.{k}") for k, v in data.items() if k in ("base", "pretrained")}
    options = {k: v for k, v in data.items() if k in CONFIGURABLE_BUILD_OPTIONS}
    try:
        build = _build(BuildOptions, options, where)
    except ConfigError:
        raise
    except ValueError as error:  # `BuildOptions`' own checks of how the options combine
        raise ConfigError(f"{where}: {error}") from None
    return ModelConfig(**top, build=build)


#: A number in exponent notation, as YAML 1.1 leaves it a string: 1e-4, -2E+3, 5.e-1.
_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _convert(hint: Any, value: Any, where: str) -> Any:
    origin = get_origin(hint)
    if hint is ModelConfig:
        return _build_model_config(value, where)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return _build(hint, value, where)
    if origin is list:
        (item,) = get_args(hint)
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_convert(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is Literal:
        if value not in get_args(hint):
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(str, get_args(hint)))}")
        return value
    args = get_args(hint)
    if args and type(None) in args:  # Optional[...]
        if value is None:
            return None
        inner = [a for a in args if a is not type(None)]
        # A union (`list[int] | int`): the first alternative the value's type fits.
        fitting = [a for a in inner if isinstance(get_origin(a) or a, type) and isinstance(value, get_origin(a) or a)]
        return _convert((fitting or inner)[0], value, where)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str) and _FLOAT.fullmatch(value.strip()):
        return float(value)  # YAML 1.1 reads 1e-4 (no dot) as a string; it is how learning rates are written
    if (hint in (int, float, str, bool) and not isinstance(value, hint)) or (hint is int and isinstance(value, bool)):
        raise ConfigError(f"{where}: expected {hint.__name__}, got {value!r}")
    return value


#: A list item in a dotted path: ``volumes[0]``.
_ITEM = re.compile(r"(\w+)\[(\d+)\]")


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` strings (values parsed as YAML) to plain config data; ``volumes[0].labels``
    reaches into an existing list item. `data` itself is left as it was."""
    data = copy.deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. --set stage1.steps=50")
        key, raw = item.split("=", 1)
        target = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            listed = _ITEM.fullmatch(part)
            if listed:
                items, index = target.get(listed.group(1)), int(listed.group(2))
                if not isinstance(items, list) or index >= len(items):
                    raise ConfigError(f"--set {item!r}: the config has no {part}")
                target = items[index]
            else:
                target = target.setdefault(part, {})
            if not isinstance(target, dict):
                raise ConfigError(f"--set {item!r}: {part} is not a section")
        target[parts[-1]] = yaml.safe_load(raw)
    return data


def config_from_dict(data: dict[str, Any], overrides: list[str] | None = None) -> TrainConfig:
    """A checked `TrainConfig` from plain data (a YAML document, or a run's recorded config) and overrides.

    Without `stages` the config runs every stage its method trains (`TrainConfig.stages_to_run`).
    """
    data = _expand(apply_overrides(dict(data or {}), overrides or []))
    config: TrainConfig = _build(TrainConfig, data, "")
    validate(config)
    return config


def load_config(path: str | Path, overrides: list[str] | None = None, *, preset: str | None = None) -> TrainConfig:
    """Read a YAML training config (safe loader: no code runs), apply the ``--set`` overrides, then
    let the resource `preset` (``auto``: by the device; None: none) fill what is still unset."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: no such config file (see configs/ for examples)")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({str(error).splitlines()[0]})") from None
    try:
        if preset is not None and isinstance(data, dict):
            data, overrides = fill_unset(apply_overrides(dict(data), overrides or []), preset), []
        return config_from_dict(data, overrides)
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None


def config_to_dict(config: TrainConfig) -> dict[str, Any]:
    """Plain data of `config` in the form a YAML config is written in (`config_from_dict` reads it back).

    `stages` is written resolved (`stages_to_run`): a run's config.yaml says which stages it ran.
    """
    data = dataclasses.asdict(config)
    data["stages"] = config.stages_to_run
    build = data["model"].pop("build")
    data["model"].update({key: build[key] for key in CONFIGURABLE_BUILD_OPTIONS})
    return data


def validate(config: TrainConfig) -> None:
    """Refuse, with one line naming the field and the fix, a config that cannot train (changes nothing)."""
    if config.method not in METHODS:
        raise ConfigError(f"method: {config.method!r} is not one of {', '.join(METHOD_NAMES)}")
    if not config.volumes:
        raise ConfigError("volumes: at least one training volume is needed")
    _check_build_options(config.model.build)
    _check_class_sharing(config)
    stages = config.stages_to_run
    if stages not in ([1], [2], [1, 2]):
        raise ConfigError(f"stages: expected [1], [2] or [1, 2], got {stages}")
    if 2 in stages and not METHODS[config.method].has_memory:
        raise ConfigError(
            f"stages: {config.method} has no memory, so stage 2 (the 3D memory stage) has nothing to train; "
            "set stages: [1] (--set stages=[1]) or leave `stages` out"
        )
    for name in ("stage1", "stage2"):
        stage: StageConfig = getattr(config, name)
        if stage.steps < 0 or stage.batch_size < 1 or stage.lr <= 0:
            raise ConfigError(f"{name}: steps >= 0, batch_size >= 1 and lr > 0 are required")
        if not 0 < stage.layer_decay <= 1:
            raise ConfigError(f"{name}.layer_decay: must be in (0, 1] (1 turns it off), got {stage.layer_decay}")
    for stage_number in stages:
        if getattr(config, f"stage{stage_number}").steps == 0:
            raise ConfigError(
                f"stage{stage_number}.steps: a stage that runs needs at least 1 step; set stage{stage_number}.steps "
                f"or leave {stage_number} out of `stages`"
            )
    for name in ("val_every", "val_samples", "checkpoint_every"):
        if getattr(config, name) < 1:
            raise ConfigError(f"{name}: must be >= 1, got {getattr(config, name)}")
    if config.stage2.clip_length < 2:
        raise ConfigError("stage2.clip_length: a clip needs at least 2 slices for the memory to matter")
    if config.num_workers is not None and config.num_workers < 0:
        raise ConfigError(f"num_workers: must be >= 0 (or unset: chosen by the device), got {config.num_workers}")
    if config.grad_accumulation < 1:
        raise ConfigError("grad_accumulation must be >= 1")
    _check_values(config)


def _check_values(config: TrainConfig) -> None:
    """Values of the right type that still cannot train: a time budget, class weights, z-ranges."""
    for name in (f"stage{number}" for number in config.stages_to_run):  # a stage that does not run needs no budget
        seconds = getattr(config, name).max_seconds
        if seconds is not None and seconds <= 0:
            raise ConfigError(f"{name}.max_seconds: must be > 0 (or left out: no time budget), got {seconds}")
    if not 0 <= config.foreground_fraction <= 1:
        raise ConfigError(f"foreground_fraction: must be in [0, 1] (the share of crops centred on a class), "
                          f"got {config.foreground_fraction}")
    weights = config.loss.class_weights
    try:
        classes = ClassMapping.parse(config.classes).names
    except ClassMappingError as error:
        raise ConfigError(f"classes: {error}") from None
    if weights is not None and (len(weights) != len(classes) or min(weights) < 0 or sum(weights) <= 0):
        raise ConfigError(f"loss.class_weights: one weight >= 0 per class ({', '.join(classes)}), not all 0; "
                          f"got {weights}")
    for index, volume in enumerate(config.volumes):
        if volume.z_range is not None and len(volume.z_range) != 2:
            raise ConfigError(f"volumes[{index}].z_range: expected [start, stop], got {volume.z_range}")


def _check_class_sharing(config: TrainConfig) -> None:
    """Refuse `shared_memory` / `joint_detail` for a method without the part they share, and
    `joint_decoder` for one without SAM2's decoders."""
    spec = METHODS[config.method]
    if config.model.build.joint_decoder and spec.architecture != "sam2":
        raise ConfigError(f"model.joint_decoder: method {config.method} has no SAM2 decoder; "
                          "remove model.joint_decoder or choose a method with one (sam4em)")
    for option, part in SHARED_PARTS.items():
        if getattr(config.model.build, option) and (spec.architecture != "sam2" or not dict(spec.build).get(part, True)):
            raise ConfigError(f"model.{option}: method {config.method} has no {part.replace('_', ' ')} to share; "
                              f"remove model.{option} or choose a method with one (sam4em)")


def _check_build_options(build: BuildOptions) -> None:
    """Refuse a `model.build` that sets a field outside `CONFIGURABLE_BUILD_OPTIONS`: the method and the
    classes decide those, so the value would be ignored in training and missing from config.yaml."""
    default = BuildOptions()
    for name in (f.name for f in dataclasses.fields(BuildOptions)):
        value = getattr(build, name)
        if name in CONFIGURABLE_BUILD_OPTIONS or value == getattr(default, name):
            continue
        if name == "num_classes":
            raise ConfigError("model.build.num_classes: the classes are set by `classes` (one output per class); "
                              "leave num_classes at 1 and list the classes in `classes`")
        methods = [m for m, spec in METHODS.items() if dict(spec.build).get(name, getattr(default, name)) == value]
        raise ConfigError(
            f"model.build.{name}: set by the method, not the config; leave it at {getattr(default, name)!r} and "
            f"choose a method with {name}={value!r} ({', '.join(methods) or 'none has it'})"
        )
