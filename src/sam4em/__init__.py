"""sam4em: prompt-free 3D segmentation of electron microscopy with SAM2."""

__version__ = "0.1.0"
