"""Inference: tiling maths, slice-by-slice prediction with memory, in-memory and streaming segmentation.

`segment_volume` works on arrays in memory; `segment_to_file` streams any volume file to an output
file with bounded memory and resume; `segment_to_file_dask` runs the same z-blocks on a Dask cluster.
"""

from sam4em.inference.segment import segment_volume
from sam4em.inference.streaming import Interrupted, segment_to_file

__all__ = ["Interrupted", "segment_to_file", "segment_volume"]
