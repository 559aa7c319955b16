"""ClassMapping: parsing, binary targets, ignore codes and validation against real labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sam4em.data.class_mapping import ClassMapping, ClassMappingError

VNC_MAPPING = "mito=191,synapse=223,glia=159,membrane=0|32|64|96|128"


def test_parse_single_and_multi_code_classes() -> None:
    mapping = ClassMapping.parse(VNC_MAPPING)
    assert mapping.names == ("mito", "synapse", "glia", "membrane")
    assert mapping.num_classes == 4
    assert mapping.codes("membrane") == (0, 32, 64, 96, 128)
    assert ClassMapping.parse(" mito = 255 ").codes("mito") == (255,)
    assert ClassMapping.parse("membrane=0").codes("membrane") == (0,)


def test_apply_gives_channel_first_binary_targets() -> None:
    mapping = ClassMapping.parse("mito=191,membrane=0|32,ignore=7")
    labels = np.array([[191, 0, 32], [7, 255, 191]], dtype=np.uint8)
    targets = mapping.apply(labels)
    assert targets.shape == (2, 2, 3) and targets.dtype == np.float32
    np.testing.assert_array_equal(targets[0], [[1, 0, 0], [0, 0, 1]])
    np.testing.assert_array_equal(targets[1], [[0, 1, 1], [0, 0, 0]])
    np.testing.assert_array_equal(mapping.ignore_mask(labels), [[False, False, False], [True, False, False]])
    volume = np.stack([labels, labels])
    assert mapping.apply(volume, dtype=np.uint8).shape == (2, 2, 2, 3)
    assert not ClassMapping.parse("mito=1").ignore_mask(volume).any()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("mito", "name=code"),
        ("mito=", "name=code"),
        ("=5", "name=code"),
        ("mito=abc", "not a non-negative integer"),
        ("mito=-1", "not a non-negative integer"),
        ("mito=1|", "not a non-negative integer"),
        ("mito=1,mito=2", "given twice"),
        ("mito=1,glia=1", "belongs to both"),
        ("mito=1,ignore=1", "both ignored"),
        ("ignore=3", "at least one class"),
        ("1mito=3", "identifier"),
    ],
)
def test_bad_strings_raise_clear_errors(text: str, message: str) -> None:
    with pytest.raises(ClassMappingError, match=message):
        ClassMapping.parse(text)


def test_non_integer_labels_are_rejected() -> None:
    with pytest.raises(TypeError, match="integer"):
        ClassMapping.parse("mito=1").apply(np.zeros((2, 2), dtype=np.float32))


def test_validate_names_unknown_and_present_codes() -> None:
    labels = np.array([[0, 255], [255, 0]], dtype=np.uint8)
    ClassMapping.parse("mito=255").validate(labels)
    with pytest.raises(ClassMappingError, match=r"191 \(mito\).*codes present: \[0, 255\]"):
        ClassMapping.parse("mito=191").validate(labels)
    with pytest.raises(ClassMappingError, match=r"9 \(ignore\)"):
        ClassMapping.parse("mito=255,ignore=9").validate(labels)


def test_validate_samples_slices_of_large_volumes() -> None:
    class CountingVolume:
        """Records which slices were read, to check that validate reads only a sample."""

        def __init__(self, data: np.ndarray) -> None:
            self.data, self.shape, self.read = data, data.shape, []

        def __getitem__(self, index: int | slice) -> np.ndarray:
            self.read.append(index)
            return self.data[index]

    data = np.zeros((100, 4, 4), dtype=np.uint8)
    data[:, 0, 0] = 255
    volume = CountingVolume(data)
    ClassMapping.parse("mito=255").validate(volume, max_slices=8)
    assert len(volume.read) == 8

    # A code that is rare along z (here one slice between two sampled ones) is still found: only then is
    # the volume read in slabs, in order, until every code has been seen.
    data[41, 1, 1] = 128
    volume = CountingVolume(data)
    ClassMapping.parse("mito=255,synapse=128").validate(volume, max_slices=8)
    assert 41 not in volume.read[:8]
    assert volume.read[8:] == [slice(start, start + 8) for start in range(0, 48, 8)]  # stops at the slab of 41
    with pytest.raises(ClassMappingError, match=r"7 \(glia\) of mapping .* do not occur in the labels"):
        ClassMapping.parse("mito=255,glia=7").validate(CountingVolume(data), max_slices=8)


@pytest.mark.data
def test_vnc_codes_all_present_in_real_labels(data_dir: Path) -> None:
    from sam4em.io import open_volume

    labels = open_volume(data_dir / "vnc" / "stack1_z00-09.h5", key="labels")
    mapping = ClassMapping.parse(VNC_MAPPING)
    mapping.validate(labels, max_slices=3)
    targets = mapping.apply(np.asarray(labels[0]))
    assert all(targets[c].any() for c in range(mapping.num_classes))
    # Synapses are the rare class the foreground sampler exists for.
    assert targets[1].mean() < 0.01 < targets[0].mean()
    # 250 is no VNC code: the error must list the codes that do occur.
    with pytest.raises(
        ClassMappingError, match=r"250 \(mito\).*present: \[0, 32, 64, 96, 128, 159, 191, 223, 255\]"
    ):
        ClassMapping.parse("mito=250,synapse=223").validate(labels, max_slices=2)


_names = st.from_regex(r"[a-z][a-z0-9_]{0,7}", fullmatch=True).filter(lambda name: name != "ignore")


@st.composite
def _mappings(draw: st.DrawFn) -> ClassMapping:
    names = draw(st.lists(_names, min_size=1, max_size=4, unique=True))
    codes = draw(st.lists(st.integers(0, 1000), min_size=len(names), max_size=len(names) + 8, unique=True))
    # The first len(names) codes give every class one code; the rest go to a class or to ignore.
    owners = list(range(len(names))) + draw(
        st.lists(
            st.integers(-1, len(names) - 1),
            min_size=len(codes) - len(names),
            max_size=len(codes) - len(names),
        )
    )
    classes = {
        name: [c for c, o in zip(codes, owners, strict=True) if o == i] for i, name in enumerate(names)
    }
    ignore = [c for c, o in zip(codes, owners, strict=True) if o == -1]
    return ClassMapping.from_codes(classes, ignore=ignore)


@settings(max_examples=60, deadline=None)
@given(mapping=_mappings(), seed=st.integers(0, 2**16))
def test_parse_apply_round_trip(mapping: ClassMapping, seed: int) -> None:
    assert ClassMapping.parse(str(mapping)) == mapping
    rng = np.random.default_rng(seed)
    labels = rng.choice(np.array([*mapping.all_codes, 300]), size=(3, 5, 7)).astype(np.uint16)
    targets = mapping.apply(labels)
    assert targets.shape == (mapping.num_classes, 3, 5, 7)
    assert set(np.unique(targets)) <= {0.0, 1.0}
    # Every voxel is in at most one class, and never both a class and ignored.
    assert (targets.sum(axis=0) + mapping.ignore_mask(labels) <= 1).all()
    for channel, name in enumerate(mapping.names):
        np.testing.assert_array_equal(targets[channel] == 1, np.isin(labels, mapping.codes(name)))


def test_single_codes_for_evaluation_refuse_merged_classes():
    assert ClassMapping.parse("mito=191,synapse=223").single_codes() == {"mito": 191, "synapse": 223}
    with pytest.raises(ClassMappingError, match="membrane have several codes"):
        ClassMapping.parse("membrane=0|32|64,mito=191").single_codes()
