#!/usr/bin/env bash
# End-to-end smoke test of the mood-vqvae container image.
#
#   scripts/container_smoke.sh [--chroot ROOTFS] IMAGE
#
# Makes small volumes of both regions (explicit --region, so small shapes are fine) plus one
# garbage file, then runs the image in both call forms:
#   docker run [--gpus all] -v IN:/input -v OUT:/output IMAGE sample|pixel --region R
#   docker run [--gpus all] --read-only --network none -v DATA:/mnt/data -v PRED:/mnt/pred \
#       IMAGE sh /workspace/run_<task>_<region>.sh /mnt/data /mnt/pred      (all four scripts)
# and checks every output: the exact set of names, values in [0,1], NIfTI shape and affine equal to
# the input's, the bad file reported with a non-zero exit status while the good ones are scored,
# inputs untouched, nothing written to the container's own filesystem (`docker diff`), and the same
# scores from both call forms (same seed).
#
# Weights: by default tiny random models made with `mood init-weights --tiny` inside the image,
# mounted at /weights with MOOD_WEIGHTS=/weights (fast on a CPU).  SMOKE_WEIGHTS=baked uses the
# weights baked into the image instead; SMOKE_WEIGHTS=DIR mounts DIR (with brain/ and abdom/).
#
# --chroot ROOTFS: no Docker engine; run the same entry points in a read-only chroot of ROOTFS
# (made by docker/chroot_image.py build) through docker/chroot_image.py run.
#
# Environment: SMOKE_WEIGHTS=tiny|baked|DIR, SMOKE_GPUS=auto|yes|no (auto: --gpus all if the engine
# accepts it), SMOKE_KEEP=1 (keep the work folder), SMOKE_PYTHON (host python with nibabel;
# default: the repo's .venv, else python3, else the image's own python).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CHROOT=
while [[ $# -gt 0 ]]; do
    case $1 in
        --chroot) CHROOT=$2; shift 2 ;;
        -h|--help) sed -n '2,30p' "$0"; exit 0 ;;
        *) break ;;
    esac
