"""Starting a SAM4EM from one trained for other classes (a generalist model, as micro-sam fine-tunes its
EM generalists): every weight is class-agnostic except the per-class tensors of the prompt generator,
of a shared memory and of joint decoding, whose first axis is the class. Those take the row of the
class of the same name, and keep the new model's own initialisation for classes the trained one did
not have (and all of it where only one of the two models has the tensor: a shared memory meets a
per-class one, a joint decoder one per class).
The object-absent embedding is one row for every class in a per-class memory and a row per class in
a shared one: a per-class one's row serves every class of a shared one, and a per-class memory
started from a shared one keeps its own.

A joint detail head's fuse has a channel per class on two axes: an input channel (the class's logits)
of its first convolution and an output row of its last. Where both heads are joint, those follow the
class names too, and the rest of the fuse is taken. Where both work per class the fuse is
class-agnostic and taken whole. Where one is joint and the other per class the new model keeps its own
fuse (its zero-initialised output layer: plain upsampling at first); the detail stem still comes from
the trained model. Trained tensors left unused are named in a warning.

With one class the layouts coincide (a joint fuse or a shared memory of one class is a per-class one),
so a one-class model fits either side. A model of another architecture (another base) is passed on
unchanged where its rows do not fit, for strict loading to name what differs.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch

from sam4em.models.sam4em import SAM4EM

__all__ = ["DETAIL_FUSE", "NO_OBJECT", "PER_CLASS_TENSORS", "state_for_classes"]

#: State keys whose first axis is the class (the learned prompts: `PromptGenerator`, `StaticPrompts`;
#: the class mixing of a shared memory: `SliceMemory`; joint decoding's class embeddings: `JointDecoding`).
PER_CLASS_TENSORS = (
    "prompt_generator.queries", "prompt_generator.class_dense", "memory.class_mask_weights",
    "joint_decoding.class_tokens", "joint_decoding.class_dense_weights",
)
#: (1, M) in a per-class memory, (C, M) in a shared one (`SliceMemory`).
NO_OBJECT = "memory.no_object_embedding"
#: The detail head's fuse (`DetailHead`): class-agnostic per class, one channel per class when joint.
DETAIL_FUSE = ("detail_head.fuse.0.weight", "detail_head.fuse.0.bias", "detail_head.fuse.2.weight", "detail_head.fuse.2.bias")
_FUSE_IN, _FUSE_OUT = "detail_head.fuse.0.weight", "detail_head.fuse.2.weight"  # (F, F + C, 3, 3), (C, F, 1, 1)


def state_for_classes(state: dict[str, torch.Tensor], source_classes: Sequence[str], model: SAM4EM) -> dict[str, torch.Tensor]:
    """`state`, of a SAM4EM trained for `source_classes`, with its per-class tensors remapped to
    `model`'s classes by name. Where either model's classes were never named, they are taken in order,
    so the two must have as many classes."""
    target_classes = model.info.class_names
    if not source_classes or not target_classes:
        counts = {int(state[key].shape[0]) for key in PER_CLASS_TENSORS if key in state}
        if counts and counts != {model.num_classes}:
            raise ValueError(f"a model whose classes are not named can only start from one with as many classes "
                             f"({model.num_classes}, not {counts.pop()}); name the classes of both")
        # In order: a class's position stands for its name (the layouts may still differ).
        source_classes = target_classes = tuple(f"class {index}" for index in range(model.num_classes))
    own = model.state_dict()
    remapped = {key: value for key, value in state.items() if key in own or key not in PER_CLASS_TENSORS}
    left = [key for key in PER_CLASS_TENSORS if key in state and key not in own]  # trained, with no place here
    for key in PER_CLASS_TENSORS:
        if key in own:
            remapped[key] = _rows_by_name(state.get(key), source_classes, own[key], target_classes)
    # A layout is read from the shapes. With one class the two layouts are the same computation (a row for
    # every class is a row per class), so one class fits either: only many classes decide.
    if NO_OBJECT in own and NO_OBJECT in state and _fits(state[NO_OBJECT], own[NO_OBJECT]):
        source, target = state[NO_OBJECT], own[NO_OBJECT]
        if source.shape[0] == 1:  # a per-class memory's (or one class's): the same embedding for every class
            remapped[NO_OBJECT] = source.expand_as(target).clone()
        elif target.shape[0] == len(target_classes):  # a row per class
            remapped[NO_OBJECT] = _rows_by_name(source, source_classes, target, target_classes)
        else:
            remapped[NO_OBJECT], left = target, [*left, NO_OBJECT]
    if _FUSE_OUT in state and _FUSE_OUT in own and state[_FUSE_IN].shape[0] == own[_FUSE_IN].shape[0]:
        source_rows, target_rows = state[_FUSE_OUT].shape[0], own[_FUSE_OUT].shape[0]
        if source_rows == target_rows == 1:  # per class: class-agnostic, taken as it is
            pass
        elif source_rows == len(source_classes) and target_rows == len(target_classes):  # joint: by name
            remapped.update(_joint_fuse_by_name(state, source_classes, own, target_classes))
        else:
            remapped.update({key: own[key] for key in DETAIL_FUSE})
            left += list(DETAIL_FUSE)
    if left:
        # Not an error (a generalist's other layout is still a good start), but trained weights go unused.
        warnings.warn(f"init_from: {len(left)} trained tensors do not fit this model's layout (shared_memory, "
                      "joint_detail or joint_decoder differ) and are not taken (to take them, set those options as the "
                      f"run started from had them): {', '.join(left)}", UserWarning, stacklevel=2)
    return remapped


def _rows_by_name(
    source: torch.Tensor | None, source_classes: Sequence[str], own: torch.Tensor, target_classes: Sequence[str]
) -> torch.Tensor:
    """`own` (C, ...) with the row of each class that `source` (one row per source class) also has;
    `source` itself when its rows do not fit (another architecture: strict loading names it)."""
    if source is not None and not _fits(source, own):
        return source
    rows = own.detach().clone()
    if source is not None:
        for index, name in enumerate(target_classes):
            if name in source_classes:
                rows[index] = source[list(source_classes).index(name)]
    return rows


def _fits(source: torch.Tensor, own: torch.Tensor) -> bool:
    """Whether `source`'s rows have `own`'s shape (the same architecture, maybe other classes)."""
    return source.shape[1:] == own.shape[1:]


def _joint_fuse_by_name(
    state: dict[str, torch.Tensor], source_classes: Sequence[str], own: dict[str, torch.Tensor], target_classes: Sequence[str]
) -> dict[str, torch.Tensor]:
    """A joint fuse's class channels by name: each class's input channel and output row from the trained
    fuse where it had that class, the new model's own for new classes; the detail channels as trained."""
    features = own[_FUSE_IN].shape[1] - len(target_classes)  # the detail stem's channels come first
    class_inputs = _rows_by_name(state[_FUSE_IN][:, features:].transpose(0, 1), source_classes,
                                 own[_FUSE_IN][:, features:].transpose(0, 1), target_classes)
    bias_out = "detail_head.fuse.2.bias"
    return {
        _FUSE_IN: torch.cat([state[_FUSE_IN][:, :features], class_inputs.transpose(0, 1)], dim=1),
        _FUSE_OUT: _rows_by_name(state[_FUSE_OUT], source_classes, own[_FUSE_OUT], target_classes),
        bias_out: _rows_by_name(state[bias_out], source_classes, own[bias_out], target_classes),
    }
