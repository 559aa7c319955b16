"""Dataset registry: lookups, finding the local mirror, and the (checksum-verified) download path."""

from __future__ import annotations

import dataclasses
import hashlib
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pooch
import pytest

from sam4em import datasets
from sam4em.datasets import (
    DATA_DIR_ENV,
    DatasetNotFoundError,
    DatasetSpec,
    RemoteFile,
    SplitSpec,
    VolumeRef,
    get_dataset,
    get_spec,
    list_datasets,
)


def test_registry_lists_all_datasets_with_metadata() -> None:
    names = list_datasets()
    assert set(names) >= {"lucchi_pp", "isbi2012", "vnc", "kasthuri_pp", "mitoem_r", "mitoem_h"}
    for name in names:
        spec = get_spec(name)
        assert spec.name == name and spec.citation and spec.license and spec.homepage
        assert spec.remote and all(r.url.startswith(("http://", "https://")) for r in spec.remote)
        assert len(spec.voxel_size_nm) == 3 and spec.classes
        assert spec.class_mapping().names == tuple(spec.class_codes)
        assert any(split.role == "train" for split in spec.splits)


def test_registry_class_codes_and_layout() -> None:
    assert get_spec("lucchi_pp").class_codes == {"mito": (255,)}
    assert get_spec("lucchi_pp").split("test").role == "test"
    assert get_spec("isbi2012").class_codes == {"membrane": (0,)}
    assert get_spec("isbi2012").voxel_size_nm == (50.0, 4.0, 4.0)
    assert get_spec("isbi2012").split("train").image.path == "isbi2012/train/image"
    vnc = get_spec("vnc")
    assert vnc.class_codes == {
        "mito": (191,),
        "synapse": (223,),
        "glia": (159,),
        "membrane": (0, 32, 64, 96, 128),
    }
    assert vnc.split("train").label == VolumeRef("vnc/stack1_z00-09.h5", "labels")
    assert get_spec("mitoem_r").split("test").label is None


def test_unknown_names_list_the_registered_ones() -> None:
    with pytest.raises(KeyError, match=r"lucchi_pp.*vnc"):
        get_dataset("lucchi")
    with pytest.raises(KeyError, match="splits: train, test"):
        get_spec("lucchi_pp").split("val")


@pytest.mark.data
def test_mirror_found_via_data_dir(data_dir: Path) -> None:
    dataset = get_dataset("lucchi_pp", data_dir=data_dir)
    assert dataset.root == data_dir
    assert dataset.path("train", "image") == data_dir / "lucchi_pp" / "train_image.tif"
    assert dataset.path("test", "label").is_file() and dataset.key("train", "image") is None
    assert dataset.class_codes == {"mito": (255,)}
    vnc = get_dataset("vnc", data_dir=data_dir)
    assert vnc.key("train", "label") == "labels"
    labels = vnc.open("train", "label")
    assert tuple(labels.shape) == (10, 1024, 1024)
    assert set(np.unique(labels[0, :256, :256]).tolist()) <= {0, 32, 64, 96, 128, 159, 191, 223, 255}


@pytest.mark.data
def test_mirror_found_via_environment(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DATA_DIR_ENV, str(data_dir))
    dataset = get_dataset("isbi2012")
    assert dataset.path("train", "label") == data_dir / "isbi2012" / "train" / "label"
    with pytest.raises(ValueError, match="no public labels"):
        dataset.path("test", "label")
    image = get_dataset("lucchi_pp").open("train", "image")
    assert tuple(image.shape) == (165, 768, 1024)
    assert image[0, :8, :8].shape == (8, 8)


def test_absent_mirror_says_where_to_put_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(
        DatasetNotFoundError, match=rf"not found under {tmp_path}.*{DATA_DIR_ENV}.*download=True"
    ):
        get_dataset("lucchi_pp", data_dir=tmp_path)
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    with pytest.raises(DatasetNotFoundError, match=rf"data_dir=.*{DATA_DIR_ENV}"):
        get_dataset("vnc")


