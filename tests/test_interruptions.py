"""Interrupting real `sam4em` processes: nothing is lost, nothing half-written, resuming is exact.

Each test starts ``python -m sam4em`` as a subprocess, waits until it is doing real work (rows in
metrics.csv, z-blocks started), signals it at a random moment, checks the exit and what is on disk,
then resumes (in-process, to save an interpreter start) and compares with an uninterrupted run. The
random seed is printed, so a failure can be replayed with SAM4EM_TEST_SEED=<seed>.
"""

from __future__ import annotations

import csv
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import yaml
from safetensors.torch import load_file

from sam4em.cli import main
from sam4em.fingerprint import digest_file as file_digest
from sam4em.inference.streaming import BLOCKS_DONE, COMPLETE
from sam4em.io import open_volume
from sam4em.training.checkpoint import load_checkpoint

STEPS = 20
# Batch size 2 on one thread: ~0.3 s a step, so the run lasts several seconds after its ~10 s start.
TRAIN_SETTINGS = ["--no-progress", "--preset", "cpu", "--set", "stage1.batch_size=2"]
SEGMENT_SETTINGS = ["--model", "test-tiny", "--output-type", "probs", "--block-size", "2", "--device", "cpu"]
# One torch thread here and in the subprocesses (see conftest.one_thread); results do not depend on it.
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def rng() -> random.Random:
    seed = int(os.environ.get("SAM4EM_TEST_SEED", random.randrange(2**32)))
    print(f"SAM4EM_TEST_SEED={seed}")
    return random.Random(seed)


def _volume(path: Path, depth: int, size: int = 64) -> tuple[Path, Path]:
    """Dark discs (label 255) on noisy gray, drifting in z: an EM-like image and its labels."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    mask = np.stack([(yy - 24 - z) ** 2 + (xx - 30) ** 2 < 10**2 for z in range(depth)])
    image = np.clip(150 + rng.normal(0, 12, mask.shape) - 90 * mask, 0, 255).astype(np.uint8)
    tifffile.imwrite(path / "image.tif", image, photometric="minisblack")
    tifffile.imwrite(path / "labels.tif", (255 * mask).astype(np.uint8), photometric="minisblack")
    return path / "image.tif", path / "labels.tif"


def _start(args: list[str], cwd: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # Output goes to files: a full pipe would block the child (segment draws a progress bar).
    return subprocess.Popen(
        [sys.executable, "-m", "sam4em", *args], cwd=cwd, env=env,
        stdout=(cwd / "stdout.txt").open("wb"), stderr=(cwd / "stderr.txt").open("wb"),
    )


def _wait_until(condition: Callable[[], bool], process: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 180
    while not condition():
        assert process.poll() is None, f"the process ended ({process.returncode}) before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _stderr_lines(cwd: Path) -> list[str]:
    return (cwd / "stderr.txt").read_text().strip().splitlines()


# -- training ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def training(tmp_path_factory: pytest.TempPathFactory, one_thread: None) -> tuple[Path, Path]:
    """(config, run folder of the uninterrupted reference run)."""
    root = tmp_path_factory.mktemp("training")
    image, labels = _volume(root, depth=8)
    config = {
        "classes": "mito=255",
        "volumes": [{"image": str(image), "labels": str(labels), "val_fraction": 0.25}],
        "model": {"base": "test-tiny"},
        "stages": [1],
        "stage1": {"steps": STEPS, "batch_size": 2, "lr": 3e-3, "warmup_steps": 2},
        "val_every": 8,
        "val_samples": 1,
        "checkpoint_every": 1,
        "tensorboard": False,
        "device": "cpu",
    }
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["train", str(path), "--out", str(root / "reference"), *TRAIN_SETTINGS]) == 0
    return path, root / "reference"


def _metrics(run: Path) -> list[dict[str, str]]:
    with (run / "metrics.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def _rows_written(run: Path) -> int:
    path = run / "metrics.csv"
    return max(len(path.read_bytes().splitlines()) - 1, 0) if path.exists() else 0


def _assert_same_run(run: Path, reference: Path) -> None:
    """Identical weights and identical logged numbers (all but the wall-clock timings)."""
    a, b = load_file(run / "model.safetensors"), load_file(reference / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows, expected = _metrics(run), _metrics(reference)
    timings = ("seconds", "steps_per_s", "data_wait")
    assert [{k: v for k, v in r.items() if k not in timings} for r in rows] == [
        {k: v for k, v in r.items() if k not in timings} for r in expected
    ]
    assert len(rows) == STEPS


def _interrupt_training(tmp_path: Path, config: Path, sig: int, rng: random.Random) -> tuple[int, Path]:
    run = tmp_path / "run"
    process = _start(["train", str(config), "--out", str(run), *TRAIN_SETTINGS], tmp_path)
    try:
        rows = rng.randint(1, STEPS // 2)
        _wait_until(lambda: _rows_written(run) >= rows, process, f"{rows} training steps")
        time.sleep(rng.uniform(0, 0.3))
        process.send_signal(sig)
        return process.wait(timeout=120), run
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


# SIGTERM takes the same path as SIGINT (one handler); the segmentation test covers it in CI.
@pytest.mark.parametrize(
    "sig", [signal.SIGINT, pytest.param(signal.SIGTERM, marks=pytest.mark.slow)], ids=["SIGINT", "SIGTERM"]
)
def test_interrupted_training_resumes_to_identical_results(
    sig: int, training: tuple[Path, Path], tmp_path: Path, rng: random.Random
) -> None:
    config, reference = training
    digests = {p: file_digest(p) for p in config.parent.glob("*.tif")}
    code, run = _interrupt_training(tmp_path, config, sig, rng)
    assert code == 130, (tmp_path / "stderr.txt").read_text()
    assert _stderr_lines(tmp_path)[-1].startswith("sam4em: interrupted; checkpoint saved")
    state = load_checkpoint(run / "checkpoints")
    assert state is not None and 0 < state["step"] < STEPS
    assert not (run / "model.safetensors").exists()
    # The step being trained when the signal came is finished and logged; nothing after it is.
    assert _rows_written(run) == state["step"]
    assert main(["train", str(config), "--out", str(run), "--resume", *TRAIN_SETTINGS]) == 0
    _assert_same_run(run, reference)
    assert digests == {p: file_digest(p) for p in digests}


def _assert_every_file_loads(run: Path) -> None:
    """Each file of a run folder is complete; only temporaries (never read) may be partial."""
    for path in sorted(p for p in run.rglob("*") if p.is_file()):
        if path.suffix == ".tmp":
            continue
        if path.suffix == ".pt":
            state = torch.load(path, map_location="cpu", weights_only=True)
            assert {"model", "optimizer", "step"} <= set(state), path
        elif path.suffix == ".safetensors":
            assert load_file(path), path
        elif path.name == "metrics.csv":
            rows = _metrics(run)
            assert all(np.isfinite(float(r["loss"])) and r["seconds"] for r in rows), path
        elif path.suffix == ".yaml":
            assert "train" in yaml.safe_load(path.read_text()), path
        elif path.name == "data_fingerprint.json":
            assert json.loads(path.read_text()), path
        else:
            raise AssertionError(f"unexpected file {path}")


def test_killed_training_leaves_only_complete_files(
    training: tuple[Path, Path], tmp_path: Path, rng: random.Random
) -> None:
    """SIGKILL gives no chance to clean up: every file must be whole by construction (atomic renames)."""
    config, reference = training
    code, run = _interrupt_training(tmp_path, config, signal.SIGKILL, rng)
    assert code == -signal.SIGKILL
    _assert_every_file_loads(run)
    # Whatever the moment, the run continues to the same result.
    assert main(["train", str(config), "--out", str(run), "--resume", *TRAIN_SETTINGS]) == 0
    _assert_same_run(run, reference)


def test_run_killed_before_its_first_checkpoint_starts_over_cleanly(
    training: tuple[Path, Path], tmp_path: Path
) -> None:
    """The window between a step's metrics row and its checkpoint: the row is redone, not repeated."""
    config, reference = training
    run = tmp_path / "run"
    run.mkdir()
    for name in ("config.yaml", "metrics.csv"):
        (run / name).write_bytes((reference / name).read_bytes())
    short = [*TRAIN_SETTINGS, "--set", "stage1.steps=2"]
    assert main(["train", str(config), "--out", str(run), "--resume", *short]) == 0
    assert [(r["stage"], r["step"]) for r in _metrics(run)] == [("1", "1"), ("1", "2")]


