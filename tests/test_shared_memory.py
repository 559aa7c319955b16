"""A memory shared by the classes (`BuildOptions.shared_memory`): one entry per window, read by one
memory attention per window; with one class it computes exactly what SAM2's per-class memory does."""

from __future__ import annotations

import pytest
import torch

from sam4em.models import build_model, load_model, save_model
from sam4em.training.config import config_from_dict

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def shared3(moved_weights):
    return moved_weights(build_model("test-tiny", 3, pretrained=False, shared_memory=True, joint_detail=True), 1)


def _slices(n: int, seed: int) -> torch.Tensor:
    return torch.rand(n, 1, 64, 64, generator=torch.Generator().manual_seed(seed))


def test_with_one_class_the_shared_memory_is_sam2s(moved_weights):
    per_class = moved_weights(build_model("test-tiny", 1, pretrained=False, shared_memory=False), 2)
    shared = build_model("test-tiny", 1, pretrained=False, shared_memory=True).eval()
    state = per_class.state_dict()
    state["memory.class_mask_weights"] = torch.ones_like(shared.memory.class_mask_weights)
    shared.load_state_dict(state)
    clip = _slices(5, 3).view(1, 5, 1, 64, 64)  # 5 slices: the last ones read a bank of several entries
    with torch.no_grad():
        expected, got = per_class.forward_clip(clip).logits, shared.forward_clip(clip).logits
        without_memory = per_class.decode(per_class.encode(clip[:, -1])).logits
    assert not torch.allclose(expected[:, -1], without_memory, atol=1e-4)  # the memory is read
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def test_memory_attention_runs_once_per_window_and_the_bank_holds_one_row_per_window(shared3):
    rows = []
    hook = shared3.memory.memory_attention.register_forward_pre_hook(
        lambda module, args, kwargs: rows.append(kwargs["current_vision_features"].shape[1]), with_kwargs=True
    )
    bank = shared3.new_memory_bank()
    try:
        with torch.no_grad():
            for seed in range(3):
                out = shared3(_slices(2, 10 + seed), bank)
    finally:
        hook.remove()
    assert rows == [2, 2]  # the first slice has no memory to attend to
    assert [entry.features.shape[0] for entry in bank.entries] == [2, 2, 2]
    assert out.logits.shape == (2, 3, 64, 64)


def test_each_class_mask_enters_the_entry_through_its_weight_row(shared3):
    memory = shared3.memory
    with torch.no_grad():
        features = shared3.encode(_slices(1, 20)).coarse
        logits = 4.0 * torch.randn(3, 1, 64, 64, generator=torch.Generator().manual_seed(21))
        other = logits.clone()
        other[1] = -other[1]  # class 1 predicted elsewhere
        scores = torch.ones(3, 1)
        assert not torch.allclose(memory.encode(features, logits, scores).features,
                                  memory.encode(features, other, scores).features)  # fmt: skip
        weights = memory.class_mask_weights.detach().clone()
        memory.class_mask_weights[1] = 0.0
        unweighted = memory.encode(features, logits, scores).features, memory.encode(features, other, scores).features
        memory.class_mask_weights.copy_(weights)
    assert torch.equal(*unweighted)


def test_each_absent_class_adds_its_own_embedding(shared3):
    memory = shared3.memory
    with torch.no_grad():
        features = shared3.encode(_slices(1, 30)).coarse
        logits = torch.randn(3, 1, 64, 64, generator=torch.Generator().manual_seed(31))
        present = memory.encode(features, logits, torch.ones(3, 1))
        entry = memory.encode(features, logits, torch.tensor([[1.0], [-1.0], [0.0]]))  # classes 1 and 2 absent
    shift = (memory.no_object_embedding[1] + memory.no_object_embedding[2]).detach() / 3
    torch.testing.assert_close(entry.features - present.features, shift.view(1, -1, 1, 1).expand_as(entry.features))
    assert torch.equal(entry.position, present.position)


def test_windows_encoded_together_equal_each_window_alone(shared3):
    """Rows are window-major (each window's classes in turn): a slip to class-major would mix windows."""
    memory = shared3.memory
    with torch.no_grad():
        features = shared3.encode(_slices(2, 50)).coarse
        logits = 4.0 * torch.randn(6, 1, 64, 64, generator=torch.Generator().manual_seed(51))
        scores = torch.tensor([[1.0], [-1.0], [1.0], [1.0], [1.0], [-1.0]])
        together = memory.encode(features, logits, scores).features
        alone = [memory.encode(features[[w]], logits[3 * w : 3 * w + 3], scores[3 * w : 3 * w + 3]).features for w in (0, 1)]
    torch.testing.assert_close(together, torch.cat(alone), rtol=0, atol=1e-6)


