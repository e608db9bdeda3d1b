#!/usr/bin/env bash
# One lent GPU, one call (docs/gpu.md): train the brain VQ-VAE, its prior and the localiser for fixed
# budgets, calibrate on the holdout (niivue_otsu), validate on held-out volumes (issue 12: 12 toy cases
# made from eval_only's rorden_t1 and icbm2009asym; the localiser, LSR and the reconstruction baseline) next to the
# shipped card's numbers, and run benchmarks/gpu_check.py when time is left. Everything it reads
# travels in the payload of scripts/device_payload.sh (.device/: volumes and the nibabel wheel).
#
#   device tool:  command "bash scripts/device_run.sh", carry [".device"], timeout_s 600
#   here:         DEVICE=cpu TINY=1 OUT=/tmp/o bash scripts/device_run.sh   (tiny models and volumes;
#                 scripts/device_payload.sh --rehearse runs it from the exact payload)
#   bash scripts/device_run.sh --needs   lists the files it reads (the payload check uses it)
#
# $OUT receives at most 8 files (the device tool returns no more): brain/ (fp16 card.json and
# safetensors shards, each <= 16 MiB), run.log (this whole output), validation.json,
# brain_heldout_lsr.png, logs.tar.gz (loss logs, the baseline's picture, gpu_check's table).
# Budgets in seconds: VQ_SECONDS (120), PRIOR_SECONDS (100) and LOC_SECONDS (150) of training steps (volumes,
# checkpoints, calibration and export take about a minute more), then DEADLINE (550, counted from
# the start) cuts the validation, and gpu_check starts only with GPU_CHECK_SECONDS (150) left before
# it; the weights are in $OUT as soon as they are exported. WORK (default /tmp/mood-device) holds
# checkpoints and caches.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
START=$(date +%s)
PAYLOAD=.device
NIBABEL="$(sed -n 's/^nibabel==//p' requirements.txt)"
WHEEL="$PAYLOAD/whl/nibabel-$NIBABEL-py3-none-any.whl"
HOLDOUT=niivue_otsu
SOURCES="$PAYLOAD/data/eval_only/rorden_t1.nii.gz $PAYLOAD/data/eval_only/icbm2009asym_t1_template.nii.gz"
needs() {
  printf '%s\n' requirements.txt scripts/train_gpu.sh scripts/validate_weights.py scripts/compare_heldout.py \
    benchmarks/gpu_check.py benchmarks/bench_volume.py mood/__init__.py mood/training/batches.py \
    weights/brain/card.json "$WHEEL" "$PAYLOAD/data/brain/$HOLDOUT.nii.gz" $SOURCES
}
if [ "${1:-}" = --needs ]; then needs; exit 0; fi

OUT="${OUT:?set OUT to the folder that comes back (the device tool sets it)}"
PY="${PYTHON:-python3}"
DEVICE="${DEVICE:-cuda}"
TINY="${TINY:-0}"
WORK="${WORK:-/tmp/mood-device}"
DEADLINE="${DEADLINE:-550}"
GPU_CHECK_SECONDS="${GPU_CHECK_SECONDS:-150}"
if [ "$TINY" = 1 ]; then  # the held-out set: as the shipped card's, or tiny
  export VQ_SECONDS="${VQ_SECONDS:-6}" PRIOR_SECONDS="${PRIOR_SECONDS:-6}" LOC_SECONDS="${LOC_SECONDS:-6}"
  COUNT=4 RESTORATIONS=2 SIZE="64 64 64"
else
  export VQ_SECONDS="${VQ_SECONDS:-120}" PRIOR_SECONDS="${PRIOR_SECONDS:-100}" LOC_SECONDS="${LOC_SECONDS:-150}"
  COUNT=12 RESTORATIONS=15 SIZE=""
fi
mkdir -p "$OUT" "$WORK"
OUT="$(cd "$OUT" && pwd)"
WORK="$(cd "$WORK" && pwd)"
exec > >(tee -a "$OUT/run.log") 2>&1
left() { echo $((DEADLINE - ($(date +%s) - START))); }
say() { echo "[device_run $(($(date +%s) - START)) s] $*"; }

# The files that come back: the newest fp16 weights, the report, one picture, the rest packed.
pack() {
  set +e
  if [ -f "$WORK/export/brain-fp16/card.json" ]; then
    rm -rf "$OUT/brain" && cp -r "$WORK/export/brain-fp16" "$OUT/brain"
  fi
  [ -f "$WORK/validation/brain_validation.json" ] && cp "$WORK/validation/brain_validation.json" "$OUT/validation.json"
  [ -f "$WORK/pictures/brain_heldout_lsr.png" ] && cp "$WORK/pictures/brain_heldout_lsr.png" "$OUT/"
  mkdir -p "$WORK/logs"
  for kind in vqvae prior localiser; do
    [ -f "$WORK/train/w/train/$kind/log.jsonl" ] && cp "$WORK/train/w/train/$kind/log.jsonl" "$WORK/logs/$kind.jsonl"
  done
  [ -f "$WORK/pictures/brain_heldout_reconstruction.png" ] && cp "$WORK/pictures/brain_heldout_reconstruction.png" "$WORK/logs/"
  cp "$WORK"/gpu/gpu_check.* "$WORK/logs/" 2>/dev/null
  tar -czf "$OUT/logs.tar.gz" -C "$WORK" logs
  set -e
}

