"""The napari plugin, headless: each widget driven on a small volume with the test-tiny model.

`make test` installs the `napari` and `gui-test` extras and Xvfb, so these run there (pytest-xvfb
starts the virtual screen napari's canvas needs). The last test checks that the command line and
the library never import Qt or napari.
"""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import dask.array as da
import h5py
import numpy as np
import pytest
import yaml
import zarr

pytest.importorskip(
    "napari", reason="the napari plugin is an optional extra: pip install -e '.[napari,gui-test]'"
)
pytest.importorskip("pytestqt", reason="GUI tests need pytest-qt: pip install -e '.[gui-test]'")

from napari.layers import Image, Labels
from scipy import ndimage

from sam4em.evaluation import evaluate_volumes
from sam4em.evaluation.measure import measure_objects
from sam4em.inference.options import SegmentOptions
from sam4em.inference.streaming import segment_to_file
from sam4em.io import create_volume, open_volume
from sam4em.io.output_record import COMPLETE
from sam4em.models import load_model, save_model
from sam4em.napari_plugin import reader
from sam4em.napari_plugin.reader import get_reader
from sam4em.napari_plugin.segment_widget import SegmentWidget
from sam4em.napari_plugin.table_widgets import EvaluateWidget, MeasureWidget, table_text
from sam4em.napari_plugin.train_widget import TrainWidget

SCALE = (30.0, 4.0, 4.0)
WAIT_MS = 180_000


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory, one_thread: None, decisive_tiny_model) -> Path:
    """A run folder holding test-tiny with random weights, logits scaled so both classes occur."""
    return save_model(decisive_tiny_model(("mito", "er")), tmp_path_factory.mktemp("run") / "tiny")


@pytest.fixture(scope="module")
def volume() -> np.ndarray:
    rng = np.random.default_rng(0)
    return (rng.random((4, 64, 72)) * 60 + np.linspace(0, 190, 72)[None, None, :]).astype(np.uint8)


