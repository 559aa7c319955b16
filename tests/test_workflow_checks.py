"""`sam4em benchmark` and `sam4em demo` (issue 11): a data folder that is given is used or refused, never
replaced by ../shared/data; a stopped benchmark says so and exits 130 without a traceback; both take
--no-progress."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sam4em.cli import main
from sam4em.evaluation.metric_registry import score_keys
from sam4em.training.config import ConfigError
from sam4em.training.config_error import ConfigChanged
from sam4em.workflows.benchmark import run_benchmark
from sam4em.workflows.demo import run_demo


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.startswith("sam4em: error:")]
    assert len(lines) == 1 and "Traceback" not in captured.err, captured.err
    return lines[0]


@pytest.mark.parametrize("command", ["benchmark", "demo"])
def test_missing_data_dir_fails_in_one_line_without_falling_back(
    tmp_path: Path, command: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # ../shared/data exists beside the working folder: the old fallback would have used it.
    (tmp_path / "shared" / "data" / "lucchi_pp").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "shared")
    missing, out = tmp_path / "nonexistent", tmp_path / "out"
    assert main([command, "--data-dir", str(missing), "--out", str(out), "--no-progress"]) == 2
    assert f"{missing}: no such folder (given as --data-dir; check the path)" in _one_error_line(capsys)
    monkeypatch.setenv("SAM4EM_DATA_DIR", str(missing))
    assert main([command, "--out", str(out), "--no-progress"]) == 2
    assert "(given as $SAM4EM_DATA_DIR" in _one_error_line(capsys)
    assert not out.exists()


def test_benchmark_refuses_a_data_dir_without_its_datasets(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["benchmark", "--data-dir", str(tmp_path), "--out", str(tmp_path / "out"), "--datasets", "vnc"]) == 2
    line = _one_error_line(capsys)
    assert f"dataset 'vnc' not found under {tmp_path} (missing vnc/stack1_z00-09.h5" in line, line


def test_interrupted_benchmark_exits_130_with_one_line(tmp_path: Path, data_dir: Path) -> None:
    out = tmp_path / "bench"
    command = [sys.executable, "-m", "sam4em", "benchmark", "--data-dir", str(data_dir), "--out", str(out),
               "--datasets", "vnc", "--methods", "unet2d", "--no-progress"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    run_dir = out / "runs" / "vnc" / "unet2d"
    deadline = time.time() + 300
    while process.poll() is None and time.time() < deadline and not (run_dir / "config.yaml").exists():
        time.sleep(0.5)  # until the run's training has started
    assert process.poll() is None, process.communicate()
    os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole process group
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 130, (stdout, stderr)
    assert "Traceback" not in stderr, stderr
    assert stderr.strip().splitlines()[-1] == (
        f"sam4em: interrupted; finished runs are kept in {out}; rerun the same command to continue"
    )
    assert not (run_dir / "result.json").exists()  # a stopped run is not scored as finished


def _result(dataset: str, profile: str) -> dict[str, object]:
    """A finished pair's result.json as `run_one` writes it (scores made up: nothing is trained here)."""
    return {"profile": profile, "dataset": dataset, "method": "unet2d", "base": "monai-unet", "weights": "random init",
            "train_seconds": 1.0, "steps_stage1": 1, "steps_stage2": 0, "val_dice": 0.5, "test_slices": 2,
            "slices_per_second": 1.0, "peak_memory_mb": 1.0, "classes": {"mito": dict.fromkeys(score_keys(), 0.5)}}


def test_the_report_covers_every_finished_run_and_refuses_another_profile(tmp_path: Path, data_dir: Path) -> None:
    out = tmp_path / "bench"
    for dataset in ("vnc", "lucchi_pp"):
        (out / "runs" / dataset / "unet2d").mkdir(parents=True)
        (out / "runs" / dataset / "unet2d" / "result.json").write_text(json.dumps(_result(dataset, "quick")))
    # A call for one dataset reports the other one's finished run too, from an earlier call.
    run_benchmark(profile="quick", data_dir=data_dir, out_dir=out, methods=["unet2d"], datasets=["vnc"], progress=False)
    rows = (out / "results.md").read_text().splitlines()
    assert [row.split(" | ")[0] for row in rows if row.startswith("| ") and "unet2d" in row] == ["| vnc", "| lucchi_pp"]
    (out / "runs" / "isbi2012" / "unet2d").mkdir(parents=True)
    (out / "runs" / "isbi2012" / "unet2d" / "result.json").write_text(json.dumps(_result("isbi2012", "full")))
    (out / "runs" / "vnc" / "unet2d" / "result.json").unlink()  # to be trained again: refused before that starts
    with pytest.raises(ValueError, match=r"isbi2012/unet2d/result.json: a run of the full profile; a quick benchmark"):
        run_benchmark(profile="quick", data_dir=data_dir, out_dir=out, methods=["unet2d"], datasets=["vnc"], progress=False)
    assert not (out / "runs" / "vnc" / "unet2d" / "config.yaml").exists()


def test_a_demo_folder_made_with_other_minutes_is_named_as_such(tmp_path: Path, data_dir: Path, monkeypatch) -> None:
    """The demo resumes its own run by itself: the refusal of another config must not tell the user to
    change a --resume flag the demo does not have."""
    def refuse(*args: object, **kwargs: object) -> None:  # what the run folder's guard raises (run_folder.py)
        raise ConfigChanged("run: --resume with a config that differs from the run's in stage1.max_seconds, "
                            "stage2.max_seconds; resume with the run's own values", ["stage1.max_seconds", "stage2.max_seconds"])

    (tmp_path / "demo" / "run" / "checkpoints").mkdir(parents=True)
    monkeypatch.setattr("sam4em.workflows.demo.train", refuse)
    with pytest.raises(ConfigError, match=r"demo: holds a demo run made with other settings \(they differ in "
                                          r"stage1.max_seconds, stage2.max_seconds\); rerun with the --minutes") as caught:
        run_demo(out_dir=tmp_path / "demo", data_dir=str(data_dir), minutes=1.0, progress=False)
    assert "--resume" not in str(caught.value)


def test_datasets_finds_the_data_where_benchmark_and_demo_do(tmp_path: Path, data_dir: Path, capsys, monkeypatch) -> None:
    """Without --data-dir or $SAM4EM_DATA_DIR, `sam4em datasets` looks in ../shared/data as the workflows do."""
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "data").symlink_to(data_dir)
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    monkeypatch.delenv("SAM4EM_DATA_DIR", raising=False)
    assert main(["datasets"]) == 0
    [vnc] = [line for line in capsys.readouterr().out.splitlines() if line.startswith("vnc ")]
    assert vnc.endswith(f"[{tmp_path / 'shared' / 'data'}]"), vnc