def test_every_memory_weight_that_trains_gets_a_gradient():
    """The 3D stage trains the memory: a trained weight without a gradient would stop DDP."""
    from sam4em.models import set_trainable

    model = build_model("test-tiny", 3, pretrained=False, shared_memory=True, joint_detail=True)
    set_trainable(model, finetune="full", memory=True)
    model.forward_clip(_slices(3, 60).view(1, 3, 1, 64, 64)).logits.sum().backward()
    unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None and n.startswith("memory.")]
    assert unused == []


def test_a_saved_shared_model_loads_as_one(shared3, tmp_path):
    save_model(shared3, tmp_path / "run")
    loaded = load_model(tmp_path / "run").eval()
    options = loaded.info.build_options
    assert options.shared_memory and options.joint_detail and loaded.memory.shared_classes == 3
    # Loading copies into the detail stem's channels-last weights (its speed) rather than replacing them.
    # (The second convolution: with one input channel, the first's weights are in both layouts.)
    weight = loaded.detail_head.stem[3].weight
    assert weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()
    clip = _slices(3, 40).view(1, 3, 1, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded.forward_clip(clip).logits, shared3.forward_clip(clip).logits)


def test_a_training_config_asks_for_it_under_model():
    config = config_from_dict({"classes": "a=1,b=2", "volumes": [{"image": "x.tif", "labels": "y.tif"}],
                               "model": {"base": "test-tiny", "shared_memory": True, "joint_detail": True}})  # fmt: skip
    assert config.model.build.shared_memory and config.model.build.joint_detail


@pytest.mark.parametrize(("method", "option", "part"), [("samed", "shared_memory", "memory"), ("unet2d", "joint_detail", "detail head")])
def test_a_method_without_the_shared_part_refuses_the_option(method, option, part):
    from sam4em.training.config import ConfigError

    with pytest.raises(ConfigError, match=f"^model.{option}: method {method} has no {part} to share; remove"):
        config_from_dict({"method": method, "classes": "a=1,b=2", "volumes": [{"image": "x.tif", "labels": "y.tif"}],
                          "model": {"base": "test-tiny", option: True}})  # fmt: skip


def _layout(model) -> tuple[bool | None, bool | None, int, int]:
    """What the model declares (shared memory, joint detail) and what it is built with (its memory's
    shared classes, its detail fuse's classes)."""
    options = model.info.build_options
    return options.shared_memory, options.joint_detail, model.memory.shared_classes, model.detail_head.classes


def test_a_memory_trained_from_scratch_is_shared_by_default_and_meta_s_is_per_class(tmp_path):
    """Left unset, the memory follows the weights: shared on a base trained from scratch (test-tiny,
    cpu-small, an EM-pretrained encoder, which brings no memory), per class on SAM2's pretrained memory,
    which Meta trained per object. The detail head, never pretrained, is joint either way. Set, each is
    kept; a model without the part shares nothing."""
    from transformers import Sam2VideoModel

    from sam4em.models.compose import sam2_config
    from sam4em.models.registry import get_spec

    assert _layout(build_model("test-tiny", 3, pretrained=False)) == (True, True, 3, 3)
    assert _layout(build_model("test-tiny", 3, pretrained=False, joint_detail=False)) == (True, False, 3, 1)
    bare = build_model("test-tiny", 3, pretrained=False, memory=False, detail_head=False).info.build_options
    assert (bare.shared_memory, bare.joint_detail) == (False, False)
    meta_format = tmp_path / "hf"  # SAM2 weights as Meta's are published on the Hugging Face hub
    Sam2VideoModel(sam2_config(get_spec("test-tiny"), image_size=64, memory_capacity=6)).save_pretrained(meta_format)
    assert _layout(build_model(meta_format, 3, base="test-tiny")) == (False, True, 0, 3)


def test_a_run_saved_before_the_shared_layout_existed_loads_per_class(tmp_path, moved_weights):
    """Its config.yaml has no shared_memory or joint_detail: it was per class, and loads so, unchanged."""
    import yaml

    model = moved_weights(build_model("test-tiny", 2, pretrained=False, shared_memory=False, joint_detail=False), 5)
    save_model(model, tmp_path / "run")
    record_file = tmp_path / "run" / "config.yaml"
    record = yaml.safe_load(record_file.read_text())
    for option in ("shared_memory", "joint_detail"):
        del record["model"]["build"][option]
    record_file.write_text(yaml.safe_dump(record))
    loaded = load_model(tmp_path / "run")
    assert _layout(loaded) == (False, False, 0, 1)
    clip = _slices(3, 41).view(1, 3, 1, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded.forward_clip(clip).logits, model.forward_clip(clip).logits)
