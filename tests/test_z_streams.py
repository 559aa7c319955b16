"""Z-blocks advanced in lockstep (`SegmentOptions.streams`, `predict_streams`): the same result as one
block at a time, within float rounding of the larger batches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from sam4em.inference.block_job import BlockJob
from sam4em.inference.options import SegmentOptions
from sam4em.inference.predictor import SlicePredictor, plan_tiling, predict_slices, predict_streams
from sam4em.inference.run import TARGET_WINDOWS, choose_streams, prepare_run
from sam4em.inference.streaming import BLOCKS_DONE, Interrupted, segment_to_file
from sam4em.inference.tiling import z_blocks
from sam4em.io import create_volume, open_volume

SHAPE = (13, 80, 96)
CLASSES = ("mito", "er")
#: Largest difference measured between streams in lockstep and one block at a time (float32
#: probabilities, test-tiny with scaled logits, one torch thread): 1.2e-7, float32 rounding of larger
#: batches. Other kernels (GPU, bf16) round differently; the bound leaves room for that in float32.
STREAM_TOLERANCE = 1e-5
#: What one block holds until it is written, for the automatic-streams arithmetic: two classes of
#: float16 probabilities, 16 slices of 512 x 512.
BLOCK = 2 * 16 * 512 * 512 * 2


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model(decisive_tiny_model):
    return decisive_tiny_model(CLASSES)


@pytest.fixture(scope="module")
def volume() -> np.ndarray:
    rng = np.random.default_rng(1)
    return (rng.random(SHAPE) * 200 + np.linspace(0, 50, SHAPE[1])[None, :, None]).astype(np.uint8)


@pytest.fixture(scope="module")
def raw_path(tmp_path_factory: pytest.TempPathFactory, volume: np.ndarray) -> Path:
    path = tmp_path_factory.mktemp("raw") / "raw.zarr"
    with create_volume(path, SHAPE, np.uint8) as out:
        out[:] = volume
    return path


def read_probs(path: Path) -> np.ndarray:
    arrays = []
    for name in CLASSES:
        with open_volume(path, name) as stored:
            arrays.append(stored[:].astype(np.float32))
    return np.stack(arrays)


def run(raw_path: Path, out: Path, model, **options) -> np.ndarray:
    return read_probs(segment_to_file(raw_path, out, model, SegmentOptions(block_size=4, probs_dtype="float32", **options)))


@pytest.mark.parametrize(("direction", "streams", "batch_size"), [("both", 4, 8), ("forward", 2, 3), ("backward", 3, 1)])
def test_streams_equal_one_block_at_a_time(tmp_path, raw_path, model, direction, streams, batch_size):
    """13 slices in blocks of 4: 4 blocks of different lengths (the ends have less warm-up, the last
    owns one slice), so streams leave the batch at different steps; several tile batches per slice."""
    alone = run(raw_path, tmp_path / "alone.zarr", model, direction=direction, streams=1, batch_size=batch_size)
    together = run(raw_path, tmp_path / "together.zarr", model, direction=direction, streams=streams,
                   batch_size=batch_size)  # fmt: skip
    assert alone.std() > 1e-3  # a flat prediction could not tell streams apart
    np.testing.assert_allclose(together, alone, atol=STREAM_TOLERANCE)


def test_streams_of_one_volume_equal_separate_passes(model, volume):
    """Three overlapping orders, both directions, through one predictor in lockstep: each stream gets
    what it gets alone, and every step of every order is yielded once. The first stream ends first,
    so the memory rows of a stream in the middle of the batch are the ones dropped."""
    plan = plan_tiling(SHAPE[1:], model.image_size)
    predictor = SlicePredictor(model, plan, intensity_bounds=(0.0, 255.0), batch_size=2)
    orders = [[5, 6], list(range(0, 9)), list(range(12, 2, -1))]
    together: dict[tuple[int, int], np.ndarray] = {}
    for stream, z, probs in predict_streams(volume, predictor, orders):
        assert (stream, z) not in together
        together[stream, z] = probs
    assert len(together) == sum(len(order) for order in orders)
    for stream, order in enumerate(orders):
        for z, probs in predict_slices(volume, predictor, order):
            np.testing.assert_allclose(together[stream, z], probs, atol=STREAM_TOLERANCE)


@pytest.mark.parametrize("dtype", [">u2", "int32", "float16", "float64"])
def test_slices_of_any_dtype_give_the_same_probabilities(model, volume, dtype):
    """Raw slices cross to the model's device in their own dtype (big-endian and wide unsigned ones
    converted exactly) and are normalised there: the same grey values give the same probabilities."""
    plan = plan_tiling(SHAPE[1:], model.image_size)
    predictor = SlicePredictor(model, plan, intensity_bounds=(0.0, 255.0), batch_size=2)
    expected = dict(predict_slices(volume, predictor, range(4)))
    for z, probs in predict_slices(volume.astype(dtype), predictor, range(4)):
        assert isinstance(probs, torch.Tensor) and probs.device == next(model.parameters()).device
        torch.testing.assert_close(probs, expected[z], rtol=0, atol=0)


def test_automatic_streams(model, monkeypatch):
    """1 on a CPU; on a GPU enough for TARGET_WINDOWS windows per call, capped by the blocks, the free
    GPU memory and the free host memory; an explicit count is capped by the blocks only."""
    import sam4em.inference.run as run_module

    plan = plan_tiling((512, 512), model.image_size)  # many windows per slice
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    options = SegmentOptions(classes=CLASSES, batch_size=8)
    free_gpu = [1 << 40]
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (free_gpu[0], 1 << 40))
    monkeypatch.setattr(run_module, "available_host_memory", lambda: 1 << 40)
    assert choose_streams(options, plan, 10, cpu, BLOCK) == 1
    assert choose_streams(options, plan, 10, gpu, BLOCK) == min(10, TARGET_WINDOWS // 8)
    assert choose_streams(options, plan, 3, gpu, BLOCK) == 3  # never more streams than blocks
    free_gpu[0] = 100 << 20  # room for one stream's windows and blending sums, not two
    assert choose_streams(options, plan, 10, gpu, BLOCK) == 1
    free_gpu[0] = 1 << 40
    monkeypatch.setattr(run_module, "available_host_memory", lambda: 4 * 3 * 2 * BLOCK)  # two waves of 3 blocks
    assert choose_streams(options, plan, 10, gpu, BLOCK) == 3
    assert choose_streams(options.replace(streams=5), plan, 10, cpu, BLOCK) == 5
    assert choose_streams(options.replace(streams=5), plan, 2, cpu, BLOCK) == 2
    with pytest.raises(ValueError, match="--streams"):
        SegmentOptions(streams=0)


def attrs(path: Path) -> dict:
    with open_volume(path, CLASSES[0]) as stored:
        return dict(stored.attrs)


@pytest.mark.parametrize(("output_type", "probs_dtype", "suffix"), [("probs", "float16", ".zarr"), ("labels", "float32", ".ome.zarr")])
def test_block_bytes_is_what_a_predicted_block_holds(tmp_path, raw_path, model, output_type, probs_dtype, suffix):
    """The host memory automatic streams budget per block: output buffers (and the OME input copy)."""
    options = SegmentOptions(block_size=4, output_type=output_type, probs_dtype=probs_dtype)
    with prepare_run(raw_path, tmp_path / f"out{suffix}", model, options) as (prepared, loaded):
        job = prepared.job
        block = z_blocks(SHAPE[0], 4, 0)[1]
        with open_volume(raw_path) as volume:
            output = job.predict([block], volume, job.predictor(loaded))[0]
    held = output.arrays.nbytes + (output.input_slices.nbytes if output.input_slices is not None else 0)
    assert job.block_bytes(4, 1) == held > 0


def test_waves_run_in_lockstep_and_resume(tmp_path, raw_path, model):
    """4 blocks in waves of 2: a stop between waves keeps the written wave, a resume finishes the
    rest, and the result equals an uninterrupted run."""
    options = {"direction": "forward", "streams": 2}
    calls = iter([False, True])  # one wave, then stop
    out = tmp_path / "probs.zarr"
    with pytest.raises(Interrupted, match="--resume"):
        segment_to_file(raw_path, out, model, SegmentOptions(block_size=4, probs_dtype="float32", **options),
                        stop=lambda: next(calls))  # fmt: skip
    assert list(attrs(out)[BLOCKS_DONE]) == [0, 1]
    resumed = run(raw_path, out, model, resume=True, **options)
    assert list(attrs(out)[BLOCKS_DONE]) == [0, 1, 2, 3]
    np.testing.assert_array_equal(resumed, run(raw_path, tmp_path / "whole.zarr", model, **options))


def test_a_failed_background_write_stops_the_run_and_is_not_recorded(tmp_path, raw_path, model, monkeypatch):
    """Writes run in a background thread while the next wave is predicted: the first error surfaces,
    and only blocks actually written are recorded as done."""
    written = []
    real_write = BlockJob.write

    def failing_write(self, blocks, outputs):
        if written:
            raise OSError("disk full")
        real_write(self, blocks, outputs)
        written.extend(block.index for block in blocks)

    monkeypatch.setattr(BlockJob, "write", failing_write)
    out = tmp_path / "probs.zarr"
    with pytest.raises(OSError, match="disk full"):
        run(raw_path, out, model, direction="forward", streams=1)
    assert written == [0]
    assert list(attrs(out)[BLOCKS_DONE]) == [0]


def test_an_error_while_a_wave_is_written_is_the_one_reported(tmp_path, raw_path, model, monkeypatch):
    """The prediction of wave 2 fails while wave 1's write fails too: the prediction's error is
    raised (the write's is logged), and nothing is recorded as done."""
    real_predict = BlockJob.predict
    calls = []

    def failing_predict(self, blocks, volume, predictor, tick=None):
        calls.append(blocks)
        if len(calls) > 1:
            raise RuntimeError("out of memory")
        return real_predict(self, blocks, volume, predictor, tick)

    def failing_write(self, blocks, outputs):
        raise OSError("disk full")

    monkeypatch.setattr(BlockJob, "predict", failing_predict)
    monkeypatch.setattr(BlockJob, "write", failing_write)
    out = tmp_path / "probs.zarr"
    with pytest.raises(RuntimeError, match="out of memory"):
        run(raw_path, out, model, direction="forward", streams=1)
    assert list(attrs(out)[BLOCKS_DONE]) == []


def test_streams_with_a_model_without_memory(tmp_path, raw_path):
    """The U-Net baseline (no memory bank) runs in streams too, and gives what it gives alone."""
    from sam4em.models.unet import UNet2D

    torch.manual_seed(0)
    unet = UNet2D(num_classes=len(CLASSES), image_size=64, class_names=CLASSES, channels=(4, 8)).eval()
    alone = run(raw_path, tmp_path / "alone.zarr", unet, direction="both", streams=1, batch_size=3)
    together = run(raw_path, tmp_path / "together.zarr", unet, direction="both", streams=3, batch_size=3)
    assert alone.std() > 1e-3
    np.testing.assert_allclose(together, alone, atol=STREAM_TOLERANCE)


def test_forward_halves_kept_on_the_device_equal_those_spilled_to_disk(tmp_path, raw_path, model, monkeypatch):
    """Where a GPU has room, the forward pass of direction "both" waits in its memory (the CPU stands
    in for it here): the same probabilities, and no temporary store on disk."""
    import sam4em.inference.block_job as block_job

    on_disk = run(raw_path, tmp_path / "disk.zarr", model, direction="both", streams=2)
    monkeypatch.setattr(block_job, "spill_fits_on", lambda device, nbytes: True)
    monkeypatch.setattr(block_job.BlockJob, "_spill", lambda self, block: pytest.fail("spilled to disk"))
    in_memory = run(raw_path, tmp_path / "memory.zarr", model, direction="both", streams=2)
    np.testing.assert_array_equal(in_memory, on_disk)


def test_forward_halves_stay_on_a_gpu_only_within_a_quarter_of_its_free_memory(monkeypatch):
    from sam4em.inference.block_job import spill_fits_on

    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (1000, 4000))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device: 300)  # 200 of it reusable
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device: 100)
    assert spill_fits_on(torch.device("cuda"), 300) and not spill_fits_on(torch.device("cuda"), 301)
    assert not spill_fits_on(torch.device("cpu"), 1)


