"""`SegmentOptions` and `check_request`: one options value for the library, Dask, the CLI and the run
record; one set of model-free checks for the CLI and the library (issue 12, item 1)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile

from sam4em.cli import main
from sam4em.inference.options import SegmentOptions, recorded_options
from sam4em.inference.predictor import plan_tiling
from sam4em.inference.request import check_request
from sam4em.inference.streaming import RUN_RECORD, Interrupted, segment_to_file
from sam4em.io import VolumeError, open_volume
from sam4em.io.formats import FORMATS

#: The keys of `sam4em_run` in outputs written before `SegmentOptions` existed: a resume compares
#: records key by key, so these must stay, and no new key may appear, or older partial outputs could
#: no longer be resumed.
RECORD_KEYS = {
    "sam4em_version", "input", "input_key", "input_fingerprint", "model_base", "model_source", "model_weights", "class_names",
    "ome_zarr", "output_type", "probs_dtype", "direction", "tile_shape", "halo", "block_size", "overlap",
    "intensity_bounds", "threshold", "min_size", "watershed",
}  # fmt: skip
FAST = {"direction": "forward", "block_size": 2, "device": "cpu"}
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "in.tif"
    rng = np.random.default_rng(0)
    tifffile.imwrite(path, rng.integers(0, 255, (4, 32, 32), dtype=np.uint8), photometric="minisblack")
    return path


@pytest.fixture
def no_model_load(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the model was loaded before the request was checked")

    monkeypatch.setattr("sam4em.inference.run.load_model", refuse)
    monkeypatch.setattr("sam4em.models.load_model", refuse)


def _record(path: Path, key: str) -> dict[str, Any]:
    with open_volume(path, key) as volume:
        return json.loads(str(volume.attrs[RUN_RECORD]))


def test_invalid_options_are_refused_when_made() -> None:
    with pytest.raises(ValueError, match="output_type"):
        SegmentOptions(output_type="masks")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="probs_dtype"):
        SegmentOptions(probs_dtype="int8")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="direction"):
        SegmentOptions(direction="sideways")  # type: ignore[arg-type]
    options = SegmentOptions(classes="mito", tile_shape=[48, 40])  # type: ignore[arg-type]
    assert (options.classes, options.tile_shape) == (("mito",), (48, 40))
    assert options.replace(block_size=4).block_size == 4 and options.block_size == 32


def test_run_record_is_derived_from_the_options(tmp_path: Path, image: Path) -> None:
    out = segment_to_file(image, tmp_path / "l.zarr", "test-tiny", SegmentOptions(output_type="labels", **FAST))
    record = _record(out, "labels")
    assert set(record) == RECORD_KEYS
    # Options without effect on this output type are recorded as None, so they never block a resume.
    assert record["probs_dtype"] is None and record["min_size"] is None and record["watershed"] is None
    # Resolved values: the model's classes, its default tile, halo and overlap.
    assert record["class_names"] == ["class1"] and record["overlap"] == 6
    assert record["tile_shape"] == [48, 48] and record["halo"] == [8, 8]
    assert {k: record[k] for k in ("direction", "block_size", "output_type")} == {
        "direction": "forward", "block_size": 2, "output_type": "labels"
    }
    # Batch size, device, overwrite and resume do not change the result: not recorded.
    assert set(recorded_options(SegmentOptions())) == RECORD_KEYS - {
        "sam4em_version", "input", "input_fingerprint", "model_base", "model_source", "model_weights",
        "intensity_bounds",
    }


def test_resume_ignores_options_without_effect_and_refuses_others(tmp_path: Path, image: Path) -> None:
    out = tmp_path / "l.zarr"
    calls = iter([False, True])
    with pytest.raises(Interrupted):
        segment_to_file(image, out, "test-tiny", SegmentOptions(output_type="labels", **FAST), stop=lambda: next(calls))
    with pytest.raises(VolumeError, match=r"different threshold: 0.5 there, 0.7 now"):
        segment_to_file(image, out, "test-tiny", SegmentOptions(output_type="labels", threshold=0.7, resume=True, **FAST))
    # Another output type looks for other arrays: the refusal says which output this is, not "no sam4em output".
    with pytest.raises(VolumeError, match=r"l.zarr: holds a sam4em output of --output-type labels, not of this run's"):
        segment_to_file(image, out, "test-tiny", SegmentOptions(output_type="probs", resume=True, **FAST))
    # min_size and watershed act on instances only, batch size on speed only.
    same = SegmentOptions(output_type="labels", min_size=9, watershed=True, batch_size=1, resume=True, **FAST)
    segment_to_file(image, out, "test-tiny", same)
    reference = segment_to_file(image, tmp_path / "ref.zarr", "test-tiny", SegmentOptions(output_type="labels", **FAST))
    with open_volume(out, "labels") as resumed, open_volume(reference, "labels") as whole:
        np.testing.assert_array_equal(resumed[:], whole[:])


@pytest.mark.usefixtures("no_model_load")
def test_check_request_needs_no_model(tmp_path: Path, image: Path) -> None:
    checked = check_request(image, tmp_path / "o.zarr", SegmentOptions(), "test-tiny")
    assert checked.shape == (4, 32, 32) and checked.format.name == "zarr" and checked.output_key is None
    with pytest.raises(ValueError, match=r"test-tiny: unknown class\(es\) 'mito'.*class1"):
        check_request(image, tmp_path / "o.zarr", SegmentOptions(classes=["mito"]), "test-tiny")
    with pytest.raises(ValueError, match="must fit"):
        check_request(image, tmp_path / "o.zarr", SegmentOptions(tile_shape=(100, 100)), "test-tiny")
    with pytest.raises(VolumeError, match="several processes"):
        check_request(image, tmp_path / "o.h5", SegmentOptions(), "test-tiny", multi_writer=True)
    assert not (tmp_path / "o.zarr").exists() and not (tmp_path / "o.h5").exists()


@pytest.mark.usefixtures("no_model_load")
def test_hard_link_to_the_input_is_refused_by_library_and_cli(
    tmp_path: Path, image: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    link = tmp_path / "link.tif"
    os.link(image, link)
    before = image.read_bytes()
    options = SegmentOptions(output_type="labels", overwrite=True, **FAST)
    with pytest.raises(VolumeError, match="is the input volume"):
        segment_to_file(image, link, "test-tiny", options)
    assert main(["segment", str(image), str(link), "--model", "test-tiny", "--overwrite"]) == 2
    assert "is the input volume" in capsys.readouterr().err
    assert image.read_bytes() == before


def test_tile_and_halo_of_other_than_two_sizes_are_refused(tmp_path: Path, image: Path) -> None:
    # One line naming the option and the fix, not zip()'s "argument 2 is shorter than argument 1".
    with pytest.raises(ValueError, match=r"^tile_shape must be 2 sizes \(Y, X\), got \(48, 48, 48\); .*--tile 48 48"):
        SegmentOptions(tile_shape=(48, 48, 48))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^halo must be 2 sizes \(Y, X\), got \(8,\); .*--halo 8 8"):
        SegmentOptions(halo=[8])  # type: ignore[arg-type]
    # plan_tiling is public too: the same check, whatever the caller.
    with pytest.raises(ValueError, match=r"^tile_shape must be 2 sizes"):
        plan_tiling((32, 32), 64, (16, 16, 16), None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^halo must be 2 sizes"):
        plan_tiling((32, 32), 64, None, (4, 4, 4))  # type: ignore[arg-type]
    assert plan_tiling((32, 32), 64, np.array([16, 24]), [4, 2]).tiles  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("probs_dtype", "output_type", "expected"),
    # 4 x 32 x 32 voxels of test-tiny's one class: float16 8.2 KB, float32 twice, uint8 half.
    [("float16", "probs", "8.2 KB"), ("float32", "probs", "16.4 KB"), ("uint8", "probs", "4.1 KB"),
     ("float32", "labels", "4.1 KB")],
)  # fmt: skip
@pytest.mark.usefixtures("no_model_load")
def test_free_space_estimate_follows_the_stored_dtype(
    tmp_path: Path, image: Path, monkeypatch: pytest.MonkeyPatch, probs_dtype: str, output_type: str, expected: str
) -> None:
    def nearly_full(path: Any) -> Any:
        return type("Usage", (), {"total": 10**9, "used": 10**9 - 500, "free": 500})()

    monkeypatch.setattr("sam4em.inference.request.shutil.disk_usage", nearly_full)
    options = SegmentOptions(output_type=output_type, probs_dtype=probs_dtype)  # type: ignore[arg-type]
    with pytest.raises(VolumeError, match=rf"o\.zarr: needs up to {expected} \(uncompressed\)"):
        check_request(image, tmp_path / "o.zarr", options, "test-tiny")


def test_segment_help_lists_exactly_the_outputs_check_request_accepts(
    tmp_path: Path, image: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        main(["segment", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    output_help = text[text.index("output volume") : text.index("options:")]
    for fmt in FORMATS.values():
        for suffix in (*fmt.suffixes, *(fmt.write_suffixes or ())):
            target = tmp_path / f"out{suffix}"
            listed = f"({'/'.join(fmt.output_suffixes)})" in output_help and suffix in fmt.output_suffixes
            try:
                check_request(image, target, SegmentOptions(output_type="labels"))
                accepted = True
            except VolumeError as error:
                assert "unknown output format" in str(error), error
                accepted = False
            assert listed == accepted, (fmt.name, suffix or "(no extension)")
    assert "slices" not in output_help and "PNG" not in output_help


def test_an_output_format_that_cannot_store_the_dtype_is_refused_before_the_model_loads(
    tmp_path: Path, image: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(VolumeError, match=r"o\.n5: N5 stores cannot store probs as float16 \(use probs_dtype="):
        check_request(image, tmp_path / "o.n5", SegmentOptions(output_type="probs"))
    check_request(image, tmp_path / "o.n5", SegmentOptions(output_type="probs", probs_dtype="float32"))
    with pytest.raises(VolumeError, match=r"o\.mrc: MRC files cannot store instances as uint32"):
        check_request(image, tmp_path / "o.mrc", SegmentOptions(output_type="instances"))
    # From the shell: one line and exit 2, from a model name that is never loaded (it does not exist).
    code = main(["segment", str(image), str(tmp_path / "o.n5"), "--model", "no-such-run", "--output-type", "probs"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "N5 stores cannot store probs as float16" in err and "\n" not in err
    assert not (tmp_path / "o.n5").exists()


@pytest.mark.parametrize(("options", "message"), [
    ({"block_size": 0}, r"block_size must be an integer >= 1, got 0 \(--block-size\)"),
    ({"batch_size": 0}, r"batch_size must be an integer >= 1, got 0 \(--batch-size\)"),
    ({"min_size": -5}, r"min_size must be an integer >= 0, got -5 \(--min-size\)"),
    ({"halo": (-1, 8)}, r"halo must be >= 0 pixels, got \[-1, 8\] \(--halo\)"),
])
def test_options_out_of_range_are_refused_naming_the_flag(options: dict, message: str) -> None:
    """Before, a batch size of 0 ran as 1 without a word, and the others failed later naming no option."""
    with pytest.raises(ValueError, match=message):
        SegmentOptions(**options)
