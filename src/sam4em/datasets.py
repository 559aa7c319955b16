"""Registry of the public EM datasets sam4em trains and evaluates on.

Every dataset is described by a frozen :class:`DatasetSpec`: citation, license, where to
download it, and the *local mirror layout* (relative paths and keys of each split's image
and label volumes under a data directory, the label codes of each class, the voxel size).
:func:`get_dataset` finds a mirror in ``data_dir`` (else the ``SAM4EM_DATA_DIR`` environment
variable) and returns a :class:`LocalDataset` that opens its volumes lazily through
:func:`sam4em.io.open_volume`. Volumes are (Z, Y, X) throughout.

Downloading is opt-in (``download=True``) and goes through pooch, which verifies the SHA-256
checksum where the registry knows it. Where it does not (``sha256=None``), pooch logs the
hash of what it fetched instead of verifying it: these entries are marked in the registry.
The public archives are not always laid out like the mirror (Lucchi++ ships PNG stacks,
MitoEM ships one PNG per slice); when the downloaded files do not produce the mirror
layout, :func:`get_dataset` says which files to convert rather than guessing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from sam4em.data.class_mapping import ClassMapping
from sam4em.data.download import RemoteFile, fetch

DATA_DIR_ENV = "SAM4EM_DATA_DIR"

SplitRole = Literal["train", "val", "test"]
VolumeKind = Literal["image", "label"]


class DatasetNotFoundError(FileNotFoundError):
    """The local mirror of a dataset is missing and may not (or could not) be downloaded."""


@dataclass(frozen=True)
class VolumeRef:
    """One volume of the mirror: ``path`` relative to the data directory, ``key`` inside it.

    ``path`` may name a file (TIFF, HDF5, ...) or a folder of one image per slice; ``key`` is
    the dataset inside a container file (``None`` for TIFF and image folders).
    """

    path: str
    key: str | None = None


@dataclass(frozen=True)
class SplitSpec:
    """One split of a dataset.

    ``role`` says what the split may be used for: ``"test"`` splits are for final reporting
    only (never for model selection or thresholds), ``"val"`` splits are an official
    validation set; validation parts of ``"train"`` splits are held out by z-range
    (see :mod:`sam4em.data.splits`). ``label`` is ``None`` where the ground truth is not
    public (challenge test sets).
    """

    name: str
    role: SplitRole
    image: VolumeRef
    label: VolumeRef | None


@dataclass(frozen=True)
class DatasetSpec:
    """Static description of a public EM dataset and of its local mirror layout.

    ``classes`` pairs each class name with its label codes (several codes may mean one
    class, e.g. the four membrane orientations in the VNC labels); ``ignore_codes`` are label
    codes to leave out of the loss. ``voxel_size_nm`` is (z, y, x).
    """

    name: str
    description: str
    citation: str
    license: str
    homepage: str
    splits: tuple[SplitSpec, ...]
    classes: tuple[tuple[str, tuple[int, ...]], ...]
    voxel_size_nm: tuple[float, float, float]
    remote: tuple[RemoteFile, ...] = ()
    ignore_codes: tuple[int, ...] = ()
    notes: str = ""

    @property
    def class_codes(self) -> dict[str, tuple[int, ...]]:
        """Class name → label codes, in registry order."""
        return dict(self.classes)

    @property
    def split_names(self) -> tuple[str, ...]:
        return tuple(split.name for split in self.splits)

    def split(self, name: str) -> SplitSpec:
        """The split called ``name``; ``KeyError`` naming the known splits otherwise."""
        for split in self.splits:
            if split.name == name:
                return split
        raise KeyError(f"dataset {self.name!r} has no split {name!r}; splits: {', '.join(self.split_names)}")

    def class_mapping(self) -> ClassMapping:
        """The :class:`ClassMapping` turning this dataset's label codes into binary targets."""
        return ClassMapping.from_codes(self.class_codes, ignore=self.ignore_codes)

    def mirror_files(self) -> tuple[str, ...]:
        """Relative paths that must exist under the data directory for the mirror to count."""
        paths: list[str] = []
        for split in self.splits:
            for ref in (split.image, split.label):
                if ref is not None and ref.path not in paths:
                    paths.append(ref.path)
        return tuple(paths)


