#!/usr/bin/env bash
# Issue 14's GPU measurements in one device call (docs/benchmarks.md, "Speed (issue 14)"):
#   1. sam4em benchmark --profile speed --device cuda: hiera-tiny per class, shared and joint, base-plus; random
#      weights; slices/s end to end, model-only rate, SAM4EM / encoder, peak memory, training steps/s,
#      data wait and how busy the GPU was. Planned to take about 5 minutes (never run yet; its fourth case,
#      hiera-tiny with joint decoders, adds no training run), leaving less for step 2.
#   2. benchmarks/ratio_bounds.py (at most 90 s): hiera-tiny's SAM4EM / encoder with parts left out.
#   3. benchmarks/compile_gain.py: what `segment --compile` buys per window on hiera-tiny, in the time
#      left before 450 s.
# Prepare here with benchmarks/gpu_wheels.sh, then call the device tool from the repository root with
#   carry [".whl"], timeout_s 480, command "bash benchmarks/gpu_speed.sh".
# With a machine's start that uses about 10 of a session's 15 device minutes: plan it as one shot.
# What comes back: $OUT/speed.tar.gz (packed as soon as the profile ends), ratio_bounds.json and .log,
# compile_gain.json and .log (5 files; the device returns 8).
# Dry run on a CPU (no wheels, the CPU's cases):
#   OUT=/tmp/gpu_dry SAM4EM_SPEED_DEVICE=cpu PATH=$PWD/.venv/bin:$PATH bash benchmarks/gpu_speed.sh
set -uo pipefail
: "${OUT:?run on the device machine, where OUT names the folder that comes back}"
device=${SAM4EM_SPEED_DEVICE:-cuda}
if [ "$device" = cuda ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
fi
export PYTHONPATH=/tmp/site:src PYTHONUNBUFFERED=1
mkdir -p "$OUT/speed"
{ nvidia-smi; python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"; } \
    > "$OUT/speed/machine.txt" 2>&1
python3 -m sam4em.cli benchmark --profile speed --device "$device" --out "$OUT/speed" 2>&1 | tee "$OUT/speed/speed.log"
status=${PIPESTATUS[0]}
tar -czf "$OUT/speed.tar.gz" -C "$OUT" speed && rm -rf "$OUT/speed"
if [ "$device" = cuda ]; then gain=(--model sam2.1-hiera-tiny --device cuda --window 512 --batch 16)
else gain=(--model test-tiny --device cpu --window 64 --repeats 2); fi
left=$((450 - SECONDS))
if [ "$left" -gt 150 ]; then  # SAM4EM over its encoder with parts left out (docs/benchmarks.md, tenth round)
    timeout 90 python3 benchmarks/ratio_bounds.py "${gain[@]}" > "$OUT/ratio_bounds.json" 2> "$OUT/ratio_bounds.log"
    echo "ratio_bounds.py exited with $? (124: stopped after 90 s)" >> "$OUT/ratio_bounds.log"
fi
left=$((450 - SECONDS))
if [ "$left" -gt 30 ]; then
    timeout "$left" python3 benchmarks/compile_gain.py "${gain[@]}" > "$OUT/compile_gain.json" 2> "$OUT/compile_gain.log"
    echo "compile_gain.py exited with $? after at most ${left} s (124: stopped there)" >> "$OUT/compile_gain.log"
else
    echo "compile_gain.py not run: ${left} s left" > "$OUT/compile_gain.log"
fi
exit "$status"
