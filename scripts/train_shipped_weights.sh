#!/bin/sh
# The commands that produced the shipped weights in weights/brain and weights/abdom.
#
# Machine: CPU only (2 cores shared with other work, torch 2.13). The four trainings were started
# with --steps 5000 and stopped with SIGTERM when the session's time was spent (the loop finishes
# the step, checkpoints and exits); the --steps values below are the steps at which they stopped.
# Data sampling and augmentation are a pure function of (seed, step), so this script replays the
# same batches; dropout masks and thread timing are not bit-for-bit reproducible.
# The runs called train_vqvae / train_prior (then in mood.train, now mood.training) through a tiny
# driver (runs/run_train.py) with exactly these keyword arguments; `mood train` passes the same ones.
#
# Run from anywhere; DATA defaults to ../shared/data (public volumes, see its README).
set -eu
cd "$(dirname "$0")/.."
MOOD="${MOOD:-python -m mood}"
DATA="${DATA:-../shared/data}"
RUNS="${RUNS:-runs}"

BRAIN_HOLDOUT=mni152_t1_2mm_template      # 1 of the 6 brain training files, never trained on
ABDOM_HOLDOUT=totalseg_chest_ct_1p5mm     # 1 of the 3 CT files (overlaps the aorta crop's region)
# $DATA/abdom held these three CTs when the abdomen was trained; it holds five now, so the recipe
# trains on a folder of links to the three.
ABDOM_DATA="$RUNS/abdom_data"
mkdir -p "$ABDOM_DATA"
for f in totalseg_torso_ct_3mm totalseg_aorta_ct_1p5mm totalseg_chest_ct_1p5mm; do
  ln -sf "$(cd "$DATA/abdom" && pwd)/$f.nii.gz" "$ABDOM_DATA/"
done

# 1. VQ-VAEs (run at the same time; lr 3e-4 instead of the original 1e-4 because only a few hundred
#    steps fit in the budget). Codebook: k-means init, dead-code re-seeding every 25 steps,
#    commitment 0.25.
MOOD_CACHE="$RUNS/cache/brain" $MOOD train vqvae --region brain --data "$DATA/brain" \
  --out "$RUNS/brain/vq" --steps 147 --batch-size 8 --lr 3e-4 --holdout "$BRAIN_HOLDOUT" \
  --device cpu --seed 0 --ckpt-every 50 --log-every 5 --threads 2 --resume &
p1=$!
MOOD_CACHE="$RUNS/cache/abdom" $MOOD train vqvae --region abdom --data "$ABDOM_DATA" \
  --out "$RUNS/abdom/vq" --steps 167 --batch-size 8 --lr 3e-4 --holdout "$ABDOM_HOLDOUT" \
  --device cpu --seed 0 --ckpt-every 50 --log-every 5 --threads 1 --resume &
p2=$!
wait "$p1"; wait "$p2"

# 2. Priors on the frozen VQ-VAEs' codes (same slice pipeline and augmentation), run at the same time.
MOOD_CACHE="$RUNS/cache/brain" $MOOD train prior --region brain --data "$DATA/brain" \
  --vqvae "$RUNS/brain/vq" --out "$RUNS/brain/full" --steps 779 --batch-size 8 --lr 3e-4 \
  --holdout "$BRAIN_HOLDOUT" --device cpu --seed 0 --ckpt-every 25 --log-every 5 --threads 1 --resume &
p1=$!
MOOD_CACHE="$RUNS/cache/abdom" $MOOD train prior --region abdom --data "$ABDOM_DATA" \
  --vqvae "$RUNS/abdom/vq" --out "$RUNS/abdom/full" --steps 451 --batch-size 8 --lr 3e-4 \
  --holdout "$ABDOM_HOLDOUT" --device cpu --seed 0 --ckpt-every 25 --log-every 5 --threads 1 --resume &
p2=$!
wait "$p1"; wait "$p2"

# 3. Export as float16 (loaded into float32 models; measured effect in each card's notes) with the
#    training files' licences, into weights/<region>; the hand-written quality notes come from
#    $RUNS/<region>_notes.json ({"quality": ..., "notes": [...]}) when present.
python - "$RUNS" <<'PYEOF'
import json, sys
from pathlib import Path
import torch
from mood.training import export_weights
from mood.detection.weights import read_card
runs = Path(sys.argv[1])
LICENCES = {
    "mni152_2009a_t1_template.nii.gz": "MNI ICBM licence (free use with copyright notice); from the PyPI nilearn wheel",
    "itk_kmeanstest_t1.nii.gz": "Apache-2.0; Debian insighttoolkit4-examples",
    "spm152_t1_template.nii.gz": "BSD-2 (niivue demo images repository)",
    "mni152_t1_2mm_template.nii.gz": "BSD-2 (niivue demo images repository)",
    "adult_t1_head.nii.gz": "BSD-2 (niivue demo images repository)",
    "cit168_t1w_brain_template.nii.gz": "CC BY 4.0 (CIT168 template, via niivue demo images)",
    "totalseg_torso_ct_3mm.nii.gz": "Apache-2.0 (TotalSegmentator repository test files)",
    "totalseg_aorta_ct_1p5mm.nii.gz": "Apache-2.0 (TotalSegmentator repository test files)",
    "totalseg_chest_ct_1p5mm.nii.gz": "Apache-2.0 (TotalSegmentator repository test files)",
}
for region in ("brain", "abdom"):
    src = runs / region / "full"
    notes_file = runs / f"{region}_notes.json"
    notes = json.loads(notes_file.read_text()) if notes_file.is_file() else {}
    tr = read_card(src).info["training"]
    files = tr["vqvae"]["train_files"] + tr["vqvae"]["holdout_files"]
    export_weights(src, Path("weights") / region, dtype=torch.float16, info={
        "data": {"trained_on": tr["vqvae"]["train_files"],
                 "holdout_for_loss_and_calibration": tr["vqvae"]["holdout_files"],
                 "licences": {f: LICENCES[f] for f in files},
                 "source": "public volumes gathered for this project (../shared/data, see its README)"},
        **notes})
