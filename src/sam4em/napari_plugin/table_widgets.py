"""The *Evaluate* and *Measure* dock widgets: metrics and per-object tables of labels layers."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import ComboBox, LineEdit, PushButton, Table
from napari.layers import Image, Labels
from qtpy.QtWidgets import QApplication

from sam4em.data.class_mapping import ClassMapping
from sam4em.napari_plugin.job_widget import JobWidget, layer_choice

if TYPE_CHECKING:  # the widget module imports no evaluation code until a job runs
    from sam4em.evaluation.evaluate import Evaluation
from sam4em.napari_plugin.jobs import default_classes, voxel_size

__all__ = ["EvaluateWidget", "MeasureWidget", "table_text"]

def table_text(columns: dict[str, list[Any]]) -> str:
    """Tab-separated text of a table (header line first), as spreadsheets paste it."""
    names = list(columns)
    rows = zip(*(columns[n] for n in names), strict=True)
    return "\n".join(["\t".join(names), *("\t".join(str(v) for v in row) for row in rows)])


def _copy(text: str) -> None:
    clipboard = QApplication.clipboard()  # None only without a QApplication, which a dock widget implies
    if clipboard is not None:
        clipboard.setText(text)


class EvaluateWidget(JobWidget):
    """Score a labels layer against a ground-truth labels layer (the metrics of ``sam4em evaluate``)."""

    def __init__(self, viewer: Any) -> None:
        super().__init__(viewer, "Evaluate")
        self.pred = layer_choice(Labels, "prediction")
        self.gt = layer_choice(Labels, "ground truth")
        self.classes = LineEdit(
            label="classes", value="", tooltip="ground-truth codes, e.g. mito=255 (empty: all)"
        )
        self.pred_classes = LineEdit(
            label="pred classes", value="", tooltip="codes in the prediction (empty: 1..C in classes order)"
        )
        self.table = Table(value={"class": []})
        self.copy = PushButton(text="Copy table")
        self.copy.changed.connect(lambda: _copy(table_text(self.columns)))
        self.extend([self.pred, self.gt, self.classes, self.pred_classes])
        self.add_job_controls()
        self.extend([self.table, self.copy])
        self.columns: dict[str, list[Any]] = {}

    def prepare(self) -> Callable[[], Any]:
        from sam4em.evaluation import evaluate_volumes

        pred, gt = self.pred.value, self.gt.value
        if pred is None or gt is None:
            raise ValueError("choose a prediction and a ground-truth labels layer")
        classes = ClassMapping.parse(self.classes.value.strip() or default_classes(gt.data)).single_codes()
        text = self.pred_classes.value.strip()
        pred_classes = ClassMapping.parse(text).single_codes() if text else None
        pred_data, gt_data, sizes = pred.data, gt.data, voxel_size(gt.scale)

        def job() -> Evaluation:
            return evaluate_volumes(
                pred_data, gt_data, classes=classes, pred_classes=pred_classes, voxel_size=sizes,
                chunk_slices=32, progress=self.report,
            )  # fmt: skip

        return job

    def on_result(self, result: Evaluation) -> None:
        from sam4em.evaluation.metric_registry import table_keys  # the columns of `sam4em evaluate`'s table

        names = list(result.classes)
        self.columns = {"class": names}
        for key in table_keys():
            values = [result.classes[n].values.get(key) for n in names]
            if any(v is not None for v in values):
                self.columns[key] = [None if v is None else round(float(v), 4) for v in values]
        self.table.value = self.columns
        self.status.value = (
            f"evaluated {len(names)} class(es); distances in {result.distance_unit}"
        )


class MeasureWidget(JobWidget):
    """Per-object measurements of a labels layer (``sam4em measure``): a table, saved as CSV on demand."""

    def __init__(self, viewer: Any) -> None:
        super().__init__(viewer, "Measure")
        # Not `self.labels`: that is the Container's own switch for showing field labels.
        self.labels_layer = layer_choice(Labels, "labels")
        self.probs = layer_choice(Image | None, "probabilities", options={"nullable": True})
        self.objects = ComboBox(label="objects", choices=["components", "ids"], value="components",
                                tooltip="components per class code, or each value an object (instances)")  # fmt: skip
        self.classes = LineEdit(label="classes", value="", tooltip="e.g. mito=1,glia=2 (empty: every code)")
        self.table = Table(value={"class": []})
        self.csv_path = LineEdit(label="CSV", value=str(Path.home() / "objects.csv"))
        self.save = PushButton(text="Save CSV")
        self.save.changed.connect(self.save_csv)
        self.extend([self.labels_layer, self.probs, self.objects, self.classes])
        self.add_job_controls()
        self.extend([self.table, self.csv_path, self.save])
        self.result: dict[str, np.ndarray] = {}
        self._layer: Any = None

    def prepare(self) -> Callable[[], Any]:
        from sam4em.evaluation.measure import measure_objects

        layer = self.labels_layer.value
        if layer is None:
            raise ValueError("choose a labels layer")
        data = layer.data if len(layer.data.shape) == 3 else np.asarray(layer.data)[None]
        probs = self.probs.value
        probabilities = (
            None if probs is None else (probs.data if probs.ndim == 3 else np.asarray(probs.data)[None])
        )
        text = self.classes.value.strip()
        mapping = ClassMapping.parse(text) if text else None
        classes = None if mapping is None else {n: mapping.codes(n) for n in mapping.names}
        objects, sizes = self.objects.value, voxel_size(layer.scale)
        self._layer = layer

        def job() -> dict[str, np.ndarray]:
            return measure_objects(data, sizes, objects=objects, classes=classes, probabilities=probabilities)

        return job

    def on_result(self, result: dict[str, np.ndarray]) -> None:
        self.result = result
        self.table.value = {
            name: [v.item() if hasattr(v, "item") else v for v in column] for name, column in result.items()
        }
        if self.objects.value == "ids" and self._layer is not None:
            # Instance ids are label values: napari then shows each object's row on hover.
            self._layer.features = {"index": list(result["label"]), **{k: list(v) for k, v in result.items()}}
        self.status.value = f"measured {len(result['label'])} object(s)"

    def save_csv(self) -> None:
        from sam4em.evaluation.measure import write_csv

        if not self.result:
            self.status.value = "error: nothing measured yet"
            return
        try:
            path = write_csv(self.result, Path(self.csv_path.value).expanduser())
        except OSError as error:
            self.status.value = f"error: {error}"
            return
        self.status.value = f"wrote {path}"
