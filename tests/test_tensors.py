"""`sam4em.data.tensors.as_tensor`: numpy arrays torch would refuse or warn about become tensors."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from sam4em.data.tensors import as_tensor


def test_arrays_torch_takes_as_they_are_share_memory():
    array = np.arange(12, dtype=np.uint8).reshape(3, 4)
    tensor = as_tensor(array)
    tensor[0, 0] = 99
    assert array[0, 0] == 99 and tensor.dtype == torch.uint8


@pytest.mark.parametrize(
    "make",
    [
        lambda a: a.astype(">u2"),  # big-endian, as MRC and some TIFF store it
        lambda a: np.broadcast_to(a, a.shape),  # read-only
        lambda a: a[:, ::-1],  # negative strides
        lambda a: a.astype(np.longdouble),
    ],
    ids=["big-endian", "read-only", "negative-strides", "longdouble"],
)
def test_other_arrays_are_copied_with_their_values_and_no_warning(make):
    original = np.arange(12, dtype=np.uint16).reshape(3, 4) * 1000
    array = make(original)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tensor = as_tensor(array)
    np.testing.assert_array_equal(tensor.numpy(), np.asarray(array, dtype=np.float64))


@pytest.mark.parametrize(("dtype", "widened"), [("uint16", torch.int32), ("uint32", torch.int64), ("uint64", torch.float64)])
def test_wide_unsigned_ints_become_signed_ones_torch_can_compute_with(dtype, widened):
    array = np.array([0, 7, np.iinfo(np.uint16).max], dtype=dtype)
    tensor = as_tensor(array)
    assert tensor.dtype == widened and tensor.tolist() == array.tolist()


def test_dtypes_without_a_torch_counterpart_are_refused_by_name():
    with pytest.raises(TypeError, match="dtype <U1"):
        as_tensor(np.array(["a"]))
