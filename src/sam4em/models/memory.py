"""3D memory across slices, built from SAM2's memory encoder and memory attention.

Slices of a stack are processed in order. After each slice, SAM2's memory encoder fuses the slice's
1/16 features with its predicted mask into a memory entry; the last N entries form the bank. The next
slice's features attend to the bank through SAM2's memory attention, with the z-distance to each
entry encoded by SAM2's learned temporal position embedding. Each entry is a distinct tensor computed
from its own slice (the reference implementation's slots were identical copies, which made its
attention uniform).

The bank is plain state outside the module: one bank per volume (and per tile column), created
empty, so nothing leaks from one volume to the next and no ground truth ever enters.

Two layouts (`SliceMemory.shared_classes`):
- per class (SAM2's one memory per object): each class has its own rows in the bank and its own
  memory attention; everything after the encoder runs once per class.
- shared (one memory per window): the C classes' downsampled masks are mixed with learned per-class
  channel weights into one entry per window, so memory attention and the memory encoder's fuser run
  once per window. With one class the two layouts compute the same thing.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import torch
from torch import nn
from transformers.models.sam2_video.modeling_sam2_video import Sam2VideoMemoryEncoder


@dataclass(frozen=True)
class MemoryEntry:
    """One slice's memory: features and spatial position encoding, both (N, M, h, w)."""

    features: torch.Tensor
    position: torch.Tensor


@dataclass
class MemoryBank:
    """The last `capacity` memory entries, most recent last."""

    capacity: int
    entries: deque[MemoryEntry] = field(default_factory=deque)

    def push(self, entry: MemoryEntry) -> None:
        self.entries.append(entry)
        while len(self.entries) > self.capacity:
            self.entries.popleft()

    def __len__(self) -> int:
        return len(self.entries)

    def keep_windows(self, keep: torch.Tensor) -> None:
        """Keep only the windows where `keep` (bool, one per window the entries were made for) is set.

        Entries hold one row per window and class (N = B * C, window-major, as SAM4EM folds classes
        into the batch), so each window's C rows go or stay together; a shared memory holds one row
        per window. This is how a stream that has
        finished leaves a batch of streams advanced in lockstep (`sam4em.inference.predictor`).
        """
        if not self.entries:
            return
        rows_per_window, remainder = divmod(self.entries[0].features.shape[0], keep.numel())
        if remainder:
            raise ValueError(f"{keep.numel()} windows do not divide the bank's {self.entries[0].features.shape[0]} rows")
        rows = keep.to(self.entries[0].features.device).repeat_interleave(rows_per_window)
        self.entries = deque(MemoryEntry(e.features[rows], e.position[rows]) for e in self.entries)

    def detach(self) -> None:
        """Cut the autograd graph (truncated backpropagation through z)."""
        self.entries = deque(MemoryEntry(e.features.detach(), e.position.detach()) for e in self.entries)


