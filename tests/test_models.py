"""The SAM4EM model: shapes, what trains, gradient flow, the two stages, the memory, save/load."""

from __future__ import annotations

import pytest
import torch

from sam4em.models import CheckpointError, build_model, load_model, save_model, set_trainable
from sam4em.models.lora import is_lora_parameter
from sam4em.models.trainable import is_adapter_parameter


@pytest.fixture(scope="module")
def tiny3():
    """SAM2's layout, a memory per class (Meta's pretrained bases'; test-tiny shares it unless told),
    which the memory tests here check against Meta's rules."""
    return build_model("test-tiny", 3, pretrained=False, shared_memory=False, joint_detail=False).eval()


def _slices(n: int, seed: int, size: int = 64) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, size, size, generator=generator)


@pytest.mark.parametrize("num_classes", [1, 3])
def test_output_shapes(num_classes):
    model = build_model("test-tiny", num_classes, pretrained=False).eval()
    with torch.no_grad():
        out = model(_slices(2, 0))
        clip = model.forward_clip(_slices(4, 1).unsqueeze(0))
    assert out.stage1.shape == out.stage2.shape == (2, num_classes, 64, 64)
    assert clip.logits.shape == (1, 4, num_classes, 64, 64)
    assert torch.isfinite(clip.logits).all()


def test_test_tiny_is_small():
    model = build_model("test-tiny", 1, pretrained=False)
    assert sum(p.numel() for p in model.parameters()) < 1_000_000


def test_same_name_same_weights_in_every_build():
    a = build_model("test-tiny", 2, pretrained=False).state_dict()
    torch.manual_seed(12345)  # the global RNG must not matter
    b = build_model("test-tiny", 2, pretrained=False).state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_lora_mode_trains_only_lora_and_adapters_under_ten_percent():
    model = build_model("sam2.1-hiera-tiny", 1, pretrained=False)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable, "nothing would train"
    assert all(is_lora_parameter(n) or is_adapter_parameter(n) for n in trainable)
    # Every Hiera block's qkv carries LoRA, and the encoder's own weights are frozen.
    blocks = {n.split(".attn.")[0] for n in trainable if n.startswith("image_encoder.") and ".attn.qkv.lora_A" in n}
    num_blocks = sum(model.image_encoder.config.backbone_config.blocks_per_stage)
    assert len(blocks) == num_blocks
    assert not any(p.requires_grad for n, p in model.image_encoder.named_parameters() if not is_lora_parameter(n))
    assert not any(p.requires_grad for p in model.memory.parameters())
    total = sum(p.numel() for p in model.parameters())
    share = sum(p.numel() for n, p in model.named_parameters() if n in trainable) / total
    assert share < 0.10, f"{share:.1%} of parameters trainable"


def test_lora_rank_is_configurable():
    model = build_model("test-tiny", 1, pretrained=False, finetune="lora", lora_rank=4)
    a = next(p for n, p in model.named_parameters() if n.endswith("qkv.lora_A.default.weight"))
    assert a.shape[0] == 4


def test_backward_reaches_every_trainable_parameter():
    for finetune in ("full", "lora"):
        model = build_model("test-tiny", 2, pretrained=False, finetune=finetune).train()
        set_trainable(model, finetune=finetune, memory=True)
        # Zero-initialised outputs (LoRA's B, the enhancer's last convs) block the gradient of the layers
        # before them at step 0; perturb every weight a little, as one optimiser step would.
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.01 * torch.randn_like(p))
            # Every class is absent from every slice (object score <= 0), so the memory carries the
            # object-absent embedding, which must then receive a gradient too.
            model.stage2_decoder.pred_obj_score_head.proj_out.bias.fill_(-100.0)
        out = model.forward_clip(_slices(3, 2).unsqueeze(0))
        (out.stage1.mean() + out.stage2.mean()).backward()
        missing = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)]
        assert not missing, f"{finetune}: no gradient for {missing[:10]}"