# -- segmentation --------------------------------------------------------------------------------
def _started_block(output: Path) -> int:
    """Highest z-block index whose forward pass has begun (its spill store exists), else -1."""
    spills = output.parent.glob(f"{output.name}.partial-forward-*.zarr")
    return max((int(p.name.rsplit("-", 1)[1].split(".")[0]) for p in spills), default=-1)


@pytest.mark.parametrize(
    "sig", [signal.SIGTERM, pytest.param(signal.SIGINT, marks=pytest.mark.slow)], ids=["SIGTERM", "SIGINT"]
)
def test_interrupted_segmentation_resumes_to_identical_output(
    sig: int, tmp_path: Path, rng: random.Random
) -> None:
    image, _ = _volume(tmp_path, depth=12)
    digest = file_digest(image)
    output = tmp_path / "out.zarr"
    process = _start(["segment", str(image), str(output), *SEGMENT_SETTINGS], tmp_path)
    try:
        block = rng.randint(1, 2)
        _wait_until(lambda: _started_block(output) >= block, process, f"z-block {block}")
        time.sleep(rng.uniform(0, 0.3))
        process.send_signal(sig)
        code = process.wait(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert code == 130, (tmp_path / "stderr.txt").read_text()
    assert "rerun the same command with --resume added" in _stderr_lines(tmp_path)[-1]
    with open_volume(output, "class1") as partial:
        assert partial.attrs[COMPLETE] is False
        assert 0 < len(partial.attrs[BLOCKS_DONE]) < 6
    assert file_digest(image) == digest

    assert main(["segment", str(image), str(output), "--resume", *SEGMENT_SETTINGS]) == 0
    assert main(["segment", str(image), str(tmp_path / "reference.zarr"), *SEGMENT_SETTINGS]) == 0
    with open_volume(output, "class1") as done, open_volume(tmp_path / "reference.zarr", "class1") as reference:
        assert done.attrs[COMPLETE] is True
        np.testing.assert_array_equal(done[:], reference[:])
    assert file_digest(image) == digest
    assert not list(tmp_path.glob("*partial*")) and not list(tmp_path.glob(".*"))
