"""The model format recorded in saved runs: current runs say so, older runs are converted, newer refused."""

from __future__ import annotations

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from sam4em.models import CheckpointError, build_model, load_model, save_model
from sam4em.models.model_format import FORMAT_VERSION


def _clip() -> torch.Tensor:
    return torch.rand(1, 4, 1, 64, 64, generator=torch.Generator().manual_seed(5))


def _edit_record(run, edit) -> None:
    path = run / "config.yaml"
    document = yaml.safe_load(path.read_text())
    edit(document["model"])
    path.write_text(yaml.safe_dump(document, sort_keys=False))


def test_saved_runs_record_the_model_format(tmp_path):
    save_model(build_model("test-tiny", 1, pretrained=False), tmp_path / "run")
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["model"]["format"] == FORMAT_VERSION == 2


def test_run_saved_in_format_1_is_converted_and_predicts_as_when_saved(tmp_path):
    """A format-1 run: no `format` entry, temporal rows in the old order (row R-1-d for d slices back),
    no object-absent embedding. Made here from a current model whose object-absent embedding is zero,
    so the old code would have predicted exactly what this model predicts."""
    model = build_model("test-tiny", 2, pretrained=False).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name != "memory.no_object_embedding":
                p.add_(0.01 * torch.randn_like(p))
        expected = model.forward_clip(_clip()).logits
    run = save_model(model, tmp_path / "run")
    state = load_file(run / "model.safetensors")
    table = state["memory.temporal_encoding"]
    old_table = table.clone()
    for distance in range(1, table.shape[0]):
        old_table[table.shape[0] - 1 - distance] = table[distance - 1]
    state["memory.temporal_encoding"] = old_table
    del state["memory.no_object_embedding"]
    save_file(state, str(run / "model.safetensors"))
    _edit_record(run, lambda record: record.pop("format"))

    with pytest.warns(UserWarning, match=r"run: saved in model format 1 .*converted on loading") as caught:
        loaded = load_model(run)
    assert len(caught) == 1 and "\n" not in str(caught[0].message)
    with torch.no_grad():
        assert torch.equal(loaded.forward_clip(_clip()).logits, expected)
    assert torch.equal(loaded.memory.temporal_encoding, table)


def test_run_saved_by_a_newer_sam4em_is_refused(tmp_path):
    run = save_model(build_model("test-tiny", 1, pretrained=False), tmp_path / "run")
    def from_the_future(record):
        record["format"] = FORMAT_VERSION + 1
        record["build"]["option_of_the_future"] = True  # refused for its format before this is read

    _edit_record(run, from_the_future)
    with pytest.raises(CheckpointError, match=r"config\.yaml: saved by a newer sam4em \(model format 3.*upgrade sam4em"):
        load_model(run)
