"""napari reader for sam4em outputs (any container format of :mod:`sam4em.io.formats`: Zarr, HDF5,
N5, ...; OME-Zarr) and run folders' validation overlays.

* a segmentation output: every array it holds, at its voxel size (nm) as the layer scale: labels and
  instances as labels layers, probabilities as image layers; an OME-Zarr output also its input
  image, and every pyramid level (napari then loads only what is on screen);
* a run folder (``config.yaml`` + ``model.safetensors``): its ``plots/*.png`` (validation overlay,
  training curves) as RGB image layers.

Anything else is left to other readers (``get_reader`` returns None).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from sam4em.io import VolumeError, list_volumes, open_volume
from sam4em.io.formats import format_for_path
from sam4em.io.ome_zarr_output import PROBABILITIES, is_ome_output, open_output
from sam4em.io.output_record import OutputRecord, read_output_record
from sam4em.napari_plugin.jobs import IN_MEMORY_VOXELS

if TYPE_CHECKING:
    import zarr

__all__ = ["get_reader", "read_output", "read_run_folder"]

LayerData = tuple[Any, dict[str, Any], str]


def _is_container(path: Path) -> bool:
    """Whether ``path`` exists and its format (by the io table) holds several arrays by key."""
    try:
        return path.exists() and format_for_path(path).container
    except VolumeError:  # no format reads it: left to other readers
        return False


def _records(path: Path) -> list[tuple[str, OutputRecord]]:
    """(key, run record) of every array sam4em wrote into a container (attributes only)."""
    found = []
    for key in list_volumes(path):
        try:
            with open_volume(path, key) as volume:
                record = read_output_record(volume.attrs)
        except VolumeError:
            continue
        if record is not None:
            found.append((key, record))
    return found


def _array(path: Path, key: str) -> tuple[Any, tuple[float, float, float]]:
    """An output array, in memory when small, else read lazily slice by slice (dask); and its scale."""
    import dask.array as da

    volume = open_volume(path, key)
    scale = volume.voxel_size or (1.0, 1.0, 1.0)
    if int(np.prod(volume.shape)) > IN_MEMORY_VOXELS:
        return da.from_array(volume, chunks=(1, *volume.shape[1:])), scale
    with volume:
        return volume[:], scale


def read_output(path: Path) -> list[LayerData]:
    """The layers of a sam4em segmentation output (empty when it holds none)."""
    if is_ome_output(path):
        return _read_ome(path)
    layers: list[LayerData] = []
    for key, record in _records(path):
        data, scale = _array(path, key)
        name = f"{path.stem} {key}{_unfinished(record, int(data.shape[0]))}"
        if record.output_type == "probs":
            values = data.astype(np.float32) / 255 if data.dtype == np.uint8 else data
            kwargs = {"name": name, "scale": scale, "colormap": "magma", "blending": "additive"}
            layers.append((values, kwargs, "image"))
        else:
            layers.append((data, {"name": name, "scale": scale}, "labels"))
    return layers


def _unfinished(record: OutputRecord | None, depth: int) -> str:
    """A layer name's mark for an interrupted `sam4em segment` output, whose missing blocks show as empty."""
    if record is None or record.complete:
        return ""
    return f" (unfinished: {record.blocks_done} of {record.blocks_total(depth)} blocks)"


def _ome(group: zarr.Group) -> dict[str, Any]:
    """A group's ``ome`` attributes (NGFF 0.5) as plain JSON (zarr types attribute values as a JSON union)."""
    return cast("dict[str, Any]", group.attrs["ome"])


def _pyramid(path: Path, key: str | None) -> tuple[list[Any], tuple[float, float, float], list[str]]:
    import zarr

    group = zarr.open_group(str(path / key) if key else str(path), mode="r")
    meta = _ome(group)["multiscales"][0]
    levels = [group[d["path"]] for d in meta["datasets"]]
    with open_output(path, key) as volume:
        scale = volume.voxel_size or (1.0, 1.0, 1.0)
    channels = [c["label"] for c in _ome(group).get("omero", {}).get("channels", [])]
    return levels, scale, channels


def _levels(levels: list[Any]) -> tuple[Any, bool]:
    """Layer data and ``multiscale`` for pyramid levels (napari refuses one-level multiscale labels)."""
    return (levels, True) if len(levels) > 1 else (levels[0], False)


def _read_ome(path: Path) -> list[LayerData]:
    import dask.array as da
    import zarr

    levels, scale, _ = _pyramid(path, None)
    data, multiscale = _levels(levels)
    layers: list[LayerData] = [
        (data, {"name": f"{path.name} input", "scale": scale, "multiscale": multiscale}, "image")
    ]
    root = zarr.open_group(str(path), mode="r")
    labels = root.get("labels")
    label_names = _ome(labels).get("labels", []) if isinstance(labels, zarr.Group) else []
    # The run record sits on the probabilities group, or on each class's labels group.
    holder = PROBABILITIES if PROBABILITIES in root else f"labels/{label_names[0]}" if label_names else None
    record = read_output_record(zarr.open_group(str(path / holder), mode="r").attrs.asdict()) if holder else None
    mark = _unfinished(record, int(levels[0].shape[0]))
    if PROBABILITIES in root:
        levels, scale, channels = _pyramid(path, PROBABILITIES)
        for c, name in enumerate(channels):
            # One channel of every level, lazily: napari reads only what is on screen.
            data, multiscale = _levels([da.from_zarr(level)[c] for level in levels])
            kwargs = {"name": f"{name} probability{mark}", "scale": scale, "multiscale": multiscale}
            layers.append((data, {**kwargs, "colormap": "magma", "blending": "additive"}, "image"))
    for name in label_names:
        levels, scale, _ = _pyramid(path, f"labels/{name}")
        data, multiscale = _levels(levels)
        layers.append((data, {"name": f"{name}{mark}", "scale": scale, "multiscale": multiscale}, "labels"))
    return layers


def read_run_folder(path: Path) -> list[LayerData]:
    """A training run's plots as RGB image layers."""
    from imageio.v3 import imread

    return [
        (np.asarray(imread(png))[..., :3], {"name": f"{path.name} {png.stem}", "rgb": True}, "image")
        for png in sorted((path / "plots").glob("*.png"))
    ]


def get_reader(path: str | list[str]) -> Callable[[str | list[str]], list[LayerData]] | None:
    """npe2 reader hook: a reader for sam4em outputs and run folders, else None."""
    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    target = Path(path)
    if (target / "config.yaml").is_file() and (target / "model.safetensors").is_file():
        return lambda _: read_run_folder(target)
    if not _is_container(target):
        return None
    if not is_ome_output(target) and not _records(target):
        return None
    return lambda _: read_output(target)