class SliceMemory(nn.Module):
    """Conditions a slice's coarse features on the memory bank and encodes new entries.

    `memory_encoder` and `memory_attention` are transformers' SAM2 modules. `temporal_encoding` is
    SAM2's (R, 1, 1, M) table of temporal position embeddings, indexed as in Meta's SAM2: an entry d
    slices away uses row d - 1 (Meta's ``maskmem_tpos_enc[num_maskmem - t_pos - 1]`` with
    ``t_pos = num_maskmem - d``; transformers' ``[offset - 1]``). Row R - 1 belongs to SAM2's prompted
    (conditioning) frames, which SAM4EM does not have, so at most R - 1 entries are kept.
    `no_memory_embedding` (1, 1, D) marks a slice that has no memory yet; `no_object_embedding` (1, M)
    (Meta's ``no_obj_embed_spatial``) is added to the memory of a slice whose object score is <= 0.

    `shared_classes` C > 0 makes one memory per window for C classes (module docstring): `condition`
    and `encode` then take one row of features per window, and `encode` takes the C classes' masks
    and scores of each window (window-major). `class_mask_weights` (C, D) weighs each class's
    downsampled mask before they are summed (1/C at first: their mean), and `no_object_embedding`
    becomes (C, M), a row per class, each starting as the one given; the sum of the absent classes'
    rows, divided by C, is added.
    """

    def __init__(
        self,
        *,
        memory_encoder: Sam2VideoMemoryEncoder,
        memory_attention: nn.Module,
        temporal_encoding: nn.Parameter,
        no_memory_embedding: nn.Parameter,
        no_object_embedding: nn.Parameter,
        capacity: int,
        sigmoid_scale: float = 20.0,
        sigmoid_bias: float = -10.0,
        shared_classes: int = 0,
    ) -> None:
        super().__init__()
        if capacity < 1 or capacity > temporal_encoding.shape[0] - 1:
            raise ValueError(
                f"memory capacity {capacity} must be between 1 and {temporal_encoding.shape[0] - 1} "
                "(the temporal encoding table has one row per distance plus one)"
            )
        self.memory_encoder = memory_encoder
        self.memory_attention = memory_attention
        self.temporal_encoding = temporal_encoding
        self.no_memory_embedding = no_memory_embedding
        self.capacity = capacity
        self.sigmoid_scale = sigmoid_scale
        self.sigmoid_bias = sigmoid_bias
        self.shared_classes = shared_classes
        self.no_object_embedding = no_object_embedding
        self.class_mask_weights: nn.Parameter | None = None
        if shared_classes:
            mask_channels = memory_encoder.feature_projection.out_channels
            self.class_mask_weights = nn.Parameter(torch.full((shared_classes, mask_channels), 1.0 / shared_classes))
            self.no_object_embedding = nn.Parameter(no_object_embedding.detach().reshape(1, -1).repeat(shared_classes, 1))

    def new_bank(self) -> MemoryBank:
        return MemoryBank(capacity=self.capacity)

    def condition(self, features: torch.Tensor, position: torch.Tensor, bank: MemoryBank) -> torch.Tensor:
        """features (N, D, h, w), position (N, D, h, w) -> memory-conditioned features (N, D, h, w)."""
        if len(bank) == 0:
            return features + self.no_memory_embedding.view(1, -1, 1, 1)
        n, d, h, w = features.shape
        memories, positions = [], []
        for distance, entry in enumerate(reversed(bank.entries), start=1):
            memories.append(entry.features.flatten(2).permute(2, 0, 1))
            temporal = self.temporal_encoding[distance - 1].reshape(1, 1, -1)
            positions.append(entry.position.flatten(2).permute(2, 0, 1) + temporal)
        out = self.memory_attention(
            current_vision_features=features.flatten(2).permute(2, 0, 1),
            current_vision_position_embeddings=position.flatten(2).permute(2, 0, 1),
            memory=torch.cat(memories, dim=0),
            memory_posision_embeddings=torch.cat(positions, dim=0),
        )
        # transformers returns (1, N, h*w, D) here (sequence-first with a singleton axis).
        return out.reshape(n, h * w, d).transpose(1, 2).reshape(n, d, h, w)

    def encode(self, features: torch.Tensor, mask_logits: torch.Tensor, object_scores: torch.Tensor) -> MemoryEntry:
        """features (R, D, h, w), mask logits (N, 1, H, W) at input resolution and object-score logits
        (N, 1) -> a memory entry of R rows. Per class, R = N: a row per window and class; shared, a row
        per window and N = R * C (each window's classes in turn).

        As in Meta's ``SAM2Base._encode_new_memory``: where the score is <= 0 the object (here: the
        class) is absent from the slice, and its entry carries `no_object_embedding`.
        """
        mask = torch.sigmoid(mask_logits) * self.sigmoid_scale + self.sigmoid_bias
        if self.shared_classes:
            encoded, position = self._encode_shared(features, mask)
        else:
            encoded, position = self.memory_encoder(features, mask)
        # Each row of the embedding belongs to one class (one row, for every class, per class).
        rows = self.no_object_embedding.shape[0]
        absent = 1.0 - (object_scores > 0).to(encoded.dtype)
        shift = absent.view(-1, rows) @ self.no_object_embedding.view(rows, -1) / rows
        encoded = encoded + shift[:, :, None, None]
        return MemoryEntry(features=encoded, position=position.expand_as(encoded))

    def _encode_shared(self, features: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """features (W, D, h, w), scaled masks (W * C, 1, H, W) -> one memory (W, M, h, w) and its position
        encoding per window.

        transformers' ``Sam2VideoMemoryEncoder.forward`` with the class mixing between its mask
        downsampler and its fuser (tests/test_shared_memory.py checks that one class computes what it does)."""
        assert self.class_mask_weights is not None, "made with shared_classes"
        encoder = self.memory_encoder
        masks = encoder.mask_downsampler(mask).unflatten(0, (-1, self.shared_classes))  # (W, C, D, h, w)
        mixed = (masks * self.class_mask_weights[None, :, :, None, None]).sum(dim=1)
        encoded = encoder.projection(encoder.memory_fuser(encoder.feature_projection(features) + mixed))
        return encoded, encoder.position_encoding(encoded.shape, encoded.device, encoded.dtype)