_LUCCHI_CITATION = (
    "A. Lucchi, K. Smith, R. Achanta, G. Knott, P. Fua, 'Supervoxel-based segmentation of "
    "mitochondria in EM image stacks with learned shape features', IEEE TMI 2012; labels "
    "re-annotated (Lucchi++) in V. Casser, K. Kang, H. Pfister, D. Haehn, 'Fast Mitochondria "
    "Detection for Connectomics', MIDL 2020, arXiv:1812.06024."
)
_CASSER_CITATION = (
    "V. Casser, K. Kang, H. Pfister, D. Haehn, 'Fast Mitochondria Detection for Connectomics', "
    "MIDL 2020, arXiv:1812.06024; images from N. Kasthuri et al., 'Saturated reconstruction of "
    "a volume of neocortex', Cell 162(3), 2015."
)
_MITOEM_CITATION = (
    "D. Wei, Z. Lin, D. Franco-Barranco, N. Wendt, X. Liu, W. Yin, X. Huang, A. Gupta, W.-D. Jang, "
    "X. Wang, I. Arganda-Carreras, J. W. Lichtman, H. Pfister, 'MitoEM Dataset: Large-scale 3D "
    "Mitochondria Instance Segmentation from EM Images', MICCAI 2020, doi:10.1007/978-3-030-59722-1_7."
)
_MITOEM_NOTES = (
    "The archives hold one PNG per slice (im0000.png ...; labels are instance ids, 0 = background, "
    "so the mirror stores them as binary 0/255). Official split: slices 0-399 train, 400-499 val, "
    "500-999 test (labels withheld by the challenge). Convert each split to one HDF5 file with "
    "datasets 'raw' and 'labels' at the mirror paths."
)


def _mitoem(tissue: str, what: str) -> DatasetSpec:
    """MitoEM-R or -H (``tissue`` "r" or "h"): the two volumes share layout, sources and terms."""
    name = f"mitoem_{tissue}"

    def ref(split: str, key: str) -> VolumeRef:
        return VolumeRef(f"{name}/{split}.h5", key)

    archive = "https://huggingface.co/datasets/pytc/EM30/resolve/main/EM30-{}-{}.zip"
    return DatasetSpec(
        name=name,
        description=f"{what}, multi-beam SEM, 1000×4096×4096, mitochondria instances (binarised in the mirror).",
        citation=_MITOEM_CITATION,
        license="research use (challenge terms)",
        homepage="https://mitoem.grand-challenge.org/",
        splits=(
            SplitSpec("train", "train", ref("train", "raw"), ref("train", "labels")),
            SplitSpec("val", "val", ref("val", "raw"), ref("val", "labels")),
            SplitSpec("test", "test", ref("test", "raw"), None),
        ),
        classes=(("mito", (255,)),),
        voxel_size_nm=(30.0, 8.0, 8.0),
        remote=tuple(
            RemoteFile(
                url=archive.format(tissue.upper(), part),
                sha256=None,
                dest=f"{name}/EM30-{tissue.upper()}-{part}.zip",
                unpack=True,
            )
            for part in ("im", "mito-train-val-v2")
        ),
        notes=_MITOEM_NOTES,
    )

