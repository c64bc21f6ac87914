#!/usr/bin/env bash
# The base pre-training step on one H100/H200-class GPU in bfloat16: the largest batch (of the
# list, largest first) that fits, masked-only heads, attention dropout 0 so that cuDNN flash
# attention runs (the fused kernels have no dropout), MFU against 989e12 bf16 FLOP/s (H100/H200
# SXM dense). Prints compile time, s/step, examples/s, per-device FLOPs, XLA memory, MFU; then the
# same batch with the reference attention dropout (explicit softmax path) and with full heads.
#   bash benchmarks/gpu_base_step.sh            # from the repository root
set -euo pipefail
cd "$(dirname "$0")/.."
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}"
python - <<'PY'
import jax
assert jax.default_backend() == 'gpu', f'no GPU visible to JAX: {jax.devices()}'
print('devices:', jax.devices())
PY
LOG="$(mktemp)"
python -m benchmarks.base_step --dtype=bfloat16 --heads=masked --remat=off --steps=10 \
  --attention_dropout=0.0 --batch_sizes=1024,768,512,384,256,128,64 --largest_only \
  --peak_flops=989e12 | tee "$LOG"
BATCH="$(grep -m1 -o '^batch=[0-9]*' "$LOG" | cut -d= -f2)"
python -m benchmarks.base_step --dtype=bfloat16 --heads=masked,all --remat=off,full --steps=10 \
  --attention_dropout=0.1 --batch_sizes="$BATCH" --peak_flops=989e12
