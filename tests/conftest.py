"""Shared fixtures: where the real EM data lives, and a switch to skip when it does not."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    """The local mirror of the public EM datasets (`SAM4EM_DATA_DIR`, else ../shared/data)."""
    return Path(os.environ.get("SAM4EM_DATA_DIR", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    path = shared_data_dir()
    if not (path / "README.md").exists():
        pytest.skip(f"real EM data not found at {path}; set SAM4EM_DATA_DIR to a mirror of ../shared/data")
    return path