def _tiny_spec(remote: tuple[RemoteFile, ...]) -> DatasetSpec:
    return DatasetSpec(
        name="tiny",
        description="test fixture",
        citation="none",
        license="none",
        homepage="file://",
        splits=(SplitSpec("train", "train", VolumeRef("tiny/image.tif"), VolumeRef("tiny/label.tif")),),
        classes=(("mito", (1,)),),
        voxel_size_nm=(1.0, 1.0, 1.0),
        remote=remote,
        notes="convert me",
    )


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def served(tmp_path: Path) -> dict[str, Path]:
    """Files to 'download' from file:// URLs: two plain files and a zip holding both."""
    source = tmp_path / "server"
    (source / "tiny").mkdir(parents=True)
    image, label = source / "image.tif", source / "label.tif"
    image.write_bytes(b"image bytes")
    label.write_bytes(b"label bytes")
    archive = source / "tiny.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        handle.write(image, "image.tif")
        handle.write(label, "label.tif")
    return {"image": image, "label": label, "zip": archive}


def test_download_from_file_url_verifies_checksum(
    tmp_path: Path, served: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    remote = tuple(
        RemoteFile(served[kind].as_uri(), _sha256(served[kind]), f"tiny/{kind}.tif")
        for kind in ("image", "label")
    )
    monkeypatch.setitem(datasets._REGISTRY, "tiny", _tiny_spec(remote))
    data_dir = tmp_path / "data"
    with pytest.raises(DatasetNotFoundError):
        get_dataset("tiny", data_dir=data_dir)
    dataset = get_dataset("tiny", data_dir=data_dir, download=True)
    assert dataset.path("train", "image").read_bytes() == b"image bytes"
    assert get_dataset("tiny", data_dir=data_dir).root == data_dir


def test_download_rejects_wrong_checksum(
    tmp_path: Path, served: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    remote = (RemoteFile(served["zip"].as_uri(), "0" * 64, "tiny/tiny.zip", unpack=True),)
    monkeypatch.setitem(datasets._REGISTRY, "tiny", _tiny_spec(remote))
    data_dir = tmp_path / "data"
    with pytest.raises(ValueError, match=r"(?i)hash"):
        get_dataset("tiny", data_dir=data_dir, download=True)
    assert not (data_dir / "tiny" / "tiny.zip").exists()
    assert not (data_dir / "tiny" / "image.tif").exists()


def test_download_unpacks_zip_with_correct_checksum(
    tmp_path: Path, served: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    remote = (RemoteFile(served["zip"].as_uri(), _sha256(served["zip"]), "tiny/tiny.zip", unpack=True),)
    monkeypatch.setitem(datasets._REGISTRY, "tiny", _tiny_spec(remote))
    dataset = get_dataset("tiny", data_dir=tmp_path / "data", download=True)
    assert dataset.path("train", "label").read_bytes() == b"label bytes"


def test_registry_download_calls_pooch_with_known_hash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[dict[str, Any]] = []

    def fake_retrieve(**kwargs: Any) -> str:
        calls.append(kwargs)
        return str(Path(kwargs["path"]) / kwargs["fname"])

    monkeypatch.setattr(pooch, "retrieve", fake_retrieve)
    spec = get_spec("lucchi_pp")
    # The archive is not laid out like the mirror: the error must say how to convert it.
    with pytest.raises(DatasetNotFoundError, match=r"convert.*TIFF"):
        get_dataset("lucchi_pp", data_dir=tmp_path, download=True)
    assert [call["url"] for call in calls] == [remote.url for remote in spec.remote]
    assert calls[0]["known_hash"] == f"sha256:{spec.remote[0].sha256}"
    assert calls[0]["path"] == tmp_path / "lucchi_pp" and isinstance(calls[0]["processor"], pooch.Unzip)


def test_spec_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        get_spec("vnc").name = "other"  # type: ignore[misc]
