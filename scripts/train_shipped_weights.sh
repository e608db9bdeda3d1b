#!/bin/sh
# The commands that produced the shipped weights in weights/brain and weights/abdom.
#
# Machine: CPU only (2 cores shared with other work, torch 2.13). The four trainings were started
# with --steps 5000 and stopped with SIGTERM when the session's time was spent (the loop finishes
# the step, checkpoints and exits); the --steps values below are the steps at which they stopped.
# Data sampling and augmentation are a pure function of (seed, step), so this script replays the
# same batches; dropout masks and thread timing are not bit-for-bit reproducible.
# The runs called mood.train.train_vqvae / train_prior through a tiny driver (runs/run_train.py)
# with exactly these keyword arguments; `mood train` passes the same ones.
#
# Run from anywhere; DATA defaults to ../shared/data (public volumes, see its README).
set -eu
cd "$(dirname "$0")/.."
MOOD="${MOOD:-python -m mood}"
DATA="${DATA:-../shared/data}"
RUNS="${RUNS:-runs}"

BRAIN_HOLDOUT=mni152_t1_2mm_template      # 1 of the 6 brain training files, never trained on
ABDOM_HOLDOUT=totalseg_chest_ct_1p5mm     # 1 of the 3 CT files (overlaps the aorta crop's region)

# 1. VQ-VAEs (run at the same time; lr 3e-4 instead of the original 1e-4 because only a few hundred
#    steps fit in the budget). Codebook: k-means init, dead-code re-seeding every 25 steps,
#    commitment 0.25.
MOOD_CACHE="$RUNS/cache/brain" $MOOD train vqvae --region brain --data "$DATA/brain" \
  --out "$RUNS/brain/vq" --steps @BRAIN_VQ@ --batch-size 8 --lr 3e-4 --holdout "$BRAIN_HOLDOUT" \
  --device cpu --seed 0 --ckpt-every 50 --log-every 5 --threads 2 --resume &
MOOD_CACHE="$RUNS/cache/abdom" $MOOD train vqvae --region abdom --data "$DATA/abdom" \
  --out "$RUNS/abdom/vq" --steps @ABDOM_VQ@ --batch-size 8 --lr 3e-4 --holdout "$ABDOM_HOLDOUT" \
  --device cpu --seed 0 --ckpt-every 50 --log-every 5 --threads 1 --resume &
wait

# 2. Priors on the frozen VQ-VAEs' codes (same slice pipeline and augmentation), run at the same time.
MOOD_CACHE="$RUNS/cache/brain" $MOOD train prior --region brain --data "$DATA/brain" \
  --vqvae "$RUNS/brain/vq" --out "$RUNS/brain/full" --steps @BRAIN_PRIOR@ --batch-size 8 --lr 3e-4 \
  --holdout "$BRAIN_HOLDOUT" --device cpu --seed 0 --ckpt-every 25 --log-every 5 --threads 1 --resume &
MOOD_CACHE="$RUNS/cache/abdom" $MOOD train prior --region abdom --data "$DATA/abdom" \
  --vqvae "$RUNS/abdom/vq" --out "$RUNS/abdom/full" --steps @ABDOM_PRIOR@ --batch-size 8 --lr 3e-4 \
  --holdout "$ABDOM_HOLDOUT" --device cpu --seed 0 --ckpt-every 25 --log-every 5 --threads 1 --resume &
wait

# 3. Calibration on the holdout volume of each region (folders holding only that file).
mkdir -p "$RUNS/holdout/brain" "$RUNS/holdout/abdom"
ln -sf "$(cd "$DATA/brain" && pwd)/$BRAIN_HOLDOUT.nii.gz" "$RUNS/holdout/brain/"
ln -sf "$(cd "$DATA/abdom" && pwd)/$ABDOM_HOLDOUT.nii.gz" "$RUNS/holdout/abdom/"
$MOOD calibrate --region brain --data "$RUNS/holdout/brain" --weights "$RUNS/brain/full" \
  --device cpu --slices @BRAIN_CAL_SLICES@ --restorations @BRAIN_CAL_REST@ --seed 0
$MOOD calibrate --region abdom --data "$RUNS/holdout/abdom" --weights "$RUNS/abdom/full" \
  --device cpu --slices @ABDOM_CAL_SLICES@ --restorations @ABDOM_CAL_REST@ --seed 0

# 4. Export with provenance (licences) into weights/<region>, stored as @DTYPE@.
python - "$RUNS" <<'PYEOF'
import sys
from pathlib import Path
import torch
from mood.train import export_weights
runs = Path(sys.argv[1])
LICENCES = {
    "mni152_2009a_t1_template.nii.gz": "MNI ICBM licence (free use with copyright notice); PyPI nilearn wheel",
    "itk_kmeanstest_t1.nii.gz": "Apache-2.0; Debian insighttoolkit4-examples",
    "spm152_t1_template.nii.gz": "BSD-2 (niivue demo images repository)",
    "mni152_t1_2mm_template.nii.gz": "BSD-2 (niivue demo images repository)",
    "adult_t1_head.nii.gz": "BSD-2 (niivue demo images repository)",
    "cit168_t1w_brain_template.nii.gz": "CC BY 4.0 (CIT168, via niivue demo images)",
    "totalseg_torso_ct_3mm.nii.gz": "Apache-2.0 (TotalSegmentator test files)",
    "totalseg_aorta_ct_1p5mm.nii.gz": "Apache-2.0 (TotalSegmentator test files)",
    "totalseg_chest_ct_1p5mm.nii.gz": "Apache-2.0 (TotalSegmentator test files)",
}
NOTES = @NOTES@
for region in ("brain", "abdom"):
    src = runs / region / "full"
    from mood.weights import read_card
    tr = read_card(src).info["training"]
    files = tr["vqvae"]["train_files"] + tr["vqvae"]["holdout_files"]
    export_weights(src, Path("weights") / region, dtype=@TORCH_DTYPE@, info={
        "data_licences": {f: LICENCES[f] for f in files},
        "notes": NOTES[region],
    })
PYEOF
