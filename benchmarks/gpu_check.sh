#!/bin/sh
# One prepared GPU check for a lent accelerator (see the device tool's README; ask its `status`
# first). Run from the repository root through the device tool, e.g. with timeout_s 420:
#   run: sh benchmarks/gpu_check.sh
# It installs what the machine lacks (nibabel, safetensors, tqdm, scipy; carried as wheels in
# .whl/ when pip cannot reach an index), then runs benchmarks/gpu_check.py, which writes
# $OUT/gpu_check.md and $OUT/gpu_check.json. Commit the table into benchmarks/RESULTS.md.
# Before spending device time, run the same code on the CPU: python benchmarks/gpu_check.py --dry-run
# A call from a checkout that tracks the shipped weight shards is refused (over 64 MiB): see
# docs/gpu.md, whose one call (scripts/device_run.sh) also runs this check when time is left.
set -eu
OUT="${OUT:-$PWD/gpu-out}"
mkdir -p "$OUT"
export OUT PYTHONUNBUFFERED=1
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print('torch', torch.__version__)"
timeout 400 python3 benchmarks/gpu_check.py 2>&1 | tee "$OUT/gpu_check.log"
