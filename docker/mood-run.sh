#!/bin/sh
# mood-run COMMAND [ARGS]: run COMMAND (a `mood sample|pixel ... --output DIR` call) as the owner of
# its output folder DIR, and so that nothing is written outside DIR, as `docker run --read-only`
# requires.
#
# Who runs it: started as root (the image's default), mood-run becomes DIR's owner (uid and gid,
# no supplementary groups; setpriv from util-linux), so that the predictions belong to whoever
# made the folder and COMMAND never runs as root unless root owns DIR. Started as another user
# (`docker run --user U:G`), it stays that user.
#
# Where it writes: every temporary or cache folder a library might use (TMPDIR, HOME, XDG caches,
# matplotlib, torch, triton, CUDA) points into a private scratch folder DIR/.mood-scratch.XXXXXX,
# removed when COMMAND ends (its exit status is passed on; SIGTERM/SIGINT/SIGHUP are forwarded).
# If that folder cannot be made, mood-run says why in one line and exits 1 before COMMAND starts:
# no minutes spent loading models and scoring into a folder that cannot hold the results.
#
# DIR is the value of the last --output (-o) option; /output if there is none.
set -u

out=/output
prev=
for arg in "$@"; do
    case $prev in --output|-o) out=$arg ;; esac
    case $arg in
        --output=*) out=${arg#--output=} ;;
        -o?*) out=${arg#-o} ;;
    esac
    prev=$arg
done

if [ "$(id -u)" = 0 ]; then
    mkdir -p -- "$out" 2>/dev/null || true
    owner=$(stat -c %u:%g -- "$out" 2>/dev/null || true)
    case $owner in
        ''|0:*) ;;
        *) exec setpriv --reuid="${owner%:*}" --regid="${owner#*:}" --clear-groups -- "$0" "$@" ;;
    esac
fi

if ! scratch=$(mktemp -d "$out/.mood-scratch.XXXXXX" 2>/dev/null); then
    owner=$(stat -c '%u:%g, mode %a' -- "$out" 2>/dev/null || echo 'missing')
    echo "mood-run: cannot write to the output folder $out as uid $(id -u) gid $(id -g) (folder: $owner);" \
        "nothing was scored. Start the container as root (the default: it then runs as the folder's" \
        "owner) or with --user set to the folder's owner, and mount the folder writable." >&2
    exit 1
fi
export TMPDIR="$scratch" TMP="$scratch" TEMP="$scratch" HOME="$scratch" \
    XDG_CACHE_HOME="$scratch/cache" XDG_CONFIG_HOME="$scratch/config" \
    XDG_DATA_HOME="$scratch/data" MPLCONFIGDIR="$scratch/matplotlib" \
    TORCH_HOME="$scratch/torch" TORCHINDUCTOR_CACHE_DIR="$scratch/torchinductor" \
    TRITON_CACHE_DIR="$scratch/triton" PYTORCH_KERNEL_CACHE_PATH="$scratch/torch-kernels" \
    CUDA_CACHE_PATH="$scratch/nv"

"$@" &
child=$!
trap 'kill -TERM "$child" 2>/dev/null' TERM
trap 'kill -INT "$child" 2>/dev/null' INT
trap 'kill -HUP "$child" 2>/dev/null' HUP
status=0
wait "$child" || status=$?
# A trapped signal interrupts wait: wait again until the child has really ended.
while kill -0 "$child" 2>/dev/null; do
    status=0
    wait "$child" || status=$?
done
rm -rf -- "$scratch"
exit "$status"
