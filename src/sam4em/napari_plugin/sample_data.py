"""napari sample data: a crop of the local Lucchi++ copy (``$SAM4EM_DATA_DIR`` or ``../shared/data``).

Nothing is downloaded: without a local copy the sample raises an error that says where it looked.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sam4em.io import open_volume

__all__ = ["LUCCHI_VOXEL_NM", "lucchi_pp_crop", "lucchi_pp_folder"]

#: Lucchi++ is ~5 nm isotropic FIB-SEM.
LUCCHI_VOXEL_NM = (5.0, 5.0, 5.0)
#: The crop: 32 test slices, 384 x 512 pixels, with mitochondria crossing it in z.
CROP = (slice(40, 72), slice(192, 576), slice(256, 768))


def lucchi_pp_folder() -> Path:
    """The local Lucchi++ folder, or FileNotFoundError naming where it was looked for."""
    candidates = [Path(os.environ["SAM4EM_DATA_DIR"])] if os.environ.get("SAM4EM_DATA_DIR") else []
    candidates.append(Path.cwd().parent / "shared" / "data")
    for root in candidates:
        if (root / "lucchi_pp" / "test_image.tif").is_file():
            return root / "lucchi_pp"
    raise FileNotFoundError(
        f"no local Lucchi++ copy in {', '.join(str(c) for c in candidates)}; set SAM4EM_DATA_DIR to a mirror"
    )


def lucchi_pp_crop() -> list[tuple[Any, dict[str, Any], str]]:
    """Image and mitochondria labels (0/1) of a Lucchi++ test crop, at 5 nm voxels."""
    folder = lucchi_pp_folder()
    with open_volume(folder / "test_image.tif") as image, open_volume(folder / "test_label.tif") as labels:
        raw, mito = image[CROP], (labels[CROP] > 0).astype("uint8")
    return [
        (raw, {"name": "Lucchi++ test crop", "scale": LUCCHI_VOXEL_NM}, "image"),
        (mito, {"name": "Lucchi++ mitochondria", "scale": LUCCHI_VOXEL_NM, "opacity": 0.4}, "labels"),
    ]
