#!/bin/sh
# Train one region's VQ-VAE, PixelSNAIL prior and localiser on one lent GPU in about 10 minutes,
# calibrate them on the holdout volume, and write the weights (card.json + safetensors shards, each <= 16 MiB)
# to $OUT/<region>/ (fp32) and $OUT/<region>-fp16/.
#
#   OUT=/path scripts/train_gpu.sh brain|abdom [DATA_DIR]
#
# DATA_DIR defaults to shared/data/<region> or ../shared/data/<region> (the public training
# volumes; see shared/data/README.md). Needs a Python with CUDA torch and requirements.txt
# installed (PYTHON=..., default python3). Checkpoints, caches and logs stay in $WORK (default
# /tmp/mood-train-<region>), outside $OUT, because optimiser checkpoints exceed 16 MiB; the loss
# logs are copied to $OUT/<region>-logs/. Budget (seconds of training, each model): $VQ_SECONDS
# (default 240), $PRIOR_SECONDS (default 210) and $LOC_SECONDS (default 180); conversion and
# calibration take the rest.
# Forward passes run under bfloat16 autocast (BF16=1, the default; BF16=0: float32). Each model's
# line "<model>: N steps of B slices ..." says how far it got and how fast.
set -eu

REGION="${1:?usage: OUT=DIR scripts/train_gpu.sh brain|abdom [DATA_DIR]}"
OUT="${OUT:?set OUT to the folder that receives the weights}"
PY="${PYTHON:-python3}"
WORK="${WORK:-/tmp/mood-train-$REGION}"
VQ_SECONDS="${VQ_SECONDS:-240}"
PRIOR_SECONDS="${PRIOR_SECONDS:-210}"
LOC_SECONDS="${LOC_SECONDS:-180}"
BATCH="${BATCH:-64}"
DEVICE="${DEVICE:-cuda}"  # DEVICE=cpu TINY=1 VQ_SECONDS=5 PRIOR_SECONDS=5: a smoke test of this script
TINY="${TINY:-0}"
BF16="${BF16:-1}"
case "$REGION" in
  # One individual adult, not a template (a template is an average: too easy a holdout), as in the
  # CPU campaign (docs/weights/campaign.md), so that both calibrate on the same kind of scan.
  brain) HOLDOUT=niivue_otsu ;;
  abdom) HOLDOUT=totalseg_chest_ct_1p5mm ;;
  *) echo "region must be brain or abdom, not $REGION" >&2; exit 2 ;;
esac
if [ -n "${2:-}" ]; then DATA="$(cd "$2" && pwd)"; fi
mkdir -p "$OUT" "$WORK/holdout"
OUT="$(cd "$OUT" && pwd)"
WORK="$(cd "$WORK" && pwd)"
cd "$(dirname "$0")/.."  # the repository root: python finds the mood package here
if [ -z "${DATA:-}" ]; then
  if [ -d "shared/data/$REGION" ]; then DATA="$PWD/shared/data/$REGION"
  else DATA="$PWD/../shared/data/$REGION"; fi
fi
[ -f "$DATA/$HOLDOUT.nii.gz" ] || { echo "no $HOLDOUT.nii.gz in training data folder $DATA" >&2; exit 2; }
ln -sf "$DATA/$HOLDOUT.nii.gz" "$WORK/holdout/"
if [ "$DEVICE" = cuda ]; then
  "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device visible to torch')"
  nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv || true
fi
export MOOD_CACHE="$WORK/cache" PYTHONUNBUFFERED=1

# 1. VQ-VAE (codebook: k-means init + dead-code re-seeding + commitment 0.25), then 2. prior on its
# frozen codes, then 3. the localiser (its export keeps the card that holds the other two); all
# resumable (re-running this script continues from $WORK).
"$PY" - "$REGION" "$DATA" "$WORK" "$HOLDOUT" "$BATCH" "$VQ_SECONDS" "$PRIOR_SECONDS" "$DEVICE" "$TINY" "$BF16" \
  "$LOC_SECONDS" <<'PYEOF'
import json, sys, time
from pathlib import Path
from mood.training import train_localiser, train_vqvae, train_prior
region, data, work, holdout, batch, vq_s, prior_s, device, tiny, bf16, loc_s = sys.argv[1:]
tiny = tiny == "1"
common = dict(batch_size=int(batch), lr=3e-4, holdout=[holdout], resume=True, device=device,
              seed=0, ckpt_every=500, log_every=25, threads=8, tiny=tiny, bf16=bf16 == "1",
              volume_shape=(64, 64, 64) if tiny else None)
w = Path(work) / "w"

def report(kind: str, seconds: float) -> None:
    state = json.loads((w / "train" / kind / "state.json").read_text())
    steps, elapsed = int(state["step"]), float(state["elapsed_s"])
    print(f"{kind}: {steps} steps of {batch} slices ({steps * int(batch)} slices seen) in {elapsed:.0f} s "
          f"of steps: {steps / max(elapsed, 1e-9):.2f} steps/s; {seconds:.0f} s with data and exports",
          flush=True)

t = time.time()
train_vqvae(region, Path(data), w, steps=100_000, time_limit=float(vq_s), **common)
report("vqvae", time.time() - t)
t = time.time()
train_prior(region, Path(data), w, vqvae=w, steps=100_000, time_limit=float(prior_s), **common)
report("prior", time.time() - t)
t = time.time()
# the CPU campaign's recipe (docs/weights/campaign.md, issue 36): lr 1e-3 after a warm-up, tissue planes
train_localiser(region, Path(data), w, steps=100_000, time_limit=float(loc_s),
                **{**common, "lr": 1e-3, "warmup": 200, "planes": "tissue"})
report("localiser", time.time() - t)
PYEOF

# 4. calibration on the holdout volume, then export fp32 and fp16 copies (shards <= 16 MiB).
"$PY" - "$REGION" "$WORK" "$OUT" "$DEVICE" "$TINY" <<'PYEOF'
import json, sys
from pathlib import Path
import torch
from mood.training.calibrate import calibrate
from mood.training import export_weights
region, work, out, device, tiny = sys.argv[1:]
card = calibrate(region, Path(work) / "holdout", Path(work) / "w", device=device,
                 n_slices=3 if tiny == "1" else 16, restorations=2 if tiny == "1" else 15, seed=0)
print(json.dumps(card.info["calibration"], indent=1))
export_weights(Path(work) / "w", Path(out) / region)
export_weights(Path(work) / "w", Path(out) / f"{region}-fp16", dtype=torch.float16)
PYEOF

mkdir -p "$OUT/$REGION-logs"
for kind in vqvae prior localiser; do cp "$WORK/w/train/$kind/log.jsonl" "$OUT/$REGION-logs/$kind.jsonl"; done
find "$OUT" -type f -size +16M -print | sed 's/^/file over 16 MiB: /' >&2
ls -la "$OUT/$REGION" "$OUT/$REGION-fp16"
