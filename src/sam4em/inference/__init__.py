"""Inference: tiling maths, slice-by-slice prediction with memory, in-memory and streaming segmentation.

`segment_volume` works on arrays in memory; `segment_to_file` streams any volume file to an output
file with bounded memory and resume; `segment_to_file_dask` runs the same z-blocks on a Dask cluster.
Both file paths take one `SegmentOptions` and run `check_request` (no model needed) first.
"""

from sam4em.inference.options import SegmentOptions
from sam4em.inference.request import check_request
from sam4em.inference.segment import segment_volume
from sam4em.inference.streaming import Interrupted, segment_to_file

__all__ = ["Interrupted", "SegmentOptions", "check_request", "segment_to_file", "segment_volume"]
