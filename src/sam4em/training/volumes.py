"""The samples of a training run: each config volume split into a training and a validation source,
and the dataset of one stage over either."""

from __future__ import annotations

from sam4em.data.augment import AugmentConfig
from sam4em.data.class_mapping import ClassMapping, ClassMappingError
from sam4em.data.samples import ClipDataset, SliceCropDataset, VolumeSource, resolve_labelled_slices
from sam4em.data.splits import split_z
from sam4em.io import Volume, VolumeError, open_volume, parse_path_key
from sam4em.training.config import ConfigError, StageConfig, TrainConfig, VolumeConfig
from sam4em.training.preflight import stage_depths

__all__ = ["stage_dataset", "volume_sources"]


def volume_sources(config: TrainConfig, mapping: ClassMapping) -> tuple[list[VolumeSource], list[VolumeSource]]:
    """Train and validation sources: each volume's validation part is a contiguous z-block."""
    train: list[VolumeSource] = []
    val: list[VolumeSource] = []
    # No training sample within one clip of a validation sample: a gap of the longest sample depth.
    gap = max(stage_depths(config).values())
    for index, volume in enumerate(config.volumes):
        train_source, val_source = _split_volume(index, volume, mapping, gap)
        train.append(train_source)
        if val_source is not None:
            val.append(val_source)
    return train, val


def _opened(index: int, field: str, path: str, key: str | None) -> Volume:
    """`open_volume`, its refusal naming the config entry (``volumes[0].image: ...``)."""
    try:
        return open_volume(path, key=key)
    except VolumeError as error:
        raise ConfigError(f"volumes[{index}].{field}: {error}") from None


def _split_volume(
    index: int, volume: VolumeConfig, mapping: ClassMapping, gap: int
) -> tuple[VolumeSource, VolumeSource | None]:
    """The training and validation source of `config.volumes[index]`; no validation source when sparse
    annotation left no annotated slice in the validation part."""
    image_path, image_key = parse_path_key(volume.image)
    labels_path, labels_key = parse_path_key(volume.labels)
    image_key = volume.image_key or image_key
    labels_key = volume.labels_key or labels_key
    with _opened(index, "image", image_path, image_key) as image, _opened(index, "labels", labels_path, labels_key) as labels:
        if tuple(image.shape) != tuple(labels.shape):
            raise ConfigError(
                f"volumes[{index}]: image {image_path} has shape {tuple(image.shape)} but labels {labels_path} "
                f"have {tuple(labels.shape)}"
            )
        try:
            mapping.validate(labels, allow_empty=True)  # a volume without foreground still teaches background
        except ClassMappingError as error:
            raise ConfigError(f"volumes[{index}]: labels {labels_path}: {error}; fix `classes`") from None
        slices = int(image.shape[0])
    start, stop = volume.z_range or (0, slices)
    if not 0 <= start < stop <= slices:
        raise ConfigError(f"volumes[{index}].z_range: {[start, stop]} is outside the {slices} slices of {image_path}")
    try:
        train_z, val_z = split_z(stop - start, volume.val_fraction, volume.val_position, gap=gap)
    except ValueError as error:
        raise ConfigError(f"volumes[{index}] ({image_path}): {error} (the gap keeps training samples a sample's "
                          f"depth, {gap} slices, from validation; a shorter stage2.clip_length shortens it)") from None
    train_range, val_range = (start + train_z[0], start + train_z[1]), (start + val_z[0], start + val_z[1])
    try:
        labelled = resolve_labelled_slices(volume.labelled_slices, train_range, (start, stop))
    except ValueError as error:
        raise ConfigError(f"volumes[{index}].{error}") from None
    if labelled is not None and not any(train_range[0] <= z < train_range[1] for z in labelled):
        raise ConfigError(
            f"volumes[{index}].labelled_slices: none of {list(labelled)} is in the training slices "
            f"{train_range[0]}..{train_range[1] - 1}; annotate one there or lower val_fraction"
        )

    def source(z_range: tuple[int, int]) -> VolumeSource:
        return VolumeSource(
            image_path=image_path, label_path=labels_path, mapping=mapping, image_key=image_key,
            label_key=labels_key, z_range=z_range, name=f"volumes[{index}]",  # its place in the config, for messages
            labelled_slices=labelled, allow_missing_chunks=volume.allow_missing_chunks,
        )

    if labelled is None or any(val_range[0] <= z < val_range[1] for z in labelled):
        return source(train_range), source(val_range)
    return source(train_range), None  # sparse annotation without an annotated validation slice


def stage_dataset(
    sources: list[VolumeSource], *, clip: bool, stage: StageConfig, size: int, samples: int, seed: int,
    config: TrainConfig, train: bool,
) -> SliceCropDataset | ClipDataset:
    """`samples` crops of `size` (clips of `stage.clip_length` slices when `clip`) from `sources`;
    augmented only for training (`train`) when the config asks for it."""
    augment = AugmentConfig() if (train and config.augment) else None
    if clip:
        return ClipDataset(
            sources, clip_length=stage.clip_length, crop_size=size, samples_per_epoch=samples,
            p_fg=config.foreground_fraction, augment=augment, seed=seed,
        )
    return SliceCropDataset(
        sources, crop_size=size, samples_per_epoch=samples, p_fg=config.foreground_fraction, augment=augment, seed=seed
    )
