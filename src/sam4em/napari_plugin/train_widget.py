"""The *Train* dock widget: a normal sam4em run folder trained from an image layer and a labels layer."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from magicgui.widgets import CheckBox, ComboBox, FloatSpinBox, Label, LineEdit, SpinBox
from napari.layers import Image, Labels

from sam4em.models.registry import MODELS
from sam4em.napari_plugin.job_widget import JobWidget, devices, layer_choice
from sam4em.napari_plugin.jobs import default_classes, latest_validation, train_from_layers

__all__ = ["TrainWidget"]


class TrainWidget(JobWidget):
    """Train stage 1 (and stage 2 when it has steps) on the layers; Cancel saves a checkpoint that
    *resume* continues. The run folder is the same as ``sam4em train`` writes (usable by Segment)."""

    def __init__(self, viewer: Any) -> None:
        super().__init__(viewer, "Train")
        self.image = layer_choice(Image, "image")
        # Not `self.labels`: that is the Container's own switch for showing field labels.
        self.labels_layer = layer_choice(Labels, "labels")
        self.classes = LineEdit(
            label="classes", value="", tooltip="e.g. mito=1,glia=2 (empty: every code in the labels)"
        )
        self.base = ComboBox(label="base model", choices=list(MODELS), value="cpu-small")
        self.run_dir = LineEdit(label="run folder", value=str(Path.home() / "sam4em-runs" / "napari"))
        self.stage1_steps = SpinBox(label="stage 1 steps", value=200, min=1, max=1_000_000)
        self.stage2_steps = SpinBox(
            label="stage 2 steps", value=0, min=0, max=1_000_000, tooltip="0: 2D stage only"
        )
        self.minutes = FloatSpinBox(
            label="minutes per stage", value=0.0, min=0.0, max=1e6, tooltip="0: steps only"
        )
        self.batch_size = SpinBox(label="batch size", value=2, min=1, max=1024)
        self.device = ComboBox(label="device", choices=devices())
        self.sparse = CheckBox(
            label="only painted slices", tooltip="sparse labels: unpainted slices give no loss"
        )
        self.resume = CheckBox(label="resume", tooltip="continue a stopped run in the run folder")
        self.dice = Label(label="validation Dice", value="-")
        self.extend(
            [self.image, self.labels_layer, self.classes, self.base, self.run_dir, self.stage1_steps, self.stage2_steps, self.minutes,
             self.batch_size, self.device, self.sparse, self.resume, self.dice]
        )  # fmt: skip
        self.add_job_controls()
        self._stage = (1, 1)
        self._folder: Path | None = None

    def prepare(self) -> Callable[[], Any]:
        image, labels = self.image.value, self.labels_layer.value
        if image is None or labels is None:
            raise ValueError("choose an image layer and its labels layer")
        folder = Path(self.run_dir.value).expanduser()
        classes = self.classes.value.strip() or default_classes(labels.data)
        options = {
            "classes": classes,
            "base": self.base.value,
            "stage1_steps": int(self.stage1_steps.value),
            "stage2_steps": int(self.stage2_steps.value),
            "minutes": float(self.minutes.value),
            "batch_size": int(self.batch_size.value),
            "device": self.device.value,
            "sparse": bool(self.sparse.value),
            "resume": bool(self.resume.value),
        }
        image_data, labels_data, scale = image.data, labels.data, tuple(image.scale)
        self._folder = folder
        self.dice.value = "-"

        def progress(stage: int, step: int, total: int) -> None:
            self._stage = (stage, total)
            self.report(step, total)

        def job() -> Any:
            return train_from_layers(
                image_data, labels_data, scale, folder, should_stop=lambda stage, step: self.stop.is_set(),
                progress=progress, **options,
            )  # fmt: skip

        return job

    def on_poll(self) -> None:
        if self._folder is not None:
            found = latest_validation(self._folder)
            if found is not None:
                stage, step, dice = found
                self.dice.value = f"{dice:.4f} (stage {stage}, step {step})"

    def on_result(self, result: Any) -> None:
        if result.interrupted:
            self.status.value = (
                f"stopped with a checkpoint in {result.run_dir}; tick resume and Train to continue"
            )
            self.resume.value = True
        else:
            self.status.value = f"trained: {result.run_dir} (use it as the Segment model)"
