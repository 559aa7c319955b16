"""The *Segment* dock widget: an image layer through a sam4em model into labels or probability layers."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from magicgui.widgets import ComboBox, LineEdit, SpinBox
from napari.layers import Image, Layer

from sam4em.napari_plugin.job_widget import JobWidget, devices, layer_choice, pair_or_auto
from sam4em.napari_plugin.jobs import segment_layer

__all__ = ["SegmentWidget"]


class SegmentWidget(JobWidget):
    """Segment the chosen image layer; the result layers get the image layer's scale.

    The layer (in memory, dask or zarr) is streamed into a temporary Zarr store and segmented by
    ``segment_to_file`` block by block; Cancel stops after the current z-block.
    """

    def __init__(self, viewer: Any) -> None:
        super().__init__(viewer, "Segment")
        self.image = layer_choice(Image, "image")
        self.model = LineEdit(
            label="model", value="", tooltip="a trained run folder (test-tiny: random weights, a smoke test only)"
        )
        self.output_type = ComboBox(label="output", choices=["labels", "probs", "instances"], value="labels")
        self.tile = LineEdit(label="tile", value="auto", tooltip="tile 'Y X' in pixels, or auto")
        self.halo = LineEdit(label="halo", value="auto", tooltip="context on each tile side 'Y X', or auto")
        self.direction = ComboBox(label="direction", choices=["both", "forward", "backward"], value="both")
        self.device = ComboBox(label="device", choices=devices())
        self.block_size = SpinBox(
            label="block size", value=32, min=1, max=100_000, tooltip="slices per z-block"
        )
        self.kept: Path | None = None
        self.extend(
            [
                self.image,
                self.model,
                self.output_type,
                self.tile,
                self.halo,
                self.direction,
                self.device,
                self.block_size,
            ]
        )
        self.add_job_controls()

    def prepare(self) -> Callable[[], Any]:
        layer = self.image.value
        if layer is None:
            raise ValueError("no image layer: open or add an image first")
        source = self.model.value.strip()
        if not source:
            raise ValueError("model: give a trained run folder (the --out of `sam4em train`)")
        from sam4em.inference.options import SegmentOptions

        options = SegmentOptions(
            output_type=self.output_type.value,
            tile_shape=pair_or_auto(self.tile.value, "tile"),
            halo=pair_or_auto(self.halo.value, "halo"),
            direction=self.direction.value,
            device=self.device.value,
            block_size=int(self.block_size.value),
        )
        data, scale, name = layer.data, tuple(layer.scale), layer.name
        if layer.multiscale:
            data = data[0]  # the full-resolution level
        if layer.rgb:
            raise ValueError(f"{name}: an RGB layer; convert it to grey values first")

        def job() -> list[Any]:
            from sam4em.models import load_model

            model = load_model(source, device=options.device)
            workdir = Path(tempfile.mkdtemp(prefix="sam4em-segment-"))
            layers = segment_layer(
                data, scale, model, workdir, options, name=name, progress=self.report, stop=self.stop
            )
            if all(isinstance(d, np.ndarray) for d, _, _ in layers):
                shutil.rmtree(workdir, ignore_errors=True)  # results are in memory: the store is not needed
                self.kept = None
            else:
                self.kept = workdir  # large results are read lazily from it: it stays
            return layers

        return job

    def on_result(self, result: list[Any]) -> None:
        for data, kwargs, layer_type in result:
            self.viewer.add_layer(Layer.create(data, kwargs, layer_type))
        names = ", ".join(kwargs["name"] for _, kwargs, _ in result)
        kept = f" (read lazily from {self.kept}; delete it when done)" if self.kept else ""
        self.status.value = f"done: {names}{kept}"
