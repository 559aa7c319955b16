"""`sam4em train` before, between and after its stages: checks that run before training, resumes that
refuse another config, presets that only fill gaps, the stage-1 model kept when stage 2 fails or is worse.

Synthetic runs use the test-tiny model on a 12-slice blob stack; the example configs run on the real
data in ../shared/data (skipped when absent) with tiny step counts and the test-tiny model.
"""

from __future__ import annotations

import csv
import re
import shlex
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
import torch
import yaml
from safetensors.torch import load_file

from sam4em.claim import claim_output
from sam4em.cli import main
from sam4em.models import load_model
from sam4em.training.config import ConfigError, config_from_dict, load_config
from sam4em.training.config_error import ConfigChanged
from sam4em.training.run_folder import check_same_config
from sam4em.training.selection import RunResult
from sam4em.training.step import StepLoss
from sam4em.training.trainer import train

REPO = Path(__file__).resolve().parents[1]
# Tiny runs: test-tiny (64 px input), one validation sample, no TensorBoard.
TINY = ["--set", "model.base=test-tiny", "--set", "val_samples=1", "--set", "tensorboard=false"]
pytestmark = pytest.mark.usefixtures("one_thread")


def _stack(folder: Path, depth: int = 12, size: int = 64) -> tuple[Path, Path]:
    """Dark discs (label 255) on noisy gray, drifting in z: an EM-like image and its labels."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    mask = np.stack([(yy - 24 - z) ** 2 + (xx - 30) ** 2 < 10**2 for z in range(depth)])
    image = np.clip(150 + rng.normal(0, 12, mask.shape) - 90 * mask, 0, 255).astype(np.uint8)
    tifffile.imwrite(folder / "image.tif", image, photometric="minisblack")
    tifffile.imwrite(folder / "labels.tif", (255 * mask).astype(np.uint8), photometric="minisblack")
    return folder / "image.tif", folder / "labels.tif"


def _data(folder: Path, **overrides: Any) -> dict[str, Any]:
    image, labels = _stack(folder)
    data: dict[str, Any] = {
        "classes": "mito=255",
        "volumes": [{"image": str(image), "labels": str(labels), "val_fraction": 0.25}],
        "model": {"base": "test-tiny"},
        "stages": [1, 2],
        "stage1": {"steps": 4, "batch_size": 2, "lr": 3e-3, "warmup_steps": 1},
        "stage2": {"steps": 2, "batch_size": 1, "lr": 1e-3, "warmup_steps": 1, "clip_length": 3},
        "val_every": 2,
        "val_samples": 2,
        "checkpoint_every": 2,
        "tensorboard": False,
    }
    data.update(overrides)
    return data


def _yaml(folder: Path, **overrides: Any) -> Path:
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(_data(folder, **overrides)))
    return path


def _fails(argv: list[str], capsys: pytest.CaptureFixture[str], *names: str) -> str:
    """Run the CLI; assert exit 2 and one stderr line, without traceback, naming every one of `names`."""
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("sam4em: error: "), err
    for name in names:
        assert name in err, (name, err)
    return err


def _rows(run: Path) -> list[dict[str, str]]:
    with (run / "metrics.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def _selection(run: Path) -> dict[str, Any]:
    return yaml.safe_load((run / "config.yaml").read_text())["selection"]


# -- item 4: a resume refuses a changed config ---------------------------------------------------
def test_resume_refuses_a_changed_config_naming_the_keys_and_keeps_config_yaml(tmp_path, capsys):
    config = _yaml(tmp_path)
    run = tmp_path / "run"
    stopped = train(load_config(config), run, progress=False, should_stop=lambda stage, step: (stage, step) == (1, 2))
    assert stopped.interrupted
    recorded = (run / "config.yaml").read_bytes()
    base = ["train", str(config), "--out", str(run), "--resume", "--no-progress"]
    _fails([*base, "--set", "seed=5", "--set", "stage1.lr=0.1"], capsys, "seed", "stage1.lr", "--out")
    # A changed architecture is refused by name too, never by a traceback from loading the checkpoint.
    _fails([*base, "--set", "model.lora_rank=4"], capsys, "model.lora_rank")
    _fails([*base, "--set", "model.base=cpu-small"], capsys, "model.base")
    with pytest.raises(ConfigChanged) as changed:  # the fields, for callers that continue a run themselves (the demo)
        check_same_config(run, load_config(config, ["seed=5", "stage1.lr=0.1"]))
    assert changed.value.fields == ["seed", "stage1.lr"]
    assert (run / "config.yaml").read_bytes() == recorded
    # Loader processes and TensorBoard change no number of the result: a resume may change them.
    assert main([*base, "--set", "num_workers=1", "--set", "tensorboard=true"]) == 0
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["seed"] == 0


def test_a_run_recorded_before_the_shared_layout_resumes_only_as_it_was(tmp_path, capsys):
    """Such a run trained per class, and its config.yaml has no model.shared_memory or joint_detail. Left
    unset now, they would share on test-tiny, a different model: refused by name; resumed when set as it ran."""
    per_class = {"base": "test-tiny", "shared_memory": False, "joint_detail": False}
    run = tmp_path / "run"
    started = config_from_dict(_data(tmp_path, model=per_class))
    assert train(started, run, progress=False, should_stop=lambda stage, step: (stage, step) == (1, 2)).interrupted
    document = yaml.safe_load((run / "config.yaml").read_text())
    for option in ("shared_memory", "joint_detail"):
        del document["train"]["model"][option]  # as sam4em recorded it before the options existed
    (run / "config.yaml").write_text(yaml.safe_dump(document, sort_keys=False))
    base = ["train", str(_yaml(tmp_path)), "--out", str(run), "--resume", "--no-progress"]
    _fails(base, capsys, "model.shared_memory", "model.joint_detail",
           "and --set model.shared_memory=false --set model.joint_detail=false, as the run used")
    assert main([*base, "--set", "model.shared_memory=false", "--set", "model.joint_detail=false"]) == 0
    assert load_model(run).memory.shared_classes == 0


def test_resume_refuses_training_data_replaced_at_the_same_path(tmp_path, capsys):
    config = _yaml(tmp_path)
    run = tmp_path / "run"
    stopped = train(load_config(config), run, progress=False, should_stop=lambda stage, step: (stage, step) == (1, 2))
    assert stopped.interrupted and (run / "data_fingerprint.json").exists()
    labels = tmp_path / "labels.tif"
    original = tifffile.imread(labels)
    tifffile.imwrite(labels, np.roll(original, 3, axis=2), photometric="minisblack")  # same path, shape, dtype
    base = ["train", str(config), "--out", str(run), "--resume", "--no-progress"]
    _fails(base, capsys, "volumes[0].labels", "content differs", "--out")
    tifffile.imwrite(labels, original, photometric="minisblack")  # the run's own data again: it resumes
    assert main(base) == 0


def test_a_second_run_on_a_run_folder_in_use_is_refused(tmp_path, capsys):
    config = _yaml(tmp_path)
    run = tmp_path / "run"
    with claim_output(run):  # as a live `sam4em train --out run` holds it
        _fails(["train", str(config), "--out", str(run), "--resume"], capsys, str(run), "another sam4em run")
    assert not run.exists()


# -- item 8: presets fill only what the config leaves unset --------------------------------------
def test_preset_fills_only_unset_values_and_the_result_is_printed_and_saved(tmp_path, capsys):
    config = _yaml(tmp_path, stages=[1], stage1={"steps": 2, "batch_size": 2, "warmup_steps": 0},
                   stage2={"steps": 1, "clip_length": 3})
    run = tmp_path / "run"
    assert main(["train", str(config), "--out", str(run), "--preset", "gpu-80gb", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    # The YAML's batch size and clip length stand; the preset fills stage 2's batch and the accumulation.
    assert "stage1.batch_size=2, stage2.batch_size=8, stage2.clip_length=3, grad_accumulation=1" in printed
    assert "preset gpu-80gb" in printed
    saved = yaml.safe_load((run / "config.yaml").read_text())["train"]
    assert (saved["stage1"]["batch_size"], saved["stage2"]["batch_size"], saved["stage2"]["clip_length"]) == (2, 8, 3)
    # Unset everywhere: the preset's values; set by --set: --set's.
    bare = tmp_path / "bare.yaml"
    bare.write_text(yaml.safe_dump({"volumes": [{"image": "a.tif", "labels": "b.tif"}]}))
    filled = load_config(bare, ["stage2.batch_size=3"], preset="gpu-40gb")
    assert (filled.stage1.batch_size, filled.stage2.batch_size, filled.stage2.clip_length) == (16, 3, 8)


# -- item 9: checks before training; a failed stage 2 leaves the stage-1 model ------------------
def test_config_that_would_fail_in_stage_2_fails_before_training(tmp_path, capsys):
    # 12 slices, val_fraction 0.1: one validation slice, shorter than a clip of 3.
    config = _yaml(tmp_path, volumes=[{**_data(tmp_path)["volumes"][0], "val_fraction": 0.1}])
    run = tmp_path / "run"
    line = _fails(["train", str(config), "--out", str(run), "--no-progress"], capsys,
                  "volumes[0]", "image.tif", "clip", "val_fraction to 0.25")
    assert "stage 2" in line
    assert not run.exists()  # nothing trained, nothing written
    # The suggested fix works: val_fraction 0.25 gives a validation part of 3 slices.
    fixed = _data(tmp_path, stage1={"steps": 1, "batch_size": 2, "warmup_steps": 0},
                  stage2={"steps": 1, "batch_size": 1, "warmup_steps": 0, "clip_length": 3})
    assert fixed["volumes"][0]["val_fraction"] == 0.25
    assert train(config_from_dict(fixed), run, progress=False).steps == {1: 1, 2: 1}


def test_failed_stage_2_still_leaves_a_usable_stage_1_model(tmp_path, monkeypatch):
    config = config_from_dict(_data(tmp_path))
    original = StepLoss.forward

    def failing_in_clips(self, image, targets, valid):
        if self.clip:
            raise RuntimeError("simulated failure in stage 2")
        return original(self, image, targets, valid)

    monkeypatch.setattr(StepLoss, "forward", failing_in_clips)
    with pytest.raises(RuntimeError, match="simulated"):
        train(config, tmp_path / "run", progress=False)
    model = load_model(tmp_path / "run")  # what `sam4em segment --model RUN` does
    assert model.info.class_names == ("mito",)
    best1 = load_file(tmp_path / "run" / "checkpoints" / "best_stage1.safetensors")
    assert all(torch.equal(best1[k], v) for k, v in model.state_dict().items())
    selection = _selection(tmp_path / "run")
    assert selection["weights_from"] == "stage 1" and selection["complete"] is False


# -- item 13: the run ends with the best weights across stages -----------------------------------
def test_stage_2_replaces_stage_1_weights_only_when_better_on_its_validation_samples(tmp_path, capsys):
    # Stage 1 learns the discs; stage 2 at a learning rate of 1 on every weight ruins them.
    config = _yaml(
        tmp_path, augment=False, val_every=20, checkpoint_every=20,
        stage1={"steps": 40, "batch_size": 4, "lr": 3e-3, "warmup_steps": 2},
        stage2={"steps": 3, "batch_size": 1, "lr": 1.0, "warmup_steps": 0, "clip_length": 3, "adapter_lr_scale": 1.0},
    )
    run = tmp_path / "run"
    assert main(["train", str(config), "--out", str(run), "--no-progress"]) == 0
    stage2 = [float(r["val_dice_mean"]) for r in _rows(run) if r["stage"] == "2" and r["val_dice_mean"]]
    selection = _selection(run)
    assert selection["weights_from"] == "stage 1", (selection, stage2)
    # Judged on stage 2's own validation clips, where stage 1's weights scored better than stage 2 ever did.
    assert selection["val_dice_mean"] > max(stage2)
    assert selection["judged_on"] == "the validation samples of stage 2" and selection["complete"] is True
    saved, best1 = load_file(run / "model.safetensors"), load_file(run / "checkpoints" / "best_stage1.safetensors")
    assert saved.keys() == best1.keys() and all(torch.equal(saved[k], best1[k]) for k in saved)
    assert "holds the stage 1 weights" in capsys.readouterr().out


@pytest.mark.parametrize("stop", [(2, 0), (2, 1)])
def test_resumed_run_keeps_the_selection_of_the_stages_it_skips(stop, tmp_path):
    config = config_from_dict(_data(tmp_path))
    full = train(config, tmp_path / "full", progress=False)
    part = tmp_path / "part"
    # Stopped before or after stage 2's first step: stage 1 is done and restored from the checkpoint.
    assert train(config, part, progress=False, should_stop=lambda stage, step: (stage, step) == stop).interrupted
    resumed = train(config, part, progress=False, resume=True)
    assert (resumed.kept, resumed.kept_score, resumed.best_scores) == (full.kept, full.kept_score, full.best_scores)
    assert _selection(part) == _selection(tmp_path / "full")


# -- one-line errors instead of tracebacks -------------------------------------------------------
def test_train_with_zero_steps_is_a_one_line_error(tmp_path, capsys):
    config = _yaml(tmp_path)
    _fails(["train", str(config), "--out", str(tmp_path / "run"), "--set", "stage2.steps=0"], capsys,
           "config.yaml", "stage2.steps", "stages")
    assert not (tmp_path / "run").exists()


def test_a_missing_volume_is_named_by_its_entry_and_where_relative_paths_start(tmp_path, capsys, monkeypatch):
    config = _yaml(tmp_path)
    monkeypatch.chdir(tmp_path)
    _fails(["train", str(config), "--out", str(tmp_path / "run"), "--set", "volumes=[{image: no.tif, labels: no.tif}]"],
           capsys, "volumes[0].image: no.tif: no such file", f"working directory, {tmp_path})")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("scores", [{1: 0.5, 2: 0.6}, {1: float("nan"), 2: float("nan")}])
def test_the_summary_says_what_the_model_holds(scores, tmp_path, capsys, monkeypatch):
    """Without validation (sparse annotation left none) there are no scores to print as "nan"; after a
    resume, the time is this process's only."""
    result = RunResult(run_dir=tmp_path / "run", best_scores=scores, seconds=7.0, kept="stage 2", kept_score=0.6)
    monkeypatch.setattr("sam4em.training.trainer.train", lambda *args, **kwargs: result)
    assert main(["train", str(_yaml(tmp_path)), "--out", str(tmp_path / "run"), "--resume"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert "in 7 s (since the resume)" in line and "nan" not in line, line
    assert ("without validation" in line) == (scores[1] != scores[1]), line


def test_train_out_on_a_regular_file_is_a_one_line_error(tmp_path, capsys):
    config = _yaml(tmp_path)
    (tmp_path / "file").write_text("not a folder")
    _fails(["train", str(config), "--out", str(tmp_path / "file")], capsys, "--out", "file", "is a file")
    _fails(["train", str(config), "--out", str(tmp_path / "file" / "run")], capsys, "is a file")
    assert (tmp_path / "file").read_text() == "not a folder"


@pytest.mark.parametrize(("device", "problem"), [("banana", "is not a device"), ("cuda:99", "is not on this machine")])
def test_train_on_a_device_that_is_not_there_is_a_one_line_error(device, problem, tmp_path, capsys):
    config = _yaml(tmp_path)
    _fails(["train", str(config), "--out", str(tmp_path / "run"), "--set", f"device={device}"], capsys, device, problem)
    assert not (tmp_path / "run").exists()


# -- the example configs and the README's commands run to the end -------------------------------
def _check_finished(run: Path) -> None:
    stages = {r["stage"] for r in _rows(run)}
    assert stages == {"1", "2"}, stages
    assert _selection(run)["complete"] is True
    assert load_model(run).info.class_names


@pytest.mark.data
@pytest.mark.parametrize("name", ["vnc", "lucchi_pp", "isbi2012"])
def test_example_config_trains_both_stages_to_the_end(name, data_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SAM4EM_DATA_DIR", str(data_dir))
    # The config's own splits and clip length; only the model, the step counts and validation are tiny.
    args = ["train", str(REPO / "configs" / f"{name}.yaml"), "--out", str(tmp_path / "run"), "--no-progress", *TINY,
            "--set", "stage1.steps=1", "--set", "stage2.steps=1"]
    assert main(args) == 0, capsys.readouterr().err
    _check_finished(tmp_path / "run")


def _readme_train_commands() -> list[str]:
    """The README's `train` lines that train one of the example configs (others name the user's files)."""
    blocks = re.findall(r"```bash\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)
    lines = [line.split("#")[0].strip() for block in blocks for line in block.splitlines() if " train " in line]
    return [line for line in lines if " configs/" in line]


def test_readme_config_for_your_own_stack_is_a_valid_config():
    """The README's YAML example is read as the trainer reads a config, so it cannot drift from the keys."""
    [block] = re.findall(r"```yaml\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)
    config = config_from_dict(yaml.safe_load(block))
    assert config.classes == "mito=255,synapse=128|129,ignore=7" and config.volumes[0].val_fraction == 0.15
    assert (config.model.base, config.stage1.lr, config.stage2.clip_length) == ("cpu-small", 5e-4, 8)


def test_readme_train_examples_name_existing_configs():
    named = {Path(word).name for line in _readme_train_commands() for word in shlex.split(line) if word.startswith("configs/")}
    assert {"vnc.yaml", "lucchi_pp.yaml"} <= named
    assert named <= {path.name for path in (REPO / "configs").glob("*.yaml")}


@pytest.mark.data
@pytest.mark.parametrize("command", _readme_train_commands())
def test_readme_train_command_runs_to_the_end(command, data_dir, tmp_path, monkeypatch, capsys):
    """Each README `train` line, as written, plus tiny overrides after it (the last --set wins).

    The torchrun line runs here as one process: the data-parallel path is in test_training.py.
    """
    monkeypatch.setenv("SAM4EM_DATA_DIR", str(data_dir))
    monkeypatch.chdir(REPO)
    words = shlex.split(command)
    args = words[words.index("train"):]
    args[args.index("--out") + 1] = str(tmp_path / "run")
    assert main([*args, "--no-progress", *TINY, "--set", "stage1.steps=1", "--set", "stage2.steps=1"]) == 0
    _check_finished(tmp_path / "run")


def test_resume_refuses_a_config_missing_from_the_run(tmp_path):
    config = config_from_dict(_data(tmp_path, stages=[1], stage1={"steps": 2, "batch_size": 2, "warmup_steps": 0}))
    train(config, tmp_path / "run", progress=False)
    (tmp_path / "run" / "config.yaml").unlink()
    with pytest.raises(ConfigError, match=r"config\.yaml: missing"):
        train(config, tmp_path / "run", progress=False, resume=True)

