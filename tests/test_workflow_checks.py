"""`sam4em benchmark` and `sam4em demo` (issue 11): a data folder that is given is used or refused, never
replaced by ../shared/data; a stopped benchmark says so and exits 130 without a traceback; both take
--no-progress."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sam4em.cli import main


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
