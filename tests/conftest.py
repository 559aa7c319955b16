"""Shared fixtures: where the real EM data lives, and a switch to skip when it does not."""

from __future__ import annotations

import os
from collections.abc import Iterator
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


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test that asks for the real data carries the `data` marker (`-m "not data"` runs without it)."""
    for item in items:
        if "data_dir" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.data)


@pytest.fixture(scope="session")
def moved_weights():
    """A function (model, seed) -> `model` with every weight moved away from its initialisation (so that
    zero-initialised outputs and embeddings count, and the classes' prompts differ), in eval mode."""
    import torch

    def move(model, seed: int):
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator))
        return model.eval()

    return move


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """torch on one intra-op thread: on two shared CPU cores two threads can be ~20x slower (spinning)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def decisive_tiny_model():
    """A factory: test-tiny with seeded random weights and its mask logits scaled up 1000x (keyword
    arguments: `BuildOptions` fields).

    Raw, a random test-tiny predicts 0.5 ± 1e-5 everywhere, too flat for 0/1 decisions (or float16
    storage) to differ over a volume; scaled, every class gets voxels. Returns the model in eval mode.
    """
    import torch

    from sam4em.models import build_model

    def make(class_names: tuple[str, ...] | list[str], **options):
        torch.manual_seed(0)
        net = build_model("test-tiny", class_names=class_names, pretrained=False, **options)
        with torch.no_grad():
            for name, parameter in net.named_parameters():
                if "output_hypernetworks_mlps" in name and "proj_out" in name:
                    parameter.mul_(1000.0)
        return net.eval()

    return make