# The URLs and checksums below were written from memory of the projects' download pages
# (Casser et al.'s connectomics page, the MitoEM Grand Challenge and its Hugging Face copy,
# figshare) and could not be checked offline: treat them as unverified until a first download
# confirms them. Where no checksum is known, sha256 is None and pooch only logs the hash.
_REGISTRY: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec(
            name="lucchi_pp",
            description="Lucchi++: EPFL mouse CA1 hippocampus, FIB-SEM, binary mitochondria labels "
            "(train and test 165×768×1024).",
            citation=_LUCCHI_CITATION,
            license="research use (EPFL CVLab terms)",
            homepage="https://sites.google.com/view/connectomics/",
            splits=(
                SplitSpec(
                    "train",
                    "train",
                    VolumeRef("lucchi_pp/train_image.tif"),
                    VolumeRef("lucchi_pp/train_label.tif"),
                ),
                SplitSpec(
                    "test",
                    "test",
                    VolumeRef("lucchi_pp/test_image.tif"),
                    VolumeRef("lucchi_pp/test_label.tif"),
                ),
            ),
            classes=(("mito", (255,)),),
            voxel_size_nm=(5.0, 5.0, 5.0),
            remote=(
                RemoteFile(
                    url="http://www.casser.io/files/lucchi_pp.zip",
                    sha256="770ce9e98fc6f29c1b1a250c637e6c5125f2b5f1260e5a7687b55a79e2e8844d",
                    dest="lucchi_pp/lucchi_pp.zip",
                    unpack=True,
                ),
            ),
            notes="The archive holds PNG stacks (Lucchi++/{Train,Test}_{In,Out}/); stack each into a "
            "multi-page uint8 TIFF (axes ZYX) at the mirror paths.",
        ),
        DatasetSpec(
            name="isbi2012",
            description="ISBI 2012 neuronal membrane challenge: Drosophila first-instar VNC, ssTEM, "
            "30×512×512 labelled training slices (+30 unlabelled test slices).",
            citation="I. Arganda-Carreras et al., 'Crowdsourcing the creation of image segmentation "
            "algorithms for connectomics', Frontiers in Neuroanatomy 9:142, 2015.",
            license="research use (challenge terms)",
            homepage="https://imagej.net/events/isbi-2012-segmentation-challenge",
            splits=(
                SplitSpec(
                    "train", "train", VolumeRef("isbi2012/train/image"), VolumeRef("isbi2012/train/label")
                ),
                SplitSpec("test", "test", VolumeRef("isbi2012/test/image"), None),
            ),
            classes=(("membrane", (0,)),),
            voxel_size_nm=(50.0, 4.0, 4.0),
            remote=(
                RemoteFile(
                    url="https://downloads.imagej.net/ISBI-2012-challenge.zip",
                    sha256=None,
                    dest="isbi2012/ISBI-2012-challenge.zip",
                    unpack=True,
                ),
            ),
            notes="The archive holds multi-page TIFFs (train-volume.tif, train-labels.tif, "
            "test-volume.tif); split them into one PNG per slice named by slice number.",
        ),
        DatasetSpec(
            name="vnc",
            description="Drosophila third-instar VNC, ssTEM (Gerhard et al.), slices 0-9 of stack 1, "
            "10×1024×1024, with membrane, glia, mitochondria and synapse labels.",
            citation="S. Gerhard, J. Funke, J. Martel, A. Cardona, R. Fetter, 'Segmented anisotropic "
            "ssTEM dataset of neural tissue', figshare 2013, doi:10.6084/m9.figshare.856713.",
            license="CC BY-NC-SA 3.0",
            homepage="https://github.com/unidesigner/groundtruth-drosophila-vnc",
            splits=(
                SplitSpec(
                    "train",
                    "train",
                    VolumeRef("vnc/stack1_z00-09.h5", "raw"),
                    VolumeRef("vnc/stack1_z00-09.h5", "labels"),
                ),
            ),
            classes=(
                ("mito", (191,)),
                ("synapse", (223,)),
                ("glia", (159,)),
                ("membrane", (0, 32, 64, 96, 128)),
            ),
            voxel_size_nm=(50.0, 4.6, 4.6),
            remote=(
                RemoteFile(
                    url="https://github.com/unidesigner/groundtruth-drosophila-vnc/archive/refs/heads/master.zip",
                    sha256=None,
                    dest="vnc/groundtruth-drosophila-vnc.zip",
                    unpack=True,
                ),
            ),
            notes="The archive holds stack1/raw/NN.tif and stack1/labels/labels000NN.png; stack slices "
            "0-9 into one HDF5 file with uint8 datasets 'raw' and 'labels'.",
        ),
        DatasetSpec(
            name="kasthuri_pp",
            description="Kasthuri++: mouse somatosensory cortex, ssEM (Kasthuri et al. 2015), "
            "mitochondria re-annotated by Casser et al.; one train and one test volume.",
            citation=_CASSER_CITATION,
            license="research use",
            homepage="https://sites.google.com/view/connectomics/",
            splits=(
                SplitSpec(
                    "train",
                    "train",
                    VolumeRef("kasthuri_pp/train_image.tif"),
                    VolumeRef("kasthuri_pp/train_label.tif"),
                ),
                SplitSpec(
                    "test",
                    "test",
                    VolumeRef("kasthuri_pp/test_image.tif"),
                    VolumeRef("kasthuri_pp/test_label.tif"),
                ),
            ),
            classes=(("mito", (255,)),),
            voxel_size_nm=(30.0, 3.0, 3.0),
            remote=(
                RemoteFile(
                    url="http://www.casser.io/files/kasthuri_pp.zip",
                    sha256="bbb78fd205ec9b57feb8f93ebbdf1666261cbc3e0305e7f11583ab5157a3d792",
                    dest="kasthuri_pp/kasthuri_pp.zip",
                    unpack=True,
                ),
            ),
            notes="The archive holds PNG stacks (Kasthuri++/{Train,Test}_{In,Out}/); stack each into a "
            "multi-page uint8 TIFF at the mirror paths. Some label slices mark unimaged area; "
            "check the codes with ClassMapping.validate after converting.",
        ),
        _mitoem("r", "MitoEM-R: adult rat layer II/III visual cortex"),
        _mitoem("h", "MitoEM-H: adult human layer II temporal lobe"),
    )
}