done
[[ $# -eq 1 ]] || { echo "usage: $0 [--chroot ROOTFS] IMAGE" >&2; exit 2; }
IMAGE=$1
SMOKE_WEIGHTS=${SMOKE_WEIGHTS:-tiny}
SMOKE_GPUS=${SMOKE_GPUS:-auto}

FAILURES=0
log() { echo "smoke: $*" >&2; }
fail() { echo "smoke: FAIL: $*" >&2; FAILURES=$((FAILURES + 1)); }
ok() { echo "smoke: ok: $*" >&2; }

WORK=$(mktemp -d "${TMPDIR:-/tmp}/mood-smoke.XXXXXX")
chmod 0755 "$WORK"
cleanup() {
    if [[ ${SMOKE_KEEP:-0} = 1 ]]; then log "work folder kept: $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

# --- how to run the image: Docker, or the chroot stand-in -------------------------------------
if [[ -n $CHROOT ]]; then
    MODE="read-only chroot of $CHROOT"
    run_image() {  # [options] -- ARGS; options as for docker run (the subset chroot_image.py knows)
        python3 "$ROOT/docker/chroot_image.py" run --rootfs "$CHROOT" "$@"
    }
else
    MODE="docker"
    run_image() {
        local opts=()
        while [[ $1 != -- ]]; do opts+=("$1"); shift; done
        shift
        docker run "${opts[@]}" "$IMAGE" "$@"
    }
fi
log "image $IMAGE, mode: $MODE"

GPU_OPTS=()
if [[ -z $CHROOT && $SMOKE_GPUS != no ]]; then
    if docker run --rm --gpus all --entrypoint true "$IMAGE" >/dev/null 2>&1; then
        GPU_OPTS=(--gpus all)
        log "the engine accepts --gpus all: using it"
    elif [[ $SMOKE_GPUS = yes ]]; then
        fail "the engine refuses --gpus all (SMOKE_GPUS=yes)"
    else
        log "the engine refuses --gpus all (no NVIDIA hook on its PATH): running without it"
    fi
fi

# --- host python for making and checking volumes ---------------------------------------------
PY=()
for cand in "${SMOKE_PYTHON:-}" "$ROOT/.venv/bin/python" python3; do
    if [[ -n $cand ]] && "$cand" -c 'import nibabel, numpy' >/dev/null 2>&1; then PY=("$cand"); break; fi
done
if [[ ${#PY[@]} -eq 0 ]]; then
    log "no host python with nibabel: using the image's python"
    PY=(run_image -i --rm --network none --user "$(id -u):$(id -g)" -v "$WORK:$WORK" -- python)
fi
py() { "${PY[@]}" "$@"; }

# --- inputs -------------------------------------------------------------------------------------
mkdir -p "$WORK/brain" "$WORK/abdom" "$WORK/weights"
cat > "$WORK/make_inputs.py" <<'EOF'
import sys
import numpy as np, nibabel as nib

work = sys.argv[1]
rng = np.random.default_rng(7)

def phantom(shape):
    grids = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    inside = sum(g**2 for g in grids) < 0.7
    return np.where(inside, 0.4 + 0.3 * rng.random(shape), 0.0).astype(np.float32)

def affine(spacing, origin):
    a = np.diag(list(spacing) + [1.0])
    a[:3, 3] = origin
    return a

# Thin volumes: the pixel task's cost grows with the number of slices (at most the depth).
cases = {
    "brain/brain_000.nii.gz": ((64, 64, 6), (1.0, 1.0, 1.0), (-32.0, -40.0, -24.0)),
    "brain/brain_001.nii.gz": ((64, 56, 5), (1.2, 1.0, 1.5), (10.0, -5.0, 3.0)),
    "abdom/abdom_000.nii.gz": ((48, 48, 4), (0.8, 0.8, 2.5), (-100.0, 50.0, 7.0)),
    "abdom/abdom_001.nii": ((40, 48, 5), (1.0, 0.9, 2.0), (0.0, 0.0, 0.0)),
}
for name, (shape, spacing, origin) in cases.items():
    nib.save(nib.Nifti1Image(phantom(shape), affine(spacing, origin)), f"{work}/{name}")
# One bad file among the good brain ones: garbage bytes with a NIfTI name.
with open(f"{work}/brain/x.nii.gz", "wb") as f:
    f.write(b"this is not a NIfTI file\n" * 10)
EOF
py "$WORK/make_inputs.py" "$WORK"
chmod -R a+rwX "$WORK/brain" "$WORK/abdom"   # the challenge mounts its data folder read-write
declare -A GOOD=([brain]="brain_000.nii.gz brain_001.nii.gz" [abdom]="abdom_000.nii.gz abdom_001.nii")
declare -A BAD=([brain]="x.nii.gz" [abdom]="")
checksums() { (cd "$WORK" && find brain abdom -type f -exec sha256sum {} + | sort); }
checksums > "$WORK/inputs.sha256"

# --- weights ------------------------------------------------------------------------------------
WEIGHT_OPTS=()
if [[ $SMOKE_WEIGHTS = tiny ]]; then
    chmod 0777 "$WORK/weights"
    for region in brain abdom; do
        if ! run_image --rm --network none -v "$WORK/weights:/weights" -- \
                init-weights --region "$region" --out "/weights/$region" --tiny >"$WORK/init.log" 2>&1; then
            cat "$WORK/init.log" >&2
            fail "mood init-weights --region $region --tiny"
        fi
    done
    for region in brain abdom; do
        [[ -f $WORK/weights/$region/card.json ]] || fail "no weights/$region/card.json after init-weights"
    done
    WEIGHT_OPTS=(-v "$WORK/weights:/weights:ro" -e MOOD_WEIGHTS=/weights)
    log "tiny random weights in $WORK/weights, mounted at /weights"
elif [[ $SMOKE_WEIGHTS = baked ]]; then
    log "using the weights baked into the image"
elif [[ -f $SMOKE_WEIGHTS/brain/card.json && -f $SMOKE_WEIGHTS/abdom/card.json ]]; then
    WEIGHT_OPTS=(-v "$(cd "$SMOKE_WEIGHTS" && pwd):/weights:ro" -e MOOD_WEIGHTS=/weights)
    log "weights from $SMOKE_WEIGHTS, mounted at /weights"
else
    fail "SMOKE_WEIGHTS=$SMOKE_WEIGHTS: neither tiny, baked nor a folder with brain/ and abdom/ card.json"
fi
[[ $FAILURES -eq 0 ]] || { log "$FAILURES failure(s) before any run"; exit 1; }

# --- output checks (python, run on the host or in the image) ----------------------------------
# check_outputs.py INPUT_DIR OUTPUT_DIR TASK GOOD_NAME...: exactly one output per good input and
# nothing else; sample: a number in [0,1]; pixel: finite values in [0,1], input's shape and affine.
cat > "$WORK/check_outputs.py" <<'EOF'
import math, os, sys
import numpy as np, nibabel as nib

src, out, task, good = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
problems = []
want = {g + ".txt" if task == "sample" else g for g in good}
have = set(os.listdir(out))
if have != want:
    problems.append(f"output names {sorted(have)}, expected {sorted(want)}")
summary = []
for g in good:
    path = os.path.join(out, g + ".txt" if task == "sample" else g)
    if not os.path.isfile(path):
        continue
    if task == "sample":
        text = open(path).read().strip()
        try:
            value = float(text)
        except ValueError:
            problems.append(f"{g}.txt: not a number: {text[:40]!r}")
            continue
        if not (math.isfinite(value) and 0.0 <= value <= 1.0):
            problems.append(f"{g}.txt: {value} outside [0, 1]")
        summary.append(f"{g}={value:.6g}")
    else:
        img, ref = nib.load(path), nib.load(os.path.join(src, g))
        data = np.asarray(img.dataobj, dtype=np.float64)
        if img.shape != ref.shape:
            problems.append(f"{g}: shape {img.shape}, input {ref.shape}")
        if not np.allclose(img.affine, ref.affine, atol=1e-5):
            problems.append(f"{g}: affine differs from the input's")
        if not np.isfinite(data).all() or data.min() < 0.0 or data.max() > 1.0:
            problems.append(f"{g}: values {np.nanmin(data)}..{np.nanmax(data)} not finite in [0, 1]")
        summary.append(f"{g} {img.shape} [{data.min():.3g}, {data.max():.3g}]")
for p in problems:
    print(p)
print(f"{len(good)} outputs: " + ", ".join(summary))
sys.exit(1 if problems else 0)
EOF
# same_outputs.py DIR_A DIR_B: the same files with the same values.
cat > "$WORK/same_outputs.py" <<'EOF'
import os, sys
import numpy as np, nibabel as nib
a, b = sys.argv[1:3]
assert sorted(os.listdir(a)) == sorted(os.listdir(b)), "different names"
for name in os.listdir(a):
    if name.endswith(".txt"):
        x, y = (open(os.path.join(d, name)).read().strip() for d in (a, b))
    else:
        x, y = (np.asarray(nib.load(os.path.join(d, name)).dataobj) for d in (a, b))
    assert np.array_equal(x, y), name
EOF

# --- runs ---------------------------------------------------------------------------------------
# run_case NAME TASK REGION FORM: FORM is "direct" (IMAGE sample|pixel, /input and /output) or
# "challenge" (--read-only --network none, sh /workspace/run_TASK_REGION.sh /mnt/data /mnt/pred).
run_case() {
    local name=$1 task=$2 region=$3 form=$4
    local out="$WORK/out-$name" good=() bad=${BAD[$region]} want_rc=0 rc=0 t0 t1
    read -r -a good <<<"${GOOD[$region]}"
    mkdir -p "$out"
    chmod 0777 "$out"   # writable by the image's non-root user
    [[ -z $bad ]] || want_rc=1
    t0=$(date +%s)
    if [[ $form = direct ]]; then
        run_image --name "mood-smoke-$$-$name" "${GPU_OPTS[@]}" "${WEIGHT_OPTS[@]}" \
            -v "$WORK/$region:/input:ro" -v "$out:/output" -- \
            "$task" --region "$region" --quiet >"$WORK/$name.log" 2>&1 || rc=$?
    else
        run_image --rm "${GPU_OPTS[@]}" --read-only --network none "${WEIGHT_OPTS[@]}" \
            -v "$WORK/$region:/mnt/data" -v "$out:/mnt/pred" -- \
            sh "/workspace/run_${task}_${region}.sh" /mnt/data /mnt/pred >"$WORK/$name.log" 2>&1 || rc=$?
    fi
    t1=$(date +%s)
    log "$name: $form $task $region: exit $rc in $((t1 - t0)) s; last lines:"
    tail -n 4 "$WORK/$name.log" | sed 's/^/    | /' >&2

    if [[ $rc -ne $want_rc ]]; then
        fail "$name: exit status $rc, expected $want_rc"
    fi
    if [[ -n $bad ]] && ! grep -q -- "$bad" "$WORK/$name.log"; then
        fail "$name: the bad input $bad is not named in the log"
    fi
    if [[ $form = direct && -z $CHROOT ]]; then
        local diff
        diff=$(docker diff "mood-smoke-$$-$name" 2>&1 || true)
        docker rm -f "mood-smoke-$$-$name" >/dev/null 2>&1 || true
        if [[ -n $diff ]]; then
            fail "$name: the container wrote outside the output folder:"
            echo "$diff" | head -n 20 | sed 's/^/    | /' >&2
        fi
    fi
    if py "$WORK/check_outputs.py" "$WORK/$region" "$out" "$task" "${good[@]}" >"$WORK/$name.check" 2>&1; then
        ok "$name: $(tail -n 1 "$WORK/$name.check")"
    else
        fail "$name: outputs:"
        sed 's/^/    | /' "$WORK/$name.check" >&2
    fi
}

T_START=$(date +%s)
run_case direct-sample-brain sample brain direct
run_case direct-pixel-abdom pixel abdom direct
for task in sample pixel; do
    for region in brain abdom; do
        run_case "challenge-$task-$region" "$task" "$region" challenge
    done
done

# An output folder the image's user (uid 1000) cannot write to: a clear message, non-zero exit.
if [[ $(id -u) != 1000 ]]; then
    mkdir -p "$WORK/out-locked"
    chmod 0755 "$WORK/out-locked"
    rc=0
    run_image --rm --read-only --network none "${WEIGHT_OPTS[@]}" \
        -v "$WORK/abdom:/mnt/data" -v "$WORK/out-locked:/mnt/pred" -- \
        sh /workspace/run_sample_abdom.sh /mnt/data /mnt/pred >"$WORK/locked.log" 2>&1 || rc=$?
    if [[ $rc -ne 0 ]] && grep -q 'cannot write to the output folder' "$WORK/locked.log" \
       && [[ -z $(ls -A "$WORK/out-locked") ]]; then
        ok "unwritable output folder: exit $rc and: $(grep -m 1 'cannot write' "$WORK/locked.log")"
    else
        fail "unwritable output folder: exit $rc, log:"
        sed 's/^/    | /' "$WORK/locked.log" >&2
    fi
fi

# --- cross-checks -------------------------------------------------------------------------------
if checksums | cmp -s - "$WORK/inputs.sha256"; then
    ok "inputs unchanged"
else
    fail "the inputs changed (or files appeared in the input folders)"
fi
for pair in sample-brain pixel-abdom; do
    if py "$WORK/same_outputs.py" "$WORK/out-direct-$pair" "$WORK/out-challenge-$pair" >"$WORK/same.log" 2>&1; then
        ok "direct-$pair and challenge-$pair give the same outputs"
    else
        fail "direct-$pair and challenge-$pair differ (same inputs, seed and weights): $(tail -n 1 "$WORK/same.log")"
    fi
done
tr '\r' '\n' <"$WORK/challenge-sample-abdom.log" \
    | grep -o -m 1 -E '(INFO|WARNING) [^|]*(CPU|GPU|cuda)[^|]*' | sed 's/^/smoke: device line: /' >&2 || true
log "runs took $(( $(date +%s) - T_START )) s"

if [[ $FAILURES -ne 0 ]]; then
    log "FAILED: $FAILURES problem(s)"
    exit 1
fi
log "PASSED ($MODE)"
