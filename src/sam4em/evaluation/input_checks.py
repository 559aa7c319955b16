"""Checks that what `evaluate_volumes` is given can be scored, so a mistake never reads as Dice 0.

Each is fed the chunks evaluation reads anyway (no extra pass over the data) and raises a one-line
``ValueError`` naming the volume, the problem and the fix:

* probabilities (floating predictions) must be finite and within [0, 1] (logits or a 0/255 image
  stored as float are not probabilities);
* a ground-truth code of a requested class must occur somewhere in the ground truth (``mito=225``
  for 255 is a typo), unless the ground truth is background only (an empty annotation has defined
  scores) or ``allow_absent`` says the class truly is absent;
* a label-map prediction whose expected code of a class never occurs while it holds codes no class
  names (a 0/255 mask read with code 1) was given the wrong codes;
* a label-map prediction read with the default codes (1..C in the order of the classes) while the
  ground truth's codes are the same numbers in another order (``a=2,b=1``): a prediction written
  in either numbering looks valid, so which one it is must be said (checked before any reading).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = ["CodeTally", "check_default_codes", "check_probabilities", "codes_present"]

#: How many codes an error message lists.
_SHOWN = 12


def check_probabilities(block: NDArray[Any], where: str) -> None:
    """Refuse NaN and values outside [0, 1] in a block of a floating prediction."""
    if block.size == 0:
        return
    low, high = float(np.min(block)), float(np.max(block))  # NaN propagates into both
    if np.isnan(low) or np.isnan(high):
        raise ValueError(f"{where}: holds NaN probabilities; fix the model output or mask the NaN voxels out")
    if low < 0.0 or high > 1.0:
        raise ValueError(
            f"{where}: a floating prediction is read as probabilities in [0, 1] but holds values from "
            f"{low:g} to {high:g} (logits? apply a sigmoid; a label map? store it as integers and pass "
            "pred_classes / --pred-classes)"
        )


def _pairs(codes: Mapping[str, int]) -> str:
    return ",".join(f"{name}={code}" for name, code in codes.items())


def check_default_codes(classes: Mapping[str, int], defaults: Mapping[str, int], where: str) -> None:
    """Refuse default label-map codes that are the ground truth's codes of other classes.

    ``classes`` are the ground truth's codes, ``defaults`` the prediction's codes assumed when none
    are given (1..C in the order of ``classes``). When both are the same set of numbers in another
    order, a prediction numbered like the ground truth would be scored class against wrong class.
    """
    if dict(classes) == dict(defaults) or set(classes.values()) != set(defaults.values()):
        return
    raise ValueError(
        f"{where}: the default label-map codes {_pairs(defaults)} (1..C in classes order) are the ground "
        f"truth's codes {_pairs(classes)} in another order, so the codes are ambiguous: pass pred_classes "
        f"(--pred-classes), e.g. the ground truth's codes --pred-classes {_pairs(classes)}, "
        f"or --pred-classes {_pairs(defaults)} for a prediction numbered in classes order"
    )


def codes_present(volume: Any, chunk_slices: int) -> list[int]:
    """The distinct values of an integer (Z, Y, X) volume, read ``chunk_slices`` slices at a time."""
    found: set[int] = set()
    for z0 in range(0, int(volume.shape[0]), chunk_slices):
        found.update(np.unique(np.asarray(volume[z0 : z0 + chunk_slices])).tolist())
    return sorted(found)


def _listing(codes: list[int]) -> str:
    shown = ", ".join(str(c) for c in codes[:_SHOWN])
    return f"[{shown}{', ...' if len(codes) > _SHOWN else ''}]"


class CodeTally:
    """Which of the expected codes (class name -> code) occur in a label volume, chunk by chunk."""

    def __init__(self, codes: Mapping[str, int], where: str) -> None:
        self.codes = dict(codes)
        self.where = where
        self.seen = dict.fromkeys(self.codes, False)
        self.any_nonzero = False
        self.unnamed: set[int] = set()  # a sample of the non-zero codes no class names

    def add(self, block: NDArray[Any]) -> None:
        for name, code in self.codes.items():
            if not self.seen[name]:
                self.seen[name] = bool((block == code).any())
        nonzero = block != 0
        self.any_nonzero = self.any_nonzero or bool(nonzero.any())
        if len(self.unnamed) < _SHOWN:
            other = nonzero & ~np.isin(block, list(self.codes.values()))
            if other.any():
                self.unnamed.update(np.unique(block[other][: 1 << 16]).tolist()[:_SHOWN])

    @property
    def absent(self) -> list[str]:
        return [name for name, seen in self.seen.items() if not seen]

    def check_ground_truth(self, volume: Any, chunk_slices: int, allow_absent: bool) -> None:
        """Raise when a class's code occurs nowhere in a ground truth that is not background only."""
        missing = self.absent
        if not missing or allow_absent or not self.any_nonzero:
            return
        named = ", ".join(f"{name}={self.codes[name]}" for name in missing)
        raise ValueError(
            f"{self.where}: the ground truth has no voxel of {named} (codes present: "
            f"{_listing(codes_present(volume, chunk_slices))}); correct the class codes, or pass "
            "allow_absent_classes=True / --allow-absent-classes if the class truly is absent"
        )

    def check_prediction(self) -> None:
        """Raise when a class's code never occurs in a label map holding codes no class names."""
        missing = self.absent
        if not missing or not self.unnamed:
            return
        name = missing[0]
        example = sorted(self.unnamed)[-1]
        raise ValueError(
            f"{self.where}: holds codes {_listing(sorted(self.unnamed))} that no class names, and code "
            f"{self.codes[name]} of class {name} never occurs; pass the prediction's codes with pred_classes / "
            f"--pred-classes, e.g. --pred-classes {name}={example}"
        )
