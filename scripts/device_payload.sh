#!/usr/bin/env bash
# The payload of one device call (docs/gpu.md): what travels to a lent GPU, built and checked here.
#
#   scripts/device_payload.sh                   build .device/ (git-ignored): the brain training
#                                               volumes, the held-out sources, the nibabel wheel
#   scripts/device_payload.sh --check           build it, then fail with one line when what would
#                                               travel is over 64 MiB or a file the run needs is missing
#   scripts/device_payload.sh --rehearse        --check, then copy exactly what would travel into a
#                                               temporary folder and run the device command there on
#                                               the CPU at tiny size (DEVICE=cpu TINY=1, about 2 min)
#   scripts/device_payload.sh --hide-weights    just before the call: the shipped weight shards and
#                                               the campaign snapshots (campaign/)
#   scripts/device_payload.sh --restore-weights just after it: ... leave git's index, and come back
#
# What travels (the device tool's README): the session's checkout -- tracked and untracked-not-ignored
# files, and shared/ if it has one -- plus the carried .device/, at most 64 MiB. The shipped weight
# shards (weights/*/*.safetensors, 86 MB) and the campaign snapshots (campaign/, tens of MB) are
# tracked: ignore rules do not apply to tracked files, so no call from a checkout that tracks them
# can start. The run reads neither (it trains its own weights, and compares with the shipped
# card.json, which travels), so for the call they leave the index and are ignored (--hide-weights:
# `git rm --cached` + .git/info/exclude; the files stay on disk), and --restore-weights puts the
# index back as it was. Between the two, commit nothing.
# SHARED (default ../shared) holds data/; PYTHON (default python3) runs pip download and the rehearsal.
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED="${SHARED:-$PWD/../shared}"
PY="${PYTHON:-python3}"
LIMIT="${PAYLOAD_LIMIT:-$((64 << 20))}"  # bytes; the device tool's limit (tests lower it)
HIDDEN=('weights/*/*.safetensors' 'campaign')  # git pathspecs: what --hide-weights takes out of the index
NOTE='# until scripts/device_payload.sh --restore-weights:'  # git reads no comment after a pattern
IGNORES=('/weights/*/*.safetensors' '/campaign/')
EVAL_SOURCES="rorden_t1.nii.gz icbm2009asym_t1_template.nii.gz"
NIBABEL="$(sed -n 's/^nibabel==//p' requirements.txt)"
die() { echo "device_payload: $*" >&2; exit 1; }

case "${1:-}" in
  --hide-weights)
    git rm -r -q --cached --ignore-unmatch -- "${HIDDEN[@]}"
    exclude="$(git rev-parse --git-path info/exclude)"
    mkdir -p "$(dirname "$exclude")"
    grep -qxF "$NOTE" "$exclude" 2>/dev/null || printf '%s\n' "$NOTE" "${IGNORES[@]}" >> "$exclude"
    echo "weight shards and campaign snapshots out of the index and ignored; after the call: scripts/device_payload.sh --restore-weights"
    exit 0 ;;
  --restore-weights)
    exclude="$(git rev-parse --git-path info/exclude)"
    if [ -f "$exclude" ]; then
      grep -vxF -e "$NOTE" "${IGNORES[@]/#/-e}" "$exclude" > "$exclude.tmp" || true
      mv "$exclude.tmp" "$exclude"
    fi
    git reset -q -- weights campaign
    git diff --quiet -- weights campaign || die "weights/ or campaign/ differ from the last commit: look before committing"
    echo "weight shards and campaign snapshots tracked again"
    exit 0 ;;
  ""|--check|--rehearse) ;;
  *) die "unknown option $1 (see the head of $0)" ;;
esac

