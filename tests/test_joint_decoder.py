"""Joint decoding (`BuildOptions.joint_decoder`): each decoder stage runs once per window for every class,
each class keeping its own tokens, prompts and output."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from transformers.models.sam2_video.modeling_sam2_video import Sam2VideoMaskDecoder

from sam4em.models import build_model, load_model, save_model, set_trainable
from sam4em.models.class_transfer import state_for_classes
from sam4em.training.config import ConfigError, config_from_dict, config_to_dict
from sam4em.training.method_builder import build_method

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def joint3(moved_weights):
    return moved_weights(build_model("test-tiny", 3, pretrained=False, joint_decoder=True), 1)


def _slices(n: int, seed: int) -> torch.Tensor:
    return torch.rand(n, 1, 64, 64, generator=torch.Generator().manual_seed(seed))


def test_with_one_class_it_is_sam2s_single_mask_decoding(moved_weights):
    """With its class embedding at zero and its dense weight at one, the one class's pass is SAM2's
    decoder with only its single-mask token (transformers' `Sam2VideoMaskDecoder`, no multimask tokens)."""
    model = moved_weights(build_model("test-tiny", 1, pretrained=False, joint_decoder=True, memory=False), 3)
    decoder = model.stage1_decoder
    sam2 = Sam2VideoMaskDecoder(dataclasses.replace(decoder.config, num_multimask_outputs=0)).eval()
    own = {k: v for k, v in decoder.state_dict().items() if not k.startswith(("mask_tokens.", "iou_prediction_head."))}
    sam2.load_state_dict({**own, "mask_tokens.weight": decoder.mask_tokens.weight[:1]}, strict=False)
    with torch.no_grad():
        model.joint_decoding.class_tokens.zero_()
        model.joint_decoding.class_dense_weights.fill_(1.0)
        features = model.encode(_slices(2, 5))
        coarse, position = model._conditioned(features, None)
        sparse, dense = model.prompt_generator(coarse, position)
        decoder_position = model._decoder_position(coarse)
        got, got_scores = model._run_decoder(decoder, features, coarse, sparse, dense, decoder_position)
        masks, _, _, scores = sam2(
            image_embeddings=coarse, image_positional_embeddings=decoder_position.expand(2, -1, -1, -1),
            sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=False,
            high_resolution_features=[decoder.conv_s0(features.fine), decoder.conv_s1(features.mid)],
        )
    assert got.abs().mean() > 1e-2  # not trivially zero
    torch.testing.assert_close(got, masks[:, 0], rtol=0, atol=1e-5)
    torch.testing.assert_close(got_scores, scores.reshape(2, 1), rtol=0, atol=1e-5)


def test_each_decoder_stage_runs_once_per_window(joint3):
    batches = []
    hooks = [decoder.transformer.register_forward_pre_hook(
        lambda module, args, kwargs: batches.append(kwargs["image_embeddings"].shape[0]), with_kwargs=True)
        for decoder in (joint3.stage1_decoder, joint3.stage2_decoder)]  # fmt: skip
    try:
        with torch.no_grad():
            out = joint3(_slices(2, 10), joint3.new_memory_bank())
    finally:
        for hook in hooks:
            hook.remove()
    assert batches == [2, 2]
    assert out.logits.shape == (2, 3, 64, 64) and out.object_score.shape == (6, 1)


def test_swapping_two_classes_swaps_their_outputs(moved_weights):
    """Each class's output comes from its own tokens, prompts and weights, in window-major order: swapping
    every per-class tensor of classes 0 and 2 swaps their masks and object scores in both windows and
    leaves class 1's alone. (No memory and no detail head, whose class weights are tested elsewhere.)"""
    model = moved_weights(build_model("test-tiny", 3, pretrained=False, joint_decoder=True, memory=False, detail_head=False), 2)
    images = _slices(2, 20)
    with torch.no_grad():
        before = model.decode(model.encode(images))
        for parameter in (model.prompt_generator.queries, model.prompt_generator.class_dense,
                          model.joint_decoding.class_tokens, model.joint_decoding.class_dense_weights):  # fmt: skip
            parameter.copy_(parameter[[2, 1, 0]])
        after = model.decode(model.encode(images))
    assert not torch.allclose(before.logits[:, 0], before.logits[:, 2], atol=1e-3)  # the classes differ
    torch.testing.assert_close(after.logits, before.logits[:, [2, 1, 0]], rtol=0, atol=1e-5)
    torch.testing.assert_close(after.stage1, before.stage1[:, [2, 1, 0]], rtol=0, atol=1e-5)
    scores = before.object_score.view(2, 3)[:, [2, 1, 0]].reshape(6, 1)
    torch.testing.assert_close(after.object_score, scores, rtol=0, atol=1e-5)


def test_windows_decoded_together_equal_each_window_alone(joint3):
    images = _slices(3, 30)
    with torch.no_grad():
        together = joint3.decode(joint3.encode(images))
        alone = [joint3.decode(joint3.encode(images[[w]])) for w in range(3)]
    torch.testing.assert_close(together.logits, torch.cat([a.logits for a in alone]), rtol=0, atol=1e-5)
    torch.testing.assert_close(together.object_score, torch.cat([a.object_score for a in alone]), rtol=0, atol=1e-5)


@pytest.mark.parametrize("finetune", ["full", "lora"])
def test_every_weight_that_trains_gets_a_gradient(finetune):
    """A trained weight without a gradient would stop DDP; joint decoding must leave none of SAM2's decoder
    weights that train per class unused (its IoU token stays in the sequence)."""
    model = build_model("test-tiny", 3, pretrained=False, joint_decoder=True, finetune=finetune)
    set_trainable(model, finetune=finetune, memory=True)
    model.forward_clip(_slices(3, 40).view(1, 3, 1, 64, 64)).logits.sum().backward()
    unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert unused == []
    assert model.joint_decoding.class_tokens.requires_grad and model.joint_decoding.class_dense_weights.requires_grad


def test_a_saved_joint_model_loads_as_one(joint3, tmp_path):
    save_model(joint3, tmp_path / "run")
    loaded = load_model(tmp_path / "run").eval()
    assert loaded.info.build_options.joint_decoder and loaded.joint_decoding is not None
    clip = _slices(3, 50).view(1, 3, 1, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded.forward_clip(clip).logits, joint3.forward_clip(clip).logits)


def test_it_needs_one_set_of_features_per_window():
    with pytest.raises(ValueError, match="joint_decoder=True needs shared_memory=True"):
        build_model("test-tiny", 2, pretrained=False, joint_decoder=True, shared_memory=False)
    with pytest.raises(ValueError, match="multimask_fallback"):
        build_model("test-tiny", 2, pretrained=False, joint_decoder=True, multimask_fallback=True)
    without_memory = build_model("test-tiny", 2, pretrained=False, joint_decoder=True, memory=False)
    assert without_memory.joint_decoding is not None and without_memory.memory is None


def test_a_training_config_asks_for_it_and_a_u_net_refuses_it():
    raw = {"classes": "a=1,b=2", "volumes": [{"image": "x.tif", "labels": "y.tif"}],
           "model": {"base": "test-tiny", "joint_decoder": True}}  # fmt: skip
    assert config_from_dict(raw).model.build.joint_decoder
    with pytest.raises(ConfigError, match=r"model\.joint_decoder: method unet2d has no SAM2 decoder"):
        config_from_dict({**raw, "method": "unet2d"})
    with pytest.raises(ConfigError, match=r"^model: joint_decoder=True needs shared_memory=True"):
        config_from_dict({**raw, "model": {**raw["model"], "shared_memory": False}})


def test_from_a_per_class_run_it_still_gets_the_shared_memory_it_needs():
    """With `init_from`, an unset `shared_memory` follows the run started from, but not into a layout
    the joint decoder cannot use."""
    per_class = build_model("test-tiny", pretrained=False, class_names=["a", "b"], shared_memory=False)
    config = config_from_dict({"classes": "a=1,b=2", "volumes": [{"image": "x.tif", "labels": "y.tif"}],
                               "model": {"base": "test-tiny", "joint_decoder": True}})  # fmt: skip
    model = build_method(config, ["a", "b"], starts_from=per_class)
    assert model.info.build_options.shared_memory and model.joint_decoding is not None
    plain = config_from_dict({**config_to_dict(config), "model": {"base": "test-tiny"}})
    assert not build_method(plain, ["a", "b"], starts_from=per_class).info.build_options.shared_memory


def test_init_from_takes_the_class_embeddings_by_name(joint3):
    """A joint model for (b, c) started from one for (a, b, c) takes b's and c's rows; from a model
    decoded per class, it keeps its own (and the rest of the decoder is taken either way)."""
    named = build_model("test-tiny", pretrained=False, class_names=["a", "b", "c"], joint_decoder=True)
    named.load_state_dict(joint3.state_dict())
    target = build_model("test-tiny", pretrained=False, class_names=["b", "c"], joint_decoder=True)
    state = state_for_classes(named.state_dict(), ["a", "b", "c"], target)
    assert torch.equal(state["joint_decoding.class_tokens"], joint3.joint_decoding.class_tokens.detach()[1:])
    target.load_state_dict(state)
    per_class = build_model("test-tiny", pretrained=False, class_names=["a", "b", "c"])
    own = target.joint_decoding.class_tokens.detach().clone()
    state = state_for_classes(per_class.state_dict(), ["a", "b", "c"], target)
    assert torch.equal(state["joint_decoding.class_tokens"], own)
    assert torch.equal(state["stage1_decoder.mask_tokens.weight"], per_class.stage1_decoder.mask_tokens.weight)
