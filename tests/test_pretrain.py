"""Self-supervised pretraining: the objective, masking without leaks, resume equality, and a pretrained
encoder as the base of `sam4em train` (pretrain -> train -> segment on test-tiny)."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile
import torch
import yaml
from safetensors.torch import load_file

from sam4em.cli import main as cli_main
from sam4em.data.unlabelled import UnlabelledCrops, UnlabelledVolume
from sam4em.models import MODELS, CheckpointError, build_model, load_model
from sam4em.models.masked_image import build_masked_image_model
from sam4em.training.config import config_from_dict
from sam4em.training.pretrain import PretrainSettings, masked_reconstruction_loss, pretrain
from sam4em.training.trainer import train

pytestmark = pytest.mark.usefixtures("one_thread")


def _volumes(tmp_path: Path) -> list[str]:
    """Two small EM-like volumes: textured membranes as a TIFF, and an HDF5 dataset read as path:key."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:96, :96]
    stack = np.stack([120 + 60 * np.sin((xx + 3 * z) / 5.0) * np.cos(yy / 7.0) + rng.normal(0, 10, (96, 96)) for z in range(6)])
    tifffile.imwrite(tmp_path / "a.tif", np.clip(stack, 0, 255).astype(np.uint8))
    with h5py.File(tmp_path / "b.h5", "w") as f:
        f["raw"] = rng.integers(0, 255, (8, 80, 80), dtype=np.uint8)
    return [str(tmp_path / "a.tif"), f"{tmp_path / 'b.h5'}:raw@2-6"]


def _settings(**overrides) -> PretrainSettings:
    values = {"base": "test-tiny", "steps": 4, "batch_size": 2, "warmup_steps": 1, "checkpoint_every": 2, "tensorboard": False}
    return PretrainSettings(**{**values, **overrides})


def test_volume_spec_parses_key_and_z_range(tmp_path):
    a, b = _volumes(tmp_path)
    volume = UnlabelledVolume.parse(b)
    assert (volume.path, volume.key, volume.z_range) == (str(tmp_path / "b.h5"), "raw", (2, 6))
    assert UnlabelledVolume.parse(a) == UnlabelledVolume(path=a)
    crops = UnlabelledCrops([UnlabelledVolume.parse(v) for v in (a, b)], crop_size=64, samples=40, seed=1)
    items = [crops[i]["image"] for i in range(40)]
    assert all(item.shape == (1, 64, 64) and item.dtype == torch.float32 for item in items)
    assert torch.equal(crops[7]["image"], UnlabelledCrops(crops.volumes, crop_size=64, samples=40, seed=1)[7]["image"])
    with pytest.raises(ValueError, match="outside its 8 slices"):
        UnlabelledCrops([UnlabelledVolume.parse(f"{tmp_path / 'b.h5'}:raw@2-9")], crop_size=64, samples=1)


def test_loss_is_one_for_the_mean_predictor_and_zero_for_the_target():
    images = torch.rand(2, 1, 64, 64)
    masks = torch.zeros(2, 4, 4, dtype=torch.bool)
    masks[:, ::2] = True
    assert masked_reconstruction_loss(torch.zeros_like(images), images, masks, 16).item() == pytest.approx(1.0, abs=0.01)
    patches = images.unfold(2, 16, 16).unfold(3, 16, 16)
    mean = patches.mean((-1, -2)).repeat_interleave(16, 2).repeat_interleave(16, 3)
    std = patches.std((-1, -2), unbiased=False).repeat_interleave(16, 2).repeat_interleave(16, 3)
    target = (images - mean) / (std**2 + 1e-4).sqrt()
    assert masked_reconstruction_loss(target, images, masks, 16).item() == pytest.approx(0.0, abs=1e-6)
    # Only hidden pixels count: garbage on visible ones changes nothing.
    assert masked_reconstruction_loss(torch.where(masks.repeat_interleave(16, 1).repeat_interleave(16, 2)[:, None], target, 9.0),
                                      images, masks, 16).item() == pytest.approx(0.0, abs=1e-6)


def test_masked_image_model_declares_the_image_size_it_was_built_for():
    assert build_masked_image_model("test-tiny", pretrained=False).image_size == MODELS["test-tiny"].image_size
    assert build_masked_image_model("test-tiny", pretrained=False, image_size=96).image_size == 96


def test_hidden_pixels_do_not_reach_the_encoder():
    model = build_masked_image_model("test-tiny", pretrained=False).eval()
    masks = model.random_masks(1, 64, 0.5, torch.Generator().manual_seed(0))
    assert masks.sum() == 8
    images = torch.rand(1, 1, 64, 64)
    changed = images.clone()
    changed[masks.repeat_interleave(16, 1).repeat_interleave(16, 2)[None]] = torch.rand(int(masks.sum()) * 256)
    with torch.no_grad():
        assert torch.equal(model(images, masks), model(changed, masks))
        visible = images.clone()
        visible[0, 0, ~masks[0].repeat_interleave(16, 0).repeat_interleave(16, 1)] += 0.3
        assert not torch.equal(model(images, masks), model(visible, masks))


