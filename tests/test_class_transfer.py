"""`init_from` a SAM4EM trained for other classes (a generalist): every class-agnostic weight comes from
it; the per-class prompts are taken by class name, and new classes keep their own initialisation."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import tifffile
import torch

from sam4em.models import build_model, load_model
from sam4em.models.checkpoint_files import CheckpointError
from sam4em.models.class_transfer import DETAIL_FUSE, NO_OBJECT, PER_CLASS_TENSORS, state_for_classes
from sam4em.models.serialization import save_model
from sam4em.models.weights import load_state_strict
from sam4em.training.config import config_from_dict
from sam4em.training.trainer import train

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPT_TENSORS = ("prompt_generator.queries", "prompt_generator.class_dense")
MIXING_TENSORS = ("memory.class_mask_weights", "memory.no_object_embedding")
# SAM2's layout (memory and detail fuse per class), which test-tiny, trained from scratch, does not default to.
PER_CLASS = {"shared_memory": False, "joint_detail": False}


def _copy(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """`model`'s own weights as they are now (its state_dict shares storage with it)."""
    return {key: value.clone() for key, value in model.state_dict().items()}


@pytest.fixture(scope="module")
def generalist(tmp_path_factory):
    """A saved test-tiny SAM4EM for (glia, mito) whose every weight moved away from its seeded initialisation."""
    model = build_model("test-tiny", class_names=["glia", "mito"], pretrained=False, **PER_CLASS)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator))
    folder = tmp_path_factory.mktemp("generalist") / "run"
    save_model(model, folder)
    return folder


def test_per_class_prompts_follow_the_class_names(generalist):
    source = load_model(generalist)
    target = build_model("test-tiny", class_names=["mito", "synapse"], pretrained=False, **PER_CLASS)
    fresh = _copy(target)
    state = state_for_classes(source.state_dict(), source.info.class_names, target)
    for key in PROMPT_TENSORS:
        assert torch.equal(state[key][0], source.state_dict()[key][1])  # mito: the generalist's row 1
        assert torch.equal(state[key][1], fresh[key][1])  # synapse: new, its own initialisation
    agnostic = [k for k in state if k not in PER_CLASS_TENSORS]
    assert agnostic and all(torch.equal(state[k], source.state_dict()[k]) for k in agnostic)


def test_a_shared_memory_takes_its_class_rows_by_name_too(tmp_path):
    source = build_model("test-tiny", class_names=["glia", "mito"], pretrained=False, shared_memory=True)
    with torch.no_grad():
        for key in MIXING_TENSORS:
            source.get_parameter(key).normal_()
    target = build_model("test-tiny", class_names=["mito", "synapse"], pretrained=False, shared_memory=True)
    fresh = _copy(target)
    state = state_for_classes(source.state_dict(), source.info.class_names, target)
    for key in MIXING_TENSORS:
        assert torch.equal(state[key][0], source.state_dict()[key][1])
        assert torch.equal(state[key][1], fresh[key][1])


@pytest.mark.parametrize("source_shared", [True, False])
def test_a_model_starts_from_one_with_the_other_memory_layout(generalist, source_shared):
    """A per-class generalist starts a shared memory: its one object-absent embedding serves every class,
    the class mixing keeps its own initialisation. A shared one starts a per-class memory, which keeps
    its own object-absent embedding. Every other weight loads."""
    if source_shared:
        source = build_model("test-tiny", class_names=["glia", "mito"], pretrained=False, shared_memory=True,
                             joint_detail=False)
        with torch.no_grad():
            for parameter in source.parameters():
                parameter.add_(0.1)  # away from the seeded initialisation that the target shares
    else:
        source = load_model(generalist)
    target = build_model("test-tiny", class_names=["mito", "synapse"], pretrained=False, shared_memory=not source_shared,
                         joint_detail=False)
    fresh, trained = _copy(target), source.state_dict()  # a copy: loading the state overwrites the model's own
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        state = state_for_classes(trained, source.info.class_names, target)
    # Only a shared run's class mixing and per-class embeddings have no place in a per-class model.
    assert [str(w.message).split(": ", 2)[-1] for w in caught] == (
        ["memory.class_mask_weights, memory.no_object_embedding"] if source_shared else []
    )
    target.load_state_dict(state, strict=True)
    no_object = state["memory.no_object_embedding"]
    if source_shared:
        assert "memory.class_mask_weights" not in state and torch.equal(no_object, fresh["memory.no_object_embedding"])
    else:
        assert torch.equal(state["memory.class_mask_weights"], fresh["memory.class_mask_weights"])
        assert no_object.shape == (2, trained["memory.no_object_embedding"].shape[1])
        assert all(torch.equal(row, trained["memory.no_object_embedding"][0]) for row in no_object)
    assert torch.equal(state["memory.memory_encoder.projection.weight"], trained["memory.memory_encoder.projection.weight"])


