#!/usr/bin/env bash
# The accelerator run of issue 14 in one command (at most 8 minutes on an H200): sweeps against a
# plain jit(vmap(scan)) and the card's FMA peak, ResNet-56 surfaces in float32 / TF32 / bfloat16
# and the 51 x 51 plane, a ResNet-56 training epoch in float32 and bfloat16, and the fractal at
# the paper's scale. Sections, sizes and time estimates: benchmarks/device.py.
#
#   bash benchmarks/device.sh            # on the lent GPU; results in $OUT (else results/device)
#   bash benchmarks/device.sh --tiny     # tiny sizes: checks the whole script on CPU
#   bash benchmarks/device.sh --sections surface --budget 540   # one section, more time
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${PYTHON:-}" ]; then
    PY=$PYTHON
elif [ -z "${OUT:-}" ] && [ -x .venv/bin/python ]; then
    PY=.venv/bin/python  # here; the device machine's python3 has JAX with CUDA
else
    PY=python3
fi
OUTDIR=${OUT:-results/device}
args=("$@")
for ((i = 0; i < ${#args[@]} - 1; i++)); do  # an --out DIR given here wins
    [ "${args[i]}" = --out ] && OUTDIR=${args[i + 1]}
done
mkdir -p "$OUTDIR"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 MPLBACKEND=agg
# Compilations are kept for a second run on the same (warm) machine.
export JAX_COMPILATION_CACHE_DIR="${JAX_COMPILATION_CACHE_DIR:-/tmp/sandbox-jax-cache}"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total \
    --format=csv,noheader || true
"$PY" -m benchmarks.device --out "$OUTDIR" "$@" 2>&1 | tee "$OUTDIR/device.log"
