"""What a built model declares about itself: `ModelInfo`, given to its constructor and read as `model.info`.

`ModelInfo` names the base the model was built on, its build options, its class names (in output
channel order) and where its frozen pretrained weights come from. It is what ``config.yaml`` records
(`sam4em.models.serialization`), and nothing about a model's identity is set on it after construction.

- `BuildOptions`: everything besides the base that decides a SAM4EM's architecture.
- `BaselineOptions`: the same for the MONAI U-Net baselines (`sam4em.models.unet`).
- `SegmentationModel`: the base class of SAM4EM and the baselines: ``info``, ``num_classes``,
  ``image_size``, ``memory_capacity`` and ``new_memory_bank()``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Generic, Literal, TypeVar

from torch import nn

from sam4em.models.memory import MemoryBank

__all__ = ["PER_CLASS_BEFORE", "SHARED_PARTS", "BaselineOptions", "BuildOptions", "FineTune", "ModelInfo", "SegmentationModel", "class_names_tuple"]

FineTune = Literal["lora", "full"]


#: The options that run a part once per window for all classes, and that part's own option.
SHARED_PARTS = {"shared_memory": "memory", "joint_detail": "detail_head"}
#: What a model or training run recorded before those options existed used: every part per class.
PER_CLASS_BEFORE = {option: False for option in SHARED_PARTS}


@dataclass(frozen=True)
class BuildOptions:
    """Everything besides the base that decides the architecture; saved with every trained model."""

    num_classes: int = 1
    image_size: int | None = None
    finetune: FineTune | None = None
    lora_rank: int = 8
    lora_alpha: float = 16.0
    decoder_lora: bool = True
    memory_capacity: int = 6
    prompt_tokens: int | None = None
    enhancer: bool = True
    detail_head: bool = True
    prompt_generator: bool = True
    two_stage: bool = True
    memory: bool = True
    # One memory per window shared by the classes (memory attention once per window) instead of SAM2's
    # one per object, i.e. per class (`sam4em.models.memory`). Runs saved before it existed are per class.
    # None (`sam4em.models.compose.resolve_options`): shared when the memory is trained from scratch,
    # per class when it is Meta's pretrained one, which was trained per object.
    shared_memory: bool | None = None
    # The detail head refines every class in one pass, not one pass per class (`sam4em.models.detail_head`).
    # None: joint (the detail head is SAM4EM's own, never pretrained).
    joint_detail: bool | None = None
    # Meta's `dynamic_multimask_via_stability` (eval mode only): an unstable single mask is replaced by
    # the most confident of the decoder's three multimask outputs. Off: SAM4EM always uses token 0.
    multimask_fallback: bool = False
    # Each decoder stage runs once per window for every class, not once per class (`sam4em.models.joint_decoder`).
    # It needs one set of memory-conditioned features per window: a shared memory, or none.
    joint_decoder: bool = False

    def __post_init__(self) -> None:
        for option, part in SHARED_PARTS.items():
            if getattr(self, option) and not getattr(self, part):
                raise ValueError(f"{option}=True needs {part}=True: a model without a {part.replace('_', ' ')} has none to share")
        if self.joint_decoder and self.memory and self.shared_memory is False:
            raise ValueError("joint_decoder=True needs shared_memory=True (or memory=False): a per-class memory "
                             "conditions each class's features apart, so one decoder pass cannot serve them all")
        if self.joint_decoder and self.multimask_fallback:
            raise ValueError("joint_decoder=True cannot use multimask_fallback: SAM2's multimask tokens decode one object; "
                             "set one of them to false")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class BaselineOptions:
    """A U-Net baseline's architecture: classes, input size and, for the 3D U-Net, its clip length K."""

    num_classes: int
    image_size: int
    clip_length: int | None = None  # None: a 2D U-Net, which segments slice by slice

    def to_dict(self) -> dict[str, Any]:
        """As ``config.yaml`` records it (no ``clip_length`` for a 2D U-Net)."""
        return {k: v for k, v in asdict(self).items() if v is not None}


OptionsT = TypeVar("OptionsT", BuildOptions, BaselineOptions)


@dataclass(frozen=True)
class ModelInfo(Generic[OptionsT]):
    """A model's declared identity.

    `base`: a registry name (``cpu-small``, ``sam2.1-hiera-tiny``, ...) or ``unet2d`` / ``unet3d``.
    `build_options`: resolved (``image_size``, ``finetune``, ``shared_memory`` and ``joint_detail``
    filled in from the base and its weights: `sam4em.models.compose.resolve_options`).
    `class_names`: one per output channel, or empty for a model whose classes were never named.
    `pretrained_base`: whether the base's weights were loaded (Meta's, or an EM-pretrained encoder)
    rather than seeded at random; `weights_source` says from where (a hub id, a folder or a ``.pt`` file).
    """

    base: str
    build_options: OptionsT
    class_names: tuple[str, ...] = ()
    pretrained_base: bool = False
    weights_source: str | None = None

    def __post_init__(self) -> None:
        options = self.build_options
        unresolved = [name for name in ("image_size", *SHARED_PARTS) if getattr(options, name, 0) is None]
        if unresolved:
            raise ValueError(f"{self.base}: a model's build options must name its {' and '.join(unresolved)}; "
                             "build it with build_model or compose, which fill them in")
        if any(not isinstance(name, str) for name in self.class_names):
            raise TypeError(f"class names must be strings, got {self.class_names!r}")
        if self.class_names and len(self.class_names) != self.num_classes:
            raise ValueError(
                f"{len(self.class_names)} class names ({', '.join(self.class_names)}) for a model of "
                f"{self.num_classes} classes; give one name per class"
            )

    @property
    def num_classes(self) -> int:
        return self.build_options.num_classes

    @property
    def image_size(self) -> int:
        """The side S of the (S, S) slices the model takes."""
        size = self.build_options.image_size
        assert size is not None  # checked in __post_init__
        return size

    @property
    def clip_length(self) -> int | None:
        """The clip length K a volumetric model is built for; None for models that go slice by slice."""
        options = self.build_options
        return options.clip_length if isinstance(options, BaselineOptions) else None

    @property
    def is_volumetric(self) -> bool:
        """Whether the model sees whole clips (a 3D U-Net) rather than one slice at a time."""
        return self.clip_length is not None


def class_names_tuple(names: Sequence[str] | None) -> tuple[str, ...]:
    """`names` as the tuple `ModelInfo` holds (a bare string is refused: it is not a list of names)."""
    if isinstance(names, str):
        raise TypeError(f"class_names must be a sequence of names, not the string {names!r}")
    return tuple(names or ())


class SegmentationModel(nn.Module):
    """What every sam4em model has: its declared `info`, and read from it `num_classes` and `image_size`."""

    info: ModelInfo[Any]

    def __init__(self, *, info: ModelInfo[Any]) -> None:
        super().__init__()
        self.info = info

    @property
    def num_classes(self) -> int:
        """C, the output channels (one per class)."""
        return self.info.num_classes

    @property
    def image_size(self) -> int:
        """The side S of the (S, S) slices the model takes."""
        return self.info.image_size

    @property
    def memory_capacity(self) -> int:
        """How many earlier slices the model remembers while going through a volume; 0 without memory."""
        return 0

    def new_memory_bank(self) -> MemoryBank | None:
        """An empty memory bank for a new volume; None for models without memory (the default)."""
        return None
