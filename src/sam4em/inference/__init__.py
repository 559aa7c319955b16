"""Inference: tiling maths, slice-by-slice prediction with memory, whole-volume segmentation."""