def test_stage2_consumes_stage1(tiny3):
    with torch.no_grad():
        features = tiny3.encode(_slices(1, 3))
        coarse = features.coarse.repeat_interleave(3, dim=0)
        position = features.position.repeat_interleave(3, dim=0)
        sparse, _ = tiny3.prompt_generator(coarse, position)
        low1 = tiny3.decode(features).low_res_stage1
        a, _ = tiny3.refine(features, coarse, sparse, low1)
        b, _ = tiny3.refine(features, coarse, sparse, low1 + 5.0 * torch.randn_like(low1))
        c, _ = tiny3.refine(features, coarse, sparse, low1.clone())
    assert torch.equal(a, c)
    assert (a - b).abs().max() > 0.1 * a.abs().max()


def _relative_change(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / a.abs().max())


def test_memory_is_not_degenerate(tiny3):
    """Random weights make the memory's effect small but it must be there: float32 noise is ~1e-7."""
    current = _slices(1, 10)
    with torch.no_grad():
        outputs = []
        for history_seed in (20, 21):
            bank = tiny3.new_memory_bank()
            for k in range(3):
                tiny3(_slices(1, history_seed + 100 * k), bank)
            outputs.append(tiny3(current, bank).logits)
        no_memory = tiny3(current, tiny3.new_memory_bank()).logits
    assert _relative_change(outputs[0], outputs[1]) > 1e-4, "different earlier slices must change the output"
    assert _relative_change(outputs[0], no_memory) > 1e-4
    # The entries of a bank are distinct (the reference implementation's slots were identical).
    bank = tiny3.new_memory_bank()
    with torch.no_grad():
        for k in range(3):
            tiny3(_slices(1, 30 + k), bank)
    features = [e.features for e in bank.entries]
    assert all((features[i] - features[j]).abs().max() > 1e-4 for i in range(3) for j in range(i + 1, 3))


def test_memory_order_matters_through_temporal_encoding(tiny3):
    """Same slices, different z-distances: the temporal position embedding must make a difference."""
    a, b, current = _slices(1, 40), _slices(1, 41), _slices(1, 42)
    with torch.no_grad():
        results = []
        for order in ((a, b), (b, a)):
            bank = tiny3.new_memory_bank()
            for s in order:
                tiny3(s, bank)
            results.append(tiny3(current, bank).logits)
    assert _relative_change(results[0], results[1]) > 1e-5


def test_bank_keeps_only_capacity_entries():
    model = build_model("test-tiny", 1, pretrained=False, memory_capacity=2).eval()
    bank = model.new_memory_bank()
    with torch.no_grad():
        for k in range(5):
            model(_slices(1, k), bank)
    assert len(bank) == 2


def test_memory_capacity_is_checked():
    with pytest.raises(ValueError, match="capacity"):
        build_model("sam2.1-hiera-tiny", 1, pretrained=False, memory_capacity=7)


def test_save_load_gives_identical_outputs(tmp_path):
    model = build_model("test-tiny", 2, pretrained=False).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))  # as if trained: differs from the seeded init
        expected = model.forward_clip(_slices(3, 5).unsqueeze(0)).logits
    save_model(model, tmp_path / "run")
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["config.yaml", "model.safetensors"]
    loaded = load_model(tmp_path / "run")
    with torch.no_grad():
        got = loaded.forward_clip(_slices(3, 5).unsqueeze(0)).logits
    assert torch.equal(expected, got)


def test_unknown_model_name_is_a_clear_error():
    with pytest.raises(ValueError, match=r"unknown model 'sam3-huge'.*test-tiny"):
        build_model("sam3-huge", 1)


def test_unknown_build_option_is_refused():
    with pytest.raises(TypeError, match="lora_rnak"):
        build_model("test-tiny", 1, pretrained=False, lora_rnak=4)


def test_mismatched_checkpoint_is_refused_with_the_list(tmp_path):
    model = build_model("test-tiny", 2, pretrained=False)
    save_model(model, tmp_path / "run")
    config = (tmp_path / "run" / "config.yaml").read_text().replace("num_classes: 2", "num_classes: 3")
    (tmp_path / "run" / "config.yaml").write_text(config)
    with pytest.raises(CheckpointError, match=r"mismatched shape.*prompt_generator"):
        load_model(tmp_path / "run")


