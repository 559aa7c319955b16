"""`sam4em.atomic`: a write either replaces the target whole or leaves it as it was."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from sam4em.atomic import write_atomically, write_text_atomically


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "config.yaml"
    target.write_text("old")

    def half_then_crash(path):
        path.write_text("half of the new")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomically(target, half_then_crash)
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"]


def test_the_new_file_replaces_the_old_with_the_permissions_of_a_plain_write(tmp_path):
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    target = tmp_path / "metrics.csv"
    target.write_text("old")
    write_text_atomically(target, "new ü")
    assert target.read_text(encoding="utf-8") == "new ü"
    assert target.stat().st_mode == plain.stat().st_mode  # not tempfile's 0600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.csv", "plain.txt"]


def test_without_overwrite_an_existing_file_is_refused_and_kept(tmp_path):
    target = tmp_path / "scores.json"
    write_atomically(target, lambda path: path.write_text("first"), overwrite=False)
    with pytest.raises(FileExistsError, match="--overwrite"):
        write_atomically(target, lambda path: path.write_text("second"), overwrite=False)
    assert target.read_text() == "first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scores.json"]


def test_a_file_its_writer_made_private_gets_a_plain_file_s_permissions(tmp_path):
    """safetensors creates its files 0600: a model saved so could not be loaded by a colleague."""
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    target = tmp_path / "model.safetensors"
    write_atomically(target, lambda path: save_file({"w": torch.zeros(2)}, str(path)))
    assert target.stat().st_mode == plain.stat().st_mode
