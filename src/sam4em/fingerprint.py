"""Stable fingerprints of runs, so that a ``--resume`` can refuse to mix two runs.

A run records, when it starts, digests of what decides its result (the model's weights, the options);
a resume recomputes them and refuses on any difference. Digests are SHA-256 hex strings that are equal
in every process, on every machine and device, for equal content (no salted ``hash()``, no pickles,
no dict order). This module sits below every layer (it needs only ``hashlib``, ``json``, ``numpy`` and
``torch``), so inference, training and the CLI can all use it.

API:

* ``digest_options(options) -> str``: digest of a JSON-like mapping of options, as canonical JSON
  (keys sorted; tuples as lists; ``Path`` as ``str``; numpy scalars and arrays as numbers and lists;
  floats by their shortest round-trip ``repr``). ``{"a": (1, 2)}`` and ``{"a": [1, 2]}`` agree;
  ``1``, ``1.0`` and ``True`` differ, as they do in YAML. Any other type is refused with
  ``TypeError`` rather than digested by a ``str()`` that may change.
* ``digest_state(state) -> str``: digest of a ``state_dict`` (name -> tensor): names, dtypes, shapes
  and bytes of every tensor in name order; independent of device, strides and dict order. Use it for
  "the model's weights": ``digest_state(model.state_dict())``.
* ``digest_volume(volume) -> dict``: shape, dtype and a digest of three slices of an open volume.
* ``digest_file(path) -> str``: digest of a file's bytes, or of a folder's files (relative names,
  sizes and contents), read in 1 MiB pieces.
* ``mismatches(recorded, current) -> list[str]``: sorted keys whose values differ between two
  fingerprints (a key missing on one side differs), for a refusal naming what changed.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path, PurePath
from typing import Any

import numpy as np
import torch

__all__ = ["digest_file", "digest_options", "digest_state", "digest_volume", "mismatches"]


def _canonical(value: Any) -> Any:
    """`value` as plain JSON types, the same for equal values whatever their container types."""
    if isinstance(value, Mapping):
        keys = [str(k) for k in value]
        if len(set(keys)) != len(keys):
            raise TypeError(f"option keys collide once written as strings: {sorted(keys)}")
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, np.ndarray):
        return _canonical(value.tolist())
    if isinstance(value, np.generic):
        return _canonical(value.item())
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, float):
        # JSON has no NaN or infinity; their repr keeps them distinct and stable.
        return value if math.isfinite(value) else repr(value)
    if value is None or isinstance(value, (bool, int, str)):
        return value
    raise TypeError(f"cannot fingerprint a {type(value).__name__} option ({value!r}); pass plain values")


def digest_options(options: Mapping[str, Any]) -> str:
    """SHA-256 of `options` written as canonical JSON (see the module docstring)."""
    text = json.dumps(_canonical(options), sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


def digest_state(state: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 of a state dict's tensors: names, dtypes, shapes and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().to("cpu").contiguous()
        # Names, dtype and shape delimit each tensor, so moving bytes between tensors changes the digest.
        digest.update(f"{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
        # Bytes via a uint8 view: numpy has no bfloat16, and a view copies nothing.
        # (numpy's stubs declare the buffer protocol for Python >= 3.12 only)
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())  # type: ignore[arg-type]
    return digest.hexdigest()


def digest_volume(volume: Any) -> dict[str, Any]:
    """Shape, dtype and the SHA-256 of the first, middle and last slices of an open (Z, Y, X) volume.

    Three slices cost milliseconds on volumes of any size and tell a volume replaced at the same path
    (another crop, a re-aligned stack, new labels); a change confined to other slices goes unnoticed."""
    depth = int(volume.shape[0])
    digest = hashlib.sha256()
    for z in sorted({0, depth // 2, depth - 1}):
        digest.update(np.ascontiguousarray(volume[z]).tobytes())
    return {"shape": [int(s) for s in volume.shape], "dtype": str(volume.dtype), "slices": digest.hexdigest()}


def digest_file(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file, or of a folder's files (names, sizes and contents), so any change shows."""
    root = Path(path)
    digest = hashlib.sha256()
    files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
    for file in files:
        name = file.relative_to(root).as_posix() if root.is_dir() else ""
        # Name and size delimit each file, so moving bytes between files changes the digest too.
        digest.update(f"{name}\0{file.stat().st_size}\0".encode())
        with file.open("rb") as f:
            for block in iter(functools.partial(f.read, 1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def mismatches(recorded: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """Sorted keys whose values differ between two fingerprints (missing on one side counts)."""
    missing = object()
    return sorted(
        k for k in set(recorded) | set(current) if recorded.get(k, missing) != current.get(k, missing)
    )