def test_ablations_build_and_run():
    variants = {
        "no enhancer": {"enhancer": False},
        "one stage": {"two_stage": False, "prompt_generator": False, "memory": False},
        "no memory": {"memory": False},
    }
    for label, options in variants.items():
        model = build_model("test-tiny", 2, pretrained=False, **options).eval()
        with torch.no_grad():
            out = model.forward_clip(_slices(2, 6).unsqueeze(0))
        assert out.logits.shape == (1, 2, 2, 64, 64), label
        assert (out.stage2 is None) == (not options.get("two_stage", True)), label


def test_new_adapters_start_as_identity():
    """Zero-initialised enhancer and detail head: a pretrained SAM2 starts out exactly as it was."""
    full = build_model("test-tiny", 2, pretrained=False).eval()
    bare = build_model("test-tiny", 2, pretrained=False, enhancer=False, detail_head=False).eval()
    bare.load_state_dict({k: v for k, v in full.state_dict().items() if not k.startswith(("enhancer.", "detail_head."))})
    images = _slices(2, 8)
    with torch.no_grad():
        assert torch.allclose(full(images).logits, bare(images).logits, atol=1e-6)
        for p in full.detail_head.fuse[-1].parameters():
            p.add_(0.1)
        assert not torch.allclose(full(images).logits, bare(images).logits, atol=1e-6)


def _class_folded(model, features):
    c = model.num_classes
    return features.coarse.repeat_interleave(c, dim=0), features.position.repeat_interleave(c, dim=0)


@pytest.mark.parametrize("bank_size", [1, 3])
def test_an_entry_d_slices_back_reads_temporal_row_d_minus_1(tiny3, bank_size):
    """SAM2's rule (Meta: ``maskmem_tpos_enc[num_maskmem - t_pos - 1]``, t_pos = num_maskmem - d): a bank of
    k entries reads rows 0 .. k-1 of the temporal table and no other. (The exact pairing of entries and
    rows is checked against Meta's code in test_meta_parity.py.)"""
    memory = tiny3.memory
    bank = tiny3.new_memory_bank()
    with torch.no_grad():
        for k in range(bank_size):
            tiny3(_slices(1, 50 + k), bank)
        coarse, position = _class_folded(tiny3, tiny3.encode(_slices(1, 60)))
        reference = memory.condition(coarse, position, bank)
        table = memory.temporal_encoding.detach().clone()
        generator = torch.Generator().manual_seed(61)
        read = []
        for row in range(table.shape[0]):
            # A row shifts all keys of its entry alike, which attention mostly ignores (softmax is
            # invariant to shifting every key): whether the output moves at all is the test.
            memory.temporal_encoding[row] += torch.randn(table.shape[1:], generator=generator)
            read.append(not torch.equal(reference, memory.condition(coarse, position, bank)))
            memory.temporal_encoding.copy_(table)
    assert read == [row < bank_size for row in range(table.shape[0])]


def test_absent_objects_are_remembered_as_absent(tiny3):
    """Where the object score is <= 0 (and only there) the entry carries the object-absent embedding."""
    memory = tiny3.memory
    scores = torch.tensor([[1.0], [0.0], [-2.0], [0.5]])
    with torch.no_grad():
        coarse = tiny3.encode(_slices(1, 70)).coarse.expand(4, -1, -1, -1)
        logits = 4.0 * torch.randn(4, 1, 64, 64, generator=torch.Generator().manual_seed(71))
        initial = memory.no_object_embedding.detach().clone()
        assert not initial.any(), "untrained, the embedding starts at zero and changes nothing"
        memory.no_object_embedding.copy_(torch.randn_like(initial))  # as trained
        entry = memory.encode(coarse, logits, scores)
        present = memory.encode(coarse, logits, torch.ones_like(scores))
        shift = memory.no_object_embedding.view(1, -1, 1, 1).expand_as(present.features[[1, 2]]).clone()
        memory.no_object_embedding.copy_(initial)
    assert torch.equal(entry.features[[0, 3]], present.features[[0, 3]])
    assert torch.allclose(entry.features[[1, 2]] - present.features[[1, 2]], shift, atol=1e-5)
    assert torch.equal(entry.position, present.position)