def list_datasets() -> list[str]:
    """Names of the registered datasets, sorted."""
    return sorted(_REGISTRY)


def get_spec(name: str) -> DatasetSpec:
    """The registry entry ``name``; ``KeyError`` listing the registered names otherwise."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(
            f"unknown dataset {name!r}; registered datasets: {', '.join(list_datasets())}"
        ) from None


@dataclass(frozen=True)
class LocalDataset:
    """A dataset whose mirror exists under ``root`` (the data directory, not the dataset folder)."""

    spec: DatasetSpec
    root: Path

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def class_codes(self) -> dict[str, tuple[int, ...]]:
        return self.spec.class_codes

    def class_mapping(self) -> ClassMapping:
        return self.spec.class_mapping()

    def ref(self, split: str, kind: VolumeKind) -> VolumeRef:
        """The :class:`VolumeRef` of ``split``'s image or label volume."""
        spec = self.spec.split(split)
        if kind == "image":
            return spec.image
        if kind == "label":
            if spec.label is None:
                raise ValueError(f"split {split!r} of dataset {self.name!r} has no public labels")
            return spec.label
        raise ValueError(f"kind must be 'image' or 'label', got {kind!r}")

    def path(self, split: str, kind: VolumeKind) -> Path:
        """Absolute path of ``split``'s image or label file (or slice folder)."""
        return self.root / self.ref(split, kind).path

    def key(self, split: str, kind: VolumeKind) -> str | None:
        """Key of ``split``'s image or label dataset inside its file (``None`` for TIFF/folders)."""
        return self.ref(split, kind).key

    def open(self, split: str, kind: VolumeKind = "image") -> Any:
        """Open ``split``'s image or label volume lazily: a (Z, Y, X) array-like."""
        from sam4em.io import open_volume  # deferred: only opening a volume needs the readers

        return open_volume(self.path(split, kind), key=self.key(split, kind))


def resolve_data_dir(data_dir: str | os.PathLike[str] | None = None) -> Path | None:
    """``data_dir`` if given, else ``$SAM4EM_DATA_DIR``, else ``None``."""
    if data_dir is not None:
        return Path(data_dir)
    env = os.environ.get(DATA_DIR_ENV)
    return Path(env) if env else None


def shared_data_dir() -> Path | None:
    """../shared/data beside the working folder, where these sessions keep the public datasets; None if absent.
    The last place `sam4em benchmark`, `demo` and `datasets` look, after ``--data-dir`` and ``$SAM4EM_DATA_DIR``."""
    fallback = Path.cwd().parent / "shared" / "data"
    return fallback if fallback.is_dir() else None


def _missing(spec: DatasetSpec, root: Path) -> list[str]:
    return [rel for rel in spec.mirror_files() if not (root / rel).exists()]


def get_dataset(
    name: str, data_dir: str | os.PathLike[str] | None = None, download: bool = False
) -> LocalDataset:
    """Find the local mirror of dataset ``name`` and return it as a :class:`LocalDataset`.

    The mirror is looked for in ``data_dir``, else in ``$SAM4EM_DATA_DIR``. Only when it is
    absent and ``download=True`` are the registry's files fetched with pooch into the data
    directory (checksums verified where known). Raises ``KeyError`` for an unknown name and
    :class:`DatasetNotFoundError` when the mirror is absent and cannot be produced.
    """
    spec = get_spec(name)
    root = resolve_data_dir(data_dir)
    if root is None:
        raise DatasetNotFoundError(
            f"no data directory for dataset {name!r}: pass data_dir= or set {DATA_DIR_ENV} to a folder "
            f"holding {spec.mirror_files()[0]!r}"
        )
    missing = _missing(spec, root)
    if not missing:
        return LocalDataset(spec, root)
    if not download:
        raise DatasetNotFoundError(
            f"dataset {name!r} not found under {root} (missing {', '.join(missing)}); put the mirror there, "
            f"set {DATA_DIR_ENV} to its folder, or pass download=True"
        )
    if not spec.remote:
        raise DatasetNotFoundError(f"dataset {name!r} has no download source; put the mirror under {root}")
    for remote in spec.remote:
        fetch(remote, root)
    missing = _missing(spec, root)
    if missing:
        raise DatasetNotFoundError(
            f"downloaded {name!r} into {root / spec.name} but the mirror files {', '.join(missing)} are "
            f"still missing: convert the download as described: {spec.notes}"
        )
    return LocalDataset(spec, root)