# What the device tool returns: at most 8 files, 16 MiB each, 64 MiB together, 2 folders down.
check_out() {
  local n total big deep
  n=$(find "$OUT" -type f | wc -l)
  total=$(find "$OUT" -type f -printf '%s\n' | awk '{s += $1} END {print s + 0}')
  big=$(find "$OUT" -type f -size +16M | head -1)
  deep=$(find "$OUT" -mindepth 3 -type f | head -1)
  find "$OUT" -type f -printf '%P %s\n' | sort
  if [ "$n" -gt 8 ] || [ -n "$big" ] || [ "$total" -gt $((64 << 20)) ] || [ -n "$deep" ]; then
    echo "device_run: \$OUT breaks the device tool's limits: $n files (at most 8), $total bytes (at most 64 MiB)${big:+, over 16 MiB: $big}${deep:+, too deep: $deep}" >&2
    return 1
  fi
}

say "device $DEVICE, tiny $TINY, budgets: VQ-VAE $VQ_SECONDS s, prior $PRIOR_SECONDS s, localiser $LOC_SECONDS s, deadline $DEADLINE s"
for f in $(needs); do
  [ -e "$f" ] || { echo "device_run: $f is missing: build the payload with scripts/device_payload.sh" >&2; exit 2; }
done
if [ "$DEVICE" = cuda ]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'device_run: no CUDA device visible to torch')"
fi
# nibabel travels as a wheel (the device image lacks it); the package is this tree's mood/.
"$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$WORK/site" "$WHEEL"
export PYTHONPATH="$ROOT:$WORK/site" PYTHONUNBUFFERED=1 PYTHON="$PY" DEVICE TINY WORK
"$PY" -c "import mood, nibabel, torch; print('mood from', mood.__file__, '| nibabel', nibabel.__version__, '| torch', torch.__version__)"
trap pack EXIT
status=0  # what the command returns: 1 when a step after training failed

# The held-out toy set needs only the CPU: made while the GPU trains (validate_weights reuses it).
"$PY" - "$WORK/validation" "$COUNT" "$SIZE" $SOURCES > "$WORK/toy.log" 2>&1 <<'PYEOF' &
import sys
from pathlib import Path
sys.path.insert(0, "scripts")
from validate_weights import toy_set
work, count, size, *sources = sys.argv[1:]
toy_set("brain", [Path(s) for s in sources], Path(work), int(count), 0,
        tuple(int(a) for a in size.split()) if size else None)
PYEOF
TOY_PID=$!

say "training (scripts/train_gpu.sh)"
export_dir="$WORK/export" train_dir="$WORK/train"
WORK="$train_dir" OUT="$export_dir" bash scripts/train_gpu.sh brain "$PAYLOAD/data/brain"
pack
say "trained, calibrated and exported; $(left) s left before the deadline"

wait "$TOY_PID" || { cat "$WORK/toy.log"; echo "device_run: making the held-out toy set failed" >&2; exit 1; }
say "validating on held-out volumes (the localiser, LSR and the baseline)"
timeout "$(($(left) > 10 ? $(left) : 10))" "$PY" scripts/validate_weights.py --region brain \
  --weights "$WORK/export/brain-fp16" --sources $SOURCES --count "$COUNT" --restorations "$RESTORATIONS" \
  --methods localiser lsr reconstruction \
  ${SIZE:+--size $SIZE} --work "$WORK/validation" \
  --card --picture-dir "$WORK/pictures" || { status=$?; say "validation did not finish (status $status)"; }
pack
verdict=0
"$PY" scripts/compare_heldout.py "$WORK/export/brain-fp16" weights/brain || verdict=$?
[ "$verdict" -ne 1 ] || status=1  # 0 better, 2 not comparable, 3 not better; 1 is a failure

if [ "$DEVICE" = cuda ] && [ "$(left)" -gt "$GPU_CHECK_SECONDS" ]; then
  say "gpu_check with the new weights ($(left) s left)"
  OUT="$WORK/gpu" timeout "$(left)" "$PY" benchmarks/gpu_check.py --weights "$WORK/export" \
    || say "gpu_check did not finish (status $?)"
else
  say "gpu_check skipped ($(left) s left, needs $GPU_CHECK_SECONDS s on a GPU)"
fi
pack
check_out || status=1
say "done (status $status)"
exit "$status"