def _blobs(shape: tuple[int, int, int] = (10, 64, 64), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """An EM-like stack with dark blobs (label 1) drifting in z, and its labels."""
    rng = np.random.default_rng(seed)
    smooth = ndimage.gaussian_filter(rng.normal(size=shape), sigma=(2, 4, 4))
    labels = (smooth > smooth.std()).astype(np.uint8)  # ~16% foreground, in blobs
    image = np.clip(150 + rng.normal(0, 10, shape) - 90 * labels, 0, 255).astype(np.uint8)
    return image, labels


def _dock(viewer, widget):
    viewer.window.add_dock_widget(widget)
    widget.reset_choices()
    return widget


def _run(qtbot, widget) -> None:
    widget.start()
    assert widget.busy, widget.status.value
    qtbot.waitUntil(lambda: not widget.busy, timeout=WAIT_MS)


def test_segment_widget_adds_labels_at_the_image_scale(
    make_napari_viewer_proxy, qtbot, run_dir, volume, tmp_path
):
    viewer = make_napari_viewer_proxy()
    viewer.add_image(da.from_array(volume, chunks=(1, 32, 72)), scale=SCALE, name="em")  # a lazy layer
    widget = _dock(viewer, SegmentWidget(viewer))
    widget.model.value = str(run_dir)
    widget.direction.value = "forward"
    widget.block_size.value = 2
    widget.device.value = "cpu"
    _run(qtbot, widget)
    assert widget.status.value.startswith("done"), widget.status.value
    layer = viewer.layers["em labels"]
    assert isinstance(layer, Labels)
    assert layer.data.shape == volume.shape and layer.data.dtype == np.uint8
    assert tuple(layer.scale) == SCALE
    assert list(layer.features["class"]) == ["background", "mito", "er"]
    # The same result as the library (and so the CLI) on the same data.
    source = tmp_path / "em.zarr"
    with create_volume(source, volume.shape, np.uint8, voxel_size=SCALE) as out:
        out[:] = volume
    expected = segment_to_file(
        source,
        tmp_path / "out.zarr",
        load_model(run_dir),
        SegmentOptions(output_type="labels", direction="forward", block_size=2),
    )
    with open_volume(expected, "labels") as labels:
        np.testing.assert_array_equal(layer.data, labels[:])
    assert set(np.unique(layer.data)) == {0, 1, 2}
    assert widget.bar.value == widget.bar.max > 0


def test_segment_widget_probabilities_and_cancel(make_napari_viewer_proxy, qtbot, run_dir, volume):
    viewer = make_napari_viewer_proxy()
    viewer.add_image(volume[0], scale=SCALE[1:], name="slice")  # a 2D layer
    widget = _dock(viewer, SegmentWidget(viewer))
    widget.model.value = str(run_dir)
    widget.output_type.value = "probs"
    widget.device.value = "cpu"
    widget.start()
    widget.cancel()  # before the first block: nothing is added
    qtbot.waitUntil(lambda: not widget.busy, timeout=WAIT_MS)
    assert widget.status.value.startswith("cancelled"), widget.status.value
    assert [layer.name for layer in viewer.layers] == ["slice"]
    _run(qtbot, widget)
    probs = [viewer.layers["slice mito"], viewer.layers["slice er"]]
    for layer in probs:
        assert (
            isinstance(layer, Image)
            and layer.data.shape == volume.shape[1:]
            and tuple(layer.scale) == SCALE[1:]
        )
        assert layer.data.dtype == np.float16 and layer.data.min() >= 0 and layer.data.max() <= 1


def test_train_widget_cancel_resume_and_live_dice(make_napari_viewer_proxy, qtbot, tmp_path):
    image, labels = _blobs()
    labels[[1, 2, 5]] = 0  # sparse: slices nobody painted
    viewer = make_napari_viewer_proxy()
    viewer.add_image(image, scale=SCALE, name="em")
    viewer.add_labels(labels, scale=SCALE, name="truth")
    widget = _dock(viewer, TrainWidget(viewer))
    widget.sparse.value = True
    folder = tmp_path / "run"
    widget.run_dir.value = str(folder)
    widget.base.value = "test-tiny"
    widget.stage1_steps.value = 4
    widget.device.value = "cpu"
    widget.start()
    widget.cancel()  # stops at the first step boundary, with a checkpoint
    qtbot.waitUntil(lambda: not widget.busy, timeout=WAIT_MS)
    assert widget.status.value.startswith("stopped"), widget.status.value
    assert widget.resume.value is True and (folder / "checkpoints").is_dir()
    _run(qtbot, widget)
    assert widget.status.value.startswith("trained"), widget.status.value
    with (folder / "metrics.csv").open() as stream:
        rows = [r for r in csv.DictReader(stream) if r["val_dice_mean"]]
    assert [int(r["step"]) for r in rows] == [2, 4]
    assert widget.dice.value.startswith(f"{float(rows[-1]['val_dice_mean']):.4f} (stage 1, step 4)")
    assert load_model(folder).info.class_names == ("class1",)
    config = yaml.safe_load((folder / "config.yaml").read_text())
    assert config["train"]["volumes"][0]["labelled_slices"] == [0, 3, 4, 6, 7, 8, 9]
    # The run folder opens in napari with its validation overlay and curves.
    layers = get_reader(str(folder))(str(folder))
    assert {kwargs["name"] for _, kwargs, _ in layers} == {"run curves", "run val_overlay"}
    assert all(data.ndim == 3 and data.shape[-1] == 3 for data, _, _ in layers)


def test_evaluate_widget_table_matches_library_and_copies(make_napari_viewer_proxy, qtbot):
    _, truth = _blobs(seed=1)
    pred = np.roll(truth, 2, axis=2)
    viewer = make_napari_viewer_proxy()
    viewer.add_labels(truth, scale=SCALE, name="truth")
    viewer.add_labels(pred, scale=SCALE, name="pred")
    widget = _dock(viewer, EvaluateWidget(viewer))
    widget.pred.value = viewer.layers["pred"]
    widget.gt.value = viewer.layers["truth"]
    widget.classes.value = "mito=1"
    _run(qtbot, widget)
    expected = evaluate_volumes(pred, truth, classes={"mito": 1}, voxel_size=SCALE).classes["mito"].values
    assert widget.columns["class"] == ["mito"]
    assert widget.columns["dice"] == [round(expected["dice"], 4)] and 0.3 < expected["dice"] < 0.95
    assert widget.columns["hd95"] == [round(expected["hd95"], 4)]
    assert widget.table.to_dict("list")["dice"] == widget.columns["dice"]
    widget.copy.clicked()
    from qtpy.QtWidgets import QApplication

    assert QApplication.clipboard().text() == table_text(widget.columns)
    assert QApplication.clipboard().text().splitlines()[0].startswith("class\tdice\tiou")


def test_measure_widget_table_csv_and_features(make_napari_viewer_proxy, qtbot, tmp_path):
    _, mask = _blobs(seed=2)
    ids = ndimage.label(mask)[0].astype(np.uint32) * 7  # instance ids that are not 1..n
    viewer = make_napari_viewer_proxy()
    viewer.add_labels(ids, scale=SCALE, name="objects")
    widget = _dock(viewer, MeasureWidget(viewer))
    widget.objects.value = "ids"
    _run(qtbot, widget)
    expected = measure_objects(ids, SCALE, objects="ids")
    assert len(expected["label"]) > 2
    table = widget.table.to_dict("list")
    assert table["label"] == list(expected["label"])
    np.testing.assert_allclose(table["surface_area_nm2"], expected["surface_area_nm2"])
    assert list(viewer.layers["objects"].features["index"]) == list(expected["label"])
    widget.csv_path.value = str(tmp_path / "objects.csv")
    widget.save.clicked()
    with (tmp_path / "objects.csv").open() as stream:
        assert [int(r["voxel_count"]) for r in csv.DictReader(stream)] == list(expected["voxel_count"])


def test_reader_opens_outputs_at_their_scale(make_napari_viewer_proxy, run_dir, tmp_path, monkeypatch):
    volume = np.random.default_rng(3).integers(0, 255, (3, 128, 136), dtype=np.uint8)  # two pyramid levels
    source = tmp_path / "em.zarr"
    with create_volume(source, volume.shape, np.uint8, voxel_size=SCALE) as out:
        out[:] = volume
    model = load_model(run_dir)
    plain = segment_to_file(
        source,
        tmp_path / "seg.zarr",
        model,
        SegmentOptions(output_type="labels", direction="forward"),
    )
    ome = segment_to_file(
        source,
        tmp_path / "seg.ome.zarr",
        model,
        SegmentOptions(output_type="instances", direction="forward"),
    )
    assert get_reader(str(source)) is None  # an input, not a sam4em output
    viewer = make_napari_viewer_proxy()
    viewer.open(str(plain), plugin="sam4em")
    viewer.open(str(ome), plugin="sam4em")
    names = [layer.name for layer in viewer.layers]
    assert names == ["seg labels", "seg.ome.zarr input", "mito", "er"]
    for layer in viewer.layers:
        assert tuple(layer.scale) == SCALE
    np.testing.assert_array_equal(np.asarray(viewer.layers["seg.ome.zarr input"].data[0]), volume)
    # Outputs too large for memory are read lazily, slice by slice.
    monkeypatch.setattr(reader, "IN_MEMORY_VOXELS", 0)
    [(lazy, _, _)] = get_reader(str(plain))(str(plain))
    assert isinstance(lazy, da.Array)
    np.testing.assert_array_equal(lazy.compute(), viewer.layers["seg labels"].data)
    mito = viewer.layers["mito"]
    assert mito.multiscale and [level.shape for level in mito.data] == [volume.shape, (3, 64, 68)]
    assert mito.data[0].dtype == np.uint32
    # An interrupted OME-Zarr output is marked too (its record is on each class's labels group).
    for name in ("mito", "er"):
        zarr.open_group(str(ome / "labels" / name), mode="r+").attrs[COMPLETE] = False
    names = [kwargs["name"] for _, kwargs, _ in get_reader(str(ome))(str(ome))]
    assert names[0] == "seg.ome.zarr input"
    assert [name.partition(" (unfinished: ")[:2] for name in names[1:]] == [("mito", " (unfinished: "), ("er", " (unfinished: ")]


def test_reader_opens_n5_and_hdf5_outputs(run_dir, tmp_path):
    """Every container format of the io table is read, not only Zarr: N5 (a folder of JSON and
    chunks, which zarr cannot open) and HDF5, each array at the source's voxel size."""
    volume = np.random.default_rng(4).integers(0, 255, (2, 32, 40), dtype=np.uint8)
    source = tmp_path / "em.tif"
    with create_volume(source, volume.shape, np.uint8, voxel_size=SCALE) as out:
        out[:] = volume
    model = load_model(run_dir)
    labels = SegmentOptions(output_type="labels", direction="forward")
    probs = SegmentOptions(output_type="probs", probs_dtype="float32", direction="forward")
    for output, options in [("seg.n5", labels), ("probs.n5", probs), ("seg.h5", labels)]:
        path = segment_to_file(source, tmp_path / output, model, options)
        layers = get_reader(str(path))(str(path))
        keys = ["mito", "er"] if options is probs else ["labels"]
        assert sorted(kwargs["name"] for _, kwargs, _ in layers) == sorted(f"{path.stem} {k}" for k in keys)
        for data, kwargs, kind in layers:
            assert (kind, tuple(kwargs["scale"])) == ("labels" if options is labels else "image", SCALE)
            key = kwargs["name"].split(" ")[-1]
            with open_volume(path, key) as stored:
                np.testing.assert_array_equal(np.asarray(data), stored[:])
    assert get_reader(str(source)) is None  # a single-volume file, left to other readers
    # An interrupted output opens (its finished blocks are worth a look), and its name says what is missing.
    with h5py.File(tmp_path / "seg.h5", "r+") as stored:
        stored["labels"].attrs[COMPLETE] = False
    [(_, kwargs, _)] = get_reader(str(tmp_path / "seg.h5"))(str(tmp_path / "seg.h5"))
    assert kwargs["name"] == "seg labels (unfinished: 1 of 1 blocks)"


def test_manifest_commands_import(tmp_path):
    from npe2 import PluginManager
    from npe2.manifest.utils import import_python_name

    manager = PluginManager.instance()
    manager.discover()
    manifest = manager.get_manifest("sam4em")
    assert {w.display_name for w in manifest.contributions.widgets} == {
        "Segment",
        "Train",
        "Evaluate",
        "Measure",
    }
    for command in manifest.contributions.commands:
        assert callable(import_python_name(command.python_name))


def test_lucchi_sample(data_dir, monkeypatch):
    from sam4em.napari_plugin.sample_data import lucchi_pp_crop

    monkeypatch.setenv("SAM4EM_DATA_DIR", str(data_dir))
    (image, image_kwargs, _), (labels, _, kind) = lucchi_pp_crop()
    assert image.shape == labels.shape == (32, 384, 512) and kind == "labels"
    assert image_kwargs["scale"] == (5.0, 5.0, 5.0)
    assert 0.01 < labels.mean() < 0.5  # mitochondria are in the crop


def test_cli_and_library_never_import_qt(tmp_path):
    """Without the extra the CLI must run: block every Qt/napari import and run real commands."""
    code = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('PyQt5', 'PyQt6', 'PySide2', 'PySide6', 'qtpy', 'napari', 'magicgui', 'vispy'):
            raise ImportError(f'blocked {name}')
sys.meta_path.insert(0, Block())
import numpy as np
from sam4em.cli import main
import sam4em.inference.streaming, sam4em.evaluation.measure_file, sam4em.io.ome_zarr_output, sam4em.training.trainer
from sam4em.io import create_volume
with create_volume(sys.argv[1] + '/l.zarr', (3, 20, 20), np.uint8, voxel_size=(5, 5, 5)) as out:
    out[1, 5:9, 5:9] = 1
assert main(['measure', sys.argv[1] + '/l.zarr', '--out', sys.argv[1] + '/o.csv']) == 0
assert main(['models']) == 0
"""
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "o.csv").read_text().count("\n") == 2
