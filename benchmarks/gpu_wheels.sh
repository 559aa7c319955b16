#!/usr/bin/env bash
# Run HERE (where PyPI answers), from the repository root, before benchmarks/gpu_speed.sh goes to the GPU
# machine: downloads into .whl/ (git-ignored through info/exclude) the packages sam4em needs that the
# GPU image lacks or has too old (filelock >= 3.30; regex for the carried transformers), as wheels for
# its Python 3.12 (the device README's recipe). Versions are this venv's.
# Not ome-zarr: it needs pydantic, which the image lacks, and only OME-Zarr outputs import it.
# Not imagecodecs (26 MB): tifffile falls back without it for uncompressed TIFF, and the speed path reads Zarr.
set -euo pipefail
exclude=$(git rev-parse --git-path info/exclude)
grep -qxF '/.whl/' "$exclude" || echo '/.whl/' >> "$exclude"
mkdir -p .whl
platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${platforms[@]}" -d .whl \
    transformers==5.24.0 regex==2026.11.19 filelock==4.3.1 monai==1.6.1 zarr==3.1.6 numcodecs==0.16.6 \
    donfig==0.8.1.post1 google-crc32c==1.9.0 dask==2026.8.0 distributed==2026.8.0 partd==1.4.2 locket==1.0.0 \
    tblib==3.2.2 zict==3.0.0 tornado==6.6.1 mrcfile==1.5.4 pooch==1.9.0 platformdirs==4.14.8
du -sh .whl