def test_a_run_starts_from_a_generalist_for_other_classes(generalist, tmp_path):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (6, 64, 64), dtype=np.uint8)
    labels = np.where(image > 200, 255, np.where(image < 30, 128, 0)).astype(np.uint8)
    tifffile.imwrite(tmp_path / "image.tif", image, photometric="minisblack")
    tifffile.imwrite(tmp_path / "labels.tif", labels, photometric="minisblack")
    config = config_from_dict({
        "classes": "mito=255,synapse=128", "volumes": [{"image": str(tmp_path / "image.tif"), "labels": str(tmp_path / "labels.tif"),
                                                       "val_fraction": 0.34}],
        "model": {"base": "test-tiny"}, "stages": [1], "init_from": str(generalist), "tensorboard": False,
        # A rate so small that one step leaves every weight where it started (to float rounding).
        "stage1": {"steps": 1, "batch_size": 1, "lr": 1e-12, "warmup_steps": 0}, "val_every": 1, "val_samples": 1,
    })
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(config, tmp_path / "run", progress=False)
    assert not [w for w in caught if str(w.message).startswith("init_from")]  # no trained tensor starts afresh
    # Left unset, the layout is the generalist's (per class), not test-tiny's from scratch (shared).
    assert load_model(tmp_path / "run").memory.shared_classes == 0
    trained, source = load_model(tmp_path / "run").state_dict(), load_model(generalist).state_dict()
    assert torch.allclose(trained["prompt_generator.queries"][0], source["prompt_generator.queries"][1], atol=1e-6)
    decoder = [k for k in trained if k.startswith("stage1_decoder.")]
    assert decoder and all(torch.allclose(trained[k], source[k], atol=1e-6) for k in decoder)


@pytest.mark.parametrize("target_layout", [PER_CLASS, {}])  # {}: test-tiny's default, shared
def test_unnamed_classes_are_taken_in_order_and_must_match_in_number(generalist, target_layout):
    """In order, in either layout: a per-class run (the generalist) starts a per-class model or a
    shared one, as with named classes."""
    source = load_model(generalist).state_dict()
    unnamed = build_model("test-tiny", 2, pretrained=False, **target_layout)
    named = build_model("test-tiny", class_names=["a", "b"], pretrained=False, **target_layout)
    assert not unnamed.info.class_names
    for target, classes in ((unnamed, ("glia", "mito")), (named, ())):  # (): a run saved without class names
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            state = state_for_classes(source, classes, target)
        target.load_state_dict(state, strict=True)
        # Every tensor as trained but the layout's own (the object-absent rows, a joint fuse: tested above).
        kept = [k for k in source if k not in (*DETAIL_FUSE, NO_OBJECT) and k in target.state_dict()]
        assert kept and all(torch.equal(state[k], source[k]) for k in kept)
        assert len(caught) == (1 if target_layout == {} else 0)  # shared: the per-class fuse starts afresh
    with pytest.raises(ValueError, match="as many classes"):
        state_for_classes(source, ("glia", "mito"), build_model("test-tiny", 1, pretrained=False))


@pytest.mark.parametrize(
    ("source_joint", "source_classes", "target_joint", "taken"),
    [(False, ["glia", "mito"], False, True), (True, ["mito", "synapse"], True, True),
     (False, ["glia", "mito"], True, False), (True, ["mito", "synapse"], False, False)],
)
def test_a_detail_fuse_is_taken_where_both_heads_have_the_same_layout(source_joint, source_classes, target_joint, taken):
    """Per class the fuse is class-agnostic; joint for the same classes it is the same fuse. A joint fuse
    and a per-class one mean different things: the new model keeps its own. The detail stem is always taken."""
    source = build_model("test-tiny", class_names=source_classes, pretrained=False, joint_detail=source_joint)
    with torch.no_grad():
        for parameter in source.detail_head.parameters():
            parameter.add_(1.0)
    target = build_model("test-tiny", class_names=["mito", "synapse"], pretrained=False, joint_detail=target_joint)
    fresh = _copy(target)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        state = state_for_classes(source.state_dict(), source.info.class_names, target)
    assert [str(w.message).split(": ", 2)[-1] for w in caught] == ([] if taken else [", ".join(DETAIL_FUSE)])
    target.load_state_dict(state, strict=True)
    origin = source.state_dict() if taken else fresh
    assert all(torch.equal(state[key], origin[key]) for key in DETAIL_FUSE)
    stem = [key for key in state if key.startswith("detail_head.stem.")]
    assert stem and all(torch.equal(state[key], source.state_dict()[key]) for key in stem)


