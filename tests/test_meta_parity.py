"""Parity with Meta's own SAM2: the `sam2` 1.1.0 package (Meta's code, a test-only dependency) is the oracle.

Meta's SAM2.1 Hiera-tiny is built by Meta's code (its hydra config and `build_sam2`) with seeded,
noise-perturbed weights and saved in Meta's checkpoint format (``{"model": state_dict}``); Meta's
code and `sam4em.build_model` both load that file, and every SAM2 part sam4em uses must compute what
Meta's computes, module by module, at sam4em's input size (512). Tolerance: float32,
max |sam4em - Meta| / max |Meta| < 1e-4.

Where SAM4EM differs from Meta's video predictor by design, both get the same inputs instead:
prompts come from SAM4EM's prompt generator (Meta's predictor takes clicks), and memory has no
prompted (conditioning) frames and no object pointers.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from sam4em.models import build_model
from sam4em.models.memory import MemoryBank

try:
    from sam2.build_sam import build_sam2
except ImportError as error:
    pytest.skip(
        f"Meta's sam2==1.1.0 (the oracle) cannot be imported ({error}); `make test` installs it",
        allow_module_level=True,
    )

pytestmark = pytest.mark.oracle

SIZE = 512
NUM_CLASSES = 2
TOLERANCE = 1e-4
NOISE = 0.02
# The temporal table is drawn at the scale of the spatial position encodings it is added to (~0.5):
# at SAM2's init scale (0.02) a swapped row moves memory attention by only ~2e-4 relative.
TEMPORAL_NOISE = 0.5
META_CONFIG = "configs/sam2.1/sam2.1_hiera_t.yaml"
# Meta's predictors normalise with these ImageNet statistics (sam2/utils/transforms.py).
META_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
META_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def relative_error(ours: torch.Tensor, meta: torch.Tensor) -> float:
    assert ours.shape == meta.shape, f"{tuple(ours.shape)} vs Meta's {tuple(meta.shape)}"
    return float((ours - meta).abs().max() / meta.abs().max())


def build_meta(checkpoint: str | None, *, fallback: bool = False) -> torch.nn.Module:
    """Meta's SAM2.1 Hiera-tiny at SIZE; `fallback` is Meta's predictor post-processing (multimask fallback)."""
    coarse = SIZE // 16
    overrides = [
        f"++model.image_size={SIZE}",
        f"++model.memory_attention.layer.self_attention.feat_sizes=[{coarse},{coarse}]",
        f"++model.memory_attention.layer.cross_attention.feat_sizes=[{coarse},{coarse}]",
    ]
    return build_sam2(
        META_CONFIG, checkpoint, device="cpu", mode="eval", hydra_overrides_extra=overrides, apply_postprocessing=fallback
    )


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """Meta's model with seeded noise on every weight (none is left at its init), in Meta's format."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        meta = build_meta(None)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, parameter in meta.named_parameters():
            scale = TEMPORAL_NOISE if name == "maskmem_tpos_enc" else NOISE
            parameter.add_(scale * torch.randn(parameter.shape, generator=generator))
    path = tmp_path_factory.mktemp("meta") / "sam2.1_hiera_tiny.pt"
    torch.save({"model": meta.state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def meta(checkpoint):
    return build_meta(str(checkpoint))  # Meta's own loader, strict


@pytest.fixture(scope="module")
def ours(checkpoint):
    model = build_model(checkpoint, NUM_CLASSES, image_size=SIZE).eval()
    assert model.info.pretrained_base and model.image_size == SIZE
    return model


@pytest.fixture(scope="module")
def encoded(ours, meta):
    """One slice through both encoders: sam4em's features and Meta's raw and decoder-ready outputs."""
    images = torch.rand(1, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    pixels = (images.expand(-1, 3, -1, -1) - META_MEAN) / META_STD
    with torch.no_grad():
        features = ours.encode(images)
        raw = meta.image_encoder(pixels)
        backbone = meta.forward_image(pixels)  # levels 0 and 1 through the decoder's conv_s0 / conv_s1
        _, levels, positions, sizes = meta._prepare_backbone_features(backbone)
    return {"features": features, "raw": raw, "backbone": backbone, "levels": levels, "positions": positions,
            "sizes": sizes}


def per_class(tensor: torch.Tensor) -> torch.Tensor:
    """(1, ...) -> (NUM_CLASSES, ...): SAM4EM folds classes into the batch."""
    return tensor.repeat_interleave(NUM_CLASSES, dim=0)


def sequence_first(tensor: torch.Tensor) -> torch.Tensor:
    """(N, C, h, w) -> Meta's (h * w, N, C)."""
    return tensor.flatten(2).permute(2, 0, 1)


def test_image_encoder_and_neck_levels_match(encoded):
    features, raw = encoded["features"], encoded["raw"]
    for name, ours_level, meta_level in zip(("fine", "mid", "coarse"), (features.fine, features.mid, features.coarse),
                                            raw["backbone_fpn"], strict=True):
        assert relative_error(ours_level, meta_level) < TOLERANCE, name
    assert relative_error(features.position, raw["vision_pos_enc"][-1]) < TOLERANCE


def test_decoder_position_encoding_matches(ours, meta, encoded):
    with torch.no_grad():
        ours_position = ours._decoder_position(encoded["features"].coarse)
        assert relative_error(ours_position, meta.sam_prompt_encoder.get_dense_pe()) < TOLERANCE


def test_prompt_encoder_dense_embeddings_match(ours, meta):
    masks = 4.0 * torch.randn(NUM_CLASSES, 1, SIZE // 4, SIZE // 4, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        _, meta_no_mask = meta.sam_prompt_encoder(points=None, boxes=None, masks=None)
        _, meta_mask = meta.sam_prompt_encoder(points=None, boxes=None, masks=masks)
        ours_no_mask = ours.prompt_encoder.no_mask_embed.weight.view(1, -1, 1, 1).expand_as(meta_no_mask)
        assert relative_error(ours_no_mask, meta_no_mask) < TOLERANCE
        assert relative_error(ours.prompt_encoder.mask_embed(masks), meta_mask) < TOLERANCE


def meta_first_slice_features(meta, encoded) -> torch.Tensor:
    """Meta's features of a slice without memory (an initial frame: no-memory embedding added)."""
    return meta._prepare_memory_conditioned_features(
        frame_idx=0, is_init_cond_frame=True, current_vision_feats=encoded["levels"][-1:],
        current_vision_pos_embeds=encoded["positions"][-1:], feat_sizes=encoded["sizes"][-1:],
        output_dict={}, num_frames=1,
    )


@pytest.mark.parametrize("fallback", [False, True], ids=["single-mask", "multimask-fallback"])
def test_both_decoder_stages_match_meta_single_mask_decoder(checkpoint, ours, meta, encoded, fallback):
    model = build_model(checkpoint, NUM_CLASSES, image_size=SIZE, multimask_fallback=True).eval() if fallback else ours
    oracle = build_meta(str(checkpoint), fallback=True) if fallback else meta
    features = encoded["features"]
    with torch.no_grad():
        out = model.decode(features)  # no memory bank: a first slice
        position = per_class(features.position)
        coarse = model.memory.condition(per_class(features.coarse), position, model.memory.new_bank())
        meta_coarse = per_class(meta_first_slice_features(oracle, encoded))
        assert relative_error(coarse, meta_coarse) < TOLERANCE
        sparse, dense = model.prompt_generator(coarse, position)  # SAM4EM's prompts, given to both
        dense = dense + model.prompt_encoder.no_mask_embed.weight.view(1, -1, 1, 1)
        decoder_inputs = {
            "image_embeddings": meta_coarse,
            "image_pe": oracle.sam_prompt_encoder.get_dense_pe(),
            "sparse_prompt_embeddings": sparse[:, 0],
            "multimask_output": False,
            "repeat_image": False,
            "high_res_features": [per_class(level) for level in encoded["backbone"]["backbone_fpn"][:2]],
        }
        meta_low1, _, _, _ = oracle.sam_mask_decoder(dense_prompt_embeddings=dense, **decoder_inputs)
        _, mask_prompt = oracle.sam_prompt_encoder(points=None, boxes=None, masks=meta_low1)
        meta_low2, _, _, meta_score = oracle.sam_mask_decoder(dense_prompt_embeddings=mask_prompt, **decoder_inputs)
        ours_low2, ours_score = model.refine(features, coarse, sparse, out.low_res_stage1)
        if fallback:  # the fallback must have acted: these weights give unstable single masks
            plain = meta.sam_mask_decoder(dense_prompt_embeddings=dense, **decoder_inputs)[0]
            assert not torch.allclose(plain, meta_low1)
    assert relative_error(out.low_res_stage1, meta_low1) < TOLERANCE
    assert relative_error(ours_low2, meta_low2) < TOLERANCE
    assert relative_error(ours_score, meta_score) < TOLERANCE
    assert torch.equal(out.object_score, ours_score)  # the final stage's scores are what memory reads
    # Meta's full-resolution logits (`_forward_sam_heads`): the detail head and enhancer start as identity.
    meta_full = F.interpolate(meta_low2, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    assert relative_error(out.stage2.reshape(-1, 1, SIZE, SIZE), meta_full) < TOLERANCE


def encode_both(ours, meta, encoded, seed: int, scores: torch.Tensor):
    """One memory entry per item from sam4em's and from Meta's memory encoder (same features, masks, scores).

    The slice's features are shifted by `seed` so that entries of different seeds differ as other slices would.
    """
    coarse = encoded["features"].coarse.expand(scores.shape[0], -1, -1, -1)
    coarse = torch.roll(coarse, shifts=(seed, 2 * seed), dims=(-2, -1))
    mask_logits = 4.0 * torch.randn(scores.shape[0], 1, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        entry = ours.memory.encode(coarse, mask_logits, scores)
        meta_features, meta_positions = meta._encode_new_memory(
            current_vision_feats=[sequence_first(coarse)], feat_sizes=encoded["sizes"][-1:],
            pred_masks_high_res=mask_logits, object_score_logits=scores, is_mask_from_pts=False,
        )
    return entry, {"maskmem_features": meta_features, "maskmem_pos_enc": meta_positions}


def test_memory_encoder_matches_with_object_absent_slices(ours, meta, encoded):
    scores = torch.tensor([[2.0], [0.0], [-1.5], [0.3]])  # items 1 and 2: the object is absent
    entry, meta_entry = encode_both(ours, meta, encoded, 4, scores)
    assert relative_error(entry.features, meta_entry["maskmem_features"]) < TOLERANCE
    assert relative_error(entry.position, meta_entry["maskmem_pos_enc"][-1].expand_as(entry.position)) < TOLERANCE
    present, _ = encode_both(ours, meta, encoded, 4, scores.abs() + 1.0)
    assert torch.equal(entry.features[[0, 3]], present.features[[0, 3]])
    absent_shift = (entry.features[[1, 2]] - present.features[[1, 2]]).mean(dim=(-2, -1))
    assert torch.allclose(absent_shift, ours.memory.no_object_embedding.expand_as(absent_shift), atol=1e-5)


@pytest.fixture(scope="module")
def memory_entries(ours, meta, encoded):
    """Six slices' memory entries (per class, random masks and object scores), sam4em's and Meta's."""
    entries = []
    for k in range(6):
        scores = torch.randn(NUM_CLASSES, 1, generator=torch.Generator().manual_seed(10 + k))
        entries.append(encode_both(ours, meta, encoded, 10 + k, scores))
    return entries


@pytest.mark.parametrize("bank_size", [1, 2, 6])
def test_memory_attention_over_a_bank_matches(ours, meta, encoded, memory_entries, bank_size, monkeypatch):
    frame = 20  # the current slice; the bank holds the `bank_size` slices before it, oldest first
    bank = MemoryBank(capacity=ours.memory.capacity)
    # Meta's code requires a prompted (conditioning) frame; SAM4EM has none, so its slot is left empty,
    # which Meta's loop skips like any padding frame. Object pointers are SAM2 parts SAM4EM does not use.
    output_dict = {"cond_frame_outputs": {0: None}, "non_cond_frame_outputs": {}}
    monkeypatch.setattr(meta, "use_obj_ptrs_in_encoder", False)
    for k, (entry, meta_entry) in enumerate(memory_entries[-bank_size:]):
        bank.push(entry)
        output_dict["non_cond_frame_outputs"][frame - bank_size + k] = meta_entry
    features = encoded["features"]
    with torch.no_grad():
        conditioned = ours.memory.condition(per_class(features.coarse), per_class(features.position), bank)
        meta_conditioned = meta._prepare_memory_conditioned_features(
            frame_idx=frame, is_init_cond_frame=False,
            current_vision_feats=[sequence_first(per_class(features.coarse))],
            current_vision_pos_embeds=[sequence_first(per_class(features.position))],
            feat_sizes=encoded["sizes"][-1:], output_dict=output_dict, num_frames=frame + 1,
        )
    assert relative_error(conditioned, meta_conditioned) < TOLERANCE
