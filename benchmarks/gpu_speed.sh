#!/usr/bin/env bash
# Issue 14's GPU measurements in one device call (docs/benchmarks.md, "Speed (issue 14)"):
#   sam4em benchmark --profile speed --device cuda   (hiera-tiny per class and shared, base-plus; random
#   weights; slices/s end to end, model-only rate, SAM4EM / encoder, peak memory, training steps/s, data
#   wait and how busy the GPU was), planned to take under 5 minutes; then, in at most 170 s more,
#   benchmarks/compile_gain.py: what `segment --compile` buys per window (hiera-tiny, 512², batch 16).
# Prepare here with benchmarks/gpu_wheels.sh, then call the device tool from the repository root with
#   carry [".whl"], timeout_s 540, command "bash benchmarks/gpu_speed.sh".
# Everything comes back as $OUT/gpu_speed.tar.gz (the device returns at most 8 files).
# Dry run on a CPU (no wheels installed, the CPU's cases): OUT=/tmp/gpu_dry SAM4EM_SPEED_DEVICE=cpu bash benchmarks/gpu_speed.sh
set -uo pipefail
: "${OUT:?run on the device machine, where OUT names the folder that comes back}"
device=${SAM4EM_SPEED_DEVICE:-cuda}
if [ "$device" = cuda ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
fi
# imagecodecs (26 MB) does not travel: only PNG folders read it, and this benchmark reads Zarr and TIFF.
mkdir -p /tmp/site/imagecodecs
echo 'def __getattr__(name): raise ImportError(f"imagecodecs.{name}: not carried to this machine")' > /tmp/site/imagecodecs/__init__.py
export PYTHONPATH=/tmp/site:src PYTHONUNBUFFERED=1
mkdir -p "$OUT/speed"
{ nvidia-smi; python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"; } \
    > "$OUT/speed/machine.txt" 2>&1
python3 -m sam4em.cli benchmark --profile speed --device "$device" --out "$OUT/speed" 2>&1 | tee "$OUT/speed/speed.log"
status=${PIPESTATUS[0]}
if [ "$device" = cuda ]; then gain=(--model sam2.1-hiera-tiny --device cuda --window 512 --batch 16)
else gain=(--model test-tiny --device cpu --window 64 --repeats 2); fi
timeout 170 python3 benchmarks/compile_gain.py "${gain[@]}" > "$OUT/speed/compile_gain.json" 2> "$OUT/speed/compile_gain.log"
echo "compile_gain exit $? (124: out of time)" >> "$OUT/speed/compile_gain.log"
tar -czf "$OUT/gpu_speed.tar.gz" -C "$OUT" speed && rm -rf "$OUT/speed"
exit "$status"
