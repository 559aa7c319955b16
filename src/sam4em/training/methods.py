"""The compared methods, in one table: every other module (config, presets, benchmark, CLI help) reads
their names and traits from `METHODS`. All are built from one `TrainConfig`, so they train on equal terms
(`sam4em.training.method_builder`).

- ``sam4em``: the full method (enhancer, prompt generator, two stages, memory).
- ``sam4em-no-enhancer``: ablation without the feature enhancer.
- ``two-stage-no-memory``: H-SAM-like, two decoding stages, no memory, 2D training only.
- ``samed``: SAMed-like, SAM2 + LoRA with one decoder and static prompts, no memory.
- ``unet2d`` / ``unet3d``: MONAI U-Nets trained from scratch.

Adding a method = one entry here (and, for a new architecture, one branch in `build_method`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["METHODS", "METHOD_NAMES", "MethodSpec"]

Architecture = Literal["sam2", "unet2d", "unet3d"]


@dataclass(frozen=True)
class MethodSpec:
    """One compared method: its architecture and, for SAM2 methods, the `BuildOptions` it switches."""

    name: str
    architecture: Architecture
    # `sam4em.models.BuildOptions` fields this method sets (SAM2 methods only), as (field, value) pairs.
    build: tuple[tuple[str, bool], ...] = ()

    @property
    def has_memory(self) -> bool:
        """It has a memory, so the 3D stage (stage 2) has something to train."""
        return self.architecture == "sam2" and dict(self.build).get("memory", True)

    @property
    def stages(self) -> list[int]:
        """The stages it trains: both with a memory, else only the 2D stage."""
        return [1, 2] if self.has_memory else [1]

    @property
    def volumetric(self) -> bool:
        """It trains on clips of slices in every stage (not only in stage 2)."""
        return self.architecture == "unet3d"

    @property
    def from_scratch(self) -> bool:
        """It has no pretrained SAM2 base (a MONAI U-Net)."""
        return self.architecture != "sam2"


METHODS: dict[str, MethodSpec] = {
    spec.name: spec
    for spec in (
        MethodSpec("sam4em", "sam2"),
        MethodSpec("sam4em-no-enhancer", "sam2", (("enhancer", False),)),
        MethodSpec("two-stage-no-memory", "sam2", (("memory", False),)),
        MethodSpec(
            "samed",
            "sam2",
            (("two_stage", False), ("prompt_generator", False), ("memory", False), ("enhancer", False),
             ("detail_head", False)),
        ),
        MethodSpec("unet2d", "unet2d"),
        MethodSpec("unet3d", "unet3d"),
    )
}
METHOD_NAMES: tuple[str, ...] = tuple(METHODS)
