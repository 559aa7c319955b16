"""`sam4em.fingerprint`: digests equal exactly when what decides a run's result is equal."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from sam4em.fingerprint import digest_file, digest_options, digest_state, mismatches


def test_option_digest_ignores_order_and_container_types_but_not_values() -> None:
    options = {"tile": (48, 48), "lr": 1e-3, "path": Path("/data/a.zarr"), "classes": ["mito", "er"], "n": np.int64(3)}
    same = {"n": 3, "classes": ["mito", "er"], "path": "/data/a.zarr", "lr": 0.001, "tile": [48, 48]}
    assert digest_options(options) == digest_options(same)
    for key, value in [("tile", (48, 40)), ("lr", 1.0000001e-3), ("classes", ["er", "mito"]), ("n", 4)]:
        assert digest_options({**options, key: value}) != digest_options(options), key
    assert digest_options({"a": None}) != digest_options({})
    assert digest_options({"a": 1}) != digest_options({"a": True})  # JSON keeps true and 1 apart


def test_option_digest_is_the_same_in_another_process() -> None:
    options = {"seed": 7, "stages": [{"lr": 3e-4, "steps": 10}], "name": "vnc"}
    code = f"from sam4em.fingerprint import digest_options; print(digest_options({options!r}))"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert other == digest_options(options)


def test_option_digest_refuses_values_it_cannot_write_stably() -> None:
    with pytest.raises(TypeError, match="object"):
        digest_options({"model": object()})


def test_state_digest_sees_any_weight_change_and_nothing_else() -> None:
    torch.manual_seed(0)
    state = {"w": torch.randn(3, 4), "b": torch.randn(4).to(torch.bfloat16), "step": torch.tensor(5)}
    reordered = {"step": state["step"].clone(), "b": state["b"].clone(), "w": state["w"].t().contiguous().t()}
    assert digest_state(state) == digest_state(reordered)  # order and strides do not matter
    changed = {**state, "w": state["w"].clone()}
    changed["w"][2, 3] = torch.nextafter(changed["w"][2, 3], torch.tensor(10.0))  # one float, one ulp
    assert digest_state(changed) != digest_state(state)
    assert digest_state({**state, "w": state["w"].double()}) != digest_state(state)  # dtype counts
    assert digest_state({**state, "w": state["w"].reshape(4, 3)}) != digest_state(state)  # shape counts
    assert digest_state({"v": state["w"], "b": state["b"], "step": state["step"]}) != digest_state(state)  # names


def test_file_digest_sees_bytes_moved_between_files(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"12")
    (tmp_path / "b").write_bytes(b"3")
    before = digest_file(tmp_path)
    (tmp_path / "a").write_bytes(b"1")
    (tmp_path / "b").write_bytes(b"23")
    assert digest_file(tmp_path) != before
    assert digest_file(tmp_path / "a") != digest_file(tmp_path / "b")


def test_mismatches_names_changed_added_and_removed_keys() -> None:
    assert mismatches({"a": 1, "b": 2, "c": 3}, {"a": 1, "b": 5, "d": None}) == ["b", "c", "d"]
    assert mismatches({"a": [1]}, {"a": [1]}) == []
