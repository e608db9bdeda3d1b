#!/usr/bin/env bash
# End-to-end smoke test of the mood-vqvae container image.
#
#   scripts/container_smoke.sh [--chroot ROOTFS] IMAGE
#
# Makes small volumes of both regions (explicit --region, so small shapes are fine), their toy
# labels and one garbage file, then runs the image
#   direct:   docker run [--gpus all] -v IN:/input:ro -v OUT:/output IMAGE sample|pixel --region R
#             (the brain input holds the garbage file: it must be named, the rest scored, exit 1);
#   harness:  the MOOD organisers' own test (scripts/test_docker.py of MIC-DKFZ/mood) reproduced:
#             per task a fresh 0700 temporary folder with OUT/brain and OUT/abdom (mode 0755) made
#             by the caller, once as root and once as a non-root uid, then per region
#               docker run [--gpus all] --read-only --network none -v TOY:/mnt/data:ro \
#                   -v OUT/REGION:/mnt/pred IMAGE sh /workspace/run_TASK_REGION.sh /mnt/data /mnt/pred
#             and the same call with `--user U:G` by the folder's owner;
#   refused:  an output folder that nobody the container may become can write (`--user` of another
#             uid; a read-only mount): one line, exit 1, nothing loaded, nothing written;
# and checks every output: the exact set of names, values in [0,1], NIfTI shape and affine equal to
# the input's, every file owned by the output folder's owner, every prediction read back by
# mood.validation.metrics exactly as the challenge's evaluation reads it (none missing, unreadable or of the
# wrong shape), inputs untouched, nothing written to the container's own filesystem (`docker diff`),
# and the same scores from every call form (same seed).  Nothing here makes a folder
# world-writable: the image must cope with folders as the harness makes them.
#
# Weights: by default tiny random models made with `mood init-weights --tiny` inside the image,
# mounted at /weights with MOOD_WEIGHTS=/weights (fast on a CPU).  SMOKE_WEIGHTS=baked uses the
# weights baked into the image instead; SMOKE_WEIGHTS=DIR mounts DIR (with brain/ and abdom/).
#
# --chroot ROOTFS: no Docker engine; run the same entry points in a read-only chroot of ROOTFS
# (made by docker/chroot_image.py build) through docker/chroot_image.py run.
#
# Environment: SMOKE_WEIGHTS=tiny|baked|DIR, SMOKE_GPUS=auto|yes|no (auto: --gpus all if the engine
# accepts it), SMOKE_UID (the non-root owner; default 1234), SMOKE_KEEP=1 (keep the work folders),
# SMOKE_PYTHON (host python with this repository's requirements; default: the repo's .venv, else
# python3, else the image's own python).  Needs root, as the harness does (`sudo docker run`).
set -euo pipefail
umask 022   # a usual login's: the harness's folders come out 0755

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CHROOT=
while [[ $# -gt 0 ]]; do
    case $1 in
        --chroot) CHROOT=$2; shift 2 ;;
        -h|--help) sed -n '2,37p' "$0"; exit 0 ;;
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
OTHER=${SMOKE_UID:-1234}
HARNESS_DIRS=()
cleanup() {
    if [[ ${SMOKE_KEEP:-0} = 1 ]]; then
        log "work folders kept: $WORK ${HARNESS_DIRS[*]}"
    else
        rm -rf "$WORK" "${HARNESS_DIRS[@]}"
    fi
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
    if [[ -n $cand ]] && PYTHONPATH=$ROOT "$cand" -c 'import mood.validation.metrics' >/dev/null 2>&1; then
        PY=(env "PYTHONPATH=$ROOT" "$cand")
        break
    fi
done
if [[ ${#PY[@]} -eq 0 ]]; then
    log "no host python with this repository's requirements: using the image's python"
    PY=(run_image -i --rm --network none -v "$WORK:$WORK" -v "${TMPDIR:-/tmp}:${TMPDIR:-/tmp}" -- python)
fi
py() { "${PY[@]}" "$@"; }

# --- inputs -------------------------------------------------------------------------------------
# in/REGION: what the direct form scores (the good volumes; among the brains one garbage file);
# data/REGION/toy and data/REGION/toy_label/{sample,pixel}: the challenge's toy layout of the good
# volumes, the second of each region "abnormal" (a bright cube, labelled).
mkdir -p "$WORK/in/brain" "$WORK/in/abdom" "$WORK/weights"
cat > "$WORK/make_inputs.py" <<'EOF'
import os, shutil, sys
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
for i, (name, (shape, spacing, origin)) in enumerate(cases.items()):
    region, case = name.split("/")
    data, label = phantom(shape), np.zeros(shape, np.uint8)
    if i % 2:
        label[16:24, 16:24, 1:4] = 1
        data[label == 1] = 1.0
    nib.save(nib.Nifti1Image(data, affine(spacing, origin)), f"{work}/in/{name}")
    for sub in ("toy", "toy_label/sample", "toy_label/pixel"):
        os.makedirs(f"{work}/data/{region}/{sub}", exist_ok=True)
    shutil.copy(f"{work}/in/{name}", f"{work}/data/{region}/toy/{case}")
    with open(f"{work}/data/{region}/toy_label/sample/{case}.txt", "w") as f:
        f.write(f"{i % 2}\n")
    nib.save(nib.Nifti1Image(label, affine(spacing, origin)), f"{work}/data/{region}/toy_label/pixel/{case}")
with open(f"{work}/in/brain/x.nii.gz", "wb") as f:
    f.write(b"this is not a NIfTI file\n" * 10)
EOF
py "$WORK/make_inputs.py" "$WORK"
declare -A GOOD=([brain]="brain_000.nii.gz brain_001.nii.gz" [abdom]="abdom_000.nii.gz abdom_001.nii")
declare -A BAD=([brain]="x.nii.gz" [abdom]="")
checksums() { (cd "$WORK" && find in data -type f -exec sha256sum {} + | sort); }
checksums > "$WORK/inputs.sha256"

# --- weights ------------------------------------------------------------------------------------
WEIGHT_OPTS=()
if [[ $SMOKE_WEIGHTS = tiny ]]; then
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
# check_outputs.py INPUT_DIR OUTPUT_DIR TASK OWNER LABEL_DIR GOOD_NAME...: exactly one output per
# good input and nothing else, each owned by OWNER (uid:gid); sample: a number in [0,1]; pixel:
# finite values in [0,1], the input's shape and affine; with LABEL_DIR (not "-"): read back by
# mood.validation.metrics as the challenge's evaluation reads it, with no case missing, unreadable or misshapen.
cat > "$WORK/check_outputs.py" <<'EOF'
import math, os, sys
import numpy as np, nibabel as nib

src, out, task, owner, labels, good = *sys.argv[1:6], sys.argv[6:]
problems = []
want = {g + ".txt" if task == "sample" else g for g in good}
have = set(os.listdir(out))
if have != want:
    problems.append(f"output names {sorted(have)}, expected {sorted(want)}")
summary = []
for name in sorted(have):
    st = os.stat(os.path.join(out, name))
    if f"{st.st_uid}:{st.st_gid}" != owner:
        problems.append(f"{name}: owned by {st.st_uid}:{st.st_gid}, not by the folder's owner {owner}")
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
if labels != "-":
    from mood.validation.metrics import pixel_metrics, sample_metrics
    scored = (sample_metrics if task == "sample" else pixel_metrics)(out, labels)
    for key in ("n_missing", "n_unreadable", "n_bad_shape"):
        if scored[key]:
            problems.append(f"the challenge's reader: {key} = {scored[key]}")
    if scored["n_cases"] != len(good):
        problems.append(f"the challenge's reader scored {scored['n_cases']} cases, not {len(good)}")
    summary.append(f"read back by the challenge's metric: AP {scored['ap']:.3g} over {scored['n_cases']} cases")
for p in problems:
    print(p)
print(f"{len(good)} outputs owned by {owner}: " + ", ".join(summary))
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
# run_case NAME TASK REGION FORM OUT [docker run options]: FORM "direct" (IMAGE sample|pixel on
# in/REGION, /input and /output) or "challenge" (the harness's call on data/REGION/toy, with
# --read-only --network none and the input read-only).  OUT must exist; its owner is expected to
# own every prediction.
run_case() {
    local name=$1 task=$2 region=$3 form=$4 out=$5 good=() bad='' want_rc=0 rc=0 t0 src labels=- owner
    shift 5
    read -r -a good <<<"${GOOD[$region]}"
    t0=$(date +%s)
    if [[ $form = direct ]]; then
        src=$WORK/in/$region
        bad=${BAD[$region]}
        [[ -z $bad ]] || want_rc=1
        run_image --name "mood-smoke-$$-$name" "${GPU_OPTS[@]}" "${WEIGHT_OPTS[@]}" "$@" \
            -v "$src:/input:ro" -v "$out:/output" -- \
            "$task" --region "$region" --quiet >"$WORK/$name.log" 2>&1 || rc=$?
    else
        src=$WORK/data/$region/toy
        labels=$WORK/data/$region/toy_label/$task
        run_image --rm "${GPU_OPTS[@]}" --read-only --network none "${WEIGHT_OPTS[@]}" "$@" \
            -v "$src:/mnt/data:ro" -v "$out:/mnt/pred" -- \
            sh "/workspace/run_${task}_${region}.sh" /mnt/data /mnt/pred >"$WORK/$name.log" 2>&1 || rc=$?
    fi
    log "$name: exit $rc in $(( $(date +%s) - t0 )) s; last lines:"
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
    owner=$(stat -c %u:%g "$out")
    if py "$WORK/check_outputs.py" "$src" "$out" "$task" "$owner" "$labels" "${good[@]}" >"$WORK/$name.check" 2>&1; then
        ok "$name: $(tail -n 1 "$WORK/$name.check")"
    else
        fail "$name: outputs:"
        sed 's/^/    | /' "$WORK/$name.check" >&2
    fi
}

# as_caller WHO COMMAND...: run COMMAND as root or as the non-root uid, as a user at a shell would.
as_caller() {
    local who=$1
    shift
    if [[ $who = root ]]; then "$@"; else setpriv --reuid="$OTHER" --regid="$OTHER" --clear-groups -- "$@"; fi
}

# harness_folders WHO: what the organisers' test makes before it calls the image: a 0700 temporary
# folder (tempfile.TemporaryDirectory) holding brain/ and abdom/ (os.makedirs), made by WHO; its
# path in $base.
harness_folders() {
    base=$(as_caller "$1" mktemp -d "${TMPDIR:-/tmp}/mood-harness.XXXXXX")
    HARNESS_DIRS+=("$base")
    as_caller "$1" mkdir "$base/brain" "$base/abdom"
}

T_START=$(date +%s)
for pair in "sample brain" "pixel abdom"; do
    read -r task region <<<"$pair"
    mkdir "$WORK/out-direct-$task-$region"
    run_case "direct-$task-$region" "$task" "$region" direct "$WORK/out-direct-$task-$region"
done

declare -A HARNESS_OUT
for who in root "$OTHER"; do
    for task in sample pixel; do
        harness_folders "$who"
        HARNESS_OUT[$who-$task]=$base
        for region in brain abdom; do
            run_case "harness-$task-$region-as-$who" "$task" "$region" challenge "$base/$region"
        done
    done
done
harness_folders "$OTHER"
run_case "harness-pixel-abdom-user-$OTHER" pixel abdom challenge "$base/abdom" --user "$OTHER:$OTHER"
# The challenge's call passes no flags: the method comes from the environment (MOOD_METHOD).
harness_folders root
HARNESS_OUT[env-lsr]=$base
run_case "harness-sample-brain-method-lsr" sample brain challenge "$base/brain" -e MOOD_METHOD=lsr

# Output folders the container cannot write to, whoever it becomes: one line, exit 1, no models
# loaded (the line is all it says), nothing left behind.
refused() {  # NAME OUT [docker run options]
    local name=$1 out=$2 rc=0
    shift 2
    run_image --rm --read-only --network none "${WEIGHT_OPTS[@]}" "$@" \
        -v "$WORK/data/abdom/toy:/mnt/data:ro" -- \
        sh /workspace/run_sample_abdom.sh /mnt/data /mnt/pred >"$WORK/$name.log" 2>&1 || rc=$?
    if [[ $rc -eq 1 && $(wc -l <"$WORK/$name.log") -eq 1 ]] \
       && grep -q 'cannot write to the output folder' "$WORK/$name.log" && [[ -z $(ls -A "$out") ]]; then
        ok "$name: exit 1 before loading anything: $(cat "$WORK/$name.log")"
    else
        fail "$name: exit $rc, in the output folder: $(find "$out" -mindepth 1 -maxdepth 1 -printf "%f " | head -c 200), log:"
        sed 's/^/    | /' "$WORK/$name.log" >&2
    fi
}
harness_folders root
refused "refused-user-$OTHER-on-root-folder" "$base/abdom" --user "$OTHER:$OTHER" -v "$base/abdom:/mnt/pred"
harness_folders "$OTHER"
refused "refused-read-only-mount" "$base/abdom" -v "$base/abdom:/mnt/pred:ro"

# --- cross-checks -------------------------------------------------------------------------------
if checksums | cmp -s - "$WORK/inputs.sha256"; then
    ok "inputs unchanged"
else
    fail "the inputs changed (or files appeared in the input folders)"
fi
same() {  # NAME_A DIR_A NAME_B DIR_B
    if py "$WORK/same_outputs.py" "$2" "$4" >"$WORK/same.log" 2>&1; then
        ok "$1 and $3 give the same outputs"
    else
        fail "$1 and $3 differ (same inputs, seed and weights): $(tail -n 1 "$WORK/same.log")"
    fi
}
same direct-sample-brain "$WORK/out-direct-sample-brain" harness-sample-brain-as-root "${HARNESS_OUT[root-sample]}/brain"
same direct-pixel-abdom "$WORK/out-direct-pixel-abdom" harness-pixel-abdom-as-root "${HARNESS_OUT[root-pixel]}/abdom"
same harness-pixel-abdom-as-root "${HARNESS_OUT[root-pixel]}/abdom" "harness-pixel-abdom-as-$OTHER" "${HARNESS_OUT[$OTHER-pixel]}/abdom"
if py "$WORK/same_outputs.py" "${HARNESS_OUT[root-sample]}/brain" "${HARNESS_OUT[env-lsr]}/brain" >/dev/null 2>&1; then
    fail "MOOD_METHOD=lsr gave the same brain sample scores as the default method: the variable was not read"
else
    ok "MOOD_METHOD=lsr scores with another method than the default"
fi
tr '\r' '\n' <"$WORK/harness-sample-abdom-as-root.log" \
    | grep -o -m 1 -E '(INFO|WARNING) [^|]*(CPU|GPU|cuda)[^|]*' | sed 's/^/smoke: device line: /' >&2 || true
log "runs took $(( $(date +%s) - T_START )) s"

if [[ $FAILURES -ne 0 ]]; then
    log "FAILED: $FAILURES problem(s)"
    exit 1
fi
log "PASSED ($MODE)"
