"""`sam4em segment --compile` (issue 14): the model is compiled part by part, in place, and writes what
the eager model writes. Dynamo traces every part here into graphs that run as traced (no code
generation, which takes minutes on a CPU); what inductor's code changes, and the speed it buys, are
measured by benchmarks/compile_gain.py (docs/benchmarks.md), not here."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sam4em.cli import main
from sam4em.inference.options import SegmentOptions
from sam4em.inference.streaming import segment_to_file
from sam4em.io import create_volume, open_volume
from sam4em.models.compiled import COMPILED_PARTS

pytestmark = pytest.mark.usefixtures("one_thread")
CLASSES = ("mito", "er")


@pytest.fixture
def raw(tmp_path):
    rng = np.random.default_rng(1)
    path = tmp_path / "raw.zarr"
    with create_volume(path, (4, 64, 64), np.uint8, voxel_size=(40.0, 8.0, 8.0)) as out:
        out[:] = (rng.random((4, 64, 64)) * 80 + np.linspace(0, 170, 64)).astype(np.uint8)
    return path


def _probs(path):
    out = []
    for name in CLASSES:
        with open_volume(path, name) as volume:
            out.append(np.asarray(volume[:], dtype=np.float32))
    return np.stack(out)


@pytest.fixture
def fresh_dynamo():
    yield
    torch._dynamo.reset()  # no traced graph of this test's models outlives it


def test_segment_compiles_the_model_part_by_part_and_writes_what_eager_does(
    tmp_path, raw, decisive_tiny_model, monkeypatch, fresh_dynamo
):
    compiled: list[torch.nn.Module] = []
    graphs: list[torch.fx.GraphModule] = []
    compile_module = torch.nn.Module.compile

    def record(graph: torch.fx.GraphModule, example_inputs):  # a backend that runs the graph as traced
        graphs.append(graph)
        return graph.forward

    def trace(module, *args, **kwargs):
        compiled.append(module)
        compile_module(module, backend=record)

    monkeypatch.setattr(torch.nn.Module, "compile", trace)
    options = SegmentOptions(direction="forward", block_size=4, probs_dtype="float32")
    eager = segment_to_file(raw, tmp_path / "eager.zarr", decisive_tiny_model(CLASSES), options)
    model = decisive_tiny_model(CLASSES)  # the same weights
    keys_before = set(model.state_dict())
    faster = segment_to_file(raw, tmp_path / "compiled.zarr", model, options.replace(compile=True))
    names = {module: name for name, module in model.named_modules()}
    # test-tiny has every part but joint decoding (the decoders run per class by default)
    assert [names[module] for module in compiled] == [part for part in COMPILED_PARTS if part != "joint_decoding"]
    assert len(graphs) >= len(compiled)  # dynamo traced them: the run went through the graphs
    assert set(model.state_dict()) == keys_before  # compiled in place: the same keys
    np.testing.assert_allclose(_probs(faster), _probs(eager), rtol=0, atol=1e-6)


def test_compile_is_refused_for_dask_workers(tmp_path, raw, capsys):
    code = main(["segment", str(raw), str(tmp_path / "out.zarr"), "--model", "test-tiny", "--compile", "--workers", "2",
                 "--no-progress"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1, lines
    assert "--compile" in lines[0] and "drop --compile or --workers" in lines[0]
    assert not (tmp_path / "out.zarr").exists()


def test_joint_decoding_compiles_and_decodes_as_eager(decisive_tiny_model, fresh_dynamo):
    """Joint decoding runs the decoders' parts itself (their forward never runs), so it is a compiled part of
    its own: dynamo traces it with the decoder passed in, one graph per decoder stage."""
    from sam4em.models.compiled import compile_parts

    graphs: list[torch.fx.GraphModule] = []

    def record(graph: torch.fx.GraphModule, example_inputs):
        graphs.append(graph)
        return graph.forward

    model = decisive_tiny_model(CLASSES, joint_decoder=True)
    images = torch.rand(2, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        features = model.encode(images)
        eager = model.decode(features)
        compile_parts(model, backend=record)  # every part; decode() runs those after the encoder
        compiled = model.decode(features)
    assert sum("class_tokens" in graph.code for graph in graphs) == 2
    torch.testing.assert_close(compiled.logits, eager.logits, rtol=0, atol=1e-6)
