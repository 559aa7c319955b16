"""Loading pretrained SAM2 weights, tested on checkpoints made here in the real formats
(no pretrained weights exist on these machines)."""

from __future__ import annotations

import pytest
import torch
from transformers import Sam2VideoModel

from sam4em.models import CheckpointError, build_model, load_model, save_model
from sam4em.models.checkpoint_keys import meta_to_transformers, transformers_to_meta
from sam4em.models.compose import sam2_config
from sam4em.models.registry import get_spec


@pytest.fixture(scope="module")
def tiny_sam2() -> Sam2VideoModel:
    """A test-tiny SAM2 whose weights differ from the seeded init, standing in for a pretrained one."""
    torch.manual_seed(7)
    model = Sam2VideoModel(sam2_config(get_spec("test-tiny"), image_size=64, memory_capacity=6))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
        model.shared_image_embedding.positional_embedding.copy_(model.prompt_encoder.shared_embedding.positional_embedding)
    return model


def _assert_loaded(model, sam2: Sam2VideoModel) -> None:
    reference = sam2.state_dict()
    encoder = {k: v for k, v in model.image_encoder.state_dict().items() if "lora_" not in k}
    for key, value in encoder.items():
        assert torch.equal(value, reference["vision_encoder." + key.replace(".base_layer", "")]), key
    for decoder in (model.stage1_decoder, model.stage2_decoder):
        for key, value in decoder.state_dict().items():
            if "lora_" not in key:
                assert torch.equal(value, reference["mask_decoder." + key.replace(".base_layer", "")]), key
    for key, value in model.memory.memory_attention.state_dict().items():
        assert torch.equal(value, reference["memory_attention." + key]), key
    # Meta's maskmem_tpos_enc and no_obj_embed_spatial: the memory reads both.
    assert torch.equal(model.memory.temporal_encoding, reference["memory_temporal_positional_encoding"])
    assert torch.equal(model.memory.no_object_embedding, reference["occlusion_spatial_embedding_parameter"])


def test_meta_key_mapping_round_trips_on_official_layout(tiny_sam2):
    meta = transformers_to_meta(tiny_sam2.state_dict())
    # Names as they appear in Meta's sam2.1_hiera_*.pt files.
    for key in (
        "image_encoder.trunk.blocks.0.attn.qkv.weight",
        "image_encoder.trunk.patch_embed.proj.weight",
        "image_encoder.neck.convs.0.conv.weight",
        "sam_mask_decoder.output_upscaling.0.weight",
        "sam_mask_decoder.transformer.layers.0.mlp.layers.1.weight",
        "sam_mask_decoder.iou_prediction_head.layers.2.weight",
        "sam_prompt_encoder.point_embeddings.3.weight",
        "sam_prompt_encoder.mask_downscaling.6.weight",
        "memory_encoder.mask_downsampler.encoder.0.weight",
        "memory_encoder.fuser.layers.0.gamma",
        "memory_attention.layers.0.cross_attn_image.out_proj.weight",
        "maskmem_tpos_enc",
        "no_mem_embed",
        "obj_ptr_proj.layers.0.weight",
    ):
        assert key in meta, key
    back = meta_to_transformers(meta)
    original = tiny_sam2.state_dict()
    assert set(back) == set(original)
    assert all(torch.equal(back[k], original[k]) for k in original)


def test_build_from_meta_checkpoint_file(tiny_sam2, tmp_path):
    path = tmp_path / "sam2.1_hiera_test.pt"
    torch.save({"model": transformers_to_meta(tiny_sam2.state_dict())}, path)
    model = build_model(path, 2, base="test-tiny")
    _assert_loaded(model, tiny_sam2)
    assert model.info.pretrained_base


def test_build_from_hugging_face_folder(tiny_sam2, tmp_path):
    tiny_sam2.save_pretrained(tmp_path / "hf")
    model = build_model(tmp_path / "hf", 1, base="test-tiny", finetune="lora")
    _assert_loaded(model, tiny_sam2)
    # Adapter-only save: the frozen encoder's weights are not written again.
    save_model(model, tmp_path / "run")
    record = (tmp_path / "run" / "config.yaml").read_text()
    assert "weights: adapters" in record


def test_checkpoint_with_missing_and_unexpected_keys_is_refused(tiny_sam2, tmp_path):
    meta = transformers_to_meta(tiny_sam2.state_dict())
    meta.pop("sam_mask_decoder.iou_token.weight")
    meta["image_encoder.trunk.blocks.99.extra.weight"] = torch.zeros(1)
    path = tmp_path / "sam2.1_hiera_broken.pt"
    torch.save({"model": meta}, path)
    with pytest.raises(CheckpointError, match=r"1 missing: mask_decoder\.iou_token\.weight.*1 unexpected: vision_encoder\.backbone\.blocks\.99"):
        build_model(path, 1, base="test-tiny")


def test_wrong_architecture_is_refused_with_shapes(tiny_sam2, tmp_path):
    path = tmp_path / "sam2.1_hiera_t.pt"  # the name says tiny; the tensors are test-tiny's
    torch.save({"model": transformers_to_meta(tiny_sam2.state_dict())}, path)
    with pytest.raises(CheckpointError, match="mismatched shape"):
        build_model(path, 1)


def test_pickled_code_in_checkpoint_is_not_executed(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "sam2.1_hiera_evil.pt"
    torch.save({"model": {"x": Evil()}}, path)
    with pytest.raises(Exception, match=r"(?i)weights only|unpickl|global"):
        build_model(path, 1, base="test-tiny")


def test_offline_hub_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(CheckpointError, match="pretrained=False"):
        build_model("sam2.1-hiera-tiny", 1)


def test_adapter_only_run_reloads_identically(tiny_sam2, tmp_path):
    tiny_sam2.save_pretrained(tmp_path / "hf")
    model = build_model(tmp_path / "hf", 1, base="test-tiny", finetune="lora").eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
        images = torch.rand(2, 1, 64, 64, generator=torch.Generator().manual_seed(1))
        expected = model(images).logits
    save_model(model, tmp_path / "run")
    loaded = load_model(tmp_path / "run")
    with torch.no_grad():
        assert torch.equal(loaded(images).logits, expected)
