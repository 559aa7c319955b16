"""`sam4em export-encoder`: a trained run's image encoder as a base (a supervised "generalist" encoder).

The reference: the exported encoder, loaded as a base (fresh LoRA, which starts as the identity),
computes what the trained model's encoder computed with its LoRA updates.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import yaml
from safetensors.torch import load_file

from sam4em.cli import main as cli_main
from sam4em.models import build_model, load_model
from sam4em.models.checkpoint_files import CheckpointError
from sam4em.models.serialization import save_model
from sam4em.models.unet import UNet2D
from sam4em.training.config import config_from_dict
from sam4em.training.encoder_export import export_encoder
from sam4em.training.pretrain import PretrainSettings, pretrain
from sam4em.training.trainer import train

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory) -> Path:
    """A saved SAM4EM on a pretrained test-tiny encoder whose encoder LoRA moved away from the identity."""
    root = tmp_path_factory.mktemp("export")
    rng = np.random.default_rng(0)
    tifffile.imwrite(root / "em.tif", rng.integers(0, 255, (4, 64, 64), dtype=np.uint8), photometric="minisblack")
    settings = PretrainSettings(base="test-tiny", steps=1, batch_size=1, warmup_steps=1, tensorboard=False)
    pretrain([str(root / "em.tif")], root / "mim", settings, progress=False)
    model = build_model(root / "mim", class_names=["mito", "glia"])
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, parameter in model.image_encoder.named_parameters():
            if ".lora_B." in name:
                parameter.copy_(0.05 * torch.randn(parameter.shape, generator=generator))
    save_model(model, root / "run")
    return root / "run"


def test_an_em_pretrained_encoder_brings_no_memory_so_the_classes_share_it(lora_run):
    options = load_model(lora_run).info.build_options
    assert options.shared_memory and options.joint_detail


def test_exported_encoder_computes_what_the_trained_encoder_with_lora_did(lora_run, tmp_path):
    out = export_encoder(lora_run, tmp_path / "generalist")
    state = load_file(out / "encoder.safetensors")
    assert state and not any("lora_" in k or "base_layer" in k for k in state)
    record = yaml.safe_load((out / "config.yaml").read_text())["pretrain"]
    assert record["base"] == "test-tiny" and record["source"] == "supervised" and record["classes"] == ["mito", "glia"]

    # An encoder is what a model trains from: segmenting with it says so, not "is this a run folder?".
    with pytest.raises(CheckpointError, match=r"generalist: is an image encoder .* to train from, not a segmentation model"):
        load_model(out)
    trained, rebuilt = load_model(lora_run), build_model(out, 1)
    assert rebuilt.info.pretrained_base and rebuilt.info.build_options.finetune == "lora"
    pixels = torch.rand(2, 3, trained.image_size, trained.image_size, generator=torch.Generator().manual_seed(2))
    trained.eval(), rebuilt.eval()
    with torch.no_grad():
        expected, got = trained.image_encoder(pixels), rebuilt.image_encoder(pixels)
        plain = build_model(lora_run.parent / "mim", 1).eval().image_encoder(pixels)
    # The LoRA updates matter (the check can fail), and the export carries them.
    assert (expected.last_hidden_state - plain.last_hidden_state).abs().max() > 1e-3
    for a, b in zip(expected.fpn_hidden_states, got.fpn_hidden_states, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)


def test_export_records_what_the_run_trained_on(lora_run, tmp_path):
    """A trained run's volumes go into the record, so a benchmark can show which data made the encoder."""
    image = lora_run.parent / "em.tif"
    labels = tmp_path / "labels.tif"
    tifffile.imwrite(labels, np.where(tifffile.imread(image) > 128, 255, 0).astype(np.uint8), photometric="minisblack")
    config = config_from_dict({
        "classes": "mito=255", "volumes": [{"image": str(image), "labels": str(labels), "val_fraction": 0.5, "z_range": [0, 4]}],
        "model": {"base": "test-tiny"}, "stages": [1], "tensorboard": False,
        "stage1": {"steps": 1, "batch_size": 1, "warmup_steps": 0}, "val_every": 1, "val_samples": 1,
    })
    train(config, tmp_path / "run", progress=False)
    record = yaml.safe_load((export_encoder(tmp_path / "run", tmp_path / "enc") / "config.yaml").read_text())["pretrain"]
    assert record["volumes"] == [{"image": str(image), "labels": str(labels), "z_range": [0, 4], "labelled_slices": None}]


def test_export_refuses_a_baseline_and_an_existing_encoder(lora_run, tmp_path):
    export_encoder(lora_run, tmp_path / "done")
    with pytest.raises(FileExistsError, match="done"):
        export_encoder(lora_run, tmp_path / "done")
    save_model(UNet2D(num_classes=1, image_size=32), tmp_path / "unet")
    with pytest.raises(ValueError, match="baseline"):
        export_encoder(tmp_path / "unet", tmp_path / "other")


def test_export_encoder_cli_and_models_listing(lora_run, tmp_path, capsys):
    runs = tmp_path / "runs"
    assert cli_main(["export-encoder", str(lora_run), "--out", str(runs / "gen")]) == 0
    assert "model.base" in capsys.readouterr().out
    assert cli_main(["models", "--runs", str(runs)]) == 0
    assert "supervised encoder" in capsys.readouterr().out
    assert cli_main(["export-encoder", str(tmp_path / "missing"), "--out", str(runs / "x")]) != 0
    assert "missing" in capsys.readouterr().err