def test_resume_gives_identical_encoder_and_refuses_other_settings(tmp_path):
    volumes = _volumes(tmp_path)
    full = pretrain(volumes, tmp_path / "full", _settings(), progress=False)
    assert not full.interrupted and full.steps == 4
    stopped = pretrain(volumes, tmp_path / "part", _settings(), progress=False, should_stop=lambda stage, step: step == 3)
    assert stopped.interrupted and not (tmp_path / "part" / "encoder.safetensors").exists()
    with pytest.raises(FileExistsError, match="--resume"):
        pretrain(volumes, tmp_path / "part", _settings(), progress=False)
    with pytest.raises(ValueError, match="lr"):
        pretrain(volumes, tmp_path / "part", _settings(lr=5e-3), resume=True, progress=False)
    pretrain(volumes, tmp_path / "part", _settings(), resume=True, progress=False)
    a, b = load_file(tmp_path / "full" / "encoder.safetensors"), load_file(tmp_path / "part" / "encoder.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    rows = [line.split(",")[2] for line in (tmp_path / "full" / "metrics.csv").read_text().splitlines()[1:]]
    assert rows == [line.split(",")[2] for line in (tmp_path / "part" / "metrics.csv").read_text().splitlines()[1:]]
    assert (tmp_path / "full" / "reconstructions.png").stat().st_size > 0
    # A resume of a finished run does nothing and reports the run's own outcome (not the NaN of no step).
    written = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "full").iterdir() if p.is_file()}
    again = pretrain(volumes, tmp_path / "full", _settings(), resume=True, progress=False)
    assert again.already_complete and (again.steps, again.final_loss) == (4, round(full.final_loss, 4))
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "full").iterdir() if p.is_file()} == written


def test_pretrained_encoder_is_a_base_for_train_and_segment(tmp_path):
    volumes = _volumes(tmp_path)
    assert cli_main(["pretrain", *volumes, "--out", str(tmp_path / "runs" / "em"), "--base", "test-tiny", "--steps", "2",
                     "--batch-size", "2", "--no-progress"]) == 0
    encoder = load_file(tmp_path / "runs" / "em" / "encoder.safetensors")
    model = build_model(tmp_path / "runs" / "em", 1)
    assert model.info.build_options.finetune == "lora" and model.info.pretrained_base
    base = {k.replace(".base_layer.", "."): v for k, v in model.image_encoder.state_dict().items() if "lora_" not in k}
    assert base.keys() == encoder.keys() and all(torch.equal(base[k], encoder[k]) for k in encoder)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad and n.startswith("image_encoder.")]
    assert trainable and all("lora_" in n for n in trainable)

    labels = tmp_path / "labels.tif"
    image = tifffile.imread(volumes[0])
    tifffile.imwrite(labels, np.where(image > 150, 255, 0).astype(np.uint8))
    config = config_from_dict({
        "classes": "mito=255", "volumes": [{"image": volumes[0], "labels": str(labels), "val_fraction": 0.3}],
        "model": {"base": str(tmp_path / "runs" / "em")}, "stages": [1], "tensorboard": False,
        "stage1": {"steps": 2, "batch_size": 2, "warmup_steps": 1}, "val_every": 2, "val_samples": 2,
    })
    train(config, tmp_path / "run", progress=False)
    trained = load_model(tmp_path / "run")
    assert trained.info.pretrained_base and trained.info.weights_source == str((tmp_path / "runs" / "em").resolve())
    assert cli_main(["segment", volumes[0], str(tmp_path / "seg.tif"), "--model", str(tmp_path / "run")]) == 0
    assert tifffile.imread(tmp_path / "seg.tif").shape == image.shape


def test_models_lists_pretrained_runs(tmp_path, capsys):
    pretrain(_volumes(tmp_path), tmp_path / "runs" / "em", _settings(steps=1), progress=False)
    assert cli_main(["models", "--runs", str(tmp_path / "runs")]) == 0
    assert f"{tmp_path / 'runs' / 'em'}" in capsys.readouterr().out


def test_pretrain_cli_errors_are_one_line(tmp_path, capsys):
    volumes = _volumes(tmp_path)
    assert cli_main(["pretrain", volumes[0], "--out", str(tmp_path / "x"), "--base", "test-tiny"]) == 2
    assert "--steps" in capsys.readouterr().err
    assert cli_main(["pretrain", volumes[0], "--out", str(tmp_path / "x"), "--base", "cpu-small", "--pretrained", "--steps", "1"]) == 2
    assert "no pretrained weights" in capsys.readouterr().err



def test_truncated_encoder_file_of_a_pretrain_run_is_refused_naming_it(tmp_path):
    run = tmp_path / "em"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump({"pretrain": {"base": "test-tiny"}}))
    (run / "encoder.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\": tru")  # cut short
    with pytest.raises(CheckpointError, match=r"encoder\.safetensors"):
        build_model(run, 1)