def test_memory_remembers_the_final_stage_object_scores(tiny3):
    bank = tiny3.new_memory_bank()
    with torch.no_grad():
        images = _slices(1, 72)
        out = tiny3(images, bank)
        coarse, position = _class_folded(tiny3, tiny3.encode(images))
        conditioned = tiny3.memory.condition(coarse, position, tiny3.new_memory_bank())
        sparse, _ = tiny3.prompt_generator(conditioned, position)
        _, stage2_scores = tiny3.refine(tiny3.encode(images), conditioned, sparse, out.low_res_stage1)
        expected = tiny3.memory.encode(coarse, out.logits.reshape(-1, 1, 64, 64), stage2_scores)
    assert out.object_score.shape == (3, 1)
    assert torch.equal(out.object_score, stage2_scores)
    assert torch.equal(bank.entries[-1].features, expected.features)


def test_image_size_1024_builds_runs_and_reloads(tmp_path):
    """Meta's predictors run SAM2.1 at 1024 (sam4em's default is 512): `model.image_size: 1024` works."""
    model = build_model("test-tiny", 1, pretrained=False, image_size=1024).eval()
    with torch.no_grad():
        clip = model.forward_clip(_slices(2, 80, size=1024).unsqueeze(0))  # the second slice reads memory
    assert clip.logits.shape == (1, 2, 1, 1024, 1024)
    assert torch.isfinite(clip.logits).all()
    save_model(model, tmp_path / "run")
    loaded = load_model(tmp_path / "run")
    assert loaded.image_size == 1024 and loaded.info.build_options.image_size == 1024
    expected = model.state_dict()
    assert all(torch.equal(value, expected[key]) for key, value in loaded.state_dict().items())


def test_multimask_fallback_is_an_option_saved_with_the_model(tmp_path):
    plain = build_model("test-tiny", 1, pretrained=False)
    assert not plain.stage1_decoder.dynamic_multimask_via_stability
    model = build_model("test-tiny", 1, pretrained=False, multimask_fallback=True)
    save_model(model, tmp_path / "run")
    loaded = load_model(tmp_path / "run")
    assert loaded.info.build_options.multimask_fallback
    assert loaded.stage1_decoder.dynamic_multimask_via_stability and loaded.stage2_decoder.dynamic_multimask_via_stability


@pytest.mark.parametrize("joint", [False, True])
def test_detail_head_values_do_not_depend_on_its_memory_layout(joint):
    """The stem and the fuse run channels-last for speed; their results equal the plain convolutions:
    the stem's of the image in the default layout, the fuse's of the concatenated features (the image
    detail with one class's logits per pass, or, joint, with every class's logits as channels)."""
    import torch.nn.functional as F

    from sam4em.models.detail_head import DetailHead

    torch.manual_seed(0)
    head = DetailHead(channels=4, classes=3 if joint else 1).eval()
    for parameter in head.parameters():
        torch.nn.init.normal_(parameter)
    images, low_res = torch.rand(2, 1, 32, 32), torch.randn(6, 1, 8, 8)  # 2 windows, 3 classes
    with torch.no_grad():
        detail = head.stem(images)
        assert detail.is_contiguous(memory_format=torch.channels_last)
        plain = images
        for layer in head.stem:  # the same layers with their weights in the default layout
            plain = F.conv2d(plain, layer.weight.contiguous(), layer.bias, padding=1) if isinstance(layer, torch.nn.Conv2d) else layer(plain)
        torch.testing.assert_close(detail, plain.contiguous(), atol=1e-5, rtol=1e-5)
        per_pass = 3 if joint else 1
        up = F.interpolate(low_res.view(-1, per_pass, 8, 8), size=(32, 32), mode="bilinear", align_corners=False)
        fused = torch.cat([detail.repeat_interleave(up.shape[0] // 2, 0), up], 1)
        first, _, last = head.fuse
        hidden = F.gelu(F.conv2d(fused, first.weight, first.bias, padding=1))
        expected = (up + F.conv2d(hidden, last.weight, last.bias)).reshape(6, 1, 32, 32)
        out = head(detail, low_res)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