PYEOF

# 4. Calibration of the shipped (float16) weights on each region's holdout volume (folders that
#    hold only that file): lambda_s / lambda_p = 98th / 90th percentile of per-code NLL; score maps.
mkdir -p "$RUNS/holdout/brain" "$RUNS/holdout/abdom"
ln -sf "$(cd "$DATA/brain" && pwd)/$BRAIN_HOLDOUT.nii.gz" "$RUNS/holdout/brain/"
ln -sf "$(cd "$DATA/abdom" && pwd)/$ABDOM_HOLDOUT.nii.gz" "$RUNS/holdout/abdom/"
$MOOD calibrate --region brain --data "$RUNS/holdout/brain" --weights weights/brain \
  --device cpu --slices 16 --restorations 5 --seed 0
$MOOD calibrate --region abdom --data "$RUNS/holdout/abdom" --weights weights/abdom \
  --device cpu --slices 16 --restorations 5 --seed 0

# 5. (2026-11-30) The brain prior, fine-tuned from the shipped weights of step 4 (their optimiser
#    state was gone) at the original's lr 1e-4 with new batches (seed 1), one thread beside other
#    work; stopped with SIGTERM at step 550 after 39 min. The exported model is the checkpoint with
#    the lowest holdout NLL (step 475: 1.759, from 1.83). On the held-out eval_only normals its
#    mean per-code NLL fell from 1.019 to 0.882 (rorden_t1) and from 0.984 to 0.822 (icbm2009asym),
#    so it replaced the prior of step 4 (the VQ-VAE is unchanged). Export and calibration as above.
MOOD_CACHE="$RUNS/cache/brain" $MOOD train prior --region brain --data "$DATA/brain" \
  --vqvae weights/brain --init-from weights/brain --out "$RUNS/brain/ft" --steps 550 --batch-size 8 \
  --lr 1e-4 --holdout "$BRAIN_HOLDOUT" --device cpu --seed 1 --ckpt-every 25 --log-every 5 --threads 1 --resume
python - "$RUNS" <<'PYEOF'
import sys
from pathlib import Path
import torch
from mood.training import export_weights
from mood.detection.weights import read_card
runs = Path(sys.argv[1])
shipped = read_card(Path("weights/brain")).info
export_weights(runs / "brain" / "ft", Path("weights/brain"), dtype=torch.float16,
               info={k: shipped[k] for k in ("data", "quality", "notes", "storage_dtype") if k in shipped})
PYEOF
$MOOD calibrate --region brain --data "$RUNS/holdout/brain" --weights weights/brain \
  --device cpu --slices 16 --restorations 5 --seed 0

# 6. Held-out validation with the reconstruction-error baseline, written into the cards.
python scripts/validate_weights.py --region brain --weights weights/brain \
  --sources "$DATA/eval_only/rorden_t1.nii.gz" "$DATA/eval_only/icbm2009asym_t1_template.nii.gz" \
  --count 12 --work "$RUNS/val_brain" --threads 1 --card --picture-dir docs/weights
python scripts/validate_weights.py --region abdom --weights weights/abdom \
  --sources "$DATA/abdom/$ABDOM_HOLDOUT.nii.gz" --count 8 --work "$RUNS/val_abdom" --threads 1 \
  --card --picture-dir docs/weights

# 7. (2026-12-02) The cards' provenance rewritten in place: training data by file name and sha256,
#    no path of the training machine (the weights come out byte-identical).
python scripts/export_weights.py --src weights/brain --dst weights/brain --data "$DATA/brain"
python scripts/export_weights.py --src weights/abdom --dst weights/abdom --data "$DATA/abdom"

# 8. (2026-12-03; again 2026-12-06 with session 6's runs) The weights campaign's log (issues 12 and
#    21: CPU-hours, steps and slices of every run, none of which beat these weights on the held-out
#    set) added to each card as info.campaign, again in place (the weights come out byte-identical).
python scripts/export_weights.py --src weights/brain --dst weights/brain --data "$DATA/brain" \
  --info docs/weights/campaign_brain.json
python scripts/export_weights.py --src weights/abdom --dst weights/abdom --data "$DATA/abdom" \
  --info docs/weights/campaign_abdom.json
