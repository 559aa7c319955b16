"""Make docs/napari-segment.png: the napari viewer after the *Segment* widget ran on a Lucchi++ crop.

    xvfb-run -a .venv/bin/python docs/make_napari_screenshot.py RUN_FOLDER [OUT.png]

RUN_FOLDER is a trained sam4em run (``sam4em train``); the Lucchi++ copy is found through
``$SAM4EM_DATA_DIR`` or ``../shared/data``. The widget runs exactly as a user would run it.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import napari
from qtpy.QtWidgets import QApplication

from sam4em.napari_plugin.sample_data import lucchi_pp_crop
from sam4em.napari_plugin.segment_widget import SegmentWidget


def main(run_dir: str, out: str = "docs/napari-segment.png") -> None:
    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1400, 860)  # a fixed size for a reproducible picture
    (image, image_kwargs, _), (truth, truth_kwargs, _) = lucchi_pp_crop()
    viewer.add_image(image, **image_kwargs)
    viewer.add_labels(truth, **{**truth_kwargs, "name": "ground truth", "visible": False})
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget, name="sam4em: Segment")
    widget.reset_choices()
    widget.image.value = viewer.layers[image_kwargs["name"]]
    widget.model.value = run_dir
    widget.device.value = "cpu"
    widget.start()
    started = time.time()
    while widget.busy:
        QApplication.processEvents()
        time.sleep(0.05)
    print(f"segmented in {time.time() - started:.1f} s: {widget.status.value}")
    labels = viewer.layers[-1]
    labels.opacity = 0.5
    labels.contour = 0
    viewer.dims.set_current_step(0, image.shape[0] // 2)
    viewer.reset_view()
    for _ in range(20):
        QApplication.processEvents()
    viewer.screenshot(out, canvas_only=False, flash=False)
    print(f"wrote {Path(out).resolve()}")
    viewer.close()


if __name__ == "__main__":
    main(*sys.argv[1:])
