"""Training: the run folder, a falling loss, resume equality, data-parallel equality, baselines, configs."""

from __future__ import annotations

import csv
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

from sam4em.models import load_model
from sam4em.training.config import ConfigError, config_from_dict, load_config
from sam4em.training.trainer import train

REPO = Path(__file__).resolve().parents[1]


def _blob_volume(path: Path, depth: int = 12, size: int = 80, seed: int = 0) -> tuple[Path, Path]:
    """A synthetic EM-like stack: dark discs (the 'mitochondria', label 255) on noisy gray, drifting in z."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    image = np.empty((depth, size, size), np.uint8)
    labels = np.zeros((depth, size, size), np.uint8)
    centres = rng.uniform(15, size - 15, (4, 2))
    for z in range(depth):
        mask = np.zeros((size, size), bool)
        for cy, cx in centres:
            mask |= (yy - cy - 0.5 * z) ** 2 + (xx - cx) ** 2 < 8**2
        image[z] = np.clip(150 + rng.normal(0, 12, (size, size)) - 90 * mask, 0, 255)
        labels[z] = 255 * mask
    tifffile.imwrite(path / "image.tif", image)
    tifffile.imwrite(path / "labels.tif", labels)
    return path / "image.tif", path / "labels.tif"


def _config(image: Path, labels: Path, **overrides):
    data = {
        "classes": "mito=255",
        "volumes": [{"image": str(image), "labels": str(labels), "val_fraction": 0.25}],
        "model": {"base": "test-tiny"},
        "stages": [1],
        "stage1": {"steps": 4, "batch_size": 2, "lr": 3e-3, "warmup_steps": 1},
        "stage2": {"steps": 2, "batch_size": 1, "lr": 1e-3, "warmup_steps": 1, "clip_length": 3},
        "val_every": 2,
        "val_samples": 2,
        "checkpoint_every": 2,
        "tensorboard": False,
    }
    for key, value in overrides.items():
        data[key] = value
    return config_from_dict(data)


def _rows(run: Path) -> list[dict[str, str]]:
    with (run / "metrics.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def test_both_stages_on_real_lucchi_crop(data_dir, tmp_path):
    lucchi = data_dir / "lucchi_pp"
    config = config_from_dict(
        {
            "classes": "mito=255",
            "volumes": [{"image": str(lucchi / "train_image.tif"), "labels": str(lucchi / "train_label.tif"), "z_range": [0, 24]}],
            "model": {"base": "test-tiny"},
            "stage1": {"steps": 3, "batch_size": 2, "warmup_steps": 1},
            "stage2": {"steps": 2, "batch_size": 1, "warmup_steps": 1, "clip_length": 3},
            "val_every": 2,
            "val_samples": 2,
        }
    )
    result = train(config, tmp_path / "run", progress=False)
    run = tmp_path / "run"
    for name in ("config.yaml", "metrics.csv", "model.safetensors", "checkpoints/last.pt", "plots/curves.png", "plots/val_overlay.png"):
        assert (run / name).exists(), name
    assert list((run / "tensorboard").iterdir())
    rows = _rows(run)
    assert [(r["stage"], r["step"]) for r in rows] == [("1", "1"), ("1", "2"), ("1", "3"), ("2", "1"), ("2", "2")]
    assert all(np.isfinite(float(r["loss"])) for r in rows)
    assert rows[-1]["val_dice_mito"] != ""
    assert set(result.best_scores) == {1, 2}
    model = load_model(run)
    assert model.info.class_names == ("mito",)
    text = (run / "config.yaml").read_text()
    assert "model:" in text and "train:" in text


def test_loss_falls_on_tiny_overfit_case(tmp_path):
    image, labels = _blob_volume(tmp_path)
    config = _config(
        image, labels, augment=False,
        stage1={"steps": 40, "batch_size": 4, "lr": 3e-3, "warmup_steps": 2}, val_every=40,
    )
    train(config, tmp_path / "run", progress=False)
    losses = [float(r["loss"]) for r in _rows(tmp_path / "run")]
    assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:5]), losses


# Stage 2 is where the model draws random numbers (SAM2's memory attention has dropout): a resume there
# must continue the same random stream, not one the data loader's start has moved.
@pytest.mark.parametrize("stop_at", [(1, 3), (2, 1)], ids=["in-stage-1", "in-stage-2"])
def test_resume_gives_identical_results(tmp_path, stop_at):
    image, labels = _blob_volume(tmp_path)
    config = _config(image, labels, stages=[1, 2], stage1={"steps": 4, "batch_size": 2, "lr": 3e-3, "warmup_steps": 1})
    train(config, tmp_path / "full", progress=False)
    stopped = train(config, tmp_path / "part", progress=False, should_stop=lambda stage, step: (stage, step) == stop_at)
    assert stopped.interrupted
    with pytest.raises(ConfigError, match="--resume"):
        train(config, tmp_path / "part", progress=False)
    leftover = tmp_path / "part" / "checkpoints" / ".last.pt.4242-1234.tmp"  # a checkpoint write killed by SIGKILL
    leftover.write_bytes(b"partial")
    resumed = train(config, tmp_path / "part", progress=False, resume=True)
    assert not resumed.interrupted and not leftover.exists()
    a, b = load_file(tmp_path / "full" / "model.safetensors"), load_file(tmp_path / "part" / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["loss"] for r in _rows(tmp_path / "full")] == [r["loss"] for r in _rows(tmp_path / "part")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, config, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    try:
        train(config, out, progress=False)
    finally:
        torch.distributed.destroy_process_group()


def test_two_process_data_parallel_matches_one_process(tmp_path):
    image, labels = _blob_volume(tmp_path)
    config = _config(image, labels, augment=False, stage1={"steps": 3, "batch_size": 4, "lr": 3e-3, "warmup_steps": 1}, val_every=100)
    train(config, tmp_path / "single", progress=False)
    mp.start_processes(_ddp_worker, args=(2, _free_port(), config, str(tmp_path / "ddp")), nprocs=2, start_method="spawn")
    single = [float(r["loss"]) for r in _rows(tmp_path / "single")]
    ddp = [float(r["loss"]) for r in _rows(tmp_path / "ddp")]
    assert len(single) == len(ddp) == 3
    np.testing.assert_allclose(ddp, single, rtol=1e-4)


@pytest.mark.parametrize("method", ["sam4em-no-enhancer", "two-stage-no-memory", "samed", "unet2d", "unet3d"])
def test_every_baseline_trains_a_step(method, tmp_path):
    image, labels = _blob_volume(tmp_path)
    config = _config(image, labels, method=method, stage1={"steps": 1, "batch_size": 1, "warmup_steps": 0}, val_samples=1)
    result = train(config, tmp_path / "run", progress=False)
    assert result.steps[1] == 1
    model = load_model(tmp_path / "run")
    with torch.no_grad():
        clip = torch.rand(1, 3, 1, 64, 64)
        assert model.forward_clip(clip).logits.shape == (1, 3, 1, 64, 64)


def test_config_errors_name_the_problem(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("volumes: []\nstage1: {stepz: 3}\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: stage1: unknown key\(s\) stepz"):
        load_config(bad)
    bad.write_text("volumes:\n  - image: ${NO_SUCH_VARIABLE_X}/a.tif\n    labels: b.tif\n")
    with pytest.raises(ConfigError, match="NO_SUCH_VARIABLE_X"):
        load_config(bad)


def test_presets_set_batches_and_set_wins(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("volumes:\n  - {image: a.tif, labels: b.tif}\nstage2: {clip_length: 4}\n")
    config = load_config(path, ["stage1.batch_size=3"], preset="gpu-40gb")
    assert config.stage1.batch_size == 3
    assert config.stage2.batch_size == 4
    assert config.stage2.clip_length == 4