def test_the_next_slice_is_read_while_the_model_runs(model, volume, monkeypatch):
    """predict_streams reads step j + 1's slice in its reader thread while step j is predicted (each
    prediction here waits until that read has begun: reading inline would time out), never two reads
    at once (some readers, e.g. compressed TIFF, take one thread at a time), with unchanged results."""
    import itertools
    import threading

    steps = 6
    begun = [threading.Event() for _ in range(steps)]

    class WatchedVolume:
        shape = volume.shape
        lock = threading.Lock()

        def __getitem__(self, z):
            if not self.lock.acquire(blocking=False):
                raise AssertionError("two threads read the volume at once")
            try:
                begun[z].set()
                return volume[z]
            finally:
                self.lock.release()

    plan = plan_tiling(SHAPE[1:], model.image_size)
    predictor = SlicePredictor(model, plan, intensity_bounds=(0.0, 255.0), batch_size=2)
    expected = dict(predict_slices(volume, predictor, range(steps)))
    alone, calls = predictor.predict, itertools.count()

    def predict(slices):
        step = next(calls)
        assert step + 1 == steps or begun[step + 1].wait(timeout=60), "the next slice was not read meanwhile"
        return alone(slices)

    monkeypatch.setattr(predictor, "predict", predict)
    for z, probs in predict_slices(WatchedVolume(), predictor, range(steps)):
        torch.testing.assert_close(probs, expected[z], rtol=0, atol=0)


def test_streams_with_a_per_class_memory_equal_one_block_at_a_time(tmp_path, raw_path, decisive_tiny_model):
    """SAM2's per-class memory keeps a bank row per window and class (the other tests here use test-tiny's
    default, a shared memory with a row per window): streams leave the batch with all their rows."""
    model = decisive_tiny_model(CLASSES, shared_memory=False, joint_detail=False)
    alone = run(raw_path, tmp_path / "alone.zarr", model, direction="forward", streams=1, batch_size=3)
    together = run(raw_path, tmp_path / "together.zarr", model, direction="forward", streams=3, batch_size=3)
    assert alone.std() > 1e-3
    np.testing.assert_allclose(together, alone, atol=STREAM_TOLERANCE)