def test_a_joint_fuse_takes_each_class_s_channels_by_name():
    """Joint to joint for other classes: mito's input channel and output row come from the trained fuse
    (its channel 1 there, 0 here), synapse's are the new model's own; the detail channels are taken."""
    source = build_model("test-tiny", class_names=["glia", "mito"], pretrained=False, joint_detail=True)
    with torch.no_grad():
        for parameter in source.detail_head.parameters():
            parameter.add_(1.0)
    target = build_model("test-tiny", class_names=["mito", "synapse"], pretrained=False, joint_detail=True)
    trained, fresh = source.state_dict(), _copy(target)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing trained goes unused but glia's channels
        state = state_for_classes(trained, source.info.class_names, target)
    target.load_state_dict(state, strict=True)
    detail = target.detail_head.stem[-3].out_channels  # the stem's channels come first in the fuse's input
    first, out, out_bias = (f"detail_head.fuse.{k}" for k in ("0.weight", "2.weight", "2.bias"))
    assert torch.equal(state[first][:, :detail], trained[first][:, :detail])
    assert torch.equal(state[first][:, detail], trained[first][:, detail + 1])  # mito
    assert torch.equal(state[first][:, detail + 1], fresh[first][:, detail + 1])  # synapse
    for key in (out, out_bias):
        assert torch.equal(state[key][0], trained[key][1]) and torch.equal(state[key][1], fresh[key][1])
    assert torch.equal(state["detail_head.fuse.0.bias"], trained["detail_head.fuse.0.bias"])


@pytest.mark.parametrize(("source_classes", "target_classes"), [(["mito"], ["mito", "synapse"]), (["glia", "mito"], ["mito"])])
def test_one_class_fits_either_layout(source_classes, target_classes):
    """With one class a joint detail fuse or a shared memory is also a per-class one. So between one class
    and several, in either direction, a joint fuse's and the object-absent embedding's class rows are
    taken by name and nothing trained goes unused but what the target has no class for."""
    source = build_model("test-tiny", class_names=source_classes, pretrained=False)  # shared memory, joint fuse
    with torch.no_grad():
        for parameter in source.parameters():
            parameter.add_(1.0)
    target = build_model("test-tiny", class_names=target_classes, pretrained=False)
    trained, fresh = source.state_dict(), _copy(target)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        state = state_for_classes(trained, source.info.class_names, target)
    target.load_state_dict(state, strict=True)
    s, t = source_classes.index("mito"), target_classes.index("mito")
    detail = target.detail_head.stem[-3].out_channels
    first, out = "detail_head.fuse.0.weight", "detail_head.fuse.2.weight"
    assert torch.equal(state[out][t], trained[out][s])
    assert torch.equal(state[first][:, detail + t], trained[first][:, detail + s])
    assert torch.equal(state[NO_OBJECT][t], trained[NO_OBJECT][0 if len(source_classes) == 1 else s])
    if "synapse" in target_classes:  # new: its own fuse row (zero: plain upsampling at first)
        assert torch.equal(state[out][1], fresh[out][1])


def test_a_model_of_another_architecture_is_left_to_strict_loading():
    """A generalist of another base has per-class rows of another width: they are passed on as they are,
    so that strict loading names every mismatch in one line (not a shape error from inside the remapping)."""
    source = build_model("cpu-small", class_names=["mito"], pretrained=False, image_size=64)
    target = build_model("test-tiny", class_names=["mito"], pretrained=False)
    state = state_for_classes(source.state_dict(), source.info.class_names, target)
    with pytest.raises(CheckpointError, match=r"init_from run: checkpoint does not match the architecture; .*mismatched shape"):
        load_state_strict(target, state, source="init_from run")