# 1. Build .device/: copies of the volumes (the call cannot reach ../shared) and the wheel.
[ -d "$SHARED/data/brain" ] || die "no $SHARED/data/brain: the payload's volumes come from there (set SHARED)"
mkdir -p .device/data/brain .device/data/eval_only .device/whl
for f in "$SHARED"/data/brain/*.nii.gz; do
  cmp -s "$f" ".device/data/brain/${f##*/}" || cp "$f" .device/data/brain/
done
for name in $EVAL_SOURCES; do
  f="$SHARED/data/eval_only/$name"
  [ -f "$f" ] || die "no $f (held-out source of the validation)"
  cmp -s "$f" ".device/data/eval_only/$name" || cp "$f" .device/data/eval_only/
done
wheel=".device/whl/nibabel-$NIBABEL-py3-none-any.whl"
find .device/whl -name '*.whl' ! -path "$wheel" -delete  # one version of each: two stop the install
if [ ! -f "$wheel" ]; then
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .device/whl "nibabel==$NIBABEL" || die "pip could not download nibabel==$NIBABEL (it needs a package index)"
fi
if [ -z "${1:-}" ]; then echo "built .device/ ($(du -sh .device | cut -f1))"; exit 0; fi

# 2. What travels: the checkout's files as git sees them, minus the hidden shards, plus .device/.
list="$(mktemp)"
trap 'rm -f "$list"' EXIT
{
  git ls-files -z --cached --others --exclude-standard -- . "${HIDDEN[@]/#/:(exclude)}" ":(exclude).device"
  if [ -d shared ]; then find shared -type f -print0; fi
  find .device -type f -print0
} | while IFS= read -r -d '' f; do
  if [ -e "$f" ] || [ -L "$f" ]; then printf '%s\0' "$f"; fi  # deleted from the tree: does not travel
done > "$list"
count=$(tr -cd '\0' < "$list" | wc -c)
total=$(xargs -0 stat -c %s -- < "$list" | awk '{s += $1} END {print s + 0}')
mib() { awk -v b="$1" 'BEGIN {printf "%.1f MiB", b / 1048576}'; }
for f in $(bash scripts/device_run.sh --needs); do
  [ -e "$f" ] || die "the run needs $f, which is not in the payload"
done
n_brain=$(find .device/data/brain -name '*.nii.gz' | wc -l)
[ "$n_brain" -eq "$(find "$SHARED/data/brain" -name '*.nii.gz' | wc -l)" ] || die "stale .device/data/brain"
[ "$total" -le "$LIMIT" ] || die "payload $(mib "$total") in $count files is over the limit, $(mib "$LIMIT")"
echo "payload ok: $(mib "$total") in $count files (limit 64 MiB; .device/ $(du -sh .device | cut -f1)," \
  "$n_brain brain volumes, nibabel $NIBABEL wheel); the shipped shards and campaign snapshots stay behind (--hide-weights)"
[ "$1" = --rehearse ] || exit 0

# 3. Rehearse: exactly those files in a fresh folder, the device command run there on the CPU.
stage="${REHEARSE_DIR:-$(mktemp -d)}"
[ -n "${REHEARSE_DIR:-}" ] || trap 'rm -f "$list"; rm -rf "$stage"' EXIT
mkdir -p "$stage/tree"
tar -c --null --no-recursion -T "$list" | tar -x -C "$stage/tree"
echo "rehearsing in $stage/tree: DEVICE=cpu TINY=1 bash scripts/device_run.sh"
(cd "$stage/tree" && OUT="$stage/out" WORK="$stage/work" DEVICE=cpu TINY=1 PYTHON="$PY" \
  bash scripts/device_run.sh > "$stage/rehearsal.log" 2>&1) \
  || { tail -40 "$stage/rehearsal.log"; die "the tiny run from the payload failed (log above)"; }
grep -E '^(vqvae|prior|localiser): |payload|held out|\| lsr|\| localiser|not comparable|OUT' "$stage/rehearsal.log" || true
echo "rehearsal ok: $(find "$stage/out" -type f | wc -l) files back in \$OUT"
